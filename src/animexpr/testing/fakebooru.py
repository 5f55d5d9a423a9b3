"""A Danbooru-compatible HTTP server on 127.0.0.1, for the tests and the offline demo.

It speaks what the crawler relies on, as Danbooru's source does it (see research notes, section 1):
`/posts.json` with the real field names and URL shapes, `limit` clamped to 200, numbered pages refused past
page 1000 (410), `b<id>` / `a<id>` cursors (`a` pages come back newest first), more than `tag_limit` real
tags refused (422; metatags such as `rating:` are free), `/counts/posts.json`, HTTP Basic or `login`/`api_key`
authentication (401 / 403), banned posts without `md5` and file URLs, deleted posts, and the files themselves
under `/original/`, `/sample/` and `/preview/`. Error bodies are Danbooru's `{"success": false, ...}`.

Faults for tests: latency, slow (trickled) file bodies, a queue of statuses for the next API requests, a
server-side token bucket answering 429 (with Danbooru's growing penalty while limited), and per-file faults
(5xx, 404, truncated body, wrong bytes, dropped connection). Every request is logged with its arrival time
(`time.monotonic`, comparable across processes on one machine), so tests can measure a client's pace.

Hostile posts, for the tests of what a client must never trust: `FakePost.json_overrides` replaces fields of
the post's JSON (an md5 shaped like a path, an extension `../x`, an id of 2**64 or "12"), and
`FakePost.sample_ext` gives it a sample URL ending in any extension (`.toml`), served like a real sample. The
server still pages and serves files by the post's real id and md5.

Images: real anime faces from `$ANIMEXPR_ASSETS/faces/<character>/` when that folder is given (one
character per class), generated PNGs otherwise. A post's md5 is the md5 of the bytes served for it.

Run it by hand: `python -m animexpr.testing.fakebooru --per-class 50 --port 8765`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import logging
import random
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

DEFAULT_CLASS_TAGS = ("angry", "sad", "smile", "surprised")
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 20
LARGE_IMAGE_WIDTH = 850  # Danbooru makes a sample for wider images
# Metatags that do not count against the tag limit (danbooru app/logical/post_query.rb UNLIMITED_METATAGS).
_FREE_METATAG_NAMES = (
    "status rating limit is id date age filesize filetype parent child md5 width height duration mpixels "
    "ratio score upvote downvotes favcount embedded tagcount pixiv_id pixiv"
)
FREE_METATAGS = frozenset(_FREE_METATAG_NAMES.split())
COUNTED_METATAGS = frozenset({"order", "user", "fav", "pool", "source", "approver", "commenter", "ordfav"})
RATING_ALIASES = {"safe": "s", "nsfw": "qe", "sfw": "gs"}
MIN_THROTTLE_POINTS = -30.0  # Danbooru's floor for a limited client's points
_CHUNKS_WHEN_SLOW = 10
_FILE_PATH = re.compile(
    r"^/(original|sample|preview)/[0-9a-f]{2}/[0-9a-f]{2}/(?:sample-)?([0-9a-f]{32})\.(\w+)$"
)
_BROWSER_AGENT = re.compile(r"Mozilla/|python-requests/", re.IGNORECASE)


# posts ---------------------------------------------------------------------------------------------------


@dataclass
class FakePost:
    """One post. `kind` says what a test should expect of it (keep, ambiguous, deleted, ...)."""

    id: int
    tags: tuple[str, ...]
    content: bytes
    file_ext: str = "png"
    width: int = 64
    height: int = 64
    rating: str = "g"
    score: int = 5
    is_deleted: bool = False
    is_banned: bool = False  # banned posts come without md5 and file URLs
    declared_size: int | None = None  # pretend the file is this big in the JSON
    kind: str = "keep"
    class_tag: str | None = None
    sample_ext: str | None = None  # the sample URL ends in this extension, even for a small image
    json_overrides: dict[str, Any] = field(default_factory=dict)  # fields of the JSON replaced as given
    md5: str = field(init=False)

    def __post_init__(self) -> None:
        self.md5 = hashlib.md5(self.content, usedforsecurity=False).hexdigest()

    @property
    def tag_set(self) -> frozenset[str]:
        return frozenset(self.tags)

    @property
    def has_large(self) -> bool:
        return self.file_ext in ("jpg", "jpeg", "png", "webp") and self.width > LARGE_IMAGE_WIDTH


def generated_png(seed: int, width: int = 64, height: int = 64) -> bytes:
    """A small PNG, different for every seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randrange(1, width), y0 + rng.randrange(1, height))
        draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    draw.point((seed % width, (seed // width) % height), fill=(seed % 251, 7, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class FaceImages:
    """Real face crops, one character folder per class (cycled when there are more classes than folders)."""

    def __init__(self, faces_dir: Path) -> None:
        self.folders = sorted(path for path in Path(faces_dir).iterdir() if path.is_dir())
        if not self.folders:
            raise FileNotFoundError(f"no character folders in {faces_dir}")
        self._files = {folder: sorted(folder.glob("*.jpg")) for folder in self.folders}

    def image(self, class_index: int, k: int) -> bytes | None:
        files = self._files[self.folders[class_index % len(self.folders)]]
        return files[k].read_bytes() if k < len(files) else None


@dataclass(frozen=True)
class CorpusCounts:
    """How many posts of each kind to make per class, beside `keep` ones."""

    keep: int = 10
    ambiguous: int = 0  # also tagged with the next class's tag
    excluded: int = 0  # tagged monochrome
    deleted: int = 0
    banned: int = 0  # no md5 / file_url
    unsupported: int = 0  # mp4
    too_large: int = 0  # declares 100 MB
    explicit: int = 0  # rating e: a `rating:g,s` query never sees them
    not_solo: int = 0  # a `solo` query never sees them


def build_corpus(
    class_tags: Sequence[str] = DEFAULT_CLASS_TAGS,
    counts: CorpusCounts | None = None,
    *,
    faces_dir: Path | None = None,
    first_id: int = 7_000_000,
    seed: int = 0,
) -> list[FakePost]:
    """Posts for each class tag, kinds shuffled, ids increasing from `first_id`; md5s all different."""
    counts = counts or CorpusCounts()
    faces = FaceImages(faces_dir) if faces_dir is not None else None
    specs: list[tuple[str, int, str]] = []  # (kind, class index, class tag)
    kinds = ("keep", "ambiguous", "excluded", "deleted", "banned", "unsupported", "too_large", "explicit")
    for class_index, tag in enumerate(class_tags):
        for kind in (*kinds, "not_solo"):
            specs += [(kind, class_index, tag)] * getattr(counts, kind)
    rng = random.Random(seed)
    rng.shuffle(specs)
    seen_md5: set[str] = set()
    used_faces = [0] * len(class_tags)
    posts = []
    for offset, (kind, class_index, tag) in enumerate(specs):
        post_id = first_id + offset
        content, ext, size = _content_for(kind, class_index, faces, used_faces, post_id, seen_md5)
        tags = [tag, "1girl", "solo", f"artist_{post_id % 37}", "original"]
        if kind == "ambiguous":
            tags.append(class_tags[(class_index + 1) % len(class_tags)])
        elif kind == "excluded":
            tags.append("monochrome")
        elif kind == "not_solo":
            tags = [t for t in tags if t not in ("solo", "1girl")] + ["2girls", "multiple_girls"]
        post = FakePost(
            id=post_id,
            tags=tuple(sorted(set(tags))),
            content=content,
            file_ext=ext,
            width=size,
            height=size,
            rating="e" if kind == "explicit" else rng.choice("gs"),
            score=rng.randrange(0, 50),
            is_deleted=kind == "deleted",
            is_banned=kind == "banned",
            declared_size=100_000_000 if kind == "too_large" else None,
            kind=kind,
            class_tag=tag,
        )
        seen_md5.add(post.md5)
        posts.append(post)
    return posts


def _content_for(
    kind: str, class_index: int, faces: FaceImages | None, used: list[int], post_id: int, seen: set[str]
) -> tuple[bytes, str, int]:
    if kind == "unsupported":
        return hashlib.sha256(b"mp4 %d" % post_id).digest() * 64, "mp4", 640
    while faces is not None:
        data = faces.image(class_index, used[class_index])
        used[class_index] += 1
        if data is None:
            break
        if hashlib.md5(data, usedforsecurity=False).hexdigest() not in seen:
            return data, "jpg", 256
    return generated_png(post_id), "png", 64


# queries -------------------------------------------------------------------------------------------------


class QueryRefused(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


@dataclass(frozen=True)
class ParsedQuery:
    required: frozenset[str]
    forbidden: frozenset[str]
    ratings: str | None  # letters allowed, None: any
    status: str | None  # "deleted", "active", "any", "-deleted"
    filetypes: frozenset[str] | None
    counted_terms: int


def parse_query(text: str) -> ParsedQuery:
    required: set[str] = set()
    forbidden: set[str] = set()
    ratings: str | None = None
    status: str | None = None
    filetypes: frozenset[str] | None = None
    counted = 0
    for term in text.split():
        negated = term.startswith("-")
        body = term[1:] if negated else term
        name, _, value = body.partition(":")
        name = name.lower()
        if value and name in FREE_METATAGS:
            if name == "rating":
                ratings = _rating_letters(value)
            elif name == "status":
                status = ("-" if negated else "") + value.lower()
            elif name == "filetype":
                filetypes = frozenset(value.lower().split(","))
            continue
        counted += 1
        if value and name in COUNTED_METATAGS:
            continue
        (forbidden if negated else required).add(body)
    return ParsedQuery(frozenset(required), frozenset(forbidden), ratings, status, filetypes, counted)


def _rating_letters(value: str) -> str:
    letters = ""
    for part in value.lower().split(","):
        letters += RATING_ALIASES.get(part, part[:1])
    return letters


def matches(post: FakePost, query: ParsedQuery) -> bool:
    tags = post.tag_set
    if not query.required <= tags or query.forbidden & tags:
        return False
    if query.ratings is not None and post.rating not in query.ratings:
        return False
    if query.filetypes is not None and post.file_ext not in query.filetypes:
        return False
    if query.status in ("deleted",) and not post.is_deleted:
        return False
    return not (query.status in ("active", "-deleted") and post.is_deleted)


# requests log and faults ---------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    started: float  # time.monotonic() when the request line and headers were read
    path: str
    params: dict[str, str]
    kind: str  # "api", "file" or "other"
    user_agent: str
    login: str | None
    status: int = 0
    finished: float = 0.0
    complete: bool = False  # the whole body went out


@dataclass
class FileFault:
    kind: str  # "truncate", "wrong_bytes", "reset", or an HTTP status such as "503"
    remaining: int | None  # None: every time


# the server ----------------------------------------------------------------------------------------------


class FakeDanbooru:
    """The server and its state; use as a context manager (`with FakeDanbooru(posts) as booru: booru.url`)."""

    def __init__(
        self,
        posts: Sequence[FakePost] = (),
        *,
        tag_limit: int | None = 2,
        page_limit: int = 1000,
        credentials: Mapping[str, str] | None = None,
        forbidden_logins: Sequence[str] = (),
        api_latency: float = 0.0,
        file_delay: float = 0.0,
        file_trickle: float = 0.0,
        throttle: tuple[float, float] | None = None,
        retry_after: float | None = None,
        block_browser_agents: bool = True,
    ) -> None:
        self.tag_limit = tag_limit
        self.page_limit = page_limit
        self.credentials = dict(credentials or {})
        self.forbidden_logins = set(forbidden_logins)
        self.api_latency = api_latency
        self.file_delay = file_delay
        self.file_trickle = file_trickle
        self.retry_after = retry_after
        self.block_browser_agents = block_browser_agents
        self.requests: list[RequestRecord] = []
        self.file_faults: dict[str, FileFault] = {}
        self._api_faults: deque[int | str] = deque()
        self._lock = threading.Lock()
        self._posts: dict[int, FakePost] = {}
        self._by_md5: dict[str, FakePost] = {}
        self._ids_desc: list[int] = []
        self._match_cache: dict[str, list[int]] = {}
        self._derived: dict[tuple[str, str], bytes] = {}
        self._throttle = throttle
        self._points = throttle[1] if throttle else 0.0
        self._points_at = time.monotonic()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_posts(posts)

    # state ------------------------------------------------------------------------------------------------

    def add_posts(self, posts: Sequence[FakePost]) -> None:
        with self._lock:
            for post in posts:
                self._posts[post.id] = post
                self._by_md5[post.md5] = post
            self._ids_desc = sorted(self._posts, reverse=True)
            self._match_cache.clear()

    @property
    def posts(self) -> list[FakePost]:
        return [self._posts[post_id] for post_id in self._ids_desc]

    def fail_next_api(self, *faults: int | str) -> None:
        """Answer the next API requests with these statuses (or "reset": close without an answer)."""
        with self._lock:
            self._api_faults.extend(faults)

    def set_file_fault(self, md5: str, kind: str, times: int | None = None) -> None:
        with self._lock:
            self.file_faults[md5] = FileFault(kind, times)

    def api_records(self) -> list[RequestRecord]:
        with self._lock:
            return [record for record in self.requests if record.kind == "api"]

    def file_records(self) -> list[RequestRecord]:
        with self._lock:
            return [record for record in self.requests if record.kind == "file"]

    # lifecycle --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Danbooru is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, port: int = 0) -> FakeDanbooru:
        handler = type("BoundHandler", (_Handler,), {"booru": self})
        self._server = _Server(("127.0.0.1", port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakebooru", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeDanbooru:
        return self.start() if self._server is None else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # request handling (called from the handler threads) ---------------------------------------------------

    def take_api_fault(self) -> int | str | None:
        with self._lock:
            return self._api_faults.popleft() if self._api_faults else None

    def take_file_fault(self, md5: str) -> str | None:
        with self._lock:
            fault = self.file_faults.get(md5)
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self.file_faults[md5]
            return fault.kind

    def throttled(self) -> bool:
        """Token bucket; a request made while limited costs a point too, down to Danbooru's floor."""
        if self._throttle is None:
            return False
        rate, burst = self._throttle
        with self._lock:
            now = time.monotonic()
            self._points = min(burst, self._points + (now - self._points_at) * rate)
            self._points_at = now
            if self._points >= 1:
                self._points -= 1
                return False
            self._points = max(MIN_THROTTLE_POINTS, self._points - 1)
            return True

    def matching_ids(self, tags: str) -> list[int]:
        """Ids of the posts matching `tags`, newest first (cached per query)."""
        with self._lock:
            cached = self._match_cache.get(tags)
            if cached is None:
                query = parse_query(tags)
                cached = [pid for pid in self._ids_desc if matches(self._posts[pid], query)]
                self._match_cache[tags] = cached
            return cached

    def post(self, post_id: int) -> FakePost | None:
        return self._posts.get(post_id)

    def post_by_md5(self, md5: str) -> FakePost | None:
        return self._by_md5.get(md5)

    def post_json(self, post: FakePost) -> dict[str, Any]:
        return danbooru_post_json(post, self.url)

    def derived_image(self, post: FakePost, variant: str) -> bytes | None:
        """The sample (850 px wide JPEG) or preview (180x180 JPEG) of an image post."""
        key = (post.md5, variant)
        with self._lock:
            if key in self._derived:
                return self._derived[key]
        try:
            image = Image.open(io.BytesIO(post.content)).convert("RGB")
        except OSError:
            return None
        if variant == "sample":
            image = image.resize((LARGE_IMAGE_WIDTH, max(1, image.height * LARGE_IMAGE_WIDTH // image.width)))
        else:
            image.thumbnail((180, 180))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        with self._lock:
            self._derived[key] = buffer.getvalue()
        return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (killed crawls, abandoned downloads) are part of the tests, not errors.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        log.exception("fake Danbooru: error while answering %s", client_address)


def danbooru_post_json(post: FakePost, base_url: str) -> dict[str, Any]:
    """A post with Danbooru's field names, order and URL shapes; banned posts lose md5 and file URLs."""
    created = (datetime(2023, 3, 17, 3, 50, tzinfo=UTC) + timedelta(seconds=post.id % 10_000_000)).isoformat(
        timespec="milliseconds"
    )
    artist = [tag for tag in post.tags if tag.startswith("artist_")]
    copyright_ = [tag for tag in post.tags if tag == "original"]
    meta = ["highres"] if post.width >= 1600 or post.height >= 1200 else []
    general = [tag for tag in post.tags if tag not in artist and tag not in copyright_]
    md5 = post.md5
    prefix = f"{base_url}/%s/{md5[:2]}/{md5[2:4]}/"
    file_url = prefix % "original" + f"{md5}.{post.file_ext}"
    body: dict[str, Any] = {
        "id": post.id,
        "created_at": created,
        "uploader_id": 500_000 + post.id % 1000,
        "score": post.score,
        "source": f"https://example.invalid/artworks/{post.id}",
        "md5": md5,
        "last_comment_bumped_at": None,
        "rating": post.rating,
        "image_width": post.width,
        "image_height": post.height,
        "tag_string": " ".join(sorted([*post.tags, *meta])),
        "fav_count": post.score // 2,
        "file_ext": post.file_ext,
        "last_noted_at": None,
        "parent_id": None,
        "has_children": False,
        "approver_id": None,
        "tag_count_general": len(general),
        "tag_count_artist": len(artist),
        "tag_count_character": 0,
        "tag_count_copyright": len(copyright_),
        "file_size": post.declared_size or len(post.content),
        "up_score": post.score,
        "down_score": 0,
        "is_pending": False,
        "is_flagged": False,
        "is_deleted": post.is_deleted,
        "tag_count": len(post.tags) + len(meta),
        "updated_at": created,
        "is_banned": post.is_banned,
        "pixiv_id": None,
        "last_commented_at": None,
        "has_active_children": False,
        "bit_flags": 0,
        "tag_count_meta": len(meta),
        "has_large": post.has_large,
        "has_visible_children": False,
        "tag_string_general": " ".join(general),
        "tag_string_character": "",
        "tag_string_copyright": " ".join(copyright_),
        "tag_string_artist": " ".join(artist),
        "tag_string_meta": " ".join(meta),
        "file_url": file_url,
        "large_file_url": _sample_url(post, prefix, file_url),
        "preview_file_url": prefix % "preview" + f"{md5}.jpg",
    }
    if post.is_banned:
        for key in ("md5", "file_url", "large_file_url", "preview_file_url"):
            del body[key]
    body.update(post.json_overrides)
    return body


def _sample_url(post: FakePost, prefix: str, file_url: str) -> str:
    """The sample's URL for large images (or when the post names a sample extension); else the original's."""
    if post.has_large or post.sample_ext is not None:
        return prefix % "sample" + f"sample-{post.md5}.{post.sample_ext or 'jpg'}"
    return file_url


class _Handler(BaseHTTPRequestHandler):
    booru: FakeDanbooru
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls
    server_version = "fakebooru"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the requests log has it all
        pass

    def do_GET(self) -> None:
        started = time.monotonic()
        parts = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        login = self._login(params)
        kind = "file" if _FILE_PATH.match(parts.path) else "api" if parts.path.endswith(".json") else "other"
        safe_params = {k: v for k, v in params.items() if k != "api_key"}
        record = RequestRecord(
            started, parts.path, safe_params, kind, self.headers.get("User-Agent", ""), login
        )
        with self.booru._lock:
            self.booru.requests.append(record)
        try:
            if kind == "file":
                self._serve_file(parts.path, record)
            else:
                self._serve_api(parts.path, params, record)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            record.finished = time.monotonic()

    # API

    def _serve_api(self, path: str, params: dict[str, str], record: RequestRecord) -> None:
        booru = self.booru
        if booru.api_latency:
            time.sleep(booru.api_latency)
        if booru.block_browser_agents and _BROWSER_AGENT.search(record.user_agent):
            self._send_error_json(
                record, 403, "Cloudflare", "Just a moment...", {"cf-mitigated": "challenge"}
            )
            return
        fault = booru.take_api_fault()
        if fault == "reset":
            self.close_connection = True
            return
        if fault is not None:
            self._send_fault(record, int(fault))
            return
        if booru.throttled():
            headers = {"Retry-After": f"{booru.retry_after:g}"} if booru.retry_after is not None else {}
            message = "You're doing that too fast. Wait a minute and try again."
            self._send_error_json(record, 429, "RateLimiter::RateLimitError", message, headers)
            return
        try:
            self._check_auth(params)
            body = self._api_body(path, params)
        except QueryRefused as refused:
            self._send_error_json(record, refused.status, refused.error, refused.message)
            return
        self._send_json(record, 200, body)

    def _api_body(self, path: str, params: dict[str, str]) -> Any:
        booru = self.booru
        if path == "/posts.json":
            return [booru.post_json(post) for post in self._page(params)]
        if path == "/counts/posts.json":
            self._check_tag_limit(params.get("tags", ""))
            return {"counts": {"posts": len(booru.matching_ids(params.get("tags", "")))}}
        single = re.fullmatch(r"/posts/(\d+)\.json", path)
        if single:
            post = booru.post(int(single.group(1)))
            if post is None:
                raise QueryRefused(404, "ActiveRecord::RecordNotFound", "That record was not found.")
            return booru.post_json(post)
        raise QueryRefused(404, "ActionController::RoutingError", f"No route matches {path}")

    def _page(self, params: dict[str, str]) -> list[FakePost]:
        tags = params.get("tags", "")
        self._check_tag_limit(tags)
        limit = max(0, min(MAX_PER_PAGE, _to_int(params.get("limit"), DEFAULT_PER_PAGE)))
        ids = self.booru.matching_ids(tags)
        page = params.get("page", "")
        cursor = re.fullmatch(r"([ab])(\d+)", page, flags=re.IGNORECASE)
        if cursor and cursor.group(1).lower() == "b":
            chosen = [pid for pid in ids if pid < int(cursor.group(2))][:limit]
        elif cursor:
            after = int(cursor.group(2))
            chosen = sorted(pid for pid in ids if pid > after)[:limit]
            chosen.reverse()  # Danbooru returns `a` pages newest first too
        else:
            number = max(1, _to_int(page, 1))
            if number > self.booru.page_limit:
                message = f"You cannot go beyond page {self.booru.page_limit}."
                raise QueryRefused(410, "PaginationExtension::PaginationError", message)
            chosen = ids[(number - 1) * limit : number * limit]
        return [post for pid in chosen if (post := self.booru.post(pid)) is not None]

    def _check_tag_limit(self, tags: str) -> None:
        limit = self.booru.tag_limit
        if limit is not None and parse_query(tags).counted_terms > limit:
            message = f"You cannot search for more than {limit} tags at a time."
            raise QueryRefused(422, "PostQuery::TagLimitError", message)

    def _login(self, params: dict[str, str]) -> str | None:
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                return base64.b64decode(header[6:]).decode().partition(":")[0]
            except ValueError:
                return None
        return params.get("login")

    def _check_auth(self, params: dict[str, str]) -> None:
        header = self.headers.get("Authorization", "")
        login, api_key = params.get("login"), params.get("api_key")
        if header.startswith("Basic "):
            try:
                login, _, api_key = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                raise QueryRefused(401, "SessionLoader::AuthenticationFailure", "Invalid API key") from None
        if login is None and api_key is None:
            return
        if not login or not api_key:
            raise QueryRefused(401, "SessionLoader::AuthenticationFailure", "Missing login or api_key")
        if self.booru.credentials.get(login) != api_key:
            raise QueryRefused(401, "SessionLoader::AuthenticationFailure", "Invalid API key")
        if login in self.booru.forbidden_logins:
            raise QueryRefused(403, "User::PrivilegeError", "Access denied")

    # files

    def _serve_file(self, path: str, record: RequestRecord) -> None:
        match = _FILE_PATH.match(path)
        assert match is not None
        variant, md5 = match.group(1), match.group(2)
        post = self.booru.post_by_md5(md5)
        data = None
        if post is not None and not post.is_banned:
            data = post.content if variant == "original" else self.booru.derived_image(post, variant)
        if data is None:
            self._send_error_json(record, 404, "ActiveRecord::RecordNotFound", "That record was not found.")
            return
        if self.booru.file_delay:
            time.sleep(self.booru.file_delay)
        fault = self.booru.take_file_fault(md5) if variant == "original" else None
        if fault == "reset":
            self.close_connection = True
            return
        if fault is not None and fault.isdigit():
            self._send_fault(record, int(fault))
            return
        if fault == "wrong_bytes":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._send_bytes(record, data, _content_type(path), truncate=fault == "truncate")

    def _send_bytes(self, record: RequestRecord, data: bytes, content_type: str, truncate: bool) -> None:
        record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        body = data[: len(data) // 2] if truncate else data
        trickle = self.booru.file_trickle
        if trickle:
            step = max(1, len(body) // _CHUNKS_WHEN_SLOW)
            for start in range(0, len(body), step):
                self.wfile.write(body[start : start + step])
                self.wfile.flush()
                time.sleep(trickle / _CHUNKS_WHEN_SLOW)
        else:
            self.wfile.write(body)
        if truncate:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
            return
        record.complete = True

    # answers

    def _send_fault(self, record: RequestRecord, status: int) -> None:
        if status == 500:
            error, message = "ActiveRecord::QueryCanceled", "The database timed out running your query."
        elif status == 404:
            error, message = "ActiveRecord::RecordNotFound", "That record was not found."
        else:
            error, message = "ServiceUnavailable", f"fault injected: HTTP {status}"
        if status == 429:
            error, message = (
                "RateLimiter::RateLimitError",
                "You're doing that too fast. Wait a minute and try again.",
            )
        headers = {}
        if status == 429 and self.booru.retry_after is not None:
            headers["Retry-After"] = f"{self.booru.retry_after:g}"
        self._send_error_json(record, status, error, message, headers)

    def _send_error_json(
        self,
        record: RequestRecord,
        status: int,
        error: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._send_json(record, status, {"success": False, "error": error, "message": message}, headers)

    def _send_json(
        self, record: RequestRecord, status: int, body: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        record.complete = True


def _to_int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _content_type(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower()
    return {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "mp4": "video/mp4"}.get(
        ext, "application/octet-stream"
    )


# entry points --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_fake_danbooru(
    posts: Sequence[FakePost] | None = None,
    *,
    per_class: int = 20,
    class_tags: Sequence[str] = DEFAULT_CLASS_TAGS,
    faces_dir: Path | None = None,
    port: int = 0,
    **server_options: Any,
) -> Iterator[str]:
    """Run a fake Danbooru for the block and give its base URL (a corpus is built when `posts` is None)."""
    if posts is None:
        counts = CorpusCounts(keep=per_class, ambiguous=1, excluded=1, deleted=1, banned=1, unsupported=1)
        posts = build_corpus(class_tags, counts, faces_dir=faces_dir)
    booru = FakeDanbooru(posts, **server_options)
    booru.start(port)
    try:
        yield booru.url
    finally:
        booru.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Danbooru on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--faces", type=Path, default=None, help="folder of character folders of face images")
    args = parser.parse_args(argv)
    with serve_fake_danbooru(per_class=args.per_class, faces_dir=args.faces, port=args.port) as url:
        print(f"fake Danbooru at {url} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
