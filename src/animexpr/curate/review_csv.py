"""CSV export and import of the review queue's decisions, and the CSV reading the hand-crop file shares.

`export_csv` writes one line per crop (EXPORT_COLUMNS); `import_csv` applies a file of decisions by crop id or
file hash, the same file once edited included, and running it again changes nothing. Both work on a
`ReviewQueue` (animexpr.curate.review), whose events they append like the page does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, func, select

from animexpr.curate.defaults import CSV_IMPORT_REVIEWER
from animexpr.curate.review import (
    CropNow,
    Decision,
    QueueFilter,
    ReviewError,
    ReviewQueue,
    append_event,
    check_label,
    check_reviewer,
    crops_now,
    iso_utc,
    parse_row_id,
)
from animexpr.db.locking import lock_for_write
from animexpr.db.models import MAX_ROW_ID, Crop, CropState, ReviewEvent
from animexpr.errors import shown
from animexpr.store import atomic_write_bytes

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
IMPORT_COLUMNS = ("crop_id", "sha256", "state", "decision", "label")
# A whole import is one batch named after the file's content, so a resumed import stays one batch.
IMPORT_BATCH_PREFIX = "import-"
MAX_IMPORT_BYTES = 256 * 1024 * 1024
# An import commits this many lines per transaction (an interrupted one keeps what it committed).
IMPORT_CHUNK_LINES = 500
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class LineError:
    """A line of a CSV file that could not be applied, and why."""

    line: int
    message: str


@dataclass
class ImportReport:
    """What an import did: lines read, decisions applied, lines already so, and the bad lines."""

    batch_id: str = ""
    lines: int = 0
    applied: int = 0
    unchanged: int = 0
    errors: list[LineError] = field(default_factory=list)


def export_csv(queue: ReviewQueue, path: Path, queue_filter: QueueFilter | None = None) -> int:
    """Write one row per crop the filter selects (default: all) to `path`, atomically; `import_csv` reads it
    back. Returns how many rows were written."""
    queue_filter = queue_filter or QueueFilter(states=tuple(CropState))
    written = 0
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    with queue.transaction() as connection:
        for row in connection.execute(_export_query(queue_filter)):
            writer.writerow(_export_row(row))
            written += 1
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
    return written


def _export_query(queue_filter: QueueFilter) -> Select[*tuple[Any, ...]]:
    """The crops the filter selects, each with its latest event's reviewer and time, by id."""
    latest = (
        select(ReviewEvent.crop_id, func.max(ReviewEvent.id).label("event_id"))
        .group_by(ReviewEvent.crop_id)
        .subquery()
    )
    return (
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


def _export_row(row: Any) -> list[Any]:
    """One CSV line (EXPORT_COLUMNS) from a row of the export query; empty fields for missing values."""
    values = {
        **row._mapping,
        "decided_at": iso_utc(row.decided_at),
        "file": row.file_relpath,
        "crop_id": row.id,
    }
    return ["" if values[name] is None else values[name] for name in EXPORT_COLUMNS]


def import_csv(
    queue: ReviewQueue,
    path: Path,
    reviewer: str = CSV_IMPORT_REVIEWER,
    on_commit: Callable[[ImportReport], None] | None = None,
    chunk_lines: int = IMPORT_CHUNK_LINES,
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
    data = read_csv_file(path)
    report = ImportReport(batch_id=import_batch_id(data))
    parsed = _parse_import_lines(path, csv_text(path, data), queue.class_names, report)
    chunk_lines = max(1, chunk_lines)
    for start in range(0, len(parsed), chunk_lines):
        with queue.transaction() as connection:
            lock_for_write(connection)
            for line_number, line in parsed[start : start + chunk_lines]:
                try:
                    _apply_import_line(connection, reviewer, line, report.batch_id, report)
                except ReviewError as exc:
                    report.errors.append(LineError(line_number, str(exc)))
        if on_commit is not None:
            on_commit(report)
    report.errors.sort(key=lambda error: error.line)
    return report


def _parse_import_lines(
    path: Path, text: str, class_names: Sequence[str], report: ImportReport
) -> list[tuple[int, _ImportLine]]:
    """The file's good lines by line number; the lines are counted and the bad ones recorded in `report`."""
    parsed: list[tuple[int, _ImportLine]] = []
    for line_number, row in _import_rows(path, text):
        report.lines += 1
        try:
            if isinstance(row, str):
                raise ReviewError(row)
            parsed.append((line_number, _parse_import_line(row, class_names)))
        except ReviewError as exc:
            report.errors.append(LineError(line_number, str(exc)))
    return parsed


def _parse_import_line(row: dict[str, str], class_names: Sequence[str]) -> _ImportLine:
    """One line's crop (id and/or hash), state and label, checked; a ReviewError says what is wrong."""
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
        check_label(label, class_names)
    state = _import_state((row.get("state") or row.get("decision") or "").strip().lower())
    if state is None:
        raise ReviewError("state must be accepted, rejected or pending (or decision accept/reject/relabel)")
    return _ImportLine(crop_id, sha256 or None, state, label)


def _apply_import_line(
    connection: Connection, reviewer: str, line: _ImportLine, batch_id: str, report: ImportReport
) -> None:
    """Bring the line's crops (one by id, all with the hash) to its state and label, counted in `report`."""
    if line.crop_id is not None:
        crops = crops_now(connection, Crop.id == line.crop_id)
        if not crops:
            raise ReviewError(f"no crop with id {line.crop_id}")
        if line.sha256 and crops[0].sha256 != line.sha256:
            raise ReviewError(
                f"crop {line.crop_id} has sha256 {crops[0].sha256[:12]}..., not {line.sha256[:12]}..."
            )
    else:
        crops = crops_now(connection, Crop.sha256 == line.sha256)
        if not crops:
            raise ReviewError(f"no crop with sha256 {line.sha256}")
    for crop in crops:
        label_after = line.label or crop.label
        if (crop.state, crop.label) == (line.state, label_after):
            report.unchanged += 1
            continue
        append_event(
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


def read_csv_file(path: Path) -> bytes:
    """The bytes of a CSV file given on the command line; one ReviewError that says why it cannot be read."""
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


def csv_text(path: Path, data: bytes) -> str:
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
        raise ReviewError(f"{path}:1: {csv_problem(exc)}") from None
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
            yield reader.line_num, csv_problem(exc)
            continue
        if any(value.strip() for value in row):
            yield reader.line_num, {name: value for name, value in zip(columns, row, strict=False) if name}


def csv_problem(exc: csv.Error) -> str:
    """What is wrong with a CSV line, in words (csv.Error's own message is terse)."""
    if "field limit" in str(exc):
        return f"a field is longer than {csv.field_size_limit()} characters"
    return f"not a CSV line ({exc})"
