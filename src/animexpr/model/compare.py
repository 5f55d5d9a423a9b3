"""Compare evaluated runs: the paper's Table 1 and Table 2 layouts in a Markdown report, with the paper's
figures beside ours, and a figure like its Fig. 10/11.

A row is an evaluated run (`animexpr evaluate RUN` writes eval.json and the translated PNGs) or a folder of
images made by another program (`animexpr evaluate --images DIR` writes DIR/eval.json), given by its folder or
by the report file itself. FID and KID are only comparable when every row was scored under the same protocol,
against the same real images, with the same number of generated images, resolution, feature pipeline and KID
settings: `compare` refuses rows that differ in any of these, or lists them under a warning when asked to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from animexpr.errors import AnimexprError
from animexpr.model.config import TABLE_CHOICES, TableChoice
from animexpr.model.evaluate import INPUTS_DIR, fmt, headline, load_report, protocol_text, resolve_run_dir
from animexpr.model.grid import save_png
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaperRow:
    method: str  # the variant name of our runs (or the --method of a folder of images)
    label: str  # as the paper names it
    fid: float
    kid: float


PAPER_TABLE_1 = (
    PaperRow("stargan", "StarGAN", 79.04, 2.74e-2),
    PaperRow("stargan-dc", "StarGAN+DC", 84.58, 3.01e-2),
    PaperRow("stargan-am", "StarGAN+AM", 63.65, 1.89e-2),
    PaperRow("ours-no-cx", "Ours without CL", 54.49, 1.41e-2),
    PaperRow("ours", "Ours", 52.07, 1.30e-2),
)
PAPER_TABLE_2 = (
    PaperRow("cyclegan", "CycleGAN", 78.70, 2.67e-2),
    PaperRow("combogan", "ComboGAN", 141.98, 7.96e-2),
    PaperRow("stargan", "StarGAN", 79.04, 2.74e-2),
    PaperRow("ours", "Ours", 52.07, 1.30e-2),
)
PAPER_TABLES: dict[str, tuple[str, tuple[PaperRow, ...]]] = {
    "1": ("Table 1: the ablations", PAPER_TABLE_1),
    "2": ("Table 2: other methods", PAPER_TABLE_2),
}

# Rows whose values of these differ are not comparable (FID and KID depend on every one of them).
COMPARABILITY_KEYS = (
    "protocol",
    "real_set.sha256",
    "real_set.count",
    "generated_images",
    "image_size",
    "feature_pipeline",
    "kid.subsets",
    "kid.max_subset_size",
)
TABLE_HEADER = (
    "Method",
    "paper FID",
    "paper KID",
    "run",
    "FID",
    "KID",
    "expr. acc.",
    "SSIM",
    "L1",
    "params G",
    "ms / iter",
)
SETTINGS_HEADER = (
    "run",
    "method",
    "iteration",
    "iters",
    "lr schedule",
    "decay start",
    "EMA",
    "VGG19",
    "cx layer",
    "mask guard",
    "F init",
    "protocol",
    "real set",
    "generated",
)
TILE_GAP = 4
MIN_TILE = 96  # px: smaller (test-size) images are enlarged so that the labels fit
BACKGROUND = (255, 255, 255)
EMPTY_TILE = (224, 224, 224)


class CompareError(AnimexprError):
    pass


@dataclass(frozen=True)
class Comparison:
    markdown: str
    warnings: list[str]
    figure: Path | None
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Evaluated:
    """One row's report, its name, and the folder its saved images are relative to."""

    name: str
    folder: Path
    report: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.report.get("method") or self.report.get("variant") or "?")


def load_evaluated(location: Path) -> Evaluated:
    """A run folder (or a generator file in one), a folder of scored images, or a report file."""
    if location.suffix == ".json" and location.is_file():
        report = load_report(location)
        return Evaluated(str(report.get("run") or location.stem), location.parent, report)
    folder = resolve_run_dir(location)
    report = load_report(folder)
    return Evaluated(folder.name, folder, report)


def _lookup(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def comparability_problems(rows: Sequence[Evaluated]) -> list[str]:
    """One sentence per setting the rows differ in, naming each row's value."""
    problems = []
    for key in COMPARABILITY_KEYS:
        values = [_lookup(row.report, key) for row in rows]
        if len({repr(v) for v in values}) > 1:
            listed = ", ".join(f"{row.name}: {v}" for row, v in zip(rows, values, strict=True))
            problems.append(f"the rows differ in {key} ({listed})")
    return problems


def _kid_text(mean: float | None, std: float | None) -> str:
    return "-" if mean is None or std is None else f"{mean:.2e} ± {std:.1e}"


def table_row(method: str, paper: PaperRow | None, row: Evaluated | None) -> dict[str, Any]:
    """One line of a table: the paper's figures for the method (if it has them) and one of our rows."""
    cells: dict[str, Any] = {
        "Method": method,
        "paper FID": fmt(paper.fid if paper else None, ".2f"),
        "paper KID": fmt(paper.kid if paper else None, ".2e"),
    }
    if row is None:
        return cells | dict.fromkeys(TABLE_HEADER[3:], "-")
    report = row.report
    scores = headline(report)
    parameters = report.get("parameters")
    return cells | {
        "run": row.name,
        "FID": fmt(scores.get("fid"), ".2f"),
        "KID": _kid_text(scores.get("kid_mean"), scores.get("kid_std")),
        "expr. acc.": fmt(scores.get("expression_accuracy"), ".3f"),
        "SSIM": fmt(scores.get("ssim"), ".3f"),
        "L1": fmt(scores.get("l1"), ".4f"),
        "params G": f"{parameters['G'] / 1e6:.2f} M" if parameters else "-",
        "ms / iter": fmt(report.get("ms_per_iter"), ".1f"),
    }


def paper_table(paper_rows: Sequence[PaperRow], rows: Sequence[Evaluated]) -> list[dict[str, Any]]:
    """The paper's rows in its order, each followed by our rows of that method (a blank one if none)."""
    lines = []
    for paper in paper_rows:
        ours = [row for row in rows if row.method == paper.method]
        lines += [table_row(paper.label, paper, row) for row in ours] or [table_row(paper.label, paper, None)]
    return lines


def settings_row(row: Evaluated) -> dict[str, str]:
    """What changes a row's figures, from its report (a folder of images has no training settings)."""
    report = row.report
    training = report.get("training") or {}
    real = report["real_set"]

    def value(key: str, spec: str = "") -> str:
        return fmt(training.get(key), spec)

    vgg = training.get("vgg_weights")
    guard = (
        "-"
        if training.get("lambda_mask") is None
        else f"{training['lambda_mask']:g} [{training['mask_floor']:g}, {training['mask_ceiling']:g}]"
    )
    return {
        "run": row.name,
        "method": row.method,
        "iteration": value("iteration"),
        "iters": value("iters"),
        "lr schedule": value("lr_schedule"),
        "decay start": value("decay_start"),
        "EMA": "-" if not training else ("off" if training.get("ema_beta") == 0 else value("ema_beta", "g")),
        "VGG19": "-" if vgg is None else (vgg if len(vgg) != 64 else vgg[:12]),
        "cx layer": value("cx_layer"),
        "mask guard": guard,
        "F init": value("mapping_init"),
        "protocol": str(report["protocol"]),
        "real set": f"{real['count']} ({real['sha256'][:12]})",
        "generated": str(report["generated_images"]),
    }


def _markdown_table(header: Sequence[str], lines: Sequence[dict[str, Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(line[k]) for k in header) + " |" for line in lines),
    ]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _tile(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        return np.full((size, size, 3), EMPTY_TILE, dtype=np.uint8)
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        if rgb.size != (size, size):
            # Enlarged with nearest neighbours, so that the figure shows the pixels the metrics saw.
            enlarge = size > rgb.size[0]
            rgb = rgb.resize((size, size), Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS)
        return np.asarray(rgb, dtype=np.uint8)


def pick_inputs(image_dirs: Sequence[Path], classes: Sequence[str], rows: int) -> list[str]:
    """Names of test inputs that every run translated, spread over the source classes (round robin)."""
    common: set[str] | None = None
    for folder in image_dirs:
        names = {p.name for p in (folder / INPUTS_DIR).glob("*.png")}
        common = names if common is None else common & names
    by_class = {c: sorted(n for n in common or () if n.startswith(f"{c}-")) for c in classes}
    picked: list[str] = []
    position = 0
    while len(picked) < rows and any(position < len(v) for v in by_class.values()):
        for c in classes:
            if position < len(by_class[c]) and len(picked) < rows:
                picked.append(by_class[c][position])
        position += 1
    return picked


def comparison_figure(
    image_dirs: Sequence[Path], labels: Sequence[str], classes: Sequence[str], names: Sequence[str], size: int
) -> np.ndarray:
    """One row per input: the input, then each run's translation into every class (its own class blank)."""
    font = _font(max(10, size // 9))
    header = 2 * (size // 6 + 6)
    columns = 1 + len(image_dirs) * len(classes)
    group_gap = 3 * TILE_GAP
    width = columns * (size + TILE_GAP) + len(image_dirs) * group_gap
    height = header + len(names) * (size + TILE_GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, header // 2), "input", fill=(0, 0, 0), font=font)
    for row, name in enumerate(names):
        top = header + row * (size + TILE_GAP)
        canvas.paste(Image.fromarray(_tile(image_dirs[0] / INPUTS_DIR / name, size)), (0, top))
        source = name.split("-", 1)[0]
        for r, folder in enumerate(image_dirs):
            for c, target in enumerate(classes):
                left = (1 + r * len(classes) + c) * (size + TILE_GAP) + (r + 1) * group_gap
                tile = (
                    np.full((size, size, 3), EMPTY_TILE, dtype=np.uint8)
                    if target == source
                    else _tile(folder / target / name, size)
                )
                canvas.paste(Image.fromarray(tile), (left, top))
    for r, label in enumerate(labels):
        left = (1 + r * len(classes)) * (size + TILE_GAP) + (r + 1) * group_gap
        draw.text((left, 2), label, fill=(0, 0, 0), font=font)
        for c, target in enumerate(classes):
            draw.text((left + c * (size + TILE_GAP), header // 2), target, fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def _tables(choice: TableChoice, rows: Sequence[Evaluated]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The chosen paper tables with our rows in them, then the rows of methods none of them holds."""
    if choice not in TABLE_CHOICES:
        raise CompareError(f"--table: expected {', '.join(TABLE_CHOICES)}, got {choice!r}")
    keys = ("1", "2") if choice == "both" else (choice,)
    tables = [(PAPER_TABLES[k][0], paper_table(PAPER_TABLES[k][1], rows)) for k in keys]
    shown = {paper.method for k in keys for paper in PAPER_TABLES[k][1]}
    others = [table_row(row.method, None, row) for row in rows if row.method not in shown]
    if others:
        tables.append(("Rows of methods outside these tables", others))
    return tables


def _figure(
    rows: Sequence[Evaluated], out: Path, figure: Path | None, count: int, tile_size: int | None
) -> tuple[Path | None, str | None]:
    """The figure of the rows' saved translations, or why there is none."""
    if not all(row.report.get("images") for row in rows):
        return (
            None,
            "some rows have no saved translations of the test inputs (folders of images never do): no figure",
        )
    image_dirs = [row.folder / row.report["images"] for row in rows]
    classes = rows[0].report["classes"]
    picked = pick_inputs(image_dirs, classes, count)
    if not picked:
        return None, "no test input was translated by every run: no figure"
    labels = [f"{row.method} ({row.name.split('-', 1)[0]})" for row in rows]
    size = tile_size or max(int(rows[0].report["image_size"]), MIN_TILE)
    path = figure or out.with_suffix(".png")
    save_png(comparison_figure(image_dirs, labels, classes, picked, size), path)
    return path, None


def compare_runs(
    runs: Sequence[Path],
    out: Path,
    figure: Path | None = None,
    rows: int = 8,
    tile_size: int | None = None,
    table: TableChoice = "both",
    allow_mismatch: bool = False,
) -> Comparison:
    """Write the report `out` (Markdown: the paper's tables with our rows, and the settings of each row) and
    the figure (PNG, default beside it); returns both.

    Rows scored differently (protocol, real set, sample size, resolution, features, KID) are refused, unless
    `allow_mismatch`: then the report lists them under a warning.
    """
    if not runs:
        raise CompareError("compare needs at least one evaluated run")
    evaluated = [load_evaluated(Path(r)) for r in runs]
    classes = evaluated[0].report["classes"]
    if any(row.report["classes"] != classes for row in evaluated):
        raise CompareError("the rows translate between different classes")
    problems = comparability_problems(evaluated)
    if problems and not allow_mismatch:
        raise CompareError(
            "; ".join(problems) + ": their FID/KID are not comparable; evaluate them the same way, "
            "or pass --allow-mismatch to list them with a warning"
        )
    warnings = [f"{p}: their FID/KID are not comparable" for p in problems]
    if len({repr(_lookup(row.report, "classifier.path")) for row in evaluated}) > 1:
        warnings.append("the rows were scored by different expression classifiers")
    tables = _tables(table, evaluated)
    figure_path, no_figure = _figure(evaluated, out, figure, rows, tile_size)
    if no_figure is not None:
        warnings.append(no_figure)
    markdown = comparison_markdown(tables, evaluated, warnings, figure_path, out)
    atomic_write_bytes(out, markdown.encode("utf-8"))
    return Comparison(markdown, warnings, figure_path, [line for _, lines in tables for line in lines])


def comparison_markdown(
    tables: Sequence[tuple[str, list[dict[str, Any]]]],
    rows: Sequence[Evaluated],
    warnings: list[str],
    figure: Path | None,
    out: Path,
) -> str:
    first = rows[0].report
    lines = [
        "# Comparison with the paper's tables",
        "",
        f"Snapshot {first['snapshot']['name']} ({first['snapshot']['manifest_sha256'][:12]}), "
        f"{first['image_size']} px. {protocol_text(first)} "
        f"KID: mean ± std over {first['kid']['subsets']} subsets. "
        "The paper's figures come from its own data, resolution and sample size: compare our rows with each "
        "other, and with the paper only by their order and ratios. Expression accuracy by an independent "
        f"classifier (its own test accuracy: {fmt(first['classifier']['test_accuracy'], '.3f')}). "
        "SSIM and L1: output against its input (identity keeping; not known for folders of images). "
        f"Features: {first['feature_pipeline']}.",
    ]
    for caption, table_lines in tables:
        lines += ["", f"## {caption}", "", *_markdown_table(TABLE_HEADER, table_lines)]
    lines += [
        "",
        "## What each row was trained and scored with",
        "",
        *_markdown_table(SETTINGS_HEADER, [settings_row(row) for row in rows]),
    ]
    if warnings:
        lines += ["", "Warnings:", *(f"- {w}" for w in warnings)]
    if figure is not None:
        try:
            shown = figure.resolve().relative_to(out.resolve().parent)
        except ValueError:
            shown = figure.resolve()
        lines += ["", f"![inputs and each run's translation into every class]({shown.as_posix()})"]
    return "\n".join(lines) + "\n"
