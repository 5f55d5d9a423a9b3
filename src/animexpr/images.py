"""Decoding images from the wild, and encoding crops: the one place the project turns bytes into pixels.

Every image file the pipeline reads goes through `decode_image`, which returns upright 8-bit RGB pixels or
raises `ImageDecodeError` with a short, stable `reason` (stored as a crop outcome, counted in summaries):

- ``empty_file``: zero bytes.
- ``not_an_image``: Pillow does not recognise the format (a text file, an HTML error page, a zip, a video).
- ``too_many_pixels``: width x height over the pixel limit, checked from the header before any pixel is
  decoded (decompression bombs; also Danbooru's 20,000-pixel scrolls).
- ``truncated``: the header is fine but the pixel data ends early or is corrupt (an interrupted download).
- ``unsupported_image``: a pixel format we cannot turn into RGB.
- ``missing_file``: the path does not exist or cannot be read.

What decoding does to survive real files:
- EXIF orientation is applied, so phone photos and some scans come out upright.
- CMYK (Adobe-inverted or not) and YCbCr are converted by Pillow to RGB.
- Alpha (RGBA, LA, PA, palette transparency) is composited over white: transparent Danbooru art is drawn for a
  light page, and a black background would turn dark line art into a silhouette.
- 16-bit greyscale PNG keeps its top 8 bits (Pillow's own conversion clips it to white).
- Animated GIF/PNG/WebP: the first frame, and `DecodedImage.animated` says so.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from animexpr.errors import AnimexprError

# 100 megapixels is a 10,000 x 10,000 picture: about 300 MB as RGB, which each crop worker may hold once.
# Pillow itself refuses more than twice its own MAX_IMAGE_PIXELS (about 179 MP) whatever is asked here.
DEFAULT_MAX_PIXELS: Final = 100_000_000

EMPTY_FILE: Final = "empty_file"
NOT_AN_IMAGE: Final = "not_an_image"
TOO_MANY_PIXELS: Final = "too_many_pixels"
TRUNCATED: Final = "truncated"
UNSUPPORTED_IMAGE: Final = "unsupported_image"
MISSING_FILE: Final = "missing_file"

# Modes that hold no colour at all: a picture in one of them is greyscale without looking at a pixel.
GREY_MODES: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WHITE: Final = (255, 255, 255)
# EXIF Orientation tag values -> the transpose that makes the picture upright (as ImageOps.exif_transpose).
_EXIF_ORIENTATION_TAG: Final = 0x0112
_UPRIGHT_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Greyscale detection: a pixel is "coloured" when its channels spread by more than this (0-255 scale). JPEG
# noise on a grey picture stays well below it; the palest colour illustration we measured has 17 % of its
# pixels above it, a grey or JPEG-compressed grey one 0 %.
GREY_CHROMA_THRESHOLD: Final = 24
# ... and a picture is greyscale when fewer than this share of its pixels are coloured (a grey page with a
# tiny coloured stamp is still a grey page).
GREY_MAX_COLOURED_SHARE: Final = 0.02
_GREY_SAMPLE_SIDE: Final = 256


class ImageDecodeError(AnimexprError):
    """An image that cannot be used; `reason` is one of the short codes in this module's docstring."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """Upright 8-bit RGB pixels (height x width x 3, C-contiguous) and what the file was."""

    rgb: np.ndarray
    format: str  # Pillow's format name: JPEG, PNG, GIF, WEBP, ...
    mode: str  # the file's own pixel mode before conversion: RGB, CMYK, P, L, I;16, RGBA, ...
    animated: bool  # only the first frame was decoded
    had_alpha: bool  # transparency was composited over white

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def grey_mode(self) -> bool:
        """The file itself stores no colour (a greyscale JPEG or PNG)."""
        return self.mode in GREY_MODES

    def is_greyscale(self) -> bool:
        return self.grey_mode or is_greyscale(self.rgb)


def decode_image(
    source: bytes | str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode a file (path) or its bytes into upright RGB; raise `ImageDecodeError` for anything unusable."""
    data = _read_source(source)
    if not data:
        raise ImageDecodeError(EMPTY_FILE, "the file is empty (0 bytes)")
    with warnings.catch_warnings():
        # We apply our own pixel limit below; Pillow's warning between its limits would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _open(data, max_pixels)
        with image:
            return _decode_opened(image)


def _read_source(source: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError as exc:
        raise ImageDecodeError(MISSING_FILE, f"no such file: {source}") from exc
    except OSError as exc:
        raise ImageDecodeError(MISSING_FILE, f"cannot read {source}: {exc.strerror or exc}") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(TOO_MANY_PIXELS, f"over Pillow's own pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(NOT_AN_IMAGE, f"not an image format we read ({_sniff(data)})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(TRUNCATED, f"broken image header: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise ImageDecodeError(TRUNCATED, f"the header says {width}x{height} pixels")
    if width * height > max_pixels:
        image.close()
        raise ImageDecodeError(
            TOO_MANY_PIXELS, f"{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
        )
    return image


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page"
    if head.startswith(b"pk\x03\x04"):
        return "looks like a zip archive"
    if data[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3"):
        return "looks like a video"
    try:
        data[:256].decode("utf-8")
    except UnicodeDecodeError:
        return f"starts with {data[:8].hex()}"
    return "looks like text"


def _decode_opened(image: Image.Image) -> DecodedImage:
    file_format = image.format or "unknown"
    mode = image.mode
    animated = _is_animated(image)
    orientation = _exif_orientation(image)
    try:
        image.load()  # the first frame of an animation
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(TOO_MANY_PIXELS, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(TRUNCATED, f"the pixel data is cut short or corrupt: {exc}") from exc
    had_alpha = _has_alpha(image)
    try:
        rgb_image = _to_rgb(image, had_alpha)
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(
            UNSUPPORTED_IMAGE, f"cannot convert pixel mode {mode!r} to RGB: {exc}"
        ) from exc
    if orientation in _UPRIGHT_TRANSPOSE:
        rgb_image = rgb_image.transpose(_UPRIGHT_TRANSPOSE[orientation])
    rgb = np.ascontiguousarray(np.asarray(rgb_image, dtype=np.uint8))
    return DecodedImage(rgb=rgb, format=file_format, mode=mode, animated=animated, had_alpha=had_alpha)


def _is_animated(image: Image.Image) -> bool:
    try:
        return bool(getattr(image, "is_animated", False))
    except (OSError, SyntaxError, ValueError, EOFError):
        return False  # a broken second frame: the first one may still be whole


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not cost the picture: treat it as upright
        return 1
    return value if isinstance(value, int) else 1


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info


def _to_rgb(image: Image.Image, had_alpha: bool) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_wide_grey_to_uint8(image)).convert("RGB")
    if had_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _wide_grey_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float greys to 8 bits (Pillow's own conversion clips at 255)."""
    values = np.asarray(image)
    if image.mode == "F":
        return np.clip(values, 0, 255).astype(np.uint8)
    values = values.astype(np.int64)
    if image.mode in _SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
        # A 16-bit sample v maps to v >> 8, so 65535 -> 255 and the 8-bit picture inside keeps its levels.
        return (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def is_greyscale(rgb: np.ndarray) -> bool:
    """True when (almost) no pixel has colour: fewer than 2 % spread their R, G, B by more than 24 levels.

    Checked on a strided sample of about 256 x 256 pixels, so it costs well under a millisecond. Tinted
    monochrome (sepia) is colour by this measure: leave it to the Danbooru tags (monochrome, sepia) the
    harvest excludes.
    """
    height, width = rgb.shape[:2]
    step = max(1, max(height, width) // _GREY_SAMPLE_SIDE)
    sample = np.ascontiguousarray(rgb[::step, ::step])
    if sample.size == 0:
        return True
    red, green, blue = sample[..., 0], sample[..., 1], sample[..., 2]
    # Channel by channel: several times faster than max/min over the last axis of a strided view.
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    coloured_share = float(np.count_nonzero(spread > GREY_CHROMA_THRESHOLD)) / spread.size
    return coloured_share < GREY_MAX_COLOURED_SHARE


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array; the same pixels always give the same bytes (no timestamps, no metadata)."""
    buffer = io.BytesIO()
    # zlib level 3: about 3x faster than Pillow's default 6 on 128 px crops, for files about 7 % larger.
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
