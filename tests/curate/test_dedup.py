"""Duplicates: exact (same bytes or post md5), near (re-encoded, resized), mirrored; clusters and choice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from expand_data import (
    CLASSES,
    Face,
    add_crops,
    add_post,
    crop_row,
    decode,
    encode,
    faces,
    generated_image,
    set_state,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from animexpr.curate.dedup import (
    cluster_members,
    eligible_crops,
    hamming,
    hash_png,
    load_crop_facts,
    mirrored_hash,
    near_pairs,
    perceptual_hash,
    related_groups,
    update_duplicates,
)
from animexpr.db.models import Crop, CropState
from animexpr.db.session import session_scope
from animexpr.store import FileStore


def jpeg_and_resize(png: bytes) -> bytes:
    """The same picture uploaded again: JPEG-compressed and at another size, then cropped to our size."""
    image = decode(png)
    side = image.shape[0]
    smaller = cv2.resize(image, (side * 3 // 4, side * 3 // 4), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", smaller, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return encode(cv2.resize(decode(jpeg.tobytes()), (side, side), interpolation=cv2.INTER_CUBIC))


def mirror(png: bytes) -> bytes:
    return encode(np.ascontiguousarray(decode(png)[:, ::-1]))


def clusters_by_crop(engine: Engine) -> dict[int, int | None]:
    with Session(engine) as session:
        return dict(session.execute(select(Crop.id, Crop.duplicate_cluster)).all())


def test_mirrored_hash_is_the_hash_of_the_mirror_image() -> None:
    for face in faces(3):
        image = decode(face.png)
        flipped = np.ascontiguousarray(image[:, ::-1])
        assert hamming(perceptual_hash(flipped), mirrored_hash(perceptual_hash(image))) <= 1
        # ... and a picture is not its own mirror: otherwise mirrors would say nothing
        assert hamming(perceptual_hash(flipped), perceptual_hash(image)) > 8


def test_near_pairs_includes_mirrors_and_respects_the_threshold() -> None:
    base = perceptual_hash(generated_image("a"))
    other = perceptual_hash(generated_image("b"))
    close = base ^ 0b111  # 3 bits apart
    hashes = [base, other, close, mirrored_hash(base)]
    assert near_pairs(hashes, 3).tolist() == [[0, 2], [0, 3], [2, 3]]
    assert near_pairs(hashes, 2).tolist() == [[0, 3]]
    assert near_pairs([], 8).shape == (0, 2)


def test_exact_near_and_mirrored_duplicates_are_clustered(engine: Engine, store: FileStore) -> None:
    originals = faces(3)  # 12 different drawings, 3 per class
    ids = add_crops(engine, store, originals)
    # Duplicates of the first four faces, each uploaded as another post, with the same label:
    copies = [
        Face("a" * 32, originals[0].label, originals[0].png),  # exact: same crop bytes
        Face("b" * 32, originals[1].label, jpeg_and_resize(originals[1].png)),  # near: re-encoded and resized
        Face("c" * 32, originals[2].label, mirror(originals[2].png)),  # mirrored copy
    ]
    copy_ids = add_crops(engine, store, copies)
    # A re-upload with the same md5 as the post of face 3: its crop of the same square is the same face even
    # when its bytes differ (here, another picture altogether, to show the md5 rule on its own).
    add_post(engine, 9999, originals[3].md5, originals[3].label)
    with Session(engine) as session:
        post_of_face3 = session.get_one(Crop, ids[3]).post_id
    assert post_of_face3 != 9999
    reupload_id = _add_crop_to_post(engine, store, 9999, originals[3].label, encode(generated_image("other")))

    summary = update_duplicates(engine, store)

    clusters = clusters_by_crop(engine)
    expected = {ids[0]: copy_ids[0], ids[1]: copy_ids[1], ids[2]: copy_ids[2], ids[3]: reupload_id}
    for original, duplicate in expected.items():
        assert clusters[original] == clusters[duplicate] == min(original, duplicate)
    assert all(clusters[i] is None for i in ids[4:])
    assert (summary.clusters, summary.clustered_crops) == (4, 8)
    assert summary.hashed == len(ids) + len(copy_ids) + 1


def _add_crop_to_post(engine: Engine, store: FileStore, post_id: int, label: str, png: bytes) -> int:
    stored = store.put_bytes("crops", png, "png")
    with session_scope(engine) as session:
        crop = crop_row(post_id, 0, stored.sha256, stored.relpath, label, CropState.ACCEPTED, 200)
        session.add(crop)
        session.flush()
        return crop.id


def test_representative_is_the_largest_accepted_face_and_follows_review(
    engine: Engine, store: FileStore
) -> None:
    face = faces(1)[0]
    small, large, pending = (
        add_crops(engine, store, [Face(f"{n}" * 32, face.label, face.png)], crop_size=size)[0]
        for n, size in ((1, 150), (2, 400), (3, 800))
    )
    set_state(engine, pending, state=CropState.PENDING)
    update_duplicates(engine, store)
    with Session(engine) as session:
        assert [c.id for c in eligible_crops(session, CLASSES)] == [large]
        members = [c.id for c in cluster_members(session, small)]
    assert members == [large, small, pending]  # accepted first, best first; pending is shown, never chosen

    set_state(engine, large, state=CropState.REJECTED)
    update_duplicates(engine, store)
    with Session(engine) as session:
        assert [c.id for c in eligible_crops(session, CLASSES)] == [small]
    assert clusters_by_crop(engine)[large] is None  # a rejected crop leaves its cluster


def test_same_picture_with_another_label_is_related_not_duplicate(engine: Engine, store: FileStore) -> None:
    face = faces(1)[0]
    other_label = next(label for label in CLASSES if label != face.label)
    first, variant = add_crops(engine, store, [face, Face("f" * 32, other_label, jpeg_and_resize(face.png))])
    update_duplicates(engine, store)
    assert clusters_by_crop(engine) == {first: None, variant: None}
    with Session(engine) as session:
        crops = load_crop_facts(session, [CropState.ACCEPTED])
        assert {c.id for c in eligible_crops(session, CLASSES)} == {first, variant}
    groups = related_groups(crops, 8)
    assert groups[first] == groups[variant]


def test_dedup_again_changes_nothing_and_new_crops_join(engine: Engine, store: FileStore) -> None:
    originals = faces(2)
    add_crops(engine, store, originals)
    update_duplicates(engine, store)
    again = update_duplicates(engine, store)
    assert (again.hashed, again.changed, again.clusters) == (0, 0, 0)

    [late] = add_crops(engine, store, [Face("e" * 32, originals[5].label, mirror(originals[5].png))])
    later = update_duplicates(engine, store)
    assert (later.hashed, later.clusters, later.changed) == (1, 1, 2)
    assert clusters_by_crop(engine)[late] is not None


def test_unreadable_crop_is_counted_and_skipped(engine: Engine, store: FileStore) -> None:
    [good, bad] = add_crops(engine, store, faces(1)[:2])
    with Session(engine) as session:
        path = store.abspath(session.get_one(Crop, bad).file_relpath)
    path.write_bytes(b"not a png")
    summary = update_duplicates(engine, store)
    assert (summary.hashed, summary.unreadable) == (1, 1)
    with Session(engine) as session:
        good_crop, bad_crop = session.get_one(Crop, good), session.get_one(Crop, bad)
        assert bad_crop.phash is None
        assert good_crop.phash is not None
        assert good_crop.phash == f"{hash_png(store.abspath(good_crop.file_relpath).read_bytes()):016x}"


@pytest.mark.parametrize("max_distance", [-1, 64])
def test_threshold_out_of_range_is_refused(engine: Engine, store: FileStore, max_distance: int) -> None:
    with pytest.raises(ValueError, match="max_distance"):
        update_duplicates(engine, store, max_distance)
