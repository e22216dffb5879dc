"""Helpers shared by the benchmark project generators.

Kept tiny on purpose: both generators only need to wipe/create the output
directory, write text files deterministically and emit the same
``profiles.yml`` convention as ``example_project``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: Profile name used by every generated benchmark project.
PROFILE_NAME = "dagster_watcher_bench"

# Same convention as example_project/profiles.yml: the DuckDB file defaults to a path relative
# to the dbt process's working directory, and benchmarks point DAGSTER_WATCHER_DUCKDB_PATH at a
# scratch file (a DuckDB file admits one writer process at a time). Threads come from
# DBT_THREADS so the harness can sweep them without regenerating the project; dbt renders
# profiles natively, so `| int` yields a real integer.
PROFILES_YML = f"""\
{PROFILE_NAME}:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: "{{{{ env_var('DAGSTER_WATCHER_DUCKDB_PATH', 'target/bench.duckdb') }}}}"
      threads: "{{{{ env_var('DBT_THREADS', '8') | int }}}}"
"""


def reset_dir(out_dir: Path) -> Path:
    """Delete ``out_dir`` (if present) and recreate it empty.

    Generated projects are disposable; wiping first guarantees that files from a previous
    generation with different parameters (e.g. more nodes) cannot leak into the new project.
    A guard refuses obviously dangerous targets.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir == Path(out_dir.anchor) or out_dir == Path.home().resolve():
        raise ValueError(f"refusing to wipe {out_dir}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating parent dirs) with a trailing newline and LF endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def sql_str(value: str) -> str:
    """Quote ``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"
