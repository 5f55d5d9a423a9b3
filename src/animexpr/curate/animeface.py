"""animeface-2009 (nagadomi's anime-face detector) driven directly through its shared library.

The `animeface` package (PyPI 2.0.3, an optional extra) ships the compiled library `libnvxs` inside its wheel
(`animeface.libs/libnvxs-*.so`) and a Python extension around it. That extension reads Pillow's internal image
struct, which Pillow 12 changed: under Pillow 12 or newer it silently finds no face. The library itself does
not touch Pillow, so this module loads it with ctypes and runs the extension's own call sequence (its
`_nvxs.c`: `convert_imaging_to_nv` then `do_detect`), step for step, on a numpy RGB array:

1. a 3-channel float matrix filled with the pixels in B, G, R order (values 0..255), then `nv_gray`;
2. `nv_gaussian5x5` of the grey image, `nv_laplacian1(level 4)` of that (the edge image);
3. the integral images of grey and edge (`nv_integral`);
4. `nv_face_detect` with the library's own networks (direction, detector, two bagging detectors, parts),
   step 4.0, scale factor 1.095, smallest window 42.592 px, at most 4096 faces.

The boxes and likelihoods are then those of `animeface.detect` under Pillow 11 (the tests compare them with a
recording of it). The extension's last step, `nv_face_analyze` (skin, hair and eye colours), does not change
the boxes and is left out. Nothing is compiled: only the library inside the installed wheel is used.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Final

import numpy as np

from animexpr.curate.defaults import ANIMEFACE_INSTALL_HINT
from animexpr.errors import AnimexprError

PACKAGE: Final = "animeface"
# The extension's constants (python-animeface `_nvxs.c`, `do_detect` and `NV_MAX_FACE`).
MAX_FACES: Final = 4096
SCAN_STEP: Final = 4.0
SCALE_FACTOR: Final = 1.095
MIN_WINDOW_PX: Final = 42.592
EDGE_LEVEL: Final = 4.0
_CH_B, _CH_G, _CH_R = 0, 1, 2  # nv_matrix channel order of a colour image


class AnimeFaceUnavailable(AnimexprError):
    """The animeface package, or the library inside it, cannot be found or loaded."""


class _NvMatrix(ctypes.Structure):
    """nv_matrix_t of the library's nv_core_matrix.h: `v` holds m vectors of `step` floats each."""

    _fields_ = (
        ("list", ctypes.c_int),
        ("list_step", ctypes.c_uint),
        ("n", ctypes.c_int),
        ("m", ctypes.c_int),
        ("rows", ctypes.c_int),
        ("cols", ctypes.c_int),
        ("step", ctypes.c_int),
        ("alias", ctypes.c_int),
        ("v", ctypes.POINTER(ctypes.c_float)),
    )


class _NvRect(ctypes.Structure):
    _fields_ = (
        ("x", ctypes.c_int),
        ("y", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
    )


class _NvFacePosition(ctypes.Structure):
    _fields_ = (
        ("likelihood", ctypes.c_float),
        ("face", _NvRect),
        ("left_eye", _NvRect),
        ("right_eye", _NvRect),
        ("nose", _NvRect),
        ("mouth", _NvRect),
        ("chin", _NvRect),
    )


_MatrixPointer = ctypes.POINTER(_NvMatrix)


@dataclass(frozen=True)
class AnimeFace:
    """One face as animeface-2009 gives it: its box in the image's pixels and its likelihood (0..1)."""

    x: int
    y: int
    width: int
    height: int
    likelihood: float


def library_path() -> Path:
    """The libnvxs shared library inside the installed animeface wheel; `AnimeFaceUnavailable` without it."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise AnimeFaceUnavailable(
            f"the animeface detector needs the optional package animeface: {ANIMEFACE_INSTALL_HINT}"
        ) from None
    for file in files:
        if file.parent.name == f"{PACKAGE}.libs" and file.name.startswith("libnvxs"):
            located = Path(str(file.locate()))
            if located.is_file():
                return located
    spec = util.find_spec(PACKAGE)  # an install without a RECORD: look beside the package folder
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        found = sorted((Path(folder).parent / f"{PACKAGE}.libs").glob("libnvxs*.so*"))
        if found:
            return found[0]
    raise AnimeFaceUnavailable(
        f"the installed animeface package has no libnvxs library (animeface.libs/libnvxs-*.so); reinstall "
        f"it: {ANIMEFACE_INSTALL_HINT}"
    )


class AnimeFaceLibrary:
    """The loaded library and its five networks; `detect` may be called from several threads."""

    def __init__(self, path: Path) -> None:
        try:
            self._lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise AnimeFaceUnavailable(f"cannot load {path}: {exc}") from exc
        try:
            self._declare()
            self._networks = {
                name: ctypes.c_void_p(
                    ctypes.addressof(ctypes.c_byte.in_dll(self._lib, f"nv_face_mlp_{name}"))
                )
                for name in ("dir", "face_00", "face_01", "face_02", "parts")
            }
        except (AttributeError, ValueError) as exc:  # a missing function / a missing network symbol
            raise AnimeFaceUnavailable(f"{path} is not the libnvxs library animeface needs: {exc}") from exc
        # The bagging detectors as the extension passes them: a NULL-terminated array of two.
        self._bagging = (ctypes.c_void_p * 3)(self._networks["face_01"], self._networks["face_02"], None)

    def _declare(self) -> None:
        lib = self._lib
        matrix, const_matrix = _MatrixPointer, _MatrixPointer
        lib.nv_matrix3d_alloc.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.nv_matrix3d_alloc.restype = matrix
        lib.nv_matrix_zero.argtypes = (matrix,)
        lib.nv_matrix_zero.restype = None
        lib.nv_matrix_free.argtypes = (ctypes.POINTER(matrix),)
        lib.nv_matrix_free.restype = None
        lib.nv_gray.argtypes = (matrix, const_matrix)
        lib.nv_gray.restype = None
        lib.nv_gaussian5x5.argtypes = (matrix, ctypes.c_int, const_matrix, ctypes.c_int)
        lib.nv_gaussian5x5.restype = None
        lib.nv_laplacian1.argtypes = (matrix, const_matrix, ctypes.c_float)
        lib.nv_laplacian1.restype = None
        lib.nv_integral.argtypes = (matrix, const_matrix, ctypes.c_int)
        lib.nv_integral.restype = None
        lib.nv_face_detect.argtypes = (
            ctypes.POINTER(_NvFacePosition),  # faces out
            ctypes.c_int,  # how many faces at most
            const_matrix,  # grey integral
            const_matrix,  # edge integral
            ctypes.POINTER(_NvRect),  # the image's size
            ctypes.c_void_p,  # direction network
            ctypes.c_void_p,  # detector network
            ctypes.POINTER(ctypes.c_void_p),  # bagging networks
            ctypes.c_int,  # how many bagging networks
            ctypes.c_void_p,  # parts network
            ctypes.c_float,  # step
            ctypes.c_float,  # scale factor
            ctypes.c_float,  # smallest window
        )
        lib.nv_face_detect.restype = ctypes.c_int

    def _matrix(self, channels: int, rows: int, cols: int) -> ctypes._Pointer[_NvMatrix]:
        pointer = self._lib.nv_matrix3d_alloc(channels, rows, cols)
        if not pointer:
            raise MemoryError(f"animeface: no memory for a {cols}x{rows}x{channels} matrix")
        self._lib.nv_matrix_zero(pointer)
        return pointer

    def _free(self, *pointers: ctypes._Pointer[_NvMatrix]) -> None:
        for pointer in pointers:
            if pointer:
                self._lib.nv_matrix_free(ctypes.byref(pointer))

    def detect(self, rgb: np.ndarray) -> list[AnimeFace]:
        """Every face animeface-2009 finds in an RGB uint8 image (H, W, 3), in the library's order."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"animeface needs an RGB uint8 image (H, W, 3), not {rgb.dtype} {rgb.shape}")
        rows, cols = int(rgb.shape[0]), int(rgb.shape[1])
        lib = self._lib
        bgr = gray = smooth = edge = gray_integral = edge_integral = None
        try:
            bgr = self._matrix(3, rows, cols)
            gray = self._matrix(1, rows, cols)
            _fill_bgr(bgr, rgb)
            lib.nv_gray(gray, bgr)
            smooth = self._matrix(1, rows, cols)
            edge = self._matrix(1, rows, cols)
            gray_integral = self._matrix(1, rows + 1, cols + 1)
            edge_integral = self._matrix(1, rows + 1, cols + 1)
            lib.nv_gaussian5x5(smooth, 0, gray, 0)
            lib.nv_laplacian1(edge, smooth, EDGE_LEVEL)
            lib.nv_integral(gray_integral, gray, 0)
            lib.nv_integral(edge_integral, edge, 0)
            faces = (_NvFacePosition * MAX_FACES)()
            size = _NvRect(0, 0, cols, rows)
            count = lib.nv_face_detect(
                faces,
                MAX_FACES,
                gray_integral,
                edge_integral,
                ctypes.byref(size),
                self._networks["dir"],
                self._networks["face_00"],
                self._bagging,
                2,
                self._networks["parts"],
                SCAN_STEP,
                SCALE_FACTOR,
                MIN_WINDOW_PX,
            )
        finally:
            self._free(*(m for m in (bgr, gray, smooth, edge, gray_integral, edge_integral) if m))
        return [
            AnimeFace(f.face.x, f.face.y, f.face.width, f.face.height, float(f.likelihood))
            for f in faces[:count]
        ]


def _fill_bgr(bgr: ctypes._Pointer[_NvMatrix], rgb: np.ndarray) -> None:
    """The pixels into the library's matrix, as `convert_imaging_to_nv` writes them (B, G, R floats)."""
    matrix = bgr.contents
    values = np.ctypeslib.as_array(matrix.v, shape=(matrix.rows, matrix.cols, matrix.step))
    values[..., _CH_B] = rgb[..., 2]
    values[..., _CH_G] = rgb[..., 1]
    values[..., _CH_R] = rgb[..., 0]


_loaded: AnimeFaceLibrary | None = None
_loading = threading.Lock()


def load_library() -> AnimeFaceLibrary:
    """The library of the installed animeface package, loaded once per process."""
    global _loaded
    with _loading:
        if _loaded is None:
            _loaded = AnimeFaceLibrary(library_path())
        return _loaded


def detect_faces(rgb: np.ndarray) -> list[AnimeFace]:
    """animeface-2009's faces in an RGB uint8 image; `AnimeFaceUnavailable` when the package is missing."""
    return load_library().detect(rgb)
