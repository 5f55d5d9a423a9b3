"""Crop stage throughput against the plain loop of nagadomi's README, on the same images, in the same run;
with --detectors, the yield and speed of each face detector instead.

    ANIMEXPR_ASSETS=... python bench/crop.py [--side 1024] [--repeats 3] [--workers N]
    ANIMEXPR_ASSETS=... python bench/crop.py --detectors [--scenes 10] [--workers 1]

Images: the 36 illustrations of ANIMEXPR_ASSETS/illustration-grid.jpg, each resized to --side px (1024: a
typical Danbooru post is 1-4 megapixels) and stored as a JPEG original of a downloaded post.

Baseline, per image, one process, as nagadomi's README: `cv2.imread`, `cvtColor(BGR2GRAY)`, `equalizeHist`,
`detectMultiScale(scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))`. Timed twice: with OpenCV's default
threads (what the README's script does: OpenCV already spreads detectMultiScale over every core) and with
`cv2.setNumThreads(1)` (one core).

Ours: `crop_posts()` end to end (database query, decode with limits, greyscale check, detection, crop,
PNG encoding, content-addressed atomic stores, database rows), on a fresh home each repeat, with
--workers processes (default: all cores), and with 1 worker (in-process, OpenCV default threads).
Overhead beyond detectMultiScale = (our 1-worker time - time inside our detector) / time inside our detector,
both from the same run (our detector time covers cvtColor + equalizeHist + detectMultiScale, as the README's).
Hash check: each original is read and checked against its recorded sha256 before decoding; the time spent
reading and hashing (`CropSummary.read_s`, an upper bound of the check's own cost, since the stage read the
file before too) is printed as a share of the 1-worker stage time of the same run.
Medians of --repeats (the machine is shared); the first pooled run also pays for starting the fork server,
which every `animexpr crop` invocation pays once: it is printed separately.

--detectors: lbp, animeface and lbp+animeface, each through `crop_posts()` with its default settings (128 px
crops, margin 0.25, faces under the 2x-upscaling limit skipped, largest-if-dominant), one after the other on
the same posts, all in one run. Two sets of posts: the 36 illustrations of the grid (512 px each, as they
are), and --scenes Danbooru-like full pictures made here with a fixed seed: a busy scene of 1024 to 1600 px
(the coloured blocks, lines and grain of tests/data/record_animeface_reference.py) with one of the shared
faces pasted at a random scale from 0.5x to 2x (128 to 512 px). Yield: posts that got a crop. For the scenes
the pasted face's place is known, so a crop counts as right only when its box centre lies inside it.
Images per second: posts / the stage's time (decode, detect, crop, store, rows), with --workers processes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
from sqlalchemy import Engine, select

from animexpr.curate.animeface import AnimeFaceUnavailable, load_library
from animexpr.curate.crop import CropOutcome, CropSettings, CropSummary, crop_posts, make_detector_spec
from animexpr.db.models import Crop, Post, PostState
from animexpr.db.session import open_db, session_scope
from animexpr.images import decode_image
from animexpr.store import FileStore
from animexpr.workers import default_workers

CELL = 512


def make_images(assets: Path, side: int, folder: Path) -> list[Path]:
    grid = decode_image(assets / "illustration-grid.jpg").rgb
    paths = []
    for row in range(6):
        for col in range(6):
            cell = grid[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
            interpolation = cv2.INTER_CUBIC if side > CELL else cv2.INTER_AREA
            image = cv2.resize(cell, (side, side), interpolation=interpolation)
            path = folder / f"cell-{row}{col}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            paths.append(path)
    return paths


def baseline(paths: list[Path], cascade: Path) -> tuple[float, float]:
    """(total seconds, seconds inside detectMultiScale) for nagadomi's loop."""
    classifier = cv2.CascadeClassifier(str(cascade))
    detect_s = 0.0
    started = time.perf_counter()
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        t0 = time.perf_counter()
        classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        detect_s += time.perf_counter() - t0
    return time.perf_counter() - started, detect_s


def ours(paths: list[Path], settings: CropSettings, workers: int, scratch: Path) -> tuple[float, CropSummary]:
    """Seconds for `crop_posts` on a fresh home holding `paths` as downloaded posts; and its summary."""
    engine, store = fresh_posts(paths, scratch)
    started = time.perf_counter()
    summary = crop_posts(engine, store, settings, workers=workers)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert summary.done == len(paths), summary
    return elapsed, summary


def fresh_posts(paths: list[Path], scratch: Path) -> tuple[Engine, FileStore]:
    """A fresh home holding `paths` as downloaded posts 1, 2, ... (in order)."""
    home = Path(tempfile.mkdtemp(dir=scratch))
    store = FileStore(home)
    store.create_areas()
    engine = open_db(f"sqlite:///{home / 'animexpr.sqlite3'}")
    with session_scope(engine) as session:
        for post_id, path in enumerate(paths, start=1):
            data = path.read_bytes()
            md5 = hashlib.md5(data).hexdigest()
            stored = store.put_original(md5, data, "jpg")
            session.add(
                Post(
                    id=post_id,
                    md5=md5,
                    class_name="smile",
                    state=PostState.DOWNLOADED,
                    file_relpath=stored.relpath,
                    file_sha256=stored.sha256,  # as harvest records it: the stage checks it
                )
            )
    return engine, store


# --detectors ------------------------------------------------------------------------------------------------

DETECTOR_NAMES = ("lbp", "animeface", "lbp+animeface")
SCENE_SEED = 2009


def scene_maker() -> ModuleType:
    """The busy scenes of the animeface reference test data, so that both use the same pictures' recipe."""
    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "record_animeface_reference.py"
    spec = importlib.util.spec_from_file_location("record_animeface_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Scene:
    path: Path
    face: tuple[int, int, int]  # where the face was pasted: x, y, side


def make_scenes(assets: Path, count: int, folder: Path, seed: int = SCENE_SEED) -> list[Scene]:
    """Danbooru-like full pictures: one shared face at 0.5x to 2x in a busy scene of 1024 to 1600 px."""
    maker = scene_maker()
    rng = np.random.default_rng(seed)
    faces = sorted((assets / "faces").glob("*/*.jpg"))
    scenes = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(1024, 1601, 2))
        picture = maker.busy_background(height, width, rng)
        face = decode_image(faces[int(rng.integers(len(faces)))]).rgb
        side = round(face.shape[0] * float(rng.uniform(0.5, 2.0)))
        interpolation = cv2.INTER_AREA if side < face.shape[0] else cv2.INTER_CUBIC
        face = cv2.resize(face, (side, side), interpolation=interpolation)
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        maker.paste(picture, face, x, y)
        path = folder / f"scene-{index:02d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        scenes.append(Scene(path, (x, y, side)))
    return scenes


@dataclass(frozen=True)
class DetectorRun:
    seconds: float
    summary: CropSummary
    boxes: dict[int, list[tuple[int, int, int, int, str]]]  # post id -> crops' boxes and detectors


def run_detector(paths: list[Path], name: str, cascade: Path, workers: int, scratch: Path) -> DetectorRun:
    settings = CropSettings(detector=make_detector_spec(name, cascade=cascade, download=False))
    engine, store = fresh_posts(paths, scratch)
    started = time.perf_counter()
    summary = crop_posts(engine, store, settings, workers=workers)
    seconds = time.perf_counter() - started
    boxes: dict[int, list[tuple[int, int, int, int, str]]] = {}
    with session_scope(engine) as session:
        query = select(Crop.post_id, Crop.box_x, Crop.box_y, Crop.box_w, Crop.box_h, Crop.detector)
        for post_id, x, y, w, h, detector in session.execute(query):
            boxes.setdefault(post_id, []).append((x, y, w, h, detector))
    engine.dispose()
    return DetectorRun(seconds, summary, boxes)


def right_crops(run: DetectorRun, scenes: list[Scene]) -> int:
    """Scenes whose crop is the pasted face (its box centre inside the pasted square)."""
    right = 0
    for post_id, scene in enumerate(scenes, start=1):
        fx, fy, side = scene.face
        for x, y, w, h, _ in run.boxes.get(post_id, []):
            if fx <= x + w / 2 <= fx + side and fy <= y + h / 2 <= fy + side:
                right += 1
                break
    return right


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def compare_detectors(assets: Path, scenes_count: int, workers: int) -> int:
    cascade = assets / "lbpcascade_animeface.xml"
    try:
        load_library()
        names: tuple[str, ...] = DETECTOR_NAMES
    except AnimeFaceUnavailable as exc:
        print(f"animeface is not installed ({exc}): lbp only")
        names = DETECTOR_NAMES[:1]
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        cells = make_images(assets, CELL, scratch)  # the 36 illustrations as they are
        scenes = make_scenes(assets, scenes_count, scratch)
        print(
            f"{len(cells)} illustrations (512 px), {len(scenes)} scenes (1024-1600 px, one face of "
            f"{min(s.face[2] for s in scenes)}-{max(s.face[2] for s in scenes)} px), {workers} workers, "
            f"{os.cpu_count()} CPUs"
        )
        header = (
            f"{'pictures':14s} {'detector':14s} {'posts':>5s} {'cropped':>8s} {'right':>6s} "
            f"{'several':>7s} {'no face':>7s} {'img/s':>6s}  crops by detector"
        )
        print(header)
        for label, paths in (("illustrations", cells), ("scenes", [s.path for s in scenes])):
            for name in names:
                run = run_detector(paths, name, cascade, workers, scratch)
                outcomes = run.summary.outcomes
                cropped = outcomes.get(CropOutcome.CROPPED, 0)
                right = f"{right_crops(run, scenes):6d}" if label == "scenes" else f"{'-':>6s}"
                by_detector = Counter(box[4] for boxes in run.boxes.values() for box in boxes)
                print(
                    f"{label:14s} {name:14s} {len(paths):5d} {cropped:4d} {100 * cropped / len(paths):2.0f}% "
                    f"{right} {outcomes.get(CropOutcome.SEVERAL_FACES, 0):7d} "
                    f"{outcomes.get(CropOutcome.NO_FACE, 0):7d} {len(paths) / run.seconds:6.2f}  "
                    + ", ".join(f"{k} {v}" for k, v in sorted(by_detector.items()))
                )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--detectors", action="store_true", help="compare the detectors' yield and speed")
    parser.add_argument(
        "--scenes", type=_at_least_one, default=10, help="Danbooru-like scenes for --detectors (at least 1)"
    )
    args = parser.parse_args()
    assets_value = os.environ.get("ANIMEXPR_ASSETS")
    if not assets_value or not Path(assets_value).is_dir():
        print("set ANIMEXPR_ASSETS to the assets folder (illustration grid and cascade)", file=sys.stderr)
        return 2
    assets = Path(assets_value)
    if args.detectors:
        return compare_detectors(assets, args.scenes, args.workers)
    cascade = assets / "lbpcascade_animeface.xml"
    settings = CropSettings(detector=make_detector_spec("lbp", cascade=cascade, download=False))
    default_threads = cv2.getNumThreads()

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        paths = make_images(assets, args.side, scratch)
        n = len(paths)
        print(f"{n} images of {args.side}x{args.side} px, {args.repeats} repeats, {args.workers} workers, ")
        print(f"OpenCV {cv2.__version__} with {default_threads} threads by default, {os.cpu_count()} CPUs")
        cold_s, _ = ours(paths[:4], settings, args.workers, scratch)  # starts the fork server
        print(f"first pooled run (4 images, fork server start included): {cold_s:.2f} s")
        times: dict[str, list[float]] = {
            "base": [],
            "base_detect": [],
            "base1": [],
            "ours": [],
            "ours1": [],
            "ours1_detect": [],
            "ours1_read": [],
        }
        crops = 0
        for _ in range(args.repeats):
            cv2.setNumThreads(default_threads)
            total, detect = baseline(paths, cascade)
            times["base"].append(total)
            times["base_detect"].append(detect)
            elapsed, summary = ours(paths, settings, args.workers, scratch)
            times["ours"].append(elapsed)
            crops = summary.crops
            elapsed, summary = ours(paths, settings, 1, scratch)
            times["ours1"].append(elapsed)
            times["ours1_detect"].append(summary.detect_s)
            times["ours1_read"].append(summary.read_s)
            cv2.setNumThreads(1)
            times["base1"].append(baseline(paths, cascade)[0])
        cv2.setNumThreads(default_threads)

    med = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: n / seconds for name, seconds in med.items()}
    print(f"crops made per run: {crops}")
    print(f"baseline, README loop, OpenCV default threads: {rate['base']:6.2f} images/s")
    print(f"baseline, README loop, one OpenCV thread:      {rate['base1']:6.2f} images/s")
    print(f"animexpr crop, {args.workers} workers:                  {rate['ours']:6.2f} images/s")
    print(f"animexpr crop, 1 worker:                      {rate['ours1']:6.2f} images/s")
    # Ratios per repeat (each pair ran back to back), then their median: steadier on a shared machine.
    speedup = statistics.median(b / o for b, o in zip(times["base"], times["ours"], strict=True))
    speedup1 = statistics.median(b / o for b, o in zip(times["base1"], times["ours"], strict=True))
    print(f"speed-up vs README loop (default threads): {speedup:.2f}x (median of per-repeat ratios)")
    print(f"speed-up vs README loop (one thread):      {speedup1:.2f}x")
    detect_per_image = med["base_detect"] / n
    across_runs = (med["ours1"] / n - detect_per_image) / detect_per_image
    same_run = statistics.median(
        (t - d) / d for t, d in zip(times["ours1"], times["ours1_detect"], strict=True)
    )
    base_overhead = statistics.median(
        (t - d) / d for t, d in zip(times["base"], times["base_detect"], strict=True)
    )
    print(f"detectMultiScale per image (baseline): {1000 * detect_per_image:.1f} ms")
    print(f"our overhead beyond the detector, 1 worker, same run:   {100 * same_run:.1f} %")
    print(f"  (our 1-worker time against the baseline's detectMultiScale time: {100 * across_runs:.1f} %)")
    print(f"README loop's own overhead beyond detectMultiScale:     {100 * base_overhead:.1f} %")
    read_share = statistics.median(r / t for r, t in zip(times["ours1_read"], times["ours1"], strict=True))
    print(
        "reading originals and checking their sha256, share of the 1-worker stage time: "
        f"{100 * read_share:.2f} % ({1000 * med['ours1_read'] / n:.2f} ms per image)"
    )
    for name, values in times.items():
        print(f"  {name:12s} " + " ".join(f"{v:.2f}" for v in values) + " s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
