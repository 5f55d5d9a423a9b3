"""What the store holds: the counts behind `animexpr status`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.db.models import Augmentation, Crop, CropState, Post, PostState, Snapshot
from animexpr.db.session import current_revision


def collect_status(engine: Engine, settings: Settings) -> dict[str, Any]:
    """One JSON-ready object; the README documents its keys."""
    with Session(engine) as session:
        per_class = {name: _class_counts(session, name) for name in settings.class_names}
        return {
            "home": str(settings.home),
            "database": _redacted(engine),
            "schema_revision": current_revision(engine),
            "classes": {spec.name: list(spec.tags) for spec in settings.classes},
            "posts": _post_counts(session, None),
            "crops": _crop_counts(session, None),
            "augmented": _augmented_count(session, None),
            "snapshots": list(session.scalars(select(Snapshot.name).order_by(Snapshot.created_at))),
            "per_class": per_class,
        }


def _class_counts(session: Session, class_name: str) -> dict[str, Any]:
    return {
        "posts": _post_counts(session, class_name),
        "crops": _crop_counts(session, class_name),
        "augmented": _augmented_count(session, class_name),
    }


def _post_counts(session: Session, class_name: str | None) -> dict[str, Any]:
    query = select(Post.state, Post.reason, func.count()).group_by(Post.state, Post.reason)
    if class_name is not None:
        query = query.where(Post.class_name == class_name)
    by_state = {state.value: 0 for state in PostState}
    by_reason: dict[str, int] = {}
    for state, reason, count in session.execute(query):
        by_state[state] = by_state.get(state, 0) + count
        if reason:
            by_reason[reason] = by_reason.get(reason, 0) + count
    return {"total": sum(by_state.values()), **by_state, "reasons": dict(sorted(by_reason.items()))}


def _crop_counts(session: Session, label: str | None) -> dict[str, int]:
    query = select(Crop.state, func.count()).group_by(Crop.state)
    if label is not None:
        query = query.where(Crop.label == label)
    counts = {state.value: 0 for state in CropState}
    counts.update(dict(session.execute(query).all()))  # rows are (state, count) pairs
    return counts


def _augmented_count(session: Session, label: str | None) -> int:
    query = select(func.count()).select_from(Augmentation)
    if label is not None:
        query = query.join(Crop, Augmentation.crop_id == Crop.id).where(Crop.label == label)
    return session.scalar(query) or 0


def _redacted(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
