"""The Danbooru client against the fake server: pacing, cursors, retries, refusals, downloads, credentials."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from animexpr import __version__
from animexpr.harvest.client import (
    USER_AGENT,
    ClientPolicy,
    Credentials,
    DanbooruAuthError,
    DanbooruClient,
    DanbooruQueryError,
    DownloadError,
    FileNotOnServer,
    FileTooLarge,
    HarvestError,
    RateLimiter,
    credentials_from,
)
from animexpr.testing.fakebooru import FakeDanbooru, FakePost, generated_png

SECRET_KEY = "sEcReT-kEy-123"
# The server stamps a request when its thread runs; on a loaded 2-core host that can lag by tens of ms.
JITTER = 0.04


def posts(n: int) -> list[FakePost]:
    return [FakePost(id=10 + i, tags=("smile", "solo"), content=generated_png(i)) for i in range(n)]


def api_gaps(booru: FakeDanbooru) -> list[float]:
    times = [record.started for record in booru.api_records()]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def test_rate_limiter_spaces_slots_even_across_threads() -> None:
    limiter = RateLimiter(50.0)
    slots: list[float] = []
    late: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(5):
            slot = limiter.acquire()
            woke = time.monotonic()
            with lock:
                slots.append(slot)
                late.append(woke - slot)

    threads = [threading.Thread(target=take) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots.sort()
    assert len(slots) == 15
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 0.02 - 1e-9
    assert min(late) >= 0  # nobody went before its slot


def test_rate_limiter_hold_off_delays_the_next_slot() -> None:
    limiter = RateLimiter(None)
    limiter.acquire()
    limiter.hold_off(0.2)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.19


def test_pages_walk_with_cursors_until_an_empty_page(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(25))
    with DanbooruClient(booru.url, fast_policy) as client:
        pages = list(client.pages_before("smile solo", None, limit=10))
        assert [len(page) for page in pages] == [10, 10, 5]
        assert [post["id"] for page in pages for post in page] == list(range(34, 9, -1))
        newer = list(client.pages_after("smile solo", 20, limit=10))
        assert [post["id"] for page in newer for post in page] == list(range(21, 35))
    pages_asked = [record.params.get("page") for record in booru.api_records()]
    assert pages_asked[:4] == [None, "b25", "b15", "b10"]  # the last one comes back empty
    assert pages_asked[4:] == ["a20", "a30", "a34"]


def test_user_agent_names_the_tool_and_version(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1))
    with DanbooruClient(booru.url, fast_policy) as client:
        client.posts_page("smile")
    assert booru.api_records()[0].user_agent == USER_AGENT
    assert f"animexpr/{__version__}" in USER_AGENT


def test_credentials_go_as_basic_auth_never_in_the_url(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1), credentials={"alice": SECRET_KEY})
    credentials = Credentials("alice", SECRET_KEY)
    with DanbooruClient(booru.url, fast_policy, credentials) as client:
        assert client.posts_page("smile")
    record = booru.api_records()[0]
    assert record.login == "alice"
    assert "api_key" not in record.params
    assert "login" not in record.params
    assert SECRET_KEY not in repr(credentials)
    assert "alice" not in repr(credentials)


def test_files_are_fetched_without_credentials(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1), credentials={"alice": SECRET_KEY})
    with DanbooruClient(booru.url, fast_policy, Credentials("alice", SECRET_KEY)) as client:
        post = client.posts_page("smile")[0]
        client.download(post["file_url"], 10_000_000)
    assert booru.file_records()[0].login is None


def test_one_credential_alone_is_refused_before_any_request() -> None:
    assert credentials_from(None, None) is None
    with pytest.raises(HarvestError, match="API key"):
        credentials_from("alice", None)
    with pytest.raises(HarvestError, match="login"):
        credentials_from(None, SECRET_KEY)


def test_api_url_with_a_password_is_refused() -> None:
    with pytest.raises(HarvestError, match="must not contain"):
        DanbooruClient(f"https://alice:{SECRET_KEY}@danbooru.example")
    with pytest.raises(HarvestError, match="http"):
        DanbooruClient("danbooru.donmai.us")


def test_wrong_key_is_401_with_a_clear_message_and_no_secret(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1), credentials={"alice": "other"})
    with (
        DanbooruClient(booru.url, fast_policy, Credentials("alice", SECRET_KEY)) as client,
        pytest.raises(DanbooruAuthError) as raised,
    ):
        client.posts_page("smile solo")
    message = str(raised.value)
    assert "401" in message
    assert "Invalid API key" in message
    assert "DANBOORU_API_KEY" in message
    assert SECRET_KEY not in message
    assert len(booru.api_records()) == 1  # not retried


def test_key_without_permission_is_403(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1), credentials={"alice": SECRET_KEY}, forbidden_logins=["alice"])
    with (
        DanbooruClient(booru.url, fast_policy, Credentials("alice", SECRET_KEY)) as client,
        pytest.raises(DanbooruAuthError, match=r"403.*Access denied"),
    ):
        client.posts_page("smile")


def test_too_many_tags_is_422_naming_the_cause(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1))
    with DanbooruClient(booru.url, fast_policy) as client, pytest.raises(DanbooruQueryError) as raised:
        client.posts_page("smile solo 1girl")
    assert "You cannot search for more than 2 tags at a time." in str(raised.value)
    assert "at most 2 real tags" in str(raised.value)
    assert "'smile solo 1girl'" in str(raised.value)


def test_page_past_1000_is_410(booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy) -> None:
    booru = booru_factory(posts(1))
    with DanbooruClient(booru.url, fast_policy) as client, pytest.raises(DanbooruQueryError, match="410"):
        client.posts_page("smile", page="1001")


def test_error_body_on_success_status_is_shown(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1))
    with DanbooruClient(booru.url, fast_policy) as client, pytest.raises(HarvestError, match="That record"):
        client.get_json("/posts/999.json", {})  # 404 with Danbooru's error body


def test_5xx_and_dropped_connections_are_retried(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(3))
    booru.fail_next_api(503, "reset")
    with DanbooruClient(booru.url, fast_policy) as client:
        assert len(client.posts_page("smile")) == 3
    assert [record.status for record in booru.api_records()] == [503, 0, 200]


def test_5xx_retries_are_bounded(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1))
    booru.fail_next_api(500, 502, 503, 503, 503)
    with (
        DanbooruClient(booru.url, fast_policy) as client,
        pytest.raises(HarvestError, match="gave up after 3 tries"),
    ):
        client.posts_page("smile")
    assert len(booru.api_records()) == fast_policy.max_retries + 1


def test_5xx_backoff_grows(booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy) -> None:
    booru = booru_factory(posts(1))
    booru.fail_next_api(503, 503)
    policy = replace(fast_policy, backoff_base=0.1, backoff_max=1.0)
    with DanbooruClient(booru.url, policy) as client:
        client.posts_page("smile")
    gaps = api_gaps(booru)
    assert gaps[0] >= 0.05 - JITTER  # jitter keeps at least half of base * 2**0
    assert gaps[1] >= 0.1 - JITTER  # and half of base * 2**1


def test_429_pauses_everything_before_the_next_request(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1))
    booru.fail_next_api(429, 429)
    policy = replace(fast_policy, throttle_wait=0.15, backoff_max=5.0)
    with DanbooruClient(booru.url, policy) as client:
        assert client.posts_page("smile")
    gaps = api_gaps(booru)
    assert gaps[0] >= 0.15 - JITTER
    assert gaps[1] >= 0.30 - JITTER  # doubled: no hammering while limited


def test_429_honours_retry_after(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1), retry_after=0.3)
    booru.fail_next_api(429)
    policy = replace(fast_policy, throttle_wait=30.0, backoff_max=60.0)
    with DanbooruClient(booru.url, policy) as client:
        assert client.posts_page("smile")
    gap = api_gaps(booru)[0]
    assert 0.3 - JITTER <= gap < 5  # the header's 0.3 s, not the 30 s default


def test_endless_429_gives_up_with_advice(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(1))
    booru.fail_next_api(*[429] * 10)
    policy = replace(fast_policy, throttle_wait=0.01, max_throttled=3)
    with DanbooruClient(booru.url, policy) as client, pytest.raises(HarvestError, match="lower --rate"):
        client.posts_page("smile")
    assert len(booru.api_records()) == 4


def test_truncated_download_is_retried(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    fake = posts(1)
    booru = booru_factory(fake)
    booru.set_file_fault(fake[0].md5, "truncate", times=1)
    with DanbooruClient(booru.url, fast_policy) as client:
        url = client.posts_page("smile")[0]["file_url"]
        assert client.download(url, 10_000_000) == fake[0].content
    assert len(booru.file_records()) == 2


def test_pages_stop_at_a_page_without_a_usable_id(booru_factory: Callable[..., FakeDanbooru]) -> None:
    good = [FakePost(id=50 + i, tags=("smile", "solo"), content=generated_png(50 + i)) for i in range(3)]
    hostile = [
        FakePost(
            id=10 + i, tags=("smile", "solo"), content=generated_png(10 + i), json_overrides={"id": value}
        )
        for i, value in enumerate((1.5, True, "12", 2**64))
    ]
    booru = booru_factory(good + hostile)
    with DanbooruClient(booru.url, ClientPolicy(rate=None)) as client:
        pages = list(itertools.islice(client.pages_before("smile solo", None, limit=3), 5))
        newer = list(itertools.islice(client.pages_after("smile solo", 0, limit=3), 5))
    # No cursor can move past a page without one usable id: each walk ends there instead of asking forever.
    assert [[post["id"] for post in page] for page in pages] == [[52, 51, 50], [2**64, "12", True]]
    assert [[post["id"] for post in page] for page in newer] == [["12", True, 1.5]]


def test_download_failures_are_bounded(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    fake = posts(2)
    booru = booru_factory(fake)
    booru.set_file_fault(fake[0].md5, "truncate")
    booru.set_file_fault(fake[1].md5, "503")
    with DanbooruClient(booru.url, fast_policy) as client:
        urls = {post["md5"]: post["file_url"] for post in client.posts_page("smile")}
        with pytest.raises(DownloadError, match=r"truncated body|broken transfer"):
            client.download(urls[fake[0].md5], 10_000_000)
        with pytest.raises(DownloadError, match="HTTP 503"):
            client.download(urls[fake[1].md5], 10_000_000)
        with pytest.raises(FileNotOnServer, match="HTTP 404"):
            client.download(booru.url + "/original/00/00/" + "0" * 32 + ".png", 10_000_000)
    tries = fast_policy.max_retries + 1
    assert len(booru.file_records()) == 2 * tries + 1  # a 404 is final at once


def test_download_larger_than_the_limit_is_refused(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    fake = posts(1)
    booru = booru_factory(fake)
    with DanbooruClient(booru.url, fast_policy) as client:
        url = client.posts_page("smile")[0]["file_url"]
        with pytest.raises(FileTooLarge):
            client.download(url, len(fake[0].content) - 1)


def test_download_rate_is_separate_from_the_api_rate(
    booru_factory: Callable[..., FakeDanbooru], fast_policy: ClientPolicy
) -> None:
    booru = booru_factory(posts(4))
    policy = replace(fast_policy, rate=None, download_rate=10.0)
    with DanbooruClient(booru.url, policy) as client:
        for post in client.posts_page("smile"):
            client.download(post["file_url"], 10_000_000)
    times = [record.started for record in booru.file_records()]
    assert times[-1] - times[0] >= 3 * 0.1 - JITTER
    assert isinstance(ClientPolicy().rate, float)
