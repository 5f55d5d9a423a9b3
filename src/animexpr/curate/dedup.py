"""Duplicate crops: exact (same post md5 and face, same bytes) and near (perceptual hash, mirrors included).

Crops are hashed once (`Crop.phash`, 16 hex digits) and grouped into clusters stored in
`Crop.duplicate_cluster` (the smallest crop id of the cluster; NULL for a crop without duplicates), so the
review page can show them side by side. Only one accepted member of a cluster, its representative, goes on
to augmentation and snapshots; nothing is ever deleted.

The perceptual hash is the sign of the 8x8 lowest-frequency DCT coefficients of the 32x32 grey image (DC left
out, so 63 bits carry information). Taking the sign (rather than imagehash's comparison with the median) makes
the hash of a mirrored image a fixed function of the hash itself: flipping left-right negates exactly the
coefficients of odd horizontal frequency, so `mirrored_hash(h)` is `h` with those bits flipped, and mirrored
copies are found without decoding anything again.

A cluster holds crops of one label only. On Danbooru, near-identical drawings with a different expression
are common (variant sets: the same art with a smile and with an open mouth measure 2 bits apart); those are
exactly the examples an expression dataset wants, so they are not duplicates. They are still *related*: the
snapshot split keeps every related crop, whatever its label, on the same side (`related_groups`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from animexpr.curate.defaults import DEFAULT_MAX_DISTANCE
from animexpr.db.models import Crop, CropState, Post
from animexpr.db.session import session_scope
from animexpr.store import CORRUPT_FILE, CorruptFileError, FileStore, UnsafePathError

log = logging.getLogger(__name__)

HASH_NAME = "dct-sign-64/v1"
# Measured on the 600 real face crops of the assets (179,700 pairs of different crops): every pair at
# distance 8 or less was the same drawing (an expression or colour variant), the first pair of different
# drawings was at 9. Re-encoding moves a hash by at most 2 bits, a 10 % brightness change by 2 (median), a
# 4 % shift by 8.
HASH_SIDE = 32  # the grey image the DCT is taken of
_LOW = 8  # the 8x8 lowest frequencies
_BITS = _LOW * _LOW
# Bit i of the hash is coefficient (row, col) = divmod(i, 8) counted from the most significant bit.
_ODD_COLUMN_MASK = sum(1 << (_BITS - 1 - i) for i in range(_BITS) if (i % _LOW) % 2 == 1)
_ROW_CHUNK = 1024  # rows of the distance matrix computed at once (1024 x N bytes)

ProgressCallback = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------------------
# The hash


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit hash of an image (grey, BGR or BGRA array); similar images differ in few bits."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey.astype(np.float32), (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    low = dctn(small, type=2, norm="ortho")[:_LOW, :_LOW]
    bits = (low > 0).ravel()
    bits[0] = False  # the DC term is the mean brightness: always positive, it would carry nothing
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def mirrored_hash(phash: int) -> int:
    """The hash of the left-right mirror image, derived from the hash alone."""
    return phash ^ _ODD_COLUMN_MASK


def hash_to_hex(phash: int) -> str:
    return f"{phash:016x}"


def hex_to_hash(text: str) -> int:
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def imdecode_checked(data: bytes, flags: int) -> np.ndarray:
    """A crop file decoded by OpenCV; ValueError with a short reason for anything it cannot decode."""
    if not data:
        raise ValueError("the file is empty (0 bytes)")  # OpenCV would raise its own assertion error
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise ValueError(f"not a decodable image ({exc.err or exc})") from exc
    if image is None:
        raise ValueError("not a decodable image")
    return image


def hash_png(data: bytes) -> int:
    """The perceptual hash of an encoded image (a crop file's bytes); ValueError when it cannot be decoded."""
    return perceptual_hash(imdecode_checked(data, cv2.IMREAD_GRAYSCALE))


def near_pairs(hashes: Sequence[int], max_distance: int) -> np.ndarray:
    """All pairs (i, j), i < j, whose hashes, or one's and the other's mirror, are within `max_distance` bits.

    Brute force on packed 64-bit integers: 10,000 hashes are 50 million comparisons, well under a second.
    """
    values = np.array(hashes, dtype=np.uint64)
    mirrors = values ^ np.uint64(_ODD_COLUMN_MASK)
    found: list[np.ndarray] = []
    for start in range(0, len(values), _ROW_CHUNK):
        rows = values[start : start + _ROW_CHUNK, None]
        distance = np.minimum(
            np.bitwise_count(rows ^ values[None, :]), np.bitwise_count(rows ^ mirrors[None, :])
        )
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    return np.concatenate(found).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# Clusters


@dataclass(frozen=True)
class CropFacts:
    """What dedup, expansion and snapshots need to know about one crop."""

    id: int
    post_id: int
    post_md5: str | None
    sha256: str
    file_relpath: str
    label: str
    state: str
    phash: int | None
    crop_x: int
    crop_y: int
    crop_size: int
    detection_score: float | None
    duplicate_cluster: int | None = None


def _components(count: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label of each of `count` nodes joined by `pairs`."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    return labels


def _same_key_pairs(keys: Iterable[object]) -> list[tuple[int, int]]:
    """Pairs joining every index to the first index with the same key (None keys join nothing)."""
    first: dict[object, int] = {}
    pairs = []
    for index, key in enumerate(keys):
        if key is None:
            continue
        if key in first:
            pairs.append((first[key], index))
        else:
            first[key] = index
    return pairs


def duplicate_pairs(crops: Sequence[CropFacts], max_distance: int) -> np.ndarray:
    """Index pairs of crops showing the same picture, whatever their labels.

    Exact: the same crop bytes, or the same square of a post with the same md5 (a re-upload). Near: hashes
    within `max_distance` bits, mirror included.
    """
    pairs = _same_key_pairs(crop.sha256 for crop in crops)
    pairs += _same_key_pairs(
        (crop.post_md5, crop.crop_x, crop.crop_y, crop.crop_size) if crop.post_md5 else None for crop in crops
    )
    hashed = [(index, crop.phash) for index, crop in enumerate(crops) if crop.phash is not None]
    near = near_pairs([phash for _, phash in hashed], max_distance)
    lookup = np.array([index for index, _ in hashed], dtype=np.int64)
    mapped = lookup[near] if len(near) else np.empty((0, 2), dtype=np.int64)
    exact = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return np.concatenate([exact, mapped])


def duplicate_clusters(crops: Sequence[CropFacts], max_distance: int) -> dict[int, int | None]:
    """Crop id -> cluster id (smallest member id) for crops with a duplicate of the same label; else None."""
    pairs = duplicate_pairs(crops, max_distance)
    same_label = np.array([crops[i].label == crops[j].label for i, j in pairs], dtype=bool)
    labels = _components(len(crops), pairs[same_label] if len(pairs) else pairs)
    members: dict[int, list[int]] = defaultdict(list)
    for crop, component in zip(crops, labels, strict=True):
        members[int(component)].append(crop.id)
    cluster_of: dict[int, int | None] = {}
    for ids in members.values():
        cluster = min(ids) if len(ids) > 1 else None
        for crop_id in ids:
            cluster_of[crop_id] = cluster
    return cluster_of


def related_groups(crops: Sequence[CropFacts], max_distance: int) -> dict[int, int]:
    """Crop id -> group key: crops of one post, or showing the same picture under any label, share a group.

    The key is the smallest post id of the group, so it does not depend on database row order.
    """
    pairs = duplicate_pairs(crops, max_distance)
    same_post = np.array(_same_key_pairs(crop.post_id for crop in crops), dtype=np.int64).reshape(-1, 2)
    labels = _components(len(crops), np.concatenate([pairs, same_post]))
    smallest_post: dict[int, int] = {}
    for crop, component in zip(crops, labels, strict=True):
        key = int(component)
        smallest_post[key] = min(smallest_post.get(key, crop.post_id), crop.post_id)
    return {crop.id: smallest_post[int(component)] for crop, component in zip(crops, labels, strict=True)}


def representative_rank(crop: CropFacts) -> tuple[int, float, int]:
    """Sort key, best first: the largest face in the original (least upscaled, most detail), then the
    detector's confidence, then the oldest crop (so the choice is stable when nothing else differs)."""
    score = crop.detection_score if crop.detection_score is not None else float("-inf")
    return (-crop.crop_size, -score, crop.id)


def choose_representatives(crops: Iterable[CropFacts]) -> list[CropFacts]:
    """One crop per duplicate cluster (and every crop outside a cluster), among accepted crops, by id."""
    best: dict[tuple[str, int], CropFacts] = {}
    for crop in crops:
        if crop.state != CropState.ACCEPTED:
            continue
        key = ("cluster", crop.duplicate_cluster) if crop.duplicate_cluster is not None else ("crop", crop.id)
        current = best.get(key)
        if current is None or representative_rank(crop) < representative_rank(current):
            best[key] = crop
    return sorted(best.values(), key=lambda crop: crop.id)


# ---------------------------------------------------------------------------------------------------------
# Database


def load_crop_facts(session: Session, states: Iterable[str]) -> list[CropFacts]:
    rows = session.execute(
        select(Crop, Post.md5)
        .join(Post, Crop.post_id == Post.id)
        .where(Crop.state.in_(list(states)))
        .order_by(Crop.id)
    )
    return [_facts(crop, md5) for crop, md5 in rows]


def _facts(crop: Crop, post_md5: str | None) -> CropFacts:
    return CropFacts(
        id=crop.id,
        post_id=crop.post_id,
        post_md5=post_md5,
        sha256=crop.sha256,
        file_relpath=crop.file_relpath,
        label=crop.label,
        state=crop.state,
        phash=hex_to_hash(crop.phash) if crop.phash else None,
        crop_x=crop.crop_x,
        crop_y=crop.crop_y,
        crop_size=crop.crop_size,
        detection_score=crop.detection_score,
        duplicate_cluster=crop.duplicate_cluster,
    )


@dataclass(frozen=True)
class DedupSummary:
    crops: int  # crops considered (pending and accepted)
    hashed: int  # hashes computed in this run
    unreadable: int  # crops whose file could not be hashed (exact duplicates are still found)
    clusters: int
    clustered_crops: int
    changed: int  # crops whose cluster changed in this run
    max_distance: int
    corrupt: int = 0  # of the unreadable: files that no longer have their recorded sha256 (corrupt_file)


UNREADABLE = "unreadable"  # a crop file that has its recorded sha256 but cannot be decoded


def _hash_file(store: FileStore, relpath: str, sha256: str) -> int | str:
    """The crop's perceptual hash, or why there is none (`corrupt_file` or `unreadable`, logged)."""
    try:
        return hash_png(store.read_verified(relpath, sha256))
    except (CorruptFileError, UnsafePathError) as exc:
        log.warning("corrupt_file: crop %s left out of dedup: %s", relpath, exc)
        return CORRUPT_FILE
    except (OSError, ValueError) as exc:
        log.warning("cannot hash crop %s: %s", relpath, exc)
        return UNREADABLE


def _hash_missing(
    engine: Engine, store: FileStore, progress: ProgressCallback | None, workers: int
) -> tuple[int, int, int]:
    """Hash every pending or accepted crop that has no hash yet; returns (hashed, unreadable, corrupt)."""
    with Session(engine) as session:
        todo = session.execute(
            select(Crop.id, Crop.file_relpath, Crop.sha256).where(
                Crop.phash.is_(None), Crop.state.in_([CropState.PENDING, CropState.ACCEPTED])
            )
        ).all()
    hashed = unreadable = corrupt = 0
    batch: list[dict[str, object]] = []
    # OpenCV decodes and resizes without the GIL, so threads are enough to use every core here.
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        results = pool.map(lambda row: (row[0], _hash_file(store, row[1], row[2])), todo)
        for done, (crop_id, phash) in enumerate(results, start=1):
            if isinstance(phash, str):
                unreadable += 1
                corrupt += phash == CORRUPT_FILE
            else:
                hashed += 1
                batch.append({"id": crop_id, "phash": hash_to_hex(phash)})
            if len(batch) >= 500:
                batch, finished = [], batch
                _write(engine, finished)
            if progress is not None:
                progress(done, len(todo))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: stop soon, keep the hashes made
        _write(engine, batch)
    return hashed, unreadable, corrupt


def _write(engine: Engine, rows: Sequence[Mapping[str, object]]) -> None:
    if rows:
        with session_scope(engine) as session:
            session.execute(update(Crop), rows)


def update_duplicates(
    engine: Engine,
    store: FileStore,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    progress: ProgressCallback | None = None,
    workers: int = 2,
) -> DedupSummary:
    """Hash the crops that lack a hash, then recompute every cluster and store what changed.

    Rejected crops leave their clusters. Running it again with nothing new changes nothing.
    """
    if not 0 <= max_distance < _BITS:
        raise ValueError(f"max_distance must be between 0 and {_BITS - 1}, not {max_distance}")
    hashed, unreadable, corrupt = _hash_missing(engine, store, progress, workers)
    with Session(engine) as session:
        live = load_crop_facts(session, [CropState.PENDING, CropState.ACCEPTED])
        rejected_in_clusters = session.execute(
            select(Crop.id, Crop.duplicate_cluster).where(
                Crop.state == CropState.REJECTED, Crop.duplicate_cluster.is_not(None)
            )
        ).all()
    current = {crop.id: crop.duplicate_cluster for crop in live}
    current.update(dict(rejected_in_clusters))
    wanted: dict[int, int | None] = dict.fromkeys(current, None)
    wanted.update(duplicate_clusters(live, max_distance))
    changes = [
        {"id": crop_id, "duplicate_cluster": cluster}
        for crop_id, cluster in wanted.items()
        if current[crop_id] != cluster
    ]
    _write(engine, changes)
    clusters = {cluster for cluster in wanted.values() if cluster is not None}
    summary = DedupSummary(
        crops=len(live),
        hashed=hashed,
        unreadable=unreadable,
        clusters=len(clusters),
        clustered_crops=sum(1 for cluster in wanted.values() if cluster is not None),
        changed=len(changes),
        max_distance=max_distance,
        corrupt=corrupt,
    )
    log.info(
        "dedup: %d crops, %d hashed now, %d in %d clusters, %d changed",
        summary.crops,
        summary.hashed,
        summary.clustered_crops,
        summary.clusters,
        summary.changed,
    )
    return summary


def eligible_crops(session: Session, class_names: Sequence[str]) -> list[CropFacts]:
    """The accepted, de-duplicated crops of known classes: what expansion and snapshots are made of."""
    accepted = load_crop_facts(session, [CropState.ACCEPTED])
    unknown = sorted({crop.label for crop in accepted} - set(class_names))
    if unknown:
        log.warning("accepted crops with labels outside the classes are left out: %s", ", ".join(unknown))
    known = [crop for crop in accepted if crop.label in class_names]
    return choose_representatives(known)


def cluster_members(session: Session, cluster: int) -> list[CropFacts]:
    """Every crop of one cluster, the representative first (for the review page)."""
    rows = session.execute(
        select(Crop, Post.md5).join(Post, Crop.post_id == Post.id).where(Crop.duplicate_cluster == cluster)
    )
    members = [_facts(crop, md5) for crop, md5 in rows]
    accepted_first = sorted(members, key=lambda c: (c.state != CropState.ACCEPTED, representative_rank(c)))
    return accepted_first
