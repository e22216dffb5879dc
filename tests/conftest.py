"""Shared fixtures: the real example project, parsed once per session; real Dagster instances on SQLite;
real dbt builds on DuckDB files under pytest's tmp dirs."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterEventType,
    DagsterInstance,
    EventLogEntry,
    materialize,
)
from dagster._core.execution.execution_result import ExecutionResult
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

from . import bigquery_server

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "example_project"


@pytest.fixture(scope="session")
def duckdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DuckDB path for the session's in-process builds (each build starts from a fresh file).

    The path stays the same because a manifest is parsed for one profile environment: the file name is
    the database name in every relation (a changed path makes the producer re-parse, see test below)."""
    path = tmp_path_factory.mktemp("duckdb") / "shop.duckdb"
    os.environ["DAGSTER_WATCHER_DUCKDB_PATH"] = str(path)
    return path


@pytest.fixture(scope="session")
def shop_project(tmp_path_factory: pytest.TempPathFactory, duckdb_path: Path) -> DbtProject:
    """The example project, parsed once into a session temp dir (the repo's own target/ is not touched)."""
    target = tmp_path_factory.mktemp("shop_target")
    project = DbtProject(project_dir=EXAMPLE, profiles_dir=EXAMPLE, target_path=target)
    prepare_manifest(project, force=True)
    return project


@pytest.fixture(scope="session")
def shop_assets(shop_project: DbtProject) -> AssetsDefinition:
    @dbt_watcher_assets(manifest=shop_project.manifest_path, project=shop_project)
    def shop(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
        yield from dbt_watcher.build(context)

    return shop


@pytest.fixture(scope="session")
def shop_manifest(shop_project: DbtProject) -> Mapping[str, Any]:
    return json.loads(Path(shop_project.manifest_path).read_text())


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
        out: dict[AssetKey, Mapping[str, Any]] = {}
        for e in self.events(DagsterEventType.ASSET_OBSERVATION):
            obs = e.dagster_event.event_specific_data.asset_observation  # type: ignore[union-attr]
            assert obs.asset_key not in out, f"two observations for {obs.asset_key}"
            out[obs.asset_key] = {k: v.value for k, v in obs.metadata.items()}
        return out

    def check_evaluations(self) -> dict[AssetCheckKey, Any]:
        out: dict[AssetCheckKey, Any] = {}
        for e in self.events(DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = e.dagster_event.event_specific_data  # type: ignore[union-attr]
            assert ev.asset_check_key not in out, f"two results for {ev.asset_check_key}"
            out[ev.asset_check_key] = ev
        return out

    def run_results(self) -> dict[str, Any]:
        data = json.loads((self.target_path / "run_results.json").read_text())
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
    **resource_config: Any,
) -> WatcherRun:
    """Materialize the watcher assets with real dbt on a fresh DuckDB file and a real SQLite instance.
    ``fresh_database=False`` keeps the previous build's tables (a retry run builds on them)."""
    database = Path(os.environ["DAGSTER_WATCHER_DUCKDB_PATH"])
    if fresh_database:
        for leftover in (database, database.with_name(database.name + ".wal")):
            leftover.unlink(missing_ok=True)
    if instance is None:
        (tmp_path / "dagster_home").mkdir(exist_ok=True)
        instance = DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    target_path = tmp_path / "dbt_target"
    resource = DbtWatcherResource(
        project_dir=EXAMPLE,
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


@pytest.fixture(scope="session")
def full_runs(shop_assets: AssetsDefinition, tmp_path_factory: pytest.TempPathFactory) -> dict[str, WatcherRun]:
    """One successful full build per invocation mode, shared by the tests that only read it."""
    return {
        mode: run_watcher(shop_assets, tmp_path_factory.mktemp(f"full_{mode}"), mode=mode)
        for mode in ("runner", "subprocess")
    }


@pytest.fixture(scope="session")
def failing_runs(shop_assets: AssetsDefinition, tmp_path_factory: pytest.TempPathFactory) -> dict[str, WatcherRun]:
    """One build per mode with the failure switch on stg_payments."""
    return {
        mode: run_watcher(
            shop_assets, tmp_path_factory.mktemp(f"fail_{mode}"), mode=mode, dbt_vars={"fail_model": "stg_payments"}
        )
        for mode in ("runner", "subprocess")
    }


def copy_project(tmp_path: Path) -> Path:
    """A scratch copy of the example project, for tests that must break it."""
    dest = tmp_path / "project"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb", "*.py"))
    return dest


@pytest.fixture(scope="session")
def bq_server() -> Iterator[bigquery_server.BigQueryServer]:
    """One local-bigquery server for every BigQuery test of the session (installed on first use)."""
    with bigquery_server.running_server() as server:
        yield server


@pytest.fixture(scope="session")
def bq_client(bq_server: bigquery_server.BigQueryServer) -> Any:
    """The official google-cloud-bigquery client, pointed at that server."""
    return bq_server.client()
