"""Store rows and browser settings for the tests and the benchmarks, written once so that a schema change or a
new Chromium flag touches this file only.

Each factory fills every required column with a plain value; callers pass what their test is about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from animexpr.db.models import Crop, CropState, Post, PostState

# Debian's chromium, driven by Playwright (never a downloaded browser), for the review page's tests and bench.
CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_FLAGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def post_row(
    post_id: int,
    class_name: str,
    *,
    md5: str | None = None,
    state: str = PostState.DOWNLOADED,
    **fields: Any,
) -> Post:
    """A post of class `class_name`; `md5` defaults to one made from the id."""
    return Post(
        id=post_id,
        md5=md5 or f"{post_id:032x}",
        tags=fields.pop("tags", class_name),
        class_name=class_name,
        state=state,
        **fields,
    )


def crop_row(
    post_id: int,
    label: str,
    *,
    face_index: int = 0,
    state: str = CropState.PENDING,
    sha256: str | None = None,
    file_relpath: str = "crops/x.png",
    size_px: int = 128,
    crop_x: int = 0,
    crop_y: int = 0,
    crop_size: int = 128,
    box: tuple[int, int, int, int] | None = None,
    **fields: Any,
) -> Crop:
    """A crop of `post_id` labelled `label`.

    `box` (x, y, w, h) defaults to the crop square itself, `sha256` to one made from the post id and the face
    index (for rows whose file the test never reads).
    """
    box_x, box_y, box_w, box_h = box or (crop_x, crop_y, crop_size, crop_size)
    defaults: dict[str, Any] = {
        "detector": "test",
        "detector_settings": {},
        "settings_key": "test",
        "detections_count": 1,
        "faces_policy": "all",
        "detection_score": None,
    }
    return Crop(
        post_id=post_id,
        sha256=sha256 or f"{post_id}{face_index}".ljust(64, "0"),
        file_relpath=file_relpath,
        size_px=size_px,
        box_x=box_x,
        box_y=box_y,
        box_w=box_w,
        box_h=box_h,
        crop_x=crop_x,
        crop_y=crop_y,
        crop_size=crop_size,
        face_index=face_index,
        label=label,
        state=state,
        **{**defaults, **fields},
    )
