"""The crop stage: faces out of downloaded posts, as square PNG crops waiting for review.

Geometry (pure functions, in the original's pixels):
- the detector's box is enlarged by `margin` of its side on every side (default 0.25, so the square is 1.5x
  the box: LBP boxes run from the brows to the mouth; 1.5x holds the whole face, hair line and chin),
- made square around the box centre, shifted to stay inside the image, and padded (white) only where the image
  is smaller than the square,
- resized to `size` (area interpolation down, cubic up).

Faces whose crop would be upscaled more than 2x are skipped (`--min-face`). Very large images are searched on
a reduced copy and the boxes mapped back. The label belongs to the post, not to a face, so with several faces
the policy (`FacePolicy`) decides, and each crop records the policy and how many faces were found.

Each original is checked against the sha256 recorded when it was harvested before it is decoded: bytes that
differ (another post's picture written over it, a flipped bit) are the outcome `corrupt_file`, never cropped
into the post's class.

Work is spread over processes: each worker decodes, detects, crops, encodes and stores the PNG (the store's
writes are atomic and content-addressed, so workers never collide); the parent alone writes database rows, in
small batches, each committed after its files exist. Ctrl-C commits what is finished and stops.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import cv2
import numpy as np
from sqlalchemy import Engine, exists, select
from sqlalchemy.exc import IntegrityError

from animexpr.curate.defaults import (
    DEFAULT_MARGIN,
    DEFAULT_SIZE,
    FacePolicy,
    default_min_face,
)
from animexpr.curate.detect import (
    CASCADE_WINDOW_PX,
    COMBINED,
    DETECTORS,
    LBP,
    Detection,
    DetectorChoice,
    DetectorError,
    DetectorSpec,
    FaceDetector,
    build_detector,
    choose_detector,
    resolve_cascade,
)
from animexpr.db.models import Crop, CropAttempt, CropState, Post, PostState
from animexpr.db.session import session_scope
from animexpr.errors import AnimexprError
from animexpr.images import DEFAULT_MAX_PIXELS, MISSING_FILE, ImageDecodeError, decode_image, encode_png
from animexpr.store import CORRUPT_FILE as STORE_CORRUPT_FILE
from animexpr.store import CorruptFileError, FileStore, StoredFile, UnsafePathError
from animexpr.workers import default_workers, pool_context

log = logging.getLogger(__name__)

# Bump when the same settings would now give other pixels: the settings key changes, posts are cropped anew.
CROP_ALGORITHM_VERSION: Final = 1
# With several faces, the largest is "dominant" when its side is at least twice the next one's (4x the area).
DEFAULT_DOMINANCE: Final = 2.0
MIN_CROP_SIZE: Final = 8  # the smallest crop side, in pixels
MANUAL_DETECTOR: Final = "manual"  # the detector of crops made by hand (see manual_crop)
# Images over 3072 x 3072 pixels are searched on a copy reduced to this many pixels (detection time grows
# with the pixel count: about 2 s for 9.4 MP at minSize 24 on one core of the build machine).
DEFAULT_DETECT_MAX_PIXELS: Final = 3072 * 3072
PAD_VALUE: Final = (255, 255, 255)
# Each worker process runs OpenCV on one thread: the processes already fill the cores, and OpenCV's own
# threads would only compete with them.
WORKER_OPENCV_THREADS = 1
_FLUSH_EVERY: Final = 32
_FLUSH_SECONDS: Final = 2.0


class CropOutcome(StrEnum):
    """A post's crop attempt: cropped, or why not (image decoding reasons come from animexpr.images)."""

    CROPPED = "cropped"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    FACE_TOO_SMALL = "face_too_small"
    GREYSCALE = "greyscale"
    NO_LABEL = "no_label"
    # The stored original no longer has the sha256 recorded at harvest, or its path is not a store path.
    CORRUPT_FILE = STORE_CORRUPT_FILE
    # Counted but not recorded, so that the next run tries the post again: an unexpected failure on this
    # one post (logged with its message).
    CROP_ERROR = "crop_error"


# Outcomes that say nothing lasting about the post: not recorded, retried by the next run.
RETRIED_OUTCOMES: Final = frozenset({MISSING_FILE, CropOutcome.CROP_ERROR})


class CropStoreError(AnimexprError):
    """A crop could not be written to the store (disk full, permissions): the run stops."""


class CropWorkerDied(AnimexprError):
    """A worker process ended in the middle of a post (out of memory, a crash in native code)."""


# Pure geometry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Square:
    """A square in the original's pixels; it may reach outside the image where the image is too small."""

    x: int
    y: int
    side: int


def crop_side(box: Detection, margin: float) -> int:
    """The crop's side: the box, framed as the cascade frames faces, plus `margin` of it on each side."""
    return max(1, round(box.side * box.frame_scale * (1 + 2 * margin)))


def place_span(centre: float, side: int, extent: int) -> int:
    """Start of a span of length `side` centred on `centre`, shifted to lie inside [0, extent).

    When `side` exceeds `extent` the span covers the whole extent (padding on both sides as needed).
    """
    start = round(centre - side / 2)
    low, high = min(0, extent - side), max(0, extent - side)
    return min(max(start, low), high)


def crop_square(box: Detection, margin: float, width: int, height: int) -> Square:
    side = crop_side(box, margin)
    x = place_span(box.x + box.w / 2, side, width)
    y = place_span(box.y + box.h / 2, side, height)
    return Square(x, y, side)


def cut_square(rgb: np.ndarray, square: Square) -> np.ndarray:
    """The square's pixels, padded with white where it reaches outside the image."""
    height, width = rgb.shape[:2]
    x0, y0 = max(square.x, 0), max(square.y, 0)
    x1, y1 = min(square.x + square.side, width), min(square.y + square.side, height)
    inside = rgb[y0:y1, x0:x1]
    pads = (y0 - square.y, square.y + square.side - y1, x0 - square.x, square.x + square.side - x1)
    if not any(pads):
        return inside
    return cv2.copyMakeBorder(inside, *pads, borderType=cv2.BORDER_CONSTANT, value=PAD_VALUE)


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    side = pixels.shape[0]
    if side == size:
        return np.ascontiguousarray(pixels)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(pixels, (size, size), interpolation=interpolation)


def detection_scale(width: int, height: int, max_pixels: int, min_face: int) -> float:
    """The factor (<= 1) for the copy the detector searches.

    Large images are reduced to `max_pixels`, but never so far that a face of `min_face` pixels falls below
    the cascade's 24-pixel window.
    """
    pixels = width * height
    if pixels <= max_pixels:
        return 1.0
    return min(1.0, max(math.sqrt(max_pixels / pixels), CASCADE_WINDOW_PX / max(min_face, 1)))


def map_box_back(box: Detection, scale: float, width: int, height: int) -> Detection:
    """A box found on a copy reduced by `scale`, in the original's pixels (clipped to the image)."""
    if scale == 1.0:
        return box
    x, y = round(box.x / scale), round(box.y / scale)
    w, h = round(box.w / scale), round(box.h / scale)
    x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    return replace(box, x=x, y=y, w=min(w, width - x), h=min(h, height - y))


def choose_faces(
    faces: Sequence[Detection], policy: FacePolicy, dominance: float = DEFAULT_DOMINANCE
) -> list[tuple[int, Detection]]:
    """(face index, face) to crop; an empty list with faces present means the policy declined (several_faces).

    Faces are indexed in reading order (top to bottom, left to right) so that indices are stable.
    """
    ordered = sorted(faces, key=lambda f: (f.y, f.x, -f.framed_side))
    if len(ordered) <= 1 or policy is FacePolicy.ALL:
        return list(enumerate(ordered))
    if policy is FacePolicy.SKIP:
        return []
    by_size = sorted(range(len(ordered)), key=lambda i: (-ordered[i].framed_side, i))
    largest, runner_up = ordered[by_size[0]], ordered[by_size[1]]
    if policy is FacePolicy.LARGEST_IF_DOMINANT and largest.framed_side < dominance * runner_up.framed_side:
        return []
    return [(by_size[0], largest)]


# Settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropSettings:
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    margin: float = DEFAULT_MARGIN
    size: int = DEFAULT_SIZE
    min_face: int | None = None  # None: default_min_face(size, margin)
    faces: FacePolicy = FacePolicy.LARGEST_IF_DOMINANT
    dominance: float = DEFAULT_DOMINANCE
    keep_greyscale: bool = False
    detect_max_pixels: int = DEFAULT_DETECT_MAX_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not 0 <= self.margin <= 2:
            raise ValueError(f"margin {self.margin} is outside 0..2")
        if self.size < MIN_CROP_SIZE:
            raise ValueError(f"size {self.size} is too small (at least {MIN_CROP_SIZE} px)")
        if self.dominance < 1:
            raise ValueError("dominance must be at least 1")

    @property
    def effective_margin(self) -> float:
        """The `whole` detector's box is the picture itself: nothing around it to add."""
        return 0.0 if self.detector.name == "whole" else self.margin

    @property
    def effective_min_face(self) -> int:
        if self.min_face is not None:
            return self.min_face
        return default_min_face(self.size, self.effective_margin)

    def key_settings(self) -> dict[str, Any]:
        """Everything that decides which crops come out, and their pixels (stored with each crop)."""
        return {
            **self.detector.key_settings(),
            "margin": self.effective_margin,
            "size": self.size,
            "min_face": self.effective_min_face,
            "faces": str(self.faces),
            "dominance": self.dominance,
            "keep_greyscale": self.keep_greyscale,
            "detect_max_pixels": self.detect_max_pixels,
            "max_pixels": self.max_pixels,
            "pad": "white",
            "algorithm": CROP_ALGORITHM_VERSION,
        }

    @property
    def settings_key(self) -> str:
        return settings_key_of(self.key_settings())


def settings_key_of(key_settings: dict[str, Any]) -> str:
    """The sha256 of a crop's key settings as canonical JSON: crops with equal keys are the same crops."""
    canonical = json.dumps(key_settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_detector_spec(
    detector: str = "lbp",
    *,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    min_size: int = CASCADE_WINDOW_PX,
    cascade: Path | str | None = None,
    download: bool = True,
) -> DetectorSpec:
    """A detector spec with its cascade resolved, checked by building the detector once here.

    Raises `DetectorError` with what to do, before any work starts.
    """
    if detector not in DETECTORS:
        raise DetectorError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    uses_cascade = detector in (LBP, COMBINED)
    if min_size < CASCADE_WINDOW_PX and uses_cascade:
        raise DetectorError(
            f"--min-size {min_size}: the cascade cannot see faces under {CASCADE_WINDOW_PX} px"
        )
    spec = DetectorSpec(
        name=detector, scale_factor=scale_factor, min_neighbors=min_neighbors, min_size=min_size
    )
    if uses_cascade:
        resolved = resolve_cascade(cascade, download=download)  # the others need no file
        spec = DetectorSpec(
            name=detector,
            scale_factor=scale_factor,
            min_neighbors=min_neighbors,
            min_size=min_size,
            cascade_path=str(resolved.path),
            cascade_sha256=resolved.sha256,
        )
    build_detector(spec)
    return spec


# One post: what a worker does -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CropJob:
    post_id: int
    relpath: str  # the original, in the store
    file_sha256: str | None  # recorded at harvest; None for posts harvested before it was recorded
    label: str | None


@dataclass(frozen=True)
class FaceCrop:
    face_index: int
    box: Detection  # the detector's box, original pixels
    square: Square
    sha256: str
    relpath: str


@dataclass(frozen=True)
class CropResult:
    post_id: int
    label: str | None
    outcome: str
    detail: str | None = None
    faces_found: int = 0
    crops: tuple[FaceCrop, ...] = ()
    detect_s: float = 0.0  # time spent in the detector itself
    read_s: float = 0.0  # time spent reading the original and checking its sha256


class PostCropper:
    """Decode, detect, crop, encode and store for one post at a time (one per worker process)."""

    def __init__(self, settings: CropSettings, store: FileStore) -> None:
        self.settings = settings
        self.store = store
        self.detector: FaceDetector = build_detector(settings.detector)

    def crop(self, job: CropJob) -> CropResult:
        """The outcome for one post; only a store write failure raises (`CropStoreError`)."""
        try:
            return self._crop(job)
        except CropStoreError:
            raise
        except Exception as exc:  # one odd file must not stop a long run; the next run retries it
            detail = f"{type(exc).__name__}: {exc}"
            return CropResult(job.post_id, job.label, CropOutcome.CROP_ERROR, detail)

    def _crop(self, job: CropJob) -> CropResult:
        if job.label is None:
            return CropResult(job.post_id, None, CropOutcome.NO_LABEL, "the post has no class")
        started = time.perf_counter()
        try:
            data = read_original(self.store, job.relpath, job.file_sha256)
        except (CorruptFileError, UnsafePathError) as exc:
            return CropResult(job.post_id, job.label, CropOutcome.CORRUPT_FILE, str(exc))
        except OSError as exc:
            return CropResult(job.post_id, job.label, MISSING_FILE, f"cannot read {job.relpath}: {exc}")
        read_s = time.perf_counter() - started
        try:
            image = decode_image(data, max_pixels=self.settings.max_pixels)
        except ImageDecodeError as exc:
            return CropResult(job.post_id, job.label, exc.reason, exc.detail, read_s=read_s)
        if not self.settings.keep_greyscale and image.is_greyscale():
            detail = f"{image.mode} {image.format}"
            return CropResult(job.post_id, job.label, CropOutcome.GREYSCALE, detail, read_s=read_s)
        started = time.perf_counter()
        faces = self.detect(image.rgb)
        detect_s = time.perf_counter() - started
        chosen = choose_faces(faces, self.settings.faces, self.settings.dominance)
        if not faces:
            return CropResult(job.post_id, job.label, CropOutcome.NO_FACE, None, 0, (), detect_s, read_s)
        if not chosen:
            sides = ", ".join(str(f.framed_side) for f in sorted(faces, key=lambda f: -f.framed_side))
            detail = f"{len(faces)} faces (sides {sides} px), policy {self.settings.faces}"
            return CropResult(
                job.post_id, job.label, CropOutcome.SEVERAL_FACES, detail, len(faces), (), detect_s, read_s
            )
        min_face = self.settings.effective_min_face
        crops = tuple(
            self._store_crop(image.rgb, i, face) for i, face in chosen if face.framed_side >= min_face
        )
        if not crops:
            largest = max(face.framed_side for _, face in chosen)
            detail = f"largest face {largest} px < --min-face {min_face} px"
            return CropResult(
                job.post_id, job.label, CropOutcome.FACE_TOO_SMALL, detail, len(faces), (), detect_s, read_s
            )
        skipped = len(chosen) - len(crops)
        note = f"{skipped} faces under {min_face} px skipped" if skipped else None
        return CropResult(
            job.post_id, job.label, CropOutcome.CROPPED, note, len(faces), crops, detect_s, read_s
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return detect_faces(self.detector, self.settings, rgb)

    def _store_crop(self, rgb: np.ndarray, face_index: int, face: Detection) -> FaceCrop:
        square, pixels = cut_face(rgb, face, self.settings)
        stored = store_crop_png(self.store, pixels)
        return FaceCrop(face_index, face, square, stored.sha256, stored.relpath)


def read_original(store: FileStore, relpath: str, sha256: str | None) -> bytes:
    """A post's original, checked against the sha256 recorded at harvest when there is one.

    FileNotFoundError when it is missing (a later run may find it back), CorruptFileError when it changed.
    """
    if sha256 is None:
        return store.abspath(relpath).read_bytes()
    try:
        return store.read_verified(relpath, sha256)
    except CorruptFileError as exc:
        if exc.problem == "missing":
            raise FileNotFoundError(exc.problem) from None
        raise


def store_crop_png(store: FileStore, pixels: np.ndarray) -> StoredFile:
    """Store a crop's pixels as PNG in the crops area; CropStoreError (the run stops) when it cannot."""
    try:
        return store.put_bytes("crops", encode_png(pixels), "png")
    except OSError as exc:
        raise CropStoreError(f"cannot write crops into {store.home / 'crops'}: {exc}") from exc


def detect_faces(detector: FaceDetector, settings: CropSettings, rgb: np.ndarray) -> list[Detection]:
    """Faces in the original's pixels, searched on a reduced copy when the image is very large."""
    height, width = rgb.shape[:2]
    scale = detection_scale(width, height, settings.detect_max_pixels, settings.effective_min_face)
    if scale == 1.0:
        return detector.detect(rgb, settings.detector.min_size)
    reduced_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    reduced = cv2.resize(rgb, reduced_size, interpolation=cv2.INTER_AREA)
    min_size = max(CASCADE_WINDOW_PX, round(settings.detector.min_size * scale))
    return [map_box_back(box, scale, width, height) for box in detector.detect(reduced, min_size)]


def cut_face(rgb: np.ndarray, face: Detection, settings: CropSettings) -> tuple[Square, np.ndarray]:
    """The crop square around one face and its pixels at the crop size."""
    height, width = rgb.shape[:2]
    square = crop_square(face, settings.effective_margin, width, height)
    return square, resize_square(cut_square(rgb, square), settings.size)


def crop_faces(rgb: np.ndarray, settings: CropSettings | None = None) -> list[np.ndarray]:
    """Every face of one picture (large enough), cut as the crop stage cuts them; for `animexpr transform`.

    The default detector is `crop`'s (`choose_detector`), its cascade found as `crop` finds it.
    """
    if settings is None:
        detector = make_detector_spec(choose_detector(None).name)
        settings = CropSettings(detector=detector, faces=FacePolicy.ALL)
    faces = detect_faces(build_detector(settings.detector), settings, rgb)
    chosen = choose_faces(faces, settings.faces, settings.dominance)
    big_enough = [face for _, face in chosen if face.framed_side >= settings.effective_min_face]
    return [cut_face(rgb, face, settings)[1] for face in big_enough]


# Worker processes ------------------------------------------------------------------------------------------

_worker: PostCropper | None = None


def _init_worker(settings: CropSettings, home: str, opencv_threads: int) -> None:
    global _worker
    # Ctrl-C reaches the whole process group: the parent decides, workers finish the post in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(opencv_threads)
    _worker = PostCropper(settings, FileStore(Path(home)))


def _crop_in_worker(job: CropJob) -> CropResult:
    assert _worker is not None, "the pool initializer builds the worker's cropper"
    return _worker.crop(job)


def _iter_results_pooled(
    jobs: Sequence[CropJob], settings: CropSettings, home: Path, workers: int, on_started: Callable[[], None]
) -> Generator[CropResult, None, None]:
    """Results in completion order.

    One job per worker in flight (the next is sent before the parent writes the last result), so that Ctrl-C
    waits for at most one post per worker, and keeps it.
    """
    pool = cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=pool_context([__name__]),
        initializer=_init_worker,
        initargs=(settings, str(home), WORKER_OPENCV_THREADS),
    )
    pending: set[cf.Future[CropResult]] = set()
    queue = iter(jobs)
    started = yielded = False
    try:
        for job in itertools.islice(queue, workers):
            pending.add(pool.submit(_crop_in_worker, job))
        on_started()
        started = True
        for result in _as_completed_refilled(pool, queue, pending):
            yield result
            yielded = True
    except GeneratorExit:
        raise  # the caller stopped reading: nothing more to hand over
    except BrokenProcessPool as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        if yielded:
            raise CropWorkerDied(
                "a crop worker process died (killed for lack of memory?); the finished posts are kept: run "
                "again, with fewer --workers if memory is short"
            ) from exc
        # The workers could not even start (e.g. a main script they cannot import): do the work here.
        log.warning("crop worker processes could not start (%s); cropping in this process instead", exc)
        yield from _iter_results_inline(
            jobs, settings, FileStore(home), (lambda: None) if started else on_started
        )
    except BaseException:
        # Interrupted (or a worker failed): keep what the workers already finished, drop the rest.
        pool.shutdown(wait=True, cancel_futures=True)
        yield from (future.result() for future in pending if _finished_well(future))
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _as_completed_refilled(
    pool: cf.ProcessPoolExecutor, queue: Iterator[CropJob], pending: set[cf.Future[CropResult]]
) -> Generator[CropResult, None, None]:
    """Results as they complete; each finished job's worker gets the next job before its result is handed
    over. `pending` is kept up to date in place, so that the caller can still collect finished jobs."""
    while pending:
        done, still_running = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        pending.clear()
        pending.update(still_running)
        for next_job in itertools.islice(queue, len(done)):
            pending.add(pool.submit(_crop_in_worker, next_job))
        for future in done:
            yield future.result()


def _finished_well(future: cf.Future[CropResult]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _iter_results_inline(
    jobs: Sequence[CropJob], settings: CropSettings, store: FileStore, on_started: Callable[[], None]
) -> Generator[CropResult, None, None]:
    cropper = PostCropper(settings, store)
    on_started()
    for job in jobs:
        yield cropper.crop(job)


# The stage ------------------------------------------------------------------------------------------------


class CropProgress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, result: CropResult) -> None: ...


@dataclass
class CropSummary:
    settings_key: str
    total: int = 0  # posts to crop in this run
    done: int = 0  # posts whose outcome was recorded
    crops: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    elapsed_s: float = 0.0
    detect_s: float = 0.0  # summed over posts (over workers when parallel)
    read_s: float = 0.0  # reading originals and checking their sha256, summed the same way


def pending_jobs(engine: Engine, settings_key: str, limit: int | None = None) -> list[CropJob]:
    """Downloaded posts not yet cropped with these settings, oldest first."""
    attempted = exists().where(CropAttempt.post_id == Post.id, CropAttempt.settings_key == settings_key)
    query = (
        select(Post.id, Post.file_relpath, Post.file_sha256, Post.class_name)
        .where(Post.state == PostState.DOWNLOADED, Post.file_relpath.is_not(None), ~attempted)
        .order_by(Post.id)
    )
    if limit is not None:
        query = query.limit(limit)
    with session_scope(engine) as session:
        rows = session.execute(query).all()
    return [CropJob(post_id, relpath, sha256, label) for post_id, relpath, sha256, label in rows if relpath]


def store_detector(engine: Engine) -> str | None:
    """The detector of the store's latest detected crop (hand crops aside); None before the first crop.

    `crop` without --detector keeps it: a new default detector is a new settings key, and would crop every
    post of the store again.
    """
    with session_scope(engine) as session:
        settings = session.scalar(
            select(Crop.detector_settings)
            .where(Crop.detector != MANUAL_DETECTOR)
            .order_by(Crop.id.desc())
            .limit(1)
        )
    detector = settings.get("detector") if isinstance(settings, dict) else None
    return detector if isinstance(detector, str) else None


def choose_store_detector(engine: Engine, requested: str | None) -> DetectorChoice:
    """The requested detector, else the one of the store's earlier crops, else this installation's default."""
    if requested is None and (kept := store_detector(engine)) is not None:
        default = choose_detector(None).name
        change = f"--detector {default}" if default != kept else "--detector NAME"
        return DetectorChoice(kept, f"the detector of this store's earlier crops; {change} to change")
    return choose_detector(requested)


def crop_posts(
    engine: Engine,
    store: FileStore,
    settings: CropSettings,
    *,
    workers: int | None = None,
    limit: int | None = None,
    progress: CropProgress | None = None,
) -> CropSummary:
    """Crop every downloaded post not yet cropped with these settings; returns the counts.

    Ctrl-C (KeyboardInterrupt) commits what is finished and returns with `interrupted` set.
    """
    started = time.perf_counter()
    key = settings.settings_key
    jobs = pending_jobs(engine, key, limit)
    summary = CropSummary(settings_key=key, total=len(jobs))
    workers = max(1, min(workers or default_workers(), len(jobs) or 1))

    def on_started() -> None:
        if progress is not None:
            progress.start(len(jobs))

    if workers == 1:
        results = _iter_results_inline(jobs, settings, store, on_started)
    else:
        results = _iter_results_pooled(jobs, settings, store.home, workers, on_started)
    writer = _ResultWriter(engine, settings)
    try:
        for result in results:
            summary.outcomes[result.outcome] += 1
            summary.detect_s += result.detect_s
            summary.read_s += result.read_s
            writer.add(result)
            if progress is not None:
                progress.advance(result)
    except KeyboardInterrupt:
        summary.interrupted = True
        log.warning("interrupted: keeping the %d posts already cropped", writer.written + len(writer.buffer))
    finally:
        results.close()  # stops the pool when the loop above ended early
        writer.flush()
        summary.done = writer.written
        summary.crops = writer.crops_written
        summary.elapsed_s = time.perf_counter() - started
    return summary


class _ResultWriter:
    """Database rows for finished posts, committed in small batches (the files are already stored)."""

    def __init__(self, engine: Engine, settings: CropSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.key = settings.settings_key
        self.key_settings = settings.key_settings()
        self.buffer: list[CropResult] = []
        self.last_flush = -math.inf  # the first result is committed at once: `status` shows the run started
        self.written = 0
        self.crops_written = 0

    def add(self, result: CropResult) -> None:
        if result.outcome in RETRIED_OUTCOMES:
            # Not recorded: a missing original is the store's problem, an unexpected error may be fixed;
            # either way the next run tries again.
            log.warning("post %d: %s: %s", result.post_id, result.outcome, result.detail)
            return
        if result.outcome == CropOutcome.CORRUPT_FILE:  # recorded, and worth the user's eye
            log.warning("post %d: %s: %s", result.post_id, result.outcome, result.detail)
        self.buffer.append(result)
        if len(self.buffer) >= _FLUSH_EVERY or time.monotonic() - self.last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        batch, self.buffer = self.buffer, []
        self.last_flush = time.monotonic()
        if not batch:
            return
        try:
            with session_scope(self.engine) as session:
                session.add_all(row for result in batch for row in self._rows(result))
            self._count(batch)
        except IntegrityError:
            # Another crop run recorded some of these posts meanwhile: write the others one by one.
            for result in batch:
                try:
                    with session_scope(self.engine) as session:
                        session.add_all(self._rows(result))
                    self._count([result])
                except IntegrityError:
                    log.info("post %d was cropped by another run with the same settings", result.post_id)

    def _count(self, results: list[CropResult]) -> None:
        self.written += len(results)
        self.crops_written += sum(len(r.crops) for r in results)

    def _rows(self, result: CropResult) -> list[Any]:
        rows: list[Any] = [
            CropAttempt(
                post_id=result.post_id,
                settings_key=self.key,
                outcome=result.outcome,
                detail=result.detail,
                faces_found=result.faces_found,
            )
        ]
        for crop in result.crops:
            rows.append(
                Crop(
                    post_id=result.post_id,
                    sha256=crop.sha256,
                    file_relpath=crop.relpath,
                    size_px=self.settings.size,
                    box_x=crop.box.x,
                    box_y=crop.box.y,
                    box_w=crop.box.w,
                    box_h=crop.box.h,
                    crop_x=crop.square.x,
                    crop_y=crop.square.y,
                    crop_size=crop.square.side,
                    detector=crop.box.found_by or self.settings.detector.name,
                    detector_settings=self.key_settings,
                    detector_scores=detector_scores(crop.box, self.settings.detector.name),
                    settings_key=self.key,
                    detections_count=result.faces_found,
                    face_index=crop.face_index,
                    faces_policy=str(self.settings.faces),
                    detection_score=crop.box.score,
                    label=result.label,
                    state=CropState.PENDING,
                )
            )
        return rows


def detector_scores(box: Detection, detector: str) -> dict[str, float | None] | None:
    """Each detector's own score for a crop's box (both, for a face the combined detector matched)."""
    if box.scores:
        return dict(box.scores)
    return None if box.score is None else {box.found_by or detector: box.score}
