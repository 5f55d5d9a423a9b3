"""The review page in real Chromium: real key presses, then the database is read back.

Needs Debian's `chromium` (driven by Playwright for Python, never a downloaded browser). Screenshots of
single and grid mode land in ANIMEXPR_SCREENSHOT_DIR when it is set (for a person to look at).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from review_testdata import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    LiveServer,
    SeededCrops,
    review_events,
    seed_crops,
    stored_crop,
)
from sqlalchemy import Engine, select

from animexpr.config import Settings
from animexpr.curate.review import ReviewerTokens
from animexpr.curate.review_app import ReviewAppConfig, create_app
from animexpr.db.models import ReviewLease
from animexpr.db.session import session_scope
from animexpr.store import FileStore

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium and chromium-driver to run the browser tests",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")

PER_CLASS = 15  # 60 crops: more than one grid page at 1400 x 900 (50 crops)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def crops(engine: Engine, store: FileStore, settings: Settings) -> SeededCrops:
    return seed_crops(engine, store, settings.class_names, per_class=PER_CLASS)


@pytest.fixture
def server(engine: Engine, settings: Settings, crops: SeededCrops) -> Iterator[LiveServer]:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def open_page(browser: Any, server: LiveServer) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def opener(reviewer: str | None = None) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.errors = errors
        page.goto(server.url + ("/" if reviewer is None else f"/?reviewer={reviewer}"))
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        return page

    yield opener
    for context in contexts:
        context.close()


def press(page: Any, key: str, endpoint: str = "/api/decide") -> dict[str, Any]:
    """Press a real key and wait for the request it sends; returns the server's JSON answer."""
    with page.expect_response(lambda response: response.url.endswith(endpoint), timeout=10000) as answer:
        page.keyboard.press(key)
    response = answer.value
    assert response.ok, response.text()
    return dict(response.json())


def current_crop(page: Any) -> int:
    page.wait_for_selector("#single-view:not([hidden])", timeout=10000)
    return int(page.get_attribute("#single-view", "data-crop-id"))


def wait_for_crop_change(page: Any, before: int) -> int:
    deadline = time.monotonic() + 10
    while (now := current_crop(page)) == before:
        assert time.monotonic() < deadline, f"the page still shows crop {before}"
        page.wait_for_timeout(20)
    return now


def wait_until(page: Any, condition: Callable[[], bool], what: str) -> None:
    """Poll from Python: the page's CSP forbids the string evaluation Playwright's own waiting uses."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        page.wait_for_timeout(25)


def tile_count(page: Any, selector: str = "#grid .tile") -> int:
    return len(page.query_selector_all(selector))


def grid_page_size(page: Any) -> int:
    """The crops a grid page holds in this window, as the page worked it out (whole rows that fit)."""
    page.wait_for_selector("#grid[data-page-size]", timeout=10000)
    return int(page.get_attribute("#grid", "data-page-size"))


def full_grid_page(page: Any) -> int:
    wait_until(page, lambda: tile_count(page) == grid_page_size(page), "a full grid page")
    return grid_page_size(page)


def test_single_mode_keys_accept_reject_relabel_undo(
    open_page: Callable[..., Any], engine: Engine, settings: Settings, crops: SeededCrops
) -> None:
    page = open_page()
    first = current_crop(page)
    press(page, "a")
    second = wait_for_crop_change(page, first)
    press(page, "x")
    third = wait_for_crop_change(page, second)
    new_label = next(name for name in settings.class_names if name != crops.labels[third])
    press(page, str(settings.class_names.index(new_label) + 1))
    fourth = wait_for_crop_change(page, third)
    assert [(e.crop_id, e.decision, e.reviewer) for e in review_events(engine)] == [
        (first, "accept", "alice"),
        (second, "reject", "alice"),
        (third, "relabel", "alice"),
    ]
    assert stored_crop(engine, first).state == "accepted"
    assert stored_crop(engine, second).state == "rejected"
    assert (stored_crop(engine, third).state, stored_crop(engine, third).label) == ("accepted", new_label)

    # u undoes the relabel and shows that crop again; Backspace then undoes the reject.
    press(page, "u", "/api/undo")
    assert wait_for_crop_change(page, fourth) == third
    assert (stored_crop(engine, third).state, stored_crop(engine, third).label) == (
        "pending",
        crops.labels[third],
    )
    press(page, "Backspace", "/api/undo")
    assert wait_for_crop_change(page, third) == second
    assert stored_crop(engine, second).state == "pending"
    assert [e.decision for e in review_events(engine)] == ["accept", "reject", "relabel", "undo", "undo"]

    # k goes back to an earlier decision, which can be changed; j moves forward again.
    page.keyboard.press("k")
    assert wait_for_crop_change(page, second) == first
    assert page.text_content("#state-badge").startswith("accepted")
    press(page, "x")
    assert stored_crop(engine, first).state == "rejected"
    assert current_crop(page) == second
    assert page.errors == []


def test_reload_in_the_middle_loses_nothing_and_resumes(
    open_page: Callable[..., Any], engine: Engine, crops: SeededCrops
) -> None:
    page = open_page()
    decided = []
    for key in "aaxa":
        shown = current_crop(page)
        press(page, key)
        decided.append(shown)
        wait_for_crop_change(page, shown)
    waiting = current_crop(page)
    page.reload()
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    assert current_crop(page) == waiting  # the same crop, still leased to alice
    assert [e.crop_id for e in review_events(engine)] == decided
    assert [stored_crop(engine, c).state for c in decided] == ["accepted", "accepted", "rejected", "accepted"]
    # The history came back with the page: k walks back over the decisions made before the reload.
    page.keyboard.press("k")
    assert wait_for_crop_change(page, waiting) == decided[-1]
    page.keyboard.press("k")
    assert wait_for_crop_change(page, decided[-1]) == decided[-2]
    assert page.text_content("#state-badge").startswith("rejected")
    assert page.errors == []


def test_grid_mode_marks_then_enter_then_undo(
    open_page: Callable[..., Any], engine: Engine, crops: SeededCrops, tmp_path: Path
) -> None:
    page = open_page()
    page.keyboard.press("g")
    size = full_grid_page(page)
    assert size < len(crops.ids)
    tiles = page.query_selector_all("#grid .tile")
    page_ids = [int(tile.get_attribute("data-id")) for tile in tiles]
    page.keyboard.press("Space")  # marks the first tile
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("x")  # marks the third
    tiles[10].click()  # a click marks too
    marked = {page_ids[0], page_ids[2], page_ids[10]}
    assert len(page.query_selector_all("#grid .tile.marked")) == 3
    saved = press(page, "Enter", "/api/grid")
    assert len(saved["results"]) == size
    rows = {e.crop_id: e for e in review_events(engine)}
    assert set(rows) == set(page_ids)
    assert {c for c, e in rows.items() if e.state_after == "rejected"} == marked
    assert len({e.batch_id for e in rows.values()}) == 1
    # The next page shows the crops that are left, none of the decided ones.
    left = len(crops.ids) - size
    wait_until(page, lambda: tile_count(page) == min(left, size), "the crops that are left")
    rest = {int(tile.get_attribute("data-id")) for tile in page.query_selector_all("#grid .tile")}
    assert rest <= set(crops.ids) - set(page_ids)
    # u takes the whole page back, with its marks.
    undone = press(page, "u", "/api/undo")
    assert len(undone["results"]) == size
    wait_until(page, lambda: tile_count(page, "#grid .tile.marked") == 3, "the marks to come back")
    marked_again = {
        int(tile.get_attribute("data-id")) for tile in page.query_selector_all("#grid .tile.marked")
    }
    assert marked_again == marked
    assert all(stored_crop(engine, c).state == "pending" for c in page_ids)
    assert page.errors == []


def test_two_reviewers_at_once_never_see_the_same_crop(
    open_page: Callable[..., Any], engine: Engine, crops: SeededCrops
) -> None:
    alice = open_page("alice")
    bob = open_page("bob")
    seen: dict[str, list[int]] = {"alice": [], "bob": []}
    for _ in range(5):
        for name, page in (("alice", alice), ("bob", bob)):
            shown = current_crop(page)
            seen[name].append(shown)
            press(page, "a")
            wait_for_crop_change(page, shown)
    assert not set(seen["alice"]) & set(seen["bob"])
    by_reviewer: dict[str, set[int]] = {"alice": set(), "bob": set()}
    for event in review_events(engine):
        by_reviewer[event.reviewer].add(event.crop_id)
    assert by_reviewer == {"alice": set(seen["alice"]), "bob": set(seen["bob"])}
    # What each page holds ahead is leased to that reviewer alone.
    with session_scope(engine) as session:
        leases = dict(session.execute(select(ReviewLease.crop_id, ReviewLease.reviewer)).all())
    assert current_crop(alice) != current_crop(bob)
    assert leases[current_crop(alice)] == "alice"
    assert leases[current_crop(bob)] == "bob"
    assert alice.errors == []
    assert bob.errors == []


def test_screenshots_of_single_and_grid_mode(open_page: Callable[..., Any], tmp_path: Path) -> None:
    folder = Path(os.environ.get("ANIMEXPR_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page = open_page()
    for key in "ax":
        shown = current_crop(page)
        press(page, key)
        wait_for_crop_change(page, shown)
    page.wait_for_selector("#face-box:not([hidden])", timeout=10000)
    box = page.eval_on_selector("#face-box", "element => element.getBoundingClientRect().width")
    assert box > 20  # the detector box is drawn over the source at a visible size
    page.screenshot(path=str(folder / "review-single.png"))
    page.keyboard.press("g")
    full_grid_page(page)
    page.keyboard.press("Space")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Space")
    all_loaded = (
        "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    wait_until(page, lambda: bool(page.evaluate(all_loaded)), "the grid images")
    page.screenshot(path=str(folder / "review-grid.png"))
    for name in ("review-single.png", "review-grid.png"):
        assert (folder / name).stat().st_size > 50_000, name  # real pictures, not an empty page
    assert page.errors == []


def test_token_login_in_the_browser_keeps_the_secret_out_of_the_page(
    browser: Any, engine: Engine, settings: Settings, crops: SeededCrops
) -> None:
    token, _ = ReviewerTokens(engine).add("bob")
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as live:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.goto(live.url + "/?reviewer=mallory")  # a name from the page does not count with tokens
            assert page.url.endswith("/login")
            page.fill("input[name=token]", "wrong-guess")
            page.press("input[name=token]", "Enter")
            page.wait_for_selector(".login-error")
            page.fill("input[name=token]", token)
            page.press("input[name=token]", "Enter")
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            assert page.evaluate("() => document.cookie") == ""  # HttpOnly: the page's script cannot read it
            assert token not in page.content()
            assert page.text_content("#reviewer-name") == "reviewer bob"
            assert page.is_disabled("#reviewer-name")
            shown = current_crop(page)
            press(page, "x")
            assert stored_crop(engine, shown).state == "rejected"
            assert [(e.crop_id, e.reviewer) for e in review_events(engine)] == [(shown, "bob")]
        finally:
            context.close()


@pytest.mark.parametrize("window", [(1280, 800), (1920, 1080)], ids=["1280x800", "1920x1080"])
def test_grid_page_is_the_whole_rows_that_fit_and_enter_decides_only_those(
    browser: Any, engine: Engine, settings: Settings, store: FileStore, window: tuple[int, int]
) -> None:
    crops = seed_crops(engine, store, settings.class_names, per_class=30)  # 120: more than a page
    width, height = window
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as live:
        context = browser.new_context(viewport={"width": width, "height": height})
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(live.url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            page.keyboard.press("g")
            size = full_grid_page(page)
            columns = int(page.get_attribute("#grid", "data-columns"))
            boxes = [tile.bounding_box() for tile in page.query_selector_all("#grid .tile")]
            assert columns == len({round(box["x"]) for box in boxes})
            assert size % columns == 0
            assert size < len(crops.ids)
            # Every tile is wholly in the window, and one more row would not fit above the footer.
            assert all(box["y"] >= 0 and box["y"] + box["height"] <= height for box in boxes)
            assert all(box["x"] >= 0 and box["x"] + box["width"] <= width for box in boxes)
            footer_top = page.query_selector("footer").bounding_box()["y"]
            gap = boxes[columns]["y"] - (boxes[0]["y"] + boxes[0]["height"])
            last = boxes[-1]
            assert last["y"] + last["height"] <= footer_top
            assert last["y"] + last["height"] + gap + last["height"] > footer_top - 12  # main's padding
            assert page.evaluate("() => document.documentElement.scrollHeight") <= height

            shown = [int(tile.get_attribute("data-id")) for tile in page.query_selector_all("#grid .tile")]
            page.keyboard.press("Space")
            saved = press(page, "Enter", "/api/grid")
            assert sorted(result["crop_id"] for result in saved["results"]) == sorted(shown)
            decided = {event.crop_id: event.state_after for event in review_events(engine)}
            assert decided == dict.fromkeys(shown[1:], "accepted") | {shown[0]: "rejected"}
            assert all(stored_crop(engine, c).state == "pending" for c in set(crops.ids) - set(shown))
            assert errors == []
        finally:
            context.close()


def test_grid_page_follows_a_resized_window(browser: Any, server: LiveServer, crops: SeededCrops) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=15000)
        page.keyboard.press("g")
        large = full_grid_page(page)
        assert large < len(crops.ids)
        page.set_viewport_size({"width": 900, "height": 700})
        wait_until(page, lambda: grid_page_size(page) < large, "a smaller page after the resize")
        small = full_grid_page(page)
        bottoms = [tile.bounding_box() for tile in page.query_selector_all("#grid .tile")]
        assert small % int(page.get_attribute("#grid", "data-columns")) == 0
        assert all(box["y"] + box["height"] <= 700 for box in bottoms)
    finally:
        context.close()
