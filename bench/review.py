"""Review API latency with 100,000 crops in the store, and the review page's time to first paint.

    python bench/review.py [--crops 100000] [--requests 500] [--paint-runs 5] [--keep]

The server is the real thing: `animexpr review` in its own process (uvicorn on 127.0.0.1, SQLite in WAL mode),
driven over keep-alive HTTP the way the page drives it: "next item" is POST /api/next for one crop with the
last 50 ids the page holds as `exclude`; "record decision" is POST /api/decide for that crop (every tenth
one a reject). Baseline, measured against the same server in the same run: GET /api/config, which does no
database work, so the ratios show what the queue adds to a bare HTTP round trip on this machine.

Rows are inserted in bulk (one post per crop); the files are few and shared (48 faces, 12 originals), which
does not matter to the API timings. First paint is read from Chromium's paint timing
(`performance.getEntriesByType("paint")`) in fresh browser contexts; "first crop" is the page's own
`review-ready` mark, set once the first crop is rendered. Needs Debian's chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw
from sqlalchemy import Engine, insert

from animexpr.config import Settings, load_settings
from animexpr.curate.review import Order, QueueFilter, ReviewQueue
from animexpr.db.models import Crop, Post, PostState
from animexpr.db.session import open_db
from animexpr.store import FileStore
from animexpr.testing.factories import CHROMIUM, CHROMIUM_FLAGS

GOAL_P95_MS = 20.0
INSERT_CHUNK = 10_000


def face_images(count: int) -> list[Image.Image]:
    assets = os.environ.get("ANIMEXPR_ASSETS")
    faces_dir = Path(assets) / "faces" if assets else None
    images: list[Image.Image] = []
    if faces_dir is not None and faces_dir.is_dir():
        paths = sorted(faces_dir.glob("*/*.jpg"), key=lambda path: path.name)
        images = [Image.open(path).convert("RGB") for path in paths[:count]]
    rng = random.Random(0)
    while len(images) < count:
        image = Image.new("RGB", (256, 256), tuple(rng.randrange(40, 220) for _ in range(3)))
        ImageDraw.Draw(image).ellipse((40, 30, 216, 230), fill=(250, 220, 200))
        images.append(image)
    return images


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def build_store(settings: Settings, crops: int) -> Engine:
    """`crops` pending crops over 4 classes, with scores (5% unscored) and face sizes spread out."""
    engine = open_db(settings.db_url)
    store = FileStore(settings.home)
    store.create_areas()
    faces = face_images(48)
    crop_files = [store.put_bytes("crops", encoded(face.resize((128, 128)), "PNG"), "png") for face in faces]
    originals = []
    for index in range(12):
        source = Image.new("RGB", (640, 480), (40, 60, 110))
        source.paste(faces[index].resize((240, 240)), (200, 120))
        data = encoded(source, "JPEG")
        originals.append(store.put_original(f"{index:032x}", data, "jpg"))
    rng = random.Random(1)
    classes = settings.class_names
    with engine.begin() as connection:
        for start in range(0, crops, INSERT_CHUNK):
            ids = range(start + 1, min(crops, start + INSERT_CHUNK) + 1)
            posts, rows = [], []
            for crop_id in ids:
                original = originals[crop_id % len(originals)]
                label = classes[crop_id % len(classes)]
                posts.append(
                    {
                        "id": crop_id,
                        "md5": f"{crop_id:032x}",
                        "file_ext": "jpg",
                        "width": 640,
                        "height": 480,
                        "tags": f"{label} solo",
                        "class_name": label,
                        "state": PostState.DOWNLOADED,
                        "file_relpath": original.relpath,
                        "file_sha256": original.sha256,
                    }
                )
                crop_file = crop_files[crop_id % len(crop_files)]
                rows.append(
                    {
                        "post_id": crop_id,
                        "sha256": crop_file.sha256,
                        "file_relpath": crop_file.relpath,
                        "size_px": 128,
                        "box_x": 230,
                        "box_y": 150,
                        "box_w": 180,
                        "box_h": 180,
                        "crop_x": 200,
                        "crop_y": 120,
                        "crop_size": rng.randrange(64, 512),
                        "detector": "lbp",
                        "detector_settings": {"scale_factor": 1.1, "min_neighbors": 5},
                        "settings_key": "bench",
                        "detections_count": 1,
                        "face_index": 0,
                        "faces_policy": "largest",
                        "detection_score": None if rng.random() < 0.05 else rng.random(),
                        "label": label,
                    }
                )
            connection.execute(insert(Post), posts)
            connection.execute(insert(Crop), rows)
    return engine


def print_plans(engine: Engine, settings: Settings) -> None:
    queue = ReviewQueue(engine, settings.class_names)
    cases = [
        ("next, worst-first", QueueFilter(), Order.WORST_FIRST),
        ("next, one class, worst-first", QueueFilter(labels=(settings.class_names[0],)), Order.WORST_FIRST),
        ("next, smallest-first", QueueFilter(), Order.SMALLEST_FIRST),
    ]
    with engine.connect() as connection:
        for name, queue_filter, order in cases:
            statement = queue.next_query("bench", queue_filter, order, 1, exclude=[1, 2, 3])
            sql = statement.compile(engine, compile_kwargs={"literal_binds": True})
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            print(f"  {name}: " + " | ".join(str(row[-1]) for row in plan))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(home: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "ANIMEXPR_HOME": str(home)}
    env.pop("ANIMEXPR_REVIEW_TOKEN", None)
    command = [sys.executable, "-m", "animexpr", "review", "--port", str(port), "--reviewer", "bench"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=1)
            return server
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                output = server.stdout.read() if server.stdout else ""
                raise SystemExit(f"the review server did not start:\n{output}") from None
            time.sleep(0.1)


def timed(call: Callable[..., httpx.Response], *args: Any, **kwargs: Any) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = call(*args, **kwargs)
    elapsed = (time.perf_counter() - start) * 1000
    response.raise_for_status()
    return elapsed, response


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), cuts[94], max(samples)


def measure_api(url: str, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"config (baseline)": [], "next item": [], "record decision": []}
    batch: list[float] = []
    recent: list[int] = []
    with httpx.Client(base_url=url, headers={"Origin": url}, timeout=30) as http:
        for round_index in range(requests + 20):  # the first 20 rounds warm up and are not counted
            config_ms, _ = timed(http.get, "/api/config")
            next_ms, answer = timed(
                lambda: http.post("/api/next", json={"count": 1, "exclude": recent[-50:]})
            )
            items = answer.json()["items"]
            if not items:
                raise SystemExit("the queue ran dry: use more --crops than --requests")
            crop_id = items[0]["id"]
            decision = "reject" if round_index % 10 == 0 else "accept"
            decide_ms, _ = timed(http.post, "/api/decide", json={"crop_id": crop_id, "decision": decision})
            recent.append(crop_id)
            if round_index >= 20:
                samples["config (baseline)"].append(config_ms)
                samples["next item"].append(next_ms)
                samples["record decision"].append(decide_ms)
        for _ in range(max(20, requests // 10)):
            # The page asks for 10 at a time; an undecided batch stays leased, so exclude it next time.
            ms, answer = timed(http.post, "/api/next", json={"count": 10, "exclude": recent[-200:]})
            recent += [item["id"] for item in answer.json()["items"]]
            batch.append(ms)
        samples["next 10 items (page batch)"] = batch
        samples["progress stats"] = [timed(http.get, "/api/stats")[0] for _ in range(20)]
    return samples


def measure_paint(url: str, runs: int) -> list[dict[str, float]] | str:
    if not CHROMIUM.exists():
        return f"skipped: {CHROMIUM} is missing (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: Playwright for Python is not installed"
    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            for _ in range(runs):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.goto(url + "/")
                page.wait_for_selector("body[data-ready='1']", timeout=30000)
                timings = page.evaluate(
                    """() => {
                        const paint = Object.fromEntries(
                            performance.getEntriesByType("paint").map((e) => [e.name, e.startTime]));
                        const ready = performance.getEntriesByName("review-ready")[0];
                        return {
                            "first-paint": paint["first-paint"],
                            "first-contentful-paint": paint["first-contentful-paint"],
                            "first crop rendered": ready ? ready.startTime : null,
                        };
                    }"""
                )
                results.append(timings)
                context.close()
        finally:
            browser.close()
    return results


def report(samples: dict[str, list[float]]) -> None:
    baseline = statistics.median(samples["config (baseline)"])
    print(f"\n{'request':32} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 / baseline':>15}")
    for name, values in samples.items():
        p50, p95, worst = percentiles(values)
        print(f"{name:32} {len(values):5d} {p50:8.2f} {p95:8.2f} {worst:8.2f} {p50 / baseline:15.2f}")
    for name in ("next item", "record decision"):
        p95 = percentiles(samples[name])[1]
        verdict = "met" if p95 < GOAL_P95_MS else "MISSED"
        print(f"goal p95 < {GOAL_P95_MS:.0f} ms for {name}: {verdict} ({p95:.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--crops", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500, help="next+decide rounds measured")
    parser.add_argument("--paint-runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the bench home folder and print its path")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="animexpr-bench-review-")) / "home"
    home.mkdir()
    settings = load_settings(home=home, environ={})
    try:
        started = time.perf_counter()
        engine = build_store(settings, args.crops)
        print(f"store: {args.crops} crops inserted in {time.perf_counter() - started:.1f} s (SQLite, {home})")
        print("query plans (EXPLAIN QUERY PLAN):")
        print_plans(engine, settings)
        engine.dispose()
        port = free_port()
        server = start_server(home, port)
        url = f"http://127.0.0.1:{port}"
        try:
            samples = measure_api(url, args.requests)
            paint = measure_paint(url, args.paint_runs)
        finally:
            server.terminate()
            server.wait(timeout=30)
        report(samples)
        print()
        if isinstance(paint, str):
            print(f"time to first paint: {paint}")
        else:
            for key in ("first-paint", "first-contentful-paint", "first crop rendered"):
                values = [run[key] for run in paint if run.get(key) is not None]
                if values:
                    print(
                        f"{key:24} median {statistics.median(values):7.1f} ms over {len(values)} "
                        f"fresh contexts (first {values[0]:.1f} ms, max {max(values):.1f} ms)"
                    )
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
