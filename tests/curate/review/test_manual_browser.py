"""Hand crops in real Chromium: a square drawn with the mouse, one moved and resized with keys, saved with
Enter, read back from the store, then undone in the page.

Needs Debian's `chromium` (driven by Playwright for Python, never a downloaded browser). A screenshot of hand
mode lands in ANIMEXPR_SCREENSHOT_DIR when it is set (for a person to look at).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from manual_testdata import add_missed_post
from review_testdata import CHROMIUM, CHROMIUM_FLAGS, LiveServer, seed_crops
from sqlalchemy import Engine, select

from animexpr.config import Settings
from animexpr.curate.crop import Square, cut_square, resize_square
from animexpr.curate.review import ReviewQueue
from animexpr.curate.review_app import ReviewAppConfig, create_app
from animexpr.db.models import Crop, ReviewEvent
from animexpr.db.session import session_scope
from animexpr.images import decode_image
from animexpr.store import FileStore

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests", allow_module_level=True
    )
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


@pytest.fixture
def rejected(engine: Engine, store: FileStore, settings: Settings) -> Crop:
    """Detected crops of 128 px, one of them rejected: its post needs a crop by hand too."""
    seeded = seed_crops(engine, store, settings.class_names, per_class=2)
    queue = ReviewQueue(engine, settings.class_names)
    queue.lease_next("bob")
    queue.decide("bob", seeded.ids[0], "reject")
    with session_scope(engine) as session:
        crop = session.get(Crop, seeded.ids[0])
        assert crop is not None
        return crop


@pytest.fixture
def pictures(engine: Engine, store: FileStore, rejected: Crop) -> dict[int, np.ndarray]:
    """Two posts where the detector found no face."""
    return {
        1: add_missed_post(engine, store, 1, label="smile", size=(640, 480)),
        2: add_missed_post(engine, store, 2, label="sad", size=(500, 400)),
    }


@pytest.fixture
def page(engine: Engine, settings: Settings, pictures: dict[int, np.ndarray]) -> Iterator[Any]:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as live, playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            tab = context.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.errors = errors
            tab.goto(live.url + "/")
            tab.wait_for_selector("body[data-ready='1']", timeout=15000)
            yield tab
        finally:
            browser.close()


def wait_until(page: Any, condition: Callable[[], bool], what: str) -> None:
    """Poll from Python: the page's CSP forbids the string evaluation Playwright's own waiting uses."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(25)


def shown_post(page: Any) -> int:
    page.wait_for_selector("#hand-view:not([hidden]) #hand-square:not([hidden])", timeout=10000)
    return int(page.get_attribute("#hand-view", "data-post-id"))


def square(page: Any) -> tuple[int, int, int]:
    x, y, side = (int(v) for v in page.get_attribute("#hand-square", "data-square").split(","))
    return x, y, side


def send(page: Any, keys: Callable[[], None], endpoint: str) -> dict[str, Any]:
    """Press keys and wait for the request they send; returns the server's JSON answer."""
    with page.expect_response(lambda response: response.url.endswith(endpoint), timeout=10000) as answer:
        keys()
    assert answer.value.ok, answer.value.text()
    return dict(answer.value.json())


def drag(
    page: Any, frame: dict[str, float], scale: float, start: tuple[int, int], end: tuple[int, int]
) -> None:
    """A real mouse drag between two points given in the original's pixels."""
    page.mouse.move(frame["x"] + start[0] * scale, frame["y"] + start[1] * scale)
    page.mouse.down()
    page.mouse.move(frame["x"] + end[0] * scale, frame["y"] + end[1] * scale, steps=6)
    page.mouse.up()


def hand_crops(engine: Engine) -> dict[int, Crop]:
    with session_scope(engine) as session:
        rows = session.scalars(select(Crop).where(Crop.detector == "manual"))
        return {crop.post_id: crop for crop in rows}


def test_draw_with_the_mouse_then_keys_save_read_back_and_undo(
    page: Any,
    engine: Engine,
    store: FileStore,
    pictures: dict[int, np.ndarray],
    rejected: Crop,
    tmp_path: Path,
) -> None:
    page.keyboard.press("c")
    # A rejected crop is a nearer miss than no face at all: its post comes first, its square to pick.
    assert shown_post(page) == rejected.post_id
    wait_until(
        page, lambda: len(page.query_selector_all("#hand-candidates .candidate")) == 1, "the candidate"
    )
    page.keyboard.press("1")
    assert square(page) == (rejected.crop_x, rejected.crop_y, rejected.crop_size)
    page.keyboard.press("j")  # skip it
    wait_until(page, lambda: shown_post(page) == 1, "the next post")  # both missed every face: older first

    # Draw from (100, 80) to (300, 250) in the original's pixels: a square of side 200 at (100, 80).
    frame = page.query_selector("#hand-img").bounding_box()
    scale = frame["width"] / 640
    drag(page, frame, scale, (100, 80), (300, 250))
    drawn = square(page)
    tolerance = 1 / scale + 1  # a screen pixel is this many of the original's
    assert all(abs(a - b) <= tolerance for a, b in zip(drawn, (100, 80, 200), strict=True)), drawn
    # Dragged from inside, it moves by (50, 40); dragged by its corner, it grows by 30.
    drag(page, frame, scale, (150, 150), (200, 190))
    moved = square(page)
    assert all(abs(a - b) <= tolerance for a, b in zip(moved, (150, 120, 200), strict=True)), moved
    drag(page, frame, scale, (moved[0] + moved[2], moved[1] + moved[2]), (380, 350))
    drawn = square(page)
    assert (drawn[0], drawn[1]) == moved[:2]
    assert abs(drawn[2] - 230) <= tolerance, drawn
    saved = send(page, lambda: page.keyboard.press("Enter"), "/api/manual/crop")
    assert tuple(saved["item"]["crop_box"]) == drawn
    wait_until(page, lambda: shown_post(page) == 2, "the next post")
    first = hand_crops(engine)[1]
    assert (first.state, first.label, first.size_px) == ("accepted", "smile", 128)
    assert (first.crop_x, first.crop_y, first.crop_size) == drawn
    expected = resize_square(cut_square(pictures[1], Square(*drawn)), 128)
    assert np.array_equal(decode_image(store.abspath(first.file_relpath)).rgb, expected)

    # Post 2 by keys only: the default square, moved by arrows and resized by + and -.
    x0, y0, side0 = square(page)
    step = round(side0 / 20)
    for key in ("ArrowRight", "ArrowRight", "ArrowRight", "ArrowDown", "ArrowDown"):
        page.keyboard.press(key)
    assert square(page) == (x0 + 3 * step, y0 + 2 * step, side0)
    page.keyboard.type("+")
    page.keyboard.type("+")
    grown = square(page)
    assert grown[2] > side0
    page.keyboard.type("-")
    resized = square(page)
    assert side0 < resized[2] < grown[2]
    page.keyboard.press("Shift+ArrowLeft")
    keyed = square(page)
    assert keyed == (resized[0] - 1, resized[1], resized[2])
    folder = Path(os.environ.get("ANIMEXPR_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "review-hand.png"))
    send(page, lambda: page.keyboard.press("Enter"), "/api/manual/crop")
    wait_until(page, lambda: page.is_visible("#empty"), "the end of the queue")
    second = hand_crops(engine)[2]
    assert (second.state, second.label, second.crop_x, second.crop_y, second.crop_size) == (
        "accepted",
        "sad",
        *keyed,
    )
    assert second.detector_settings["reviewer"] == "alice"

    # Undo in the page: the crop leaves the accepted ones and its post comes back on screen.
    undone = send(page, lambda: page.keyboard.press("u"), "/api/undo")
    assert [r["crop_id"] for r in undone["results"]] == [second.id]
    assert shown_post(page) == 2
    assert hand_crops(engine)[2].state == "rejected"
    with session_scope(engine) as session:
        accepted = set(session.scalars(select(Crop.id).where(Crop.state == "accepted")))
        decisions = [
            (e.crop_id, e.decision) for e in session.scalars(select(ReviewEvent).order_by(ReviewEvent.id))
        ]
    assert second.id not in accepted
    assert first.id in accepted
    assert decisions == [
        (rejected.id, "reject"),
        (first.id, "crop"),
        (second.id, "crop"),
        (second.id, "undo"),
    ]
    assert page.errors == []
