"""Compare evaluated runs: the paper's Table 1 layout in a Markdown report, and a figure like its Fig. 10/11.

Each run must have been evaluated (`animexpr evaluate RUN` writes eval.json and the translated PNGs).
Numbers are only comparable when the runs were scored against the same snapshot, reference images,
resolution and feature pipeline: the report says so when they were not.
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
from animexpr.model.evaluate import INPUTS_DIR, fmt, load_report, resolve_run_dir
from animexpr.model.grid import save_png
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

# Runs whose values of these differ are not comparable (FID depends on every one of them).
COMPARABILITY_KEYS = (
    "snapshot.manifest_sha256",
    "reference",
    "image_size",
    "feature_pipeline",
    "test_images",
)
TABLE_HEADER = (
    "Method",
    "run",
    "FID",
    "KID",
    "expr. acc.",
    "SSIM",
    "L1",
    "params G",
    "ms / iter",
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


def _lookup(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def comparability_warnings(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    warnings = []
    for key in COMPARABILITY_KEYS:
        values = [_lookup(r, key) for r in reports]
        if len({repr(v) for v in values}) > 1:
            listed = ", ".join(f"{n}: {v}" for n, v in zip(names, values, strict=True))
            warnings.append(f"the runs differ in {key} ({listed}): their FID/KID are not comparable")
    classifiers = {repr(_lookup(r, "classifier.path")) for r in reports}
    if len(classifiers) > 1:
        warnings.append("the runs were scored by different expression classifiers")
    return warnings


def _kid_text(mean: float | None, std: float | None) -> str:
    return "-" if mean is None or std is None else f"{mean:.2e} ± {std:.1e}"


def table_row(name: str, report: dict[str, Any]) -> dict[str, Any]:
    mean = report["mean"]
    return {
        "Method": report["variant"],
        "run": name,
        "FID": fmt(mean.get("fid"), ".2f"),
        "KID": _kid_text(mean.get("kid_mean"), mean.get("kid_std")),
        "expr. acc.": fmt(mean.get("expression_accuracy"), ".3f"),
        "SSIM": fmt(mean.get("ssim"), ".3f"),
        "L1": fmt(mean.get("l1"), ".4f"),
        "params G": f"{report['parameters']['G'] / 1e6:.2f} M" if report.get("parameters") else "-",
        "ms / iter": fmt(report.get("ms_per_iter"), ".1f"),
    }


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


def compare_runs(
    runs: Sequence[Path], out: Path, figure: Path | None = None, rows: int = 8, tile_size: int | None = None
) -> Comparison:
    """Write the Table-1 report `out` (Markdown) and the figure (PNG, default beside it); returns both."""
    if not runs:
        raise CompareError("compare needs at least one evaluated run")
    run_dirs = [resolve_run_dir(Path(r)) for r in runs]
    reports = [load_report(d) for d in run_dirs]
    names = [d.name for d in run_dirs]
    warnings = comparability_warnings(reports, names)
    classes = reports[0]["classes"]
    if any(r["classes"] != classes for r in reports):
        raise CompareError("the runs translate between different classes")
    table = [table_row(n, r) for n, r in zip(names, reports, strict=True)]
    figure_path: Path | None = None
    image_dirs = [d / r["images"] for d, r in zip(run_dirs, reports, strict=True) if r.get("images")]
    if len(image_dirs) == len(run_dirs):
        picked = pick_inputs(image_dirs, classes, rows)
        if picked:
            labels = [f"{r['variant']} ({n.split('-', 1)[0]})" for n, r in zip(names, reports, strict=True)]
            size = tile_size or max(int(reports[0]["image_size"]), MIN_TILE)
            figure_path = figure or out.with_suffix(".png")
            save_png(comparison_figure(image_dirs, labels, classes, picked, size), figure_path)
        else:
            warnings.append("no test input was translated by every run: no figure")
    else:
        warnings.append("some runs were evaluated without saving images: no figure")
    markdown = comparison_markdown(table, reports, warnings, figure_path, out)
    atomic_write_bytes(out, markdown.encode("utf-8"))
    return Comparison(markdown, warnings, figure_path, table)


def comparison_markdown(
    table: list[dict[str, Any]],
    reports: Sequence[dict[str, Any]],
    warnings: list[str],
    figure: Path | None,
    out: Path,
) -> str:
    first = reports[0]
    lines = [
        "# Comparison of runs (the paper's Table 1 layout)",
        "",
        f"Snapshot {first['snapshot']['name']} ({first['snapshot']['manifest_sha256'][:12]}), "
        f"{first['test_images']} test images at {first['image_size']} px, "
        "each translated into every other class; "
        f"FID and KID against the originals of the target class ({first['reference']} splits), averaged over "
        f"target classes. KID: mean ± std over {first['kid']['subsets']} subsets. Expression accuracy by an "
        "independent classifier (its own test accuracy: "
        f"{fmt(first['classifier']['test_accuracy'], '.3f')}). "
        "SSIM and L1: output against its input (identity keeping). Features: "
        f"{first['feature_pipeline']}.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(str(row[k]) for k in TABLE_HEADER) + " |" for row in table]
    if warnings:
        lines += ["", "Warnings:", *(f"- {w}" for w in warnings)]
    if figure is not None:
        try:
            shown = figure.resolve().relative_to(out.resolve().parent)
        except ValueError:
            shown = figure.resolve()
        lines += ["", f"![inputs and each run's translation into every class]({shown.as_posix()})"]
    return "\n".join(lines) + "\n"
