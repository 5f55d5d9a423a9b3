"""Image decoding on the files Danbooru really serves, each made here: every bad case gets its reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from animexpr.images import (
    EMPTY_FILE,
    MISSING_FILE,
    NOT_AN_IMAGE,
    TOO_MANY_PIXELS,
    TRUNCATED,
    ImageDecodeError,
    decode_image,
    encode_png,
    is_greyscale,
)


def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def colour_picture(width: int = 96, height: int = 64) -> np.ndarray:
    """A smooth colourful RGB picture (JPEG keeps it close to itself)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 128)], axis=-1).astype(np.uint8)


def reason_of(data: bytes, **options: int) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, **options)
    return caught.value.reason


def test_plain_rgb_jpeg_from_bytes_and_from_path_alike(tmp_path: Path) -> None:
    data = saved(Image.fromarray(colour_picture()), "JPEG", quality=95)
    path = tmp_path / "post.jpg"
    path.write_bytes(data)
    from_bytes, from_path = decode_image(data), decode_image(path)
    assert from_bytes.rgb.shape == (64, 96, 3)
    assert from_bytes.rgb.dtype == np.uint8
    assert np.array_equal(from_bytes.rgb, from_path.rgb)
    assert (from_bytes.format, from_bytes.mode, from_bytes.animated) == ("JPEG", "RGB", False)
    assert np.abs(from_bytes.rgb.astype(int) - colour_picture()).mean() < 3
    assert not from_bytes.is_greyscale()


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours() -> None:
    # Pure red in CMYK is (C, M, Y, K) = (0, 255, 255, 0); Pillow writes the Adobe marker and inverts it back.
    data = saved(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.mode == "CMYK"
    assert decoded.rgb.shape == (30, 40, 3)
    red, green, blue = decoded.rgb.reshape(-1, 3).mean(axis=0)
    assert red > 240
    assert green < 15
    assert blue < 15


def test_greyscale_jpeg_is_detected_from_its_mode() -> None:
    grey = cv2.cvtColor(colour_picture(), cv2.COLOR_RGB2GRAY)
    decoded = decode_image(saved(Image.fromarray(grey, "L"), "JPEG"))
    assert decoded.mode == "L"
    assert decoded.rgb.shape == (64, 96, 3)
    assert decoded.grey_mode
    assert decoded.is_greyscale()


def test_grey_picture_stored_as_rgb_jpeg_is_detected_from_its_pixels() -> None:
    grey = cv2.cvtColor(colour_picture(), cv2.COLOR_RGB2GRAY)
    rgb_of_grey = np.repeat(grey[:, :, None], 3, axis=2)
    decoded = decode_image(saved(Image.fromarray(rgb_of_grey), "JPEG", quality=60))
    assert decoded.mode == "RGB"
    assert not decoded.grey_mode
    assert decoded.is_greyscale()


def test_greyscale_share_threshold() -> None:
    page = np.full((100, 100, 3), 128, np.uint8)
    page[:1, :] = (255, 0, 0)  # 1 % coloured: a stamp on a grey page
    assert is_greyscale(page)
    page[:5, :] = (255, 0, 0)  # 5 % coloured
    assert not is_greyscale(page)


def test_rgba_png_is_composited_over_white() -> None:
    pixels = np.zeros((20, 30, 4), np.uint8)
    pixels[:, :10] = (255, 0, 0, 255)  # opaque red
    pixels[:, 10:20] = (255, 0, 0, 128)  # half-transparent red
    pixels[:, 20:] = (0, 0, 0, 0)  # fully transparent black
    decoded = decode_image(saved(Image.fromarray(pixels, "RGBA"), "PNG"))
    assert decoded.had_alpha
    assert decoded.mode == "RGBA"
    assert tuple(decoded.rgb[5, 5]) == (255, 0, 0)
    assert decoded.rgb[5, 15, 0] == 255
    assert 120 <= decoded.rgb[5, 15, 1] <= 135
    assert tuple(decoded.rgb[5, 25]) == (255, 255, 255)


def test_palette_png_with_a_transparent_index() -> None:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    image.paste(0, (0, 0, 8, 16))  # index 0, declared transparent below
    decoded = decode_image(saved(image, "PNG", transparency=0))
    assert decoded.mode == "P"
    assert decoded.had_alpha
    assert tuple(decoded.rgb[3, 3]) == (255, 255, 255)
    assert tuple(decoded.rgb[3, 12]) == (0, 128, 255)


def test_palette_png_without_transparency() -> None:
    image = Image.fromarray(colour_picture()).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    decoded = decode_image(saved(image, "PNG"))
    assert decoded.mode == "P"
    assert not decoded.had_alpha
    assert np.abs(decoded.rgb.astype(int) - colour_picture()).mean() < 8


def test_sixteen_bit_grey_png_keeps_its_levels() -> None:
    levels = np.tile(np.arange(256, dtype=np.uint16), (4, 1))  # 4 x 256, every 8-bit level
    data = cv2.imencode(".png", levels * 257)[1].tobytes()  # 16-bit grey PNG: v -> v * 257
    decoded = decode_image(data)
    assert decoded.mode.startswith("I")
    assert decoded.grey_mode
    assert np.array_equal(decoded.rgb[:, :, 0], levels.astype(np.uint8))
    assert np.array_equal(decoded.rgb[:, :, 0], decoded.rgb[:, :, 2])


def test_sixteen_bit_colour_png() -> None:
    rgb = colour_picture().astype(np.uint16) * 257
    data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()  # 48-bit BGR -> PNG
    decoded = decode_image(data)
    assert decoded.rgb.dtype == np.uint8
    assert np.abs(decoded.rgb.astype(int) - colour_picture()).max() <= 1


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode_image(data)
    assert decoded.animated
    assert decoded.format == "GIF"
    assert tuple(decoded.rgb[5, 5]) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    # Stored landscape, left half red and right half blue, with "rotate 90 degrees clockwise to view" (6).
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(saved(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.rgb.shape == (40, 20, 3)  # upright: portrait
    assert decoded.rgb[5, 10, 0] > 200
    assert decoded.rgb[5, 10, 2] < 60
    assert decoded.rgb[35, 10, 2] > 200
    assert decoded.rgb[35, 10, 0] < 60


def test_truncated_jpeg() -> None:
    data = saved(Image.fromarray(colour_picture(300, 200)), "JPEG", quality=90)
    assert reason_of(data[: len(data) // 2]) == TRUNCATED


def test_truncated_png() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    data = saved(Image.fromarray(noise), "PNG")
    assert reason_of(data[: len(data) // 2]) == TRUNCATED


def test_zero_bytes() -> None:
    assert reason_of(b"") == EMPTY_FILE


def test_text_and_html_are_not_images() -> None:
    assert reason_of(b"just some words, not a picture\n") == NOT_AN_IMAGE
    with pytest.raises(ImageDecodeError, match="HTML"):
        decode_image(b"<!DOCTYPE html><html><body>429 Too Many Requests</body></html>")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(tmp_path / "gone.jpg")
    assert caught.value.reason == MISSING_FILE


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_bomb_over_our_pixel_limit_is_refused_before_decoding() -> None:
    # 12,000 x 10,000 = 120 MP: over our 100 MP default, under Pillow's own refusal (about 179 MP).
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(png_header_only(12_000, 10_000))
    assert caught.value.reason == TOO_MANY_PIXELS
    assert "120,000,000" in str(caught.value)


def test_bomb_over_pillows_own_limit() -> None:
    assert reason_of(png_header_only(30_000, 30_000)) == TOO_MANY_PIXELS


def test_a_real_image_over_a_lower_limit() -> None:
    data = saved(Image.fromarray(colour_picture()), "PNG")
    assert reason_of(data, max_pixels=1000) == TOO_MANY_PIXELS
    assert decode_image(data, max_pixels=96 * 64).width == 96


def test_png_encoding_is_deterministic_and_lossless() -> None:
    pixels = colour_picture()
    first, second = encode_png(pixels), encode_png(pixels.copy())
    assert first == second
    assert b"tIME" not in first
    assert b"tEXt" not in first
    assert np.array_equal(decode_image(first).rgb, pixels)
