"""Dagster definitions for the example shop project: the watcher assets (one per dbt model, seed and
snapshot, one check per dbt test), a job that builds them all in ONE `dbt build`, and a daily schedule.

Load it with `dagster dev -w workspace.yaml` (repo root) or run `./dev demo`.
"""

import json
import os
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)
from dagster_dbt import DbtProject

from dagster_watcher import (
    DbtWatcherResource,
    WatcherRetryPolicy,
    build_watcher_schedule,
    build_watcher_sensors,
    dbt_watcher_assets,
)
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


@asset(deps=[AssetKey("customers")], group_name="consumers")
def customer_report(context: AssetExecutionContext) -> MaterializeResult:
    """A consumer of the `customers` model. It starts while the dbt build is still running, so it
    reads the model's materialization metadata from Dagster rather than the DuckDB file (a DuckDB
    file admits one process at a time, and dbt holds it until the build ends)."""
    latest = context.instance.get_latest_materialization_event(AssetKey("customers"))
    md = latest.asset_materialization.metadata if latest and latest.asset_materialization else {}
    relation = md["relation_name"].value if "relation_name" in md else None
    return MaterializeResult(metadata={"upstream_run": latest.run_id if latest else "", "relation": str(relation)})


customer_report_job = define_asset_job("customer_report_job", selection=[customer_report])

consumer_sensors = build_watcher_sensors(
    shop_dbt_assets,
    downstream={"customers": customer_report_job},
    retry_policy=WatcherRetryPolicy(max_retries=2),
    minimum_interval_seconds=int(os.environ.get("DAGSTER_WATCHER_SENSOR_INTERVAL", "15")),
)

defs = Definitions(
    assets=[shop_dbt_assets, customer_report],
    jobs=[shop_watcher_job, customer_report_job],
    sensors=consumer_sensors,
    # Skips a tick while an earlier build or a consumer's retry of these models is still running.
    schedules=[build_watcher_schedule(shop_dbt_assets, shop_watcher_job, "0 6 * * *", name="shop_daily")],
    resources={
        "dbt_watcher": DbtWatcherResource(
            project_dir=shop_project,
            invocation_mode=os.environ.get("DAGSTER_WATCHER_INVOCATION_MODE", "auto"),  # type: ignore[arg-type]
            # e.g. DAGSTER_WATCHER_DBT_VARS='{"fail_model": "stg_orders"}' to see failure handling.
            dbt_vars=json.loads(os.environ.get("DAGSTER_WATCHER_DBT_VARS") or "{}"),
            target_path=os.environ.get("DAGSTER_WATCHER_TARGET_PATH"),
            threads=int(os.environ["DAGSTER_WATCHER_THREADS"]) if os.environ.get("DAGSTER_WATCHER_THREADS") else None,
        )
    },
)
