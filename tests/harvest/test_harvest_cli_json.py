"""`animexpr harvest --json`: one JSON object on standard output with the summary's figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from test_harvest_cli import harvest_args
from typer.testing import CliRunner

from animexpr.cli import app
from animexpr.testing.fakebooru import CorpusCounts, FakeDanbooru, FakePost


def test_harvest_json_has_the_summary_by_class_and_reason(
    booru_factory: Callable[..., FakeDanbooru], make_corpus: Callable[..., list[FakePost]], home: Path
) -> None:
    booru = booru_factory(make_corpus(CorpusCounts(keep=3, deleted=1, excluded=2)))
    args = harvest_args(home, booru, "--per-class", "2", "--class", "smile", "--json")
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the whole of standard output is the object
    assert summary["classes"] == {
        "smile": {
            "target": 2,
            "had": 0,
            "found": 5,  # 2 downloaded, 3 skipped
            "downloaded": 2,
            "skipped": 3,
            "failed": 0,
            "have": 2,
            "left": 0,
            "exhausted": False,
        }
    }
    assert summary["reasons"] == {"deleted": 1, "excluded_tag": 2}
    assert summary["failed"] == 0
    assert summary["api_requests"] == sum(1 for request in booru.requests if request.kind != "file")
    assert summary["seconds"] > 0
    assert summary["interrupted"] is False

    again = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert again.exit_code == 0, again.output
    smile = json.loads(again.stdout)["classes"]["smile"]
    assert (smile["had"], smile["downloaded"], smile["have"], smile["left"]) == (2, 0, 2, 0)
