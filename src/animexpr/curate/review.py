"""The review queue: leases, decisions as appended events, undo, bulk accept, progress, CSV export and import.

Every change to a crop's state or label appends one `ReviewEvent` (who, when, decision, state and label before
and after) in the same transaction that updates the crop row, so the crop's current state is always the
`state_after` of its latest effective event and a crash can never leave one without the other.

Leases keep two reviewers apart: `lease_next` hands out crops nobody else holds (no lease, an expired lease,
or the caller's own) and records a lease for each. On SQLite the whole read-then-lease runs under
BEGIN IMMEDIATE; on PostgreSQL the candidate rows are taken with SELECT ... FOR UPDATE SKIP LOCKED, and the
lease upsert itself only overwrites an expired lease or the caller's own, so even a race between snapshots
cannot lease one crop to two reviewers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import math
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
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
from sqlalchemy.orm import aliased

from animexpr.curate.defaults import BULK_ACCEPT_REVIEWER, CSV_IMPORT_REVIEWER, DEFAULT_LEASE_SECONDS
from animexpr.db.locking import lock_for_write
from animexpr.db.models import MAX_ROW_ID, Crop, CropState, Post, Reviewer, ReviewEvent, ReviewLease, utcnow
from animexpr.errors import AnimexprError, shown
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

MAX_ITEMS_PER_REQUEST = 200
MAX_EXCLUDED_IDS = 5000
# Gaps between two decisions longer than this are breaks, not the reviewer's pace.
PACE_BREAK_SECONDS = 120.0
PACE_WINDOW_EVENTS = 200
PACE_MIN_DECISIONS = 3
# A grid page may take this much longer per crop on it before the gap counts as a break.
PACE_BATCH_ITEM_SECONDS = 5.0
# The team's ETA counts the reviewers who decided within this many days: one who stopped long ago is no help.
TEAM_ACTIVE_DAYS = 7
# The names the command line records its own decisions under: the page and `add-reviewer` cannot take them.
RESERVED_REVIEWERS = frozenset({BULK_ACCEPT_REVIEWER, CSV_IMPORT_REVIEWER})
# A whole import is one batch named after the file's content, so a resumed import stays one batch.
IMPORT_BATCH_PREFIX = "import-"
IMPORT_COLUMNS = ("crop_id", "sha256", "state", "decision", "label")
MAX_IMPORT_BYTES = 256 * 1024 * 1024
_CHUNK = 500
_REVIEWER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,63}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# Strict ASCII numbers: int() and float() also take "1_0", Arabic-Indic digits and the like.
_ROW_ID_PATTERN = re.compile(r"[0-9]{1,10}", re.ASCII)
_INTEGER_PATTERN = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
_DECIMAL_PATTERN = re.compile(
    r"[+-]?([0-9]{1,40}(\.[0-9]{0,40})?|\.[0-9]{1,40})([eE][+-]?[0-9]{1,4})?", re.ASCII
)
_INT64 = range(-(2**63), 2**63)
_Number = TypeVar("_Number", int, float)
EXPORT_COLUMNS = (
    "crop_id",
    "sha256",
    "post_id",
    "label",
    "state",
    "detection_score",
    "crop_size",
    "duplicate_cluster",
    "reviewer",
    "decided_at",
    "file",
)


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
        conditions: list[ColumnElement[bool]] = []
        if len(self.states) == 1:
            conditions.append(Crop.state == self.states[0])
        elif set(self.states) != set(CropState):
            conditions.append(Crop.state.in_(self.states))
        if len(self.labels) == 1:
            conditions.append(Crop.label == self.labels[0])
        elif self.labels:
            conditions.append(Crop.label.in_(self.labels))
        if self.min_score is not None:
            conditions.append(Crop.detection_score >= self.min_score)
        if self.max_score is not None:
            conditions.append(Crop.detection_score <= self.max_score)
        if self.min_size is not None:
            conditions.append(Crop.crop_size >= self.min_size)
        if self.max_size is not None:
            conditions.append(Crop.crop_size <= self.max_size)
        if self.duplicate_cluster is not None:
            conditions.append(Crop.duplicate_cluster == self.duplicate_cluster)
        if self.duplicates_only:
            conditions.append(Crop.duplicate_cluster.is_not(None))
        if self.reviewer:
            conditions.append(
                exists().where(ReviewEvent.crop_id == Crop.id, ReviewEvent.reviewer == self.reviewer)
            )
        return conditions

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
        return {"count": self.count, "until": _iso(self.until), "by_reviewer": self.by_reviewer}


@dataclass
class LineError:
    line: int
    message: str


@dataclass
class ImportReport:
    batch_id: str = ""
    lines: int = 0
    applied: int = 0
    unchanged: int = 0
    errors: list[LineError] = field(default_factory=list)


def _as_utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything this project stores is UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    value = _as_utc(moment)
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

    def _transaction(self) -> AbstractContextManager[Connection]:
        """A connection in a transaction that commits when the block ends normally.

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
        with self._transaction() as connection:
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
        with self._transaction() as connection:
            result = connection.execute(
                update(ReviewLease)
                .where(ReviewLease.crop_id.in_(ids), ReviewLease.reviewer == reviewer)
                .values(expires_at=utcnow() + self.lease)
            )
            return int(result.rowcount)

    def release_leases(self, reviewer: str, crop_ids: Iterable[int] | None = None) -> int:
        with self._transaction() as connection:
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
        with self._transaction() as connection:
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
        with self._transaction() as connection:
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
        return _append_event(connection, reviewer, crop, decision, state_after, label_after, batch_id)

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
        return {crop.id: crop for crop in _crops_now(connection, Crop.id.in_(crop_ids))}

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
        with self._transaction() as connection:
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
                    _append_event(
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
        with self._transaction() as connection:
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
                "at": _iso(row.created_at),
            }
        return [by_id[crop_id] for crop_id in crop_ids if crop_id in by_id]

    def history(self, reviewer: str, limit: int = 50) -> list[dict[str, Any]]:
        """The crops of the reviewer's latest decisions that still stand, oldest first."""
        limit = max(1, min(int(limit), MAX_ITEMS_PER_REQUEST))
        with self._transaction() as connection:
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
        with self._transaction() as connection:
            if which == "crop":
                relpath = connection.scalar(select(Crop.file_relpath).where(Crop.id == crop_id))
            else:
                relpath = connection.scalar(
                    select(Post.file_relpath).join(Crop, Crop.post_id == Post.id).where(Crop.id == crop_id)
                )
        if not relpath:
            raise CropNotFound(f"crop {crop_id} has no {which} image")
        return relpath

    # -- progress -------------------------------------------------------------------------------------

    def stats(self, reviewer: str | None = None) -> dict[str, Any]:
        """Counts per class and state, decisions per reviewer (with their pace), and the ETA.

        The ETA is at `reviewer`'s pace when one is named (the page shows its reviewer theirs); without one it
        is at the team's pace: the reviewers who decided in the last TEAM_ACTIVE_DAYS days, reviewing side by
        side (their rates add up). The command line's own names (bulk accept, CSV import) have no pace.
        """
        with self._transaction() as connection:
            counts = connection.execute(
                select(Crop.label, Crop.state, func.count()).group_by(Crop.label, Crop.state)
            )
            per_class: dict[str, dict[str, int]] = {
                name: {state.value: 0 for state in CropState} for name in self.class_names
            }
            for label, state, count in counts:
                per_class.setdefault(label, {s.value: 0 for s in CropState})[state] = count
            rows = connection.execute(
                select(ReviewEvent.reviewer, func.count(), func.max(ReviewEvent.created_at))
                .group_by(ReviewEvent.reviewer)
                .order_by(func.max(ReviewEvent.created_at).desc())
            ).all()
            paces: dict[str, float | None] = {
                name: None if name in RESERVED_REVIEWERS else _pace_seconds(connection, name)
                for name, _, _ in rows
            }
            reviewers = [
                {"reviewer": name, "events": events, "last_at": _iso(last), "pace_seconds": paces[name]}
                for name, events, last in rows
            ]
            if reviewer:
                pace = _pace_seconds(connection, reviewer)
                pace_reviewers = [reviewer] if pace is not None else []
            else:
                active_since = utcnow() - timedelta(days=TEAM_ACTIVE_DAYS)
                recent = {name for name, _, last in rows if (_as_utc(last) or active_since) > active_since}
                team = {name: value for name, value in paces.items() if value is not None and name in recent}
                pace = _team_pace(list(team.values()))
                pace_reviewers = list(team)
        totals = {state.value: sum(c[state.value] for c in per_class.values()) for state in CropState}
        classes = {}
        for name, class_counts in per_class.items():
            classes[name] = _progress(class_counts, pace)
        return {
            "reviewer": reviewer,
            "pace_seconds": pace,
            "pace_reviewers": pace_reviewers,
            "classes": classes,
            "total": _progress(totals, pace),
            "reviewers": reviewers,
        }

    # -- bulk and files -------------------------------------------------------------------------------

    def bulk_accept(
        self, queue_filter: QueueFilter, reviewer: str = BULK_ACCEPT_REVIEWER, dry_run: bool = False
    ) -> int:
        """Accept every pending crop the filter selects, as `reviewer`, in one batch; crops on someone's
        screen (a live lease) are left alone. Returns how many were (or, dry, would be) accepted."""
        check_reviewer(reviewer)
        pending_filter = QueueFilter(**{**asdict(queue_filter), "states": (CropState.PENDING,)})
        batch_id = uuid.uuid4().hex
        accepted = 0
        last_id = 0
        while True:
            with self._transaction() as connection:
                lock_for_write(connection)
                query = (
                    select(*CROP_NOW_COLUMNS)
                    .outerjoin(ReviewLease, ReviewLease.crop_id == Crop.id)
                    .where(*pending_filter.conditions(), _free_for(reviewer, utcnow()), Crop.id > last_id)
                    .order_by(Crop.id)
                    .limit(_CHUNK)
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
                    _append_event(
                        connection, reviewer, crop, Decision.ACCEPT, CropState.ACCEPTED, crop.label, batch_id
                    )
                connection.execute(delete(ReviewLease).where(ReviewLease.crop_id.in_([c.id for c in crops])))

    def leased_by_others(self, queue_filter: QueueFilter, reviewer: str) -> LeasedCrops:
        """The pending crops the filter selects that live leases of other reviewers hold (bulk accept leaves
        them alone): how many, whose, and until when."""
        pending_filter = QueueFilter(**{**asdict(queue_filter), "states": (CropState.PENDING,)})
        with self._transaction() as connection:
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
            until=max(moment for _, _, until in rows if (moment := _as_utc(until)) is not None),
            by_reviewer={name: count for name, count, _ in rows},
        )

    def export_csv(self, path: Path, queue_filter: QueueFilter | None = None) -> int:
        """Write one row per crop (EXPORT_COLUMNS); the file can be read back by `import_csv`."""
        queue_filter = queue_filter or QueueFilter(states=tuple(CropState))
        written = 0
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        with self._transaction() as connection:
            latest = (
                select(ReviewEvent.crop_id, func.max(ReviewEvent.id).label("event_id"))
                .group_by(ReviewEvent.crop_id)
                .subquery()
            )
            query = (
                select(
                    Crop.id,
                    Crop.sha256,
                    Crop.post_id,
                    Crop.label,
                    Crop.state,
                    Crop.detection_score,
                    Crop.crop_size,
                    Crop.duplicate_cluster,
                    ReviewEvent.reviewer,
                    ReviewEvent.created_at.label("decided_at"),
                    Crop.file_relpath,
                )
                .outerjoin(latest, latest.c.crop_id == Crop.id)
                .outerjoin(ReviewEvent, ReviewEvent.id == latest.c.event_id)
                .where(*queue_filter.conditions())
                .order_by(Crop.id)
            )
            for row in connection.execute(query):
                writer.writerow(_export_row(row))
                written += 1
        atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
        return written

    def import_csv(
        self,
        path: Path,
        reviewer: str = CSV_IMPORT_REVIEWER,
        on_commit: Callable[[ImportReport], None] | None = None,
        chunk_lines: int = _CHUNK,
    ) -> ImportReport:
        """Apply the decisions of a CSV (by crop_id or sha256); lines already true change nothing.

        Columns: `crop_id` or `sha256` (both: they must agree), `state` (accepted/rejected/pending) or
        `decision` (accept/reject/relabel), and an optional `label`. Bad lines are reported by number and
        the others are still applied. The lines are committed `chunk_lines` at a time (`on_commit` is told
        after each), all under one batch id made from the file's content (`import_batch_id`): an import
        that was interrupted and run again is still one batch, and `review undo --reviewer` takes all of it
        back. A file that cannot be read as UTF-8 CSV is one ReviewError and changes nothing.
        """
        check_reviewer(reviewer)
        data = _read_import_file(path)
        report = ImportReport(batch_id=import_batch_id(data))
        parsed: list[tuple[int, _ImportLine]] = []
        for line_number, row in _import_rows(path, _import_text(path, data)):
            report.lines += 1
            try:
                if isinstance(row, str):
                    raise ReviewError(row)
                parsed.append((line_number, self._parse_import_line(row)))
            except ReviewError as exc:
                report.errors.append(LineError(line_number, str(exc)))
        for start in range(0, len(parsed), max(1, chunk_lines)):
            with self._transaction() as connection:
                lock_for_write(connection)
                for line_number, line in parsed[start : start + max(1, chunk_lines)]:
                    try:
                        self._apply_import_line(connection, reviewer, line, report.batch_id, report)
                    except ReviewError as exc:
                        report.errors.append(LineError(line_number, str(exc)))
            if on_commit is not None:
                on_commit(report)
        report.errors.sort(key=lambda error: error.line)
        return report

    def _parse_import_line(self, row: dict[str, str]) -> _ImportLine:
        crop_id_text = (row.get("crop_id") or "").strip()
        sha256 = (row.get("sha256") or "").strip().lower()
        if not crop_id_text and not sha256:
            raise ReviewError("no crop_id and no sha256")
        crop_id = None
        if crop_id_text:
            crop_id = parse_row_id(crop_id_text)
            if crop_id is None:
                raise ReviewError(
                    f"crop_id {shown(crop_id_text)} is not a crop id (a whole number from 1 to {MAX_ROW_ID})"
                )
        if sha256 and not _SHA256_PATTERN.match(sha256):
            raise ReviewError(f"sha256 {shown(sha256)} is not 64 hex digits")
        label = (row.get("label") or "").strip() or None
        if label is not None:
            check_label(label, self.class_names)
        state = _import_state((row.get("state") or row.get("decision") or "").strip().lower())
        if state is None:
            raise ReviewError(
                "state must be accepted, rejected or pending (or decision accept/reject/relabel)"
            )
        return _ImportLine(crop_id, sha256 or None, state, label)

    def _apply_import_line(
        self, connection: Connection, reviewer: str, line: _ImportLine, batch_id: str, report: ImportReport
    ) -> None:
        if line.crop_id is not None:
            crops = _crops_now(connection, Crop.id == line.crop_id)
            if not crops:
                raise ReviewError(f"no crop with id {line.crop_id}")
            if line.sha256 and crops[0].sha256 != line.sha256:
                raise ReviewError(
                    f"crop {line.crop_id} has sha256 {crops[0].sha256[:12]}..., not {line.sha256[:12]}..."
                )
        else:
            crops = _crops_now(connection, Crop.sha256 == line.sha256)
            if not crops:
                raise ReviewError(f"no crop with sha256 {line.sha256}")
        for crop in crops:
            label_after = line.label or crop.label
            if (crop.state, crop.label) == (line.state, label_after):
                report.unchanged += 1
                continue
            _append_event(
                connection,
                reviewer,
                crop,
                _import_decision(crop, line.state, label_after),
                line.state,
                label_after,
                batch_id,
            )
            report.applied += 1


@dataclass(frozen=True)
class _ImportLine:
    crop_id: int | None
    sha256: str | None
    state: str
    label: str | None


def _import_state(value: str) -> str | None:
    return {
        "accepted": CropState.ACCEPTED,
        "accept": CropState.ACCEPTED,
        "relabel": CropState.ACCEPTED,
        "rejected": CropState.REJECTED,
        "reject": CropState.REJECTED,
        "pending": CropState.PENDING,
        "reset": CropState.PENDING,
    }.get(value)


def _import_decision(crop: CropNow, state_after: str, label_after: str) -> Decision:
    if state_after == CropState.PENDING:
        return Decision.RESET
    if state_after == CropState.REJECTED:
        return Decision.REJECT
    return Decision.ACCEPT if label_after == crop.label else Decision.RELABEL


def import_batch_id(data: bytes) -> str:
    """An import's batch id: "import-" and the first 25 hex digits of the file's sha256 (32 characters)."""
    return IMPORT_BATCH_PREFIX + hashlib.sha256(data).hexdigest()[:25]


def _read_import_file(path: Path) -> bytes:
    if path.is_dir():
        raise ReviewError(f"{path} is a folder, not a CSV file")
    if not path.exists():
        raise ReviewError(f"{path}: no such file")
    if not path.is_file():
        raise ReviewError(f"{path} is not a regular file")
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise ReviewError(f"{path} is larger than {MAX_IMPORT_BYTES // 2**20} MiB; split it")
        return path.read_bytes()
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _import_text(path: Path, data: bytes) -> str:
    """The file as text: UTF-8 (with or without a byte order mark), else one error for the whole file."""
    if b"\x00" in data:
        raise ReviewError(f"{path} holds NUL bytes (UTF-16?): save it as UTF-8 CSV")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ReviewError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): save it as UTF-8 CSV"
        ) from None


def _import_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line number, the row by lower-case column name) per non-empty line, or a message for a bad one."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise ReviewError(f"{path}:1: {_csv_problem(exc)}") from None
    columns = [name.strip().lower() for name in header]
    if not set(columns) & {"crop_id", "sha256"} or not set(columns) & {"state", "decision"}:
        raise ReviewError(
            f"{path}: the first line must name the columns: crop_id or sha256, and state or decision"
        )
    for name in IMPORT_COLUMNS:
        if columns.count(name) > 1:
            raise ReviewError(f"{path}:1: the column {name!r} is named twice; which one counts is unclear")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, _csv_problem(exc)
            continue
        if any(value.strip() for value in row):
            yield reader.line_num, {name: value for name, value in zip(columns, row, strict=False) if name}


def _csv_problem(exc: csv.Error) -> str:
    if "field limit" in str(exc):
        return f"a field is longer than {csv.field_size_limit()} characters"
    return f"not a CSV line ({exc})"


def _export_row(row: Any) -> list[Any]:
    """One CSV line (EXPORT_COLUMNS) from a row of the export query; empty fields for missing values."""
    values = {**row._mapping, "decided_at": _iso(row.decided_at), "file": row.file_relpath, "crop_id": row.id}
    return ["" if values[name] is None else values[name] for name in EXPORT_COLUMNS]


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


def _crops_now(connection: Connection, condition: ColumnElement[bool]) -> list[CropNow]:
    """Id, state, label and hash of the crops matching `condition`, read fresh and row-locked."""
    query = select(*CROP_NOW_COLUMNS).where(condition).order_by(Crop.id).with_for_update(of=Crop)
    return list(connection.execute(query))


def _append_event(
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


def _pace_seconds(connection: Connection, reviewer: str) -> float | None:
    """Seconds per crop over the reviewer's recent decisions, breaks left out; None until there are a few.

    A grid page is one moment that decided many crops: the time since the moment before is spread over all
    of them (and may be longer before it counts as a break). Undo events are not decisions.
    """
    rows = connection.execute(
        select(ReviewEvent.created_at, ReviewEvent.batch_id)
        .where(ReviewEvent.reviewer == reviewer, ReviewEvent.decision != Decision.UNDO)
        .order_by(ReviewEvent.id.desc())
        .limit(PACE_WINDOW_EVENTS)
    ).all()
    moments: list[tuple[datetime, int]] = []  # newest first: (when, crops decided then)
    previous_batch: str | None = None
    for created_at, batch_id in rows:
        when = _as_utc(created_at)
        assert when is not None
        if batch_id is not None and batch_id == previous_batch:
            moments[-1] = (max(moments[-1][0], when), moments[-1][1] + 1)
        else:
            moments.append((when, 1))
        previous_batch = batch_id
    active_seconds = 0.0
    decided = 0
    for (newer, crops), (older, _) in itertools.pairwise(moments):
        gap = (newer - older).total_seconds()
        if 0 <= gap <= PACE_BREAK_SECONDS + PACE_BATCH_ITEM_SECONDS * (crops - 1):
            active_seconds += gap
            decided += crops
    if decided < PACE_MIN_DECISIONS:
        return None
    return round(active_seconds / decided, 3)


def _team_pace(paces: list[float]) -> float | None:
    """Seconds per crop of reviewers working side by side: their crops per second add up."""
    rates = [1.0 / pace for pace in paces if pace > 0]
    return round(1.0 / sum(rates), 3) if rates else None


def _progress(counts: dict[str, int], pace: float | None) -> dict[str, Any]:
    total = sum(counts.values())
    pending = counts.get(CropState.PENDING, 0)
    return {
        **counts,
        "total": total,
        "done": total - pending,
        "eta_seconds": round(pending * pace) if pace is not None else None,
    }


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
            return [(name, cast(datetime, _as_utc(created_at))) for name, created_at in rows]

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
