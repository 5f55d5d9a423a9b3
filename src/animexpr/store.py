"""The content-addressed file store in the home folder, with atomic writes.

A file is first written under a temporary name in its final folder, flushed and fsynced, then renamed into
place, so a crash leaves either the complete file or nothing (plus, at worst, a temporary file that
`FileStore.remove_stale_temporaries` cleans). Callers commit the database row only after `put_*` returned.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

AREAS = ("originals", "crops", "augmented", "snapshots")
FILE_AREAS = ("originals", "crops", "augmented")  # content-addressed; snapshots/ holds named folders
# The only extensions a stored file may have: the still-image types a post may be harvested as, and the
# PNGs the store writes itself.
FILE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif")
MD5_PATTERN = re.compile(r"[0-9a-f]{32}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# The one shape of path the store generates: AREA/KEY[:2]/KEY.EXT, KEY an md5 (originals only) or a sha256.
# Anything else handed to the store (a path from the database, a manifest or a server) is refused, so that no
# stored string can make it read or write outside its place.
_RELPATH_PATTERN = re.compile(
    rf"(?P<area>{'|'.join(FILE_AREAS)})/(?P<prefix>[0-9a-f]{{2}})/"
    rf"(?P<key>[0-9a-f]{{32}}|[0-9a-f]{{64}})\.(?P<ext>{'|'.join(FILE_EXTENSIONS)})"
)
TEMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20
_FSYNC_THREADS = 8  # fsync waits on the disk with the GIL released


@dataclass(frozen=True)
class StoredFile:
    relpath: str  # relative to the home folder, with forward slashes
    sha256: str
    size: int


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _create_temporary(folder: Path) -> tuple[int, str]:
    """A new, empty temporary file in `folder`, opened for writing: its descriptor and path.

    Its mode is what `open()` gives a new file, 0o666 less the umask (0o644 under the usual umask 022), set
    by the kernel as it creates the file; `tempfile.mkstemp` would make it 0o600, and the final file too.
    Nothing the store writes is a secret: API keys are never written, and reviewer tokens are kept as hashes
    in the database.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(8)}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue  # a name already taken: 64 random bits make this all but impossible
    raise FileExistsError(f"{folder}: no free temporary file name")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` never exists half-written."""
    atomic_write_chunks(path, [data])


def atomic_write_chunks(
    path: Path, chunks: Iterable[bytes], verify: Callable[[], None] | None = None
) -> None:
    """Write `chunks` to `path` so that `path` never exists half-written.

    They go to a temporary file in the same folder, fsynced and renamed into place; `verify` runs after the
    last chunk, before the rename: whatever it raises (like any error from `chunks`) leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = _create_temporary(path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify()
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_all(fds: Sequence[int]) -> None:
    """fsync several files at once: the filesystem commits concurrent fsyncs together, and waiting on the
    disk one file at a time costs more than making the file."""
    if len(fds) <= 1:
        for fd in fds:
            os.fsync(fd)
        return
    with ThreadPoolExecutor(max_workers=min(_FSYNC_THREADS, len(fds))) as pool:
        list(pool.map(os.fsync, fds))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class UnsafePathError(ValueError):
    """A path or key that is not of the shape the store generates itself."""


def _normalise_ext(ext: str) -> str:
    normalised = ext.lower().lstrip(".")
    if normalised not in FILE_EXTENSIONS:
        raise UnsafePathError(f"file extension {ext!r} is not one of {', '.join(FILE_EXTENSIONS)}")
    return normalised


def is_store_relpath(relpath: str) -> bool:
    """True when `relpath` has exactly the shape `FileStore.relpath_for` makes."""
    match = _RELPATH_PATTERN.fullmatch(relpath)
    if match is None or not match["key"].startswith(match["prefix"]):
        return False
    return match["area"] == "originals" or len(match["key"]) == 64


CORRUPT_FILE = "corrupt_file"  # the reason stages record for a stored file that fails its hash


class CorruptFileError(Exception):
    """A stored file is missing or no longer has its recorded hash; stages record it as CORRUPT_FILE."""

    reason = CORRUPT_FILE

    def __init__(self, relpath: str, problem: str) -> None:
        super().__init__(f"{relpath}: {problem}")
        self.relpath = relpath
        self.problem = problem


class FileStore:
    """Files under HOME/<area>/<key[:2]>/<key>.<ext>.

    The key is the sha256 of the content, or the post md5 for originals.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    def create_areas(self) -> None:
        for area in AREAS:
            (self.home / area).mkdir(parents=True, exist_ok=True)

    def relpath_for(self, area: str, key: str, ext: str) -> str:
        if area not in FILE_AREAS:
            raise UnsafePathError(f"unknown store area {area!r}")
        key_pattern = MD5_PATTERN if area == "originals" and len(key) == 32 else SHA256_PATTERN
        if not key_pattern.fullmatch(key):
            raise UnsafePathError(f"{key!r} is not a lowercase hex md5 or sha256")
        return f"{area}/{key[:2]}/{key}.{_normalise_ext(ext)}"

    def abspath(self, relpath: str) -> Path:
        """The file behind a store path; refuses any path the store would not have generated."""
        if not is_store_relpath(relpath):
            raise UnsafePathError(f"{relpath!r} is not a path of the store (AREA/ab/KEY.EXT)")
        return self.home.resolve() / relpath

    def put_bytes(self, area: str, data: bytes, ext: str) -> StoredFile:
        """Store `data` under its sha256; storing the same bytes twice keeps one file."""
        digest = sha256_bytes(data)
        return self._put(self.relpath_for(area, digest, ext), data, digest)

    def put_many(self, area: str, blobs: Sequence[tuple[bytes, str]]) -> list[StoredFile]:
        """Store several (data, ext) under their sha256 with one round of fsyncs instead of two per file.

        The guarantees of `put_bytes` hold for every file when this returns: each was written to a temporary,
        fsynced, renamed into place, and its folder fsynced. Grouping the fsyncs lets the filesystem commit
        its journal once for the batch (about 3x fewer milliseconds per small file on ext4).
        """
        stored: list[StoredFile] = []
        pending: list[tuple[int, str, Path]] = []  # (open descriptor, temporary, final path)
        root = self.home.resolve()  # once: relpath_for builds paths from a hex digest, inside the store
        try:
            for data, ext in blobs:
                digest = sha256_bytes(data)
                relpath = self.relpath_for(area, digest, ext)
                stored.append(StoredFile(relpath=relpath, sha256=digest, size=len(data)))
                path = root / relpath
                if path.exists() and path.stat().st_size == len(data) and sha256_file(path) == digest:
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, temp_name = _create_temporary(path.parent)
                pending.append((fd, temp_name, path))
                _write_all(fd, data)
            _fsync_all([fd for fd, _, _ in pending])
            for _, temp_name, path in pending:
                os.replace(temp_name, path)
        finally:
            for fd, temp_name, _ in pending:
                os.close(fd)
                Path(temp_name).unlink(missing_ok=True)  # only those a failure left before their rename
        folders = {path.parent for _, _, path in pending}
        with ThreadPoolExecutor(max_workers=_FSYNC_THREADS) as pool:
            list(pool.map(_fsync_directory, folders))
        return stored

    def put_original(self, md5: str, data: bytes, ext: str) -> StoredFile:
        """Store a Danbooru original under its post md5 (the caller has checked the md5)."""
        return self._put(self.relpath_for("originals", md5, ext), data, sha256_bytes(data))

    def read_verified(self, relpath: str, sha256: str) -> bytes:
        """The stored bytes, after checking them against the recorded sha256 (`CorruptFileError` if not)."""
        path = self.abspath(relpath)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptFileError(relpath, "missing") from None
        except IsADirectoryError:
            raise CorruptFileError(relpath, "a directory, not a file") from None
        if sha256_bytes(data) != sha256:
            actual = sha256_bytes(data)
            raise CorruptFileError(relpath, f"sha256 {actual[:12]}… differs from the recorded one")
        return data

    def _put(self, relpath: str, data: bytes, digest: str) -> StoredFile:
        path = self.abspath(relpath)
        if not (path.exists() and path.stat().st_size == len(data) and sha256_file(path) == digest):
            atomic_write_bytes(path, data)
        return StoredFile(relpath=relpath, sha256=digest, size=len(data))

    def verify(self, relpath: str, sha256: str) -> bool:
        """True when the file exists and still has the recorded hash."""
        path = self.abspath(relpath)
        return path.is_file() and sha256_file(path) == sha256

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files a crash left behind; returns how many."""
        removed = 0
        for area in AREAS:
            for temp in (self.home / area).rglob(f"{TEMP_PREFIX}*"):
                temp.unlink(missing_ok=True)
                removed += 1
        return removed
