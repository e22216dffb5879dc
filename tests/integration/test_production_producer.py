"""Production topology, the producer side (issue 14): dbt dies with its producer, a terminated run
records its unreported nodes, every lost node carries dbt's own error text.

The kill and terminate tests run the producer step in a separate Python process (a real SQLite
instance under a temporary DAGSTER_HOME, real dbt-duckdb) on a copy of the example project with two
python models: ``slow_model`` (records its start, sleeps, records its end) and ``after_slow`` (records
its start): the record file counts each model's executions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey, AssetsDefinition, DagsterEventType, DagsterInstance, DagsterRunStatus

from dagster_watcher import contract

from ..support import copy_project, run_watcher
from ..support.deployment import _alive, _pids_with_env

SLOW_SECONDS = 30  # far longer than the test waits: whatever runs after the kill would show

SLOW_MODEL = """
import os, time

def model(dbt, session):
    with open(os.environ["DW_TEST_EXEC_LOG"], "a") as f:
        f.write("slow_model started\\n")
    time.sleep(float(os.environ.get("DW_TEST_SLOW_SECONDS", "0")))
    with open(os.environ["DW_TEST_EXEC_LOG"], "a") as f:
        f.write("slow_model finished\\n")
    return session.sql("select 1 as x")
"""

AFTER_SLOW = """
import os

def model(dbt, session):
    with open(os.environ["DW_TEST_EXEC_LOG"], "a") as f:
        f.write("after_slow started\\n")
    return dbt.ref("slow_model")
"""

STEP = """
import sys
from pathlib import Path

from dagster import AssetExecutionContext, DagsterInstance, materialize
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

project_dir, mode, home = sys.argv[1:4]
project = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=Path(project_dir) / "target")
prepare_manifest(project)


@dbt_watcher_assets(manifest=project.manifest_path, project=project)
def shop(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
    yield from dbt_watcher.build(context)


if mode != "parse":
    resource = DbtWatcherResource(
        project_dir=project_dir, invocation_mode=mode, progress=False, heartbeat_interval=0.5
    )
    materialize([shop], resources={"dbt_watcher": resource}, instance=DagsterInstance.local_temp(home))
"""


@dataclass
class SlowProject:
    root: Path
    project: Path
    script: Path
    database: Path


@pytest.fixture(scope="module")
def slow_project(tmp_path_factory: pytest.TempPathFactory) -> SlowProject:
    root = tmp_path_factory.mktemp("slow")
    project = copy_project(root)
    (project / "models" / "slow_model.py").write_text(SLOW_MODEL)
    (project / "models" / "after_slow.py").write_text(AFTER_SLOW)
    script = root / "step.py"
    script.write_text(STEP)
    slow = SlowProject(root, project, script, root / "slow.duckdb")
    # Parse once (the steps reuse the manifest: same profile environment).
    subprocess.run([sys.executable, str(script), str(project), "parse", str(root)], env=_env(slow, "parse"), check=True)
    return slow


def _env(slow: SlowProject, marker: str, exec_log: Path | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_WATCHER_DUCKDB_PATH": str(slow.database),
        "DW_TEST_EXEC_LOG": str(exec_log or slow.root / "parse.log"),
        "DW_TEST_SLOW_SECONDS": str(SLOW_SECONDS),
        "DW_TEST_MARKER": marker,
    }


@dataclass
class Step:
    process: subprocess.Popen[bytes]
    home: Path
    exec_log: Path
    marker: str

    def wait_for(self, line: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exec_log.exists() and line in self.exec_log.read_text():
                return
            assert self.process.poll() is None, f"the step ended before {line!r}"
            time.sleep(0.2)
        raise AssertionError(f"{line!r} never appeared")

    def executions(self) -> list[str]:
        return self.exec_log.read_text().splitlines() if self.exec_log.exists() else []

    def survivors(self, within: float = 10) -> set[int]:
        """Processes of this step still alive once the kernel has had ``within`` s to deliver signals."""
        deadline = time.monotonic() + within
        while True:
            alive = {p for p in _pids_with_env(f"DW_TEST_MARKER={self.marker}") if _alive(p)}
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def heartbeats(self, count: int, timeout: float = 60) -> list[float]:
        """The first ``count`` distinct heartbeat values the run's tag shows (read while it builds)."""
        instance = self.instance()
        seen: list[float] = []
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            (run,) = instance.get_runs()
            beat = contract.heartbeat_from_tags(run.tags)
            if beat is not None and (not seen or beat != seen[-1]):
                seen.append(beat)
            time.sleep(0.2)
        return seen

    def instance(self) -> DagsterInstance:
        return DagsterInstance.local_temp(str(self.home))


@pytest.fixture
def start_step(slow_project: SlowProject, tmp_path: Path) -> Iterator[object]:
    started: list[Step] = []

    def start(mode: str) -> Step:
        slow_project.database.unlink(missing_ok=True)
        home = tmp_path / f"home-{len(started)}"
        home.mkdir()
        exec_log = tmp_path / f"exec-{len(started)}.log"
        marker = uuid.uuid4().hex
        process = subprocess.Popen(
            [sys.executable, str(slow_project.script), str(slow_project.project), mode, str(home)],
            env=_env(slow_project, marker, exec_log),
            cwd=tmp_path,
        )
        step = Step(process, home, exec_log, marker)
        started.append(step)
        return step

    yield start
    for step in started:  # never leave a process behind, whatever the test found
        for pid in _pids_with_env(f"DW_TEST_MARKER={step.marker}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        step.process.wait()


@pytest.mark.parametrize("mode", ["runner", "subprocess"])
def test_sigkill_of_the_step_process_leaves_no_dbt_building(mode: str, start_step) -> None:
    step = start_step(mode)
    step.wait_for("slow_model started")
    before = {p for p in _pids_with_env(f"DW_TEST_MARKER={step.marker}") if _alive(p)}
    (run,) = step.instance().get_runs()
    dbt_pid = int(run.tags[contract.DBT_PID_TAG])
    # The tags name the step process and the process that really runs dbt (a forked child or a
    # `dbt` process), both alive during the build.
    assert int(run.tags[contract.PID_TAG]) == step.process.pid
    assert dbt_pid != step.process.pid and dbt_pid in before, (dbt_pid, before)
    # While dbt is quiet (the slow model sleeps), the writer keeps refreshing the heartbeat tag.
    beats = step.heartbeats(3)
    assert len(beats) == 3 and beats == sorted(beats), beats

    step.process.send_signal(signal.SIGKILL)  # what an OOM kill does: no chance to clean up
    step.process.wait()

    assert step.survivors() == set(), "a dbt process outlived its producer"
    # No process of the run is left to run anything: each model ran (started) at most once, and
    # neither the slow model's end nor its child ran after the kill.
    assert step.executions() == ["slow_model started"]


def test_terminated_run_records_every_unreported_node_as_lost_run_terminated(
    start_step, shop_assets: AssetsDefinition
) -> None:
    step = start_step("runner")
    step.wait_for("slow_model started")
    instance = step.instance()
    (run,) = instance.get_runs()
    # As Dagster terminates a run: the run is marked canceling, then the run worker is interrupted
    # (the default launcher's termination ends in SIGINT to the process executing the step).
    instance.report_run_canceling(run)
    step.process.send_signal(signal.SIGINT)
    assert step.process.wait(timeout=120) != 0
    assert step.survivors() == set()

    records = list(instance.all_logs(run.run_id))
    outcome_of: dict[AssetKey, list[str]] = {}
    lost: dict[AssetKey, str] = {}
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            outcome_of.setdefault(event.asset_key, []).append("materialized")  # type: ignore[arg-type]
        elif event.event_type == DagsterEventType.ASSET_OBSERVATION:
            obs = event.event_specific_data.asset_observation  # type: ignore[union-attr]
            recorded = contract.recorded_outcome(obs.metadata)
            if recorded is None:
                continue
            outcome_of.setdefault(obs.asset_key, []).append(recorded.status.value)
            if recorded.status.value == "lost":
                lost[obs.asset_key] = recorded.error or ""
    planned = {AssetKey("slow_model"), AssetKey("after_slow"), *shop_assets.keys}
    assert set(outcome_of) == planned, planned ^ set(outcome_of)
    assert all(len(v) == 1 for v in outcome_of.values()), "exactly one terminal record per node"
    assert lost.keys() >= {AssetKey("slow_model"), AssetKey("after_slow")}
    assert {lost[AssetKey("slow_model")], lost[AssetKey("after_slow")]} == {contract.RUN_TERMINATED}
    assert step.executions() == ["slow_model started"], "nothing ran after the termination"
    assert instance.get_run_by_id(run.run_id).status in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE)


# -- the real cause on every lost node -------------------------------------------------------------

HOLD_LOCK = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(600)"


def _lost_errors(run) -> dict[AssetKey, str]:
    return {
        k: str(m.get(contract.ERROR_KEY)) for k, m in run.observations().items() if m[contract.STATUS_KEY] == "lost"
    }


def test_wrong_target_name_reaches_every_lost_node(shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    run = run_watcher(shop_assets, tmp_path, target="no_such_target")
    assert not run.result.success
    errors = _lost_errors(run)
    assert set(errors) == set(shop_assets.keys)
    assert all("no_such_target" in e for e in errors.values()), errors


@pytest.mark.parametrize("mode", ["runner", "subprocess"])
def test_duckdb_lock_holder_is_named_on_every_lost_node(
    mode: str, shop_assets: AssetsDefinition, tmp_path: Path, duckdb_path: Path
) -> None:
    duckdb_path.unlink(missing_ok=True)
    # Another process holds the DuckDB file (a forked dbt would share this process's open database).
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(duckdb_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        run = run_watcher(shop_assets, tmp_path, mode=mode, fresh_database=False)
    finally:
        holder.kill()
        holder.wait()
    assert not run.result.success
    errors = _lost_errors(run)
    assert errors and set(errors) <= set(shop_assets.keys)
    assert all("lock" in e.lower() and str(holder.pid) in e for e in errors.values()), errors


# -- secrets never at rest -------------------------------------------------------------------------


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_token_sentinel_is_nowhere_on_disk(
    shop_assets: AssetsDefinition, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's BigQuery token variable holds a random sentinel. A build of the example (a model
    failing on purpose), then a build whose profile puts the token inside dbt's own error text: the
    sentinel is in no file of the Dagster home (event log, compute logs), the target path or the project.
    (Runner mode: the writer's scrubbing is the same for every source; the deployment tests cover
    subprocess mode's error text with DBT_ENV_SECRET_ variables.)"""
    mode = "runner"
    sentinel = f"dwtoken-{uuid.uuid4().hex}"
    monkeypatch.setenv("DAGSTER_WATCHER_BQ_TOKEN", sentinel)
    run = run_watcher(shop_assets, tmp_path / "example", mode=mode, dbt_vars={"fail_model": "stg_payments"})
    assert not run.result.success and run.materialized(), "the example build ran"

    project = copy_project(tmp_path / "broken")
    profile = (project / "profiles.yml").read_text()
    (project / "profiles.yml").write_text(
        profile.replace("threads: 4", "threads: \"{{ env_var('DAGSTER_WATCHER_BQ_TOKEN') }}\"", 1)
    )
    broken = run_watcher(shop_assets, tmp_path / "broken", mode=mode, project_dir=project, profiles_dir=str(project))
    assert not broken.result.success
    assert "*****" in broken.step_failure_message(), "dbt's error (naming the token) reached Dagster masked"
    assert _files_holding(tmp_path, sentinel) == []
