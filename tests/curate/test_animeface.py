"""animeface-2009 through ctypes: the same boxes and likelihoods as the original extension under Pillow 11.

The reference was recorded once with the original `animeface.detect` (how: the docstring of
tests/data/record_animeface_reference.py); the images are rebuilt here from ANIMEXPR_ASSETS by the very
same code.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from animexpr.curate import animeface, detect
from animexpr.curate.crop import CropSettings, PostCropper, make_detector_spec
from animexpr.curate.detect import (
    ANIMEFACE_MIN_LIKELIHOOD,
    COMBINED,
    LBP,
    DetectorError,
    choose_detector,
)
from animexpr.store import FileStore

DATA = Path(__file__).resolve().parents[1] / "data"
REFERENCE = json.loads((DATA / "animeface_reference.json").read_text())


def _recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "record_animeface_reference", DATA / "record_animeface_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recorder = _recorder()


@pytest.fixture
def library() -> animeface.AnimeFaceLibrary:
    try:
        return animeface.load_library()
    except animeface.AnimeFaceUnavailable as exc:
        pytest.skip(f"animeface is not installed here ({exc})")


@functools.cache
def _images(assets: Path) -> dict[str, np.ndarray]:
    return dict(recorder.reference_images(assets))


@pytest.fixture
def images(assets_dir: Path) -> dict[str, np.ndarray]:
    return _images(assets_dir)


def found(library: animeface.AnimeFaceLibrary, rgb: np.ndarray) -> list[dict[str, Any]]:
    return [{"box": [f.x, f.y, f.width, f.height], "likelihood": f.likelihood} for f in library.detect(rgb)]


def assert_same_as_recorded(name: str, rgb: np.ndarray, library: animeface.AnimeFaceLibrary) -> None:
    recorded = REFERENCE["images"][name]
    # Pixels first: a decoder that differs from the recording's Pillow is not the detector's fault.
    assert recorder.rgb_sha256(rgb) == recorded["rgb_sha256"], (
        f"{name}: decoded pixels differ from the recording"
    )
    ours = found(library, rgb)
    assert [f["box"] for f in ours] == [f["box"] for f in recorded["faces"]], name
    assert [f["likelihood"] for f in ours] == pytest.approx(
        [f["likelihood"] for f in recorded["faces"]], abs=1e-6
    ), name


# The whole 3072 x 3072 grid and the larger scenes take seconds each.
SLOW_IMAGES = ("grid", "scene-two-faces", "scene-large-face")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_IMAGES else n for n in REFERENCE["images"]],
)
def test_boxes_equal_the_original_extension(
    name: str, library: animeface.AnimeFaceLibrary, images: dict[str, np.ndarray]
) -> None:
    assert_same_as_recorded(name, images[name], library)


def test_the_reference_images_hold_faces_and_none(images: dict[str, np.ndarray]) -> None:
    assert list(images) == list(REFERENCE["images"])
    counts = {name: len(entry["faces"]) for name, entry in REFERENCE["images"].items()}
    assert counts["grid"] == 37
    fast = [name for name in counts if name not in SLOW_IMAGES]
    assert sum(counts[n] for n in fast) >= 6  # the fast comparisons are not all of empty lists
    assert any(counts[n] == 0 for n in fast)


def test_the_reference_came_from_the_original_extension() -> None:
    assert REFERENCE["animeface"] == "2.0.3"
    assert int(REFERENCE["pillow"].split(".")[0]) < 12


def test_the_library_is_the_one_inside_the_installed_wheel(library: animeface.AnimeFaceLibrary) -> None:
    path = animeface.library_path()
    assert path.parent.name == "animeface.libs"
    assert path.name.startswith("libnvxs")
    assert metadata.version("animeface") == "2.0.3"


def test_odd_inputs(library: animeface.AnimeFaceLibrary) -> None:
    assert library.detect(np.zeros((10, 10, 3), np.uint8)) == []  # smaller than the smallest window
    assert library.detect(np.full((200, 300, 3), 255, np.uint8)) == []  # a blank page
    with pytest.raises(ValueError, match="RGB uint8"):
        library.detect(np.zeros((64, 64), np.uint8))


def test_detector_keeps_likely_faces_large_enough(
    library: animeface.AnimeFaceLibrary, images: dict[str, np.ndarray], tmp_path: Path
) -> None:
    rgb = images["grid-cell-24"]
    recorded = REFERENCE["images"]["grid-cell-24"]["faces"]
    spec = make_detector_spec("animeface")
    cropper = PostCropper(CropSettings(detector=spec), FileStore(tmp_path))
    boxes = cropper.detect(rgb)
    expected = [f for f in recorded if f["likelihood"] >= ANIMEFACE_MIN_LIKELIHOOD]
    assert sorted([d.x, d.y, d.w, d.h] for d in boxes) == sorted(f["box"] for f in expected)
    assert all(d.found_by == "animeface" for d in boxes)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, assets_dir: Path) -> None:
    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(animeface, "_loaded", None)
    monkeypatch.setattr(animeface.metadata, "files", not_installed)
    with pytest.raises(animeface.AnimeFaceUnavailable, match=r"pip install 'animexpr\[animeface\]'"):
        animeface.library_path()
    for detector in ("animeface", "lbp+animeface"):
        with pytest.raises(
            DetectorError, match=r"pip install 'animexpr\[animeface\]'; or use --detector lbp"
        ):
            make_detector_spec(detector, cascade=assets_dir / "lbpcascade_animeface.xml")
    assert choose_detector(None).name == LBP


def test_default_detector_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "animeface_problem", lambda: None)
    assert choose_detector(None) == detect.DetectorChoice(COMBINED, "animeface installed")
    monkeypatch.setattr(detect, "animeface_problem", lambda: "cannot load libnvxs")
    assert choose_detector(None) == detect.DetectorChoice(LBP, "animeface unusable: cannot load libnvxs")
    monkeypatch.setattr(detect, "_package_version", lambda name: None)
    expected = detect.DetectorChoice(LBP, "animeface not installed: pip install 'animexpr[animeface]'")
    assert choose_detector(None) == expected
    assert choose_detector("whole") == detect.DetectorChoice("whole", "chosen with --detector")


def test_a_library_without_the_symbols_is_unavailable() -> None:
    import _ctypes

    other = Path(_ctypes.__file__)  # a shared library, but not libnvxs
    with pytest.raises(animeface.AnimeFaceUnavailable, match=r"is not the libnvxs library animeface needs"):
        animeface.AnimeFaceLibrary(other)
