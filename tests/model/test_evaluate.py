"""`evaluate` and `compare` on two tiny real training runs (stargan and ours) of a tiny snapshot, on the CPU.

The runs are 4 iterations of 32 px networks, so their scores mean nothing; the tests check the plumbing with
the real Inception network under the paper protocol: counts, the PNGs that were scored (one class's and the
pooled FID and KID are recomputed from them), caches, the report, the figure's layout. They need the
Inception weights (and skip without them) and use the real face crops of ANIMEXPR_ASSETS when set, generated
images if not. Marked slow: the two runs take ~20 s on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_fixtures import tiny_config
from PIL import Image
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.model import classifier as classifier_module
from animexpr.model.classifier import ClassifierConfig
from animexpr.model.compare import EMPTY_TILE, MIN_TILE, TILE_GAP, CompareError, compare_runs
from animexpr.model.data import DATASET_FILE, MANIFEST_FILE, load_snapshot, write_folder_snapshot
from animexpr.model.evaluate import (
    EVAL_JSON,
    EvalOptions,
    EvaluationError,
    evaluate_run,
    median_ms_per_iteration,
)
from animexpr.model.inception import InceptionFeatures
from animexpr.model.metrics import fid, kid
from animexpr.model.run_files import EVAL_TABLE
from animexpr.model.train import train
from animexpr.store import sha256_bytes

CLASSES = ("angry", "sad", "smile", "surprised")
PER_CLASS = 5  # images per class: 2 test + 3 train
TEST_PER_CLASS = 2
CLASSIFIER = ClassifierConfig(epochs=1)  # what `--classifier-epochs 1` asks for: the cache key matches


def _class_folders(root: Path) -> Path:
    """The real faces (4 characters stand in for 4 classes) when available, else generated 48 px faces."""
    assets = os.environ.get("ANIMEXPR_ASSETS")
    if assets and (Path(assets) / "faces").is_dir():
        return Path(assets) / "faces"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    for c, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(PER_CLASS):
            image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            image[(yy - 24) ** 2 + (xx - 24 + i) ** 2 < (8 + 3 * c) ** 2] = (60 * c, 200 - 40 * c, 90)
            Image.fromarray(image).save(root / label / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    return write_folder_snapshot(
        _class_folders(root), root / "snapshot", test_per_class=TEST_PER_CLASS, limit=PER_CLASS
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def runs(inception_weights: Path, snapshot: Path, cache_dir: Path) -> dict[str, Path]:
    """Two trained and evaluated runs, by variant."""
    runs_root = snapshot.parent / "runs"
    options = EvalOptions(device="cpu", batch=3, cache_dir=cache_dir, classifier=CLASSIFIER)
    result = {}
    for variant in ("stargan", "ours"):
        cfg = tiny_config(
            snapshot.resolve(), variant=variant, log_every=1, sample_every=4, ckpt_every=4, decay_start=4
        )
        run_dir = train(cfg, runs_root).run_dir
        evaluate_run(run_dir, options=options)
        result[variant] = run_dir
    return result


def _report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / EVAL_JSON).read_text(encoding="utf-8"))


def _png(
    path: Path, size: int | None = None, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return np.asarray(rgb if size is None else rgb.resize((size, size), resample))


@pytest.mark.slow
def test_eval_json_holds_every_target_class_and_the_measures(runs: dict[str, Path]) -> None:
    for variant, run_dir in runs.items():
        report = _report(run_dir)
        assert report["variant"] == variant
        assert len(report["classes"]) == 4
        assert report["protocol"] == "paper"
        assert report["test_images"] == 4 * TEST_PER_CLASS
        assert report["generated_images"] == 8 * 3  # each test face into each of the 3 other classes
        assert report["real_set"]["count"] == 8  # the test images
        assert report["classifier"]["test_accuracy"] is not None
        assert 0 <= report["classifier"]["test_accuracy"] <= 1
        pooled = report["pooled"]
        assert (pooled["n_generated"], pooled["n_real"], pooled["kid_subset_size"]) == (24, 8, 8)
        assert pooled["fid"] > 0
        for scores in report["per_class"].values():
            assert scores["n_generated"] == 6
            assert scores["n_real"] == TEST_PER_CLASS  # the test images of the class
            assert scores["kid_subset_size"] == 2  # min(N_real, N_fake, 1000)
            assert scores["fid"] > 0
            assert 0 <= scores["expression_accuracy"] <= 1
            assert 0 < scores["l1"] < 1
            assert -1 <= scores["ssim"] <= 1
            if variant == "ours":
                assert 0 < scores["mask_mean"] < 1
                assert scores["l1_outside_mask"] <= scores["l1"]
            else:
                assert scores["mask_mean"] is None
                assert scores["l1_outside_mask"] is None
        mean = report["mean"]
        assert mean["fid"] == pytest.approx(np.mean([s["fid"] for s in report["per_class"].values()]))
        assert report["parameters"]["G"] > 0
        assert report["ms_per_iter"] > 0
        assert report["timing"]["generation_ms_per_1000"] > 0
        table = (run_dir / EVAL_TABLE).read_text(encoding="utf-8")
        assert "| target | gen | real | FID |" in table
        assert f"| pooled | 24 | 8 | {pooled['fid']:.2f} |" in table
        assert f"| mean |  |  | {mean['fid']:.2f} |" in table


@pytest.mark.slow
def test_generated_pngs_are_what_was_scored(
    runs: dict[str, Path], snapshot: Path, inception_weights: Path
) -> None:
    """FID and KID of one target class and pooled, recomputed from the saved PNGs and the real test files,
    match eval.json."""
    run_dir = runs["ours"]
    report = _report(run_dir)
    classes = report["classes"]
    pngs = {c: sorted((run_dir / report["images"] / c).glob("*.png")) for c in classes}
    target = classes[0]
    assert len(pngs[target]) == 6
    assert not any(p.name.startswith(f"{target}-") for p in pngs[target])  # never into its own class
    assert len(list((run_dir / report["images"] / "inputs").glob("*.png"))) == 8
    extractor = InceptionFeatures(inception_weights, device="cpu")
    fake = {c: extractor(torch.from_numpy(np.stack([_png(p) for p in pngs[c]]))) for c in classes}
    snap = load_snapshot(snapshot)
    tests = [r for r in snap.records if r.split == "test"]
    real_images = torch.from_numpy(np.stack([_png(snap.path_of(r), size=32) for r in tests]))
    real_all = extractor(real_images)
    real_target = real_all[[r.label == target for r in tests]]
    scores = report["per_class"][target]
    assert fid(real_target, fake[target]) == pytest.approx(scores["fid"], rel=1e-4)
    assert kid(real_target, fake[target], seed=0).mean == pytest.approx(
        scores["kid_mean"], rel=1e-3, abs=1e-6
    )
    fake_all = np.concatenate([fake[c] for c in classes])
    pooled = report["pooled"]
    assert fid(real_all, fake_all) == pytest.approx(pooled["fid"], rel=1e-4)
    assert kid(real_all, fake_all, seed=len(classes)).mean == pytest.approx(
        pooled["kid_mean"], rel=1e-3, abs=1e-6
    )


@pytest.mark.slow
def test_evaluate_command_reuses_the_cached_classifier_and_real_features(
    runs: dict[str, Path], cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("the classifier should come from the cache")

    monkeypatch.setattr(classifier_module, "train_classifier", must_not_train)
    before = _report(runs["stargan"])
    arguments = ["--home", str(tmp_path), "evaluate", str(runs["stargan"]), "--device", "cpu", "--json"]
    arguments += ["--cache-dir", str(cache_dir), "--classifier-epochs", "1", "--batch", "3"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["timing"]["real_features_s"] < before["timing"]["real_features_s"]
    for name, scores in printed["per_class"].items():
        assert scores["fid"] == pytest.approx(before["per_class"][name]["fid"], rel=1e-5)
        assert scores["expression_accuracy"] == before["per_class"][name]["expression_accuracy"]
    assert _report(runs["stargan"])["created"] == printed["created"]


@pytest.mark.slow
def test_compare_writes_table_one_and_the_figure(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    result = compare_runs([runs["stargan"], runs["ours"]], out, rows=4)
    text = out.read_text(encoding="utf-8")
    assert result.warnings == []
    header = (
        "| Method | paper FID | paper KID | run | FID | KID | expr. acc. | SSIM | L1 | params G | ms / iter |"
    )
    assert header in text
    for label, paper, run_dir in (
        ("StarGAN", "79.04 | 2.74e-02", runs["stargan"]),
        ("Ours", "52.07 | 1.30e-02", runs["ours"]),
    ):
        pooled = _report(run_dir)["pooled"]
        assert (
            f"| {label} | {paper} | {run_dir.name} | {pooled['fid']:.2f} | {pooled['kid_mean']:.2e} ± "
            in text
        )
    assert result.figure == tmp_path / "report.png"
    assert "![" in text
    assert "(report.png)" in text

    figure = _png(result.figure)
    size, classes = MIN_TILE, _report(runs["ours"])["classes"]
    columns = 1 + 2 * len(classes)
    assert figure.shape[1] == columns * (size + TILE_GAP) + 2 * 3 * TILE_GAP
    header = figure.shape[0] - 4 * (size + TILE_GAP)
    # Row 0 shows the first class's test face: its own-class cell is blank, the next holds ours' translation.
    input_name = sorted(p.name for p in (runs["ours"] / "eval").rglob("inputs/*.png"))[0]
    source = input_name.split("-", 1)[0]
    assert source == classes[0]
    first_ours = (1 + len(classes)) * (size + TILE_GAP) + 2 * 3 * TILE_GAP
    own_cell = figure[header : header + size, first_ours : first_ours + size]
    assert (own_cell == np.array(EMPTY_TILE, dtype=np.uint8)).all()
    second = first_ours + size + TILE_GAP
    nearest = Image.Resampling.NEAREST
    translated = _png(next((runs["ours"] / "eval").rglob(f"{classes[1]}/{input_name}")), size, nearest)
    assert np.array_equal(figure[header : header + size, second : second + size], translated)
    input_tile = _png(next((runs["ours"] / "eval").rglob(f"inputs/{input_name}")), size, nearest)
    assert np.array_equal(figure[header : header + size, :size], input_tile)


@pytest.mark.slow
def test_compare_refuses_or_flags_runs_that_are_not_comparable(runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / runs["ours"].name
    shutil.copytree(runs["ours"], other)
    report = _report(other)
    report["real_set"]["sha256"] = "0" * 64
    (other / EVAL_JSON).write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(CompareError, match=r"differ in real_set\.sha256"):
        compare_runs([runs["stargan"], other], tmp_path / "report.md")
    result = compare_runs([runs["stargan"], other], tmp_path / "report.md", allow_mismatch=True)
    assert any("real_set.sha256" in w and "not comparable" in w for w in result.warnings)
    assert "Warnings:" in (tmp_path / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_compare_command(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    arguments = [
        "--home",
        str(tmp_path),
        "compare",
        str(runs["stargan"]),
        str(runs["ours"]),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert (tmp_path / "table.png").is_file()
    assert "stargan" in result.stdout


def test_compare_needs_evaluated_runs(tmp_path: Path) -> None:
    (tmp_path / "00000-x").mkdir()
    with pytest.raises(EvaluationError, match="animexpr evaluate"):
        compare_runs([tmp_path / "00000-x"], tmp_path / "r.md")


def _copy_snapshot(snapshot: Path, out: Path, edit: dict[str, Any], relabel: bool = False) -> Path:
    """A copy of the snapshot with every record's fields changed by `edit` (files shared via files_root)."""
    out.mkdir()
    lines = []
    for line in (snapshot / MANIFEST_FILE).read_text(encoding="utf-8").splitlines():
        lines.append(json.dumps(json.loads(line) | edit))
    manifest = ("\n".join(lines) + "\n").encode()
    (out / MANIFEST_FILE).write_bytes(manifest)
    dataset = json.loads((snapshot / DATASET_FILE).read_text(encoding="utf-8"))
    dataset |= {"manifest_sha256": sha256_bytes(manifest), "files_root": str(snapshot.resolve())}
    if relabel:
        dataset["classes"] = [*dataset["classes"], "sleepy"]
    (out / DATASET_FILE).write_text(json.dumps(dataset), encoding="utf-8")
    return out


@pytest.mark.slow
def test_evaluate_refuses_a_snapshot_without_test_images_or_with_other_classes(
    runs: dict[str, Path], snapshot: Path, tmp_path: Path
) -> None:
    no_test = _copy_snapshot(snapshot, tmp_path / "no-test", {"split": "train"})
    with pytest.raises(EvaluationError, match="no test split"):
        evaluate_run(runs["stargan"], snapshot_folder=no_test, options=EvalOptions(device="cpu"))
    other_classes = _copy_snapshot(snapshot, tmp_path / "other", {}, relabel=True)
    with pytest.raises(EvaluationError, match="classes"):
        evaluate_run(runs["stargan"], snapshot_folder=other_classes, options=EvalOptions(device="cpu"))


def test_median_ms_per_iteration_skips_the_first_window(tmp_path: Path) -> None:
    assert median_ms_per_iteration(tmp_path) is None
    lines = [{"iteration": 1, "ms_per_iter": 900.0}, {"iteration": 2, "ms_per_iter": 40.0}]
    lines += [{"iteration": 3, "ms_per_iter": 42.0}, {"iteration": 4, "ms_per_iter": 44.0}]
    (tmp_path / "stats.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    assert median_ms_per_iteration(tmp_path) == 42.0


def test_median_ms_per_iteration_skips_rows_that_are_no_rows(tmp_path: Path) -> None:
    lines = [json.dumps({"iteration": i, "ms_per_iter": ms}) for i, ms in ((1, 900.0), (2, 40.0), (3, 42.0))]
    lines.insert(2, "[1, 2]")  # valid JSON, but no row
    lines.append('{"iteration": 4, "ms_per_iter": 4')  # the last line, cut short by a kill
    (tmp_path / "stats.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert median_ms_per_iteration(tmp_path) == 41.0
