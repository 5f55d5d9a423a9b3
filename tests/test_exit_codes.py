"""Exit statuses, the same for every command: 0 done, 1 error (one line), 2 usage error, 130 interrupted.

The unit tests run the console-script entry point in this process; the last two send a real SIGINT to a
real `animexpr` process: one to a stage that catches Ctrl-C itself (harvest keeps its message), one to a
command that does not (the review server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from animexpr import cli
from animexpr.cli_common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from animexpr.curate import snapshot
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, build_corpus


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    code = stopped.value.code
    return code if isinstance(code, int) else EXIT_ERROR


@pytest.fixture
def store_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    assert run_main(["--home", str(home), "init"]) == EXIT_OK
    return home


def test_done_is_0(store_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--home", str(store_home), "snapshot", "list", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"snapshots": []}


def test_an_error_is_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--home", str(tmp_path / "nothing"), "snapshot", "list"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: no store at")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args", [["no-such-command"], ["expand", "--balance", "even"], ["expand", "--target", "0"], ["train"]]
)
def test_a_usage_error_is_2(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--home", str(tmp_path), *args]) == EXIT_USAGE
    assert "Usage" in capsys.readouterr().err


def _abort_at_a_prompt() -> None:
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise typer.Abort() from None  # what click does with Ctrl-C at a prompt (its context is kept)


def _ctrl_c() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("stop", [_ctrl_c, _abort_at_a_prompt])
def test_ctrl_c_in_a_command_is_130_with_one_line(
    stop: Callable[[], None],
    store_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        stop()

    monkeypatch.setattr(snapshot, "list_snapshots", interrupted)
    assert run_main(["--home", str(store_home), "snapshot", "list"]) == EXIT_INTERRUPTED
    captured = capsys.readouterr()
    assert captured.err == "interrupted\n"  # not click's "Aborted!", no traceback
    assert captured.out == ""


def test_an_abort_that_is_not_ctrl_c_stays_clicks(
    store_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def declined(*_args: object, **_kwargs: object) -> None:
        raise typer.Abort()  # a declined confirmation, or the end of input at a prompt

    monkeypatch.setattr(snapshot, "list_snapshots", declined)
    assert run_main(["--home", str(store_home), "snapshot", "list"]) == 1
    assert "interrupted" not in capsys.readouterr().err


def test_a_stage_that_says_what_it_kept_is_not_told_twice(
    store_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stage_interrupted(*_args: object, **_kwargs: object) -> None:
        cli.err_console.print("interrupted: 3 done; run the same command again to continue")
        raise typer.Exit(EXIT_INTERRUPTED)

    monkeypatch.setattr(snapshot, "list_snapshots", stage_interrupted)
    assert run_main(["--home", str(store_home), "snapshot", "list"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted: 3 done; run the same command again to continue\n"


def test_ctrl_c_outside_any_command_is_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted_while_parsing(_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted_while_parsing)
    assert run_main(["status"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


# ---------------------------------------------------------------------------------------------- real SIGINT


def _environment() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ANIMEXPR_", "DANBOORU_"))}
    environment["COLUMNS"] = "160"
    environment["ANIMEXPR_OFFLINE"] = "1"  # as for every test: nothing is downloaded
    return environment


def _animexpr(home: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "animexpr", "--home", str(home), *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment()
    )


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, f"the command ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, out, err


def test_sigint_to_harvest_keeps_its_message_and_exits_130(tmp_path: Path) -> None:
    posts = build_corpus(counts=CorpusCounts(keep=3))
    with FakeDanbooru(posts, api_latency=5.0) as booru:  # every API answer keeps the crawler waiting
        process = _animexpr(tmp_path / "home", "harvest", "--api-url", booru.url, "--rate", "100", "--json")
        _wait_until(lambda: bool(booru.requests), process, "asked the server")
        status, out, err = _interrupt(process)
    assert status == EXIT_INTERRUPTED, err
    assert "interrupted; finished work is kept; run the same command again to continue" in err
    assert "Aborted!" not in err
    assert "Traceback" not in err
    assert json.loads(out)["interrupted"] is True  # the summary of what was done, on standard output


def test_sigint_to_a_command_without_its_own_handling_exits_130(store_home: Path) -> None:
    process = _animexpr(store_home, "review", "--port", "0")
    assert process.stdout is not None
    for line in process.stdout:  # the server says it is ready
        if "Ctrl-C stops the server" in line:
            break
    status, _, err = _interrupt(process)
    assert status == EXIT_INTERRUPTED, err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Aborted!" not in err
    assert "Traceback" not in err
