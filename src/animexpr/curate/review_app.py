"""The review web app: a Starlette ASGI app with a JSON API and one static page, served by uvicorn.

Safety, in the order the guard applies it:
- Without a token the app answers only requests addressed to a loopback name (127.0.0.1, localhost, ::1), so
  a web page cannot reach it through DNS rebinding.
- With a token every request but the login form needs it: as `Authorization: Bearer`, or as the HttpOnly
  cookie the login form sets (an HMAC of the token, so the browser never stores the token itself and the
  page's JavaScript never sees either).
- State changes are POSTs with a JSON body and an Origin equal to the page's own (or a bearer token).
- Images are looked up by crop id in the database; no part of a request path reaches the file system, and
  the page's own three files are read into memory at start-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
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
from animexpr.curate.review import (
    DEFAULT_LEASE_SECONDS,
    STATE_FILTERS,
    CropNotFound,
    LeaseConflict,
    Order,
    QueueFilter,
    ReviewError,
    ReviewQueue,
    check_reviewer,
    parse_order,
)
from animexpr.store import FileStore

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SESSION_COOKIE = "animexpr_review"
MAX_BODY_BYTES = 256 * 1024
DEFAULT_GRID_SIZE = 48
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "login.html": "text/html; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
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
    reviewer: str
    token: str | None = None
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    grid_size: int = DEFAULT_GRID_SIZE


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_warning(host: str, token: str | None) -> str | None:
    """None for a loopback address; a warning for any other (which needs a token, else ReviewError)."""
    if is_loopback(host):
        return None
    if not token:
        raise ReviewError(
            f"--host {host} makes the review page reachable from other machines: give --token "
            "(or ANIMEXPR_REVIEW_TOKEN) so that only people with it can change decisions"
        )
    if len(token) < 12:
        raise ReviewError("--token: use at least 12 characters")
    return (
        f"listening on {host}: anyone who can reach this port and has the token can review; "
        "the connection is plain HTTP, so use it on a trusted network or behind a TLS proxy"
    )


def session_cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"animexpr-review-session", hashlib.sha256).hexdigest()


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class GuardMiddleware:
    """Host, token and origin checks for every request, and the security headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token
        self.cookie = session_cookie_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self.refusal(request)
        target: ASGIApp = refusal if refusal is not None else self.app

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await target(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        host = request.headers.get("host", "")
        if self.token is None and not is_loopback(_host_name(host)):
            return _error(421, "this review server answers on 127.0.0.1 only")
        bearer = self._bearer_ok(request)
        needs_login = self.token is not None and request.url.path not in PUBLIC_PATHS
        if needs_login and not (bearer or self._cookie_ok(request)):
            if request.method == "GET" and request.url.path == "/":
                return RedirectResponse("/login", status_code=303)
            return _error(401, "log in first: open the page and enter the token")
        if request.method not in ("GET", "HEAD") and not bearer:
            origin = request.headers.get("origin")
            if origin not in (f"http://{host}", f"https://{host}"):
                return _error(403, "refused: a change must come from the review page itself (Origin check)")
        return None

    def _bearer_ok(self, request: Request) -> bool:
        if self.token is None:
            return False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token)

    def _cookie_ok(self, request: Request) -> bool:
        value = request.cookies.get(SESSION_COOKIE, "")
        return self.cookie is not None and hmac.compare_digest(value, self.cookie)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers={"cache-control": "no-store"})


def _load_static() -> dict[str, bytes]:
    folder = resources.files("animexpr.curate") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send JSON (Content-Type: application/json)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, "request body too large")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, "request body too large")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise HTTPException(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


def _ids(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ReviewError(f"{name}: expected a list of crop ids")
    return value


def _count(value: Any) -> int:
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ReviewError("count: expected a positive whole number")
    return value


def create_app(engine: Engine, settings: Settings, config: ReviewAppConfig) -> Starlette:
    """The review app over one database and store; `config.reviewer` is the default reviewer name."""
    check_reviewer(config.reviewer)
    if config.token is not None and not config.token:
        # An empty token would make "Authorization: Bearer " a valid login.
        config = dataclasses.replace(config, token=None)
    queue = ReviewQueue(engine, settings.class_names, config.lease_seconds)
    store = FileStore(settings.home)
    static = _load_static()

    def reviewer_of(request: Request) -> str:
        name = request.headers.get("x-reviewer", "").strip()
        return check_reviewer(name) if name else config.reviewer

    async def page(request: Request) -> Response:
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"])

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES or name == "index.html":
            return _error(404, "not found")
        return Response(static[name], media_type=STATIC_FILES[name], headers={"cache-control": "no-cache"})

    async def login(request: Request) -> Response:
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return Response(static["login.html"], media_type=STATIC_FILES["login.html"])
        body = (await request.body())[:4096].decode("utf-8", "replace")
        given = parse_qs(body).get("token", [""])[0]
        if not hmac.compare_digest(given, config.token):
            log.warning(
                "a wrong review token was entered from %s", request.client.host if request.client else "?"
            )
            failed = static["login.html"].replace(
                b"<!--message-->", b'<p class="login-error">Wrong token.</p>'
            )
            return Response(failed, status_code=401, media_type=STATIC_FILES["login.html"])
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session_cookie_value(config.token), httponly=True, samesite="strict", path="/"
        )
        return response

    async def app_config(request: Request) -> Response:
        return _json(
            {
                "reviewer": reviewer_of(request),
                "classes": list(settings.class_names),
                "orders": [order.value for order in Order],
                "default_order": Order.WORST_FIRST.value,
                "states": list(STATE_FILTERS),
                "grid_size": config.grid_size,
                "lease_seconds": config.lease_seconds,
            }
        )

    async def next_items(request: Request) -> Response:
        body = await _json_body(request)
        queue_filter = QueueFilter.from_mapping(body.get("filter") or {}, settings.class_names)
        items = await run_in_threadpool(
            queue.lease_next,
            reviewer_of(request),
            queue_filter,
            parse_order(body.get("order")),
            _count(body.get("count")),
            _ids(body.get("exclude"), "exclude"),
        )
        return _json({"items": items})

    async def decide(request: Request) -> Response:
        body = await _json_body(request)
        crop_id = _ids([body.get("crop_id")], "crop_id")[0]
        label = body.get("label")
        result = await run_in_threadpool(
            queue.decide, reviewer_of(request), crop_id, str(body.get("decision")), label
        )
        return _json({"result": result.to_dict()})

    async def decide_page(request: Request) -> Response:
        body = await _json_body(request)
        results, skipped = await run_in_threadpool(
            queue.decide_page,
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
        await _json_body(request)
        results = await run_in_threadpool(queue.undo_last, reviewer_of(request))
        items = await run_in_threadpool(queue.items, [result.crop_id for result in results])
        return _json({"results": [result.to_dict() for result in results], "items": items})

    async def renew(request: Request) -> Response:
        body = await _json_body(request)
        renewed = await run_in_threadpool(
            queue.renew_leases, reviewer_of(request), _ids(body.get("crop_ids"), "crop_ids")
        )
        return _json({"renewed": renewed})

    async def stats(request: Request) -> Response:
        return _json(await run_in_threadpool(queue.stats, reviewer_of(request)))

    async def history(request: Request) -> Response:
        limit = request.query_params.get("limit", "50")
        if not limit.isdigit():
            raise ReviewError("limit: expected a number")
        items = await run_in_threadpool(queue.history, reviewer_of(request), int(limit))
        return _json({"items": items})

    async def item(request: Request) -> Response:
        return _json(await run_in_threadpool(queue.item, request.path_params["crop_id"]))

    def image_endpoint(which: str) -> Callable[[Request], Awaitable[Response]]:
        async def image(request: Request) -> Response:
            relpath = await run_in_threadpool(queue.file_relpath, request.path_params["crop_id"], which)
            path = store.abspath(relpath)
            if not path.is_file():
                return _error(404, f"the {which} image is missing from the store ({relpath})")
            media_type = IMAGE_TYPES.get(path.suffix.lower().lstrip("."), "application/octet-stream")
            # A crop id always names the same content-addressed file.
            return FileResponse(
                path, media_type=media_type, headers={"cache-control": "private, max-age=86400"}
            )

        return image

    async def review_error(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, CropNotFound) else 409 if isinstance(exc, LeaseConflict) else 400
        return _error(status, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
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
        Route("/api/crops/{crop_id:int}", item),
        Route("/api/crops/{crop_id:int}/image", image_endpoint("crop")),
        Route("/api/crops/{crop_id:int}/source", image_endpoint("source")),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ReviewError: review_error, HTTPException: http_error},
    )
    app.add_middleware(GuardMiddleware, token=config.token)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts so that a busy port is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
    # and with Nagle on, every keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ReviewError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    return sock


def serve(engine: Engine, settings: Settings, config: ReviewAppConfig, sock: socket.socket) -> None:
    """Run the app with uvicorn on a bound socket until interrupted (the caller checked `listen_warning`)."""
    import uvicorn

    app = create_app(engine, settings, config)
    server_config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, lifespan="off"
    )
    uvicorn.Server(server_config).run(sockets=[sock])
