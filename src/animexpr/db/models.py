"""Typed SQLAlchemy 2.x models for the whole pipeline: harvest -> crop -> review -> expand -> snapshot.

States and reasons are short strings (see the StrEnum classes) so that SQLite and PostgreSQL store them alike
and new reasons need no migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints: Alembic's batch mode on SQLite cannot alter unnamed ones.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Danbooru post ids are accepted up to 64 bits (BIGINT on PostgreSQL; SQLite's INTEGER is 64-bit already and
# stays the rowid alias). Our own row ids are INTEGER: a client's id beyond MAX_ROW_ID is no row of ours.
PostId = BigInteger().with_variant(Integer(), "sqlite")
MAX_POST_ID = 2**63 - 1
INT_COLUMN_MIN, INT_COLUMN_MAX = -(2**31), 2**31 - 1  # an INTEGER column on PostgreSQL
MAX_ROW_ID = INT_COLUMN_MAX


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class PostState(StrEnum):
    FOUND = "found"
    DOWNLOADED = "downloaded"
    SKIPPED = "skipped"
    FAILED = "failed"


class CropState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Post(Base):
    """A Danbooru post seen by a crawl, once, with its outcome (reason set when skipped or failed)."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(PostId, primary_key=True, autoincrement=False)  # Danbooru's post id
    md5: Mapped[str | None] = mapped_column(String(32), index=True)
    file_ext: Mapped[str | None] = mapped_column(String(16))
    file_url: Mapped[str | None] = mapped_column(Text)
    file_size: Mapped[int | None]
    width: Mapped[int | None]
    height: Mapped[int | None]
    tags: Mapped[str] = mapped_column(Text, default="")
    rating: Mapped[str | None] = mapped_column(String(1))
    score: Mapped[int | None]
    class_name: Mapped[str | None] = mapped_column(String(64), index=True)
    query: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default=PostState.FOUND, index=True)
    reason: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[str | None] = mapped_column(Text)
    file_relpath: Mapped[str | None] = mapped_column(Text)
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CrawlCursor(Base):
    """Where the crawl of one query stands.

    A new run continues below `oldest_id` and picks up posts newer than `newest_id`.
    """

    __tablename__ = "crawl_cursors"

    id: Mapped[int] = mapped_column(primary_key=True)
    query: Mapped[str] = mapped_column(String(512), unique=True)
    class_name: Mapped[str] = mapped_column(String(64))
    oldest_id: Mapped[int | None] = mapped_column(PostId)
    newest_id: Mapped[int | None] = mapped_column(PostId)
    exhausted: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CropAttempt(Base):
    """One run of the face detector over one post with one settings key, whatever it found."""

    __tablename__ = "crop_attempts"
    __table_args__ = (UniqueConstraint("post_id", "settings_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(PostId, ForeignKey("posts.id"), index=True)
    settings_key: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))  # cropped, or the reason nothing was cropped
    detail: Mapped[str | None] = mapped_column(Text)
    faces_found: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Crop(Base):
    """A face cut out of a post.

    `box_*` is the detector's box and `crop_*` the square cut, both in the original's pixels.
    """

    __tablename__ = "crops"
    __table_args__ = (
        UniqueConstraint("post_id", "settings_key", "face_index"),
        # The review queue reads "the next few crops in this state (and class), in this order" from these
        # without sorting the whole queue; the trailing id makes the order total.
        Index("ix_crops_review_score", "state", "detection_score", "crop_size", "id"),
        Index("ix_crops_review_label_score", "state", "label", "detection_score", "crop_size", "id"),
        Index("ix_crops_review_size", "state", "crop_size", "id"),
        Index("ix_crops_review_label_size", "state", "label", "crop_size", "id"),
        Index("ix_crops_review_label_id", "state", "label", "id"),
        Index("ix_crops_review_cluster", "state", "duplicate_cluster", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(PostId, ForeignKey("posts.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    file_relpath: Mapped[str] = mapped_column(Text)
    size_px: Mapped[int]
    box_x: Mapped[int]
    box_y: Mapped[int]
    box_w: Mapped[int]
    box_h: Mapped[int]
    crop_x: Mapped[int]
    crop_y: Mapped[int]
    crop_size: Mapped[int]
    detector: Mapped[str] = mapped_column(String(32))
    detector_settings: Mapped[dict[str, Any]]
    settings_key: Mapped[str] = mapped_column(String(64))
    detections_count: Mapped[int]
    face_index: Mapped[int] = mapped_column(default=0)
    faces_policy: Mapped[str] = mapped_column(String(32))
    detection_score: Mapped[float | None]
    # Each detector's own score for this box, e.g. {"lbp": 23.0, "animeface": 0.97} for a face both found
    # (`detection_score` is then the combined detector's ranking score); None where the detector has none.
    detector_scores: Mapped[dict[str, Any] | None]
    label: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default=CropState.PENDING, index=True)
    phash: Mapped[str | None] = mapped_column(String(16), index=True)
    duplicate_cluster: Mapped[int | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ReviewEvent(Base):
    """One review decision (accept, reject, relabel, reset, undo, or crop: a hand crop accepted), appended,
    never changed."""

    __tablename__ = "review_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    crop_id: Mapped[int] = mapped_column(ForeignKey("crops.id"), index=True)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    state_before: Mapped[str] = mapped_column(String(16))
    state_after: Mapped[str] = mapped_column(String(16))
    label_before: Mapped[str] = mapped_column(String(64))
    label_after: Mapped[str] = mapped_column(String(64))
    undoes_event_id: Mapped[int | None] = mapped_column(ForeignKey("review_events.id"), index=True)
    # Decisions made together (one grid page, one bulk accept, one CSV import) share a batch id, and one
    # undo takes back the whole batch.
    batch_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ReviewLease(Base):
    """A crop handed to one reviewer until `expires_at`, so two reviewers never get the same crop."""

    __tablename__ = "review_leases"

    crop_id: Mapped[int] = mapped_column(ForeignKey("crops.id"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Augmentation(Base):
    """An augmented copy of an accepted crop, with everything needed to make it again byte for byte."""

    __tablename__ = "augmentations"
    __table_args__ = (UniqueConstraint("crop_id", "recipe_version", "seed", "variant_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    crop_id: Mapped[int] = mapped_column(ForeignKey("crops.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    file_relpath: Mapped[str] = mapped_column(Text)
    recipe_version: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int]
    variant_index: Mapped[int]
    params: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Expansion(Base):
    """One `animexpr expand` run.

    Its plan (target, balance, seed, recipe) is what a snapshot takes its augmentations from.
    """

    __tablename__ = "expansions"

    id: Mapped[int] = mapped_column(primary_key=True)
    target: Mapped[int]
    balance: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int]
    recipe_version: Mapped[str] = mapped_column(String(32))
    max_distance: Mapped[int]  # the near-duplicate threshold the de-duplicated crop set was made with
    counts: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Snapshot(Base):
    """A frozen training set; its identity is the sha256 of its manifest."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]]
    counts: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SnapshotItem(Base):
    """One file of a snapshot; the store never deletes a file a snapshot references."""

    __tablename__ = "snapshot_items"
    __table_args__ = (Index("ix_snapshot_items_snapshot_split", "snapshot_id", "split"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id"))
    crop_id: Mapped[int] = mapped_column(ForeignKey("crops.id"), index=True)
    augmentation_id: Mapped[int | None] = mapped_column(ForeignKey("augmentations.id"))
    post_id: Mapped[int] = mapped_column(PostId, ForeignKey("posts.id"))
    file_relpath: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    split: Mapped[str] = mapped_column(String(8))


class Reviewer(Base):
    """A reviewer with a token of their own (`review add-reviewer`); only the token's sha256 is kept."""

    __tablename__ = "reviewers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoreIdentity(Base):
    """The one store (home folder) this database belongs to, so that two homes never share one database."""

    __tablename__ = "store_identity"

    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    home: Mapped[str] = mapped_column(Text)  # where the store was when it was bound, for the error message
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
