"""The combined detector's merge of cascade and animeface boxes, on synthetic boxes."""

from __future__ import annotations

import pytest

from animexpr.curate.crop import crop_side, map_box_back
from animexpr.curate.detect import (
    ANIMEFACE_FRAME_SCALE,
    MERGE_MIN_IOU,
    CombinedDetector,
    Detection,
    iou,
    merge_detections,
)


def lbp(x: int, y: int, side: int, hits: float = 20.0) -> Detection:
    return Detection(x, y, side, side, hits)


def anime(x: int, y: int, side: int, likelihood: float = 0.9) -> Detection:
    return Detection(x, y, side, side, likelihood, found_by="animeface")


def test_a_face_both_found_is_one_face_with_both_scores_and_the_cascade_box() -> None:
    # The animeface box is smaller and centred on the same face, as measured on real pictures.
    merged = merge_detections([lbp(100, 100, 200, hits=31)], [anime(125, 125, 150, likelihood=0.97)])
    assert merged == [
        Detection(
            100,
            100,
            200,
            200,
            score=pytest.approx(1.97),
            found_by="lbp+animeface",
            scores=(("lbp", 31.0), ("animeface", 0.97)),
        )
    ]


def test_a_face_only_one_detector_found_keeps_its_box_and_says_which() -> None:
    only_lbp = merge_detections([lbp(0, 0, 100, hits=12)], [])
    assert only_lbp == [Detection(0, 0, 100, 100, 0.0, "lbp", (("lbp", 12.0),))]
    only_anime = merge_detections([], [anime(10, 20, 80, likelihood=0.6)])
    assert only_anime == [Detection(10, 20, 80, 80, 0.6, "animeface", (("animeface", 0.6),))]
    assert merge_detections([], []) == []


def test_two_faces_each_matched_to_its_own_box() -> None:
    left, right = lbp(0, 0, 100), lbp(300, 0, 100)
    merged = merge_detections([left, right], [anime(312, 12, 76), anime(12, 12, 76)])
    assert [(d.x, d.found_by) for d in merged] == [(0, "lbp+animeface"), (300, "lbp+animeface")]


def test_faces_far_apart_are_not_merged() -> None:
    merged = merge_detections([lbp(0, 0, 100)], [anime(500, 500, 100)])
    assert sorted(d.found_by or "" for d in merged) == ["animeface", "lbp"]


def test_iou_threshold_edge() -> None:
    # Concentric squares whose sides differ by 2x overlap by exactly 1/4: merged at the threshold.
    outer, inner = lbp(0, 0, 200), anime(50, 50, 100)
    assert iou(outer, inner) == pytest.approx(0.25)
    assert MERGE_MIN_IOU == 0.25
    assert [d.found_by for d in merge_detections([outer], [inner])] == ["lbp+animeface"]
    # One pixel smaller: under the threshold, two faces.
    smaller = anime(50, 50, 99)
    assert iou(outer, smaller) < MERGE_MIN_IOU
    assert len(merge_detections([outer], [smaller])) == 2
    assert iou(lbp(0, 0, 10), lbp(10, 0, 10)) == 0.0  # touching edges do not overlap


def test_matching_is_one_to_one_best_overlap_first() -> None:
    # Two animeface boxes on one cascade box: the better overlap is merged, the other stays a face of its own.
    merged = merge_detections([lbp(0, 0, 100)], [anime(30, 30, 60, 0.5), anime(10, 10, 80, 0.8)])
    assert [(d.x, d.found_by) for d in merged] == [(0, "lbp+animeface"), (30, "animeface")]
    assert merged[0].scores == (("lbp", 20.0), ("animeface", 0.8))


def test_merged_score_ranks_agreement_then_confidence() -> None:
    merged = merge_detections(
        [lbp(0, 0, 100, hits=80), lbp(400, 0, 100, hits=7)],
        [anime(10, 10, 80, likelihood=0.3), anime(800, 0, 80, likelihood=0.99)],
    )
    by_score = sorted(merged, key=lambda d: d.score or 0.0)
    assert [d.found_by for d in by_score] == ["lbp", "animeface", "lbp+animeface"]


def test_animeface_boxes_are_framed_like_the_cascades() -> None:
    box = anime(0, 0, 100)
    assert box.frame_scale == ANIMEFACE_FRAME_SCALE
    assert crop_side(box, 0.25) == round(100 * ANIMEFACE_FRAME_SCALE * 1.5)
    merged = merge_detections([lbp(0, 0, 130)], [box])[0]
    assert merged.frame_scale == 1.0  # the cascade's own box
    assert crop_side(merged, 0.25) == 195


def test_boxes_mapped_back_keep_who_found_them() -> None:
    box = Detection(10, 10, 30, 30, 1.5, "lbp+animeface", (("lbp", 9.0), ("animeface", 0.5)))
    back = map_box_back(box, 0.5, 1000, 1000)
    assert (back.x, back.w, back.found_by, back.scores) == (20, 60, box.found_by, box.scores)


class _Fixed:
    def __init__(self, boxes: list[Detection]) -> None:
        self.boxes = boxes
        self.min_sizes: list[int] = []

    def detect(self, rgb: object, min_size: int) -> list[Detection]:
        self.min_sizes.append(min_size)
        return self.boxes


def test_combined_detector_runs_both_on_the_same_picture() -> None:
    first, second = _Fixed([lbp(0, 0, 100)]), _Fixed([anime(10, 10, 80)])
    found = CombinedDetector(first, second).detect(object(), 48)  # type: ignore[arg-type]
    assert [d.found_by for d in found] == ["lbp+animeface"]
    assert first.min_sizes == second.min_sizes == [48]
