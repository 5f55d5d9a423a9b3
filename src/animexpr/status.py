"""What the store holds: the counts behind `animexpr status`, and the training runs in the home folder.

The runs are read from their small files only (config.json, the last line of stats.jsonl, the checkpoint
names, eval.json): `status` starts in a blink and loads neither torch nor numpy.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from animexpr.config import Settings
from animexpr.db.models import Augmentation, Crop, CropState, Post, PostState, Snapshot
from animexpr.db.session import current_revision
from animexpr.model.run_files import (  # torch-free: `status` never loads torch
    CHECKPOINT_DIR,
    CONFIG_FILE,
    EVAL_JSON,
    GENERATOR_NAME,
    STATE_NAME,
    STATS_FILE,
    numbered,
    run_dirs,
    stats_row,
)


def collect_status(engine: Engine, settings: Settings) -> dict[str, Any]:
    """One JSON-ready object; the README documents its keys."""
    with Session(engine) as session:
        per_class = {name: _class_counts(session, name) for name in settings.class_names}
        return {
            "home": str(settings.home),
            "database": _redacted(engine),
            "schema_revision": current_revision(engine),
            "classes": {spec.name: list(spec.tags) for spec in settings.classes},
            "posts": _post_counts(session, None),
            "crops": _crop_counts(session, None),
            "augmented": _augmented_count(session, None),
            "snapshots": list(session.scalars(select(Snapshot.name).order_by(Snapshot.created_at))),
            "per_class": per_class,
            "runs": collect_runs(settings.runs_dir),
        }


def _class_counts(session: Session, class_name: str) -> dict[str, Any]:
    return {
        "posts": _post_counts(session, class_name),
        "crops": _crop_counts(session, class_name),
        "augmented": _augmented_count(session, class_name),
    }


def _post_counts(session: Session, class_name: str | None) -> dict[str, Any]:
    query = select(Post.state, Post.reason, func.count()).group_by(Post.state, Post.reason)
    if class_name is not None:
        query = query.where(Post.class_name == class_name)
    by_state = {state.value: 0 for state in PostState}
    by_reason: dict[str, int] = {}
    for state, reason, count in session.execute(query):
        by_state[state] = by_state.get(state, 0) + count
        if reason:
            by_reason[reason] = by_reason.get(reason, 0) + count
    return {"total": sum(by_state.values()), **by_state, "reasons": dict(sorted(by_reason.items()))}


def _crop_counts(session: Session, label: str | None) -> dict[str, int]:
    query = select(Crop.state, func.count()).group_by(Crop.state)
    if label is not None:
        query = query.where(Crop.label == label)
    counts = {state.value: 0 for state in CropState}
    counts.update(dict(session.execute(query).all()))  # rows are (state, count) pairs
    return counts


def _augmented_count(session: Session, label: str | None) -> int:
    query = select(func.count()).select_from(Augmentation)
    if label is not None:
        query = query.join(Crop, Augmentation.crop_id == Crop.id).where(Crop.label == label)
    return session.scalar(query) or 0


def _redacted(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# --- training runs ---

_STATS_TAIL_BYTES = 64 * 1024  # holds the last rows of stats.jsonl, however long the run


def collect_runs(runs_root: Path) -> list[dict[str, Any]]:
    """Each numbered run folder under `runs_root`, oldest first (a hidden folder is a run being set up)."""
    try:
        folders = run_dirs(runs_root)
    except OSError:  # an unreadable runs folder: no runs to show
        return []
    return [run_summary(folder) for folder in folders]


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What a run is, how far it got and how it scored; `problems` says what could not be read, in words."""
    problems: list[str] = []
    config = _read_json_object(run_dir / CONFIG_FILE, problems)
    if config is not None and _typed_value(config, "variant", str) is None:
        problems.append(f"{CONFIG_FILE} names no variant: not a training config")
    last_row = _last_stats_row(run_dir / STATS_FILE, problems)
    checkpoint = _last_checkpoint(run_dir / CHECKPOINT_DIR, problems)
    done = max(
        last_row.get("iteration", 0) if last_row else 0,
        checkpoint["iteration"] if checkpoint else 0,
    )
    evaluation = None
    if (run_dir / EVAL_JSON).exists():
        report = _read_json_object(run_dir / EVAL_JSON, problems)
        evaluation = evaluation_summary(report, problems) if report is not None else None
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "variant": _typed_value(config, "variant", str),
        "image_size": _typed_value(config, "image_size", int),
        "iterations_done": done,
        "iterations_planned": _typed_value(config, "iters", int),
        "last_checkpoint": checkpoint,
        "evaluation": evaluation,
        "problems": problems,
    }


def evaluation_summary(report: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """The headline figures of an eval.json: pooled under the paper protocol, else the class mean (as
    model.evaluate.headline chooses them)."""
    pooled = report.get("pooled")
    scores = pooled if report.get("protocol") == "paper" and pooled is not None else report.get("mean")
    if not isinstance(scores, dict):
        problems.append(f"{EVAL_JSON} holds no scores; run `animexpr evaluate` on it again")
        return None
    return {
        "fid": _typed_value(scores, "fid", float),
        "kid_mean": _typed_value(scores, "kid_mean", float),
        "kid_std": _typed_value(scores, "kid_std", float),
        "protocol": _typed_value(report, "protocol", str),
        "created": _typed_value(report, "created", str),
        "iteration": _typed_value(report, "iteration", int),
        "generator": _typed_value(report, "generator", str),
    }


def _read_json_object(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"no {path.name}")
        return None
    except OSError as exc:
        problems.append(f"{path.name} unreadable ({exc.strerror})")
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        problems.append(f"{path.name} is not valid JSON (cut short?)")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return value


def _typed_value(values: dict[str, Any] | None, key: str, kind: type) -> Any:
    """values[key] when it is of `kind` (an int counts as a float), else None: a hand-edited or foreign
    file shows as unknown values, never as a traceback."""
    value = values.get(key) if values is not None else None
    if isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int):
        return float(value)
    return value if isinstance(value, kind) else None


def _last_stats_row(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The last complete row of stats.jsonl (a kill may have cut the very last one short)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _STATS_TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None  # a run that has not logged yet
    except OSError as exc:
        problems.append(f"{path.name} unreadable ({exc.strerror})")
        return None
    for line in reversed(tail.splitlines()):
        row = stats_row(line)
        if row is not None:
            return row
    if tail.strip():
        problems.append(f"{path.name} holds no readable row")
    return None


def _last_checkpoint(folder: Path, problems: list[str]) -> dict[str, Any] | None:
    """The iteration of the newest checkpoint file and when it was written (UTC)."""
    try:
        found = numbered(folder, STATE_NAME) + numbered(folder, GENERATOR_NAME)
    except OSError as exc:
        problems.append(f"{folder.name}/ unreadable ({exc.strerror})")
        return None
    if not found:
        return None
    iteration, path = max(found)
    try:
        mtime = path.stat().st_mtime
    except OSError:  # pruned by a training run between the listing and now
        return {"iteration": iteration, "time": None}
    written = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
    return {"iteration": iteration, "time": written.isoformat(timespec="seconds")}


# --- the runs as table rows ---

RUN_COLUMNS = ("run", "variant", "px", "iterations", "last checkpoint", "latest evaluation")


def run_table_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """One row of text per run, for the `status` table; a run with problems says them in the last column."""
    return [
        [
            run["name"],
            run["variant"] or "?",
            str(run["image_size"] or "?"),
            f"{run['iterations_done']:,} / {_or_unknown(run['iterations_planned'])}",
            _checkpoint_text(run["last_checkpoint"]),
            _evaluation_text(run["evaluation"], run["problems"]),
        ]
        for run in runs
    ]


def _or_unknown(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"


def _checkpoint_text(checkpoint: dict[str, Any] | None) -> str:
    if checkpoint is None:
        return "none"
    return f"{checkpoint['iteration']:,} ({_short_time(checkpoint['time'])})"


def _evaluation_text(evaluation: dict[str, Any] | None, problems: list[str]) -> str:
    text = "not evaluated" if evaluation is None else _scores_text(evaluation)
    return "; ".join([*problems, text])


def _scores_text(evaluation: dict[str, Any]) -> str:
    fid, kid = evaluation["fid"], evaluation["kid_mean"]
    fid_text = "-" if fid is None else f"{fid:.2f}"
    kid_text = "-" if kid is None else f"{1e3 * kid:.2f}"
    return (
        f"FID {fid_text}, KID×1e3 {kid_text} ({evaluation['protocol'] or '?'}, "
        f"iteration {_or_unknown(evaluation['iteration'])}, {_short_time(evaluation['created'])})"
    )


def _short_time(iso: str | None) -> str:
    """'2026-12-07 00:10 UTC' from an ISO 8601 time; what cannot be read stays as it is."""
    if not iso:
        return "?"
    try:
        moment = datetime.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")
