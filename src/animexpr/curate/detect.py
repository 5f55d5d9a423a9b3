"""Anime face detectors: nagadomi's LBP cascade through OpenCV, animeface-2009 (an optional extra), both
combined (`lbp+animeface`, the default when animeface is installed), and `whole` for collections whose
pictures are already face crops (the centred square of each picture).

The cascade file is not shipped with animexpr (its repository has no licence file and asks users to download
it). `resolve_cascade` finds it, in this order: an explicit path (``--cascade``), the ``ANIMEXPR_CASCADE``
environment variable, the user cache (``$ANIMEXPR_CACHE``, else ``$XDG_CACHE_HOME/animexpr`` or
``~/.cache/animexpr``), and finally a download from its canonical URL into the cache, kept only when its
sha256 is the pinned one (``ANIMEXPR_OFFLINE=1`` forbids the download).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Protocol

import cv2
import numpy as np

from animexpr.config import user_cache_dir
from animexpr.curate.defaults import ANIMEFACE_INSTALL_HINT, CASCADE_ENV, DetectorName
from animexpr.downloads import DownloadError, PinnedFile, fetch_pinned, how_to_get
from animexpr.errors import AnimexprError
from animexpr.store import sha256_file

log = logging.getLogger(__name__)

CASCADE_FILE_NAME: Final = "lbpcascade_animeface.xml"
CASCADE_URL: Final = (
    "https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml"
)
CASCADE_SHA256: Final = "9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30"
# The cascade's training window: it cannot see a face smaller than this.
CASCADE_WINDOW_PX: Final = 24
LBP: Final = DetectorName.LBP.value
ANIMEFACE: Final = DetectorName.ANIMEFACE.value
COMBINED: Final = DetectorName.COMBINED.value
WHOLE: Final = DetectorName.WHOLE.value
DETECTORS: Final = tuple(str(name) for name in DetectorName)
# animeface-2009's own face_collector.rb keeps faces whose likelihood is at least 0.2.
ANIMEFACE_MIN_LIKELIHOOD: Final = 0.2
# A face found by both detectors: their boxes overlap by at least this IoU. Both boxes are centred on the
# face, the animeface box is smaller (0.58 to 0.94 of the LBP side, median 0.76, on the 37 faces of the
# illustration grid): two concentric squares whose sides differ by 2x still have IoU 0.25. Measured there:
# pairs of the same face 0.33 to 0.82, boxes of different faces at most 0.004.
MERGE_MIN_IOU: Final = 0.25
# animeface's box frames a face tighter than the cascade's (median side ratio 0.76, measured as above): its
# side is scaled by this before the crop margin, so that crops look alike whichever detector found the face.
ANIMEFACE_FRAME_SCALE: Final = 1.32


class DetectorError(AnimexprError):
    """The detector cannot be set up; the message says what to do."""


@dataclass(frozen=True)
class Detection:
    """A face box in the pixels of the image given to the detector; `score` when the detector has one.

    `found_by` names the detector(s) behind the box when it is not simply the run's detector (the combined
    detector sets it for every box), and `scores` holds each of those detectors' own score.
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = None
    found_by: str | None = None
    scores: tuple[tuple[str, float | None], ...] = ()

    @property
    def side(self) -> int:
        return max(self.w, self.h)

    @property
    def frame_scale(self) -> float:
        """How much larger than this box the cascade's box of the same face would be (see crop margins)."""
        return ANIMEFACE_FRAME_SCALE if self.found_by == ANIMEFACE else 1.0

    @property
    def framed_side(self) -> int:
        """The side as the cascade frames faces: what face sizes are compared by (--min-face, dominance)."""
        return round(self.side * self.frame_scale)


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]: ...


@dataclass(frozen=True)
class DetectorSpec:
    """Everything that makes a detector, small and picklable so that each worker process builds its own."""

    name: str = LBP
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = CASCADE_WINDOW_PX
    cascade_path: str | None = None
    cascade_sha256: str | None = None

    def key_settings(self) -> dict[str, Any]:
        """What decides the boxes (not where the cascade lies on this machine): goes into the settings key."""
        if self.name == WHOLE:
            return {"detector": WHOLE}
        animeface = {
            "animeface_version": _package_version("animeface"),
            "min_likelihood": ANIMEFACE_MIN_LIKELIHOOD,
            "animeface_frame_scale": ANIMEFACE_FRAME_SCALE,
            "min_size": self.min_size,
        }
        if self.name == ANIMEFACE:
            return {"detector": ANIMEFACE, **animeface}
        lbp = {
            "detector": LBP,
            "cascade_sha256": self.cascade_sha256,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size": self.min_size,
            "opencv": cv2.__version__,
        }
        if self.name == COMBINED:
            return {**lbp, **animeface, "detector": COMBINED, "merge_min_iou": MERGE_MIN_IOU}
        return lbp


def build_detector(spec: DetectorSpec) -> FaceDetector:
    if spec.name == LBP:
        return LbpCascadeDetector(spec)
    if spec.name == ANIMEFACE:
        return AnimeFaceDetector()
    if spec.name == COMBINED:
        return CombinedDetector(LbpCascadeDetector(spec), AnimeFaceDetector())
    if spec.name == WHOLE:
        return WholeImageDetector()
    raise DetectorError(f"unknown detector {spec.name!r}; choose one of {', '.join(DETECTORS)}")


class LbpCascadeDetector:
    """nagadomi's README, step for step: grey, equalised histogram, detectMultiScale.

    Through detectMultiScale2, which returns the very same boxes plus, for each, how many raw hits were
    merged into it: that count is the box's score (more is surer; it also grows with the face's size), so
    that review can show the weakest detections first.
    """

    def __init__(self, spec: DetectorSpec) -> None:
        if not spec.cascade_path:
            raise DetectorError("the lbp detector needs a cascade file (see resolve_cascade)")
        self.spec = spec
        self.classifier = load_cascade(Path(spec.cascade_path))

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]:
        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        return self.detect_equalised(grey, min_size)

    def detect_equalised(self, grey: np.ndarray, min_size: int) -> list[Detection]:
        side = max(CASCADE_WINDOW_PX, int(min_size))
        boxes, hits = self.classifier.detectMultiScale2(
            grey,
            scaleFactor=self.spec.scale_factor,
            minNeighbors=self.spec.min_neighbors,
            minSize=(side, side),
        )
        return [
            Detection(int(x), int(y), int(w), int(h), float(n))
            for (x, y, w, h), n in zip(boxes, np.ravel(hits), strict=True)
        ]


class WholeImageDetector:
    """Every picture is one face already: the box is its centred square (the margin does not apply)."""

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]:
        height, width = rgb.shape[:2]
        side = min(height, width)
        return [Detection((width - side) // 2, (height - side) // 2, side, side)]


def load_cascade(path: Path) -> cv2.CascadeClassifier:
    if not hasattr(cv2, "CascadeClassifier"):
        raise DetectorError(
            f"this OpenCV ({cv2.__version__}) has no CascadeClassifier: OpenCV 5 dropped it; "
            "install opencv-python-headless<5"
        )
    try:
        classifier = cv2.CascadeClassifier(str(path))
    except (cv2.error, SystemError):  # OpenCV raises on some malformed XML, returns empty on others
        classifier = None
    if classifier is None or classifier.empty():
        raise DetectorError(
            f"{path} is not a cascade OpenCV can load; pass the real {CASCADE_FILE_NAME} with --cascade "
            f"(sha256 {CASCADE_SHA256}, from {CASCADE_URL})"
        )
    return classifier


class AnimeFaceDetector:
    """animeface-2009 from the optional `animeface` package, driven through its library (any Pillow)."""

    def __init__(self) -> None:
        from animexpr.curate.animeface import AnimeFaceUnavailable, load_library

        try:
            self._library = load_library()
        except AnimeFaceUnavailable as exc:
            raise DetectorError(f"{exc}; or use --detector lbp") from None

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]:
        return [
            Detection(f.x, f.y, f.width, f.height, f.likelihood, found_by=ANIMEFACE)
            for f in self._library.detect(rgb)
            if f.likelihood >= ANIMEFACE_MIN_LIKELIHOOD and max(f.width, f.height) >= min_size
        ]


class CombinedDetector:
    """The cascade and animeface on the same picture, their boxes merged (`merge_detections`)."""

    def __init__(self, lbp: FaceDetector, animeface: FaceDetector) -> None:
        self.lbp = lbp
        self.animeface = animeface

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]:
        return merge_detections(self.lbp.detect(rgb, min_size), self.animeface.detect(rgb, min_size))


def iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two boxes."""
    width = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    height = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.w * a.h + b.w * b.h - inter)


def merge_detections(
    lbp: Sequence[Detection], animeface: Sequence[Detection], min_iou: float = MERGE_MIN_IOU
) -> list[Detection]:
    """One box per face from the two detectors' boxes.

    Pairs overlapping by at least `min_iou` are matched one to one, best overlap first; a matched face keeps
    the cascade's box (the crop margin is measured on it). Every box records who found it and each
    detector's score. Its `score` ranks agreement first, then confidence, so that review's worst-first order
    shows the doubtful faces first: 0 for a face only the cascade saw (animeface, the stronger detector,
    found nothing there), animeface's likelihood (0.2 to 1) for a face only it saw, 1 + that likelihood
    for a face both saw.
    """
    pairs = sorted(
        ((iou(a, b), i, j) for i, a in enumerate(lbp) for j, b in enumerate(animeface)),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    merged = []
    for i, box in enumerate(lbp):
        if i in matched:
            other = animeface[matched[i]]
            likelihood = other.score or 0.0
            scores = ((LBP, box.score), (ANIMEFACE, other.score))
            merged.append(replace(box, score=1.0 + likelihood, found_by=COMBINED, scores=scores))
        else:
            merged.append(replace(box, score=0.0, found_by=LBP, scores=((LBP, box.score),)))
    merged.extend(
        replace(box, found_by=ANIMEFACE, scores=((ANIMEFACE, box.score),))
        for j, box in enumerate(animeface)
        if j not in taken
    )
    return merged


def animeface_problem() -> str | None:
    """Why the animeface detector cannot run here (one line), or None when it can."""
    from animexpr.curate.animeface import AnimeFaceUnavailable, load_library

    try:
        load_library()
    except AnimeFaceUnavailable as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class DetectorChoice:
    """The detector a run uses and why (shown in the command's summary)."""

    name: str
    reason: str


def choose_detector(requested: str | None) -> DetectorChoice:
    """The requested detector, or by default lbp+animeface where animeface can run and lbp elsewhere."""
    if requested is not None:
        return DetectorChoice(requested, "chosen with --detector")
    problem = animeface_problem()
    if problem is None:
        return DetectorChoice(COMBINED, "animeface installed")
    if _package_version("animeface") is None:
        return DetectorChoice(LBP, f"animeface not installed: {ANIMEFACE_INSTALL_HINT}")
    return DetectorChoice(LBP, f"animeface unusable: {problem}")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# Resolving the cascade file -------------------------------------------------------------------------------

CASCADE_DOWNLOAD: Final = PinnedFile(
    what="the anime-face cascade",
    urls=(CASCADE_URL,),
    sha256=CASCADE_SHA256,
    cache_name=CASCADE_FILE_NAME,
    size=246_945,
    instead=f"pass it with --cascade PATH or set {CASCADE_ENV}=PATH",
)


@dataclass(frozen=True)
class ResolvedCascade:
    path: Path
    sha256: str
    source: str  # option, environment, cache or download


def resolve_cascade(
    explicit: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    url: str = CASCADE_URL,
    timeout_s: float = 30.0,
) -> ResolvedCascade:
    """The cascade file to use, found as the module docstring says; `DetectorError` when none can be had.

    An explicit or environment path is taken as given (it may be another cascade, its sha256 goes into the
    settings key); a cached or downloaded file must have the pinned sha256.
    """
    env = os.environ if environ is None else environ
    for given, source in (
        (explicit, "option --cascade"),
        (env.get(CASCADE_ENV), f"environment {CASCADE_ENV}"),
    ):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise DetectorError(f"{source}: no cascade file at {path}")
            return ResolvedCascade(path, sha256_file(path), source.split()[0])
    cache_path = (cache_dir or user_cache_dir(env)) / CASCADE_FILE_NAME
    if cache_path.is_file():
        digest = sha256_file(cache_path)
        if digest == CASCADE_SHA256:
            return ResolvedCascade(cache_path, digest, "cache")
        log.warning("ignoring %s: its sha256 %s is not the pinned %s", cache_path, digest, CASCADE_SHA256)
    if not download:
        missing = "no anime-face cascade: it is not in the cache"
        raise DetectorError(f"{missing}. {how_to_get(CASCADE_DOWNLOAD, cache_path)}")
    try:
        fetch_pinned(replace(CASCADE_DOWNLOAD, urls=(url,)), cache_path, environ=env, timeout_s=timeout_s)
    except DownloadError as exc:
        raise DetectorError(str(exc)) from exc
    return ResolvedCascade(cache_path, CASCADE_SHA256, "download")
