"""Dagster definitions over ``tests/support/bigquery/bq_project`` for the BigQuery producer tests.

Loaded by the tests in their own process and, for the termination and re-attach tests, by a real run
worker (``dagster api execute_run``) in a subprocess. Everything comes from environment variables, so
both processes build the same definitions:

- ``BQ_API_ENDPOINT``, ``BQ_PROJECT``, ``BQ_DATASET``: the server and the parse's dataset (profiles.yml
  reads them); ``DW_BQ_TEST_DATASET``: the dataset runs write to
- ``DW_BQ_TEST_TARGET``: folder for the definitions' parse and the per-run compiles
- ``DW_BQ_TEST_VARS``: dbt vars (JSON); ``DW_BQ_TEST_MAX_JOBS``: max_concurrent_jobs
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetKey, Definitions, define_asset_job, in_process_executor
from dagster_dbt import DbtProject

from dagster_watcher import BigQueryWatcherResource, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

PROJECT_DIR = Path(__file__).resolve().parent / "bq_project"
TARGET = Path(os.environ["DW_BQ_TEST_TARGET"])

bq_project = DbtProject(project_dir=PROJECT_DIR, profiles_dir=PROJECT_DIR, target_path=TARGET / "parse")
prepare_manifest(bq_project)


@dbt_watcher_assets(manifest=bq_project.manifest_path, project=bq_project)
def bq_project_assets(context: AssetExecutionContext, bigquery_watcher: BigQueryWatcherResource) -> Iterator[Any]:
    yield from bigquery_watcher.build(context)


def make_resource(**overrides: Any) -> BigQueryWatcherResource:
    config: dict[str, Any] = {
        "project": os.environ["BQ_PROJECT"],
        "api_endpoint": os.environ["BQ_API_ENDPOINT"],
        "location": "US",
        "poll_interval": 0.2,
        "max_concurrent_jobs": int(os.environ.get("DW_BQ_TEST_MAX_JOBS", "8")),
        "dbt_vars": json.loads(os.environ.get("DW_BQ_TEST_VARS") or "{}"),
        "target_path": os.fspath(TARGET / "compile"),
        # The dataset the compile (profiles.yml) writes to; BQ_DATASET itself stays as parsed, so the
        # definitions' manifest is never re-parsed in the run worker.
        "dbt_env": {"BQ_DATASET": os.environ.get("DW_BQ_TEST_DATASET") or os.environ["BQ_DATASET"]},
        "progress": False,
        **overrides,
    }
    return BigQueryWatcherResource(project_dir=bq_project, **config)


SLOW = [AssetKey(["slow_1"]), AssetKey(["slow_2"]), AssetKey(["slow_3"])]
RETRY_SET = [*SLOW, AssetKey(["flaky"]), AssetKey(["flaky_child"]), AssetKey(["independent"])]

# In-process executor: the step runs in the run worker's own process (the one that gets terminated).
slow_job = define_asset_job("slow_job", selection=SLOW, executor_def=in_process_executor)
retry_job = define_asset_job("retry_job", selection=RETRY_SET, executor_def=in_process_executor)

defs = Definitions(
    assets=[bq_project_assets],
    jobs=[slow_job, retry_job],
    resources={"bigquery_watcher": make_resource()},
)
