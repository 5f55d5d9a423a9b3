"""Expander throughput against a plain albumentations loop, and the time to create and verify a snapshot.

    python bench/expand.py [--crops 600] [--images 1200] [--repeats 3] [--side 128] [--snapshot-target 11612]

Baseline, measured in the same run on the same crops: one process, the same recipe (`build_recipe`), and what
a plain script does per image: `cv2.imread`, `compose(image=...)`, `cv2.imwrite`. A second baseline writes
through the store instead (temporary file, fsync, rename), which is what the expander must do and what a
plain `cv2.imwrite` skips. The expander is timed end to end (`expand()`: plan, database reads and writes,
workers, durable content-addressed writes). Each repeat of the expander uses another seed, so it makes as many
new images as the baselines. Medians are printed because the machine is shared.

Hash check: the expander reads each crop and checks it against its recorded sha256 before augmenting it, and
`snapshot create` checks every file it lists; both are timed inside the stage (`ExpandSummary.read_s`,
`SnapshotInfo.check_s`) and printed as a share of the same run's stage time (the 1-worker expander, whose
reading time is not spread over processes, and the create).

Crops are the real faces of ANIMEXPR_ASSETS/faces when it is set (resized to --side, the crop stage's
default 128 px), generated pictures otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from animexpr.config import Settings, load_settings
from animexpr.curate.dedup import eligible_crops, update_duplicates
from animexpr.curate.expand import build_recipe, expand
from animexpr.curate.snapshot import create_snapshot, verify_snapshot
from animexpr.db.models import Crop, CropState
from animexpr.db.session import open_db, session_scope
from animexpr.store import FileStore
from animexpr.testing.factories import crop_row, post_row
from animexpr.workers import default_workers

CLASSES = ("calli", "gura", "ina", "kiara")


def source_images(count: int, side: int) -> list[tuple[str, str, np.ndarray]]:
    """(post md5, label, image) for `count` crops."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    faces_dir = Path(assets) / "faces" if assets else None
    images = []
    if faces_dir is not None and faces_dir.is_dir():
        paths = sorted(
            (p for label in CLASSES for p in (faces_dir / label).glob("*.jpg")), key=lambda p: p.name
        )
        for path in paths[:count]:
            face = cv2.imread(str(path))
            assert face is not None, path
            image = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
            images.append((path.name[:32], path.parent.name, image))
    rng = np.random.default_rng(0)
    while len(images) < count:
        coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
        images.append((f"{len(images):032x}", CLASSES[len(images) % 4], image))
    return images


def make_home(home: Path, count: int, side: int) -> tuple[Settings, Engine, FileStore]:
    settings = load_settings(home=home, classes=",".join(CLASSES), environ={})
    engine = open_db(settings.db_url)
    store = FileStore(home)
    store.create_areas()
    with session_scope(engine) as session:
        post_ids: dict[str, int] = {}
        faces: dict[int, int] = {}
        for md5, label, image in source_images(count, side):
            if md5 not in post_ids:
                post_ids[md5] = len(post_ids) + 1
                session.add(post_row(post_ids[md5], label, md5=md5))
                session.flush()
            post_id = post_ids[md5]
            face_index = faces.get(post_id, 0)
            faces[post_id] = face_index + 1
            stored = store.put_bytes("crops", cv2.imencode(".png", image)[1].tobytes(), "png")
            session.add(_crop(post_id, face_index, stored.sha256, stored.relpath, label, side))
    return settings, engine, store


def _crop(post_id: int, face_index: int, sha256: str, relpath: str, label: str, side: int) -> Crop:
    return crop_row(
        post_id,
        label,
        face_index=face_index,
        state=CropState.ACCEPTED,
        sha256=sha256,
        file_relpath=relpath,
        size_px=side,
        crop_x=side * face_index,
        crop_size=side,
    )


class Timer:
    """Wall time and CPU time of this process and of its finished children (the expander's workers)."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu_seconds() - self.cpu

    def rates(self, images: int) -> tuple[float, float]:
        """(images per second, CPU milliseconds per image)."""
        return images / self.wall, 1000 * self.cpu / images


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def plain_loop(paths: list[Path], out_dir: Path, durable: bool = False) -> None:
    """What a plain single-process script does with the same recipe; `durable` writes through the store
    (temporary, fsync, rename) as the expander must, to show what durability alone costs."""
    recipe = build_recipe()
    recipe.set_random_seed(0)
    store = FileStore(out_dir)
    for index, path in enumerate(paths):
        image = cv2.imread(str(path))
        augmented = recipe(image=image)["image"]
        if durable:
            store.put_bytes("augmented", cv2.imencode(".png", augmented)[1].tobytes(), "png")
        else:
            cv2.imwrite(str(out_dir / f"{index}.png"), augmented)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crops", type=int, default=600)
    parser.add_argument("--images", type=int, default=1200, help="augmented images per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--snapshot-target", type=int, default=11_612, help="0 to skip the snapshot part")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the temporary home goes")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-expand-", dir=args.work_dir))
    try:
        print(
            f"cores available {default_workers()}, load average {os.getloadavg()}, crops {args.crops} x "
            f"{args.side}px, {args.images} augmented images per run, {args.repeats} repeats"
        )
        settings, engine, store = make_home(work / "home", args.crops, args.side)
        update_duplicates(engine, store)  # hash once, outside the timed runs
        with Session(engine) as session:  # the assets hold a few near-duplicates, which are left out
            eligible = len(eligible_crops(session, CLASSES))
        crop_paths = sorted((work / "home" / "crops").rglob("*.png"))
        baseline_paths = [crop_paths[i % len(crop_paths)] for i in range(args.images)]

        runs: dict[str, list[tuple[float, float]]] = {
            "plain": [],
            "plain durable": [],
            "parallel": [],
            "single": [],
        }
        read_shares: list[float] = []
        for repeat in range(args.repeats):
            for key, durable in (("plain", False), ("plain durable", True)):
                out = work / f"plain-{repeat}"
                out.mkdir()
                with Timer() as timer:
                    plain_loop(baseline_paths, out, durable)
                runs[key].append(timer.rates(args.images))
                shutil.rmtree(out)
            for workers, key in ((args.workers, "parallel"), (1, "single")):
                with Timer() as timer:
                    summary = expand(
                        engine,
                        store,
                        settings,
                        target=eligible + args.images,
                        seed=2 * repeat + (key == "single"),
                        workers=workers,
                    )
                assert summary.created == args.images, summary
                runs[key].append(timer.rates(args.images))
                if key == "single":
                    read_shares.append(summary.read_s / timer.wall)
            print(
                f"repeat {repeat} (load {os.getloadavg()[0]:.1f}): "
                + ", ".join(f"{key} {runs[key][-1][0]:.0f} img/s" for key in runs)
            )
        base, base_durable, fast, one = (statistics.median(rate for rate, _ in runs[key]) for key in runs)
        cpu = {key: statistics.median(ms for _, ms in runs[key]) for key in runs}
        # Ratios within one repeat compare runs made seconds apart, under about the same load.
        paired = statistics.median(p[0] / b[0] for p, b in zip(runs["parallel"], runs["plain"], strict=True))
        print(
            f"median: plain loop {base:.0f} img/s; expander with {args.workers} workers {fast:.0f} img/s "
            f"({fast / base:.2f}x; median of per-repeat ratios {paired:.2f}x); "
            f"expander with 1 worker {one:.0f} img/s ({one / base:.2f}x)"
        )
        paired_durable = statistics.median(
            p[0] / b[0] for p, b in zip(runs["parallel"], runs["plain durable"], strict=True)
        )
        print(
            f"median: plain loop writing durably through the store {base_durable:.0f} img/s; expander with "
            f"{args.workers} workers against it {fast / base_durable:.2f}x (median of per-repeat ratios "
            f"{paired_durable:.2f}x)"
        )
        print(
            "median share of the 1-worker expander's time spent reading crops and checking their sha256: "
            f"{100 * statistics.median(read_shares):.2f} %"
        )
        print(
            "median CPU time per image (all processes): "
            + ", ".join(f"{key} {ms:.2f} ms" for key, ms in cpu.items())
        )

        if args.snapshot_target:
            snapshot_timings(engine, store, settings, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def snapshot_timings(engine: Engine, store: FileStore, settings: Settings, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    summary = expand(engine, store, settings, target=args.snapshot_target, seed=0, workers=args.workers)
    print(
        f"expand to {args.snapshot_target}: {summary.created} images in {time.perf_counter() - start:.1f} s"
    )
    creates, verifies, check_shares = [], [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        info = create_snapshot(engine, store, settings, f"bench-{repeat}", test_fraction=0.0)
        creates.append(time.perf_counter() - start)
        check_shares.append(info.check_s / creates[-1])
        start = time.perf_counter()
        report = verify_snapshot(engine, settings, info.name)
        verifies.append(time.perf_counter() - start)
        assert report.ok, report
        assert report.files == info.counts["total"] == args.snapshot_target
        print(
            f"repeat {repeat}: create {creates[-1]:.2f} s, verify {verifies[-1]:.2f} s ({report.files} files)"
        )
    split = create_snapshot(engine, store, settings, "bench-split", test_fraction=0.1)
    print(
        f"median: snapshot of {args.snapshot_target} images created in {statistics.median(creates):.2f} s, "
        f"verified in {statistics.median(verifies):.2f} s; with --test-fraction 0.1 it holds "
        f"{split.counts['total']} images (train {split.counts['split_sizes']['train']}, "
        f"test {split.counts['split_sizes']['test']})"
    )
    print(
        "median share of snapshot create spent checking every file's sha256: "
        f"{100 * statistics.median(check_shares):.1f} %"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
