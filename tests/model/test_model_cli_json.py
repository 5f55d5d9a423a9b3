"""`train`, `transform` and `compare` with `--json`: one JSON object on standard output (progress and logs
on standard error), with what the printed summaries say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from test_compare import rows  # noqa: F401  # the evaluated rows, as a fixture of this module too
from test_model_cli import TINY_OPTIONS
from typer.testing import CliRunner

from animexpr.cli import app


def run_json(*args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--json"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # the whole of standard output is the object


@pytest.mark.slow
def test_train_then_transform_json(snapshot_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(snapshot_dir, home / "snapshots" / "faces4")
    trained = run_json(
        "--home", str(home), "train", "--snapshot", "faces4", "--variant", "ours-no-cx", *TINY_OPTIONS
    )
    run_dir = home / "runs" / "00000-snapshot-ours-no-cx"
    assert trained["variant"] == "ours-no-cx"
    assert trained["run_dir"] == str(run_dir)
    assert (trained["iteration"], trained["iters"], trained["interrupted"]) == (2, 2, False)
    assert Path(trained["generator"]) == run_dir / "checkpoints" / "G_ema-0000002.safetensors"
    assert Path(trained["state"]).is_file()
    last_row = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
    assert last_row["iteration"] == 2
    assert trained["stats"]["G/loss_fake"] == pytest.approx(last_row["G/loss_fake"])  # the final losses
    assert {"D/loss_gp", "G/loss_cls", "G/mask_mean", "ms_per_iter"} <= set(trained["stats"])

    again = run_json(
        "--home", str(home), "train", "--snapshot", "faces4", "--variant", "ours-no-cx", *TINY_OPTIONS,
        "--resume", "auto",
    )  # fmt: skip
    assert (again["iteration"], again["generator"], again["stats"]) == (2, None, None)  # nothing to do

    face = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(face)
    target = json.loads((home / "snapshots" / "faces4" / "dataset.json").read_text())["classes"][1]
    out = tmp_path / "out"
    transformed = run_json("--home", str(home), "transform", str(face), "--to", target, "-o", str(out))
    assert transformed["written"] == [str(out / f"face-{target}.png")]
    assert (out / f"face-{target}.png").is_file()
    assert (transformed["variant"], transformed["iteration"]) == ("ours-no-cx", 2)
    assert transformed["checkpoint"] == trained["generator"]


def test_dry_run_json_has_the_config_and_parameter_counts(snapshot_dir: Path, tmp_path: Path) -> None:
    shown = run_json(
        "--home", str(tmp_path), "train", "--snapshot", str(snapshot_dir), "--variant", "stargan", "--dry-run"
    )
    assert shown["config"]["variant"] == "stargan"
    assert shown["parameters"]["G"] == 8_427_392  # StarGAN's generator for 4 classes, as the table says


@pytest.mark.slow
def test_compare_json_has_the_rows_and_the_mismatches(rows: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "table.md"
    arguments = [
        "--home",
        str(tmp_path),
        "compare",
        str(rows["ours"]),
        str(rows["cyclegan"]),
        "--out",
        str(out),
    ]
    compared = run_json(*arguments, "--table", "2")
    assert compared["report"] == str(out)
    assert out.is_file()
    assert {"CycleGAN", "Ours"} <= {row["Method"] for row in compared["rows"]}  # Table 2's rows
    ours = next(row for row in compared["rows"] if row.get("run") == rows["ours"].name)
    assert ours["FID"] not in ("", "-")
    assert (compared["comparable"], compared["mismatches"]) == (True, [])

    other = tmp_path / "00006-stargan"
    shutil.copytree(rows["stargan"], other)
    report = json.loads((other / "eval.json").read_text()) | {"protocol": "per-class"}
    (other / "eval.json").write_text(json.dumps(report))
    mixed = run_json(*arguments[:-2], str(other), "--out", str(out), "--allow-mismatch")
    assert mixed["comparable"] is False
    assert any("differ in protocol" in problem for problem in mixed["mismatches"])
    assert any(problem in warning for problem in mixed["mismatches"] for warning in mixed["warnings"])


def test_every_train_option_reaches_the_config(snapshot_dir: Path, tmp_path: Path) -> None:
    # Built from the options by name: an option added to `train` but not to TrainConfig (or renamed in one of
    # them only) would be dropped silently; this lists them.
    import dataclasses

    from animexpr.model import train_cli
    from animexpr.model.config import TrainConfig

    root = typer.main.get_command(app)
    options = {param.name for param in root.commands["train"].params}  # type: ignore[attr-defined]
    not_config = {"snapshot", "variant", "run_dir", "resume", "vgg_download", "dry_run", "as_json"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {train_cli._OPTION_FIELDS.get(name, name) for name in options - not_config} <= fields

    shown = run_json(
        "--home", str(tmp_path), "train", "--snapshot", str(snapshot_dir), "--dry-run",
        "--ema", "0", "--lambda-cx", "0.25", "--g-conv-dim", "8", "--vgg-weights", "w.pth", "--seed", "7",
    )  # fmt: skip
    config = shown["config"]
    assert (config["ema_beta"], config["lambda_cx"], config["g_conv_dim"]) == (0.0, 0.25, 8)
    assert (config["vgg_weights"], config["seed"]) == ("w.pth", 7)
