"""`compare`: the paper's Table 1 and Table 2 with our rows beside its figures, and its refusal of rows scored
differently. Fast: untrained tiny runs and stand-in features (see test_eval_protocol.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import build_test_snapshot
from PIL import Image
from test_eval_protocol import FEATURES, TEST_PER_CLASS, TRAIN_PER_CLASS, options, untrained_run
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.model.compare import PAPER_TABLE_1, PAPER_TABLE_2, CompareError, compare_runs
from animexpr.model.evaluate import EVAL_JSON, EvaluationError, evaluate_images, evaluate_run


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two evaluated runs (ours, stargan) and a folder of images scored as `cyclegan`, all comparable."""
    root = tmp_path_factory.mktemp("compare")
    snapshot = build_test_snapshot(root, TRAIN_PER_CLASS, TEST_PER_CLASS)
    cache_dir = root / "cache"
    runs_root = root / "runs"
    runs_root.mkdir()
    found: dict[str, Path] = {"snapshot": snapshot, "cache": cache_dir}
    for variant in ("ours", "stargan"):
        found[variant] = untrained_run(snapshot, runs_root, variant)
        evaluate_run(found[variant], options=options(cache_dir), features=FEATURES)
    report = json.loads((found["ours"] / EVAL_JSON).read_text(encoding="utf-8"))
    # Another program's translations: ours, mirrored, in DIR/<class>/*.png.
    folder = root / "cyclegan-outputs"
    for path in (found["ours"] / report["images"]).rglob("*.png"):
        if path.parent.name != "inputs":
            target = folder / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    evaluate_images(
        folder, snapshot, method="cyclegan", image_size=32, options=options(cache_dir), features=FEATURES
    )
    found["cyclegan"] = folder
    return found


def _report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / EVAL_JSON).read_text(encoding="utf-8"))


def _pooled(folder: Path) -> dict[str, Any]:
    pooled: dict[str, Any] = _report(folder)["pooled"]
    return pooled


def test_compare_prints_both_tables_with_the_papers_figures(rows: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tables.md"
    result = compare_runs([rows["ours"], rows["stargan"], rows["cyclegan"] / EVAL_JSON], out)
    text = out.read_text(encoding="utf-8")
    assert text == result.markdown
    assert "## Table 1: the ablations" in text
    assert "## Table 2: other methods" in text
    assert "| Method | paper FID | paper KID | run | FID | KID |" in text
    ours, stargan, cyclegan = (_pooled(rows[k]) for k in ("ours", "stargan", "cyclegan"))
    ours_line = (
        f"| Ours | 52.07 | 1.30e-02 | {rows['ours'].name} | {ours['fid']:.2f} | {ours['kid_mean']:.2e} ± "
    )
    assert text.count(ours_line) == 2  # in both tables
    assert text.count(f"| StarGAN | 79.04 | 2.74e-02 | {rows['stargan'].name} | {stargan['fid']:.2f} |") == 2
    assert f"| CycleGAN | 78.70 | 2.67e-02 | cyclegan-outputs | {cyclegan['fid']:.2f} |" in text
    for paper in (*PAPER_TABLE_1, *PAPER_TABLE_2):
        if paper.method in ("stargan-dc", "stargan-am", "ours-no-cx", "combogan"):  # no row of ours
            assert f"| {paper.label} | {paper.fid:.2f} | {paper.kid:.2e} | - | - |" in text
    assert "Rows of methods outside" not in text
    # The settings each row was trained and scored with.
    real = _report(rows["ours"])["real_set"]
    assert f"| {rows['ours'].name} | ours | 4 | 4 | linear | 1000 | 0.999 |" in text
    assert f"| random | relu3_2 | 1 [0.05, 0.95] | he | paper | 8 ({real['sha256'][:12]}) | 24 |" in text
    assert "| cyclegan-outputs | cyclegan | - | - | - | - | - | - | - | - | - | paper |" in text
    assert "Protocol paper: 24 generated images against 8 real images" in text
    # A folder of images has no saved inputs: no figure, and the report says why.
    assert result.figure is None
    assert any("no figure" in w for w in result.warnings)


def test_compare_of_two_runs_draws_the_figure(rows: dict[str, Path], tmp_path: Path) -> None:
    result = compare_runs([rows["ours"], rows["stargan"]], tmp_path / "report.md", rows=4)
    assert result.warnings == []
    assert result.figure == tmp_path / "report.png"
    assert result.figure.is_file()
    assert "(report.png)" in result.markdown


def test_one_table_puts_other_methods_apart(rows: dict[str, Path], tmp_path: Path) -> None:
    result = compare_runs([rows["ours"], rows["cyclegan"]], tmp_path / "t1.md", table="1")
    assert "## Table 1" in result.markdown
    assert "## Table 2" not in result.markdown
    assert "## Rows of methods outside these tables" in result.markdown
    assert "| cyclegan | - | - | cyclegan-outputs |" in result.markdown
    only_two = compare_runs([rows["ours"]], tmp_path / "t2.md", table="2")
    assert "## Table 1" not in only_two.markdown
    assert "| ComboGAN | 141.98 | 7.96e-02 | - |" in only_two.markdown


def _copy_with(run_dir: Path, destination: Path, change: dict[str, Any]) -> Path:
    shutil.copytree(run_dir, destination)
    report = _report(destination) | change
    (destination / EVAL_JSON).write_text(json.dumps(report), encoding="utf-8")
    return destination


def test_compare_refuses_rows_of_another_protocol(rows: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "00009-stargan"
    shutil.copytree(rows["stargan"], other)
    evaluate_run(other, options=options(rows["cache"], protocol="per-class"), features=FEATURES)
    with pytest.raises(
        CompareError, match=r"differ in protocol \(.*paper.*per-class\).*--allow-mismatch"
    ) as caught:
        compare_runs([rows["ours"], other], tmp_path / "r.md")
    assert "\n" not in str(caught.value)
    assert "real_set.sha256" in str(caught.value)  # all originals, not the test images
    assert not (tmp_path / "r.md").exists()
    flagged = compare_runs([rows["ours"], other], tmp_path / "r.md", allow_mismatch=True)
    assert any("protocol" in w and "not comparable" in w for w in flagged.warnings)
    assert "Warnings:" in (tmp_path / "r.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("key", "value"),
    [("generated_images", 23), ("feature_pipeline", "tf-inception/other"), ("image_size", 128)],
)
def test_compare_refuses_other_sample_sizes_and_pipelines(
    rows: dict[str, Path], tmp_path: Path, key: str, value: Any
) -> None:
    other = _copy_with(rows["stargan"], tmp_path / "00007-stargan", {key: value})
    with pytest.raises(CompareError, match=f"differ in {key}"):
        compare_runs([rows["ours"], other], tmp_path / "r.md")


def test_compare_refuses_reports_of_the_older_format(rows: dict[str, Path], tmp_path: Path) -> None:
    old = _copy_with(rows["stargan"], tmp_path / "00008-stargan", {"format": "animexpr-eval-1"})
    with pytest.raises(EvaluationError, match=r"'animexpr-eval-1'.*run `animexpr evaluate` on it again"):
        compare_runs([rows["ours"], old], tmp_path / "r.md")


def test_compare_command(rows: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    arguments = ["--home", str(tmp_path), "compare", str(rows["ours"]), str(rows["cyclegan"])]
    result = CliRunner().invoke(app, [*arguments, "--out", str(out), "--table", "2"])
    assert result.exit_code == 0, result.output
    assert "Table 2" in result.stdout
    assert "Table 1" not in out.read_text(encoding="utf-8")
    bad = CliRunner().invoke(app, [*arguments, "--out", str(out), "--table", "3"])
    assert bad.exit_code == 2
    assert "'3' is not one of '1', '2', 'both'" in " ".join(bad.output.replace("│", " ").split())


def test_compare_command_refusal_is_one_line(rows: dict[str, Path], tmp_path: Path) -> None:
    other = _copy_with(rows["stargan"], tmp_path / "00006-stargan", {"protocol": "per-class"})
    arguments = [
        "--home",
        str(tmp_path),
        "compare",
        str(rows["ours"]),
        str(other),
        "--out",
        str(tmp_path / "x.md"),
    ]
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, CompareError)
    assert "\n" not in str(result.exception)
    flagged = CliRunner().invoke(app, [*arguments, "--allow-mismatch"])
    assert flagged.exit_code == 0, flagged.output
    assert "not comparable" in flagged.stdout


def test_a_folder_scored_at_another_size_is_refused(rows: dict[str, Path], tmp_path: Path) -> None:
    """The same images at 64 px are another feature set: compare says which setting differs."""
    folder = tmp_path / "big"
    shutil.copytree(rows["cyclegan"], folder)
    (folder / EVAL_JSON).unlink()
    evaluate_images(
        folder, rows["snapshot"], image_size=64, options=options(rows["cache"]), features=FEATURES
    )
    assert _report(folder)["decoding"]["resized"] == _report(folder)["generated_images"]
    with pytest.raises(CompareError, match="differ in image_size"):
        compare_runs([rows["cyclegan"], folder], tmp_path / "r.md")
    assert np.isfinite(_pooled(folder)["fid"])
