"""Accepted crops for the dedup, expand and snapshot tests, written straight into a store and database.

Real faces come from ANIMEXPR_ASSETS/faces when it is set (four character folders stand in for four classes;
a file name starts with its Danbooru post's md5, so faces of one post, and posts shared by two characters,
are real). Without the assets, smooth random pictures stand in: far apart in perceptual hash, like different
drawings.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import Engine, select

from animexpr.config import Settings, load_settings
from animexpr.curate.dedup import hamming, hash_png, mirrored_hash
from animexpr.db.models import Crop, CropState, Post
from animexpr.db.session import session_scope
from animexpr.store import FileStore
from animexpr.testing import factories

CLASSES = ("calli", "gura", "ina", "kiara")
CROP_SIDE = 128  # small crops keep the tests fast; the code does not care about the size


@dataclass(frozen=True)
class Face:
    md5: str  # of the source post
    label: str
    png: bytes


def settings_for(home: Path) -> Settings:
    return load_settings(home=home, classes=",".join(CLASSES), environ={})


def encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _assets_faces_dir() -> Path | None:
    value = os.environ.get("ANIMEXPR_ASSETS")
    if value and (Path(value) / "faces").is_dir():
        return Path(value) / "faces"
    return None


def real_faces(per_class: int) -> list[Face] | None:
    """`per_class` faces of each character, posts shared between characters first; None without assets."""
    root = _assets_faces_dir()
    if root is None:
        return None
    files = {label: sorted((root / label).glob("*.jpg")) for label in CLASSES}
    md5_labels: dict[str, set[str]] = defaultdict(set)
    for label, paths in files.items():
        for path in paths:
            md5_labels[path.name[:32]].add(label)
    faces = []
    for label, paths in files.items():
        shared_first = sorted(paths, key=lambda p: (len(md5_labels[p.name[:32]]) == 1, p.name))
        for path in shared_first[:per_class]:
            image = cv2.resize(
                decode(path.read_bytes()), (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_AREA
            )
            faces.append(Face(path.name[:32], label, encode(image)))
    return faces


def generated_image(key: str) -> np.ndarray:
    """A smooth random colour picture, the same for the same key."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return cv2.resize(coarse, (CROP_SIDE, CROP_SIDE), interpolation=cv2.INTER_CUBIC)


def generated_faces(per_class: int) -> list[Face]:
    faces = []
    for label in CLASSES:
        for index in range(per_class):
            md5 = hashlib.md5(f"{label}-{index}".encode()).hexdigest()
            faces.append(Face(md5, label, encode(generated_image(f"{label}-{index}"))))
    return faces


def faces(per_class: int) -> list[Face]:
    """Faces that are all different drawings: the assets hold a few variant pairs (the same art with another
    expression or colour), which the tests add on purpose where they want them."""
    candidates = real_faces(per_class + 4) or generated_faces(per_class + 4)
    kept: list[Face] = []
    hashes: list[int] = []
    counts: dict[str, int] = defaultdict(int)
    for face in candidates:
        phash = hash_png(face.png)
        mirror = mirrored_hash(phash)
        if counts[face.label] >= per_class or any(
            min(hamming(phash, h), hamming(mirror, h)) <= 12 for h in hashes
        ):
            continue
        kept.append(face)
        hashes.append(phash)
        counts[face.label] += 1
    assert all(counts[label] == per_class for label in CLASSES)
    return kept


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def add_crops(
    engine: Engine,
    store: FileStore,
    items: list[Face],
    state: str = CropState.ACCEPTED,
    first_post_id: int | None = None,
    crop_size: int = 200,
) -> list[int]:
    """One post per distinct md5 (reused if it exists), one crop per face; returns the crop ids in order."""
    crop_ids = []
    with session_scope(engine) as session:
        post_of = {md5: post_id for post_id, md5 in session.execute(select(Post.id, Post.md5))}
        next_id = first_post_id or (max(post_of.values(), default=1000) + 1)
        faces_of_post: dict[int, int] = defaultdict(int)
        for post_id, count in session.execute(select(Crop.post_id, Crop.face_index)):
            faces_of_post[post_id] = max(faces_of_post[post_id], count + 1)
        for face in items:
            if face.md5 not in post_of:
                post_of[face.md5] = next_id
                session.add(_post(next_id, face))
                session.flush()  # the models declare no relationship, so the post must be in before its crops
                next_id += 1
            post_id = post_of[face.md5]
            stored = store.put_bytes("crops", face.png, "png")
            crop = crop_row(
                post_id, faces_of_post[post_id], stored.sha256, stored.relpath, face.label, state, crop_size
            )
            faces_of_post[post_id] += 1
            session.add(crop)
            session.flush()
            crop_ids.append(crop.id)
    return crop_ids


def add_post(engine: Engine, post_id: int, md5: str, label: str) -> None:
    """A post on its own, e.g. a second upload with the md5 of an existing one."""
    with session_scope(engine) as session:
        session.add(_post(post_id, Face(md5, label, b"")))


def _post(post_id: int, face: Face) -> Post:
    return factories.post_row(
        post_id,
        face.label,
        md5=face.md5,
        file_ext="png",
        file_relpath=f"originals/{face.md5[:2]}/{face.md5}.png",
    )


def crop_row(
    post_id: int, face_index: int, sha256: str, relpath: str, label: str, state: str, crop_size: int
) -> Crop:
    return factories.crop_row(
        post_id,
        label,
        face_index=face_index,
        state=state,
        sha256=sha256,
        file_relpath=relpath,
        size_px=CROP_SIDE,
        crop_x=100 * face_index,
        crop_size=crop_size,
        box=(10, 10, crop_size // 2, crop_size // 2),
    )


def set_state(engine: Engine, crop_id: int, state: str | None = None, label: str | None = None) -> None:
    """What a review decision does to a crop (the review room records the event as well)."""
    with session_scope(engine) as session:
        crop = session.get_one(Crop, crop_id)
        if state is not None:
            crop.state = state
        if label is not None:
            crop.label = label
