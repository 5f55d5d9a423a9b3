"""Review progress: counts per class and state, decisions and pace per reviewer, and the ETA.

A reviewer's pace is read from the timestamps of their recorded decisions (breaks left out); the ETA is the
pending crops at one reviewer's pace, or at the pace of the reviewers active lately working side by side.
The page's progress bar (`/api/stats`) and `animexpr review stats` both show `queue_stats`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, select

from animexpr.curate.review import RESERVED_REVIEWERS, Decision, ReviewQueue, as_utc, iso_utc
from animexpr.db.models import Crop, CropState, ReviewEvent, utcnow

# Gaps between two decisions longer than this are breaks, not the reviewer's pace.
PACE_BREAK_SECONDS = 120.0
PACE_WINDOW_EVENTS = 200
PACE_MIN_DECISIONS = 3
# A grid page may take this much longer per crop on it before the gap counts as a break.
PACE_BATCH_ITEM_SECONDS = 5.0
# The team's ETA counts the reviewers who decided within this many days: one who stopped long ago is no help.
TEAM_ACTIVE_DAYS = 7


def queue_stats(queue: ReviewQueue, reviewer: str | None = None) -> dict[str, Any]:
    """Counts per class and state, decisions per reviewer (with their pace), and the ETA.

    The ETA is at `reviewer`'s pace when one is named (the page shows its reviewer theirs); without one it
    is at the team's pace: the reviewers who decided in the last TEAM_ACTIVE_DAYS days, reviewing side by
    side (their rates add up). The command line's own names (bulk accept, CSV import) have no pace.
    """
    with queue.transaction() as connection:
        per_class = _counts_per_class(connection, queue.class_names)
        rows = connection.execute(
            select(ReviewEvent.reviewer, func.count(), func.max(ReviewEvent.created_at))
            .group_by(ReviewEvent.reviewer)
            .order_by(func.max(ReviewEvent.created_at).desc())
        ).all()
        paces: dict[str, float | None] = {
            name: None if name in RESERVED_REVIEWERS else _pace_seconds(connection, name)
            for name, _, _ in rows
        }
        if reviewer:
            pace = _pace_seconds(connection, reviewer)
            pace_reviewers = [reviewer] if pace is not None else []
        else:
            pace, pace_reviewers = _team_eta_pace(rows, paces)
    totals = {state.value: sum(c[state.value] for c in per_class.values()) for state in CropState}
    return {
        "reviewer": reviewer,
        "pace_seconds": pace,
        "pace_reviewers": pace_reviewers,
        "classes": {name: _progress(class_counts, pace) for name, class_counts in per_class.items()},
        "total": _progress(totals, pace),
        "reviewers": [
            {"reviewer": name, "events": events, "last_at": iso_utc(last), "pace_seconds": paces[name]}
            for name, events, last in rows
        ],
    }


def _counts_per_class(connection: Connection, class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Crops per state of every class (the configured ones first, with zeros; then any other label found)."""
    counts = connection.execute(select(Crop.label, Crop.state, func.count()).group_by(Crop.label, Crop.state))
    per_class: dict[str, dict[str, int]] = {
        name: {state.value: 0 for state in CropState} for name in class_names
    }
    for label, state, count in counts:
        per_class.setdefault(label, {s.value: 0 for s in CropState})[state] = count
    return per_class


def _team_eta_pace(
    rows: Sequence[Row[str, int, datetime]], paces: dict[str, float | None]
) -> tuple[float | None, list[str]]:
    """The team's pace and whose it is: the reviewers with a pace who decided in the last TEAM_ACTIVE_DAYS."""
    active_since = utcnow() - timedelta(days=TEAM_ACTIVE_DAYS)
    recent = {name for name, _, last in rows if (as_utc(last) or active_since) > active_since}
    team = {name: value for name, value in paces.items() if value is not None and name in recent}
    return _team_pace(list(team.values())), list(team)


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
        when = as_utc(created_at)
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
