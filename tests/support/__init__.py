"""Helpers shared by the test modules: where the example project is, and one real producer run (real
dbt on a fresh DuckDB file, a real SQLite Dagster instance) with everything the tests read back."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetsDefinition,
    DagsterEventType,
    DagsterInstance,
    EventLogEntry,
    RunRequest,
    SensorDefinition,
    build_sensor_context,
    materialize,
)
from dagster._core.execution.execution_result import ExecutionResult

from dagster_watcher import DbtWatcherResource
from dagster_watcher.artifacts import build_dirs_of_run
from dagster_watcher.contract import STATUS_KEY, TEST_KEY

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "example_project"


@dataclass
class WatcherRun:
    """A finished producer run and everything the tests read back from the real instance."""

    instance: DagsterInstance
    result: ExecutionResult
    target_path: Path
    records: list[EventLogEntry]

    @property
    def run_id(self) -> str:
        return self.result.run_id

    def events(self, event_type: DagsterEventType) -> list[EventLogEntry]:
        return [r for r in self.records if r.dagster_event and r.dagster_event.event_type == event_type]

    def materialized(self) -> list[AssetKey]:
        return [e.dagster_event.asset_key for e in self.events(DagsterEventType.ASSET_MATERIALIZATION)]  # type: ignore[union-attr,misc]

    def observations(self) -> dict[AssetKey, Mapping[str, Any]]:
        """Each asset's own outcome observation (tests' verdicts observed on it are in test_observations)."""
        out: dict[AssetKey, Mapping[str, Any]] = {}
        for e in self.events(DagsterEventType.ASSET_OBSERVATION):
            obs = e.dagster_event.event_specific_data.asset_observation  # type: ignore[union-attr]
            if TEST_KEY in obs.metadata or STATUS_KEY not in obs.metadata:
                continue
            assert obs.asset_key not in out, f"two observations for {obs.asset_key}"
            out[obs.asset_key] = {k: v.value for k, v in obs.metadata.items()}
        return out

    def test_observations(self) -> list[tuple[AssetKey, Mapping[str, Any]]]:
        """(asset, metadata) of every observation of a test's verdict: tests without an asset check on
        each parent, unit tests on their model, checks dbt's selection left out on their asset."""
        out = []
        for e in self.events(DagsterEventType.ASSET_OBSERVATION):
            obs = e.dagster_event.event_specific_data.asset_observation  # type: ignore[union-attr]
            if TEST_KEY in obs.metadata:
                out.append((obs.asset_key, {k: v.value for k, v in obs.metadata.items()}))
        return out

    def check_evaluations(self) -> dict[AssetCheckKey, Any]:
        out: dict[AssetCheckKey, Any] = {}
        for e in self.events(DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = e.dagster_event.event_specific_data  # type: ignore[union-attr]
            assert ev.asset_check_key not in out, f"two results for {ev.asset_check_key}"
            out[ev.asset_check_key] = ev
        return out

    @property
    def build_dir(self) -> Path:
        """This run's (latest attempt's) artifact folder under the resource's target path."""
        found = build_dirs_of_run(self.target_path, self.run_id)
        assert found, f"no build folder of run {self.run_id} under {self.target_path}"
        return found[-1]

    def run_results(self) -> dict[str, Any]:
        data = json.loads((self.build_dir / "run_results.json").read_text())
        return {r["unique_id"]: r for r in data["results"]}

    def step_failure_message(self) -> str:
        failures = self.events(DagsterEventType.STEP_FAILURE)
        assert failures, "the step did not fail"
        return failures[0].dagster_event.event_specific_data.error.message  # type: ignore[union-attr]


def run_watcher(
    assets: AssetsDefinition,
    tmp_path: Path,
    *,
    mode: str = "runner",
    dbt_vars: Mapping[str, Any] | None = None,
    selection: Any = None,
    instance: DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    fresh_database: bool = True,
    project_dir: Path = EXAMPLE,
    **resource_config: Any,
) -> WatcherRun:
    """Materialize the watcher assets with real dbt on a fresh DuckDB file and a real SQLite instance.
    ``fresh_database=False`` keeps the previous build's tables (a retry run builds on them)."""
    database = Path(os.environ["DAGSTER_WATCHER_DUCKDB_PATH"])
    if fresh_database:
        for leftover in (database, database.with_name(database.name + ".wal")):
            leftover.unlink(missing_ok=True)
    if instance is None:
        (tmp_path / "dagster_home").mkdir(parents=True, exist_ok=True)
        instance = DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    target_path = tmp_path / "dbt_target"
    resource = DbtWatcherResource(
        project_dir=project_dir,
        invocation_mode=mode,  # type: ignore[arg-type]
        dbt_vars=dict(dbt_vars or {}),
        target_path=str(target_path),
        progress=False,
        **resource_config,
    )
    result = materialize(
        [assets],
        resources={"dbt_watcher": resource},
        instance=instance,
        selection=selection,
        tags=dict(tags or {}),
        raise_on_error=False,
    )
    return WatcherRun(instance, result, target_path, list(instance.all_logs(result.run_id)))


def copy_project(tmp_path: Path) -> Path:
    """A scratch copy of the example project, for tests that must break it."""
    dest = tmp_path / "project"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb", "*.py"))
    return dest


class Sensors:
    """Evaluates consumer sensors the way the daemon does: with the stored cursor, tick after tick."""

    def __init__(self, sensors: list[SensorDefinition], instance: DagsterInstance) -> None:
        self.by_name = {s.name: s for s in sensors}
        self.cursors: dict[str, str | None] = {name: None for name in self.by_name}
        self.instance = instance

    def tick(self, name: str, *, keep_cursor: bool = True) -> tuple[list[RunRequest], str | None]:
        context = build_sensor_context(instance=self.instance, cursor=self.cursors[name], sensor_name=name)
        result = self.by_name[name].evaluate_tick(context)
        if keep_cursor:
            self.cursors[name] = result.cursor
        return list(result.run_requests or []), result.skip_message

    def tick_all(self) -> list[tuple[str, RunRequest]]:
        out = []
        for name in self.by_name:
            requests, _ = self.tick(name)
            out += [(name, r) for r in requests]
        return out
