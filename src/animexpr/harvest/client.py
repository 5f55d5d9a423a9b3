"""A polite client for the Danbooru JSON API (https://danbooru.donmai.us/wiki_pages/help:api).

One `requests` session with a User-Agent naming animexpr and its version; API requests paced by a rate limiter
(at most `rate` per second, one slot after another, so bursts never happen); file downloads paced by their own
limiter. 429: everything waits (Retry-After when given, else a growing pause) before the next request,
because Danbooru lengthens the lockout of clients that keep sending while limited. 5xx and broken connections:
bounded retries with exponential backoff and jitter. 401/403/410/422 and other refusals: a `HarvestError`
whose message says what Danbooru said and what to do. A file download answered with a 4xx (other than 408,
425 and 429) or aimed at an unusable URL fails at once: asking again would get the same answer.

Credentials go out as HTTP Basic auth on API requests only (never in URLs, so no log line can show them, and
never to the file host); `Credentials` hides both values from `repr`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from animexpr import __version__
from animexpr.errors import AnimexprError
from animexpr.harvest.policy import usable_ids, usable_post_id

log = logging.getLogger(__name__)

USER_AGENT = f"animexpr/{__version__} (Danbooru expression-dataset crawler)"
MAX_PER_PAGE = 200  # Danbooru clamps `limit` to 200
_CHUNK = 1 << 16


class HarvestError(AnimexprError):
    """Danbooru refused or kept failing; the message is safe to show (it never holds credentials)."""


class DanbooruAuthError(HarvestError):
    """401 or 403: wrong login/API key, or a key without permission for the endpoint."""


class DanbooruQueryError(HarvestError):
    """410 (page beyond the limit) or 422 (too many tags, bad query): the query itself must change."""


class RetriesExhausted(HarvestError):
    """5xx answers or broken connections outlasted the retries; `problem` is the last one."""

    def __init__(self, what: str, problem: str, tries: int) -> None:
        super().__init__(f"{what}: gave up after {tries} tries: {problem}")
        self.problem = problem


class DownloadError(Exception):
    """A file could not be fetched after the retries; `detail` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FileTooLarge(DownloadError):
    """The body grew past the size limit while downloading."""


class DownloadRefused(DownloadError):
    """A final answer for a file (a 4xx, an unusable URL, a redirect loop): it is not asked for again."""


class FileNotOnServer(DownloadRefused):
    """404 or 410: the file host does not have the file."""


# 4xx answers to a file request that may change when asked again: a timeout, and "too early" (TLS replays).
# 429 is handled by pacing in `_send`. Every other 4xx is final.
_RETRYABLE_FILE_STATUSES = frozenset({408, 425})
_GONE_STATUSES = frozenset({404, 410})
_UNUSABLE_URL = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)


class Stopped(Exception):
    """The crawl is being interrupted; the request was abandoned."""


@dataclass(frozen=True)
class Credentials:
    """A Danbooru login and API key. Neither value ever appears in repr, logs or messages."""

    login: str = field(repr=False)
    api_key: str = field(repr=False)

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    @property
    def basic_auth(self) -> tuple[str, str]:
        return (self.login, self.api_key)


def credentials_from(login: str | None, api_key: str | None) -> Credentials | None:
    """Both or neither: Danbooru answers 401 "Missing login or api_key" to one alone, so say it first."""
    if not login and not api_key:
        return None
    if not login or not api_key:
        missing = (
            "login (--login / DANBOORU_LOGIN)" if not login else "API key (--api-key / DANBOORU_API_KEY)"
        )
        raise HarvestError(f"Danbooru needs both a login and an API key; the {missing} is missing")
    return Credentials(login, api_key)


@dataclass(frozen=True)
class ClientPolicy:
    """How hard the client may push. Times are in seconds; a rate of None means no limit (tests, benches)."""

    rate: float | None = 1.0  # API requests per second
    download_rate: float | None = 2.0  # file requests per second
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 4  # per request, for 5xx and broken connections
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    throttle_wait: float = 30.0  # first pause after a 429 without Retry-After; doubles each time
    max_throttled: int = 8  # consecutive 429s on one request before giving up
    pool_size: int = 8


class RateLimiter:
    """At most `rate` requests per second: each one gets its own slot, 1/rate after the previous one.

    Slots are handed out under a lock and waited for outside it, so concurrent callers queue in order.
    `sending` moves the next slot after a late request; `hold_off` pushes it out (after a 429).
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._clock = clock
        self._lock = threading.Lock()
        self._next_slot = 0.0

    def acquire(self, stop: threading.Event | None = None) -> float:
        """Wait for the next free slot; returns the slot's time on the limiter's clock."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        _pause(slot - now, stop)
        return slot

    def sending(self) -> None:
        """Call right before the request goes out: the next slot is at least one interval after now.

        A caller that woke up late (a busy machine, a long pause of this thread) would otherwise send this
        request late and the next one on time, closer together than the interval.
        """
        with self._lock:
            self._next_slot = max(self._next_slot, self._clock() + self.interval)

    def hold_off(self, seconds: float) -> None:
        with self._lock:
            self._next_slot = max(self._next_slot, self._clock() + seconds)


def _pause(seconds: float, stop: threading.Event | None) -> None:
    if seconds <= 0:
        if stop is not None and stop.is_set():
            raise Stopped
        return
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Stopped


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about base * 2**attempt, between half and all of it, at most cap."""
    ceiling = min(cap, base * (2**attempt))
    return ceiling * (0.5 + random.random() / 2)


def retry_after_seconds(response: requests.Response) -> float | None:
    """Retry-After in seconds when present (Danbooru sends none; proxies in front of it might)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough to treat as absent


def danbooru_message(response: requests.Response) -> str:
    """The `message` of Danbooru's `{"success": false, ...}` error body, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason or ""
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.reason or ""


def check_api_url(api_url: str) -> str:
    """The base URL without a trailing slash; refuses URLs carrying a password (it would end up in logs)."""
    parts = urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HarvestError(
            f"--api-url must be an http(s) URL such as https://danbooru.donmai.us, got {api_url!r}"
        )
    if parts.username or parts.password:
        raise HarvestError(
            "--api-url must not contain a login or key; use --login / --api-key or the environment"
        )
    return api_url.rstrip("/")


class DanbooruClient:
    """The API calls the crawler needs, with pacing, retries and clear errors."""

    def __init__(
        self,
        api_url: str,
        policy: ClientPolicy | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.api_url = check_api_url(api_url)
        self.policy = policy or ClientPolicy()
        self._auth = credentials.basic_auth if credentials else None
        self.api_limiter = RateLimiter(self.policy.rate)
        self.download_limiter = RateLimiter(self.policy.download_rate)
        self.api_requests = 0  # sent, retries included
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.policy.pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DanbooruClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.policy.connect_timeout, self.policy.read_timeout)

    # API ---------------------------------------------------------------------------------

    def posts_page(
        self, tags: str, page: str | None = None, limit: int = MAX_PER_PAGE
    ) -> list[dict[str, Any]]:
        """One `/posts.json` page: newest first, also for `a<id>` pages (Danbooru reverses them)."""
        params: dict[str, Any] = {"tags": tags, "limit": min(limit, MAX_PER_PAGE)}
        if page is not None:
            params["page"] = page
        body = self.get_json("/posts.json", params)
        if not isinstance(body, list):
            raise HarvestError(f"/posts.json for {tags!r} answered {type(body).__name__}, expected a list")
        return body

    def count_posts(self, tags: str) -> int | None:
        """Danbooru's estimate of the posts matching `tags` (deleted ones included); None when unknown."""
        body = self.get_json("/counts/posts.json", {"tags": tags})
        try:
            count = body["counts"]["posts"]
        except (KeyError, TypeError):
            return None
        if type(count) is not int or count < 0:  # bool is an int too; a hostile count is no count
            return None
        return count

    def pages_before(
        self, tags: str, before_id: int | None, limit: int = MAX_PER_PAGE
    ) -> Iterator[list[dict]]:
        """Pages of posts older than `before_id` (all posts when None), newest first, until an empty page.

        Walks with the `b<id>` cursor: numbered pages stop at page 1000 (410). Stops on an empty page, not on
        a short one, because Danbooru-family APIs sometimes return short pages mid-way, and on a page without
        one usable id (no cursor can move past it).
        """
        while True:
            page = self.posts_page(tags, f"b{before_id}" if before_id is not None else None, limit)
            if not page:
                return
            yield page
            ids = usable_ids(page)
            if not ids:
                return
            before_id = min(ids)

    def pages_after(self, tags: str, after_id: int, limit: int = MAX_PER_PAGE) -> Iterator[list[dict]]:
        """Pages of posts newer than `after_id`, each sorted oldest first, until an empty page (`a<id>`).

        Posts without a usable id come first in their page and never move the cursor.
        """
        while True:
            page = self.posts_page(tags, f"a{after_id}", limit)
            if not page:
                return
            yield sorted(page, key=lambda post: usable_post_id(post) or 0)
            ids = usable_ids(page)
            if not ids:
                return
            after_id = max(ids)

    def get_json(self, path: str, params: dict[str, Any]) -> Any:
        url = self.api_url + path
        response = self._send(url, params, self.api_limiter, auth=self._auth, what=path)
        _raise_for_refusal(response, path, params)
        try:
            body = response.json()
        except ValueError as exc:
            raise HarvestError(f"{path}: Danbooru answered something that is not JSON") from exc
        if isinstance(body, dict) and body.get("success") is False:
            raise HarvestError(f"{path}: Danbooru says: {body.get('message') or 'request failed'}")
        return body

    def _send(
        self,
        url: str,
        params: dict[str, Any] | None,
        limiter: RateLimiter,
        *,
        auth: tuple[str, str] | None = None,
        what: str,
        stream: bool = False,
        stop: threading.Event | None = None,
        max_retries: int | None = None,
    ) -> requests.Response:
        """GET with pacing and retries; returns the first response that is neither 429 nor 5xx."""
        retries = self.policy.max_retries if max_retries is None else max_retries
        failures = 0
        throttled = 0
        while True:
            limiter.acquire(stop)
            if limiter is self.api_limiter:
                self.api_requests += 1
            try:
                limiter.sending()
                response = self.session.get(
                    url, params=params, auth=auth, timeout=self.timeout, stream=stream, allow_redirects=True
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                failures += 1
                problem = f"{type(exc).__name__}"
                if failures > retries:
                    raise _gave_up(what, problem, failures) from None
                self._wait_before_retry(what, problem, failures, stop)
                continue
            if response.status_code == 429:
                response.close()
                throttled += 1
                if throttled > self.policy.max_throttled:
                    raise HarvestError(
                        f"{what}: Danbooru kept answering 429 (too many requests) after "
                        f"{throttled - 1} pauses; try again later with a lower --rate"
                    )
                wait = retry_after_seconds(response)
                if wait is None:
                    wait = min(self.policy.backoff_max, self.policy.throttle_wait * 2 ** (throttled - 1))
                log.warning("%s: 429 too many requests; pausing %.2f s before the next request", what, wait)
                limiter.hold_off(wait)
                continue
            if response.status_code >= 500:
                failures += 1
                problem = f"HTTP {response.status_code} {danbooru_message(response)}".strip()
                response.close()
                if failures > retries:
                    raise _gave_up(what, problem, failures)
                self._wait_before_retry(what, problem, failures, stop)
                continue
            return response

    def _wait_before_retry(
        self, what: str, problem: str, failures: int, stop: threading.Event | None
    ) -> None:
        delay = backoff_delay(failures - 1, self.policy.backoff_base, self.policy.backoff_max)
        log.info("%s: %s; retry %d/%d in %.1f s", what, problem, failures, self.policy.max_retries, delay)
        _pause(delay, stop)

    # files ---------------------------------------------------------------------------------

    def download(self, url: str, max_bytes: int, stop: threading.Event | None = None) -> bytes:
        """The whole body of `url`, or DownloadError after the retries (truncated bodies are retried too).

        FileTooLarge and DownloadRefused (FileNotOnServer for 404/410) come at the first such answer.
        """
        failures = 0
        while True:
            try:
                return self._download_once(url, max_bytes, stop)
            except (FileTooLarge, DownloadRefused):
                raise
            except DownloadError as exc:
                failures += 1
                if failures > self.policy.max_retries:
                    raise DownloadError(f"{exc.detail} (after {failures} tries)") from None
                self._wait_before_retry(_file_name(url), exc.detail, failures, stop)

    def _download_once(self, url: str, max_bytes: int, stop: threading.Event | None) -> bytes:
        try:
            # Transient failures are retried by `download`, which also retries broken bodies.
            response = self._send(
                url, None, self.download_limiter, what=_file_name(url), stream=True, stop=stop, max_retries=0
            )
        except RetriesExhausted as exc:
            raise DownloadError(exc.problem) from None
        except HarvestError as exc:  # 429 without end
            raise DownloadError(str(exc)) from None
        except _UNUSABLE_URL as exc:
            raise DownloadRefused(f"unusable URL ({type(exc).__name__})") from None
        except requests.TooManyRedirects:
            raise DownloadRefused("too many redirects") from None
        with response:
            return _read_body(response, max_bytes, stop)


def _read_body(response: requests.Response, max_bytes: int, stop: threading.Event | None) -> bytes:
    """The whole body of a file response: FileTooLarge past `max_bytes`, DownloadError when cut short."""
    _raise_for_file_status(response.status_code)
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FileTooLarge(f"{int(declared)} bytes > limit {max_bytes}")
    body = bytearray()
    try:
        for chunk in response.iter_content(_CHUNK):
            if stop is not None and stop.is_set():
                raise Stopped
            body += chunk
            if len(body) > max_bytes:
                raise FileTooLarge(f"more than {max_bytes} bytes")
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise DownloadError(f"broken transfer ({type(exc).__name__}) after {len(body)} bytes") from None
    if declared is not None and declared.isdigit() and len(body) != int(declared):
        raise DownloadError(f"truncated body: {len(body)} of {declared} bytes")
    return bytes(body)


def _raise_for_file_status(status: int) -> None:
    """Nothing for 200; FileNotOnServer, DownloadRefused (final) or DownloadError (retried) otherwise."""
    if status == 200:
        return
    if status in _GONE_STATUSES:
        raise FileNotOnServer(f"HTTP {status}: the file is not on the server")
    if 400 <= status < 500 and status not in _RETRYABLE_FILE_STATUSES:
        raise DownloadRefused(f"HTTP {status} (final, not retried)")
    raise DownloadError(f"HTTP {status}")


def _file_name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1] or url


def _gave_up(what: str, problem: str, failures: int) -> RetriesExhausted:
    return RetriesExhausted(what, problem, failures)


_REFUSAL_HINTS = {
    401: "check the login and API key (--login/--api-key or DANBOORU_LOGIN/DANBOORU_API_KEY)",
    403: "the API key lacks permission for this endpoint, or the request was blocked",
    410: "numbered pages stop at 1000; animexpr walks with b<id> cursors, so this should not happen",
    422: "anonymous and basic accounts may search for at most 2 real tags (metatags like rating: are free)",
}


def _raise_for_refusal(response: requests.Response, path: str, params: dict[str, Any]) -> None:
    status = response.status_code
    if status < 400:
        return
    message = danbooru_message(response)
    hint = _REFUSAL_HINTS.get(status, "")
    if status == 403 and response.headers.get("cf-mitigated"):
        hint = "Cloudflare challenged the request; slow down (--rate) or use a login and API key"
    query = f" for tags {params['tags']!r}" if "tags" in params else ""
    text = f"Danbooru refused {path}{query} with HTTP {status}: {message or response.reason}"
    if hint:
        text += f" ({hint})"
    if status in (401, 403):
        raise DanbooruAuthError(text)
    if status in (410, 422):
        raise DanbooruQueryError(text)
    raise HarvestError(text)
