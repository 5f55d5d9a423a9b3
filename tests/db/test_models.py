"""The models behave alike on SQLite and PostgreSQL: constraints, JSON columns, foreign keys."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from animexpr.db.models import Crop, CropState, Post, PostState, ReviewEvent
from animexpr.db.session import open_db, session_scope
from animexpr.testing.factories import crop_row


def _crop(post_id: int, face_index: int = 0) -> Crop:
    return crop_row(
        post_id, "smile", face_index=face_index, sha256="ab" * 32, file_relpath="crops/ab/abab.png",
        box=(10, 12, 50, 50), crop_size=90, detector="lbp",
        detector_settings={"scale_factor": 1.1, "min_neighbors": 5}, settings_key="k1", faces_policy="single",
    )  # fmt: skip


def test_pipeline_rows_round_trip(any_db_url: str) -> None:
    engine = open_db(any_db_url)
    with session_scope(engine) as session:
        session.add(
            Post(id=42, md5="0" * 32, tags="smile solo", class_name="smile", state=PostState.DOWNLOADED)
        )
        session.flush()
        crop = _crop(42)
        session.add(crop)
        session.flush()
        session.add(
            ReviewEvent(
                crop_id=crop.id, reviewer="ann", decision="accept",
                state_before="pending", state_after="accepted", label_before="smile", label_after="smile",
            )
        )  # fmt: skip
    with session_scope(engine) as session:
        stored = session.scalars(select(Crop)).one()
        assert stored.detector_settings == {"scale_factor": 1.1, "min_neighbors": 5}
        assert stored.state == CropState.PENDING
        assert stored.created_at.tzinfo is not None or engine.dialect.name == "sqlite"
    engine.dispose()


def test_foreign_keys_are_enforced(any_db_url: str) -> None:
    engine = open_db(any_db_url)
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(_crop(post_id=999))  # no such post
    engine.dispose()


def test_one_crop_per_post_settings_and_face(any_db_url: str) -> None:
    engine = open_db(any_db_url)
    with session_scope(engine) as session:
        session.add(Post(id=7, md5="1" * 32))
        session.flush()
        session.add(_crop(7))
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(_crop(7))
    engine.dispose()
