"""The review app's HTTP API and its safety rules, via Starlette's test client and a real uvicorn server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from review_testdata import LiveServer, SeededCrops, review_events
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from animexpr.config import Settings
from animexpr.curate.review import ReviewError
from animexpr.curate.review_app import (
    SESSION_COOKIE,
    ReviewAppConfig,
    create_app,
    listen_warning,
)
from animexpr.db.models import Crop
from animexpr.db.session import session_scope
from animexpr.store import FileStore

BASE = "http://127.0.0.1:8765"
SAME_ORIGIN = {"Origin": BASE}
TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def client(engine: Engine, settings: Settings, seeded: SeededCrops) -> Iterator[TestClient]:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


@pytest.fixture
def token_client(engine: Engine, settings: Settings, seeded: SeededCrops) -> Iterator[TestClient]:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice", token=TOKEN))
    with TestClient(app, base_url="http://192.168.1.20:8765", follow_redirects=False) as test_client:
        yield test_client


def _post(client: TestClient, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post(path, json=body, headers={**SAME_ORIGIN, **headers})


def test_page_and_its_files_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert '<script type="module" src="/static/review.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/review.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/api/decide" in script.text
    assert client.get("/static/review.css").status_code == 200
    for path in (
        "/static/index.html",
        "/static/..%2f..%2fconfig.py",
        "/static/%2e%2e/review.py",
        "/etc/passwd",
    ):
        assert client.get(path).status_code == 404, path


def test_config_names_the_classes_in_settings_order(client: TestClient, settings: Settings) -> None:
    config = client.get("/api/config").json()
    assert config["classes"] == list(settings.class_names)
    assert config["reviewer"] == "alice"
    assert config["default_order"] == "worst-first"
    assert client.get("/api/config", headers={"X-Reviewer": "bob"}).json()["reviewer"] == "bob"
    refused = client.get("/api/config", headers={"X-Reviewer": "bob; drop table"})
    assert refused.status_code == 400
    assert "reviewer name" in refused.json()["error"]


def test_next_decide_undo_through_the_api(client: TestClient, engine: Engine, seeded: SeededCrops) -> None:
    items = _post(client, "/api/next", {"count": 3})
    assert items.status_code == 200
    first, second, third = (item["id"] for item in items.json()["items"])
    accepted = _post(client, "/api/decide", {"crop_id": first, "decision": "accept"}).json()["result"]
    assert (accepted["crop_id"], accepted["state_after"], accepted["changed"]) == (first, "accepted", True)
    _post(client, "/api/decide", {"crop_id": second, "decision": "reject"})
    relabel = _post(client, "/api/decide", {"crop_id": third, "decision": "relabel", "label": "sad"})
    assert relabel.json()["result"]["label_after"] == "sad"
    assert [(e.crop_id, e.decision, e.reviewer) for e in review_events(engine)] == [
        (first, "accept", "alice"),
        (second, "reject", "alice"),
        (third, "relabel" if seeded.labels[third] != "sad" else "accept", "alice"),
    ]
    undone = _post(client, "/api/undo", {}).json()
    assert [r["crop_id"] for r in undone["results"]] == [third]
    assert undone["items"][0]["state"] == "pending"
    assert undone["items"][0]["label"] == seeded.labels[third]
    history = client.get("/api/history").json()["items"]
    assert [item["id"] for item in history] == [first, second]


def test_grid_page_and_stats(client: TestClient, engine: Engine) -> None:
    page = [item["id"] for item in _post(client, "/api/next", {"count": 6}).json()["items"]]
    saved = _post(client, "/api/grid", {"accept": page[1:], "reject": page[:1]}).json()
    assert saved["skipped"] == {}
    assert sorted(r["crop_id"] for r in saved["results"]) == sorted(page)
    stats = client.get("/api/stats").json()
    assert stats["total"]["accepted"] == 5
    assert stats["total"]["rejected"] == 1
    assert stats["reviewer"] == "alice"


def test_a_crop_on_another_screen_is_a_conflict(client: TestClient) -> None:
    bobs = _post(client, "/api/next", {"count": 1}, **{"X-Reviewer": "bob"}).json()["items"][0]["id"]
    alices = [item["id"] for item in _post(client, "/api/next", {"count": 100}).json()["items"]]
    assert bobs not in alices
    conflict = _post(client, "/api/decide", {"crop_id": bobs, "decision": "reject"})
    assert conflict.status_code == 409
    assert "bob" in conflict.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"crop_id": 999999, "decision": "accept"}, 404, "no crop"),
        ({"crop_id": "1", "decision": "accept"}, 400, "crop_id"),
        ({"crop_id": 1, "decision": "burn"}, 400, "decision"),
        ({"crop_id": 1, "decision": "relabel", "label": "../../etc"}, 400, "unknown class"),
    ],
)
def test_bad_decisions_get_a_clear_error(
    client: TestClient, body: dict[str, Any], status: int, message: str
) -> None:
    response = _post(client, "/api/decide", body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_bad_requests_are_refused(client: TestClient) -> None:
    bad_json = client.post(
        "/api/next", content=b"{", headers={**SAME_ORIGIN, "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    form = client.post("/api/decide", data={"crop_id": "1"}, headers=SAME_ORIGIN)
    assert form.status_code == 415
    assert _post(client, "/api/next", {"filter": {"min_score": "high"}}).status_code == 400
    assert _post(client, "/api/next", {"count": -3}).status_code == 400
    assert _post(client, "/api/next", {"order": "random"}).status_code == 400
    assert client.get("/api/decide").status_code == 405


def test_state_changes_need_the_pages_own_origin(client: TestClient, engine: Engine) -> None:
    body = {"crop_id": 1, "decision": "reject"}
    assert client.post("/api/decide", json=body).status_code == 403
    assert client.post("/api/decide", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/decide", json=body, headers={"Origin": "null"}).status_code == 403
    assert review_events(engine) == []


def test_without_a_token_only_loopback_names_are_answered(client: TestClient) -> None:
    # A page on another site that rebinds its DNS name to 127.0.0.1 still sends its own Host.
    assert client.get("/api/config", headers={"Host": "rebind.evil.example:8765"}).status_code == 421
    assert client.get("/api/config", headers={"Host": "localhost:8765"}).status_code == 200
    assert client.get("/api/config", headers={"Host": "[::1]:8765"}).status_code == 200


def test_token_login_sets_a_cookie_that_is_not_the_token(token_client: TestClient) -> None:
    assert token_client.get("/api/config").status_code == 401
    assert token_client.get("/api/crops/1/image").status_code == 401
    page = token_client.get("/")
    assert page.status_code == 303
    assert page.headers["location"] == "/login"
    assert "token" in token_client.get("/login").text
    origin = {"Origin": "http://192.168.1.20:8765"}
    wrong = token_client.post("/login", data={"token": "guess"}, headers=origin)
    assert wrong.status_code == 401
    assert "Wrong token" in wrong.text
    assert token_client.post("/login", data={"token": TOKEN}).status_code == 403  # no Origin
    login = token_client.post("/login", data={"token": TOKEN}, headers=origin)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert token_client.cookies[SESSION_COOKIE].startswith(b"alice".hex() + ".")
    assert token_client.get("/api/config").status_code == 200
    assert token_client.get("/").status_code == 200
    assert token_client.post("/api/next", json={}, headers=origin).status_code == 200
    assert (
        token_client.post("/api/next", json={}).status_code == 403
    )  # cookie alone is not enough for a change


def test_bearer_token_works_for_scripts(token_client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert token_client.get("/api/stats", headers=auth).status_code == 200
    assert token_client.post("/api/next", json={"count": 2}, headers=auth).status_code == 200
    assert (
        token_client.post("/api/next", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )


def test_listen_policy() -> None:
    assert listen_warning("127.0.0.1", None) is None
    assert listen_warning("::1", None) is None
    with pytest.raises(ReviewError, match="add-reviewer"):
        listen_warning("0.0.0.0", None)
    assert listen_warning("0.0.0.0", None, reviewer_tokens=True) is not None
    with pytest.raises(ReviewError, match="12 characters"):
        listen_warning("0.0.0.0", "short")
    warning = listen_warning("0.0.0.0", TOKEN)
    assert warning is not None
    assert "0.0.0.0" in warning


def test_images_come_by_crop_id_from_a_real_server(
    live_server: LiveServer, engine: Engine, store: FileStore, seeded: SeededCrops
) -> None:
    crop_id = seeded.ids[0]
    with session_scope(engine) as session:
        crop = session.get(Crop, crop_id)
        assert crop is not None
        crop_bytes = store.abspath(crop.file_relpath).read_bytes()
    with httpx.Client(base_url=live_server.url) as http:
        image = http.get(f"/api/crops/{crop_id}/image")
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        assert image.content == crop_bytes
        source = http.get(f"/api/crops/{crop_id}/source")
        assert source.headers["content-type"] == "image/jpeg"
        assert source.content[:3] == b"\xff\xd8\xff"
        assert http.get("/api/crops/999999/image").status_code == 404
        assert http.get("/api/crops/../../animexpr.sqlite3").status_code == 404
        item = http.get(f"/api/crops/{crop_id}").json()
        assert item["image"] == f"/api/crops/{crop_id}/image"
        assert item["box"][2] > 0
        # The real server path: a decision over HTTP lands in the database.
        decided = http.post(
            "/api/decide",
            json={"crop_id": crop_id, "decision": "reject"},
            headers={"Origin": live_server.url},
        )
        assert decided.status_code == 200
    with session_scope(engine) as session:
        crop = session.get(Crop, crop_id)
        assert crop is not None
        assert crop.state == "rejected"


def test_a_missing_file_is_a_clear_404(client: TestClient, engine: Engine, store: FileStore) -> None:
    with session_scope(engine) as session:
        crop = session.scalars(select(Crop).limit(1)).one()
        crop_id, relpath = crop.id, crop.file_relpath
    store.abspath(relpath).unlink()
    response = client.get(f"/api/crops/{crop_id}/image")
    assert response.status_code == 404
    assert "missing from the store" in response.json()["error"]


def test_an_empty_token_is_no_token(engine: Engine, settings: Settings, seeded: SeededCrops) -> None:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice", token=""))
    with TestClient(app, base_url=BASE) as empty:
        refused = empty.post("/api/next", json={}, headers={"Authorization": "Bearer "})
        assert refused.status_code == 403  # no Origin, and an empty bearer is not a login
        assert empty.get("/api/config", headers={"Host": "192.168.1.20:8765"}).status_code == 421
