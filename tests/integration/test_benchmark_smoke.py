"""The benchmark harness must not rot: `benchmarks/run.py --smoke` runs end to end (real dbt on DuckDB,
real Dagster materialize on a SQLite instance) and writes its Markdown table. No timing assertions:
the numbers are the benchmark's business, not CI's."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run_writes_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "DAGSTER_", "DW_BENCH_"))}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--out-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"run.py --smoke failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    table = (out / "example.md").read_text()
    assert "| variant |" in table
    for variant in ("dbt-cli", "watcher-runner"):
        assert f"| {variant} | 1/1 |" in table, table
    assert "## Producer overhead" in table and "## Consumer sensor ticks" in table, table
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "example.png").stat().st_size > 0
