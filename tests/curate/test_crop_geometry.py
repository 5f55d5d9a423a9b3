"""Crop geometry as pure functions: margins, squares at the edges, small images, scaling, face policies."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from animexpr.curate.crop import (
    CropSettings,
    FacePolicy,
    Square,
    choose_faces,
    crop_side,
    crop_square,
    cut_square,
    default_min_face,
    detection_scale,
    map_box_back,
    place_span,
    resize_square,
)
from animexpr.curate.detect import ANIMEFACE, ANIMEFACE_FRAME_SCALE, LBP, Detection, DetectorSpec


def test_square_is_centred_on_the_box_with_the_margin() -> None:
    box = Detection(100, 120, 40, 40)
    assert crop_side(box, 0.25) == 60
    assert crop_square(box, 0.25, 400, 400) == Square(90, 110, 60)


def test_non_square_box_uses_its_longer_side() -> None:
    assert crop_square(Detection(100, 100, 40, 20), 0.0, 400, 400) == Square(100, 90, 40)


def test_square_is_shifted_inside_at_the_top_left_edge() -> None:
    assert crop_square(Detection(0, 2, 40, 40), 0.25, 400, 300) == Square(0, 0, 60)


def test_square_is_shifted_inside_at_the_bottom_right_edge() -> None:
    square = crop_square(Detection(380, 280, 20, 20), 0.5, 400, 300)
    assert square == Square(360, 260, 40)
    assert square.x + square.side == 400
    assert square.y + square.side == 300


def test_square_larger_than_the_image_covers_it_and_stays_centred_on_the_face() -> None:
    # A 50 px wide image with a 40 px face: the 60 px square overhangs both sides, as the face allows.
    square = crop_square(Detection(5, 80, 40, 40), 0.25, 50, 200)
    assert square == Square(-5, 70, 60)
    # Face at the very left: the overhang goes to the left but never past what the image needs.
    assert crop_square(Detection(0, 80, 40, 40), 0.25, 50, 200).x == -10
    assert crop_square(Detection(10, 80, 40, 40), 0.25, 50, 200).x == 0


@pytest.mark.parametrize(
    ("centre", "side", "extent", "start"),
    [
        (50, 20, 100, 40),
        (5, 20, 100, 0),
        (98, 20, 100, 80),
        (10, 30, 20, -5),
        (15, 30, 20, 0),
        (0, 30, 20, -10),
    ],
)
def test_place_span(centre: float, side: int, extent: int, start: int) -> None:
    assert place_span(centre, side, extent) == start


def test_cut_square_pads_only_outside_the_image_with_white() -> None:
    image = np.zeros((10, 6, 3), np.uint8)
    image[:, :, 1] = np.arange(6, dtype=np.uint8)[None, :] + 10
    pixels = cut_square(image, Square(-2, 1, 8))
    assert pixels.shape == (8, 8, 3)
    assert (pixels[:, :2] == 255).all()  # left padding
    assert np.array_equal(pixels[:, 2:], image[1:9])  # the image itself, untouched


def test_cut_square_inside_is_a_view_of_the_image() -> None:
    image = np.arange(20 * 20 * 3, dtype=np.uint32).reshape(20, 20, 3).astype(np.uint8)
    assert np.array_equal(cut_square(image, Square(3, 4, 10)), image[4:14, 3:13])


def test_resize_down_uses_area_and_up_uses_cubic() -> None:
    rng = np.random.default_rng(1)
    big = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    small = rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)
    assert np.array_equal(resize_square(big, 128), cv2.resize(big, (128, 128), interpolation=cv2.INTER_AREA))
    assert np.array_equal(
        resize_square(small, 128), cv2.resize(small, (128, 128), interpolation=cv2.INTER_CUBIC)
    )
    assert resize_square(small, 50).shape == (50, 50, 3)


def test_default_min_face_allows_at_most_2x_upscaling() -> None:
    assert default_min_face(128, 0.25) == 43
    for size, margin in ((128, 0.25), (256, 0.1), (64, 0.5), (128, 0.0)):
        smallest = default_min_face(size, margin)
        assert size / crop_side(Detection(0, 0, smallest, smallest), margin) <= 2.0
        assert size / crop_side(Detection(0, 0, smallest - 1, smallest - 1), margin) > 2.0 - 0.05
    assert CropSettings(detector=DetectorSpec(), size=128).effective_min_face == 43
    assert CropSettings(detector=DetectorSpec(), min_face=80).effective_min_face == 80


def test_detection_scale_reduces_big_images_but_keeps_min_face_visible() -> None:
    assert detection_scale(3072, 3072, 3072 * 3072, 43) == 1.0
    assert detection_scale(6144, 6144, 3072 * 3072, 64) == pytest.approx(0.5)
    assert detection_scale(6144, 6144, 3072 * 3072, 43) == pytest.approx(24 / 43)
    # 20,000 x 20,000 would need 0.15; a 43 px face would shrink to 6.6 px, so stop at 24 / 43.
    assert detection_scale(20_000, 20_000, 3072 * 3072, 43) == pytest.approx(24 / 43)


def test_map_box_back_scales_and_clips() -> None:
    assert map_box_back(Detection(10, 20, 30, 30, 0.9), 0.5, 1000, 1000) == Detection(20, 40, 60, 60, 0.9)
    assert map_box_back(Detection(90, 90, 20, 20), 0.5, 200, 200) == Detection(180, 180, 20, 20)
    box = Detection(3, 4, 5, 6)
    assert map_box_back(box, 1.0, 10, 10) is box


def faces(*sides: int) -> list[Detection]:
    return [Detection(100 * i, 50, side, side) for i, side in enumerate(sides)]


def test_one_face_is_chosen_under_every_policy() -> None:
    for policy in FacePolicy:
        assert choose_faces(faces(80), policy) == [(0, faces(80)[0])]
    assert choose_faces([], FacePolicy.ALL) == []


def test_largest_if_dominant() -> None:
    found = faces(60, 130, 64)
    assert choose_faces(found, FacePolicy.LARGEST_IF_DOMINANT) == [(1, found[1])]  # 130 >= 2 x 64
    close = faces(60, 110, 64)
    assert choose_faces(close, FacePolicy.LARGEST_IF_DOMINANT) == []  # 110 < 2 x 64: whose smile is it?
    assert choose_faces(faces(50, 100), FacePolicy.LARGEST_IF_DOMINANT) == [(1, faces(50, 100)[1])]


def test_skip_largest_and_all() -> None:
    found = faces(60, 110, 64)
    assert choose_faces(found, FacePolicy.SKIP) == []
    assert choose_faces(found, FacePolicy.LARGEST) == [(1, found[1])]
    assert choose_faces(found, FacePolicy.ALL) == list(enumerate(found))


def test_face_indices_are_in_reading_order_whatever_the_detector_order() -> None:
    found = [Detection(300, 10, 50, 50), Detection(10, 200, 70, 70), Detection(10, 10, 60, 60)]
    chosen = choose_faces(found, FacePolicy.ALL)
    assert [(i, (f.x, f.y)) for i, f in chosen] == [(0, (10, 10)), (1, (300, 10)), (2, (10, 200))]
    assert choose_faces(found, FacePolicy.LARGEST) == [(2, found[1])]


def test_settings_key_changes_with_every_setting_and_is_stable() -> None:
    base = CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64))
    assert base.settings_key == CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64)).settings_key
    others = [
        CropSettings(detector=DetectorSpec(cascade_sha256="b" * 64)),
        CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64, min_neighbors=3)),
        CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64), margin=0.3),
        CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64), size=256),
        CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64), faces=FacePolicy.ALL),
        CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64), min_face=60),
        CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64), keep_greyscale=True),
    ]
    keys = {base.settings_key, *(s.settings_key for s in others)}
    assert len(keys) == len(others) + 1
    # Where the cascade lies on this machine does not matter, only its content.
    moved = CropSettings(detector=DetectorSpec(cascade_sha256="a" * 64, cascade_path="/elsewhere.xml"))
    assert moved.settings_key == base.settings_key


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        CropSettings(margin=-0.1)
    with pytest.raises(ValueError, match="size"):
        CropSettings(size=4)


def test_face_sizes_are_compared_as_the_cascade_frames_faces() -> None:
    # animeface's boxes are tighter than the cascade's (framed 1.32x larger when cropped): a 35 px animeface
    # box is a 46 px face for --min-face (43 at the defaults) and for dominance.
    tight = Detection(0, 0, 35, 35, 0.9, found_by=ANIMEFACE)
    assert tight.framed_side == round(35 * ANIMEFACE_FRAME_SCALE) >= default_min_face(128, 0.25)
    cascade_box = Detection(200, 0, 22, 22, 3.0, found_by=LBP)
    assert choose_faces([tight, cascade_box], FacePolicy.LARGEST_IF_DOMINANT) == [(0, tight)]  # 46 >= 2 x 22
    assert choose_faces([replace(tight, found_by=LBP), cascade_box], FacePolicy.LARGEST_IF_DOMINANT) == []
