"""Developer entry point for migrations.

Usage: `python -m animexpr.db.migrate heads|check|revision MESSAGE`.

Works on a throwaway SQLite database upgraded to head, so that autogenerate compares
the models with the migrations.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command

from animexpr.db.session import alembic_config, make_engine, upgrade_schema


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"heads", "check", "revision"}:
        print(__doc__)
        return 2
    if argv[0] == "heads":
        command.heads(alembic_config())
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'scratch.sqlite3'}"
        upgrade_schema(make_engine(url))
        cfg = alembic_config(url)
        if argv[0] == "check":
            command.check(cfg)
        else:
            script = command.revision(cfg, message=" ".join(argv[1:]) or "change", autogenerate=True)
            _tidy(Path(script.path))  # type: ignore[union-attr]
    return 0


def _tidy(path: Path) -> None:
    """Format a generated migration the way the rest of the code is formatted."""
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "--fix", "--quiet", str(path)], check=False)
    subprocess.run([*ruff, "format", "--quiet", str(path)], check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
