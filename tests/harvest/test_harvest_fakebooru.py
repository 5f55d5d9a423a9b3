"""The fake Danbooru behaves like Danbooru's source says it does (the crawler tests rely on it)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from animexpr.testing.fakebooru import (
    CorpusCounts,
    FakeDanbooru,
    FakePost,
    build_corpus,
    generated_png,
    parse_query,
    serve_fake_danbooru,
)

UA = {"User-Agent": "animexpr-tests"}


def get(booru: FakeDanbooru, path: str, **params: str | int) -> requests.Response:
    return requests.get(booru.url + path, params=params, headers=UA, timeout=5)


def many_posts(n: int, tag: str = "smile") -> list[FakePost]:
    return [FakePost(id=100 + i, tags=(tag, "solo"), content=generated_png(i)) for i in range(n)]


def test_post_json_has_danbooru_field_names_and_types(
    assets_dir: Path, booru_factory: Callable[..., FakeDanbooru], make_corpus: Callable[..., list[FakePost]]
) -> None:
    real = json.loads((assets_dir / "danbooru" / "posts.json").read_text())
    booru = booru_factory(make_corpus(CorpusCounts(keep=2)))
    fake = get(booru, "/posts.json", tags="smile").json()
    assert fake
    assert list(fake[0]) == list(real[0])  # same names, same order
    for key, value in real[0].items():
        if value is not None:
            assert type(fake[0][key]) is type(value), key
    real_shape = real[0]["file_url"].split("/")[-4:]
    fake_shape = fake[0]["file_url"].split("/")[-4:]
    assert [len(part) for part in fake_shape[1:3]] == [len(part) for part in real_shape[1:3]]
    assert fake_shape[0] == real_shape[0] == "original"


def test_real_faces_are_served_with_their_md5(
    assets_dir: Path, booru_factory: Callable[..., FakeDanbooru]
) -> None:
    posts = build_corpus(("angry", "sad"), CorpusCounts(keep=3), faces_dir=assets_dir / "faces")
    booru = booru_factory(posts)
    for post in get(booru, "/posts.json", tags="angry", limit=200).json():
        body = requests.get(post["file_url"], headers=UA, timeout=5).content
        assert body[:3] == b"\xff\xd8\xff"  # a JPEG face, not a generated PNG
        assert hashlib.md5(body).hexdigest() == post["md5"]


def test_generated_images_have_their_md5_and_differ(booru_factory: Callable[..., FakeDanbooru]) -> None:
    posts = build_corpus(("angry", "sad"), CorpusCounts(keep=4))
    booru = booru_factory(posts)
    md5s = set()
    for post in get(booru, "/posts.json", tags="solo", limit=200).json():
        body = requests.get(post["file_url"], headers=UA, timeout=5).content
        assert body.startswith(b"\x89PNG")
        assert hashlib.md5(body).hexdigest() == post["md5"]
        md5s.add(post["md5"])
    assert len(md5s) == 8


def test_limit_is_clamped_to_200_and_defaults_to_20(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(many_posts(450))
    assert len(get(booru, "/posts.json", tags="smile", limit=1000).json()) == 200
    assert len(get(booru, "/posts.json", tags="smile").json()) == 20


def test_before_and_after_cursors_walk_by_id_newest_first(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(many_posts(50))
    before = [post["id"] for post in get(booru, "/posts.json", tags="smile", limit=10, page="b130").json()]
    assert before == list(range(129, 119, -1))
    after = [post["id"] for post in get(booru, "/posts.json", tags="smile", limit=10, page="a130").json()]
    assert after == list(range(140, 130, -1))  # the 10 just above 130, reversed as Danbooru does
    assert get(booru, "/posts.json", tags="smile", page="b100").json() == []


def test_numbered_pages_stop_at_1000_with_410(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(many_posts(5))
    assert get(booru, "/posts.json", tags="smile", page=1000).status_code == 200
    refused = get(booru, "/posts.json", tags="smile", page=1001)
    assert refused.status_code == 410
    assert refused.json() == {
        "success": False,
        "error": "PaginationExtension::PaginationError",
        "message": "You cannot go beyond page 1000.",
    }
    assert (
        get(booru, "/posts.json", tags="smile", page="b9999999").status_code == 200
    )  # cursors have no limit


def test_more_than_two_real_tags_is_422_and_metatags_are_free(
    booru_factory: Callable[..., FakeDanbooru],
) -> None:
    booru = booru_factory(many_posts(3))
    refused = get(booru, "/posts.json", tags="smile solo 1girl")
    assert refused.status_code == 422
    assert refused.json()["message"] == "You cannot search for more than 2 tags at a time."
    free = get(booru, "/posts.json", tags="smile solo rating:g,s -status:deleted filetype:png")
    assert free.status_code == 200
    assert len(free.json()) == 3
    assert parse_query("smile order:score").counted_terms == 2


def test_query_filters_tags_ratings_and_status(booru_factory: Callable[..., FakeDanbooru]) -> None:
    posts = build_corpus(("smile", "sad"), CorpusCounts(keep=3, explicit=2, deleted=1, not_solo=2))
    booru = booru_factory(posts)
    found = get(booru, "/posts.json", tags="smile solo rating:g,s", limit=200).json()
    kinds = sorted(next(p.kind for p in posts if p.id == post["id"]) for post in found)
    assert kinds == ["deleted", "keep", "keep", "keep"]  # deleted posts are returned by default
    assert all(post["rating"] in "gs" for post in found)
    active = get(booru, "/posts.json", tags="smile solo -status:deleted", limit=200).json()
    assert not any(post["is_deleted"] for post in active)
    assert len(active) == 5  # 3 kept + 2 explicit


def test_counts_endpoint(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(many_posts(7))
    assert get(booru, "/counts/posts.json", tags="smile solo").json() == {"counts": {"posts": 7}}
    assert get(booru, "/counts/posts.json", tags="a b c").status_code == 422


def test_banned_posts_lack_md5_and_file_urls(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(build_corpus(("smile", "sad"), CorpusCounts(keep=0, banned=2)))
    posts = get(booru, "/posts.json", tags="smile").json()
    assert len(posts) == 2
    for post in posts:
        assert post["is_banned"] is True
        assert not {"md5", "file_url", "large_file_url", "preview_file_url"} & set(post)


def test_authentication_errors_are_401_and_403(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(many_posts(1), credentials={"alice": "k1", "bob": "k2"}, forbidden_logins=["bob"])
    ok = requests.get(booru.url + "/posts.json", auth=("alice", "k1"), headers=UA, timeout=5)
    assert ok.status_code == 200
    wrong = requests.get(booru.url + "/posts.json", auth=("alice", "nope"), headers=UA, timeout=5)
    assert wrong.status_code == 401
    assert wrong.json()["message"] == "Invalid API key"
    assert get(booru, "/posts.json", login="alice").json()["message"] == "Missing login or api_key"
    forbidden = requests.get(booru.url + "/posts.json", auth=("bob", "k2"), headers=UA, timeout=5)
    assert forbidden.status_code == 403


def test_browser_and_default_user_agents_are_challenged(booru_factory: Callable[..., FakeDanbooru]) -> None:
    booru = booru_factory(many_posts(1))
    answer = requests.get(booru.url + "/posts.json", timeout=5)  # python-requests/x.y
    assert answer.status_code == 403
    assert answer.headers["cf-mitigated"] == "challenge"


def test_throttle_answers_429_and_penalises_requests_while_limited(
    booru_factory: Callable[..., FakeDanbooru],
) -> None:
    booru = booru_factory(many_posts(1), throttle=(1.0, 2.0), retry_after=3)
    statuses = [get(booru, "/posts.json", tags="smile").status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    limited = get(booru, "/posts.json", tags="smile")
    assert limited.headers["Retry-After"] == "3"
    assert booru._points < 0  # hammering digs the hole deeper, as on Danbooru


def test_file_faults_truncate_and_wrong_bytes(booru_factory: Callable[..., FakeDanbooru]) -> None:
    posts = many_posts(2)
    booru = booru_factory(posts)
    urls = {post["id"]: post["file_url"] for post in get(booru, "/posts.json", tags="smile").json()}
    booru.set_file_fault(posts[0].md5, "truncate", times=1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(urls[posts[0].id], headers=UA, timeout=5)
    assert requests.get(urls[posts[0].id], headers=UA, timeout=5).content == posts[0].content  # only once
    booru.set_file_fault(posts[1].md5, "wrong_bytes")
    body = requests.get(urls[posts[1].id], headers=UA, timeout=5).content
    assert len(body) == len(posts[1].content)
    assert hashlib.md5(body).hexdigest() != posts[1].md5
    booru.set_file_fault(posts[1].md5, "503", times=1)
    assert requests.get(urls[posts[1].id], headers=UA, timeout=5).status_code == 503


def test_sample_and_preview_are_served_for_large_images(booru_factory: Callable[..., FakeDanbooru]) -> None:
    post = FakePost(id=1, tags=("smile", "solo"), content=generated_png(1, 1200, 900), width=1200, height=900)
    booru = booru_factory([post])
    body = get(booru, "/posts.json", tags="smile").json()[0]
    assert body["has_large"] is True
    assert "/sample/" in body["large_file_url"]
    assert body["large_file_url"].rsplit("/", 1)[-1] == f"sample-{post.md5}.jpg"
    sample = requests.get(body["large_file_url"], headers=UA, timeout=5)
    assert sample.status_code == 200
    assert sample.content[:3] == b"\xff\xd8\xff"
    assert requests.get(body["preview_file_url"], headers=UA, timeout=5).status_code == 200


def test_serve_fake_danbooru_gives_a_url_with_every_class() -> None:
    with serve_fake_danbooru(per_class=3) as url:
        for tag in ("angry", "sad", "smile", "surprised"):
            posts = requests.get(
                f"{url}/posts.json", params={"tags": f"{tag} solo"}, headers=UA, timeout=5
            ).json()
            assert sum(1 for post in posts if tag in post["tag_string"].split()) >= 3
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/posts.json", headers=UA, timeout=2)
