"""The hand-crop endpoints: the queue, a post's original and candidates, saving a square, undo, and the
same login, Origin and hostile-input rules as the rest of the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from manual_testdata import add_missed_post
from review_testdata import SeededCrops
from sqlalchemy import Engine, func, select, update
from starlette.testclient import TestClient

from animexpr.config import Settings
from animexpr.curate.review_app import ReviewAppConfig, create_app
from animexpr.db.models import Crop, Post, ReviewEvent
from animexpr.db.session import session_scope
from animexpr.store import FileStore

BASE = "http://127.0.0.1:8765"
SAME_ORIGIN = {"Origin": BASE}
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def missed(engine: Engine, store: FileStore, seeded: SeededCrops) -> list[int]:
    """Three posts the detector missed, beside the seeded crops (whose 128 px sets the hand crops' size)."""
    add_missed_post(engine, store, 1, outcome="no_face")
    add_missed_post(
        engine, store, 2, outcome="face_too_small", detail="largest face 40 px < --min-face 43 px"
    )
    add_missed_post(engine, store, 3, label="sad", outcome="no_face", size=(300, 200))
    return [1, 2, 3]


@pytest.fixture
def client(engine: Engine, settings: Settings, missed: list[int]) -> Iterator[TestClient]:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


def _post(client: TestClient, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post(path, json=body, headers={**SAME_ORIGIN, **headers})


def _counts(engine: Engine) -> tuple[int, int]:
    with session_scope(engine) as session:
        crops = session.scalar(select(func.count()).select_from(Crop))
        events = session.scalar(select(func.count()).select_from(ReviewEvent))
    return int(crops or 0), int(events or 0)


def test_the_queue_the_original_and_a_saved_square_then_undo(
    client: TestClient, engine: Engine, store: FileStore
) -> None:
    posts = _post(client, "/api/manual/next", {"count": 10}).json()["posts"]
    assert [post["id"] for post in posts] == [2, 1, 3]
    assert posts[0]["reason"] == "face_too_small"
    assert posts[2]["label"] == "sad"
    original = client.get(posts[2]["original"])
    assert original.status_code == 200
    assert original.headers["content-type"] == "image/png"
    with session_scope(engine) as session:
        post = session.get(Post, 3)
        assert post is not None
        assert post.file_relpath is not None
        assert original.content == store.abspath(post.file_relpath).read_bytes()
    candidates = client.get(posts[2]["candidates"]).json()
    assert (candidates["width"], candidates["height"], candidates["min_side"]) == (300, 200, 64)
    assert candidates["candidates"] == []  # no_face: nothing to pick

    saved = _post(
        client, "/api/manual/crop", {"post_id": 3, "x": 100, "y": 0, "size": 200}, **{"X-Reviewer": "bob"}
    )
    assert saved.status_code == 200, saved.text
    item = saved.json()["item"]
    assert (item["detector"], item["state"], item["label"], item["crop_box"]) == (
        "manual",
        "accepted",
        "sad",
        [100, 0, 200],
    )
    assert item["last_event"]["reviewer"] == "bob"
    assert client.get(item["image"]).status_code == 200
    assert [post["id"] for post in _post(client, "/api/manual/next", {}).json()["posts"]] == [2]
    undone = _post(client, "/api/undo", {}, **{"X-Reviewer": "bob"}).json()
    assert [(r["crop_id"], r["state_after"]) for r in undone["results"]] == [(item["id"], "rejected")]
    assert 3 in [post["id"] for post in _post(client, "/api/manual/next", {"count": 5}).json()["posts"]]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"post_id": 3, "x": 200, "y": 0, "size": 150}, 400, "reaches outside the 300x200 picture"),
        ({"post_id": 3, "x": 0, "y": -5, "size": 150}, 400, "reaches outside"),
        ({"post_id": 3, "x": 0, "y": 0, "size": 40}, 400, "under the minimum 64 px"),
        ({"post_id": 99, "x": 0, "y": 0, "size": 100}, 404, "post 99: no such post"),
        ({"post_id": 3, "x": 1.5, "y": 0, "size": 100}, 400, "expected a whole number"),
        ({"post_id": 3, "x": True, "y": 0, "size": 100}, 400, "expected a whole number"),
        ({"post_id": 3, "x": 10**30, "y": 0, "size": 100}, 400, "expected a whole number"),
        ({"post_id": 3, "x": "1e3", "y": 0, "size": 100}, 400, "expected a whole number"),
        ({"post_id": 0, "x": 0, "y": 0, "size": 100}, 400, "expected a post id"),
        ({"post_id": 2**63, "x": 0, "y": 0, "size": 100}, 400, "expected a post id"),
        ({"post_id": [3], "x": 0, "y": 0, "size": 100}, 400, "expected a post id"),
        ({"x": 0, "y": 0, "size": 100}, 400, "expected a post id"),
    ],
)
def test_bad_squares_get_a_one_line_error_and_write_nothing(
    client: TestClient, engine: Engine, body: dict[str, Any], status: int, message: str
) -> None:
    before = _counts(engine)
    response = _post(client, "/api/manual/crop", body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "\n" not in response.json()["error"]
    assert _counts(engine) == before


def test_a_store_that_cannot_take_the_crop_is_a_one_line_500(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileStore, "put_bytes", disk_full)
    before = _counts(engine)
    response = _post(client, "/api/manual/crop", {"post_id": 3, "x": 100, "y": 0, "size": 200})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert "cannot write crops into" in error
    assert "No space left on device" in error
    assert "\n" not in error
    assert _counts(engine) == before


@pytest.mark.parametrize(
    "post_path",
    ["0", "-1", "99", "1e3", "%D9%A1", "99999999999999999999", "..%2f..%2fetc%2fpasswd", "1%00", "%2e%2e"],
)
def test_hostile_post_ids_are_404(client: TestClient, post_path: str) -> None:
    for what in ("original", "candidates"):
        response = client.get(f"/api/posts/{post_path}/{what}")
        assert response.status_code == 404, (post_path, what)
        assert "error" in response.json()


def test_a_post_whose_recorded_path_is_not_a_store_path_is_404(client: TestClient, engine: Engine) -> None:
    with session_scope(engine) as session:
        session.execute(update(Post).where(Post.id == 1).values(file_relpath="../../../etc/passwd"))
    response = client.get("/api/posts/1/original")
    assert response.status_code == 404
    assert "not a path of the store" in response.json()["error"]


def test_saving_needs_the_page_origin_and_in_token_mode_a_login(
    engine: Engine, settings: Settings, missed: list[int]
) -> None:
    body = {"post_id": 1, "x": 0, "y": 0, "size": 100}
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with TestClient(app, base_url=BASE) as client:
        assert client.post("/api/manual/crop", json=body).status_code == 403  # no Origin
        assert (
            client.post("/api/manual/crop", json=body, headers={"Origin": "http://evil.test"}).status_code
            == 403
        )
    assert _counts(engine)[1] == 0
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice", token=TOKEN))
    with TestClient(app, base_url="http://192.168.1.20:8765") as client:
        for path in ("/api/posts/1/original", "/api/posts/1/candidates"):
            assert client.get(path).status_code == 401, path
        assert (
            client.post(
                "/api/manual/next", json={}, headers={"Origin": "http://192.168.1.20:8765"}
            ).status_code
            == 401
        )
        assert client.post("/api/manual/crop", json=body).status_code == 401
        assert _counts(engine)[1] == 0
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/posts/1/original", headers=bearer).status_code == 200
        saved = client.post("/api/manual/crop", json=body, headers=bearer)
        assert saved.status_code == 200, saved.text
        assert saved.json()["item"]["last_event"]["reviewer"] == "alice"
