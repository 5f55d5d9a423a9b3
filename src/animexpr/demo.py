"""`animexpr demo`: the whole pipeline, offline, on a local Danbooru-compatible server, in minutes on a CPU.

Every step is the real command a user would type, run against the demo's own home folder and printed as such:
harvest -> crop -> review (a scripted decision file through `review import`) -> dedup/expand -> snapshot ->
train (a small `ours` model) -> transform -> evaluate.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from PIL import Image, ImageDraw

from animexpr.cli_common import console, get_settings
from animexpr.errors import AnimexprError
from animexpr.harvest.fakebooru import serve_fake_danbooru

DEMO_MARKER = ".animexpr-demo"
FACES_DRAWN_PER_CLASS = 150
# Small enough for a 2-core CPU in a few minutes, big enough that every stage has real work.
TINY_MODEL_OPTIONS = (
    "--image-size", "64", "--batch", "8", "--g-conv-dim", "16", "--g-res-blocks", "2",
    "--att-res-blocks", "2", "--d-conv-dim", "16", "--d-repeat-num", "4", "--mapping-dim", "64",
    "--style-dim", "16", "--log-every", "50", "--sample-every", "100", "--ckpt-every", "100000",
    "--precision", "fp32",
)  # fmt: skip


@dataclass(frozen=True)
class DemoSizes:
    per_class: int  # posts per class on the local server, besides the deliberately bad ones
    iters: int  # training iterations (discriminator steps)
    expand_factor: float  # target of `expand` as a multiple of the accepted originals


def demo(
    ctx: typer.Context,
    home: Annotated[
        Path, typer.Option(help="Demo home folder (emptied first if it holds an earlier demo).")
    ] = Path("animexpr-demo"),
    per_class: Annotated[int, typer.Option(min=4, help="Posts per class on the local server.")] = 30,
    iters: Annotated[int, typer.Option(min=10, help="Training iterations of the small model.")] = 300,
    evaluate: Annotated[bool, typer.Option(help="Score the model with FID/KID at the end.")] = True,
) -> None:
    """Run the whole pipeline offline on a local Danbooru-compatible server (what `make demo` runs)."""
    sizes = DemoSizes(per_class=per_class, iters=iters, expand_factor=2.0)
    class_names = get_settings(ctx).class_names
    _prepare_home(home)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="animexpr-demo-") as scratch:
        faces_dir = _demo_images(Path(scratch), class_names)
        with serve_fake_danbooru(
            per_class=sizes.per_class, class_tags=class_names, faces_dir=faces_dir
        ) as url:
            console.print(f"[bold]local Danbooru-compatible server[/] at {url}")
            _run_pipeline(home, url, sizes, evaluate)
    _print_where(home, time.monotonic() - started)


def _prepare_home(home: Path) -> None:
    if home.exists() and any(home.iterdir()):
        if not (home / DEMO_MARKER).exists():
            raise AnimexprError(f"{home} holds something other than an earlier demo; pick another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("made by `animexpr demo`; safe to delete\n")


def _demo_images(scratch: Path, class_names: tuple[str, ...]) -> Path:
    """Real anime faces from ANIMEXPR_ASSETS when set; otherwise faces drawn here, and the demo says which."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    if assets and (Path(assets) / "faces").is_dir():
        console.print(
            f"images: real anime face crops from {Path(assets) / 'faces'}; each character folder stands in "
            "for one expression class"
        )
        return Path(assets) / "faces"
    console.print(
        "images: ANIMEXPR_ASSETS is not set, so the demo draws simple cartoon faces itself, "
        "one expression per class"
    )
    faces_dir = scratch / "faces"
    for index, name in enumerate(class_names):
        folder = faces_dir / name
        folder.mkdir(parents=True)
        for k in range(FACES_DRAWN_PER_CLASS):
            (folder / f"{k:04d}.jpg").write_bytes(draw_face(index, seed=index * 1000 + k))
    return faces_dir


def draw_face(expression: int, seed: int, size: int = 256) -> bytes:
    """A simple cartoon face as JPEG bytes; `expression` 0-3: angry, sad, smiling, surprised.

    Position, size, colours, background and tilt vary with the seed, so that no two faces are near-duplicates.
    """
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), _colour(rng, 120, 256))
    draw = ImageDraw.Draw(image)
    for _ in range(4):  # background shapes
        x, y, w = rng.randrange(size), rng.randrange(size), rng.randrange(20, size // 2)
        draw.rectangle((x, y, x + w, y + rng.randrange(20, size // 2)), fill=_colour(rng, 80, 256))
    r = rng.randrange(size // 4, size // 3 + 8)
    cx, cy = size // 2 + rng.randrange(-24, 25), size // 2 + rng.randrange(-16, 17)
    draw.ellipse(
        (cx - r - 14, cy - r - 24, cx + r + 14, cy + r // rng.choice((1, 2))), fill=_colour(rng, 0, 220)
    )
    draw.ellipse(
        (cx - r, cy - r, cx + r, cy + r), fill=(255, rng.randrange(200, 235), rng.randrange(180, 215))
    )
    eye, eye_r = _colour(rng, 0, 256), max(8, r // 6)
    for side in (-1, 1):
        ex = cx + side * r // 2
        draw.ellipse(
            (ex - eye_r, cy - eye_r, ex + eye_r, cy + eye_r + 4), fill="white", outline="black", width=2
        )
        draw.ellipse((ex - eye_r // 2, cy - eye_r // 2, ex + eye_r // 2, cy + eye_r), fill=eye)
        _draw_brow(draw, expression % 4, ex, cy - eye_r - 12, side)
    _draw_mouth(draw, expression % 4, cx, cy + r // 2)
    image = image.rotate(
        rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC, fillcolor=_colour(rng, 120, 256)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    return (rng.randrange(low, high), rng.randrange(low, high), rng.randrange(low, high))


def _draw_brow(draw: ImageDraw.ImageDraw, expression: int, x: int, y: int, side: int) -> None:
    tilt = {0: 8, 1: -8, 2: 0, 3: 0}[expression] * side
    lift = -10 if expression == 3 else 0
    draw.line((x - 16, y + lift - tilt, x + 16, y + lift + tilt), fill="black", width=4)
    if expression == 1:  # tears
        draw.ellipse((x - 4, y + 50, x + 4, y + 66), fill=(90, 160, 255))


def _draw_mouth(draw: ImageDraw.ImageDraw, expression: int, x: int, y: int) -> None:
    if expression == 0:
        draw.line((x - 20, y, x + 20, y), fill="black", width=4)
    elif expression == 1:
        draw.arc((x - 20, y, x + 20, y + 24), 200, 340, fill="black", width=4)
    elif expression == 2:
        draw.arc((x - 24, y - 20, x + 24, y + 12), 20, 160, fill="black", width=4)
    else:
        draw.ellipse((x - 10, y - 10, x + 10, y + 16), fill=(120, 30, 40), outline="black", width=3)


def _run_pipeline(home: Path, url: str, sizes: DemoSizes, evaluate: bool) -> None:
    step = _Stepper(home)
    step.run("init")
    step.run(
        "harvest",
        "--api-url",
        url,
        "--per-class",
        str(sizes.per_class),
        "--rate",
        "50",
        "--download-rate",
        "50",
    )
    # The demo's pictures are face crops already, so the whole picture is the face; on real Danbooru posts
    # `crop` runs the anime-face detector (its default).
    step.run("crop", "--detector", "whole", "--size", "128")
    decisions = home / "demo-review-decisions.csv"
    step.run("review", "export", str(home / "demo-review-queue.csv"))
    counts = write_scripted_decisions(home / "demo-review-queue.csv", decisions)
    console.print(
        f"[dim]scripted review: {counts['accepted']} accepted, {counts['rejected']} rejected (a tenth, "
        "weakest detections first); a person reviews with `animexpr review`, the keyboard-first page[/]"
    )
    step.run("review", "import", str(decisions), "--reviewer", "demo-script")
    target = int(counts["accepted"] * sizes.expand_factor)
    step.run("expand", "--target", str(target))
    step.run("snapshot", "create", "demo", "--test-fraction", "0.15")
    step.run(
        "train", "--snapshot", "demo", "--variant", "ours", "--iters", str(sizes.iters), "--vgg-random",
        "--device", "cpu", *TINY_MODEL_OPTIONS,
    )  # fmt: skip
    run = newest_run(home)
    test_face = first_test_image(home)
    step.run("transform", str(test_face), "--all", "--checkpoint", str(run), "-o", str(home / "transformed"))
    if evaluate and _inception_available():
        step.run("evaluate", str(run), "--device", "cpu", "--classifier-epochs", "5", "--batch", "16")
    step.run("status")


def _inception_available() -> bool:
    """The demo stays offline: it scores the model only when the Inception weights are already here."""
    from animexpr.model.inception import InceptionError, resolve_inception

    try:
        resolve_inception(fetch=False)
    except InceptionError as exc:
        console.print(f"[yellow]skipping `evaluate`:[/] {exc}")
        console.print("fetch them once with: python -m animexpr.model.inception")
        return False
    return True


class _Stepper:
    """Runs one real `animexpr` command in this process and shows it as the user would type it."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(self, *args: str) -> None:
        from animexpr.cli import app  # the root app, imported late: it imports this module

        shown = " ".join(_shorten(arg) for arg in args)
        console.rule(f"[bold]$ animexpr --home {self.home} {shown}", align="left")
        started = time.monotonic()
        result = app(args=["--home", str(self.home), *args], standalone_mode=False)
        if isinstance(result, int) and result != 0:
            raise AnimexprError(f"demo step `{args[0]}` failed with status {result}")
        console.print(f"[dim]({time.monotonic() - started:.1f} s)[/]")


def _shorten(arg: str) -> str:
    return arg if len(arg) < 60 else "…" + arg[-40:]


def write_scripted_decisions(
    queue_csv: Path, decisions_csv: Path, reject_share: float = 0.1
) -> dict[str, int]:
    """Accept every crop but the weakest-detected share; the file `review import` reads."""
    with queue_csv.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["state"] == "pending"]
    by_weakness = sorted(rows, key=lambda row: float(row["detection_score"] or "inf"))
    rejected = {row["crop_id"] for row in by_weakness[: int(len(rows) * reject_share)]}
    with decisions_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["crop_id", "state", "label"])
        for row in rows:
            writer.writerow(
                [row["crop_id"], "rejected" if row["crop_id"] in rejected else "accepted", row["label"]]
            )
    return {"accepted": len(rows) - len(rejected), "rejected": len(rejected)}


def newest_run(home: Path) -> Path:
    runs = sorted(path for path in (home / "runs").iterdir() if path.is_dir())
    if not runs:
        raise AnimexprError(f"no training run in {home / 'runs'}")
    return runs[-1]


def first_test_image(home: Path) -> Path:
    manifest = home / "snapshots" / "demo" / "manifest.jsonl"
    for line in manifest.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["split"] == "test":
            return home / item["file"]
    raise AnimexprError("the demo snapshot has no test image")


def _print_where(home: Path, seconds: float) -> None:
    run = newest_run(home)
    grids = sorted((run / "samples").glob("*.png")) if (run / "samples").is_dir() else []
    console.rule("[bold green]demo finished")
    console.print(f"took {seconds / 60:.1f} min")
    console.print(f"store (database and files): {home}")
    console.print(f"training run: {run}")
    if grids:
        console.print(f"sample grid: {grids[-1]}")
    console.print(f"transformed faces: {home / 'transformed'}")
    if (run / "eval.md").exists():
        console.print(f"evaluation report: {run / 'eval.md'}")
    console.print(f"review the crops yourself: animexpr --home {home} review")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
