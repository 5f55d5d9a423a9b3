"""The crop stage on real illustrations stored as downloaded posts: rows, files, reasons, re-runs, Ctrl-C."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import Engine, func, select

from animexpr.config import Settings
from animexpr.curate import crop as crop_module
from animexpr.curate.animeface import AnimeFaceUnavailable
from animexpr.curate.animeface import load_library as load_animeface_library
from animexpr.curate.crop import (
    CropResult,
    CropSettings,
    CropStoreError,
    FacePolicy,
    crop_posts,
    crop_square,
    make_detector_spec,
)
from animexpr.curate.detect import ANIMEFACE_FRAME_SCALE, Detection, DetectorSpec, choose_detector
from animexpr.db.models import Crop, CropAttempt, Post, PostState
from animexpr.db.session import open_db, session_scope
from animexpr.images import MISSING_FILE, DecodedImage, decode_image
from animexpr.store import FileStore, StoredFile, sha256_bytes, sha256_file

CELL = 512  # the grid is 6 x 6 illustrations of 512 px


def grid_cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    return np.ascontiguousarray(grid[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL])


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def rgba_png_with_transparent_border(rgb: np.ndarray) -> bytes:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:24, :, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class PostFile:
    post_id: int
    data: bytes | None  # None: the row points at a file that is not there
    ext: str
    class_name: str | None
    expected: str  # the crop outcome this post must get with the default settings


def add_posts(
    engine: Engine, store: FileStore, posts: list[PostFile], state: str = PostState.DOWNLOADED
) -> None:
    with session_scope(engine) as session:
        for post in posts:
            data = post.data if post.data is not None else f"missing {post.post_id}".encode()
            md5 = hashlib.md5(data).hexdigest()
            if post.data is None:
                relpath = store.relpath_for("originals", md5, post.ext)
            else:
                relpath = store.put_original(md5, data, post.ext).relpath
            session.add(
                Post(
                    id=post.post_id,
                    md5=md5,
                    file_ext=post.ext,
                    class_name=post.class_name,
                    state=state,
                    file_relpath=relpath,
                    file_sha256=sha256_bytes(data),  # what harvest records with the file
                    tags="",
                )
            )


@pytest.fixture
def grid(assets_dir: Path) -> np.ndarray:
    return decode_image(assets_dir / "illustration-grid.jpg").rgb


@pytest.fixture
def cascade(assets_dir: Path) -> Path:
    return assets_dir / "lbpcascade_animeface.xml"


@pytest.fixture
def detector(cascade: Path) -> DetectorSpec:
    return make_detector_spec("lbp", cascade=cascade, download=False)


def sample_posts(grid: np.ndarray) -> list[PostFile]:
    grey = cv2.cvtColor(grid_cell(grid, 1, 0), cv2.COLOR_RGB2GRAY)
    truncated = jpeg(grid_cell(grid, 1, 1))
    return [
        PostFile(1, jpeg(grid_cell(grid, 0, 1)), "jpg", "smile", "cropped"),  # one face
        PostFile(2, jpeg(grid_cell(grid, 0, 0)), "jpg", "angry", "no_face"),  # a girl seen from the side
        PostFile(3, jpeg(grid_cell(grid, 0, 5)), "jpg", "sad", "several_faces"),  # two faces, 102 and 117 px
        PostFile(4, jpeg(grid_cell(grid, 2, 4)), "jpg", "surprised", "several_faces"),  # 187 and 159 px
        PostFile(5, jpeg(np.dstack([grey] * 3)), "jpg", "smile", "greyscale"),
        PostFile(6, b"", "jpg", "smile", "empty_file"),
        PostFile(7, b"<html>rate limited</html>", "jpg", "smile", "not_an_image"),
        PostFile(8, truncated[: len(truncated) // 3], "jpg", "smile", "truncated"),
        PostFile(9, None, "jpg", "smile", MISSING_FILE),
        PostFile(10, jpeg(grid_cell(grid, 1, 2)), "jpg", None, "no_label"),
        PostFile(11, rgba_png_with_transparent_border(grid_cell(grid, 1, 3)), "png", "angry", "cropped"),
        PostFile(12, jpeg(grid_cell(grid, 1, 4)), "jpg", "sad", "cropped"),
    ]


@pytest.fixture
def posts(grid: np.ndarray, engine: Engine, store: FileStore) -> list[PostFile]:
    posts = sample_posts(grid)
    add_posts(engine, store, posts)
    # A skipped post (with a file) is never cropped.
    add_posts(
        engine, store, [PostFile(99, jpeg(grid_cell(grid, 0, 1)), "jpg", "smile", "")], PostState.SKIPPED
    )
    return posts


def attempts(engine: Engine) -> dict[int, CropAttempt]:
    with session_scope(engine) as session:
        return {a.post_id: a for a in session.scalars(select(CropAttempt))}


def crops(engine: Engine) -> list[Crop]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Crop).order_by(Crop.post_id, Crop.face_index)))


def test_every_post_gets_its_outcome_and_every_crop_its_row_and_file(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec
) -> None:
    settings = CropSettings(detector=detector)
    summary = crop_posts(engine, store, settings, workers=1)

    assert summary.total == len(posts)
    assert dict(summary.outcomes) == dict(
        sorted({p.expected: sum(q.expected == p.expected for q in posts) for p in posts}.items())
    )
    recorded = attempts(engine)
    # Every post is recorded with its outcome, except the missing original: a later run should retry it.
    assert {post_id: a.outcome for post_id, a in recorded.items()} == {
        p.post_id: p.expected for p in posts if p.expected != MISSING_FILE
    }
    assert all(a.settings_key == settings.settings_key for a in recorded.values())
    assert recorded[3].faces_found == 2
    assert "policy largest-if-dominant" in (recorded[3].detail or "")
    assert recorded[8].detail
    assert "cut short" in recorded[8].detail

    made = crops(engine)
    labels = {p.post_id: p.class_name for p in posts}
    assert [c.post_id for c in made] == [1, 11, 12]
    assert summary.crops == 3
    assert summary.done == len(posts) - 1
    for crop in made:
        assert crop.label == labels[crop.post_id]
        assert crop.state == "pending"
        assert crop.faces_policy == "largest-if-dominant"
        assert crop.detections_count == 1
        assert crop.detector == "lbp"
        assert crop.detection_score is not None
        assert crop.detection_score > 5  # merged hits, more than --min-neighbors
        assert crop.detector_settings["margin"] == 0.25
        assert crop.detector_settings["cascade_sha256"] == detector.cascade_sha256
        assert crop.settings_key == settings.settings_key
        assert crop.size_px == 128
        path = store.abspath(crop.file_relpath)
        assert sha256_file(path) == crop.sha256
        assert crop.file_relpath.startswith("crops/")
        pixels = decode_image(path).rgb
        assert pixels.shape == (128, 128, 3)
        # The box lies in the 512 px original, and the square is the geometry's, in the same pixels.
        box = Detection(crop.box_x, crop.box_y, crop.box_w, crop.box_h)
        assert box.x >= 0
        assert box.x + box.w <= CELL
        assert box.y >= 0
        assert box.y + box.h <= CELL
        assert (crop.crop_x, crop.crop_y, crop.crop_size) == tuple(
            vars(crop_square(box, 0.25, CELL, CELL)).values()
        )


def test_crop_pixels_are_the_original_square_resized(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec
) -> None:
    crop_posts(engine, store, CropSettings(detector=detector), workers=1)
    crop = crops(engine)[0]
    original = decode_image(posts[0].data or b"").rgb
    square = original[crop.crop_y : crop.crop_y + crop.crop_size, crop.crop_x : crop.crop_x + crop.crop_size]
    expected = cv2.resize(square, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.array_equal(decode_image(store.abspath(crop.file_relpath)).rgb, expected)


def test_a_rerun_crops_only_what_these_settings_have_not_seen(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec, grid: np.ndarray
) -> None:
    settings = CropSettings(detector=detector)
    crop_posts(engine, store, settings, workers=1)
    again = crop_posts(engine, store, settings, workers=1)
    assert again.total == 1
    assert dict(again.outcomes) == {MISSING_FILE: 1}
    assert len(crops(engine)) == 3

    add_posts(engine, store, [PostFile(20, jpeg(grid_cell(grid, 3, 0)), "jpg", "smile", "cropped")])
    third = crop_posts(engine, store, settings, workers=1)
    assert third.total == 2
    assert third.crops == 1

    other = CropSettings(detector=detector, faces=FacePolicy.ALL)
    fourth = crop_posts(engine, store, other, workers=1)
    assert fourth.total == len(posts) + 1
    with session_scope(engine) as session:
        per_key = dict(
            session.execute(
                select(CropAttempt.settings_key, func.count()).group_by(CropAttempt.settings_key)
            ).all()
        )
    assert per_key == {settings.settings_key: len(posts), other.settings_key: len(posts)}


def test_face_policies_on_a_post_with_two_faces(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec
) -> None:
    crop_posts(engine, store, CropSettings(detector=detector, faces=FacePolicy.ALL), workers=1)
    two = [c for c in crops(engine) if c.post_id == 3]
    assert [(c.face_index, c.faces_policy, c.detections_count, c.label) for c in two] == [
        (0, "all", 2, "sad"),
        (1, "all", 2, "sad"),
    ]
    crop_posts(engine, store, CropSettings(detector=detector, faces=FacePolicy.LARGEST), workers=1)
    largest = [c for c in crops(engine) if c.post_id == 3 and c.faces_policy == "largest"]
    assert len(largest) == 1
    assert largest[0].box_w == max(c.box_w for c in two)


def test_faces_under_min_face_are_skipped_with_a_reason(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec
) -> None:
    summary = crop_posts(engine, store, CropSettings(detector=detector, min_face=400), workers=1)
    assert summary.crops == 0
    assert attempts(engine)[1].outcome == "face_too_small"
    assert "--min-face 400" in (attempts(engine)[1].detail or "")


def test_greyscale_can_be_kept(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec
) -> None:
    crop_posts(engine, store, CropSettings(detector=detector, keep_greyscale=True), workers=1)
    assert attempts(engine)[5].outcome == "cropped"


def test_very_large_images_are_searched_on_a_reduced_copy(
    engine: Engine, store: FileStore, grid: np.ndarray, detector: DetectorSpec
) -> None:
    big = cv2.resize(grid_cell(grid, 0, 1), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    add_posts(engine, store, [PostFile(1, jpeg(big), "jpg", "smile", "cropped")])
    full = CropSettings(detector=detector)
    reduced = CropSettings(detector=detector, detect_max_pixels=512 * 512)
    crop_posts(engine, store, full, workers=1)
    crop_posts(engine, store, reduced, workers=1)
    by_key = {c.settings_key: c for c in crops(engine)}
    a, b = by_key[full.settings_key], by_key[reduced.settings_key]
    # The box found on the 512 px copy, mapped back, matches the full-size one to a few 2048-px pixels.
    assert abs(a.box_x - b.box_x) <= 24
    assert abs(a.box_y - b.box_y) <= 24
    assert abs(a.box_w - b.box_w) <= 48
    assert b.box_w > 400  # in the original's pixels, not the copy's


def test_two_workers_give_the_same_crops_as_one(
    grid: np.ndarray, settings: Settings, tmp_path: Path, detector: DetectorSpec
) -> None:
    results = []
    for workers in (1, 2):
        home = tmp_path / f"home-{workers}"
        store = FileStore(home)
        store.create_areas()
        engine = open_db(f"sqlite:///{home / 'db.sqlite3'}")
        add_posts(engine, store, sample_posts(grid))
        summary = crop_posts(engine, store, CropSettings(detector=detector), workers=workers)
        results.append(
            ({a: b.outcome for a, b in attempts(engine).items()}, sorted(c.sha256 for c in crops(engine)))
        )
        assert summary.crops == 3
        engine.dispose()
    assert results[0] == results[1]


class InterruptAfter:
    """A progress that presses Ctrl-C once `n` posts are done."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, result: CropResult) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_keeps_what_is_finished_and_a_rerun_does_the_rest(
    engine: Engine, store: FileStore, posts: list[PostFile], detector: DetectorSpec, workers: int
) -> None:
    settings = CropSettings(detector=detector)
    first = crop_posts(engine, store, settings, workers=workers, progress=InterruptAfter(4))
    assert first.interrupted
    kept = attempts(engine)
    assert 3 <= len(kept) == first.done < len(posts) - 1
    for crop in crops(engine):
        assert store.verify(crop.file_relpath, crop.sha256)
    second = crop_posts(engine, store, settings, workers=workers)
    assert not second.interrupted
    assert second.total == len(posts) - len(kept)
    assert len(attempts(engine)) == len(posts) - 1


@pytest.mark.slow
def test_sigint_to_the_command_stops_it_cleanly(
    home: Path, engine: Engine, store: FileStore, grid: np.ndarray, cascade: Path
) -> None:
    # Ten half-size grids (1536 px, about a second each): the signal lands after the first is committed, with
    # one post per worker in flight and the rest waiting.
    data = jpeg(cv2.resize(grid, (1536, 1536), interpolation=cv2.INTER_AREA), 90)
    big_posts = [PostFile(i, data + bytes(i), "jpg", "smile", "") for i in range(1, 11)]
    add_posts(engine, store, big_posts)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "120"}
    command = [sys.executable, "-m", "animexpr", "--home", str(home), "crop", "--cascade", str(cascade)]
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not attempts(engine) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert attempts(engine), "no post was finished before the deadline"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    kept = attempts(engine)
    assert process.returncode == 130, stderr
    assert "interrupted: kept" in stdout
    assert "Traceback" not in stderr
    assert 1 <= len(kept) < 10
    for crop in crops(engine):
        assert store.verify(crop.file_relpath, crop.sha256)
    rerun = subprocess.run(
        [*command, "--workers", "2"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"of {10 - len(kept)} posts" in rerun.stdout
    assert len(attempts(engine)) == 10


def run_crop(home: Path, *args: str, cascade: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`animexpr crop ARGS` in a process of its own, as a user runs it (the cascade from the environment)."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "200"}
    if cascade is not None:
        env["ANIMEXPR_CASCADE"] = str(cascade)
    command = [sys.executable, "-m", "animexpr", "--home", str(home), "crop", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_crop_command_prints_a_summary_and_errors_in_one_line(
    home: Path, engine: Engine, store: FileStore, posts: list[PostFile], cascade: Path
) -> None:
    result = run_crop(home, "--cascade", str(cascade), "--workers", "2", "--detector", "lbp")
    assert result.returncode == 0, result.stderr
    assert f"cropped {len(posts) - 1} of {len(posts)} posts" in result.stdout
    assert "3 crops from 3 posts" in result.stdout
    assert "several_faces 2" in result.stdout
    assert "detector lbp (chosen with --detector)" in result.stdout
    missing = run_crop(home, "--cascade", str(home / "nope.xml"))
    assert missing.returncode == 1
    assert "no cascade file at" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_crop_without_detector_keeps_the_detector_of_the_stores_earlier_crops(
    home: Path, engine: Engine, store: FileStore, posts: list[PostFile], cascade: Path
) -> None:
    """A store cropped with lbp is not cropped again by a newer default (lbp+animeface where installed)."""
    first = run_crop(home, "--workers", "1", "--detector", "lbp", cascade=cascade)
    assert first.returncode == 0, first.stderr
    done = len(attempts(engine))
    again = run_crop(home, "--workers", "1", cascade=cascade)
    assert again.returncode == 0, again.stderr
    assert "cropped 0 of 1 posts" in again.stdout  # only the post whose file is missing, retried
    assert len(attempts(engine)) == done
    default = choose_detector(None).name
    change = f"--detector {default}" if default != "lbp" else "--detector NAME"
    assert f"detector lbp (the detector of this store's earlier crops; {change} to change)" in again.stdout


def test_crop_refuses_zero_workers_as_a_usage_error(home: Path) -> None:
    result = run_crop(home, "--workers", "0")
    assert result.returncode == 2
    assert "--workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_crop_json_gives_the_summary_figures_and_the_default_detector(
    home: Path, engine: Engine, store: FileStore, posts: list[PostFile], cascade: Path
) -> None:
    result = run_crop(home, "--json", "--workers", "1", cascade=cascade)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    expected = choose_detector(None)
    assert (figures["detector"], figures["detector_reason"]) == (expected.name, expected.reason)
    assert figures["total"] == len(posts)
    assert figures["done"] == len(posts) - 1  # the missing file is retried, not recorded
    assert figures["outcomes"]["greyscale"] == 1
    assert figures["crops"] >= figures["cropped_posts"] >= 3
    assert figures["interrupted"] is False
    assert set(figures) >= {"settings_key", "elapsed_s", "posts_per_s"}


def drawn_picture(seed: int, width: int, height: int) -> bytes:
    """A colourful picture (no assets needed): random colour blocks, smoothed."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return jpeg(cv2.resize(blocks, (width, height), interpolation=cv2.INTER_CUBIC))


def test_whole_detector_crops_face_collections_without_a_cascade(engine: Engine, store: FileStore) -> None:
    sizes = [(256, 256), (300, 200), (180, 240), (40, 40)]
    add_posts(
        engine,
        store,
        [PostFile(i, drawn_picture(i, w, h), "jpg", "smile", "") for i, (w, h) in enumerate(sizes, start=1)],
    )
    settings = CropSettings(detector=make_detector_spec("whole"))
    summary = crop_posts(engine, store, settings, workers=2)
    assert summary.crops == 3
    assert attempts(engine)[4].outcome == "face_too_small"  # 40 px: more than 2x upscaling to 128
    made = {c.post_id: c for c in crops(engine)}
    assert (made[2].crop_x, made[2].crop_y, made[2].crop_size) == (50, 0, 200)
    assert (made[3].crop_x, made[3].crop_y, made[3].crop_size) == (0, 30, 180)
    for crop in made.values():
        assert crop.detection_score is None
        assert decode_image(store.abspath(crop.file_relpath)).rgb.shape == (128, 128, 3)
    assert crop_posts(engine, store, settings, workers=2).total == 0


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def combined(cascade: Path) -> DetectorSpec:
    try:
        load_animeface_library()
    except AnimeFaceUnavailable as exc:
        pytest.skip(f"animeface is not installed here ({exc})")
    return make_detector_spec("lbp+animeface", cascade=cascade, download=False)


def test_combined_detector_records_who_found_each_face_and_both_scores(
    grid: np.ndarray, combined: DetectorSpec, detector: DetectorSpec, engine: Engine, store: FileStore
) -> None:
    add_posts(
        engine,
        store,
        [
            PostFile(1, png(grid_cell(grid, 0, 1)), "png", "smile", "cropped"),  # both detectors
            PostFile(2, png(grid_cell(grid, 1, 2)), "png", "sad", "cropped"),  # only the cascade
            PostFile(3, png(grid_cell(grid, 3, 1)), "png", "angry", "cropped"),  # only animeface
            # One face both found and two only animeface found (88, 96, 96 px): none dominates.
            PostFile(4, png(grid_cell(grid, 2, 1)), "png", "smile", "several_faces"),
        ],
    )
    settings = CropSettings(detector=combined)
    summary = crop_posts(engine, store, settings, workers=1)
    assert summary.crops == 3
    assert attempts(engine)[4].outcome == "several_faces"
    assert attempts(engine)[4].faces_found == 3
    made = {c.post_id: c for c in crops(engine)}
    assert {post: c.detector for post, c in made.items()} == {1: "lbp+animeface", 2: "lbp", 3: "animeface"}
    assert set(made[1].detector_scores or {}) == {"lbp", "animeface"}
    assert set(made[2].detector_scores or {}) == {"lbp"}
    assert set(made[3].detector_scores or {}) == {"animeface"}
    likelihood = (made[1].detector_scores or {})["animeface"]
    assert made[1].detection_score == pytest.approx(1 + likelihood)
    assert made[2].detection_score == 0.0
    assert made[3].detection_score == (made[3].detector_scores or {})["animeface"]
    assert made[1].detector_settings["detector"] == "lbp+animeface"
    # animeface's tighter box is framed like the cascade's before the margin.
    only_animeface = made[3]
    assert only_animeface.crop_size == round(only_animeface.box_w * ANIMEFACE_FRAME_SCALE * 1.5)
    # Another detector is another settings key: its run crops every post again.
    assert CropSettings(detector=detector).settings_key != settings.settings_key
    assert crop_posts(engine, store, settings, workers=1).total == 0
    assert crop_posts(engine, store, CropSettings(detector=detector), workers=1).total == 4


def test_lbp_crops_record_their_score_by_detector(
    grid: np.ndarray, detector: DetectorSpec, engine: Engine, store: FileStore
) -> None:
    add_posts(engine, store, [PostFile(1, png(grid_cell(grid, 0, 1)), "png", "smile", "cropped")])
    crop_posts(engine, store, CropSettings(detector=detector), workers=1)
    (made,) = crops(engine)
    assert made.detector == "lbp"
    assert made.detector_scores == {"lbp": made.detection_score}


def test_an_unexpected_error_on_one_post_is_counted_not_recorded_and_retried(
    engine: Engine, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_posts(engine, store, [PostFile(i, drawn_picture(i, 200, 200), "jpg", "smile", "") for i in (1, 2, 3)])
    real_decode = crop_module.decode_image

    def decode_failing_on_post_2(data: bytes, **options: int) -> DecodedImage:
        if data == drawn_picture(2, 200, 200):
            raise RuntimeError("a bug met on this one file")
        return real_decode(data, **options)

    monkeypatch.setattr(crop_module, "decode_image", decode_failing_on_post_2)
    settings = CropSettings(detector=make_detector_spec("whole"))
    summary = crop_posts(engine, store, settings, workers=1)
    assert dict(summary.outcomes) == {"cropped": 2, "crop_error": 1}
    assert sorted(attempts(engine)) == [1, 3]
    monkeypatch.setattr(crop_module, "decode_image", real_decode)
    retry = crop_posts(engine, store, settings, workers=1)
    assert retry.total == 1
    assert dict(retry.outcomes) == {"cropped": 1}


def test_a_store_that_cannot_be_written_stops_the_run_keeping_what_is_done(
    engine: Engine, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_posts(engine, store, [PostFile(i, drawn_picture(i, 200, 200), "jpg", "smile", "") for i in (1, 2, 3)])
    real_put = FileStore.put_bytes
    calls = []

    def put_until_the_disk_is_full(self: FileStore, area: str, data: bytes, ext: str) -> StoredFile:
        calls.append(area)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_put(self, area, data, ext)

    monkeypatch.setattr(FileStore, "put_bytes", put_until_the_disk_is_full)
    with pytest.raises(CropStoreError, match="No space left on device"):
        crop_posts(engine, store, CropSettings(detector=make_detector_spec("whole")), workers=1)
    assert sorted(attempts(engine)) == [1]
    assert len(crops(engine)) == 1


def test_workers_that_cannot_start_fall_back_to_this_process(
    engine: Engine,
    store: FileStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What `python - <<EOF` does to multiprocessing: each worker must run a main script that is not a file.
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    monkeypatch.setattr(main, "__file__", str(tmp_path / "not-a-file.py"), raising=False)
    add_posts(engine, store, [PostFile(i, drawn_picture(i, 200, 200), "jpg", "smile", "") for i in (1, 2, 3)])
    summary = crop_posts(engine, store, CropSettings(detector=make_detector_spec("whole")), workers=2)
    assert dict(summary.outcomes) == {"cropped": 3}
    assert len(crops(engine)) == 3
    assert "cropping in this process instead" in caplog.text


def test_crop_stage_on_every_database(any_db_url: str, store: FileStore) -> None:
    engine = open_db(any_db_url)
    try:
        add_posts(engine, store, [PostFile(i, drawn_picture(i, 160, 160), "jpg", "sad", "") for i in (1, 2)])
        settings = CropSettings(detector=make_detector_spec("whole"))
        assert crop_posts(engine, store, settings, workers=2).crops == 2
        assert crop_posts(engine, store, settings, workers=2).total == 0
        assert [(c.post_id, c.label, c.state) for c in crops(engine)] == [
            (1, "sad", "pending"),
            (2, "sad", "pending"),
        ]
    finally:
        engine.dispose()
