"""Pinned downloads: a file known by its sha256, fetched once into the user cache.

The body is streamed in chunks into a temporary file beside its destination and hashed on the way; the file
is renamed into place only when its sha256 is the pinned one. A failed, interrupted or wrong download leaves
nothing behind, and its one-line error says which file to fetch from where, and where to put it, for a
machine that cannot download it itself. `ANIMEXPR_OFFLINE=1` refuses every download (for CI and air-gapped
machines), so that a missing file is reported at once instead of after a network timeout.

Imported by the commands that may download (never at the CLI's start-up): `requests` and rich's progress
bar are imported only when a download starts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from animexpr.config import user_cache_dir
from animexpr.errors import AnimexprError
from animexpr.store import atomic_write_chunks, sha256_file

log = logging.getLogger(__name__)

OFFLINE_ENV_VARIABLE = "ANIMEXPR_OFFLINE"
CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 30.0
# Between two chunks; a slow but live connection is never cut.
READ_TIMEOUT_S = 60.0


class DownloadError(AnimexprError):
    """A pinned file could not be fetched; nothing was kept. The message says how to get it by hand."""

    def __init__(self, pinned: PinnedFile, destination: Path, reasons: str) -> None:
        super().__init__(f"cannot get {pinned.what}: {reasons}. {how_to_get(pinned, destination)}")
        self.reasons = reasons  # why, without the advice


class ChecksumMismatchError(AnimexprError):
    """Bytes written for a pinned file do not have its sha256; nothing was kept."""

    def __init__(self, got: str, pinned: str) -> None:
        super().__init__(f"sha256 {got}, not the pinned one {pinned}")
        self.got = got


@dataclass(frozen=True)
class PinnedFile:
    """A file identified by its sha256, where it can be downloaded, and where it lives in the user cache."""

    what: str  # for messages: "the VGG19 weights"
    urls: tuple[str, ...]  # tried in this order
    sha256: str
    cache_name: str  # relative to the user cache folder
    size: int | None = None  # bytes, for the progress bar when the server does not say
    instead: str = ""  # another way to give the file, e.g. "pass --vgg-weights PATH"

    def cache_path(self, environ: Mapping[str, str] | None = None) -> Path:
        return user_cache_dir(environ) / self.cache_name


def how_to_get(pinned: PinnedFile, destination: Path) -> str:
    """What a user without a download does instead, as a sentence."""
    alternative = f", or {pinned.instead}" if pinned.instead else ""
    return (
        f"Download {pinned.urls[0]} (sha256 {pinned.sha256}) on a machine that can and put it at "
        f"{destination}{alternative}"
    )


def is_offline(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(OFFLINE_ENV_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def fetch_pinned(
    pinned: PinnedFile,
    destination: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    timeout_s: float | None = None,
    progress: bool = True,
) -> Path:
    """Download `pinned` to `destination` (default: its place in the user cache), checked; return that path.

    Each URL is tried in turn; `DownloadError` when none gave the pinned file. `timeout_s` replaces both
    the connect and the between-chunks timeouts. Processes asking for the same file at once (the ranks of
    a torchrun job) download it once: the others wait, then find it in place.
    """
    target = destination if destination is not None else pinned.cache_path(environ)
    if is_offline(environ):
        raise DownloadError(pinned, target, f"{OFFLINE_ENV_VARIABLE} forbids downloads")
    timeouts = (timeout_s or CONNECT_TIMEOUT_S, timeout_s or READ_TIMEOUT_S)
    try:
        return _fetch_once(pinned, target, chunk_bytes, timeouts, progress)
    except OSError as exc:  # the cache cannot be written: a file in the way, no permission, a full disk
        reason = f"cannot write {target.parent} ({exc.strerror or exc})"
        raise DownloadError(pinned, target, reason) from exc


def _fetch_once(
    pinned: PinnedFile, target: Path, chunk_bytes: int, timeouts: tuple[float, float], progress: bool
) -> Path:
    """Each URL in turn, under the lock beside `target`; DownloadError naming every failure."""
    failures = []
    with one_at_a_time(target):
        if target.is_file() and sha256_file(target) == pinned.sha256:
            return target  # another process fetched it while this one waited
        for url in pinned.urls:
            try:
                _download(url, pinned, target, chunk_bytes, timeouts, progress)
            except ChecksumMismatchError as exc:
                failures.append(f"downloading {url} gave {exc}; nothing was kept")
            except _TransferFailed as exc:
                failures.append(f"downloading {url} failed ({exc})")
            else:
                log.info("downloaded %s into %s", pinned.what, target)
                return target
    raise DownloadError(pinned, target, "; ".join(failures))


@contextlib.contextmanager
def one_at_a_time(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on a file beside `target` (the OS drops it when its process dies), so that
    processes making `target` at the same moment make it once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent downloads still each rename a whole file, only wastefully
        yield
        return
    with (target.parent / f".{target.name}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _TransferFailed(Exception):
    """The connection or the server failed; the message is the reason in a few words."""


def _download(
    url: str,
    pinned: PinnedFile,
    target: Path,
    chunk_bytes: int,
    timeouts: tuple[float, float],
    progress: bool,
) -> None:
    import requests

    log.info("downloading %s from %s", pinned.what, url)
    response: requests.Response | None = None
    total: int | None = None
    received = 0  # bytes handed to the file so far

    def count(advance: Callable[[int], None], size: int) -> None:
        nonlocal received
        received += size
        advance(size)

    try:
        with requests.get(url, stream=True, timeout=timeouts) as response:
            if response.status_code != 200:
                raise _TransferFailed(f"HTTP {response.status_code} {response.reason}")
            total = _announced_size(response.headers) or pinned.size
            with _progress_bar(target.name, total, progress) as advance:
                chunks = _counted(response.iter_content(chunk_bytes), functools.partial(count, advance))
                write_verified(chunks, target, pinned.sha256)
    except requests.exceptions.ChunkedEncodingError as exc:  # urllib3 checks the announced length
        received = response.raw.tell() if response is not None else 0  # bytes read from the socket
        of_total = f" of {total:,}" if total else ""
        raise _TransferFailed(f"the connection closed after {received:,}{of_total} bytes") from exc
    except requests.ConnectTimeout as exc:
        raise _TransferFailed(f"no connection within {timeouts[0]:g} s") from exc
    except requests.Timeout as exc:
        raise _TransferFailed(f"no data for {timeouts[1]:g} s") from exc
    except requests.RequestException as exc:
        if _read_timed_out(exc):  # a stall after the headers: requests raises ConnectionError for it
            raise _TransferFailed(f"no data for {timeouts[1]:g} s after {received:,} bytes") from exc
        raise _TransferFailed(_root_cause(exc)) from exc


def _read_timed_out(exc: BaseException) -> bool:
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def write_verified(chunks: Iterable[bytes], destination: Path, sha256: str) -> Path:
    """Write `chunks` to `destination` only if together they have `sha256`; hashed as they are written.

    They go to a temporary file in the destination's folder (mode as the umask says), which is fsynced and
    renamed into place, or removed on a mismatch (`ChecksumMismatchError`) and on any error from `chunks`.
    """
    digest = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in chunks:
            digest.update(chunk)
            yield chunk

    def verify() -> None:
        if digest.hexdigest() != sha256:
            raise ChecksumMismatchError(digest.hexdigest(), sha256)

    atomic_write_chunks(destination, hashed(), verify)
    return destination


def _counted(chunks: Iterable[bytes], advance: Callable[[int], None]) -> Iterator[bytes]:
    for chunk in chunks:
        advance(len(chunk))
        yield chunk


def _announced_size(headers: Mapping[str, str]) -> int | None:
    # A compressed body's Content-Length is not the size of the file that requests hands over.
    if headers.get("Content-Encoding", "identity") != "identity":
        return None
    length = headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


@contextlib.contextmanager
def _progress_bar(name: str, total: int | None, shown: bool) -> Iterator[Callable[[int], None]]:
    """Bytes received, on stderr: a live bar on a terminal, a plain line every 30 s in a log."""
    if not shown:
        yield lambda _: None
        return
    from rich.progress import BarColumn, DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    from animexpr.cli_common import ProgressBars

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    received = 0

    def advance(count: int) -> None:
        nonlocal received
        received += count
        bars.update(f"download {name}", received, total)

    with ProgressBars(columns, transient=False) as bars:
        yield advance


def _root_cause(exc: BaseException) -> str:
    """The operating system's few words ("Connection refused") rather than urllib3's nested paragraph."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        pending += [item for item in linked if isinstance(item, BaseException)]
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
