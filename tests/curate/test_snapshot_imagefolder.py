"""From the local Danbooru to a dataset others load: harvest -> crop -> review -> `snapshot create --size N`
-> `snapshot show --json` -> `snapshot export --format imagefolder` -> `datasets.load_dataset`."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.config import load_settings
from animexpr.curate import export_imagefolder
from animexpr.db.session import open_db
from animexpr.testing.fakebooru import serve_fake_danbooru

PER_CLASS = 6
CLASSES = ("angry", "sad", "smile", "surprised")
REVIEWER = "ana"
FIRST_SIZE, SECOND_SIZE = 50, 64


class Home:
    """A home after harvest, crop and review, and the commands run on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runner = CliRunner()

    def run(self, *args: str, ok: bool = True) -> Any:
        result = self.runner.invoke(app, ["--home", str(self.path), *args], env={"COLUMNS": "200"})
        if ok:
            assert result.exit_code == 0, result.output + repr(result.exception)
        return result

    def show(self, name: str) -> dict[str, Any]:
        return json.loads(self.run("snapshot", "show", name, "--json").stdout)

    def manifest(self, name: str) -> list[dict[str, Any]]:
        text = (self.path / "snapshots" / name / "manifest.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path / "animexpr.sqlite3") as connection:
            return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home(tmp_path_factory.mktemp("imagefolder") / "home")
    with serve_fake_danbooru(per_class=PER_CLASS, class_tags=CLASSES) as url:
        home.run("init")
        home.run(
            "harvest",
            "--api-url",
            url,
            "--per-class",
            str(PER_CLASS),
            "--rate",
            "100",
            "--download-rate",
            "100",
        )
    home.run("crop", "--detector", "whole", "--size", "32", "--workers", "1")
    home.run("review", "accept", "--min-size", "0", "--reviewer", REVIEWER)
    return home


def test_snapshot_create_size_gives_exactly_n_at_two_sizes(reviewed: Home) -> None:
    for name, size in (("first", FIRST_SIZE), ("second", SECOND_SIZE)):
        created = reviewed.run("snapshot", "create", name, "--size", str(size), "--test-fraction", "0.2")
        assert f"snapshot {name}: {size} images" in created.output
        shown = reviewed.show(name)
        assert shown["total"] == shown["size"] == size
        assert sum(counts["total"] for counts in shown["per_class"].values()) == size
        assert shown["all"]["total"] == size
        assert shown["manifest_sha256"] in reviewed.run("snapshot", "show", name).output

        rows = reviewed.manifest(name)
        assert len(rows) == size
        test_rows = [row for row in rows if row["split"] == "test"]
        assert test_rows
        assert all(row["kind"] == "original" for row in test_rows)
        assert all(shown["per_class"][label]["test_original"] > 0 for label in CLASSES)  # stratified
        train_posts = {row["post_id"] for row in rows if row["split"] == "train"}
        assert not train_posts & {row["post_id"] for row in test_rows}
        cluster = dict(reviewed.query("SELECT id, coalesce(duplicate_cluster, -id) FROM crops"))
        train_clusters = {cluster[row["crop_id"]] for row in rows if row["split"] == "train"}
        assert not train_clusters & {cluster[row["crop_id"]] for row in test_rows}
    assert (
        reviewed.show("first")["per_class"]["smile"]["test_original"]
        == (reviewed.show("second")["per_class"]["smile"]["test_original"])
    )


def test_without_size_the_left_out_copies_are_named(reviewed: Home) -> None:
    reviewed.run("expand", "--target", "72", "--workers", "1")  # two copies of each of the 24 crops
    created = reviewed.run("snapshot", "create", "plain", "--test-fraction", "0.2")
    shown = reviewed.show("plain")
    left_out = 72 - shown["total"]
    assert left_out > 0
    assert f"note: {left_out} augmented copies of test crops" in created.output
    assert "--size 72" in created.output
    refused = reviewed.run("snapshot", "create", "x", "--balance", "equal", ok=False)
    assert refused.exit_code == 1
    assert "--balance and --augment-seed go with --size" in str(refused.exception)


def test_imagefolder_export_loads_with_datasets(reviewed: Home, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the `datasets` package (dev extra) is not installed")
    reviewed.run("snapshot", "create", "shared", "--size", str(FIRST_SIZE), "--test-fraction", "0.2")
    shown = reviewed.show("shared")
    out = tmp_path / "faces"
    exported = reviewed.run("snapshot", "export", "shared", str(out), "--format", "imagefolder")
    assert f"exported {FIRST_SIZE} images" in exported.output

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert {split: len(loaded[split]) for split in loaded} == shown["split_sizes"]
    for split in ("train", "test"):
        labels = Counter(loaded[split]["label"])
        for label in CLASSES:
            counts = shown["per_class"][label]
            expected = (
                counts["test_original"]
                if split == "test"
                else counts["train_original"] + counts["train_augmented"]
            )
            assert labels[label] == expected
    assert set(loaded["test"]["kind"]) == {"original"}

    train = loaded["train"]
    copy = train[train["kind"].index("augmented")]
    assert copy["image"].size == (32, 32)
    [(post_id, md5, file_url)] = reviewed.query(
        f"SELECT posts.id, posts.md5, posts.file_url FROM crops JOIN posts ON posts.id = crops.post_id "
        f"WHERE crops.id = {copy['crop_id']}"
    )
    assert copy["post_id"] == post_id
    assert copy["post_md5"] == md5
    assert copy["post_url"] == file_url.split("/original/")[0] + f"/posts/{post_id}"
    assert copy["reviewer"] == REVIEWER
    assert copy["detector"] == "whole"
    assert copy["augmentation_recipe"] == "face-safe-v1"
    params = json.loads(copy["augmentation_params"])
    assert params["seed"] == 0
    assert "Affine" in [step["transform"] for step in params["applied"]]  # the one step always applied
    source = train[train["crop_id"].index(copy["crop_id"])]  # the crop the copy was made from, also listed
    assert (source["kind"], source["crop_sha256"]) == ("original", copy["crop_sha256"])
    assert (source["augmentation_recipe"], source["augmentation_params"]) == ("none", "{}")

    card = (out / "README.md").read_text()
    assert shown["manifest_sha256"] in card
    assert "belong to their artists" in card
    assert f"| **all** | {shown['all']['train_original']} | {shown['all']['train_augmented']} |" in card
    assert reviewed.run("snapshot", "verify", str(out)).exit_code == 0  # its own manifest checks out
    again = reviewed.run("snapshot", "export", "shared", str(out), "--format", "imagefolder", ok=False)
    assert "is not empty" in str(again.exception)
    unknown = reviewed.run("snapshot", "export", "shared", str(tmp_path / "x"), "--format", "coco", ok=False)
    assert unknown.exit_code == 2  # a usage error that lists the formats
    refusal = " ".join(unknown.output.replace("│", " ").split())
    assert "'coco' is not one of 'stargan', 'imagefolder'" in refusal
    by_path = reviewed.run(
        "snapshot", "export", str(out), str(tmp_path / "y"), "--format", "imagefolder", ok=False
    )
    assert "takes a snapshot of this home by its name" in str(by_path.exception)


def test_an_interrupted_imagefolder_export_leaves_nothing_and_a_rerun_completes(
    reviewed: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reviewed.run("snapshot", "create", "atomic", "--size", str(FIRST_SIZE))
    settings = load_settings(home=reviewed.path, environ={})
    engine = open_db(settings.db_url)
    out = tmp_path / "exports" / "faces"
    real_write, written = export_imagefolder.atomic_write_bytes, []

    def write_then_stop(path: Path, data: bytes) -> None:
        real_write(path, data)
        written.append(path)
        if len(written) == 10:
            raise KeyboardInterrupt

    try:
        monkeypatch.setattr(export_imagefolder, "atomic_write_bytes", write_then_stop)
        with pytest.raises(KeyboardInterrupt):
            export_imagefolder.export_imagefolder(engine, settings, "atomic", out)
        assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no folder that looks usable
        monkeypatch.setattr(export_imagefolder, "atomic_write_bytes", real_write)
        summary = export_imagefolder.export_imagefolder(engine, settings, "atomic", out)
    finally:
        engine.dispose()
    assert summary.files == FIRST_SIZE
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "dataset.json",
        "manifest.jsonl",
        "test",
        "train",
    ]


@pytest.mark.parametrize(
    ("file_url", "page"),
    [
        ("https://cdn.donmai.us/original/ab/cd/x.png", "https://danbooru.donmai.us/posts/7"),
        (None, "https://danbooru.donmai.us/posts/7"),
        ("http://127.0.0.1:8765/original/ab/cd/x.png", "http://127.0.0.1:8765/posts/7"),
    ],
)
def test_post_page_urls(file_url: str | None, page: str) -> None:
    assert export_imagefolder.post_page_url(7, file_url) == page
