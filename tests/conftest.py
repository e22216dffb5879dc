"""Shared fixtures: the real example project, parsed once per session; real Dagster instances on SQLite;
real dbt builds on DuckDB files under pytest's tmp dirs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
)
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

from .support import EXAMPLE, REPO, WatcherRun, run_watcher
from .support.bigquery import server as bigquery_server

__all__ = ["EXAMPLE", "REPO", "WatcherRun", "run_watcher"]


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


@pytest.fixture(scope="session")
def bq_server() -> Iterator[bigquery_server.BigQueryServer]:
    """One local-bigquery server for every BigQuery test of the session (installed on first use)."""
    with bigquery_server.running_server() as server:
        yield server


@pytest.fixture(scope="session")
def bq_client(bq_server: bigquery_server.BigQueryServer) -> Any:
    """The official google-cloud-bigquery client, pointed at that server."""
    return bq_server.client()
