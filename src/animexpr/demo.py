"""`animexpr demo`: the whole pipeline, offline, on a local Danbooru-compatible server, in minutes on a CPU.

Every step is the real command a user would type, run against the demo's own home folder and printed as such:
harvest -> crop -> review (a scripted decision file through `review import`) -> dedup/expand -> snapshot ->
train (a small `ours` model) -> transform -> evaluate.

The model learns expressions from drawn faces (testing/faces.py), whose true answer for every translation is
known, so the demo ends by saying how well its model changes expressions on faces it never saw. With real
faces (ANIMEXPR_ASSETS) those go through the dataset stages, and the model still trains on drawn faces: no
expression-labelled real faces can be had offline.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from animexpr.cli_common import EXIT_INTERRUPTED, console, get_settings
from animexpr.config import RUNS_DIR_NAME
from animexpr.errors import AnimexprError
from animexpr.model.run_files import EVAL_TABLE, SAMPLES_DIR, run_dirs

DEMO_MARKER = ".animexpr-demo"
# The drawn faces the model trains on: 2,000 identities, one expression each, as the synthetic benchmark's
# training set. The few hundred faces the dataset stages carry through in a demo are too few: on 400
# identities 1,000 iterations gave an expression accuracy of 0.12, on 2,000 identities 500 iterations 0.45.
RENDERED_SNAPSHOT = "rendered-snapshot"
RENDERED_TRAIN_IDENTITIES = 2000
# Identities the demo's model is scored on, and those its expression classifier learns from: never trained on.
SCORED_IDENTITIES = 24
# At the small configuration's constant lr of 3e-4 the expression accuracy peaked early (0.45 after 500
# iterations, 0.41 after 1,000 and 1,500; 0.30 after 2,000 with the rate decaying over the second half):
# G then fools D's classifier with marks that the independent classifier does not take for expressions.
DEMO_ITERS = 500
DRAWN_FACE_PX = 128
CLASSIFIER_IDENTITIES = 200


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
    per_class: Annotated[int, typer.Option(min=4, help="Posts per class on the local server.")] = 100,
    iters: Annotated[
        int, typer.Option(min=10, help="Training iterations of the small model (see `benchmark synthetic`).")
    ] = DEMO_ITERS,
    evaluate: Annotated[bool, typer.Option(help="Score the model with FID/KID at the end.")] = True,
) -> None:
    """Run the whole pipeline offline on a local Danbooru-compatible server (what `make demo` runs)."""
    from animexpr.testing.faces import EXPRESSIONS
    from animexpr.testing.fakebooru import serve_fake_danbooru

    sizes = DemoSizes(per_class=per_class, iters=iters, expand_factor=2.0)
    _prepare_home(home)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="animexpr-demo-") as scratch:
        real_faces = _real_faces()
        faces_dir = real_faces or _drawn_faces(Path(scratch), sizes.per_class)
        classes = get_settings(ctx).class_names if real_faces else EXPRESSIONS
        with serve_fake_danbooru(per_class=sizes.per_class, class_tags=classes, faces_dir=faces_dir) as url:
            console.print(f"[bold]local Danbooru-compatible server[/] at {url}")
            step = _Stepper(ctx.find_root().command, home, None if real_faces else classes)
            _build_dataset(step, home, url, sizes)
            snapshot = _rendered_snapshot(home)
            run = _train_and_show(step, home, snapshot, sizes, evaluate)
    _print_where(home, run, time.monotonic() - started)


def _prepare_home(home: Path) -> None:
    if home.exists() and any(home.iterdir()):
        if not (home / DEMO_MARKER).exists():
            raise AnimexprError(f"{home} holds something other than an earlier demo; pick another --home")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("made by `animexpr demo`; safe to delete\n")


def _real_faces() -> Path | None:
    """Real anime face crops from ANIMEXPR_ASSETS when set (each character stands in for a class)."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    if not (assets and (Path(assets) / "faces").is_dir()):
        return None
    console.print(
        f"images: real anime face crops from {Path(assets) / 'faces'}; each character folder stands in for "
        "one class in the dataset stages. The model then trains on drawn faces, the only expression-labelled "
        "faces to be had offline."
    )
    return Path(assets) / "faces"


def _drawn_faces(scratch: Path, per_class: int) -> Path:
    """Drawn faces, one identity each, in the expression of its class folder (JPEG, as Danbooru serves)."""
    from PIL import Image

    from animexpr.testing.faces import EXPRESSIONS, random_identity, render

    console.print(
        "images: ANIMEXPR_ASSETS is not set, so the demo draws cartoon faces itself: each a different "
        "person, in the expression of its class"
    )
    faces_dir = scratch / "faces"
    for index, expression in enumerate(EXPRESSIONS):
        folder = faces_dir / expression
        folder.mkdir(parents=True)
        for k in range(per_class):
            picture = render(random_identity(index * 100_000 + k), expression, DRAWN_FACE_PX).image
            Image.fromarray(picture).save(folder / f"{k:05d}.jpg", quality=92)
    return faces_dir


def _build_dataset(step: _Stepper, home: Path, url: str, sizes: DemoSizes) -> None:
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


def _rendered_snapshot(home: Path) -> Path:
    """A snapshot folder of drawn faces for the model, beside the snapshot the dataset stages made."""
    from animexpr.testing.benchmark import (
        SMALL_CONFIG,
        TEST_SEED_BASE,
        TRAIN_SEED_BASE,
        identities,
        write_benchmark_snapshot,
    )

    folder = home / RENDERED_SNAPSHOT
    console.rule("[bold]drawn faces for the model", align="left")
    train_faces = identities(TRAIN_SEED_BASE, RENDERED_TRAIN_IDENTITIES)
    write_benchmark_snapshot(folder, train_faces, identities(TEST_SEED_BASE, 8), SMALL_CONFIG["image_size"])
    console.print(
        f"{folder}: {len(train_faces)} drawn training faces, one expression each (the model needs more "
        "faces than the demo's dataset holds, and drawn ones can be scored against the true drawing)"
    )
    return folder


def _train_and_show(step: _Stepper, home: Path, snapshot: Path, sizes: DemoSizes, evaluate: bool) -> Path:
    step.run(
        "train", "--snapshot", str(snapshot), "--variant", "ours",
        "--vgg-random", "--device", "cpu", *_small_model_options(sizes.iters),
    )  # fmt: skip
    run = newest_run(home)
    test_face = first_test_image(snapshot)
    step.run("transform", str(test_face), "--all", "--checkpoint", str(run), "-o", str(home / "transformed"))
    _report_what_it_learned(run)
    if evaluate and _inception_available():
        step.run("evaluate", str(run), "--device", "cpu", "--classifier-epochs", "5", "--batch", "16")
    step.run("status")
    return run


def _small_model_options(iters: int) -> list[str]:
    """The benchmark's small configuration as `train` options, for the demo's `iters` at a constant rate."""
    from animexpr.testing.benchmark import SMALL_CONFIG

    settings = {**SMALL_CONFIG, "iters": iters, "decay_start": iters}  # a constant rate (see DEMO_ITERS)
    options = []
    for name, value in settings.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    return [*options, "--log-every", "100", "--sample-every", "250", "--ckpt-every", "100000"]


def _report_what_it_learned(run: Path) -> None:
    """Expression accuracy and identity error of the run on drawn faces it never saw, and their scale."""
    import torch

    from animexpr.testing.benchmark import (
        CLASSIFIER_SEED_BASE,
        SMALL_CONFIG,
        TEST_SEED_BASE,
        identities,
        identity_translator,
        render_truth,
        score_run,
        score_translator,
        train_render_classifier,
    )

    console.rule("[bold]what the model learned", align="left")
    started = time.monotonic()
    device = torch.device("cpu")
    scored = identities(TEST_SEED_BASE + 1_000, SCORED_IDENTITIES)
    truth = render_truth(scored, SMALL_CONFIG["image_size"])
    classifier = train_render_classifier(
        identities(CLASSIFIER_SEED_BASE, CLASSIFIER_IDENTITIES),
        SMALL_CONFIG["image_size"],
        device,
        test=truth,
    )
    model = score_run(run, scored, classifier, device)
    unchanged = score_translator(identity_translator, truth, classifier, device)
    console.print(
        f"on {SCORED_IDENTITIES} drawn faces it never saw, each turned into the 3 other expressions "
        f"({model.pairs} translations):"
    )
    console.print(
        f"  expression accuracy [bold]{model.expression_accuracy:.2f}[/] (chance 0.25; a face left unchanged "
        f"scores {unchanged.expression_accuracy:.2f}), judged by a classifier trained on other drawn faces "
        f"(right on {classifier.test_accuracy:.0%} of the true drawings)"
    )
    console.print(
        f"  distance to the true drawing (L1, 0-1): {model.l1:.3f} overall and {model.l1_outside:.3f} "
        f"outside the expression region (a face left unchanged: {unchanged.l1:.3f} and "
        f"{unchanged.l1_outside:.3f})"
    )
    console.print(f"[dim]({time.monotonic() - started:.1f} s)[/]")


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


class _Command(Protocol):
    """A click command, as `ctx.find_root().command` gives it."""

    def main(self, args: list[str], *, standalone_mode: bool) -> Any: ...


class _Stepper:
    """Runs one real `animexpr` command in this process and shows it as the user would type it.

    `root` is the `animexpr` command itself, taken from the demo's context (so this module never imports
    the CLI module that registers it).
    """

    def __init__(self, root: _Command, home: Path, classes: Sequence[str] | None) -> None:
        self.root = root
        self.home = home
        # Drawn faces come in the renderer's expressions, whatever classes the user's settings name.
        self.global_options = ["--home", str(home)]
        if classes is not None:
            self.global_options += ["--classes", ",".join(classes)]

    def run(self, *args: str) -> None:
        shown = " ".join(_shorten(arg) for arg in [*self.global_options, *args])
        console.rule(f"[bold]$ animexpr {shown}", align="left")
        started = time.monotonic()
        result = self.root.main(args=[*self.global_options, *args], standalone_mode=False)
        if result == EXIT_INTERRUPTED:  # the step said so and what it kept; the demo stops with its status
            raise typer.Exit(EXIT_INTERRUPTED)
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
    runs_root = home / RUNS_DIR_NAME
    runs = run_dirs(runs_root)
    if not runs:
        raise AnimexprError(f"no training run in {runs_root}")
    return runs[-1]


def first_test_image(snapshot: Path) -> Path:
    """The first test image of a snapshot folder (in the home, or an export-style folder)."""
    files_root = snapshot / json.loads((snapshot / "dataset.json").read_text(encoding="utf-8"))["files_root"]
    for line in (snapshot / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["split"] == "test":
            return files_root / item["file"]
    raise AnimexprError(f"the snapshot {snapshot} has no test image")


def _print_where(home: Path, run: Path, seconds: float) -> None:
    grids = sorted((run / SAMPLES_DIR).glob("*.png")) if (run / SAMPLES_DIR).is_dir() else []
    console.rule("[bold green]demo finished")
    console.print(f"took {seconds / 60:.1f} min")
    console.print(f"store (database and files): {home}")
    console.print(f"training run: {run}")
    if grids:
        console.print(f"sample grid: {grids[-1]}")
    console.print(f"transformed faces: {home / 'transformed'}")
    if (run / EVAL_TABLE).exists():
        console.print(f"evaluation report: {run / EVAL_TABLE}")
    console.print(f"review the crops yourself: {runnable_command()} --home {home} review")


def runnable_command() -> str:
    """How to call animexpr from a new shell: `animexpr` when it is on PATH, else its path in the venv."""
    on_path = shutil.which("animexpr")
    here = Path(sys.executable).parent / "animexpr"
    if on_path and Path(on_path).resolve() == here.resolve():
        return "animexpr"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
