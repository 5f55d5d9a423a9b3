"""The review web app: a Starlette ASGI app with a JSON API and one static page, served by uvicorn.

Safety, in the order the guard applies it:
- Token mode is on when the server was given a shared token (`--token`, which logs in as the server's own
  reviewer name) or when any reviewer has a token of their own (`review add-reviewer`). Then every request
  but the login form needs a token: as `Authorization: Bearer`, or as the HttpOnly cookie the login form sets
  (the reviewer's name and an HMAC, keyed by a secret of this server process, of that name and their token's
  hash: the browser never stores the token, the page's JavaScript never sees the cookie, and no client can
  make one up). The reviewer recorded on every lease and event is the one the token belongs to; the
  X-Reviewer header is ignored.
- Without tokens the app answers only requests addressed to a loopback name (127.0.0.1, localhost, ::1), so
  a web page cannot reach it through DNS rebinding; the reviewer is the X-Reviewer header (or the server's
  name), never one of the names the command line records its own decisions under.
- State changes are POSTs with a JSON body and an Origin equal to the page's own (or a bearer token).
- Bodies are read chunk by chunk and refused (413) as soon as they pass the limit; every number a client
  sends is checked to be a row id or a 64-bit value before it reaches the database.
- Images are looked up by crop id (or, for a post's original, by post id) in the database; no part of a
  request path reaches the file system, and the page's own files are read into memory at start-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from animexpr.config import Settings
from animexpr.curate.defaults import DEFAULT_GRID_SIZE
from animexpr.curate.manual_crop import ManualCropper, PostNotFound, min_square_side, parse_box
from animexpr.curate.review import (
    DEFAULT_LEASE_SECONDS,
    STATE_FILTERS,
    CropNotFound,
    LeaseConflict,
    Order,
    QueueFilter,
    ReservedReviewer,
    ReviewError,
    ReviewerTokens,
    ReviewQueue,
    check_page_reviewer,
    check_reviewer,
    is_row_id,
    parse_order,
    parse_row_id,
    token_sha256,
)
from animexpr.curate.review_stats import queue_stats
from animexpr.db.models import MAX_ROW_ID
from animexpr.errors import AnimexprError
from animexpr.store import FileStore

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SESSION_COOKIE = "animexpr_review"
MAX_BODY_BYTES = 256 * 1024
MAX_LOGIN_BYTES = 4096
MAX_TOKEN_CHARS = 1024
# The page's files (in the package's static folder) and their content types.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "login.html": "text/html; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "hand.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}
IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on form posts (the login).
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
# Reachable without the token: the login form and the stylesheet it uses.
PUBLIC_PATHS = frozenset({"/login", "/static/review.css"})


@dataclass(frozen=True)
class ReviewAppConfig:
    reviewer: str  # the default reviewer; with `token`, the reviewer that token logs in as
    token: str | None = None  # a shared token (`--token`); reviewers' own tokens are in the database
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    grid_size: int = DEFAULT_GRID_SIZE


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_warning(host: str, token: str | None, reviewer_tokens: bool = False) -> str | None:
    """None for a loopback address; a warning for any other, which needs token mode (else ReviewError)."""
    if token is not None and len(token) < 12:
        raise ReviewError("--token: use at least 12 characters")
    if is_loopback(host):
        return None
    if not token and not reviewer_tokens:
        raise ReviewError(
            f"--host {host} makes the review page reachable from other machines: give each reviewer a "
            "token (`animexpr review add-reviewer NAME`) or give --token, so that only they can decide"
        )
    return (
        f"listening on {host}: anyone who can reach this port and has a token can review; "
        "the connection is plain HTTP, so use it on a trusted network or behind a TLS proxy"
    )


class Identities:
    """Token mode: who a token or a session cookie belongs to.

    The database is asked on every request, so a reviewer added or removed while the server runs counts
    at once (a removed reviewer's cookie stops working too: it is bound to the token's hash).
    """

    def __init__(self, tokens: ReviewerTokens, shared_reviewer: str, shared_token: str | None) -> None:
        self.tokens = tokens
        self.shared_reviewer = shared_reviewer
        self.shared_digest = token_sha256(shared_token) if shared_token else None
        self.secret = secrets.token_bytes(32)  # a restart signs everyone out

    def reviewer_for_token(self, token: bytes) -> tuple[str, str] | None:
        """(reviewer, token hash) for a token given as bytes (UTF-8 for text), None for a wrong one."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = token_sha256(token)
        if self.shared_digest is not None and hmac.compare_digest(digest, self.shared_digest):
            return self.shared_reviewer, digest
        name = self.tokens.name_of(digest)
        return (name, digest) if name is not None else None

    def cookie_for(self, reviewer: str, digest: str) -> str:
        return f"{reviewer.encode().hex()}.{self._mac(reviewer, digest)}"

    def reviewer_for_cookie(self, value: str) -> str | None:
        name_hex, _, mac = value.partition(".")
        try:
            reviewer = bytes.fromhex(name_hex).decode()
            check_reviewer(reviewer)
        except (ValueError, ReviewError):
            return None
        digests = [self.tokens.digest_of(reviewer)]
        if reviewer == self.shared_reviewer:
            digests.append(self.shared_digest)
        for digest in digests:
            if digest is not None and hmac.compare_digest(mac.encode(), self._mac(reviewer, digest).encode()):
                return reviewer
        return None

    def _mac(self, reviewer: str, digest: str) -> str:
        return hmac.new(self.secret, f"{reviewer}\n{digest}".encode(), hashlib.sha256).hexdigest()


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _bearer_token(request: Request) -> bytes | None:
    """The raw bytes of an `Authorization: Bearer` token (headers arrive as Latin-1 text of their bytes)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip().encode("latin-1")


class GuardMiddleware:
    """Host, token and origin checks for every request, and the security headers on every response.

    In token mode the reviewer the token or cookie belongs to is put on `request.state.reviewer`.
    """

    def __init__(self, app: ASGIApp, identities: Identities | None) -> None:
        self.app = app
        self.identities = identities

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = await self.refusal(request)
        target: ASGIApp = refusal if refusal is not None else self.app

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await target(scope, receive, send_with_headers)

    async def refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if self.identities is None and not is_loopback(_host_name(host)):
            return _error(421, "this review server answers on 127.0.0.1 only")
        bearer: tuple[str, str] | None = None
        if self.identities is not None:
            bearer, reviewer = await run_in_threadpool(self._reviewer, request)
            if reviewer is None and request.url.path not in PUBLIC_PATHS:
                if request.method == "GET" and request.url.path == "/":
                    return RedirectResponse("/login", status_code=303)
                return _error(401, "log in first: open the page and enter your reviewer token")
            request.state.reviewer = reviewer
        if request.method not in ("GET", "HEAD") and bearer is None:
            origin = request.headers.get("origin")
            if origin not in (f"http://{host}", f"https://{host}"):
                return _error(403, "refused: a change must come from the review page itself (Origin check)")
        return None

    def _reviewer(self, request: Request) -> tuple[tuple[str, str] | None, str | None]:
        """(owner and hash of the bearer token, or None; the reviewer of that token, else of the cookie)."""
        assert self.identities is not None
        token = _bearer_token(request)
        if token is not None:
            owner = self.identities.reviewer_for_token(token)
            return owner, owner[0] if owner else None
        cookie = request.cookies.get(SESSION_COOKIE)
        return None, self.identities.reviewer_for_cookie(cookie) if cookie else None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers={"cache-control": "no-store"})


def _load_static() -> dict[str, bytes]:
    folder = resources.files("animexpr.curate") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk and refused (413) as soon as it passes `limit` bytes.

    Reading stops there, so a huge or endless body (chunked or not) never builds up in memory: the server
    stops reading the socket once its small buffer is full.
    """
    declared = request.headers.get("content-length", "").strip()
    if declared and (not declared.isascii() or not declared.isdigit() or len(declared) > 15):
        raise HTTPException(400, "bad Content-Length")
    if declared and int(declared) > limit:
        raise HTTPException(413, f"request body too large (at most {limit} bytes)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body too large (at most {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send JSON (Content-Type: application/json)")
    body = await read_body(request, MAX_BODY_BYTES)
    try:
        data = json.loads(body or b"{}", parse_constant=_refuse_constant)
    except RecursionError:
        raise HTTPException(400, "the body nests too deeply to be a request of this page") from None
    except ValueError:
        raise HTTPException(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


def _ids(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(is_row_id(v) for v in value):
        raise ReviewError(f"{name}: expected a list of crop ids (whole numbers from 1 to {MAX_ROW_ID})")
    return value


def _crop_id(value: Any) -> int:
    if not is_row_id(value):
        raise ReviewError(f"crop_id: expected a crop id (a whole number from 1 to {MAX_ROW_ID})")
    return int(value)


def _path_crop_id(request: Request) -> int:
    crop_id = parse_row_id(request.path_params["crop_id"])
    if crop_id is None:
        raise CropNotFound(f"no such crop: crop ids are whole numbers from 1 to {MAX_ROW_ID}")
    return crop_id


def _path_post_id(request: Request) -> int:
    post_id = parse_row_id(request.path_params["post_id"])
    if post_id is None:
        raise PostNotFound(f"no such post: post ids are whole numbers from 1 to {MAX_ROW_ID}")
    return post_id


def _image_response(path: Path, missing: str) -> Response:
    """A stored image file (its store path names one content: crops by hash, originals by post md5)."""
    if not path.is_file():
        return _error(404, missing)
    media_type = IMAGE_TYPES.get(path.suffix.lower().lstrip("."), "application/octet-stream")
    return FileResponse(path, media_type=media_type, headers={"cache-control": "private, max-age=86400"})


def _query_limit(request: Request, default: int) -> int:
    text = request.query_params.get("limit", str(default))
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise ReviewError("limit: expected a whole number (at most 6 digits)")
    return int(text)


def _count(value: Any) -> int:
    if value is None:
        return 1
    if not is_row_id(value):  # a count beyond the row ids is no count of crops either
        raise ReviewError(f"count: expected a whole number from 1 to {MAX_ROW_ID}")
    return int(value)


@dataclass(frozen=True)
class ReviewContext:
    """What the endpoints share, kept on `app.state.review` (Starlette's place for an app's own objects)."""

    config: ReviewAppConfig
    class_names: tuple[str, ...]
    queue: ReviewQueue
    store: FileStore
    cropper: ManualCropper
    static: dict[str, bytes]
    identities: Identities | None  # None: no token mode


def _context(request: Request) -> ReviewContext:
    return cast(ReviewContext, request.app.state.review)


def reviewer_of(request: Request) -> str:
    context = _context(request)
    if context.identities is not None:
        return str(request.state.reviewer)  # set by the guard from the token; headers do not count
    name = request.headers.get("x-reviewer", "").strip()
    return check_page_reviewer(name) if name else context.config.reviewer


# Pages and login ----------------------------------------------------------------------------------------


async def page(request: Request) -> Response:
    return Response(_context(request).static["index.html"], media_type=STATIC_FILES["index.html"])


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_FILES or name == "index.html":
        return _error(404, "not found")
    content = _context(request).static[name]
    return Response(content, media_type=STATIC_FILES[name], headers={"cache-control": "no-cache"})


async def login(request: Request) -> Response:
    context = _context(request)
    identities = context.identities
    if identities is None:
        return RedirectResponse("/", status_code=303)
    if request.method == "GET":
        return Response(context.static["login.html"], media_type=STATIC_FILES["login.html"])
    body = (await read_body(request, MAX_LOGIN_BYTES)).decode("ascii", "replace")
    # Browsers send the form UTF-8 encoded; a byte that is not UTF-8 can only make a wrong token.
    given = parse_qs(body, encoding="utf-8", errors="replace").get("token", [""])[0]
    owner = await run_in_threadpool(identities.reviewer_for_token, given.encode("utf-8"))
    if owner is None:
        log.warning(
            "a wrong review token was entered from %s", request.client.host if request.client else "?"
        )
        failed = context.static["login.html"].replace(
            b"<!--message-->", b'<p class="login-error">Wrong token.</p>'
        )
        return Response(failed, status_code=401, media_type=STATIC_FILES["login.html"])
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, identities.cookie_for(*owner), httponly=True, samesite="strict", path="/"
    )
    return response


async def no_icon(request: Request) -> Response:
    return Response(status_code=204)


# The queue ----------------------------------------------------------------------------------------------


async def app_config(request: Request) -> Response:
    context = _context(request)
    return _json(
        {
            "reviewer": reviewer_of(request),
            "reviewer_from_token": context.identities is not None,
            "classes": list(context.class_names),
            "orders": [order.value for order in Order],
            "default_order": Order.WORST_FIRST.value,
            "states": list(STATE_FILTERS),
            "grid_size": context.config.grid_size,
            "lease_seconds": context.config.lease_seconds,
        }
    )


async def next_items(request: Request) -> Response:
    context = _context(request)
    body = await _json_body(request)
    queue_filter = QueueFilter.from_mapping(body.get("filter") or {}, context.class_names)
    items = await run_in_threadpool(
        context.queue.lease_next,
        reviewer_of(request),
        queue_filter,
        parse_order(body.get("order")),
        _count(body.get("count")),
        _ids(body.get("exclude"), "exclude"),
    )
    return _json({"items": items})


async def decide(request: Request) -> Response:
    body = await _json_body(request)
    crop_id = _crop_id(body.get("crop_id"))
    label = body.get("label")
    result = await run_in_threadpool(
        _context(request).queue.decide, reviewer_of(request), crop_id, str(body.get("decision")), label
    )
    return _json({"result": result.to_dict()})


async def decide_page(request: Request) -> Response:
    body = await _json_body(request)
    results, skipped = await run_in_threadpool(
        _context(request).queue.decide_page,
        reviewer_of(request),
        _ids(body.get("accept"), "accept"),
        _ids(body.get("reject"), "reject"),
    )
    return _json(
        {
            "results": [result.to_dict() for result in results],
            "skipped": {str(crop_id): why for crop_id, why in skipped.items()},
        }
    )


async def undo(request: Request) -> Response:
    queue = _context(request).queue
    await _json_body(request)
    results = await run_in_threadpool(queue.undo_last, reviewer_of(request))
    items = await run_in_threadpool(queue.items, [result.crop_id for result in results])
    return _json({"results": [result.to_dict() for result in results], "items": items})


async def renew(request: Request) -> Response:
    body = await _json_body(request)
    renewed = await run_in_threadpool(
        _context(request).queue.renew_leases, reviewer_of(request), _ids(body.get("crop_ids"), "crop_ids")
    )
    return _json({"renewed": renewed})


async def stats(request: Request) -> Response:
    return _json(await run_in_threadpool(queue_stats, _context(request).queue, reviewer_of(request)))


async def history(request: Request) -> Response:
    limit = _query_limit(request, 50)
    items = await run_in_threadpool(_context(request).queue.history, reviewer_of(request), limit)
    return _json({"items": items})


async def item(request: Request) -> Response:
    return _json(await run_in_threadpool(_context(request).queue.item, _path_crop_id(request)))


async def crop_image(request: Request) -> Response:
    return await _crop_file(request, "crop")


async def crop_source(request: Request) -> Response:
    return await _crop_file(request, "source")


async def _crop_file(request: Request, which: str) -> Response:
    context = _context(request)
    relpath = await run_in_threadpool(context.queue.file_relpath, _path_crop_id(request), which)
    return _image_response(
        context.store.abspath(relpath), f"the {which} image is missing from the store ({relpath})"
    )


# Crops by hand ------------------------------------------------------------------------------------------


async def manual_next(request: Request) -> Response:
    cropper = _context(request).cropper
    body = await _json_body(request)
    posts = await run_in_threadpool(
        cropper.needing_crops, _count(body.get("count")), _ids(body.get("exclude"), "exclude")
    )
    crop_px = await run_in_threadpool(cropper.crop_size)
    return _json({"posts": posts, "crop_px": crop_px, "min_side": min_square_side(crop_px)})


async def post_original(request: Request) -> Response:
    path = await run_in_threadpool(_context(request).cropper.original_path, _path_post_id(request))
    return _image_response(path, "the post's original is missing from the store")


async def post_candidates(request: Request) -> Response:
    return _json(await run_in_threadpool(_context(request).cropper.candidates, _path_post_id(request)))


async def manual_crop(request: Request) -> Response:
    context = _context(request)
    body = await _json_body(request)
    box = parse_box(body)
    result = await run_in_threadpool(context.cropper.crop, box, reviewer_of(request))
    [crop] = await run_in_threadpool(context.queue.items, [result.crop_id])
    return _json({**result.to_dict(), "item": crop})


# Errors -------------------------------------------------------------------------------------------------


async def review_error(request: Request, exc: Exception) -> Response:
    status = 400
    if isinstance(exc, CropNotFound | PostNotFound):
        status = 404
    elif isinstance(exc, LeaseConflict):
        status = 409
    elif isinstance(exc, ReservedReviewer):
        status = 403
    return _error(status, str(exc))


async def server_error(request: Request, exc: Exception) -> Response:
    """Our other errors (a store that cannot be written ...): the server's fault, still one line."""
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return _error(500, str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, str(exc.detail))


ROUTES = [
    Route("/", page),
    Route("/favicon.ico", no_icon),
    Route("/static/{name}", static_file),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/api/config", app_config),
    Route("/api/next", next_items, methods=["POST"]),
    Route("/api/decide", decide, methods=["POST"]),
    Route("/api/grid", decide_page, methods=["POST"]),
    Route("/api/undo", undo, methods=["POST"]),
    Route("/api/renew", renew, methods=["POST"]),
    Route("/api/stats", stats),
    Route("/api/history", history),
    Route("/api/crops/{crop_id}", item),
    Route("/api/crops/{crop_id}/image", crop_image),
    Route("/api/crops/{crop_id}/source", crop_source),
    Route("/api/manual/next", manual_next, methods=["POST"]),
    Route("/api/manual/crop", manual_crop, methods=["POST"]),
    Route("/api/posts/{post_id}/original", post_original),
    Route("/api/posts/{post_id}/candidates", post_candidates),
]


def create_app(engine: Engine, settings: Settings, config: ReviewAppConfig) -> Starlette:
    """The review app over one database and store; `config.reviewer` is the default reviewer name.

    Token mode (see the module's docstring) is on when `config.token` is given or any reviewer has a token
    of their own when the app is made.
    """
    check_page_reviewer(config.reviewer)
    if config.token is not None and not config.token:
        # An empty token would make "Authorization: Bearer " a valid login.
        config = dataclasses.replace(config, token=None)
    store = FileStore(settings.home)
    tokens = ReviewerTokens(engine)
    identities = (
        Identities(tokens, config.reviewer, config.token)
        if config.token is not None or tokens.any()
        else None
    )
    app = Starlette(
        routes=ROUTES,
        exception_handlers={
            ReviewError: review_error,
            AnimexprError: server_error,  # a ReviewError takes the handler above: the nearest class wins
            HTTPException: http_error,
        },
    )
    app.state.review = ReviewContext(
        config=config,
        class_names=tuple(settings.class_names),
        queue=ReviewQueue(engine, settings.class_names, config.lease_seconds),
        store=store,
        cropper=ManualCropper(engine, store, settings.class_names),
        static=_load_static(),
        identities=identities,
    )
    app.add_middleware(GuardMiddleware, identities=identities)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts: a bad port or host, or a busy port, is one
    clear ReviewError. Port 0 picks a free port (read it back with `getsockname`)."""
    if not 0 <= port <= 65535:
        raise ReviewError(f"--port {port}: use a port from 1 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
    # and with Nagle on, every keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise ReviewError(
            f"cannot listen on {host!r} ({exc.strerror}); give an address or a known name as --host"
        ) from None
    except (OSError, UnicodeError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReviewError(
            f"cannot listen on {host}:{port} ({reason}); pick another --port or --host"
        ) from None
    return sock


def serve(engine: Engine, settings: Settings, config: ReviewAppConfig, sock: socket.socket) -> None:
    """Run the app with uvicorn on a bound socket until interrupted (the caller checked `listen_warning`)."""
    import uvicorn

    app = create_app(engine, settings, config)
    server_config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, lifespan="off"
    )
    uvicorn.Server(server_config).run(sockets=[sock])
