"""`dedup`, `expand` and `snapshot list` with `--json`: one JSON object on standard output, nothing else
there, with the figures the printed summaries show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from expand_data import CLASSES, add_crops, faces, settings_for
from sqlalchemy import Engine
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.db.session import open_db
from animexpr.store import FileStore


@pytest.fixture
def accepted_home(home: Path, store: FileStore) -> Path:
    """A store with 3 accepted crops of each of the four classes."""
    engine: Engine = open_db(settings_for(home).db_url)
    try:
        add_crops(engine, store, faces(3))
    finally:
        engine.dispose()
    return home


def run_json(home: Path, *args: str) -> Any:
    command = ["--home", str(home), "--classes", ",".join(CLASSES), *args, "--json"]
    result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # the whole of standard output is the object


def test_dedup_json(accepted_home: Path) -> None:
    summary = run_json(accepted_home, "dedup")
    assert summary["crops"] == 12
    assert summary["hashed"] == 12
    assert summary["max_distance"] == 8
    assert set(summary) == {
        "crops", "hashed", "unreadable", "clusters", "clustered_crops", "changed", "max_distance", "corrupt"
    }  # fmt: skip


def test_expand_json_then_again_with_nothing_left(accepted_home: Path) -> None:
    first = run_json(accepted_home, "expand", "--target", "20", "--balance", "equal", "--workers", "1")
    assert first["all"] == {"originals": 12, "augmented": 8, "total": 20}
    assert set(first["per_class"]) == set(CLASSES)
    assert all(counts["total"] == 5 for counts in first["per_class"].values())  # evened out
    assert (first["created"], first["already_there"]) == (8, 0)
    assert (first["target"], first["balance"], first["seed"]) == (20, "equal", 0)
    assert (first["failed"], first["problems"], first["interrupted"]) == (0, [], False)
    again = run_json(accepted_home, "expand", "--target", "20", "--balance", "equal", "--workers", "1")
    assert (again["created"], again["already_there"]) == (0, 8)


def test_snapshot_list_json(accepted_home: Path) -> None:
    assert run_json(accepted_home, "snapshot", "list") == {"snapshots": []}
    runner = CliRunner()
    base = ["--home", str(accepted_home), "--classes", ",".join(CLASSES)]
    assert runner.invoke(app, [*base, "dedup"]).exit_code == 0
    created = runner.invoke(app, [*base, "snapshot", "create", "first", "--test-fraction", "0.25"])
    assert created.exit_code == 0, created.output
    (listed,) = run_json(accepted_home, "snapshot", "list")["snapshots"]
    manifest = json.loads((accepted_home / "snapshots" / "first" / "dataset.json").read_text())
    assert listed["name"] == "first"
    assert listed["images"] == 12
    assert listed["train"] + listed["test"] == 12
    assert listed["test"] > 0
    assert listed["manifest_sha256"] == manifest["manifest_sha256"]
    assert listed["created"][:4].isdigit()  # ISO 8601
    table = runner.invoke(app, [*base, "snapshot", "list"], env={"COLUMNS": "200"})
    assert listed["manifest_sha256"][:16] in table.stdout
