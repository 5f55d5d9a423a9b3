"""Test data for the review room: real Post/Crop rows and real image files in the store, made directly.

Real anime faces come from ANIMEXPR_ASSETS/faces when it is set (one character folder per class, as
stand-ins for the expression classes); otherwise the faces are drawn, so the queue tests run anywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from PIL import Image, ImageDraw
from sqlalchemy import Engine, select

from animexpr.curate.review_app import bind_socket
from animexpr.db.models import Crop, ReviewEvent
from animexpr.db.session import session_scope
from animexpr.store import FileStore
from animexpr.testing.factories import CHROMIUM, CHROMIUM_FLAGS, crop_row, post_row

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS"]  # the browser tests take them from here

SOURCE_SIZE = (640, 480)
CROP_PX = 128


def face_images(per_class: int, class_count: int) -> list[list[Image.Image]]:
    """`per_class` faces for each class: real ones from the assets when available, drawn ones otherwise."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    faces_root = Path(assets) / "faces" if assets else None
    if faces_root is not None and faces_root.is_dir():
        folders = sorted(p for p in faces_root.iterdir() if p.is_dir())[:class_count]
        if len(folders) == class_count:
            return [
                [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.jpg"))[:per_class]]
                for folder in folders
            ]
    rng = random.Random(7)
    return [[_drawn_face(rng) for _ in range(per_class)] for _ in range(class_count)]


def _drawn_face(rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (256, 256), tuple(rng.randrange(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 30, 216, 230), fill=(250, 220, 200))
    for eye_x in (90, 166):
        draw.ellipse((eye_x - 18, 100, eye_x + 18, 140), fill=tuple(rng.randrange(0, 255) for _ in range(3)))
    draw.arc((90, 150, 166, 200), 20, 160, fill=(120, 40, 40), width=5)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class SeededCrops:
    ids: list[int]
    labels: dict[int, str]
    scores: dict[int, float | None]


def seed_crops(
    engine: Engine,
    store: FileStore,
    class_names: tuple[str, ...],
    per_class: int,
    seed: int = 1,
    with_sources: bool = True,
) -> SeededCrops:
    """One post per face: the face placed in a larger picture (the original), and its crop cut from it."""
    rng = random.Random(seed)
    faces = face_images(per_class, len(class_names))
    seeded = SeededCrops([], {}, {})
    with session_scope(engine) as session:
        post_id = 1000
        for class_index, label in enumerate(class_names):
            for face_index, face in enumerate(faces[class_index]):
                post_id += 1
                crop_size = rng.randrange(150, 300)
                crop_x = rng.randrange(0, SOURCE_SIZE[0] - crop_size)
                crop_y = rng.randrange(0, SOURCE_SIZE[1] - crop_size)
                source = Image.new("RGB", SOURCE_SIZE, (rng.randrange(30, 90), 70, rng.randrange(90, 160)))
                source.paste(face.resize((crop_size, crop_size)), (crop_x, crop_y))
                original = _jpeg(source)
                md5 = hashlib.md5(original).hexdigest()
                stored_original = store.put_original(md5, original, "jpg") if with_sources else None
                crop_png = _png(
                    source.crop((crop_x, crop_y, crop_x + crop_size, crop_y + crop_size)).resize(
                        (CROP_PX, CROP_PX)
                    )
                )
                stored_crop = store.put_bytes("crops", crop_png, "png")
                session.add(
                    post_row(
                        post_id,
                        label,
                        md5=md5,
                        file_ext="jpg",
                        width=SOURCE_SIZE[0],
                        height=SOURCE_SIZE[1],
                        tags=f"{label} solo",
                        rating="g",
                        file_relpath=stored_original.relpath if stored_original else None,
                        file_sha256=stored_original.sha256 if stored_original else None,
                    )
                )
                session.flush()  # no relationship orders the inserts: the post must exist before its crop
                inset = crop_size // 6
                score = None if face_index % 7 == 3 else round(rng.random(), 4)
                crop = crop_row(
                    post_id,
                    label,
                    sha256=stored_crop.sha256,
                    file_relpath=stored_crop.relpath,
                    size_px=CROP_PX,
                    crop_x=crop_x,
                    crop_y=crop_y,
                    crop_size=crop_size,
                    box=(crop_x + inset, crop_y + inset, crop_size - 2 * inset, crop_size - 2 * inset),
                    detector="lbp",
                    faces_policy="largest",
                    detection_score=score,
                )
                session.add(crop)
                session.flush()
                seeded.ids.append(crop.id)
                seeded.labels[crop.id] = label
                seeded.scores[crop.id] = score
    return seeded


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a thread, on a free port."""

    def __init__(self, app: object) -> None:
        self.socket = bind_socket("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def stored_crop(engine: Engine, crop_id: int) -> Crop:
    """The crop's row as the store has it now."""
    with session_scope(engine) as session:
        crop = session.get(Crop, crop_id)
        assert crop is not None
        return crop


def review_events(engine: Engine) -> list[ReviewEvent]:
    """Every review event, oldest first."""
    with session_scope(engine) as session:
        return list(session.scalars(select(ReviewEvent).order_by(ReviewEvent.id)))
