"""Pinned downloads against a real HTTP server on 127.0.0.1: checked, streamed, and all-or-nothing."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from animexpr.downloads import (
    OFFLINE_ENV_VARIABLE,
    DownloadError,
    PinnedFile,
    fetch_pinned,
)

BODY = bytes(range(256)) * 4096  # 1 MiB


@dataclass
class Behaviour:
    """What the server does with the next requests."""

    body: bytes = BODY
    status: int = 200
    send_only: int | None = None  # announce the whole body, send this many bytes, then hang up
    delay_s: float = 0.0  # before the body
    stall_s: float = 0.0  # after the part sent (send_only), before hanging up
    requests: int = 0


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up early is what tests do
            super().handle_error(request, client_address)


class FileServer:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        behaviour = self.behaviour

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                behaviour.requests += 1
                self.send_response(behaviour.status)
                self.send_header("Content-Length", str(len(behaviour.body)))
                self.end_headers()
                time.sleep(behaviour.delay_s)
                self.wfile.write(behaviour.body[: behaviour.send_only])
                self.wfile.flush()
                time.sleep(behaviour.stall_s)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/weights.bin"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def pinned(self, body: bytes = BODY) -> PinnedFile:
        return PinnedFile(
            what="the test weights",
            urls=(self.url,),
            sha256=hashlib.sha256(body).hexdigest(),
            cache_name="weights.bin",
            instead="pass --weights PATH",
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    running = FileServer()
    yield running
    running.close()


@pytest.fixture
def cache(tmp_path: Path) -> dict[str, str]:
    return {"ANIMEXPR_CACHE": str(tmp_path / "cache")}


def files_in(folder: Path) -> list[str]:
    """What a download left in a folder, less the lock files that serialise downloads (empty, kept)."""
    if not folder.exists():
        return []
    return sorted(name for name in os.listdir(folder) if not name.endswith(".lock"))


def _refused_url() -> str:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.bin"


def _error_of(pinned: PinnedFile, env: dict[str, str]) -> str:
    with pytest.raises(DownloadError) as caught:
        fetch_pinned(pinned, environ=env, timeout_s=5, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_good_download_lands_whole_with_the_umask_mode(
    server: FileServer, cache: dict[str, str], umask: int
) -> None:
    previous = os.umask(umask)
    try:
        path = fetch_pinned(server.pinned(), environ=cache, progress=False)
    finally:
        os.umask(previous)
    assert path == Path(cache["ANIMEXPR_CACHE"]) / "weights.bin"
    assert path.read_bytes() == BODY
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert files_in(path.parent) == ["weights.bin"]  # no temporary file left beside it


def test_a_body_with_another_sha256_leaves_nothing(server: FileServer, cache: dict[str, str]) -> None:
    server.behaviour.body = b"<html>a captive portal</html>"
    pinned = server.pinned(BODY)
    message = _error_of(pinned, cache)
    got = hashlib.sha256(server.behaviour.body).hexdigest()
    assert f"downloading {server.url} gave sha256 {got}, not the pinned one {pinned.sha256}" in message
    assert files_in(Path(cache["ANIMEXPR_CACHE"])) == []


def test_connection_refused_says_what_to_fetch_and_where_to_put_it(cache: dict[str, str]) -> None:
    url = _refused_url()
    pinned = PinnedFile(
        "the test weights", (url,), "0" * 64, "sub/weights.bin", instead="pass --weights PATH"
    )
    message = _error_of(pinned, cache)
    destination = Path(cache["ANIMEXPR_CACHE"]) / "sub" / "weights.bin"
    assert message == (
        f"cannot get the test weights: downloading {url} failed (Connection refused). Download {url} "
        f"(sha256 {'0' * 64}) on a machine that can and put it at {destination}, or pass --weights PATH"
    )


def test_an_interrupted_transfer_leaves_nothing(server: FileServer, cache: dict[str, str]) -> None:
    server.behaviour.send_only = 100_000  # of 1 MiB announced
    message = _error_of(server.pinned(), cache)
    closed = "the connection closed after 100,000 of 1,048,576 bytes"
    assert f"downloading {server.url} failed ({closed})" in message
    assert files_in(Path(cache["ANIMEXPR_CACHE"])) == []


def test_a_stall_after_the_headers_says_how_long_and_how_far(
    server: FileServer, cache: dict[str, str]
) -> None:
    server.behaviour.send_only, server.behaviour.stall_s = 100_000, 2.0
    with pytest.raises(DownloadError) as failure:
        fetch_pinned(server.pinned(), environ=cache, chunk_bytes=4096, timeout_s=0.5, progress=False)
    stalled = re.search(r"failed \(no data for 0\.5 s after ([\d,]+) bytes\)", str(failure.value))
    assert stalled is not None, failure.value
    assert 0 < int(stalled.group(1).replace(",", "")) <= 100_000
    assert files_in(Path(cache["ANIMEXPR_CACHE"])) == []


def test_a_cache_that_cannot_be_written_is_one_line(server: FileServer, tmp_path: Path) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    with pytest.raises(DownloadError) as failure:
        fetch_pinned(server.pinned(), environ={"ANIMEXPR_CACHE": str(in_the_way)}, progress=False)
    assert f"cannot write {in_the_way}" in str(failure.value)
    assert "\n" not in str(failure.value)


def test_an_http_error_is_named(server: FileServer, cache: dict[str, str]) -> None:
    server.behaviour.status = 404
    assert "failed (HTTP 404 Not Found)" in _error_of(server.pinned(), cache)


def test_the_next_url_is_tried_when_one_fails(server: FileServer, cache: dict[str, str]) -> None:
    pinned = replace(server.pinned(), urls=(_refused_url(), server.url))
    assert fetch_pinned(pinned, environ=cache, progress=False).read_bytes() == BODY


def test_offline_refuses_without_asking_the_server(server: FileServer, cache: dict[str, str]) -> None:
    message = _error_of(server.pinned(), cache | {OFFLINE_ENV_VARIABLE: "1"})
    assert f"{OFFLINE_ENV_VARIABLE} forbids downloads" in message
    assert server.behaviour.requests == 0
    fetch_pinned(server.pinned(), environ=cache | {OFFLINE_ENV_VARIABLE: "0"}, progress=False)
    assert server.behaviour.requests == 1


def test_the_cache_follows_animexpr_cache_then_xdg_then_home(server: FileServer, tmp_path: Path) -> None:
    pinned = server.pinned()
    home = tmp_path / "home"
    landed = fetch_pinned(pinned, environ={"XDG_CACHE_HOME": "", "HOME": str(home)}, progress=False)
    assert landed == home / ".cache" / "animexpr" / "weights.bin"  # empty XDG_CACHE_HOME means unset
    xdg = tmp_path / "xdg"
    landed = fetch_pinned(pinned, environ={"XDG_CACHE_HOME": str(xdg), "HOME": str(home)}, progress=False)
    assert landed == xdg / "animexpr" / "weights.bin"
    env = {"ANIMEXPR_CACHE": str(tmp_path / "mine"), "XDG_CACHE_HOME": str(xdg), "HOME": str(home)}
    assert fetch_pinned(pinned, environ=env, progress=False) == tmp_path / "mine" / "weights.bin"


def test_the_body_is_streamed_not_held_in_memory(server: FileServer, cache: dict[str, str]) -> None:
    body = os.urandom(24 << 20)  # allocated before tracing starts: the server's copy is not counted
    server.behaviour.body = body
    pinned = server.pinned(body)
    tracemalloc.start()
    try:
        fetch_pinned(pinned, environ=cache, chunk_bytes=64 << 10, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 << 20, f"peak {peak:,} bytes for a {len(body):,}-byte download"
    assert hashlib.sha256(pinned.cache_path(cache).read_bytes()).hexdigest() == pinned.sha256


def test_progress_goes_to_stderr_as_a_line_in_logs(
    server: FileServer, cache: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fetch_pinned(server.pinned(), environ=cache)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "download weights.bin" in captured.err
    assert "1.0/1.0 MB" in captured.err


def test_processes_asking_at_once_download_once(server: FileServer, cache: dict[str, str]) -> None:
    server.behaviour.delay_s = 0.3  # the second asks while the first is still downloading
    start = threading.Barrier(2)
    landed: list[Path] = []

    def fetch() -> None:
        start.wait()
        landed.append(fetch_pinned(server.pinned(), environ=cache, progress=False))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(landed) == 2
    assert landed[0] == landed[1]
    assert server.behaviour.requests == 1
