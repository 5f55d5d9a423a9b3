"""`animexpr harvest` as a user runs it: options, summary, errors, and secrets that never leak."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, FakePost

LOGIN = "zz-login-7f3a"
API_KEY = "zz-key-Q9xW2r"


def harvest_args(home: Path, booru: FakeDanbooru, *extra: str) -> list[str]:
    return [
        "--home",
        str(home),
        "harvest",
        "--api-url",
        booru.url,
        "--rate",
        "100",
        "--download-rate",
        "100",
        *extra,
    ]


def run_cli(
    home: Path, booru: FakeDanbooru, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("DANBOORU_", "ANIMEXPR_"))
    }
    environment.update(env or {})
    environment["COLUMNS"] = "160"
    command = [sys.executable, "-m", "animexpr", "-v", *harvest_args(home, booru, *extra)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)


def test_harvest_prints_a_summary_by_class_and_reason(
    booru_factory: Callable[..., FakeDanbooru], make_corpus: Callable[..., list[FakePost]], home: Path
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=3, deleted=1, excluded=2)))
    result = CliRunner().invoke(
        app, harvest_args(home, booru, "--per-class", "2", "--class", "smile"), env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "smile" in result.output
    assert "angry" not in result.output
    assert "skipped or failed by reason: deleted 1, excluded_tag 2" in result.output
    assert "API requests" in result.output
    assert len(list((home / "originals").rglob("*.*"))) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--class", "joyful"], "unknown class 'joyful'"),
        (["--rating", "x"], "unknown rating 'x'"),
        (["--variant", "huge"], "original"),
        (["--login", "someone"], "API key"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    booru_factory: Callable[..., FakeDanbooru], home: Path, options: list[str], message: str
) -> None:
    booru = booru_factory([])
    result = CliRunner().invoke(app, harvest_args(home, booru, *options), env={"COLUMNS": "160"})
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert message in text
    assert booru.requests == []


def test_tag_limit_refusal_names_the_cause(booru_factory: Callable[..., FakeDanbooru], home: Path) -> None:
    booru = booru_factory([], tag_limit=1)
    result = CliRunner().invoke(app, harvest_args(home, booru, "--class", "smile"), env={"COLUMNS": "160"})
    assert result.exit_code != 0
    assert "You cannot search for more than 1 tags at a time." in str(result.exception)
    assert "at most 2 real tags" in str(result.exception)
    assert "found" in result.output  # the summary of what was done comes before the error


def test_secrets_never_reach_output_logs_database_files_or_user_agent(
    booru_factory: Callable[..., FakeDanbooru], make_corpus: Callable[..., list[FakePost]], home: Path
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=2, banned=1)), credentials={LOGIN: API_KEY})
    secrets = {"DANBOORU_LOGIN": LOGIN, "DANBOORU_API_KEY": API_KEY}
    ok = run_cli(home, booru, "--per-class", "2", env=secrets)
    assert ok.returncode == 0, ok.stderr
    assert {record.login for record in booru.api_records()} == {LOGIN}  # the credentials were used
    runner = CliRunner()
    wrong_key = {**secrets, "DANBOORU_API_KEY": API_KEY + "-wrong", "COLUMNS": "160"}
    refused = runner.invoke(app, ["-v", *harvest_args(home, booru, "--per-class", "3")], env=wrong_key)
    assert refused.exit_code == 1
    assert "Invalid API key" in str(refused.exception)
    given = ["--login", LOGIN, "--api-key", API_KEY]
    on_command_line = runner.invoke(app, ["-v", *harvest_args(home, booru, "--per-class", "3", *given)])
    assert on_command_line.exit_code == 0, on_command_line.output
    outputs = [
        ok.stdout + ok.stderr,
        refused.output + str(refused.exception),
        on_command_line.output,
    ]

    for secret in (LOGIN, API_KEY):
        for output in outputs:
            assert secret not in output
        for record in booru.requests:
            assert secret not in record.user_agent
            assert secret not in str(record.params)
        for path in home.rglob("*"):  # the SQLite database and its WAL included
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
