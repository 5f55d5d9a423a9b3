"""Harvest benchmark against the fake Danbooru on 127.0.0.1 (no network).

1. Server latency zero, client unpaced: posts downloaded per second by the full crawl (API pages, judging,
   SQLite rows, md5 check, atomic stores, 4 download threads), against a baseline in the same process: a
   bare `requests` loop fetching the same pages and files one after another with no database or store.
2. The client's own time per API request (median): the client's wall time for one `/posts.json` page of 200
   posts minus the server's time to answer it, against the same for a bare `requests.get(...).json()`.
3. Rate limit R (5 and 20 requests/s): the API rate the server measured from its request timestamps, as a
   fraction of R (goal >= 0.95; never above 1). Here the server runs in its own process.

Usage: python bench/harvest.py [--posts-per-class 250] [--rates 5,10,20]
The figures depend on how busy the machine is: the load average is printed first.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

import requests

from animexpr.config import load_settings
from animexpr.db.session import open_db
from animexpr.harvest.client import USER_AGENT, ClientPolicy, DanbooruClient
from animexpr.harvest.crawl import crawl
from animexpr.harvest.policy import HarvestOptions
from animexpr.store import FileStore
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, FakePost, build_corpus

UNPACED = ClientPolicy(rate=None, download_rate=None, pool_size=8)
BARE_PARAMS: dict[str, str | int] = {"tags": "smile solo", "limit": 200}


def crawl_once(url: str, options: HarvestOptions, policy: ClientPolicy, classes: list[str] | None) -> float:
    """Seconds for one crawl into a fresh home."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings(home=Path(scratch), environ={})
        engine = open_db(settings.db_url)
        store = FileStore(settings.home)
        store.create_areas()
        started = time.perf_counter()
        with DanbooruClient(url, policy) as client:
            crawl(engine, store, settings, client, options, classes)
        seconds = time.perf_counter() - started
        engine.dispose()
    return seconds


def bare_loop(booru: FakeDanbooru, tags: list[str]) -> tuple[float, int]:
    """Baseline: the same pages and files with plain requests, sequential, nothing stored."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    started = time.perf_counter()
    files = 0
    for tag in tags:
        page: str | None = None
        while True:
            params: dict[str, str | int] = {"tags": f"{tag} solo rating:g,s", "limit": 200}
            if page:
                params["page"] = page
            posts = session.get(booru.url + "/posts.json", params=params, timeout=30).json()
            if not posts:
                break
            for post in posts:
                files += len(session.get(post["file_url"], timeout=30).content) > 0
            page = f"b{min(post['id'] for post in posts)}"
    return time.perf_counter() - started, files


def throughput(per_class: int) -> None:
    classes = ["angry", "sad", "smile", "surprised"]
    corpus = build_corpus(classes, CorpusCounts(keep=per_class))
    options = HarvestOptions(per_class=per_class, downloads=4)
    with FakeDanbooru(corpus) as booru:
        crawl_runs = [crawl_once(booru.url, options, UNPACED, None) for _ in range(3)]
        bare_runs = [bare_loop(booru, classes)[0] for _ in range(3)]
    posts = per_class * len(classes)
    ours = posts / statistics.median(crawl_runs)
    bare = posts / statistics.median(bare_runs)
    mean_size = statistics.mean(len(post.content) for post in corpus)
    print(f"[1] zero latency, {posts} posts, generated PNGs of {mean_size:.0f} B on average")
    print(f"    crawl (DB + store + 4 threads): {ours:8.1f} posts/s   runs {_seconds(crawl_runs)}")
    print(f"    bare requests loop (baseline):  {bare:8.1f} posts/s   runs {_seconds(bare_runs)}")
    print(f"    ratio crawl / baseline:         {ours / bare:8.2f}")


def per_request_cost(pages: int = 60) -> None:
    posts = [FakePost(id=1000 + i, tags=("smile", "solo"), content=b"x%d" % i) for i in range(200)]
    with FakeDanbooru(posts) as booru, DanbooruClient(booru.url, UNPACED) as client:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        ours, bare = [], []
        for i in range(pages):
            if i % 2:
                started = time.perf_counter()
                client.posts_page("smile solo")
                ours.append((time.perf_counter() - started, len(booru.requests) - 1))
            else:
                started = time.perf_counter()
                session.get(booru.url + "/posts.json", params=BARE_PARAMS, timeout=30).json()
                bare.append((time.perf_counter() - started, len(booru.requests) - 1))
        records = booru.requests

        def own_ms(samples: list[tuple[float, int]]) -> tuple[float, float, float]:
            walls = [wall for wall, _ in samples[2:]]  # first ones warm the connection
            servers = [records[index].finished - records[index].started for _, index in samples[2:]]
            owns = [wall - server for wall, server in zip(walls, servers, strict=True)]
            return (
                statistics.median(walls) * 1e3,
                statistics.median(servers) * 1e3,
                statistics.median(owns) * 1e3,
            )

        ours_wall, ours_server, ours_own = own_ms(ours)
        bare_wall, bare_server, bare_own = own_ms(bare)
    print(f"[2] one /posts.json page of 200 posts, medians over {len(ours) - 2} requests each")
    for name, wall, server, own in (
        ("DanbooruClient", ours_wall, ours_server, ours_own),
        ("bare requests ", bare_wall, bare_server, bare_own),
    ):
        print(f"    {name}: wall {wall:6.2f} ms  server {server:6.2f} ms  client's own {own:6.2f} ms")
    print(f"    ratio client's own time, DanbooruClient / bare: {ours_own / bare_own:.2f}")


def _serve_in_child(posts: list[FakePost], connection: Connection) -> None:
    with FakeDanbooru(posts) as booru:
        connection.send(booru.url)
        connection.recv()  # asked to stop
        connection.send([record.started for record in booru.api_records()])


def achieved_rate(rate: float, requests_wanted: int) -> None:
    """The server runs in its own process, as a real one would: its work does not slow the crawler down."""
    # One class, every post deleted: the crawl is API paging only (pages of 200), no downloads.
    pages = requests_wanted - 2  # plus the count and the final empty page
    posts = [
        FakePost(id=10_000 + i, tags=("smile", "solo"), content=b"p%d" % i, is_deleted=True)
        for i in range(pages * 200)
    ]
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    server = context.Process(target=_serve_in_child, args=(posts, theirs), daemon=True)
    server.start()
    try:
        url = ours.recv()
        seconds = crawl_once(url, HarvestOptions(per_class=10), replace(UNPACED, rate=rate), ["smile"])
        ours.send("stop")
        times: list[float] = ours.recv()  # time.monotonic() is one clock for all processes of a machine
    finally:
        server.join(timeout=10)
    measured = (len(times) - 1) / (times[-1] - times[0])
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    print(
        f"[3] --rate {rate:g}: {len(times)} API requests in {seconds:.2f} s (one class, pages of 200 posts)"
    )
    print(f"    server-measured rate {measured:.3f} req/s = {measured / rate:.3f} of R")
    print(f"    smallest gap between two requests {min(gaps) * 1e3:.1f} ms (1/R = {1e3 / rate:.1f} ms)")


def _seconds(runs: list[float]) -> str:
    return ", ".join(f"{seconds:.2f}s" for seconds in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posts-per-class", type=int, default=250)
    parser.add_argument("--rates", default="5,10,20")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    cores = os.cpu_count()
    print(f"{cores} CPU cores; load average before: {', '.join(f'{load:.1f}' for load in os.getloadavg())}")
    throughput(args.posts_per_class)
    per_request_cost()
    for rate in (float(value) for value in args.rates.split(",")):
        achieved_rate(rate, requests_wanted=max(12, int(rate * 3)))


if __name__ == "__main__":
    main()
