"""The review queue on a real database: leases, events, undo, bulk accept, stats, CSV round trips."""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from review_testdata import SeededCrops, review_events, seed_crops, stored_crop
from sqlalchemy import Engine, select, update

from animexpr.config import Settings
from animexpr.curate.review import (
    CropNotFound,
    Decision,
    LeaseConflict,
    LeasedCrops,
    Order,
    QueueFilter,
    ReviewError,
    ReviewQueue,
)
from animexpr.curate.review_csv import export_csv, import_csv
from animexpr.curate.review_stats import queue_stats
from animexpr.db.models import Crop, CropState, ReviewEvent, ReviewLease, utcnow
from animexpr.db.session import open_db, session_scope
from animexpr.store import FileStore


@pytest.fixture
def any_queue(any_db_url: str, home: Path, settings: Settings) -> tuple[ReviewQueue, SeededCrops]:
    """A seeded queue on SQLite and, where a server is there, on PostgreSQL."""
    engine = open_db(any_db_url)
    store = FileStore(home)
    store.create_areas()
    return ReviewQueue(engine, settings.class_names), seed_crops(engine, store, settings.class_names, 6)


def _worst_first_key(seeded: SeededCrops, crop_id: int, crop_size: int) -> tuple[float, int, int]:
    score = seeded.scores[crop_id]
    return (-1.0 if score is None else score, crop_size, crop_id)


def test_next_items_come_worst_first_and_are_leased(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    items = queue.lease_next("alice", count=len(seeded.ids))
    assert len(items) == len(seeded.ids)
    keys = [_worst_first_key(seeded, item["id"], item["crop_size"]) for item in items]
    assert keys == sorted(keys)
    assert items[0]["score"] is None  # unscored crops are the likeliest bad ones
    with session_scope(queue.engine) as session:
        leases = dict(session.execute(select(ReviewLease.crop_id, ReviewLease.reviewer)).all())
    assert leases == dict.fromkeys(seeded.ids, "alice")


def test_two_reviewers_never_get_the_same_crop(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    alice = [item["id"] for item in queue.lease_next("alice", count=5)]
    bob = [item["id"] for item in queue.lease_next("bob", count=100)]
    assert not set(alice) & set(bob)
    assert len(alice) + len(bob) == len(seeded.ids)
    # Alice's own leases come back to her (a reload resumes where she was) ...
    assert [item["id"] for item in queue.lease_next("alice", count=5)] == alice
    # ... and nobody else gets them until they expire.
    assert queue.lease_next("carol", count=100) == []
    with session_scope(queue.engine) as session:
        session.execute(update(ReviewLease).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert len(queue.lease_next("carol", count=100)) == len(seeded.ids)


def test_concurrent_leases_hand_out_each_crop_once(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def take(name: str) -> None:
        barrier.wait()
        mine: list[int] = []
        while batch := queue.lease_next(name, count=2, exclude=mine):
            mine += [item["id"] for item in batch]
        got[name] = mine

    threads = [threading.Thread(target=take, args=(f"r{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    handed_out = [crop_id for ids in got.values() for crop_id in ids]
    assert sorted(handed_out) == sorted(seeded.ids)


def test_decisions_append_events_and_update_the_crop(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    first, second, third = seeded.ids[:3]
    label = seeded.labels[first]
    other = next(name for name in queue.class_names if name != seeded.labels[third])
    queue.lease_next("alice", count=3)
    accepted = queue.decide("alice", first, "accept")
    rejected = queue.decide("alice", second, "reject")
    relabelled = queue.decide("alice", third, "relabel", other)
    assert (accepted.decision, accepted.state_after, accepted.label_after) == ("accept", "accepted", label)
    assert (rejected.state_before, rejected.state_after) == ("pending", "rejected")
    assert (relabelled.decision, relabelled.label_before, relabelled.label_after) == (
        "relabel",
        seeded.labels[third],
        other,
    )
    assert stored_crop(queue.engine, third).label == other
    assert stored_crop(queue.engine, third).state == CropState.ACCEPTED
    events = review_events(queue.engine)
    assert [(e.crop_id, e.reviewer, e.decision) for e in events] == [
        (first, "alice", "accept"),
        (second, "alice", "reject"),
        (third, "alice", "relabel"),
    ]
    # Deciding frees the lease; deciding the same again records nothing.
    with session_scope(queue.engine) as session:
        assert session.get(ReviewLease, first) is None
    assert not queue.decide("alice", first, "accept").changed
    assert len(review_events(queue.engine)) == 3


def test_bad_decisions_are_refused(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    crop_id = seeded.ids[0]
    with pytest.raises(ReviewError, match="unknown class"):
        queue.decide("alice", crop_id, "relabel", "bored")
    with pytest.raises(ReviewError, match="use accept, reject or relabel"):
        queue.decide("alice", crop_id, "maybe")
    with pytest.raises(CropNotFound):
        queue.decide("alice", 999_999, "accept")
    bobs = queue.lease_next("bob", count=1)[0]["id"]
    with pytest.raises(LeaseConflict, match="bob"):
        queue.decide("alice", bobs, "accept")
    assert review_events(queue.engine) == []


def test_undo_walks_back_through_every_decision(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    a, b = seeded.ids[:2]
    queue.decide("alice", a, "accept")
    queue.decide("alice", b, "reject")
    queue.decide("alice", a, "reject")  # changed her mind after going back
    assert [r.crop_id for r in queue.undo_last("alice")] == [a]
    assert stored_crop(queue.engine, a).state == CropState.ACCEPTED
    assert [r.crop_id for r in queue.undo_last("alice")] == [b]
    assert stored_crop(queue.engine, b).state == CropState.PENDING
    undone = queue.undo_last("alice")
    assert [(r.crop_id, r.decision, r.state_after) for r in undone] == [(a, "undo", "pending")]
    assert queue.undo_last("alice") == []
    assert queue.undo_last("nobody") == []
    events = review_events(queue.engine)
    assert [e.decision for e in events] == ["accept", "reject", "reject", "undo", "undo", "undo"]
    assert [e.undoes_event_id for e in events[3:]] == [events[2].id, events[1].id, events[0].id]
    # The undone crop is leased back to alice so her page can show it again.
    with session_scope(queue.engine) as session:
        lease = session.get(ReviewLease, a)
        assert lease is not None
        assert lease.reviewer == "alice"


def test_undo_skips_decisions_someone_else_has_overridden(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    a, b = seeded.ids[:2]
    queue.decide("alice", a, "accept")
    queue.decide("alice", b, "accept")
    queue.decide("bob", b, "reject")
    assert [r.crop_id for r in queue.undo_last("alice")] == [a]
    assert stored_crop(queue.engine, b).state == CropState.REJECTED  # bob's decision stands


def test_grid_page_is_one_batch_and_one_undo(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, _ = any_queue
    page = [item["id"] for item in queue.lease_next("alice", count=8)]
    results, skipped = queue.decide_page("alice", page[2:], page[:2])
    assert skipped == {}
    assert {r.crop_id: r.state_after for r in results} == {
        **dict.fromkeys(page[:2], "rejected"),
        **dict.fromkeys(page[2:], "accepted"),
    }
    batch_ids = {e.batch_id for e in review_events(queue.engine)}
    assert len(batch_ids) == 1
    assert None not in batch_ids
    undone = queue.undo_last("alice")
    assert sorted(r.crop_id for r in undone) == sorted(page)
    assert all(stored_crop(queue.engine, crop_id).state == CropState.PENDING for crop_id in page)


def test_grid_page_leaves_out_crops_on_another_screen(any_queue: tuple[ReviewQueue, SeededCrops]) -> None:
    queue, seeded = any_queue
    bobs = queue.lease_next("bob", count=1)[0]["id"]
    free = [crop_id for crop_id in seeded.ids if crop_id != bobs][:3]
    results, skipped = queue.decide_page("alice", [*free, bobs], [])
    assert skipped == {bobs: "leased to bob"}
    assert sorted(r.crop_id for r in results) == sorted(free)
    with pytest.raises(ReviewError, match="both"):
        queue.decide_page("alice", free[:1], free[:1])


@pytest.mark.parametrize(
    ("filter_values", "check"),
    [
        ({"label": "sad"}, lambda c, bob: c.label == "sad"),
        ({"min_score": "0.5"}, lambda c, bob: c.detection_score is not None and c.detection_score >= 0.5),
        (
            {"max_score": 0.3, "min_size": 200},
            lambda c, bob: c.detection_score is not None and c.detection_score <= 0.3 and c.crop_size >= 200,
        ),
        ({"cluster": 7}, lambda c, bob: c.duplicate_cluster == 7),
        ({"duplicates_only": True}, lambda c, bob: c.duplicate_cluster is not None),
        ({"state": "accepted"}, lambda c, bob: c.state == "accepted"),
        ({"state": "any", "reviewer": "bob"}, lambda c, bob: c.id in bob),
    ],
)
def test_filters_select_exactly_the_matching_crops(
    queue: ReviewQueue,
    seeded: SeededCrops,
    engine: Engine,
    filter_values: dict[str, object],
    check: Callable[[Crop, set[int]], bool],
) -> None:
    with session_scope(engine) as session:
        session.execute(update(Crop).where(Crop.id.in_(seeded.ids[:4])).values(duplicate_cluster=7))
        session.execute(update(Crop).where(Crop.id.in_(seeded.ids[4:6])).values(duplicate_cluster=9))
    bob_decided = set(seeded.ids[5:8])
    for crop_id in bob_decided:
        queue.decide("bob", crop_id, "accept")
    queue_filter = QueueFilter.from_mapping(filter_values, queue.class_names)
    got = {item["id"] for item in queue.lease_next("alice", queue_filter, count=200)}
    with session_scope(engine) as session:
        crops = list(session.scalars(select(Crop)))
    expected = {
        c.id for c in crops if check(c, bob_decided) and (c.state == "pending" or "state" in filter_values)
    }
    assert got == expected
    assert got  # every case selects something, so the comparison means something


def test_filter_values_are_checked(settings: Settings) -> None:
    with pytest.raises(ReviewError, match="unknown class"):
        QueueFilter.from_mapping({"label": "bored"}, settings.class_names)
    with pytest.raises(ReviewError, match="min_score: expected a number"):
        QueueFilter.from_mapping({"min_score": "high"}, settings.class_names)
    with pytest.raises(ReviewError, match="unknown filter"):
        QueueFilter.from_mapping({"path": "/etc"}, settings.class_names)
    with pytest.raises(ReviewError, match="state"):
        QueueFilter.from_mapping({"state": "deleted"}, settings.class_names)


def test_every_order_has_its_own_sequence(queue: ReviewQueue, seeded: SeededCrops, engine: Engine) -> None:
    with session_scope(engine) as session:
        session.execute(update(Crop).where(Crop.id.in_(seeded.ids[::3])).values(duplicate_cluster=3))
    sequences = {}
    for order in Order:
        queue.release_leases("alice")
        sequences[order] = [item["id"] for item in queue.lease_next("alice", order=order, count=200)]
    assert sequences[Order.OLDEST_FIRST] == sorted(seeded.ids)
    assert sequences[Order.NEWEST_FIRST] == sorted(seeded.ids, reverse=True)
    assert sequences[Order.BEST_FIRST][0] == max(
        (c for c in seeded.ids if seeded.scores[c] is not None), key=lambda c: seeded.scores[c] or 0
    )
    assert sorted(sequences[Order.CLUSTER]) == sorted(seeded.ids[::3])
    sizes = [item["crop_size"] for item in queue.items(sequences[Order.SMALLEST_FIRST])]
    assert sizes == sorted(sizes)


def _plan(engine: Engine, statement: object) -> str:
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("order", list(Order))
@pytest.mark.parametrize("label", [None, "smile"])
def test_next_item_query_reads_an_index_in_order(queue: ReviewQueue, order: Order, label: str | None) -> None:
    """No sort of the whole queue for any order, with or without a class filter (SQLite's plan)."""
    queue_filter = QueueFilter(labels=(label,) if label else ())
    plan = _plan(queue.engine, queue.next_query("alice", queue_filter, order, 10, exclude=[1, 2, 3]))
    assert "INDEX" in plan, plan
    if not (label and order is Order.CLUSTER):  # a class inside one duplicate cluster is a handful of rows
        assert "TEMP B-TREE" not in plan, plan


def test_bulk_accept_by_class_and_score(queue: ReviewQueue, seeded: SeededCrops, engine: Engine) -> None:
    leased_by_bob = queue.lease_next("bob", QueueFilter(labels=("smile",)), Order.BEST_FIRST, count=1)[0][
        "id"
    ]
    wanted = {
        c
        for c in seeded.ids
        if seeded.labels[c] == "smile" and (seeded.scores[c] or 0) >= 0.4 and c != leased_by_bob
    }
    queue_filter = QueueFilter(labels=("smile",), min_score=0.4)
    assert queue.bulk_accept(queue_filter, dry_run=True) == len(wanted)
    assert review_events(engine) == []
    assert queue.bulk_accept(queue_filter) == len(wanted)
    events = review_events(engine)
    assert {e.crop_id for e in events} == wanted
    assert {e.reviewer for e in events} == {"bulk-accept"}
    assert stored_crop(engine, leased_by_bob).state == CropState.PENDING
    assert queue.bulk_accept(queue_filter) == 0
    assert len(queue.undo_last("bulk-accept")) == len(wanted)
    assert all(stored_crop(engine, c).state == CropState.PENDING for c in wanted)


def test_stats_count_per_class_and_estimate_from_pace(
    queue: ReviewQueue, seeded: SeededCrops, engine: Engine
) -> None:
    for crop_id in seeded.ids[:4]:
        queue.decide("alice", crop_id, "accept")
    queue.decide("alice", seeded.ids[4], "reject")
    # Space alice's decisions 2 s apart, with one long break that must not count as pace.
    with session_scope(engine) as session:
        events = list(session.scalars(select(ReviewEvent).order_by(ReviewEvent.id)))
        start = utcnow() - timedelta(hours=1)
        for index, event in enumerate(events):
            event.created_at = start + timedelta(seconds=2 * index + (600 if index >= 3 else 0))
    report = queue_stats(queue, "alice")
    assert report["pace_seconds"] == 2.0
    first_label = seeded.labels[seeded.ids[0]]
    counts = report["classes"][first_label]
    assert counts["accepted"] == 4
    assert counts["rejected"] == 1
    assert counts["total"] == 6
    assert counts["eta_seconds"] == counts["pending"] * 2
    assert report["total"]["pending"] == len(seeded.ids) - 5
    assert report["reviewers"][0]["reviewer"] == "alice"
    assert report["reviewers"][0]["events"] == 5
    assert queue_stats(queue, "bob")["pace_seconds"] is None


def test_pace_spreads_a_grid_page_over_its_crops(
    queue: ReviewQueue, seeded: SeededCrops, engine: Engine
) -> None:
    first_page, second_page = seeded.ids[:8], seeded.ids[8:24]
    queue.decide_page("carol", first_page, [])
    queue.decide_page("carol", second_page[2:], second_page[:2])
    queue.undo_last("carol")
    queue.decide_page("carol", second_page, [])
    with session_scope(engine) as session:
        events = list(session.scalars(select(ReviewEvent).order_by(ReviewEvent.id)))
        start = utcnow() - timedelta(hours=1)
        batches = list(dict.fromkeys(event.batch_id for event in events))
        # page 1 at 0 s, page 2 at 40 s, its undo at 45 s, page 2 again at 72 s
        when = dict(zip(batches, (0, 40, 45, 72), strict=True))
        for event in events:
            event.created_at = start + timedelta(seconds=when[event.batch_id])
    # Page 2 took 40 s for 16 crops, and 32 s for them again after the undo (which is no decision).
    assert queue_stats(queue, "carol")["pace_seconds"] == round(72 / 32, 3)


def test_history_lists_the_reviewers_standing_decisions(queue: ReviewQueue, seeded: SeededCrops) -> None:
    a, b, c = seeded.ids[:3]
    queue.decide("alice", a, "accept")
    queue.decide("alice", b, "reject")
    queue.decide("alice", c, "accept")
    queue.undo_last("alice")
    items = queue.history("alice")
    assert [item["id"] for item in items] == [a, b]
    assert items[1]["state"] == "rejected"
    assert items[1]["last_event"]["reviewer"] == "alice"


def test_export_then_import_round_trip(
    queue: ReviewQueue, seeded: SeededCrops, engine: Engine, tmp_path: Path
) -> None:
    queue.decide("alice", seeded.ids[0], "reject")
    exported = tmp_path / "review.csv"
    assert export_csv(queue, exported) == len(seeded.ids)
    rows = list(csv.DictReader(exported.open()))
    assert rows[0]["state"] == "rejected"
    assert rows[0]["reviewer"] == "alice"
    assert rows[1]["state"] == "pending"
    # Someone edits the file: accept the second crop, relabel the third.
    rows[1]["state"] = "accepted"
    rows[2]["state"] = "accepted"
    rows[2]["label"] = next(n for n in queue.class_names if n != rows[2]["label"])
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = import_csv(queue, edited)
    assert (report.lines, report.applied, report.unchanged, report.errors) == (
        len(rows),
        2,
        len(rows) - 2,
        [],
    )
    assert stored_crop(engine, int(rows[2]["crop_id"])).label == rows[2]["label"]
    assert [e.decision for e in review_events(engine)][-2:] == [Decision.ACCEPT, Decision.RELABEL]
    again = import_csv(queue, edited)
    assert (again.applied, again.unchanged) == (0, len(rows))


def test_import_reports_bad_lines_and_applies_the_rest(
    queue: ReviewQueue, seeded: SeededCrops, engine: Engine, tmp_path: Path
) -> None:
    crop = stored_crop(engine, seeded.ids[3])
    lines = [
        "crop_id,sha256,state,label",
        f"{seeded.ids[0]},,rejected,",
        "999999,,accepted,",
        f"{seeded.ids[1]},,maybe,",
        f"{seeded.ids[2]},,accepted,bored",
        f"{seeded.ids[3]},{'0' * 64},accepted,",
        f",{crop.sha256},decision-typo,",
        f",{crop.sha256},accept,",
        "abc,,accepted,",
    ]
    path = tmp_path / "decisions.csv"
    path.write_text("\n".join(lines) + "\n")
    report = import_csv(queue, path, reviewer="lab-sheet")
    assert report.applied == 2
    assert [(error.line, error.message.split(" ")[0]) for error in report.errors] == [
        (3, "no"),
        (4, "state"),
        (5, "unknown"),
        (6, "crop"),
        (7, "state"),
        (9, "crop_id"),
    ]
    assert stored_crop(engine, seeded.ids[0]).state == CropState.REJECTED
    assert stored_crop(engine, seeded.ids[3]).state == CropState.ACCEPTED
    assert {e.reviewer for e in review_events(engine)} == {"lab-sheet"}


def test_import_needs_the_columns(queue: ReviewQueue, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,verdict\n1,yes\n")
    with pytest.raises(ReviewError, match="crop_id or sha256"):
        import_csv(queue, path)


def test_leased_by_others_counts_what_bulk_accept_leaves_alone(
    queue: ReviewQueue, seeded: SeededCrops
) -> None:
    smile = QueueFilter(labels=("smile",))
    held = [item["id"] for item in queue.lease_next("bob", smile, count=4)]  # a page bob then closed
    assert queue.leased_by_others(smile, "bulk-accept").count == 4
    assert queue.bulk_accept(smile, dry_run=True) == 2  # 6 smiles, 4 held
    leased = queue.leased_by_others(smile, "bulk-accept")
    assert leased.by_reviewer == {"bob": 4}
    assert leased.until is not None
    assert timedelta(minutes=14) < leased.until - utcnow() <= timedelta(minutes=15)
    assert queue.leased_by_others(smile, "bob").count == 0  # bob's own leases do not stop bob
    assert queue.leased_by_others(QueueFilter(labels=("sad",)), "bulk-accept").count == 0
    queue.decide("bob", held[0], "accept")  # decided: no longer pending, whatever its lease
    assert queue.leased_by_others(smile, "bulk-accept").count == 3
    queue.release_leases("bob")
    assert queue.leased_by_others(smile, "bulk-accept") == LeasedCrops()


def _space_decisions(engine: Engine, reviewer: str, seconds_apart: float, start: datetime) -> None:
    with session_scope(engine) as session:
        rows = session.scalars(
            select(ReviewEvent).where(ReviewEvent.reviewer == reviewer).order_by(ReviewEvent.id)
        )
        for index, event in enumerate(rows):
            event.created_at = start + timedelta(seconds=seconds_apart * index)


def test_stats_without_a_reviewer_estimate_from_the_reviewers_who_worked(
    queue: ReviewQueue, seeded: SeededCrops, engine: Engine
) -> None:
    for crop_id in seeded.ids[:4]:
        queue.decide("alice", crop_id, "accept")
    for crop_id in seeded.ids[4:8]:
        queue.decide("bob", crop_id, "reject")
    for crop_id in seeded.ids[8:12]:
        queue.decide("carol", crop_id, "accept")
    queue.bulk_accept(QueueFilter(labels=("surprised",)))  # the command line's own name has no pace
    recent = utcnow() - timedelta(hours=1)
    _space_decisions(engine, "alice", 2.0, recent)
    _space_decisions(engine, "bob", 6.0, recent)
    _space_decisions(engine, "carol", 1.0, utcnow() - timedelta(days=30))  # stopped long ago
    report = queue_stats(queue)
    assert report["reviewer"] is None
    assert sorted(report["pace_reviewers"]) == ["alice", "bob"]
    assert report["pace_seconds"] == 1.5  # side by side: 1/2 + 1/6 crops per second
    assert report["total"]["eta_seconds"] == round(report["total"]["pending"] * 1.5)
    paces = {row["reviewer"]: row["pace_seconds"] for row in report["reviewers"]}
    assert paces == {"alice": 2.0, "bob": 6.0, "carol": 1.0, "bulk-accept": None}
    # A named reviewer still gets their own pace (the page shows its reviewer theirs).
    assert queue_stats(queue, "bob")["pace_seconds"] == 6.0
    assert queue_stats(queue, "dave")["pace_seconds"] is None
