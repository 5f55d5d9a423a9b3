"""The review queue: filters and orders, leases, decisions as appended events, undo, bulk accept, history.

Every change to a crop's state or label appends one `ReviewEvent` (who, when, decision, state and label before
and after) in the same transaction that updates the crop row, so the crop's current state is always the
`state_after` of its latest effective event and a crash can never leave one without the other.

Leases keep two reviewers apart: `lease_next` hands out crops nobody else holds (no lease, an expired lease,
or the caller's own) and records a lease for each. On SQLite the whole read-then-lease runs under
BEGIN IMMEDIATE; on PostgreSQL the candidate rows are taken with SELECT ... FOR UPDATE SKIP LOCKED, and the
lease upsert itself only overwrites an expired lease or the caller's own, so even a race between snapshots
cannot lease one crop to two reviewers.

This module also holds what the other review modules share (errors, reviewer names, `append_event`) and the
reviewers' tokens. CSV export and import are in `animexpr.curate.review_csv`, progress and pace in
`animexpr.curate.review_stats`, the page in `animexpr.curate.review_app`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import QueryableAttribute, aliased

from animexpr.curate.defaults import BULK_ACCEPT_REVIEWER, CSV_IMPORT_REVIEWER, DEFAULT_LEASE_SECONDS
from animexpr.db.locking import lock_for_write
from animexpr.db.models import MAX_ROW_ID, Crop, CropState, Post, Reviewer, ReviewEvent, ReviewLease, utcnow
from animexpr.errors import AnimexprError, shown

log = logging.getLogger(__name__)

MAX_ITEMS_PER_REQUEST = 200
MAX_EXCLUDED_IDS = 5000
# The names the command line records its own decisions under: the page and `add-reviewer` cannot take them.
RESERVED_REVIEWERS = frozenset({BULK_ACCEPT_REVIEWER, CSV_IMPORT_REVIEWER})
# Bulk accept locks and writes this many crops per transaction.
_BULK_CHUNK = 500
_REVIEWER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,63}$")
# Strict ASCII numbers: int() and float() also take "1_0", Arabic-Indic digits and the like.
_ROW_ID_PATTERN = re.compile(r"[0-9]{1,10}", re.ASCII)
_INTEGER_PATTERN = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
_DECIMAL_PATTERN = re.compile(
    r"[+-]?([0-9]{1,40}(\.[0-9]{0,40})?|\.[0-9]{1,40})([eE][+-]?[0-9]{1,4})?", re.ASCII
)
_INT64 = range(-(2**63), 2**63)
_Number = TypeVar("_Number", int, float)


class ReviewError(AnimexprError):
    """A request the queue cannot carry out (bad filter, unknown class, ...); the message says why."""


class CropNotFound(ReviewError):
    pass


class LeaseConflict(ReviewError):
    """The crop is on another reviewer's screen (their lease has not expired)."""


class ReservedReviewer(ReviewError):
    """A name the command line records its own decisions under, asked for by the page or `add-reviewer`."""


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    RELABEL = "relabel"  # the label changes and the crop is accepted under its new label
    RESET = "reset"  # back to pending (a CSV import can do this)
    UNDO = "undo"
    # A crop the reviewer made by hand (animexpr.curate.manual_crop): born outside the dataset (rejected),
    # this event accepts it, so that undo takes it out again like any other decision.
    CROP = "crop"


class Order(StrEnum):
    WORST_FIRST = "worst-first"  # lowest detection score, then smallest face: the likely-bad first
    BEST_FIRST = "best-first"
    SMALLEST_FIRST = "smallest-first"
    OLDEST_FIRST = "oldest-first"
    NEWEST_FIRST = "newest-first"
    CLUSTER = "cluster"  # crops in a duplicate cluster only, cluster by cluster


STATE_FILTERS = {
    "pending": (CropState.PENDING,),
    "accepted": (CropState.ACCEPTED,),
    "rejected": (CropState.REJECTED,),
    "decided": (CropState.ACCEPTED, CropState.REJECTED),
    "any": tuple(CropState),
}


def check_reviewer(name: str) -> str:
    if not _REVIEWER_PATTERN.match(name):
        raise ReviewError(
            f"reviewer name {shown(name)}: use 1-64 letters, digits and _ . @ : + - "
            "(starting with a letter or digit)"
        )
    return name


def check_page_reviewer(name: str) -> str:
    """A name a person may review under: a valid name that is not one of the command line's own."""
    check_reviewer(name)
    if name in RESERVED_REVIEWERS:
        raise ReservedReviewer(
            f"reviewer name {name!r} is kept for the command line's own decisions; pick another name"
        )
    return name


def parse_row_id(text: str) -> int | None:
    """One of our row ids from text (a URL path, a CSV field): ASCII digits up to MAX_ROW_ID, else None."""
    if not _ROW_ID_PATTERN.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ROW_ID else None


def is_row_id(value: Any) -> bool:
    """True for a JSON value that can be one of our row ids (a whole number from 1 to MAX_ROW_ID)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ROW_ID


@dataclass(frozen=True)
class QueueFilter:
    """Which crops a queue holds; an empty field does not filter."""

    labels: tuple[str, ...] = ()
    states: tuple[str, ...] = (CropState.PENDING,)
    min_score: float | None = None
    max_score: float | None = None
    min_size: int | None = None
    max_size: int | None = None
    duplicate_cluster: int | None = None
    duplicates_only: bool = False
    reviewer: str | None = None  # crops this reviewer has decided

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE conditions that select these crops (none for a filter that selects every crop)."""
        return [
            *self._state_and_label_conditions(),
            *_range_conditions(Crop.detection_score, self.min_score, self.max_score),
            *_range_conditions(Crop.crop_size, self.min_size, self.max_size),
            *self._cluster_conditions(),
            *self._reviewer_conditions(),
        ]

    def _state_and_label_conditions(self) -> list[ColumnElement[bool]]:
        # Every state is no condition at all; no state at all is one that nothing matches.
        conditions = [] if set(self.states) == set(CropState) else [_equal_or_in(Crop.state, self.states)]
        if self.labels:
            conditions.append(_equal_or_in(Crop.label, self.labels))
        return conditions

    def _cluster_conditions(self) -> list[ColumnElement[bool]]:
        conditions = []
        if self.duplicate_cluster is not None:
            conditions.append(Crop.duplicate_cluster == self.duplicate_cluster)
        if self.duplicates_only:
            conditions.append(Crop.duplicate_cluster.is_not(None))
        return conditions

    def _reviewer_conditions(self) -> list[ColumnElement[bool]]:
        if not self.reviewer:
            return []
        return [exists().where(ReviewEvent.crop_id == Crop.id, ReviewEvent.reviewer == self.reviewer)]

    def pending_only(self) -> QueueFilter:
        """The same filter for pending crops only (what bulk accept may change)."""
        return replace(self, states=(CropState.PENDING,))

    @classmethod
    def from_mapping(cls, data: Any, class_names: Sequence[str]) -> QueueFilter:
        """A filter from JSON or form values (strings allowed for numbers); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ReviewError("filter: expected an object of filter names and values")
        known = {
            "label",
            "state",
            "min_score",
            "max_score",
            "min_size",
            "max_size",
            "cluster",
            "duplicates_only",
        }
        unknown = sorted(set(data) - known - {"reviewer"})
        if unknown:
            raise ReviewError(
                f"unknown filter {shown(unknown[0])}; known: {', '.join(sorted([*known, 'reviewer']))}"
            )
        labels = _labels(data.get("label"), class_names)
        state = str(data.get("state") or "pending")
        if state not in STATE_FILTERS:
            raise ReviewError(f"state {shown(state)}: use one of {', '.join(STATE_FILTERS)}")
        reviewer = _text_or_none(data.get("reviewer"))
        return cls(
            labels=labels,
            states=STATE_FILTERS[state],
            min_score=_number_or_none(data.get("min_score"), float, "min_score"),
            max_score=_number_or_none(data.get("max_score"), float, "max_score"),
            min_size=_number_or_none(data.get("min_size"), int, "min_size"),
            max_size=_number_or_none(data.get("max_size"), int, "max_size"),
            duplicate_cluster=_number_or_none(data.get("cluster"), int, "cluster"),
            duplicates_only=bool(data.get("duplicates_only")),
            reviewer=check_reviewer(reviewer) if reviewer else None,
        )


def _equal_or_in(column: QueryableAttribute[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`column = value` for one value (the plainer statement), `column IN (...)` for several."""
    return column == values[0] if len(values) == 1 else column.in_(values)


def _range_conditions(
    column: QueryableAttribute[Any], low: float | None, high: float | None
) -> list[ColumnElement[bool]]:
    """`low <= column <= high`, each bound only where it is given."""
    conditions = []
    if low is not None:
        conditions.append(column >= low)
    if high is not None:
        conditions.append(column <= high)
    return conditions


def _labels(value: Any, class_names: Sequence[str]) -> tuple[str, ...]:
    if value in (None, "", []):
        return ()
    labels = tuple(value) if isinstance(value, list | tuple) else (str(value),)
    for label in labels:
        check_label(label, class_names)
    return labels


def check_label(label: Any, class_names: Sequence[str]) -> str:
    if label not in class_names:
        raise ReviewError(f"unknown class {shown(label)}; classes: {', '.join(class_names)}")
    return str(label)


def _text_or_none(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _number_or_none(value: Any, kind: type[_Number], name: str) -> _Number | None:
    """A finite number from JSON or text (ASCII digits only), within 64 bits for whole numbers."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _strict_number(value.strip() if isinstance(value, str) else value, kind)
    if number is None:
        expected = "a whole number" if kind is int else "a number"
        raise ReviewError(f"{name}: expected {expected} within 64 bits, got {shown(value)}")
    return number


def _strict_number(value: Any, kind: type[_Number]) -> _Number | None:
    if isinstance(value, str):
        pattern = _INTEGER_PATTERN if kind is int else _DECIMAL_PATTERN
        if not pattern.fullmatch(value):
            return None
        value = int(value) if kind is int else float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                return None
            value = int(value)
        return cast(_Number, value) if value in _INT64 else None
    try:
        number = float(value)
    except OverflowError:
        return None
    return cast(_Number, number) if math.isfinite(number) else None


def order_by(order: Order) -> tuple[ColumnElement[Any], ...]:
    score, size = Crop.detection_score, Crop.crop_size
    match order:
        case Order.WORST_FIRST:
            return score.asc().nulls_first(), size.asc(), Crop.id.asc()
        case Order.BEST_FIRST:
            return score.desc().nulls_last(), size.desc(), Crop.id.desc()
        case Order.SMALLEST_FIRST:
            return size.asc(), Crop.id.asc()
        case Order.OLDEST_FIRST:
            return (Crop.id.asc(),)
        case Order.NEWEST_FIRST:
            return (Crop.id.desc(),)
        case Order.CLUSTER:
            return Crop.duplicate_cluster.asc(), Crop.id.asc()
    raise ReviewError(f"unknown order {order!r}")


def parse_order(value: Any) -> Order:
    try:
        return Order(value or Order.WORST_FIRST)
    except ValueError:
        raise ReviewError(f"order {shown(value)}: use one of {', '.join(Order)}") from None


@dataclass(frozen=True)
class DecisionResult:
    """One appended event, or a decision that changed nothing (`event_id` None)."""

    crop_id: int
    reviewer: str
    decision: str
    state_before: str
    state_after: str
    label_before: str
    label_after: str
    event_id: int | None = None
    undoes_event_id: int | None = None

    @property
    def changed(self) -> bool:
        return self.event_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


@dataclass(frozen=True)
class LeasedCrops:
    """Crops held by other reviewers' live leases (a review page that shows them, or one closed lately)."""

    count: int = 0
    until: datetime | None = None  # when the last of these leases runs out
    by_reviewer: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "until": iso_utc(self.until), "by_reviewer": self.by_reviewer}


def as_utc(moment: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime."""
    # SQLite hands back naive datetimes; everything this project stores is UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso_utc(moment: datetime | None) -> str | None:
    """A stored time as ISO 8601 text ending in Z, as the page and the CSV export show it."""
    value = as_utc(moment)
    return value.isoformat().replace("+00:00", "Z") if value else None


# What a crop item is read from: crop columns, and its post's (outer-joined, so possibly None).
ITEM_COLUMNS = (
    Crop.id,
    Crop.label,
    Crop.state,
    Crop.detection_score,
    Crop.crop_size,
    Crop.size_px,
    Crop.detector,
    Crop.detections_count,
    Crop.face_index,
    Crop.faces_policy,
    Crop.duplicate_cluster,
    Crop.sha256,
    Crop.box_x,
    Crop.box_y,
    Crop.box_w,
    Crop.box_h,
    Crop.crop_x,
    Crop.crop_y,
    Crop.post_id,
    Post.width.label("post_width"),
    Post.height.label("post_height"),
    Post.rating.label("post_rating"),
    Post.score.label("post_score"),
    Post.file_relpath.label("post_file"),
)
# What a decision needs to know about a crop, read under the row lock.
CROP_NOW_COLUMNS = (Crop.id, Crop.state, Crop.label, Crop.sha256)
CropNow = Any  # a row of CROP_NOW_COLUMNS


def crop_item(crop: Any) -> dict[str, Any]:
    """What the review page shows about one crop (a row of ITEM_COLUMNS), JSON-ready.

    Images are addressed by crop id only.
    """
    return {
        "id": crop.id,
        "label": crop.label,
        "state": crop.state,
        "score": crop.detection_score,
        "crop_size": crop.crop_size,
        "size_px": crop.size_px,
        "detector": crop.detector,
        "detections_count": crop.detections_count,
        "face_index": crop.face_index,
        "faces_policy": crop.faces_policy,
        "duplicate_cluster": crop.duplicate_cluster,
        "sha256": crop.sha256,
        "box": [crop.box_x, crop.box_y, crop.box_w, crop.box_h],
        "crop_box": [crop.crop_x, crop.crop_y, crop.crop_size],
        "post": {
            "id": crop.post_id,
            "width": crop.post_width,
            "height": crop.post_height,
            "rating": crop.post_rating,
            "score": crop.post_score,
        },
        "image": f"/api/crops/{crop.id}/image",
        "source": f"/api/crops/{crop.id}/source" if crop.post_file else None,
    }


class ReviewQueue:
    """The review operations on one database; every public method is one transaction."""

    def __init__(
        self, engine: Engine, class_names: Sequence[str], lease_seconds: int = DEFAULT_LEASE_SECONDS
    ) -> None:
        if lease_seconds <= 0:
            raise ReviewError("the lease time must be positive")
        self.engine = engine
        self.class_names = tuple(class_names)
        self.lease = timedelta(seconds=lease_seconds)
        self.is_postgres = engine.dialect.name == "postgresql"

    def transaction(self) -> AbstractContextManager[Connection]:
        """A connection in a transaction that commits when the block ends normally (the CSV import and the
        statistics work in the queue's transactions too).

        The queue writes with Core statements only, so it needs no ORM session (and saves its overhead
        on every key press).
        """
        return self.engine.begin()

    # -- leases ---------------------------------------------------------------------------------------

    def lease_next(
        self,
        reviewer: str,
        queue_filter: QueueFilter | None = None,
        order: Order = Order.WORST_FIRST,
        count: int = 1,
        exclude: Iterable[int] = (),
    ) -> list[dict[str, Any]]:
        """The next `count` crops for `reviewer`, leased to them; crops leased to others are skipped."""
        now = utcnow()
        query = self.next_query(reviewer, queue_filter or QueueFilter(), order, count, exclude, now)
        with self.transaction() as connection:
            lock_for_write(connection)
            candidates = list(connection.scalars(query))
            leased = self._upsert_leases(connection, candidates, reviewer, now)
            return self._items(connection, [crop_id for crop_id in candidates if crop_id in leased])

    def next_query(
        self,
        reviewer: str,
        queue_filter: QueueFilter,
        order: Order,
        count: int,
        exclude: Iterable[int] = (),
        now: datetime | None = None,
    ) -> Select[int]:
        """The ids of the next crops free for `reviewer` (the statement `lease_next` runs)."""
        count = max(1, min(int(count), MAX_ITEMS_PER_REQUEST))
        excluded = list(exclude)[-MAX_EXCLUDED_IDS:]
        query = (
            select(Crop.id)
            .outerjoin(ReviewLease, ReviewLease.crop_id == Crop.id)
            .where(*queue_filter.conditions(), _free_for(reviewer, now or utcnow()))
            .order_by(*order_by(order))
            .limit(count)
        )
        if order is Order.CLUSTER:
            query = query.where(Crop.duplicate_cluster.is_not(None))
        if excluded:
            query = query.where(Crop.id.not_in(excluded))
        if self.is_postgres:
            query = query.with_for_update(skip_locked=True, of=Crop)
        return query

    def renew_leases(self, reviewer: str, crop_ids: Iterable[int]) -> int:
        """Extend the caller's own leases (the page calls this while it shows them)."""
        ids = list(crop_ids)[:MAX_EXCLUDED_IDS]
        if not ids:
            return 0
        with self.transaction() as connection:
            result = connection.execute(
                update(ReviewLease)
                .where(ReviewLease.crop_id.in_(ids), ReviewLease.reviewer == reviewer)
                .values(expires_at=utcnow() + self.lease)
            )
            return int(result.rowcount)

    def release_leases(self, reviewer: str, crop_ids: Iterable[int] | None = None) -> int:
        with self.transaction() as connection:
            statement = delete(ReviewLease).where(ReviewLease.reviewer == reviewer)
            if crop_ids is not None:
                statement = statement.where(ReviewLease.crop_id.in_(list(crop_ids)))
            return int(connection.execute(statement).rowcount)

    def _upsert_leases(
        self, connection: Connection, crop_ids: list[int], reviewer: str, now: datetime
    ) -> set[int]:
        """Lease the crops that are free for `reviewer`; returns the ids actually leased."""
        if not crop_ids:
            return set()
        table = cast(Table, ReviewLease.__table__)
        dialect_insert = postgresql.insert if self.is_postgres else sqlite.insert
        expires_at = now + self.lease
        statement = dialect_insert(table).values(
            [{"crop_id": crop_id, "reviewer": reviewer, "expires_at": expires_at} for crop_id in crop_ids]
        )
        upsert = statement.on_conflict_do_update(
            index_elements=[table.c.crop_id],
            set_={"reviewer": statement.excluded.reviewer, "expires_at": statement.excluded.expires_at},
            where=or_(table.c.expires_at <= now, table.c.reviewer == reviewer),
        ).returning(table.c.crop_id)
        return set(connection.execute(upsert).scalars())

    # -- decisions ------------------------------------------------------------------------------------

    def decide(self, reviewer: str, crop_id: int, decision: str, label: str | None = None) -> DecisionResult:
        """Accept, reject or relabel (and accept) one crop; stored before this returns."""
        with self.transaction() as connection:
            lock_for_write(connection)
            crop = self._locked_crop(connection, crop_id)
            self._check_lease(connection, reviewer, [crop_id])
            return self._decide_one(connection, reviewer, crop, decision, label, batch_id=None)

    def decide_page(
        self, reviewer: str, accept_ids: Sequence[int], reject_ids: Sequence[int]
    ) -> tuple[list[DecisionResult], dict[int, str]]:
        """A grid page in one transaction and one batch (one undo takes it back).

        Crops now leased to someone else are left out and returned with the reason.
        """
        if set(accept_ids) & set(reject_ids):
            raise ReviewError("a crop cannot be both accepted and rejected")
        wanted = [(crop_id, Decision.ACCEPT) for crop_id in dict.fromkeys(accept_ids)]
        wanted += [(crop_id, Decision.REJECT) for crop_id in dict.fromkeys(reject_ids)]
        if len(wanted) > MAX_ITEMS_PER_REQUEST:
            raise ReviewError(f"at most {MAX_ITEMS_PER_REQUEST} crops per page")
        batch_id = uuid.uuid4().hex
        results: list[DecisionResult] = []
        skipped: dict[int, str] = {}
        with self.transaction() as connection:
            lock_for_write(connection)
            crops = self._locked_crops(connection, [crop_id for crop_id, _ in wanted])
            taken = self._leased_by_others(connection, reviewer, list(crops))
            for crop_id, decision in wanted:
                crop = crops.get(crop_id)
                if crop is None:
                    skipped[crop_id] = "no such crop"
                elif crop_id in taken:
                    skipped[crop_id] = f"leased to {taken[crop_id]}"
                else:
                    results.append(self._decide_one(connection, reviewer, crop, decision, None, batch_id))
        return results, skipped

    def _decide_one(
        self,
        connection: Connection,
        reviewer: str,
        crop: CropNow,
        decision: str,
        label: str | None,
        batch_id: str | None,
    ) -> DecisionResult:
        state_after, label_after, decision = self._target(crop, decision, label)
        connection.execute(delete(ReviewLease).where(ReviewLease.crop_id == crop.id))
        return append_event(connection, reviewer, crop, decision, state_after, label_after, batch_id)

    def _target(self, crop: CropNow, decision: str, label: str | None) -> tuple[str, str, Decision]:
        match decision:
            case Decision.ACCEPT:
                new_label = crop.label if label is None else check_label(label, self.class_names)
                kind = Decision.ACCEPT if new_label == crop.label else Decision.RELABEL
                return CropState.ACCEPTED, new_label, kind
            case Decision.REJECT:
                return CropState.REJECTED, crop.label, Decision.REJECT
            case Decision.RELABEL:
                if label is None:
                    raise ReviewError("relabel needs the new label")
                new_label = check_label(label, self.class_names)
                kind = Decision.ACCEPT if new_label == crop.label else Decision.RELABEL
                return CropState.ACCEPTED, new_label, kind
        raise ReviewError(f"decision {shown(decision)}: use accept, reject or relabel")

    def _locked_crop(self, connection: Connection, crop_id: int) -> CropNow:
        crop = self._locked_crops(connection, [crop_id]).get(crop_id)
        if crop is None:
            raise CropNotFound(f"no crop with id {crop_id}")
        return crop

    def _locked_crops(self, connection: Connection, crop_ids: list[int]) -> dict[int, CropNow]:
        if not crop_ids:
            return {}
        return {crop.id: crop for crop in crops_now(connection, Crop.id.in_(crop_ids))}

    def _leased_by_others(self, connection: Connection, reviewer: str, crop_ids: list[int]) -> dict[int, str]:
        if not crop_ids:
            return {}
        query = select(ReviewLease.crop_id, ReviewLease.reviewer).where(
            ReviewLease.crop_id.in_(crop_ids),
            ReviewLease.reviewer != reviewer,
            ReviewLease.expires_at > utcnow(),
        )
        return dict(connection.execute(query).all())

    def _check_lease(self, connection: Connection, reviewer: str, crop_ids: list[int]) -> None:
        taken = self._leased_by_others(connection, reviewer, crop_ids)
        if taken:
            crop_id, holder = next(iter(taken.items()))
            raise LeaseConflict(f"crop {crop_id} is on {holder}'s screen (leased); it was not changed")

    # -- undo -----------------------------------------------------------------------------------------

    def undo_last(self, reviewer: str) -> list[DecisionResult]:
        """Take back the reviewer's latest decision (a whole batch when it was one); [] when none is left.

        Decisions someone else has overridden since are skipped: undoing them would overwrite the newer one.
        The crops come back leased to the reviewer so the page can show them again.
        """
        now = utcnow()
        with self.transaction() as connection:
            lock_for_write(connection)
            undoable = _undoable_events(reviewer)
            target = connection.execute(undoable.order_by(ReviewEvent.id.desc()).limit(1)).first()
            if target is None:
                return []
            events = [target]
            if target.batch_id is not None:
                events = list(
                    connection.execute(
                        undoable.where(ReviewEvent.batch_id == target.batch_id).order_by(ReviewEvent.id)
                    )
                )
            batch_id = uuid.uuid4().hex if len(events) > 1 else None
            crops = self._locked_crops(connection, [event.crop_id for event in events])
            results = []
            for event in events:
                crop = crops[event.crop_id]
                if (crop.state, crop.label) != (event.state_after, event.label_after):
                    log.warning(
                        "crop %s changed outside the review log; not undoing event %s", crop.id, event.id
                    )
                    continue
                results.append(
                    append_event(
                        connection,
                        reviewer,
                        crop,
                        Decision.UNDO,
                        event.state_before,
                        event.label_before,
                        batch_id,
                        undoes_event_id=event.id,
                    )
                )
            self._upsert_leases(connection, [result.crop_id for result in results], reviewer, now)
            return results

    # -- reading --------------------------------------------------------------------------------------

    def items(self, crop_ids: Sequence[int]) -> list[dict[str, Any]]:
        with self.transaction() as connection:
            return self._items(connection, list(crop_ids))

    def item(self, crop_id: int) -> dict[str, Any]:
        found = self.items([crop_id])
        if not found:
            raise CropNotFound(f"no crop with id {crop_id}")
        return found[0]

    def _items(self, connection: Connection, crop_ids: list[int]) -> list[dict[str, Any]]:
        """Items in the order of `crop_ids`, each with its latest event (who decided it, when)."""
        if not crop_ids:
            return []
        rows = connection.execute(
            select(*ITEM_COLUMNS).outerjoin(Post, Post.id == Crop.post_id).where(Crop.id.in_(crop_ids))
        )
        by_id = {row.id: crop_item(row) for row in rows}
        latest = (
            select(func.max(ReviewEvent.id))
            .where(ReviewEvent.crop_id.in_(crop_ids))
            .group_by(ReviewEvent.crop_id)
        )
        events = select(
            ReviewEvent.crop_id, ReviewEvent.reviewer, ReviewEvent.decision, ReviewEvent.created_at
        )
        for row in connection.execute(events.where(ReviewEvent.id.in_(latest))):
            by_id[row.crop_id]["last_event"] = {
                "reviewer": row.reviewer,
                "decision": row.decision,
                "at": iso_utc(row.created_at),
            }
        return [by_id[crop_id] for crop_id in crop_ids if crop_id in by_id]

    def history(self, reviewer: str, limit: int = 50) -> list[dict[str, Any]]:
        """The crops of the reviewer's latest decisions that still stand, oldest first."""
        limit = max(1, min(int(limit), MAX_ITEMS_PER_REQUEST))
        with self.transaction() as connection:
            recent = connection.execute(
                _undoable_events(reviewer).order_by(ReviewEvent.id.desc()).limit(limit * 2)
            ).all()
            crop_ids: list[int] = []
            for event in recent:
                if event.crop_id not in crop_ids:
                    crop_ids.append(event.crop_id)
            return self._items(connection, crop_ids[:limit][::-1])

    def file_relpath(self, crop_id: int, which: str) -> str:
        """The store path of a crop's own image (`crop`) or of its source post's original (`source`)."""
        with self.transaction() as connection:
            if which == "crop":
                relpath = connection.scalar(select(Crop.file_relpath).where(Crop.id == crop_id))
            else:
                relpath = connection.scalar(
                    select(Post.file_relpath).join(Crop, Crop.post_id == Post.id).where(Crop.id == crop_id)
                )
        if not relpath:
            raise CropNotFound(f"crop {crop_id} has no {which} image")
        return relpath

    # -- bulk accept ----------------------------------------------------------------------------------

    def bulk_accept(
        self, queue_filter: QueueFilter, reviewer: str = BULK_ACCEPT_REVIEWER, dry_run: bool = False
    ) -> int:
        """Accept every pending crop the filter selects, as `reviewer`, in one batch; crops on someone's
        screen (a live lease) are left alone. Returns how many were (or, dry, would be) accepted."""
        check_reviewer(reviewer)
        pending_filter = queue_filter.pending_only()
        batch_id = uuid.uuid4().hex
        accepted = 0
        last_id = 0
        while True:
            with self.transaction() as connection:
                lock_for_write(connection)
                query = (
                    select(*CROP_NOW_COLUMNS)
                    .outerjoin(ReviewLease, ReviewLease.crop_id == Crop.id)
                    .where(*pending_filter.conditions(), _free_for(reviewer, utcnow()), Crop.id > last_id)
                    .order_by(Crop.id)
                    .limit(_BULK_CHUNK)
                    .with_for_update(of=Crop, skip_locked=True)
                )
                crops = list(connection.execute(query))
                if not crops:
                    return accepted
                last_id = crops[-1].id
                accepted += len(crops)
                if dry_run:
                    continue
                for crop in crops:
                    append_event(
                        connection, reviewer, crop, Decision.ACCEPT, CropState.ACCEPTED, crop.label, batch_id
                    )
                connection.execute(delete(ReviewLease).where(ReviewLease.crop_id.in_([c.id for c in crops])))

    def leased_by_others(self, queue_filter: QueueFilter, reviewer: str) -> LeasedCrops:
        """The pending crops the filter selects that live leases of other reviewers hold (bulk accept leaves
        them alone): how many, whose, and until when."""
        pending_filter = queue_filter.pending_only()
        with self.transaction() as connection:
            rows = connection.execute(
                select(ReviewLease.reviewer, func.count(), func.max(ReviewLease.expires_at))
                .join(Crop, Crop.id == ReviewLease.crop_id)
                .where(
                    *pending_filter.conditions(),
                    ReviewLease.expires_at > utcnow(),
                    ReviewLease.reviewer != reviewer,
                )
                .group_by(ReviewLease.reviewer)
                .order_by(ReviewLease.reviewer)
            ).all()
        if not rows:
            return LeasedCrops()
        return LeasedCrops(
            count=sum(count for _, count, _ in rows),
            until=max(moment for _, _, until in rows if (moment := as_utc(until)) is not None),
            by_reviewer={name: count for name, count, _ in rows},
        )


def _free_for(reviewer: str, now: datetime) -> ColumnElement[bool]:
    """No lease, an expired one, or the reviewer's own (used with an outer join on review_leases)."""
    return or_(
        ReviewLease.crop_id.is_(None),
        ReviewLease.expires_at <= now,
        ReviewLease.reviewer == reviewer,
    )


def _undoable_events(reviewer: str) -> Select[Any]:
    """The reviewer's decisions that are neither undone nor overridden by a later decision that stands."""
    undo = aliased(ReviewEvent)
    later = aliased(ReviewEvent)
    later_undo = aliased(ReviewEvent)
    later_stands = and_(
        later.crop_id == ReviewEvent.crop_id,
        later.id > ReviewEvent.id,
        later.decision != Decision.UNDO,
        ~exists().where(later_undo.undoes_event_id == later.id),
    )
    return select(*ReviewEvent.__table__.c).where(
        ReviewEvent.reviewer == reviewer,
        ReviewEvent.decision != Decision.UNDO,
        ~exists().where(undo.undoes_event_id == ReviewEvent.id),
        ~exists().where(later_stands),
    )


def crops_now(connection: Connection, condition: ColumnElement[bool]) -> list[CropNow]:
    """Id, state, label and hash of the crops matching `condition`, read fresh and row-locked."""
    query = select(*CROP_NOW_COLUMNS).where(condition).order_by(Crop.id).with_for_update(of=Crop)
    return list(connection.execute(query))


def append_event(
    connection: Connection,
    reviewer: str,
    crop: CropNow,
    decision: str,
    state_after: str,
    label_after: str,
    batch_id: str | None,
    undoes_event_id: int | None = None,
) -> DecisionResult:
    """Record one decision and apply it to the crop row, in the caller's transaction.

    `crop` is the crop as read under its row lock in this transaction (CROP_NOW_COLUMNS).
    """
    state_before, label_before = crop.state, crop.label
    if decision != Decision.UNDO and (state_before, label_before) == (state_after, label_after):
        return DecisionResult(
            crop.id, reviewer, decision, state_before, state_after, label_before, label_after
        )
    event_id = connection.execute(
        insert(ReviewEvent)
        .values(
            crop_id=crop.id,
            reviewer=reviewer,
            decision=decision,
            state_before=state_before,
            state_after=state_after,
            label_before=label_before,
            label_after=label_after,
            undoes_event_id=undoes_event_id,
            batch_id=batch_id,
        )
        .returning(ReviewEvent.id)
    ).scalar_one()
    connection.execute(update(Crop).where(Crop.id == crop.id).values(state=state_after, label=label_after))
    return DecisionResult(
        crop.id,
        reviewer,
        decision,
        state_before,
        state_after,
        label_before,
        label_after,
        event_id=event_id,
        undoes_event_id=undoes_event_id,
    )


# -- reviewers with tokens of their own -------------------------------------------------------------------


def token_sha256(token: str | bytes) -> str:
    """What is kept of a token: the sha256 of its bytes (a text token is UTF-8 encoded first)."""
    if isinstance(token, str):
        # Command-line arguments that are not UTF-8 come as lone surrogates: encode them back to their bytes.
        token = token.encode("utf-8", "surrogateescape")
    return hashlib.sha256(token).hexdigest()


class ReviewerTokens:
    """The `reviewers` table: one token per reviewer, of which only the sha256 is stored."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str) -> tuple[str, bool]:
        """A new random token for `name` (shown once by the caller); True when it replaced an old one."""
        check_page_reviewer(name)
        token = secrets.token_urlsafe(32)
        values = {"token_sha256": token_sha256(token), "created_at": utcnow()}
        with self.engine.begin() as connection:
            lock_for_write(connection)
            replaced = connection.execute(update(Reviewer).where(Reviewer.name == name).values(**values))
            if not replaced.rowcount:
                connection.execute(insert(Reviewer).values(name=name, **values))
        return token, bool(replaced.rowcount)

    def remove(self, name: str) -> bool:
        with self.engine.begin() as connection:
            return bool(connection.execute(delete(Reviewer).where(Reviewer.name == name)).rowcount)

    def names(self) -> list[tuple[str, datetime]]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(Reviewer.name, Reviewer.created_at).order_by(Reviewer.name))
            return [(name, cast(datetime, as_utc(created_at))) for name, created_at in rows]

    def any(self) -> bool:
        with self.engine.connect() as connection:
            return connection.scalar(select(Reviewer.name).limit(1)) is not None

    def name_of(self, digest: str) -> str | None:
        """The reviewer whose token has this sha256, if any."""
        with self.engine.connect() as connection:
            return connection.scalar(select(Reviewer.name).where(Reviewer.token_sha256 == digest))

    def digest_of(self, name: str) -> str | None:
        """The sha256 of the reviewer's current token (None once removed)."""
        with self.engine.connect() as connection:
            return connection.scalar(select(Reviewer.token_sha256).where(Reviewer.name == name))
