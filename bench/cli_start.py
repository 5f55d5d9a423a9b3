"""Start-up time of the command line against a bare typer app, on the same machine, in the same run.

    python bench/cli_start.py [--runs 15]

Baseline: `--help` of a two-command typer app (written by this script into a temporary folder), which pays
for the interpreter, typer, click and rich: what any typer command line pays before doing anything.

Ours, each in a fresh subprocess of the same interpreter: `animexpr --help`, and `animexpr --home TMP status`
on a store made once by `animexpr --home TMP init` (status opens the database and counts rows, so it also
pays for SQLAlchemy). Medians of --runs (the machine may be shared), one untimed run of each first so that
every command starts with the bytecode compiled and the files in the page cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE_APP = '''\
import typer

app = typer.Typer()


@app.command()
def hello(name: str) -> None:
    """Say hello."""
    print(f"hello {name}")


@app.command()
def goodbye(name: str, formal: bool = False) -> None:
    """Say goodbye."""
    print(f"goodbye {name}")


if __name__ == "__main__":
    app()
'''
# The ratio `animexpr --help` may reach against the baseline.
HELP_GOAL = 2.5


def time_command(command: list[str], runs: int) -> list[float]:
    """Wall seconds of each run, after one untimed warm-up run; a failing command stops the benchmark."""
    subprocess.run(command, check=True, capture_output=True)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command")
    args = parser.parse_args()
    animexpr = [sys.executable, "-m", "animexpr"]
    with tempfile.TemporaryDirectory(prefix="animexpr-bench-start-") as scratch:
        baseline_app = Path(scratch) / "two_commands.py"
        baseline_app.write_text(BASELINE_APP, encoding="utf-8")
        home = Path(scratch) / "home"
        subprocess.run([*animexpr, "--home", str(home), "init"], check=True, capture_output=True)
        commands = {
            "typer app --help (baseline)": [sys.executable, str(baseline_app), "--help"],
            "animexpr --help": [*animexpr, "--help"],
            "animexpr status": [*animexpr, "--home", str(home), "status"],
        }
        medians = {
            name: statistics.median(time_command(command, args.runs)) for name, command in commands.items()
        }
    baseline = medians["typer app --help (baseline)"]
    print(f"{'command':<30} {'median s':>9} {'x baseline':>11}   ({args.runs} runs each, {sys.executable})")
    for name, seconds in medians.items():
        print(f"{name:<30} {seconds:9.3f} {seconds / baseline:11.2f}")
    ratio = medians["animexpr --help"] / baseline
    verdict = "within" if ratio <= HELP_GOAL else "above"
    print(f"animexpr --help is {ratio:.2f}x the baseline: {verdict} the goal of {HELP_GOAL}x")


if __name__ == "__main__":
    main()
