"""Hostile input against a real review server over HTTP: every answer is a 4xx with a one-line JSON error,
nothing reaches the log as a traceback, and a huge body is refused after little more than the limit."""

from __future__ import annotations

import json
import logging
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from review_testdata import LiveServer, SeededCrops
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from animexpr.config import Settings
from animexpr.curate.review import ReviewerTokens
from animexpr.curate.review_app import MAX_BODY_BYTES, ReviewAppConfig, create_app

NESTED = "[" * 100_000
# Numbers as JSON text: beyond 64 bits, beyond float, beyond Python's int-parsing digit limit, not numbers.
HOSTILE_INTEGERS = [
    str(2**64),
    str(-(2**70)),
    "1" + "0" * 400,
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "9" * 4400,
    '"99999999999999999999999"',
    '"\\u00b2"',  # superscript two: str.isdigit() says yes, int() says no
    '"\\u0663"',  # Arabic-Indic three: int() takes it
    '"1_0"',
    "[[[[[[]]]]]]",
    NESTED,
]
HOSTILE_IDS = [*HOSTILE_INTEGERS, str(2**31), "0", "-1"]
HOSTILE_SCORES = ["1" + "0" * 400, "1e999", "NaN", "-Infinity", '"1e999"', '"\\u0663"', '"\\u00b2"', NESTED]
HOSTILE_PATH_IDS = [str(2**64), str(2**31), "1" + "0" * 30, "9" * 5000, "²", "٣", "1_0", "-1", "0"]
HOSTILE_QUERY_NUMBERS = [str(2**64), "9" * 5000, "²", "٣", "1_0", "-1", "1e999"]


def hostile_bodies() -> Iterator[tuple[str, str]]:
    """(endpoint, raw JSON body) for every number each POST endpoint reads, and for the body itself."""
    for value in HOSTILE_IDS:
        yield "/api/next", f'{{"count": {value}}}'
        yield "/api/next", f'{{"exclude": [{value}]}}'
        yield "/api/decide", f'{{"crop_id": {value}, "decision": "accept"}}'
        yield "/api/grid", f'{{"accept": [{value}]}}'
        yield "/api/grid", f'{{"reject": [1, {value}]}}'
        yield "/api/renew", f'{{"crop_ids": [{value}]}}'
    for value in HOSTILE_INTEGERS:
        for name in ("min_size", "max_size", "cluster"):
            yield "/api/next", f'{{"filter": {{"{name}": {value}}}}}'
        yield "/api/next", f'{{"filter": {value}}}'
        yield "/api/next", f'{{"order": {value}}}'
        yield "/api/decide", f'{{"crop_id": 1, "decision": "relabel", "label": {value}}}'
    for value in HOSTILE_SCORES:
        for name in ("min_score", "max_score"):
            yield "/api/next", f'{{"filter": {{"{name}": {value}}}}}'
    for endpoint in ("/api/next", "/api/decide", "/api/grid", "/api/undo", "/api/renew"):
        yield endpoint, NESTED
        yield endpoint, "1" + "0" * 400
        yield endpoint, '"\\ud800"'


@dataclass
class Captured:
    records: list[logging.LogRecord]

    def problems(self) -> list[str]:
        return [
            record.getMessage()
            for record in self.records
            if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage()
        ]


@pytest.fixture
def captured_log() -> Iterator[Captured]:
    """Everything logged by the server: uvicorn's own loggers do not propagate to the root logger."""
    captured = Captured([])

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "animexpr")]
    for logger in loggers:
        logger.addHandler(handler)
    yield captured
    for logger in loggers:
        logger.removeHandler(handler)


def assert_json_refusal(response: httpx.Response, what: str) -> None:
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text[:200]}"
    error = response.json()["error"]
    assert isinstance(error, str), what
    assert error, what
    assert "\n" not in error, what
    assert len(error) < 300, what


def test_hostile_numbers_and_bodies_get_a_4xx_and_no_traceback(
    engine: Engine, settings: Settings, seeded: SeededCrops, captured_log: Captured
) -> None:
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice"))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        headers = {"Origin": server.url, "Content-Type": "application/json"}
        sent = 0
        for endpoint, body in hostile_bodies():
            response = http.post(endpoint, content=body.encode(), headers=headers)
            assert_json_refusal(response, f"{endpoint} {body[:60]}")
            sent += 1
        for crop_id in HOSTILE_PATH_IDS:
            for suffix in ("", "/image", "/source"):
                path = f"/api/crops/{crop_id}{suffix}"
                assert_json_refusal(http.get(path), path[:60])
                sent += 1
        for limit in HOSTILE_QUERY_NUMBERS:
            assert_json_refusal(http.get("/api/history", params={"limit": limit}), f"limit={limit[:20]}")
            sent += 1
        weird_name = {b"X-Reviewer": "é-böse".encode()}
        assert_json_refusal(http.get("/api/config", headers=weird_name), "non-ASCII X-Reviewer")
        sent += 1
    assert sent > 250
    assert captured_log.problems() == []


def test_non_ascii_tokens_get_a_4xx_and_a_non_ascii_server_token_can_log_in(
    engine: Engine, settings: Settings, seeded: SeededCrops, captured_log: Captured
) -> None:
    token = "пароль-для-обзора-лиц"  # the server's shared token is not ASCII
    ReviewerTokens(engine).add("bob")  # token mode also asks the database for reviewers' own tokens
    app = create_app(engine, settings, ReviewAppConfig(reviewer="alice", token=token))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, follow_redirects=False) as http:
        origin = {"Origin": server.url}
        for wrong in ("é".encode("latin-1"), "日本語".encode(), b"\xff\xfe", "пароль".encode(), b"x" * 2000):
            response = http.get("/api/config", headers={b"Authorization": b"Bearer " + wrong})
            assert_json_refusal(response, f"bearer {wrong[:20]!r}")
            assert response.status_code == 401
            login = http.post("/login", content=b"token=" + wrong, headers=origin)
            assert login.status_code == 401, wrong[:20]
            assert "Wrong token" in login.text
        for form in (b"token=%C3%A9", b"token=%E6%97%A5", b"token=%ED%A0%80", b"token=%FF", b"token=%"):
            login = http.post("/login", content=form, headers=origin)  # percent-encoded, as browsers send
            assert login.status_code == 401, form
        bearer = http.get("/api/config", headers={b"Authorization": b"Bearer " + token.encode()})
        assert bearer.status_code == 200
        assert bearer.json()["reviewer"] == "alice"
        login = http.post("/login", data={"token": token}, headers=origin)
        assert login.status_code == 303
        assert http.get("/api/config").json()["reviewer"] == "alice"
        huge_login = http.post("/login", content=b"token=" + b"a" * 100_000, headers=origin)
        assert_json_refusal(huge_login, "a 100 kB login form")
        assert huge_login.status_code == 413
    assert captured_log.problems() == []


class BodyCounter:
    """ASGI wrapper that counts the request body bytes the app took from the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.body_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.body_bytes += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


def send_huge_body(port: int, total: int, chunked: bool) -> tuple[int, bytes]:
    """POST up to `total` bytes, stopping as soon as the server answers; (bytes sent, what came back)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = (
        f"POST /api/next HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    piece = b" " * 65536
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(5)
        connection.sendall(head)
        try:
            while sent < total and not select.select([connection], [], [], 0)[0]:
                connection.sendall(frame)
                sent += len(piece)
            if sent >= total and chunked:
                connection.sendall(b"0\r\n\r\n")  # the whole body went in: end it and hear the answer
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading: what it answered is waiting in the socket
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    return sent, answer


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_400_mb_body_is_refused_after_reading_little_more_than_the_limit(
    engine: Engine, settings: Settings, seeded: SeededCrops, chunked: bool
) -> None:
    counter = BodyCounter(create_app(engine, settings, ReviewAppConfig(reviewer="alice")))
    with LiveServer(counter) as server:
        sent, answer = send_huge_body(server.port, 400 * 2**20, chunked)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:200]
    assert "too large" in json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    # The app read the limit and at most one more message of the stream (the server reads the socket up to
    # 256 KiB at a time); without chunk-by-chunk reading it took all 400 MB into memory before it looked.
    assert counter.body_bytes <= MAX_BODY_BYTES + 512 * 1024, counter.body_bytes
    assert sent < 64 * 2**20, sent  # the client was stopped too, not left sending 400 MB into the void
