"""Posts the detector missed, for the hand-crop tests: a real picture in the store and the crop attempt's
outcome (recorded directly, as the crop stage records it), so no cascade is needed.

Imports nothing from the other test helpers, so that the command-line tests can use it too.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image
from sqlalchemy import Engine

from animexpr.db.models import CropAttempt, Post, PostState
from animexpr.db.session import session_scope
from animexpr.store import FileStore

ATTEMPT_SETTINGS_KEY = "0" * 64


def drawn_picture(seed: int, width: int, height: int) -> np.ndarray:
    """A colourful upright RGB picture: random colour blocks, smoothed (different for every seed)."""
    rng = np.random.default_rng(seed)
    blocks = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    return np.asarray(blocks.resize((width, height), Image.Resampling.BICUBIC))


def add_missed_post(
    engine: Engine,
    store: FileStore,
    post_id: int,
    label: str | None = "smile",
    outcome: str | None = "no_face",
    detail: str | None = None,
    size: tuple[int, int] = (640, 480),
    faces_found: int = 0,
) -> np.ndarray:
    """A downloaded post (PNG original, so its pixels are exact) with one crop attempt; returns its pixels."""
    rgb = drawn_picture(post_id, *size)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    data = buffer.getvalue()
    md5 = hashlib.md5(data).hexdigest()
    stored = store.put_original(md5, data, "png")
    with session_scope(engine) as session:
        session.add(
            Post(
                id=post_id,
                md5=md5,
                file_ext="png",
                width=size[0],
                height=size[1],
                class_name=label,
                state=PostState.DOWNLOADED,
                file_relpath=stored.relpath,
                file_sha256=stored.sha256,
                tags="",
            )
        )
        session.flush()
        if outcome is not None:
            session.add(
                CropAttempt(
                    post_id=post_id,
                    settings_key=ATTEMPT_SETTINGS_KEY,
                    outcome=outcome,
                    detail=detail,
                    faces_found=faces_found,
                )
            )
    return rgb
