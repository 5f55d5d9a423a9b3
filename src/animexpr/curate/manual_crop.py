"""Faces cropped by hand: the posts the detector missed, a square the reviewer drew, a crop accepted at once.

The square (x, y, side in the original's upright pixels) is the final crop square: what the review page
shows is what is cut, with no margin added. It must lie inside the picture and be at least
`min_square_side(size)` pixels (a crop upscaled at most 2x, the rule `--min-face` applies to detected faces).
The crop is cut and resized exactly as the crop stage cuts detected faces (`crop.cut_square`,
`crop.resize_square`), at the size of the store's latest detected crop, and stored as detector `manual`:
`detector_settings` records the square and the reviewer, the label is the post's class.

Review events: the crop row is born outside the dataset (state rejected, never pending) and one `crop`
event accepts it as the reviewer, so it is counted, listed in the reviewer's history and undone like any
decision (undo puts it back to rejected, and the post back into the "needs a crop by hand" queue). Cropping
a post by hand again replaces the earlier hand crop: that one is rejected in the same batch (one undo takes
both back). The same square again is the same crop row (its settings key holds the square): accepted
already, nothing changes. Detected crops of the post are left to their own review.
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from sqlalchemy import Connection, Engine, and_, exists, insert, or_, select
from sqlalchemy.exc import IntegrityError

from animexpr.curate.crop import (
    CROP_ALGORITHM_VERSION,
    MANUAL_DETECTOR,
    MIN_CROP_SIZE,
    CropOutcome,
    CropSettings,
    Square,
    choose_store_detector,
    crop_square,
    cut_square,
    detect_faces,
    make_detector_spec,
    read_original,
    resize_square,
    settings_key_of,
    store_crop_png,
)
from animexpr.curate.defaults import DEFAULT_MARGIN, DEFAULT_SIZE, MAX_UPSCALE
from animexpr.curate.detect import Detection, DetectorError, FaceDetector, build_detector
from animexpr.curate.review import (
    Decision,
    DecisionResult,
    ReviewError,
    append_event,
    check_reviewer,
    crops_now,
    parse_row_id,
)
from animexpr.curate.review_csv import LineError, csv_problem, csv_text, read_csv_file
from animexpr.db.locking import lock_for_write
from animexpr.db.models import MAX_ROW_ID, Crop, CropAttempt, CropState, Post, PostState
from animexpr.errors import shown
from animexpr.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from animexpr.store import CorruptFileError, FileStore, UnsafePathError

MANUAL_POLICY: Final = "manual"  # the faces policy recorded on hand crops: the reviewer chose the face
BOX_COLUMNS: Final = ("post_id", "x", "y", "size")
# The detector's outcomes that leave a post without a crop but with a picture worth a hand crop.
NEAR_MISS_OUTCOMES: Final = (CropOutcome.FACE_TOO_SMALL, CropOutcome.SEVERAL_FACES, CropOutcome.NO_FACE)
REJECTED_CROPS: Final = "rejected_crops"  # the reason of a post whose every crop was rejected
# The queue's order, best near-miss first: a face found but too small (largest first), several faces
# (largest first), a face the reviewers rejected (largest first), then nothing found.
REASON_RANK: Final = {
    CropOutcome.FACE_TOO_SMALL: 0,
    CropOutcome.SEVERAL_FACES: 1,
    REJECTED_CROPS: 2,
    CropOutcome.NO_FACE: 3,
}
# The largest face side, read back from the crop stage's detail text ("largest face 38 px < ...",
# "3 faces (sides 120, 80 px), ..."); a detail in another shape only loses the order within its reason.
_LARGEST_SIDE = re.compile(r"(?:largest face|sides) ([0-9]{1,6})")
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}", re.ASCII)
MAX_QUEUE_POSTS: Final = 200


class ManualCropError(ReviewError):
    """A hand crop that cannot be made (unknown post, no original, a square outside the picture ...)."""


class PostNotFound(ManualCropError):
    pass


@dataclass(frozen=True)
class ManualBox:
    """A hand crop asked for: the post and the final crop square in the original's pixels."""

    post_id: int
    x: int
    y: int
    side: int

    def square(self) -> Square:
        return Square(self.x, self.y, self.side)


def min_square_side(size: int) -> int:
    """The smallest hand square for crops of `size` px: upscaled at most MAX_UPSCALE times."""
    return math.ceil(size / MAX_UPSCALE)


def manual_key_settings(box: ManualBox, size: int) -> dict[str, Any]:
    """What decides a hand crop's pixels (its settings key); the reviewer is recorded beside, not in it."""
    return {
        "detector": MANUAL_DETECTOR,
        "square": [box.x, box.y, box.side],
        "size": size,
        "pad": "none",
        "algorithm": CROP_ALGORITHM_VERSION,
    }


def check_square(box: ManualBox, width: int, height: int, size: int) -> None:
    """ManualCropError unless the square lies inside a width x height picture and is large enough."""
    if box.x < 0 or box.y < 0 or box.side <= 0 or box.x + box.side > width or box.y + box.side > height:
        raise ManualCropError(
            f"post {box.post_id}: the square x={box.x} y={box.y} size={box.side} reaches outside the "
            f"{width}x{height} picture"
        )
    minimum = min_square_side(size)
    if box.side < minimum:
        raise ManualCropError(
            f"post {box.post_id}: size {box.side} is under the minimum {minimum} px (a {size} px crop is "
            f"upscaled at most {MAX_UPSCALE:g}x)"
        )


def fit_square(square: Square, min_side: int, width: int, height: int) -> Square:
    """The square grown to `min_side` around its centre and shifted (shrunk only if it must) into the
    picture: a candidate the reviewer can save as it is."""
    side = min(max(square.side, min_side), width, height)
    centre_x, centre_y = square.x + square.side / 2, square.y + square.side / 2
    x = min(max(round(centre_x - side / 2), 0), width - side)
    y = min(max(round(centre_y - side / 2), 0), height - side)
    return Square(x, y, side)


@dataclass(frozen=True)
class _PostFacts:
    id: int
    label: str | None
    relpath: str | None
    sha256: str | None
    downloaded: bool


@dataclass(frozen=True)
class _CutCrop:
    """A hand crop cut and stored as a file, waiting for its row."""

    box: ManualBox
    label: str
    size: int
    sha256: str
    relpath: str


@dataclass(frozen=True)
class ManualCropResult:
    post_id: int
    crop_id: int
    sha256: str
    accepted: DecisionResult | None  # None: this very crop was accepted already (nothing changed)
    replaced: tuple[DecisionResult, ...] = ()  # earlier hand crops of the post, rejected in the same batch

    @property
    def changed(self) -> bool:
        return self.accepted is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "post_id": self.post_id,
            "crop_id": self.crop_id,
            "sha256": self.sha256,
            "changed": self.changed,
            "result": self.accepted.to_dict() if self.accepted else None,
            "replaced": [result.crop_id for result in self.replaced],
        }


@dataclass
class BoxesReport:
    """`crop --boxes FILE.csv`: what was applied (one batch) and the bad lines by number."""

    lines: int = 0
    batch_id: str | None = None
    results: list[ManualCropResult] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return sum(result.changed for result in self.results)


class ManualCropper:
    """Hand crops on one database and store: the queue of posts that need one, candidates, and saving."""

    def __init__(
        self,
        engine: Engine,
        store: FileStore,
        class_names: Sequence[str],
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.engine = engine
        self.store = store
        self.class_names = tuple(class_names)
        self.max_pixels = max_pixels
        self._detector: tuple[FaceDetector, CropSettings] | None = None
        # The web app calls candidates from its thread pool, and an OpenCV cascade is not thread-safe.
        self._detecting = threading.Lock()

    # -- saving ---------------------------------------------------------------------------------------

    def crop(self, box: ManualBox, reviewer: str, size: int | None = None) -> ManualCropResult:
        """Cut one hand crop, store it and accept it as `reviewer` (ManualCropError: nothing written)."""
        check_reviewer(reviewer)
        size = self._size(size)
        cut = self._cut(self._post(box.post_id), box, size)
        return self._record_all([cut], reviewer, uuid.uuid4().hex)[0]

    def crop_many(
        self, boxes: Sequence[tuple[int, ManualBox]], reviewer: str, size: int | None = None
    ) -> BoxesReport:
        """Hand crops for (line number, box) pairs: each bad one is a line error, the good ones are
        recorded in one transaction and one batch (one undo takes them all back)."""
        check_reviewer(reviewer)
        size = self._size(size)
        report = BoxesReport(lines=len(boxes))
        cuts: list[_CutCrop] = []
        first_line: dict[int, int] = {}
        for line, box in boxes:
            try:
                if box.post_id in first_line:
                    raise ManualCropError(f"post {box.post_id} is already on line {first_line[box.post_id]}")
                cuts.append(self._cut(self._post(box.post_id), box, size))
                first_line[box.post_id] = line  # a bad line does not hold the post: a later line may
            except ManualCropError as exc:
                report.errors.append(LineError(line, str(exc)))
        if cuts:
            report.batch_id = uuid.uuid4().hex
            report.results = self._record_all(cuts, reviewer, report.batch_id)
        return report

    def _record_all(self, cuts: Sequence[_CutCrop], reviewer: str, batch_id: str) -> list[ManualCropResult]:
        """Rows and events for stored crops, in one transaction.

        Tried twice: on PostgreSQL two reviewers saving the same square of a post at once both insert its
        row, and the one that loses the race finds the other's row on the second try.
        """
        try:
            return self._record_once(cuts, reviewer, batch_id)
        except IntegrityError:
            return self._record_once(cuts, reviewer, batch_id)

    def _record_once(self, cuts: Sequence[_CutCrop], reviewer: str, batch_id: str) -> list[ManualCropResult]:
        with self.engine.begin() as connection:
            lock_for_write(connection)
            return [self._record(connection, cut, reviewer, batch_id) for cut in cuts]

    def _size(self, asked: int | None) -> int:
        """The crop side asked for (None: `crop_size()`), checked as the crop stage checks --size."""
        size = asked if asked is not None else self.crop_size()
        if size < MIN_CROP_SIZE:
            raise ManualCropError(f"size {size}: hand crops are at least {MIN_CROP_SIZE} px")
        return size

    def crop_size(self) -> int:
        """The side of hand crops: that of the latest detected crop, so that they match the others."""
        with self.engine.connect() as connection:
            size = connection.scalar(
                select(Crop.size_px).where(Crop.detector != MANUAL_DETECTOR).order_by(Crop.id.desc()).limit(1)
            )
        return int(size) if size else DEFAULT_SIZE

    def _post(self, post_id: int) -> _PostFacts:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(Post.id, Post.class_name, Post.file_relpath, Post.file_sha256, Post.state).where(
                    Post.id == post_id
                )
            ).first()
        if row is None:
            raise PostNotFound(f"post {post_id}: no such post in the store")
        return _PostFacts(
            row.id, row.class_name, row.file_relpath, row.file_sha256, row.state == PostState.DOWNLOADED
        )

    def _cut(self, post: _PostFacts, box: ManualBox, size: int) -> _CutCrop:
        if post.label is None:
            raise ManualCropError(f"post {post.id} has no class to label its crop with")
        rgb = self._original_pixels(post)
        height, width = rgb.shape[:2]
        check_square(box, width, height, size)
        stored = store_crop_png(self.store, resize_square(cut_square(rgb, box.square()), size))
        return _CutCrop(box, post.label, size, stored.sha256, stored.relpath)

    def original_path(self, post_id: int) -> Path:
        """The file of a post's original (PostNotFound when it has none, or its path is not a store path)."""
        post = self._post(post_id)
        if not post.downloaded or not post.relpath:
            raise PostNotFound(f"post {post_id} has no original in the store")
        try:
            return self.store.abspath(post.relpath)
        except UnsafePathError:
            raise PostNotFound(f"post {post_id}: its original's path is not a path of the store") from None

    def _original_pixels(self, post: _PostFacts) -> np.ndarray:
        """The post's original, checked against its harvest sha256 and decoded upright."""
        if not post.downloaded or not post.relpath:
            raise ManualCropError(f"post {post.id} has no original in the store")
        try:
            data = read_original(self.store, post.relpath, post.sha256)
            return decode_image(data, max_pixels=self.max_pixels).rgb
        except (CorruptFileError, UnsafePathError) as exc:
            raise ManualCropError(f"post {post.id}: its original is damaged or missing ({exc})") from None
        except OSError as exc:
            raise ManualCropError(
                f"post {post.id}: cannot read its original ({exc.strerror or exc})"
            ) from None
        except ImageDecodeError as exc:
            raise ManualCropError(f"post {post.id}: its original cannot be decoded ({exc.reason})") from None

    def _record(
        self, connection: Connection, cut: _CutCrop, reviewer: str, batch_id: str
    ) -> ManualCropResult:
        """The crop row (made once per post and square) accepted as `reviewer`, the post's other accepted
        hand crops rejected, all in the caller's transaction."""
        key_settings = manual_key_settings(cut.box, cut.size)
        key = settings_key_of(key_settings)
        crop_id = connection.scalar(
            select(Crop.id).where(
                Crop.post_id == cut.box.post_id, Crop.settings_key == key, Crop.face_index == 0
            )
        )
        if crop_id is None:
            crop_id = self._insert_row(connection, cut, key, {**key_settings, "reviewer": reviewer})
        others = crops_now(
            connection,
            and_(
                Crop.post_id == cut.box.post_id,
                Crop.detector == MANUAL_DETECTOR,
                Crop.state == CropState.ACCEPTED,
                Crop.id != crop_id,
            ),
        )
        replaced = tuple(
            append_event(
                connection, reviewer, other, Decision.REJECT, CropState.REJECTED, other.label, batch_id
            )
            for other in others
        )
        crop = crops_now(connection, Crop.id == crop_id)[0]
        accepted = None
        if crop.state != CropState.ACCEPTED:
            accepted = append_event(
                connection, reviewer, crop, Decision.CROP, CropState.ACCEPTED, crop.label, batch_id
            )
        return ManualCropResult(cut.box.post_id, crop_id, cut.sha256, accepted, replaced)

    def _insert_row(
        self, connection: Connection, cut: _CutCrop, key: str, detector_settings: dict[str, Any]
    ) -> int:
        box = cut.box
        return int(
            connection.execute(
                insert(Crop)
                .values(
                    post_id=box.post_id,
                    sha256=cut.sha256,
                    file_relpath=cut.relpath,
                    size_px=cut.size,
                    # The square is both the face box and the crop: the reviewer drew the crop itself.
                    box_x=box.x,
                    box_y=box.y,
                    box_w=box.side,
                    box_h=box.side,
                    crop_x=box.x,
                    crop_y=box.y,
                    crop_size=box.side,
                    detector=MANUAL_DETECTOR,
                    detector_settings=detector_settings,
                    settings_key=key,
                    detections_count=1,
                    face_index=0,
                    faces_policy=MANUAL_POLICY,
                    detection_score=None,
                    label=cut.label,
                    state=CropState.REJECTED,  # outside the dataset until the `crop` event accepts it
                )
                .returning(Crop.id)
            ).scalar_one()
        )

    # -- the queue ------------------------------------------------------------------------------------

    def needing_crops(self, count: int = 20, exclude: Sequence[int] = ()) -> list[dict[str, Any]]:
        """Posts with an original but no usable crop, best near-miss first (see REASON_RANK).

        A post qualifies when it has no pending or accepted crop, and the detector found no usable face in
        it (no_face, several_faces, face_too_small) or every crop of it was rejected.
        """
        count = max(1, min(int(count), MAX_QUEUE_POSTS))
        excluded = set(exclude)
        ranked = sorted(
            (facts for facts in self._queue_facts() if facts["id"] not in excluded), key=_queue_order
        )
        return [_post_item(facts) for facts in ranked[:count]]

    def _queue_facts(self) -> Iterator[dict[str, Any]]:
        usable = exists().where(
            Crop.post_id == Post.id, Crop.state.in_([CropState.PENDING, CropState.ACCEPTED])
        )
        missed = exists().where(
            CropAttempt.post_id == Post.id, CropAttempt.outcome.in_(list(NEAR_MISS_OUTCOMES))
        )
        rejected = exists().where(Crop.post_id == Post.id, Crop.state == CropState.REJECTED)
        query = select(Post.id, Post.class_name, Post.width, Post.height).where(
            Post.state == PostState.DOWNLOADED,
            Post.file_relpath.is_not(None),
            Post.class_name.is_not(None),
            ~usable,
            or_(missed, rejected),
        )
        with self.engine.connect() as connection:
            posts = {row.id: {**row._mapping, "reasons": []} for row in connection.execute(query)}
            attempts = connection.execute(
                select(
                    CropAttempt.post_id, CropAttempt.outcome, CropAttempt.detail, CropAttempt.faces_found
                ).where(CropAttempt.outcome.in_(list(NEAR_MISS_OUTCOMES)))
            )
            for post_id, outcome, detail, faces_found in attempts:
                if post_id in posts:
                    posts[post_id]["reasons"].append((outcome, _largest_side(detail), detail, faces_found))
            rejected_rows = connection.execute(
                select(Crop.post_id, Crop.crop_size).where(Crop.state == CropState.REJECTED)
            )
            for post_id, crop_size in rejected_rows:
                if post_id in posts:
                    posts[post_id]["reasons"].append((REJECTED_CROPS, crop_size, None, 1))
        yield from posts.values()

    # -- candidates -----------------------------------------------------------------------------------

    def candidates(self, post_id: int) -> dict[str, Any]:
        """Squares the reviewer may pick for a post: the detector's faces (found again on the original, for
        several_faces and face_too_small) and the squares of its rejected crops, each fitted inside the
        picture at least as large as a hand crop must be."""
        post = self._post(post_id)
        size = self.crop_size()
        min_side = min_square_side(size)
        with self.engine.connect() as connection:
            outcomes = set(
                connection.scalars(select(CropAttempt.outcome).where(CropAttempt.post_id == post_id))
            )
            rejected = connection.execute(
                select(Crop.id, Crop.crop_x, Crop.crop_y, Crop.crop_size).where(
                    Crop.post_id == post_id, Crop.state == CropState.REJECTED
                )
            ).all()
        rgb = self._original_pixels(post)
        height, width = rgb.shape[:2]
        found: list[dict[str, Any]] = []
        note = None
        if outcomes & {CropOutcome.SEVERAL_FACES, CropOutcome.FACE_TOO_SMALL}:
            try:
                faces = self._detect(rgb)
            except DetectorError as exc:
                faces, note = [], f"the detector is not available here: {exc}"
            for face in sorted(faces, key=lambda f: -f.side):
                square = fit_square(crop_square(face, DEFAULT_MARGIN, width, height), min_side, width, height)
                found.append(_candidate("detector", square, [face.x, face.y, face.w, face.h], face.score))
        for row in rejected:
            square = fit_square(Square(row.crop_x, row.crop_y, row.crop_size), min_side, width, height)
            found.append(_candidate(f"rejected crop #{row.id}", square, None, None))
        return {
            "post_id": post_id,
            "width": width,
            "height": height,
            "min_side": min_side,
            "crop_px": size,
            "candidates": found,
            "note": note,
        }

    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces by the detector `crop` uses without --detector (the store's, else the default), at its
        default settings (the cascade found as `crop` finds it, never downloaded here): the attempt keeps
        no boxes, so they are found again."""
        with self._detecting:
            if self._detector is None:
                name = choose_store_detector(self.engine, None).name
                spec = make_detector_spec(name, download=False)
                settings = CropSettings(detector=spec)
                self._detector = (build_detector(settings.detector), settings)
            detector, settings = self._detector
            return detect_faces(detector, settings, rgb)


def _candidate(source: str, square: Square, box: list[int] | None, score: float | None) -> dict[str, Any]:
    return {"source": source, "square": [square.x, square.y, square.side], "box": box, "score": score}


def _largest_side(detail: str | None) -> int | None:
    match = _LARGEST_SIDE.search(detail or "")
    return int(match.group(1)) if match else None


def _best_reason(facts: dict[str, Any]) -> tuple[str, int | None, str | None, int]:
    return min(facts["reasons"], key=lambda reason: (REASON_RANK.get(reason[0], 9), -(reason[1] or 0)))


def _queue_order(facts: dict[str, Any]) -> tuple[int, int, int]:
    reason, side, _, _ = _best_reason(facts)
    return REASON_RANK.get(reason, 9), -(side or 0), facts["id"]


def _post_item(facts: dict[str, Any]) -> dict[str, Any]:
    """What the page shows about a post that needs a hand crop, JSON-ready (addressed by post id only)."""
    reason, side, detail, faces_found = _best_reason(facts)
    return {
        "id": facts["id"],
        "label": facts["class_name"],
        "reason": reason,
        "largest_side": side,
        "detail": detail,
        "faces_found": faces_found,
        "width": facts["width"],
        "height": facts["height"],
        "original": f"/api/posts/{facts['id']}/original",
        "candidates": f"/api/posts/{facts['id']}/candidates",
    }


# -- CSV of boxes -------------------------------------------------------------------------------------


def read_boxes_csv(path: Path) -> tuple[list[tuple[int, ManualBox]], list[LineError]]:
    """(line number, box) for each good line of a UTF-8 CSV with the header post_id,x,y,size, and the bad
    lines by number; a file that is not such a CSV at all is one ManualCropError."""
    data = read_csv_file(path)
    reader = csv.reader(io.StringIO(csv_text(path, data), newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
    except csv.Error as exc:
        raise ManualCropError(f"{path}:1: {csv_problem(exc)}") from None
    if sorted(header) != sorted(BOX_COLUMNS):
        raise ManualCropError(f"{path}: the first line must name the columns {','.join(BOX_COLUMNS)}")
    boxes: list[tuple[int, ManualBox]] = []
    errors: list[LineError] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return boxes, errors
        except csv.Error as exc:
            errors.append(LineError(reader.line_num, csv_problem(exc)))
            continue
        if not any(value.strip() for value in row):
            continue
        try:
            boxes.append((reader.line_num, parse_box(dict(zip(header, row, strict=False)))))
        except ManualCropError as exc:
            errors.append(LineError(reader.line_num, str(exc)))


def parse_box(values: dict[str, Any]) -> ManualBox:
    """A box from text or JSON values (post_id, x, y, size): whole numbers only, the post a row id."""
    post_id = values.get("post_id")
    parsed_post = post_id if isinstance(post_id, int) and not isinstance(post_id, bool) else None
    if isinstance(post_id, str):
        parsed_post = parse_row_id(post_id.strip())
    if parsed_post is None or not 1 <= parsed_post <= MAX_ROW_ID:
        raise ManualCropError(
            f"post_id {shown(post_id)}: expected a post id (a whole number from 1 to {MAX_ROW_ID})"
        )
    numbers = [_whole_number(values.get(name), name) for name in ("x", "y", "size")]
    return ManualBox(parsed_post, *numbers)


def _whole_number(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**9:
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise ManualCropError(f"{name} {shown(value)}: expected a whole number of pixels")
