"""Anime face detectors: nagadomi's LBP cascade through OpenCV (default), the optional animeface-2009, and
`whole` for collections whose pictures are already face crops (the centred square of each picture).

The cascade file is not shipped with animexpr (its repository has no licence file and asks users to download
it). `resolve_cascade` finds it, in this order: an explicit path (``--cascade``), the ``ANIMEXPR_CASCADE``
environment variable, the user cache (``$XDG_CACHE_HOME/animexpr`` or ``~/.cache/animexpr``), and finally a
download from its canonical URL, accepted only when its sha256 is the pinned one and then kept in the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Protocol

import cv2
import numpy as np

from animexpr.config import user_cache_dir
from animexpr.curate.defaults import CASCADE_ENV
from animexpr.errors import AnimexprError
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

CASCADE_FILE_NAME: Final = "lbpcascade_animeface.xml"
CASCADE_URL: Final = (
    "https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml"
)
CASCADE_SHA256: Final = "9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30"
# The cascade's training window: it cannot see a face smaller than this.
CASCADE_WINDOW_PX: Final = 24
DETECTORS: Final = ("lbp", "animeface", "whole")
# animeface-2009's own face_collector.rb keeps faces whose likelihood is at least 0.2.
ANIMEFACE_MIN_LIKELIHOOD: Final = 0.2


class DetectorError(AnimexprError):
    """The detector cannot be set up; the message says what to do."""


@dataclass(frozen=True)
class Detection:
    """A face box in the pixels of the image given to the detector; `score` when the detector has one."""

    x: int
    y: int
    w: int
    h: int
    score: float | None = None

    @property
    def side(self) -> int:
        return max(self.w, self.h)


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]: ...


@dataclass(frozen=True)
class DetectorSpec:
    """Everything that makes a detector, small and picklable so that each worker process builds its own."""

    name: str = "lbp"
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = CASCADE_WINDOW_PX
    cascade_path: str | None = None
    cascade_sha256: str | None = None

    def key_settings(self) -> dict[str, Any]:
        """What decides the boxes (not where the cascade lies on this machine): goes into the settings key."""
        if self.name == "whole":
            return {"detector": "whole"}
        if self.name == "animeface":
            return {
                "detector": "animeface",
                "animeface_version": _package_version("animeface"),
                "min_likelihood": ANIMEFACE_MIN_LIKELIHOOD,
                "min_size": self.min_size,
            }
        return {
            "detector": "lbp",
            "cascade_sha256": self.cascade_sha256,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size": self.min_size,
            "opencv": cv2.__version__,
        }


def build_detector(spec: DetectorSpec) -> FaceDetector:
    if spec.name == "lbp":
        return LbpCascadeDetector(spec)
    if spec.name == "animeface":
        return AnimeFaceDetector()
    if spec.name == "whole":
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
    """animeface-2009 through the `animeface` package (an optional extra).

    animeface 2.0.3's C extension reads Pillow's internal image struct directly; Pillow 12 changed that struct
    and the extension then silently finds no face at all. We refuse to run there instead of reporting every
    post as faceless.
    """

    def __init__(self) -> None:
        check_animeface_usable()
        import animeface

        self._animeface = animeface

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Detection]:
        from PIL import Image

        faces = self._animeface.detect(Image.fromarray(rgb))
        detections = []
        for face in faces:
            box = face.face.pos
            if face.likelihood >= ANIMEFACE_MIN_LIKELIHOOD and max(box.width, box.height) >= min_size:
                detections.append(Detection(box.x, box.y, box.width, box.height, float(face.likelihood)))
        return detections


def check_animeface_usable() -> None:
    """Raise `DetectorError` saying what to do when animeface is missing or would silently find nothing."""
    animeface_version = _package_version("animeface")
    if animeface_version is None:
        raise DetectorError(
            "the animeface detector needs the optional package animeface (pip install 'animeface==2.0.3', "
            "which works only with pillow<12); or use --detector lbp"
        )
    pillow_version = _package_version("pillow") or "0"
    if _major(pillow_version) >= 12:
        raise DetectorError(
            f"animeface {animeface_version} finds no face at all with Pillow {pillow_version} (its C "
            "extension "
            "reads Pillow's internal image layout, which changed in Pillow 12); run it from an environment "
            "with pillow<12, or use --detector lbp"
        )


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# Resolving the cascade file -------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
            return ResolvedCascade(path, file_sha256(path), source.split()[0])
    cache_path = (cache_dir or user_cache_dir(env)) / CASCADE_FILE_NAME
    if cache_path.is_file():
        digest = file_sha256(cache_path)
        if digest == CASCADE_SHA256:
            return ResolvedCascade(cache_path, digest, "cache")
        log.warning("ignoring %s: its sha256 %s is not the pinned %s", cache_path, digest, CASCADE_SHA256)
    if not download:
        raise DetectorError(_how_to_get_the_cascade(cache_path, "it is not in the cache"))
    data = _download(url, timeout_s, cache_path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CASCADE_SHA256:
        raise DetectorError(
            _how_to_get_the_cascade(
                cache_path, f"the download from {url} has sha256 {digest}, not the pinned one"
            )
        )
    atomic_write_bytes(cache_path, data)
    log.info("downloaded the anime-face cascade into %s", cache_path)
    return ResolvedCascade(cache_path, digest, "download")


def _download(url: str, timeout_s: float, cache_path: Path) -> bytes:
    import requests

    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DetectorError(_how_to_get_the_cascade(cache_path, f"downloading {url} failed ({exc})")) from exc
    return response.content


def _how_to_get_the_cascade(cache_path: Path, why: str) -> str:
    return (
        f"no anime-face cascade: {why}. Download {CASCADE_URL} (sha256 {CASCADE_SHA256}) and pass it with "
        f"--cascade PATH, set {CASCADE_ENV}=PATH, or put it at {cache_path}"
    )
