"""Dagster definitions for the example shop project: the watcher assets (one per dbt model, seed and
snapshot, one check per dbt test), a job that builds them all in ONE `dbt build`, and a daily schedule.

Load it with `dagster dev -w workspace.yaml` (repo root) or run `./dev demo`.
"""

import json
import os
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    Definitions,
    ScheduleDefinition,
    define_asset_job,
)
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

PROJECT_DIR = Path(__file__).resolve().parent

# The DuckDB file the profile writes to (profiles.yml reads this variable). Absolute, so dbt finds the
# same file whatever directory Dagster runs it from.
os.environ.setdefault("DAGSTER_WATCHER_DUCKDB_PATH", str(PROJECT_DIR / "target" / "shop.duckdb"))

shop_project = DbtProject(project_dir=PROJECT_DIR, profiles_dir=PROJECT_DIR)
prepare_manifest(shop_project)


@dbt_watcher_assets(manifest=shop_project.manifest_path, project=shop_project)
def shop_dbt_assets(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
    """The whole shop project in one `dbt build`; each node's outcome is recorded as it finishes."""
    yield from dbt_watcher.build(context)


shop_watcher_job = define_asset_job(
    "shop_watcher_job",
    selection=AssetSelection.assets(shop_dbt_assets),
    description="Build every dbt node of the shop project in one `dbt build`.",
)

defs = Definitions(
    assets=[shop_dbt_assets],
    jobs=[shop_watcher_job],
    schedules=[ScheduleDefinition(job=shop_watcher_job, cron_schedule="0 6 * * *", name="shop_daily")],
    resources={
        "dbt_watcher": DbtWatcherResource(
            project_dir=shop_project,
            invocation_mode=os.environ.get("DAGSTER_WATCHER_INVOCATION_MODE", "auto"),  # type: ignore[arg-type]
            # e.g. DAGSTER_WATCHER_DBT_VARS='{"fail_model": "stg_orders"}' to see failure handling.
            dbt_vars=json.loads(os.environ.get("DAGSTER_WATCHER_DBT_VARS") or "{}"),
        )
    },
)
