"""Re-record the real dbt events the unit tests replay (``tests/unit/data/``).

Run it from the repository root after changing ``example_project`` or upgrading dbt, then commit the
data files it writes::

    .venv/bin/python tests/unit/record_events.py

What it does: parses ``example_project`` into a temp target path (``prepare_manifest``), then runs
``dbt build`` of the whole project twice with the failure switch ``--vars '{"fail_model":
"stg_payments"}'`` (successes, one error, skips, a warning test), each time on a fresh temp DuckDB
file (env ``DAGSTER_WATCHER_DUCKDB_PATH``) and a temp target path: once in runner mode
(:class:`~dagster_watcher.invocation.RunnerInvocation` fed the parsed manifest) and once in subprocess
mode (:class:`~dagster_watcher.invocation.SubprocessInvocation`). It writes:

- ``events_runner.jsonl`` and ``events_subprocess.jsonl``: one
  :class:`~dagster_watcher.dbt_normalizer.RawDbtEvent` per line (``name``, ``data``,
  ``invocation_id``) in the order dbt fired them; only the ``WANTED_EVENTS`` the invocations already
  filter to, exactly as the invocations yield them;
- ``manifest_graph.json``: the part of that parse's ``manifest.json`` the normaliser reads
  (``nodes`` with their resource type, package and file path, ``parent_map``, ``child_map``), so the
  replayed events and the graph always come from the same project.

Not collected by pytest (its name does not start with ``test_``); it needs dbt and dbt-duckdb, no
Dagster instance.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "example_project"
DATA = Path(__file__).resolve().parent / "data"
FAIL_VARS = {"fail_model": "stg_payments"}
#: The manifest node fields the normaliser reads (``DbtEventNormalizer._node`` and the maps).
NODE_FIELDS = ("resource_type", "name", "package_name", "original_file_path", "relation_name")


def build_args(target_path: Path) -> list[str]:
    """The arguments ``DbtWatcherResource.build_args`` gives for a whole-project build."""
    return [
        "build",
        "--project-dir",
        str(EXAMPLE),
        "--target-path",
        str(target_path),
        "--profiles-dir",
        str(EXAMPLE),
        "--vars",
        json.dumps(FAIL_VARS),
    ]


def write_events(path: Path, events: Iterable[Any]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for event in events:
            line = {"name": event.name, "data": event.data, "invocation_id": event.invocation_id}
            f.write(json.dumps(line, sort_keys=True, default=str) + "\n")
            count += 1
    return count


def graph_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": {
            uid: {k: node.get(k) for k in NODE_FIELDS}
            for uid, node in sorted(manifest["nodes"].items())
            if node.get("package_name") == "shop"
        },
        "parent_map": {k: sorted(v) for k, v in sorted(manifest["parent_map"].items())},
        "child_map": {k: sorted(v) for k, v in sorted(manifest["child_map"].items())},
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dw_record_") as tmp_dir:
        tmp = Path(tmp_dir)
        # The file's stem is the database name baked into every relation: keep it "shop".
        database = tmp / "duckdb" / "shop.duckdb"
        database.parent.mkdir()
        os.environ["DAGSTER_WATCHER_DUCKDB_PATH"] = str(database)
        os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"

        from dagster_dbt import DbtProject

        from dagster_watcher import prepare_manifest
        from dagster_watcher.dbt_normalizer import WANTED_EVENTS
        from dagster_watcher.invocation import RunnerInvocation, SubprocessInvocation

        project = DbtProject(project_dir=EXAMPLE, profiles_dir=EXAMPLE, target_path=tmp / "parse")
        manifest = json.loads(prepare_manifest(project, force=True).read_text())

        DATA.mkdir(exist_ok=True)
        dbt = Path(sys.executable).parent / "dbt"
        invocations = {
            "runner": RunnerInvocation(build_args(tmp / "runner"), manifest=manifest),
            "subprocess": SubprocessInvocation(
                build_args(tmp / "subprocess"), dbt_executable=str(dbt), cwd=EXAMPLE, echo=False
            ),
        }
        for mode, invocation in invocations.items():
            for leftover in (database, database.with_name(database.name + ".wal")):
                leftover.unlink(missing_ok=True)
            events = [e for e in invocation.stream() if e.name in WANTED_EVENTS]
            exit_ = invocation.exit
            if exit_ is None or not exit_.completed or exit_.ok:
                print(f"{mode}: expected a completed build with a failed node, got {exit_}", file=sys.stderr)
                return 1
            count = write_events(DATA / f"events_{mode}.jsonl", events)
            print(f"{mode}: {count} events -> {DATA / f'events_{mode}.jsonl'}")
        (DATA / "manifest_graph.json").write_text(json.dumps(graph_of(manifest), indent=1, sort_keys=True) + "\n")
        print(f"graph -> {DATA / 'manifest_graph.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
