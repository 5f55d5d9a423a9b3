"""Training curves of a run, as users of StarGAN and EDM look at them.

- `curves.png` in the run folder: line plots of D's and G's losses, the attention mask (mean, spread and
  the collapse guard) and G/label_effect over the iterations, from the rows of stats.jsonl. Drawn with
  Pillow, which the base install has (no plotting library for one picture); redrawn at each sample step and
  when training stops, so it costs nothing between sample steps.
- With the `tensorboard` package installed (`pip install 'animexpr[tensorboard]'`): TensorBoard event files
  in `tensorboard/`, holding every number of every stats row (the losses above, lr and timing too).

Neither ever stops training: a picture or event file that cannot be written (or a tensorboard that does not
import) gives one warning, and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from animexpr.model.run_files import CURVES_PNG, TENSORBOARD_DIR, read_stats_rows
from animexpr.store import atomic_write_bytes

log = logging.getLogger(__name__)

_POSITION_KEYS = ("iteration", "kimg")  # where a row was logged, not what was measured

Series = dict[str, list[tuple[int, float]]]  # stats key -> (iteration, value) in logged order


@dataclass(frozen=True)
class Panel:
    title: str
    shows: Callable[[str], bool]  # which stats keys the panel plots


PANELS = (
    Panel("D losses", lambda key: key.startswith("D/")),
    Panel("G losses", lambda key: key.startswith("G/loss_") and key != "G/loss_mask"),
    Panel("attention mask", lambda key: key in ("G/mask_mean", "G/mask_std", "G/loss_mask")),
    Panel("label effect (change of G's output with the target class)", lambda key: key == "G/label_effect"),
)

# Sizes in pixels of one panel of the picture, two panels a row.
PANEL_WIDTH, PANEL_HEIGHT = 560, 320
_PLOT_LEFT, _PLOT_RIGHT, _PLOT_TOP, _PLOT_BOTTOM = 64, 16, 46, 40
_COLUMNS = 2
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_FONT_SIZE = 12


def _measured(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row other than its position."""
    return {
        key: float(value)
        for key, value in row.items()
        if key not in _POSITION_KEYS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def logged_series(rows: Sequence[dict[str, Any]]) -> Series:
    """Every measured key's curve, in first-logged order (rows without G's step lack G's keys)."""
    series: Series = {}
    for row in rows:
        for key, value in _measured(row).items():
            series.setdefault(key, []).append((row["iteration"], value))
    return series


def panel_series(series: Series, panel: Panel) -> Series:
    return {key: points for key, points in series.items() if panel.shows(key)}


def curves_image(rows: Sequence[dict[str, Any]]) -> Image.Image | None:
    """One picture of every panel that has data, sharing the iteration axis; None without any data."""
    series_by_key = logged_series(rows)
    panels = [(panel, panel_series(series_by_key, panel)) for panel in PANELS]
    panels = [(panel, series) for panel, series in panels if series]
    if not panels:
        return None
    iterations = [it for _, series in panels for points in series.values() for it, _ in points]
    x_range = (min(iterations), max(iterations))
    row_count = math.ceil(len(panels) / _COLUMNS)
    image = Image.new("RGB", (PANEL_WIDTH * _COLUMNS, PANEL_HEIGHT * row_count), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=_FONT_SIZE)
    for index, (panel, series) in enumerate(panels):
        origin = ((index % _COLUMNS) * PANEL_WIDTH, (index // _COLUMNS) * PANEL_HEIGHT)
        _draw_panel(draw, font, origin, panel.title, series, x_range)
    return image


def write_curves_png(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Write the curves of `rows` to `path` atomically; False (and nothing written) without any data."""
    image = curves_image(rows)
    if image is None:
        return False
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return True


# --- drawing ---

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class _Axes:
    """Maps (iteration, value) to pixels inside one panel's plot rectangle."""

    left: int
    top: int
    right: int
    bottom: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def x(self, iteration: float) -> float:
        low, high = self.x_range
        return self.left + (iteration - low) / (high - low) * (self.right - self.left)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.bottom - (value - low) / (high - low) * (self.bottom - self.top)


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    font: Font,
    origin: tuple[int, int],
    title: str,
    series: Series,
    x_range: tuple[int, int],
) -> None:
    ox, oy = origin
    values = [value for points in series.values() for _, value in points]
    x_ticks = nice_ticks(*_widened(*x_range), min_step=1)  # iterations are whole numbers
    y_ticks = nice_ticks(*_widened(min(values), max(values)))
    axes = _Axes(
        ox + _PLOT_LEFT,
        oy + _PLOT_TOP,
        ox + PANEL_WIDTH - _PLOT_RIGHT,
        oy + PANEL_HEIGHT - _PLOT_BOTTOM,
        (x_ticks[0], x_ticks[-1]),
        (y_ticks[0], y_ticks[-1]),
    )
    draw.text((ox + PANEL_WIDTH / 2, oy + 4), title, fill="black", font=font, anchor="ma")
    _draw_legend(draw, font, (ox + _PLOT_LEFT, oy + 24), list(series))
    _draw_grid(draw, font, axes, x_ticks, y_ticks)
    for colour, points in zip(_colours(len(series)), series.values(), strict=True):
        pixels = [(axes.x(it), axes.y(value)) for it, value in _thinned(points, axes.right - axes.left)]
        if len(pixels) == 1:
            x, y = pixels[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        else:
            draw.line(pixels, fill=colour, width=2, joint="curve")


def _draw_legend(draw: ImageDraw.ImageDraw, font: Font, at: tuple[int, int], keys: list[str]) -> None:
    x, y = at
    for colour, key in zip(_colours(len(keys)), keys, strict=True):
        draw.rectangle((x, y + 3, x + 14, y + 9), fill=colour)
        draw.text((x + 18, y), key, fill="black", font=font)
        x += 18 + round(draw.textlength(key, font=font)) + 14


def _draw_grid(
    draw: ImageDraw.ImageDraw, font: Font, axes: _Axes, x_ticks: list[float], y_ticks: list[float]
) -> None:
    for tick in x_ticks:
        x = axes.x(tick)
        draw.line((x, axes.top, x, axes.bottom), fill="#e6e6e6")
        draw.text((x, axes.bottom + 4), _tick_text(tick, x_ticks), fill="#444444", font=font, anchor="ma")
    for tick in y_ticks:
        y = axes.y(tick)
        draw.line((axes.left, y, axes.right, y), fill="#e6e6e6")
        draw.text((axes.left - 4, y), _tick_text(tick, y_ticks), fill="#444444", font=font, anchor="rm")
    draw.rectangle((axes.left, axes.top, axes.right, axes.bottom), outline="#888888")
    middle = (axes.left + axes.right) / 2
    draw.text((middle, axes.bottom + 22), "iteration", fill="#444444", font=font, anchor="ma")


def _colours(count: int) -> list[str]:
    return [_PALETTE[i % len(_PALETTE)] for i in range(count)]


def _widened(low: float, high: float) -> tuple[float, float]:
    """A range a plot can span: one value becomes a small interval around it."""
    if high > low:
        return low, high
    margin = abs(low) * 0.1 or 1.0
    return low - margin, high + margin


def nice_ticks(low: float, high: float, target: int = 5, min_step: float = 0.0) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten, at least `min_step`) from at or below
    `low` to at or above `high`, about `target` of them."""
    raw_step = max((high - low) / max(target - 1, 1), min_step)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [i * step for i in range(first, last + 1)]


def _tick_text(value: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if abs(value) >= 10_000 and step >= 1_000:
        return f"{value / 1000:g}k"
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{value:.{decimals}f}"


def _thinned(points: list[tuple[int, float]], width_px: int) -> list[tuple[float, float]]:
    """At most two points per pixel column (the mean of each run of points): a long run logged often draws
    as fast as a short one, and looks the same."""
    limit = 2 * width_px
    if len(points) <= limit:
        return [(float(it), value) for it, value in points]
    per_bin = math.ceil(len(points) / limit)
    thinned = []
    for start in range(0, len(points), per_bin):
        chunk = points[start : start + per_bin]
        thinned.append((sum(it for it, _ in chunk) / len(chunk), sum(v for _, v in chunk) / len(chunk)))
    return thinned


# --- the run's curves while it trains ---


class TrainingCurves:
    """Rank 0's curves of one run: the rows logged so far, redrawn on request, mirrored to TensorBoard.

    Made after the run folder says what the run did up to `start_iteration` (a resumed run's stats.jsonl is
    cut back to its checkpoint first), so the rows read back are exactly the run's history.
    """

    def __init__(self, run_dir: Path, stats_file: Path, start_iteration: int):
        self.png_path: Path | None = run_dir / CURVES_PNG  # None once it could not be written
        self.rows = read_stats_rows(stats_file)
        self.tensorboard = open_tensorboard(run_dir / TENSORBOARD_DIR, self.rows, start_iteration)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.tensorboard is not None:
            try:
                _add_to_tensorboard(self.tensorboard, row)
            except OSError as exc:
                self._give_up_tensorboard(exc)

    def draw(self) -> None:
        if self.png_path is not None:
            try:
                write_curves_png(self.rows, self.png_path)
            except OSError as exc:
                log.warning(
                    "%s: cannot write the training curves (%s); training goes on without them",
                    self.png_path,
                    exc,
                )
                self.png_path = None
        if self.tensorboard is not None:
            try:
                self.tensorboard.flush()  # what a TensorBoard watching the run shows is as new as the picture
            except OSError as exc:
                self._give_up_tensorboard(exc)

    def close(self) -> None:
        self.draw()
        if self.tensorboard is not None:
            writer, self.tensorboard = self.tensorboard, None
            try:
                writer.close()
            except OSError as exc:
                log.warning("cannot finish the TensorBoard event file (%s)", exc)

    def _give_up_tensorboard(self, exc: OSError) -> None:
        log.warning("cannot write the TensorBoard events (%s); training goes on without them", exc)
        writer, self.tensorboard = self.tensorboard, None
        with contextlib.suppress(OSError):  # the same failure again: said once already
            writer.close()


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def open_tensorboard(folder: Path, rows: Sequence[dict[str, Any]], start_iteration: int) -> Any:
    """A SummaryWriter on `folder`, or None without the tensorboard package (or one that does not work).

    A new folder gets the rows logged so far (a run resumed after tensorboard was installed shows its whole
    history). In an existing one, events after `start_iteration` came from a process killed after its last
    checkpoint, and TensorBoard drops them (purge_step), as this run logs those iterations again.
    """
    if not tensorboard_installed():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard itself: only when installed
    except Exception as exc:  # a tensorboard, protobuf or numpy of another age raises more than ImportError
        log.warning("tensorboard is installed but does not import (%s); writing no TensorBoard events", exc)
        return None
    try:
        if folder.is_dir():
            return SummaryWriter(str(folder), purge_step=start_iteration + 1)
        writer = SummaryWriter(str(folder))
        for row in rows:
            _add_to_tensorboard(writer, row)
    except OSError as exc:
        log.warning("%s: cannot write TensorBoard events (%s); training goes on without them", folder, exc)
        return None
    return writer


def _add_to_tensorboard(writer: Any, row: dict[str, Any]) -> None:
    for key, value in _measured(row).items():
        writer.add_scalar(key, value, global_step=row["iteration"])
