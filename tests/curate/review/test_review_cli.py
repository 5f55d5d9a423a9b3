"""`animexpr review` and its subcommands, run as a user runs them."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from review_testdata import SeededCrops
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.curate.review import QueueFilter, ReviewError, ReviewQueue
from animexpr.db.models import Crop, CropState, ReviewEvent, utcnow
from animexpr.db.session import session_scope

runner = CliRunner()


def _run(home: Path, *args: str) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, ["--home", str(home), "review", *args], env={"ANIMEXPR_REVIEW_TOKEN": ""})
    return result.exit_code, result.output, result.exception


def _states(engine: Engine) -> dict[int, str]:
    with session_scope(engine) as session:
        return dict(session.execute(select(Crop.id, Crop.state)).all())


def test_stats_show_every_class(home: Path, seeded: SeededCrops) -> None:
    code, output, _ = _run(home, "stats", "--reviewer", "alice")
    assert code == 0, output
    for name in ("angry", "sad", "smile", "surprised", "all"):
        assert name in output
    assert "no recent pace" in output
    code, output, _ = _run(home, "stats", "--json")
    assert code == 0
    assert '"pending": 24' in output


def test_bulk_accept_dry_run_then_real_then_undo(home: Path, seeded: SeededCrops, engine: Engine) -> None:
    code, output, _ = _run(home, "accept", "--label", "smile", "--dry-run")
    assert code == 0, output
    assert "6 pending crops match" in output
    assert set(_states(engine).values()) == {"pending"}
    code, output, _ = _run(home, "accept", "--label", "smile")
    assert "accepted 6 crops as reviewer bulk-accept" in output
    smiles = {c for c, label in seeded.labels.items() if label == "smile"}
    assert {c for c, state in _states(engine).items() if state == "accepted"} == smiles
    code, output, _ = _run(home, "undo", "--reviewer", "bulk-accept")
    assert "undid 6 decisions" in output
    assert set(_states(engine).values()) == {"pending"}
    code, output, exception = _run(home, "accept")
    assert isinstance(exception, ReviewError)
    assert "--label" in str(exception)


def test_bulk_accept_says_how_many_crops_a_closed_page_still_holds(
    home: Path, seeded: SeededCrops, engine: Engine
) -> None:
    queue = ReviewQueue(engine, ("angry", "sad", "smile", "surprised"))
    queue.lease_next("bob", QueueFilter(labels=("smile",)), count=6)  # bob's page, then closed
    code, output, _ = _run(home, "accept", "--label", "smile", "--dry-run")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "0 pending crops match; nothing changed (--dry-run)"
    assert re.fullmatch(
        r"6 more pending crops match but are held by review pages \(bob: 6\) until \d\d:\d\d UTC "
        r"\(in 1[45] min\), so they were left alone; a closed page's crops are free again then: run this "
        r"again after that",
        " ".join(lines[1:]),
    ), output
    code, output, _ = _run(home, "accept", "--label", "sad")
    assert output.strip() == "accepted 6 crops as reviewer bulk-accept"  # nothing held: no second line


def test_stats_estimate_from_the_reviewers_who_decided(
    home: Path, seeded: SeededCrops, engine: Engine
) -> None:
    queue = ReviewQueue(engine, ("angry", "sad", "smile", "surprised"))
    for crop_id in seeded.ids[:4]:
        queue.decide("alice", crop_id, "accept")
    with session_scope(engine) as session:
        events = session.scalars(select(ReviewEvent).order_by(ReviewEvent.id)).all()
        for index, event in enumerate(events):
            event.created_at = utcnow() - timedelta(minutes=10) + timedelta(seconds=3 * index)
    code, output, _ = _run(home, "stats")  # run by someone who never reviewed
    assert code == 0, output
    assert "ETA at the pace of alice (3.0 s per crop)" in output
    assert "1 min" in output  # 20 crops pending at 3 s
    code, output, _ = _run(home, "stats", "--json")
    report = json.loads(output)
    assert (report["reviewer"], report["pace_seconds"], report["pace_reviewers"]) == (None, 3.0, ["alice"])
    code, output, _ = _run(home, "stats", "--reviewer", "bob")
    assert "bob has no recent pace yet" in output


def test_export_and_import_from_the_command_line(
    home: Path, seeded: SeededCrops, engine: Engine, tmp_path: Path
) -> None:
    exported = tmp_path / "all.csv"
    code, output, _ = _run(home, "export", str(exported))
    assert code == 0, output
    assert f"wrote {len(seeded.ids)} crops" in output
    rows = list(csv.DictReader(exported.open()))
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(
        f"sha256,state\n{rows[0]['sha256']},rejected\n{rows[1]['sha256']},accepted\n{'f' * 64},accepted\n"
    )
    code, output, _ = _run(home, "import", str(decisions), "--reviewer", "sheet")
    assert code == 1  # one bad line
    assert "decisions.csv:4: no crop with sha256" in output
    assert "2 decisions applied" in output
    states = _states(engine)
    assert states[int(rows[0]["crop_id"])] == CropState.REJECTED
    assert states[int(rows[1]["crop_id"])] == CropState.ACCEPTED
    code, output, _ = _run(home, "import", str(decisions), "--reviewer", "sheet")
    assert "0 decisions applied, 2 already so" in output
    with session_scope(engine) as session:
        assert session.scalars(select(ReviewEvent.reviewer)).all() == ["sheet", "sheet"]
    accepted_only = tmp_path / "accepted.csv"
    _run(home, "export", str(accepted_only), "--state", "accepted")
    assert [row["crop_id"] for row in csv.DictReader(accepted_only.open())] == [rows[1]["crop_id"]]


def test_serving_off_loopback_needs_a_token(home: Path, seeded: SeededCrops) -> None:
    code, _, exception = _run(home, "--host", "0.0.0.0", "--port", "1")
    assert code != 0
    assert isinstance(exception, ReviewError)
    assert "--token" in str(exception)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_review_command_serves_the_page(home: Path, seeded: SeededCrops) -> None:
    port = _free_port()
    env = {**os.environ, "ANIMEXPR_HOME": str(home)}
    env.pop("ANIMEXPR_REVIEW_TOKEN", None)
    command = [sys.executable, "-m", "animexpr", "review", "--port", str(port), "--reviewer", "carol"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=1).json()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(
                        f"the review server did not start: {server.stdout.read() if server.stdout else ''}"
                    )
                time.sleep(0.1)
        assert config["reviewer"] == "carol"
        # A busy port is a clear error, not a traceback.
        busy = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    assert f"review page: http://127.0.0.1:{port}/" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "99999"), "--port 99999: use a port from 1 to 65535"),
        (("--port", "-1"), "--port -1: use a port from 1 to 65535"),
        (
            ("--host", "no-such-host.invalid", "--token", "long-enough-token"),
            "cannot listen on 'no-such-host.invalid'",
        ),
        (("--lease-minutes", "nan"), "--lease-minutes"),
    ],
)
def test_bad_listen_options_are_one_line_errors(
    home: Path, seeded: SeededCrops, args: tuple[str, ...], message: str
) -> None:
    code, _, exception = _run(home, *args)
    assert code == 1
    assert isinstance(exception, ReviewError)
    assert message in str(exception)
    assert "\n" not in str(exception)


def test_a_port_out_of_range_prints_one_line_and_no_traceback(home: Path, seeded: SeededCrops) -> None:
    env = {**os.environ, "ANIMEXPR_HOME": str(home)}
    env.pop("ANIMEXPR_REVIEW_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "animexpr", "review", "--port", "99999"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --port 99999: use a port from 1 to 65535"]
