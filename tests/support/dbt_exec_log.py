"""A dbt-duckdb plugin for tests: two SQL functions that the test copy of a project calls from every
model's, seed's and snapshot's hooks, to count dbt executions per node in a way that survives SIGKILL.

* ``dw_started(node, invocation_id)`` (first pre-hook) writes ``<dir>/<node>.<invocation>.start.json``
  with dbt's process id and the time, then, if the file ``<dir>/hold_<node>`` exists, takes it (an
  atomic rename to ``held_<node>.<invocation>``: only one execution takes a hold) and waits while the
  ``held_`` file exists (at most 10 minutes). A test deletes that file to let the node go on, or kills
  the build while the node waits.
* ``dw_finished(node, invocation_id)`` (last post-hook) writes ``<dir>/<node>.<invocation>.end.json``.

Each record is its own file, written to a temporary name and renamed: a killed process leaves complete
records or none. Enabled by the profile (``module_paths`` + ``plugins: [{module: dbt_exec_log,
config: {dir: ...}}]``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin
from duckdb import DuckDBPyConnection

HOLD_LIMIT_SECONDS = 600


def _write(directory: Path, node: str, invocation: str, phase: str) -> None:
    record = {"node": node, "invocation": invocation, "phase": phase, "pid": os.getpid(), "at": time.time()}
    final = directory / f"{node}.{invocation}.{phase}.json"
    partial = directory / f".{final.name}.{os.getpid()}.tmp"
    partial.write_text(json.dumps(record))
    os.replace(partial, final)


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self.directory = Path(plugin_config["dir"])

    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        directory = self.directory

        def started(node: str, invocation: str) -> int:
            _write(directory, node, invocation, "start")
            held = directory / f"held_{node}.{invocation}"
            try:
                os.rename(directory / f"hold_{node}", held)
            except FileNotFoundError:
                return 0
            deadline = time.monotonic() + HOLD_LIMIT_SECONDS
            while held.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return 1

        def finished(node: str, invocation: str) -> int:
            _write(directory, node, invocation, "end")
            return 0

        for name, function in (("dw_started", started), ("dw_finished", finished)):
            conn.create_function(name, function, ["VARCHAR", "VARCHAR"], "INTEGER", side_effects=True)
