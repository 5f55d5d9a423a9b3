"""Per-reviewer tokens: the token, not the client, says who decides; reserved names are the CLI's own."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from review_testdata import LiveServer, SeededCrops
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from animexpr.cli import app as cli_app
from animexpr.config import Settings
from animexpr.curate.review import ReservedReviewer, ReviewerTokens, ReviewQueue
from animexpr.curate.review_app import SESSION_COOKIE, ReviewAppConfig, create_app
from animexpr.curate.review_csv import import_csv
from animexpr.db.models import Reviewer, ReviewEvent, ReviewLease
from animexpr.db.session import session_scope

runner = CliRunner()


def _events(engine: Engine) -> list[tuple[int, str, str]]:
    with session_scope(engine) as session:
        rows = session.execute(select(ReviewEvent.crop_id, ReviewEvent.reviewer, ReviewEvent.decision))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _cli(home: Path, *args: str) -> tuple[int, str, str, BaseException | None]:
    result = runner.invoke(cli_app, ["--home", str(home), "review", *args], env={"ANIMEXPR_REVIEW_TOKEN": ""})
    return result.exit_code, result.stdout, result.stderr, result.exception


def test_the_token_names_the_reviewer_and_the_header_is_ignored(
    engine: Engine, settings: Settings, seeded: SeededCrops, tmp_path: Path
) -> None:
    tokens = ReviewerTokens(engine)
    alice, _ = tokens.add("alice")
    bob, _ = tokens.add("bob")
    # A CSV import the page must not be able to undo by calling itself csv-import.
    imported = tmp_path / "import.csv"
    imported.write_text("crop_id,state\n" + "".join(f"{c},accepted\n" for c in seeded.ids[:3]))
    import_csv(ReviewQueue(engine, settings.class_names), imported)
    app = create_app(engine, settings, ReviewAppConfig(reviewer="server"))
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as http:
        as_alice = {"Authorization": f"Bearer {alice}", "X-Reviewer": "csv-import"}
        as_bob = {"Authorization": f"Bearer {bob}", "X-Reviewer": "alice"}
        assert http.get("/api/config").status_code == 401  # token mode: no token, no answer
        assert http.get("/api/config", headers=as_alice).json()["reviewer"] == "alice"
        assert http.post("/api/undo", json={}, headers=as_alice).json()["results"] == []
        leased = http.post("/api/next", json={"count": 1}, headers=as_alice).json()["items"][0]["id"]
        # Bob naming himself alice does not get past her lease.
        conflict = http.post("/api/decide", json={"crop_id": leased, "decision": "reject"}, headers=as_bob)
        assert conflict.status_code == 409
        assert "alice" in conflict.json()["error"]
        decided = http.post("/api/decide", json={"crop_id": leased, "decision": "reject"}, headers=as_alice)
        assert decided.json()["result"]["reviewer"] == "alice"
        http.post("/api/next", json={"count": 2}, headers=as_bob)
    with session_scope(engine) as session:
        assert set(session.scalars(select(ReviewLease.reviewer))) == {"bob"}
    assert [(reviewer, decision) for _, reviewer, decision in _events(engine)] == [
        ("csv-import", "accept"),
        ("csv-import", "accept"),
        ("csv-import", "accept"),
        ("alice", "reject"),
    ]


def test_login_cookie_belongs_to_the_reviewer_and_cannot_be_forged(
    engine: Engine, settings: Settings, seeded: SeededCrops
) -> None:
    tokens = ReviewerTokens(engine)
    bob, _ = tokens.add("bob")
    app = create_app(engine, settings, ReviewAppConfig(reviewer="server"))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, follow_redirects=False) as http:
        origin = {"Origin": server.url}
        login = http.post("/login", data={"token": bob}, headers=origin)
        assert login.status_code == 303
        cookie = http.cookies[SESSION_COOKIE]
        assert bob not in cookie
        assert "HttpOnly" in login.headers["set-cookie"]
        assert http.get("/api/config", headers={"X-Reviewer": "alice"}).json()["reviewer"] == "bob"
        name_hex, _, mac = cookie.partition(".")
        for forged in (f"{b'alice'.hex()}.{mac}", f"{name_hex}.{'0' * 64}", name_hex, "x.y"):
            with httpx.Client(base_url=server.url, cookies={SESSION_COOKIE: forged}) as stranger:
                assert stranger.get("/api/config").status_code == 401, forged
        # A new token for bob ends the old token and the session made with it, in the running server.
        new_bob, replaced = tokens.add("bob")
        assert replaced
        assert http.get("/api/config").status_code == 401
        assert http.get("/api/config", headers={"Authorization": f"Bearer {bob}"}).status_code == 401
        assert http.get("/api/config", headers={"Authorization": f"Bearer {new_bob}"}).status_code == 200
        assert tokens.remove("bob")
        assert http.get("/api/config", headers={"Authorization": f"Bearer {new_bob}"}).status_code == 401


def test_the_shared_token_logs_in_as_the_servers_reviewer(
    engine: Engine, settings: Settings, seeded: SeededCrops
) -> None:
    shared = "a-long-enough-shared-secret"
    app = create_app(engine, settings, ReviewAppConfig(reviewer="carol", token=shared))
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as http:
        headers = {"Authorization": f"Bearer {shared}", "X-Reviewer": "dave"}
        assert http.get("/api/config", headers=headers).json()["reviewer"] == "carol"


def test_reserved_names_cannot_be_taken_by_the_page(
    engine: Engine, settings: Settings, seeded: SeededCrops, home: Path
) -> None:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as http:
        for name in ("csv-import", "bulk-accept"):
            for response in (
                http.get("/api/config", headers={"X-Reviewer": name}),
                http.post("/api/undo", json={}, headers={"X-Reviewer": name, "Origin": server.url}),
            ):
                assert response.status_code == 403
                assert "kept for the command line" in response.json()["error"]
        assert http.get("/api/config", headers={"X-Reviewer": "erin"}).json()["reviewer"] == "erin"
    with pytest.raises(ReservedReviewer):
        create_app(engine, settings, ReviewAppConfig(reviewer="bulk-accept"))
    code, _, _, exception = _cli(home, "add-reviewer", "csv-import")
    assert code == 1
    assert isinstance(exception, ReservedReviewer)
    code, _, _, exception = _cli(home, "--reviewer", "csv-import", "--port", "0")
    assert isinstance(exception, ReservedReviewer)


def test_add_list_and_remove_reviewers_from_the_command_line(
    home: Path, engine: Engine, seeded: SeededCrops
) -> None:
    code, stdout, stderr, _ = _cli(home, "add-reviewer", "alice")
    assert code == 0, stderr
    token = stdout.strip()
    assert len(token) >= 40
    assert "\n" not in token
    assert "added reviewer alice" in stderr
    with session_scope(engine) as session:
        stored = session.get(Reviewer, "alice")
        assert stored is not None
        assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert token not in str(session.execute(select(Reviewer.__table__)).all())
    code, stdout, stderr, _ = _cli(home, "add-reviewer", "alice")
    assert "replaced the token of reviewer alice" in stderr
    assert stdout.strip() != token
    code, stdout, _, _ = _cli(home, "reviewers")
    assert "alice" in stdout
    code, stdout, _, _ = _cli(home, "remove-reviewer", "alice")
    assert "removed the token of reviewer alice" in stdout
    code, _, _, exception = _cli(home, "remove-reviewer", "alice")
    assert code == 1
    assert "no reviewer named 'alice'" in str(exception)
    code, stdout, _, _ = _cli(home, "reviewers")
    assert "no reviewer has a token" in stdout


def test_any_reviewer_token_turns_token_mode_on(
    engine: Engine, settings: Settings, seeded: SeededCrops
) -> None:
    with LiveServer(create_app(engine, settings, ReviewAppConfig(reviewer="alice"))) as server:
        assert httpx.get(server.url + "/api/config").json()["reviewer_from_token"] is False
    ReviewerTokens(engine).add("alice")
    with LiveServer(create_app(engine, settings, ReviewAppConfig(reviewer="alice"))) as server:
        assert httpx.get(server.url + "/api/config").status_code == 401
