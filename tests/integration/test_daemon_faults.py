"""The fault matrix under the real daemon (issue 14 item 7): the producer SIGKILLed early, mid and late
in its build, and the daemon stopped and started again while the retry run is in progress.

One webserver and one separately started ``dagster-daemon run`` (SQLite instance in a temporary
DAGSTER_HOME) serve a copy of the example code location with only the producer's retry coordinator
running (every 2 s). The copy's profile loads a test plugin (tests/support/dbt_exec_log.py) and every
model, seed and snapshot calls it from its first pre-hook and last post-hook: each dbt execution of a
node leaves a start record (node, dbt invocation, dbt's pid, time) and, if it got that far, an end
record, as files that survive a SIGKILL. A ``hold_<node>`` file makes the next execution of that node
wait in its pre-hook: that is how a test puts the kill early (every seed, the project's roots, is
held: no node has finished), mid (stg_orders held: its branch is waiting, the rest is done) or late
(daily_revenue held: everything else is done).

The producer's run worker (in-process executor: the run worker executes the step) is SIGKILLed; the
retry coordinator, evaluated by the daemon, sees on this host that the process is gone, ends the run
and launches one retry of what did not finish. Nothing is driven but through GraphQL and files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dagster_watcher import contract

from ..support.deployment import (
    REPO,
    SplitDeployment,
    _alive,
    key_str,
    running_split_deployment,
    write_dagster_yaml,
)
from ..support.waiting import wait_for
from .test_daemon_consumers import LEADER_SENSOR, PRODUCER_RUN_CONFIG, RETRY_JOB, RETRY_OF, wait_for_ticks
from .test_deployment import DBT_ASSETS, dbt_nodes, latest_materialization, staged_workspace

pytestmark = pytest.mark.slow

SENSOR_INTERVAL = 2
SEEDS = {"raw_customers", "raw_orders", "raw_payments"}
#: Where each kill happens: the nodes held (waiting in their pre-hook) and the nodes finished then.
POSITIONS: dict[str, tuple[set[str], set[str]]] = {
    "early": (SEEDS, set()),
    "mid": ({"stg_orders"}, SEEDS | {"stg_customers", "stg_payments", "customers_snapshot"}),
    "late": ({"daily_revenue"}, DBT_ASSETS - {"daily_revenue"}),
}

HOOKED = "select dw_started('{{ model.name }}', '{{ invocation_id }}')"
FINISHED_HOOK = "select dw_finished('{{ model.name }}', '{{ invocation_id }}')"


def exec_logged_project(project: Path, exec_dir: Path) -> None:
    """Make the staged copy of the example project record every execution (see the module docstring)."""
    shutil.copy2(REPO / "tests" / "support" / "dbt_exec_log.py", project / "dbt_exec_log.py")
    dbt_project = (project / "dbt_project.yml").read_text()
    original = '+pre-hook: "{{ fail_switch() }}"'
    assert dbt_project.count(original) == 3, "models, seeds and snapshots each have the failure switch"
    hooks = f'+pre-hook: ["{{{{ fail_switch() }}}}", "{HOOKED}"]\n    +post-hook: ["{FINISHED_HOOK}"]'
    (project / "dbt_project.yml").write_text(dbt_project.replace(original, hooks))
    profile = (project / "profiles.yml").read_text()
    dev_threads = "      threads: 4\n"
    assert dev_threads in profile
    plugin = (
        f"{dev_threads}      module_paths: [{json.dumps(str(project))}]\n"
        f"      plugins:\n        - module: dbt_exec_log\n          config: {{dir: {json.dumps(str(exec_dir))}}}\n"
    )
    (project / "profiles.yml").write_text(profile.replace(dev_threads, plugin, 1))


@dataclass
class Execution:
    node: str
    invocation: str
    pid: int
    started: float
    ended: float | None


@dataclass
class Faults:
    deployment: SplitDeployment
    exec_dir: Path

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return self.deployment.graphql

    def reset(self, held: set[str]) -> None:
        """Before a test: nothing running, no records, a hold on each node of ``held``."""
        for path in self.held().values():
            path.unlink()  # an execution a failed test left waiting goes on, so its run can end
        self.client.wait_until_idle(timeout=180)
        for path in self.exec_dir.iterdir():
            path.unlink()
        for node in held:
            (self.exec_dir / f"hold_{node}").touch()

    def executions(self) -> list[Execution]:
        records: dict[tuple[str, str], dict[str, Any]] = {}
        for path in self.exec_dir.glob("*.json"):
            record = json.loads(path.read_text())
            records.setdefault((record["node"], record["invocation"]), {})[record["phase"]] = record
        return [
            Execution(node, invocation, r["start"]["pid"], r["start"]["at"], r["end"]["at"] if "end" in r else None)
            for (node, invocation), r in sorted(records.items())
            if "start" in r
        ]

    def held(self) -> dict[tuple[str, str], Path]:
        """The holds taken so far, by (node, dbt invocation): each a file to delete to let that
        execution go on."""
        found = {}
        for path in self.exec_dir.glob("held_*"):
            node, invocation = path.name.removeprefix("held_").split(".")
            found[node, invocation] = path
        return found

    def materialized_by(self, run_id: str) -> set[str]:
        return {
            str(key_str(e["assetKey"]))
            for e in self.client.run_events(run_id)
            if e.get("eventType") == "ASSET_MATERIALIZATION"
        }


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    tmp = tmp_path_factory.mktemp("daemon_faults")
    workspace = staged_workspace(tmp / "repo")
    exec_dir = tmp / "executions"
    exec_dir.mkdir()
    exec_logged_project(workspace.parent / "example_project", exec_dir)
    env = {"DAGSTER_WATCHER_SENSOR_INTERVAL": str(SENSOR_INTERVAL)}
    with running_split_deployment(tmp / "dagster_home", workspace=workspace, env=env) as deployment:
        client = deployment.graphql
        # Only the retry coordinator: the consumer sensors would launch their jobs on every build.
        wait_for_ticks(client, [LEADER_SENSOR], after=0, count=1, timeout=180)
        client.stop_all_sensors()
        client.start_sensor(LEADER_SENSOR)
        yield Faults(deployment, exec_dir)


@dataclass
class Killed:
    producer_id: str
    dbt_pid: int
    dead_at: float
    """When the run worker and dbt were both seen gone (an upper bound of the killed executions' end)."""
    finished: set[str]


def start_and_kill(faults: Faults, held: set[str], finished: set[str], *, also_hold_for_retry: bool = False) -> Killed:
    """Launch the producer, wait until every node of ``held`` waits and ``finished`` are materialized,
    then SIGKILL the run worker (and check no dbt process outlives it)."""
    client = faults.client
    producer_id = client.launch_run(run_config=PRODUCER_RUN_CONFIG)
    wait_for(lambda: {node for node, _ in faults.held()} == held, 180, f"{sorted(held)} to wait in their pre-hook")
    if also_hold_for_retry:
        for node in held:
            (faults.exec_dir / f"hold_{node}").touch()
    wait_for(lambda: faults.materialized_by(producer_id) >= finished, 180, f"{sorted(finished)} to be materialized")
    tags = {t["key"]: t["value"] for t in client.run(producer_id)["tags"]}
    worker_pid, dbt_pid = int(tags[contract.PID_TAG]), int(tags[contract.DBT_PID_TAG])
    assert _alive(worker_pid) and _alive(dbt_pid)
    assert {e.pid for e in faults.executions()} == {dbt_pid}, "the run's dbt process executes its nodes"
    os.kill(worker_pid, signal.SIGKILL)  # an OOM kill of the run worker: no chance to clean up
    wait_for(lambda: not _alive(worker_pid) and not _alive(dbt_pid), 15, "the run worker and its dbt to be gone")
    dead_at = time.time()
    materialized = faults.materialized_by(producer_id)
    assert materialized == finished, "the kill came where the test put it"
    return Killed(producer_id, dbt_pid, dead_at, materialized)


def assert_executions(
    executions: list[Execution], killed: Killed, retry_dbt_pid: int, executed_in_killed: set[str]
) -> None:
    """Every node executed once in the killed run if it had started there, and once in the retry if it
    had not finished; nothing finished is rebuilt and no two executions of a node overlap in time."""
    by_node: dict[str, list[Execution]] = {}
    for execution in executions:
        by_node.setdefault(execution.node, []).append(execution)
    assert set(by_node) == DBT_ASSETS, DBT_ASSETS ^ set(by_node)
    for node, runs in sorted(by_node.items()):
        pids = [e.pid for e in sorted(runs, key=lambda e: e.started)]
        expected = [killed.dbt_pid] * (node in executed_in_killed) + [retry_dbt_pid] * (node not in killed.finished)
        assert pids == expected, (node, runs)
        ordered = sorted(runs, key=lambda e: e.started)
        for before, after in zip(ordered, ordered[1:], strict=False):
            end = before.ended if before.ended is not None else killed.dead_at
            assert end < after.started, f"two executions of {node} overlap: {before} and {after}"
        if node in killed.finished:
            assert ordered[0].ended is not None, (node, ordered)


@pytest.mark.parametrize("position", ["early", "mid", "late"])
def test_sigkill_of_the_producer_under_the_daemon_loses_nothing_and_builds_nothing_twice(
    faults: Faults, position: str
) -> None:
    held, finished = POSITIONS[position]
    client = faults.client
    faults.reset(held)
    killed = start_and_kill(faults, held, finished)
    # Early: no node had finished; late: all but the held one had.
    assert all(e.ended is None for e in faults.executions() if e.node in held)

    retry_id = client.wait_for_new_run(job=RETRY_JOB, tags={RETRY_OF: killed.producer_id}, timeout=180)
    retry = client.wait_for_run(retry_id, timeout=300)
    producer = client.run(killed.producer_id)
    assert producer["status"] == "FAILURE", "the coordinator ended the dead run: it is not left in progress"
    assert retry["status"] == "SUCCESS", retry
    lost = DBT_ASSETS - killed.finished
    assert sorted("/".join(k["path"]) for k in retry["assetSelection"]) == sorted(lost)
    assert faults.materialized_by(retry_id) == lost, "the retry built what the kill lost, and only that"

    # More ticks of the coordinator after the retry ended: no second retry.
    wait_for_ticks(client, [LEADER_SENSOR], after=float(retry["endTime"]), count=2)
    assert [r["runId"] for r in client.runs(tags={RETRY_OF: killed.producer_id})] == [retry_id]
    latest = {
        name: (latest_materialization(n) or {}).get("runId") for name, n in dbt_nodes(client.asset_nodes()).items()
    }
    assert latest == {n: retry_id if n in lost else killed.producer_id for n in DBT_ASSETS}

    retry_tags = {t["key"]: t["value"] for t in retry["tags"]}
    assert_executions(faults.executions(), killed, int(retry_tags[contract.DBT_PID_TAG]), killed.finished | held)


#: A run queue that never dequeues a retry (every retry run carries the attempt tag): while the daemon
#: reads this config, a requested retry stays QUEUED.
RETRIES_STAY_QUEUED = {"run_queue": {"tag_concurrency_limits": [{"key": contract.ATTEMPT_TAG, "limit": 0}]}}


def restart_daemon(faults: Faults, stop_signal: signal.Signals, dagster_yaml: dict[str, Any] | None = None) -> float:
    """Stop the daemon (if it runs) with ``stop_signal`` and start it again (with ``dagster_yaml``'s sections added to
    the instance config, if given); return when it was started again."""
    daemon = faults.deployment.daemon
    if daemon is not None and daemon.poll() is None:
        faults.deployment.stop_daemon(stop_signal)
    if dagster_yaml is not None:
        write_dagster_yaml(faults.deployment.webserver.home, extra=dagster_yaml)
    restarted = time.time()
    faults.deployment.start_daemon()
    return restarted


@pytest.mark.parametrize(
    ("phase", "stop_signal"),
    [("in_progress", signal.SIGTERM), ("in_progress", signal.SIGKILL), ("requested", signal.SIGKILL)],
    ids=["in_progress-SIGTERM", "in_progress-SIGKILL", "requested-SIGKILL"],
)
def test_daemon_stopped_and_started_again_mid_retry_launches_no_second_retry(
    faults: Faults, phase: str, stop_signal: signal.Signals
) -> None:
    """The producer is killed late; the daemon is stopped and started again while its retry run waits:
    in daily_revenue's pre-hook (in progress), or in the run queue (requested: the first daemon's
    queue config dequeues no retry, the restarted daemon's does). The new daemon's coordinator ticks
    while the retry is not finished and after it ended: one retry run for the batch, every node
    materialized, no node executed twice at once."""
    held = {"daily_revenue"}
    client = faults.client
    faults.reset(held)
    if phase == "requested":
        restart_daemon(faults, signal.SIGTERM, RETRIES_STAY_QUEUED)
    try:
        killed = start_and_kill(faults, held, DBT_ASSETS - held, also_hold_for_retry=phase == "in_progress")
        retry_id = client.wait_for_new_run(job=RETRY_JOB, tags={RETRY_OF: killed.producer_id}, timeout=180)
        if phase == "in_progress":
            wait_for(lambda: len(faults.held()) == 2, 180, "the retry's daily_revenue to wait in its pre-hook")
            assert client.run(retry_id)["status"] == "STARTED"
        else:
            created = float(client.run(retry_id)["creationTime"])
            wait_for_ticks(client, [LEADER_SENSOR], after=created + 1, count=2)
            assert client.run(retry_id)["status"] == "QUEUED"
            assert len(faults.executions()) == len(DBT_ASSETS), "the retry has executed nothing"

        restarted = restart_daemon(faults, stop_signal, {} if phase == "requested" else None)
    finally:
        if phase == "requested" and "run_queue" in (faults.deployment.webserver.home / "dagster.yaml").read_text():
            restart_daemon(faults, signal.SIGTERM, {})  # never leave the queue holding retries
    # The new daemon's coordinator evaluates the batch while its retry is not finished: it asks for nothing.
    ticks = wait_for_ticks(client, [LEADER_SENSOR], after=restarted, count=3, timeout=180)[LEADER_SENSOR]
    assert [t["runIds"] for t in ticks if t["runIds"]] == [], ticks
    assert [r["runId"] for r in client.runs(tags={RETRY_OF: killed.producer_id})] == [retry_id]
    if phase == "in_progress":
        assert client.run(retry_id)["status"] == "STARTED", "the retry run outlived the daemon"
        for path in faults.held().values():
            path.unlink()  # let the retry's daily_revenue go on (the killed run's hold has no process left)

    retry = client.wait_for_run(retry_id, timeout=300)
    assert retry["status"] == "SUCCESS", retry
    assert faults.materialized_by(retry_id) == held
    wait_for_ticks(client, [LEADER_SENSOR], after=float(retry["endTime"]), count=2)
    assert [r["runId"] for r in client.runs(tags={RETRY_OF: killed.producer_id})] == [retry_id], "one retry"
    created = float(client.run(killed.producer_id)["creationTime"])
    assert [r["runId"] for r in client.runs(job=RETRY_JOB) if float(r["creationTime"]) >= created] == [retry_id]
    latest = {
        name: (latest_materialization(n) or {}).get("runId") for name, n in dbt_nodes(client.asset_nodes()).items()
    }
    assert latest == {n: retry_id if n in held else killed.producer_id for n in DBT_ASSETS}
    retry_tags = {t["key"]: t["value"] for t in retry["tags"]}
    assert_executions(faults.executions(), killed, int(retry_tags[contract.DBT_PID_TAG]), DBT_ASSETS)
