"""The root command line: init, status (human and JSON), one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text

from animexpr.config import Settings
from animexpr.db.models import Augmentation, Crop, CropState, Post, PostState, Snapshot
from animexpr.db.session import session_scope
from animexpr.testing.factories import crop_row


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "animexpr", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_init_creates_store_database_and_settings_file(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    result = run_cli(home, "init")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in home.iterdir()} >= {
        "originals",
        "crops",
        "augmented",
        "snapshots",
        "animexpr.toml",
    }
    assert (home / "animexpr.sqlite3").exists()
    assert 'smile = ["smile"]' in (home / "animexpr.toml").read_text()
    assert run_cli(home, "init").returncode == 0  # idempotent


def test_status_json_on_an_empty_store(tmp_path: Path) -> None:
    assert run_cli(tmp_path / "home", "init").returncode == 0
    result = run_cli(tmp_path / "home", "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["posts"] == {
        "total": 0,
        "found": 0,
        "downloaded": 0,
        "skipped": 0,
        "failed": 0,
        "reasons": {},
    }
    assert report["crops"] == {"pending": 0, "accepted": 0, "rejected": 0}
    assert report["augmented"] == 0
    assert report["snapshots"] == []
    assert list(report["per_class"]) == ["angry", "sad", "smile", "surprised"]


def _fill(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add_all(
            [
                Post(id=1, class_name="smile", state=PostState.DOWNLOADED),
                Post(id=2, class_name="smile", state=PostState.DOWNLOADED),
                Post(id=3, class_name="sad", state=PostState.SKIPPED, reason="deleted"),
                Post(id=4, class_name="sad", state=PostState.SKIPPED, reason="excluded_tag"),
                Post(id=5, class_name="angry", state=PostState.FAILED, reason="download_failed"),
            ]
        )
        session.flush()
        crops = [
            _crop(1, 0, "smile", CropState.ACCEPTED),
            _crop(2, 0, "smile", CropState.REJECTED),
            _crop(2, 1, "sad", CropState.PENDING),  # relabelled in review
        ]
        session.add_all(crops)
        session.flush()
        session.add(
            Augmentation(
                crop_id=crops[0].id, sha256="f" * 64, file_relpath="augmented/ff/f.png",
                recipe_version="v1", seed=0, variant_index=0, params={"hflip": True},
            )
        )  # fmt: skip
        session.add(Snapshot(name="first", manifest_sha256="a" * 64, settings={}, counts={}))


def _crop(post_id: int, face_index: int, label: str, state: CropState) -> Crop:
    return crop_row(post_id, label, face_index=face_index, state=state)


def test_status_json_on_a_filled_store(settings: Settings, engine: Engine) -> None:
    _fill(engine)
    result = run_cli(settings.home, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["posts"]["total"] == 5
    assert report["posts"]["downloaded"] == 2
    assert report["posts"]["skipped"] == 2
    assert report["posts"]["reasons"] == {"deleted": 1, "download_failed": 1, "excluded_tag": 1}
    assert report["crops"] == {"pending": 1, "accepted": 1, "rejected": 1}
    assert report["augmented"] == 1
    assert report["snapshots"] == ["first"]
    smile, sad = report["per_class"]["smile"], report["per_class"]["sad"]
    assert smile["posts"]["downloaded"] == 2
    assert smile["crops"] == {"pending": 0, "accepted": 1, "rejected": 1}
    assert smile["augmented"] == 1
    assert sad["posts"]["reasons"] == {"deleted": 1, "excluded_tag": 1}
    assert sad["crops"]["pending"] == 1  # counted under its current label
    human = run_cli(settings.home, "status")
    assert human.returncode == 0
    assert "excluded_tag 1" in human.stdout


def test_bad_settings_give_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "animexpr.toml").write_text("colours = 3\n")
    result = run_cli(tmp_path, "status")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "unknown key 'colours'" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_newer_database_is_refused_by_commands(settings: Settings, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'fffffffffff'"))
    result = run_cli(settings.home, "status")
    assert result.returncode == 1
    assert "newer than this animexpr" in result.stderr


def test_python_dash_m_and_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("animexpr ")
