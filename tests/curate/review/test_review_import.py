"""`review import`: one file is one batch however often it is resumed; bad lines and files are one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from review_testdata import SeededCrops
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.config import Settings
from animexpr.curate.review import ReviewError
from animexpr.curate.review_csv import import_batch_id
from animexpr.db.models import Crop, ReviewEvent
from animexpr.db.session import session_scope

runner = CliRunner()


def _import(home: Path, file: Path, *args: str) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, ["--home", str(home), "review", "import", str(file), *args])
    return result.exit_code, result.output, result.exception


def _batches(engine: Engine) -> list[str | None]:
    with session_scope(engine) as session:
        return list(session.scalars(select(ReviewEvent.batch_id).order_by(ReviewEvent.id)))


def _states(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        return dict(session.execute(select(Crop.id, Crop.state)).all())


KILL_AFTER_FIRST_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from animexpr.config import load_settings
    from animexpr.curate.review import ReviewQueue
    from animexpr.curate.review_csv import import_csv
    from animexpr.db.session import open_db

    settings = load_settings(home=Path(sys.argv[1]), environ={})
    queue = ReviewQueue(open_db(settings.db_url), settings.class_names)
    import_csv(
        queue, Path(sys.argv[2]), chunk_lines=5, on_commit=lambda report: os.kill(os.getpid(), signal.SIGKILL)
    )
    """
)


def test_an_import_killed_midway_and_resumed_is_one_batch_that_one_undo_takes_back(
    home: Path, settings: Settings, engine: Engine, seeded: SeededCrops, tmp_path: Path
) -> None:
    decisions = tmp_path / "decisions.csv"
    lines = [f"{crop_id},{'rejected' if i % 3 == 0 else 'accepted'}" for i, crop_id in enumerate(seeded.ids)]
    decisions.write_text("crop_id,state\n" + "\n".join(lines) + "\n")
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_COMMIT, str(home), str(decisions)],
        env={**os.environ, "ANIMEXPR_HOME": str(home)},
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    batch = import_batch_id(decisions.read_bytes())
    assert _batches(engine) == [batch] * 5  # the first chunk was committed, then the process died

    code, output, _ = _import(home, decisions)
    assert code == 0, output
    assert f"{len(seeded.ids) - 5} decisions applied, 5 already so" in output
    assert batch in output
    assert _batches(engine) == [batch] * len(seeded.ids)
    assert "pending" not in _states(engine).values()

    undo = runner.invoke(app, ["--home", str(home), "review", "undo", "--reviewer", "csv-import"])
    assert f"undid {len(seeded.ids)} decisions" in undo.output
    assert set(_states(engine).values()) == {"pending"}


def test_bad_lines_are_reported_by_number_and_the_good_ones_apply(
    home: Path, engine: Engine, seeded: SeededCrops, tmp_path: Path
) -> None:
    first, second = seeded.ids[:2]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "crop_id,state,notes,notes\n"  # a repeated column the import does not read is harmless
        f"{first},rejected,,\n"
        "99999999999999999999,accepted,,\n"
        "2147483648,accepted,,\n"
        "²,accepted,,\n"
        "٣,accepted,,\n"
        "1_0,accepted,,\n"
        f"{second},accepted,{'x' * (128 * 1024 + 10)},\n"
        f"{second},accepted,,\n",
        encoding="utf-8",
    )
    code, output, exception = _import(home, bad)
    assert code == 1, output
    assert not isinstance(exception, ReviewError)
    for line in (3, 4, 5, 6, 7):
        assert f"bad.csv:{line}: crop_id" in output
        assert "is not a crop id" in output
    assert "bad.csv:8: a field is longer than 131072 characters" in output
    assert "2 decisions applied" in output
    assert "Traceback" not in output
    states = _states(engine)
    assert (states[first], states[second]) == ("rejected", "accepted")


def test_files_that_are_not_utf8_csv_are_one_error_and_change_nothing(
    home: Path, engine: Engine, seeded: SeededCrops, tmp_path: Path
) -> None:
    crop_id = seeded.ids[0]
    cases = {
        "latin1.csv": (f"crop_id,state,label\n{crop_id},accepted,café\n".encode("latin-1"), "not UTF-8 text"),
        "utf16.csv": (f"crop_id,state\n{crop_id},accepted\n".encode("utf-16"), "UTF-16"),
        "twice.csv": (f"crop_id,crop_id,state\n{crop_id},{crop_id},accepted\n".encode(), "named twice"),
        "folder": (None, "is a folder"),
        "missing.csv": (None, "no such file"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        elif name == "folder":
            path.mkdir()
        code, output, exception = _import(home, path)
        assert code == 1, name
        assert isinstance(exception, ReviewError), (name, output)
        assert message in str(exception), (name, str(exception))
        assert "\n" not in str(exception)
    assert _batches(engine) == []
