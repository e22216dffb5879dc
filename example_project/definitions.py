"""Dagster definitions for the example shop project: the watcher assets (one per dbt model, seed and
snapshot, one check per dbt test), a job that builds them all in ONE `dbt build`, and a daily schedule;
and a second, daily-partitioned producer of the microbatch model `orders_daily`, whose backfills are one
`dbt build` per backfill, retried per failed partition.

Load it with `dagster dev -w workspace.yaml` (repo root) or run `./dev demo`.
"""

import json
import os
import sys
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Definitions,
    MaterializeResult,
    MetadataValue,
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
# So the consumer finds local_postgres.py beside this file however Dagster loaded it.
if str(PROJECT_DIR) not in sys.path:
    sys.path.append(str(PROJECT_DIR))

# The DuckDB file the profile writes to (profiles.yml reads this variable). Absolute, so dbt finds the
# same file whatever directory Dagster runs it from.
os.environ.setdefault("DAGSTER_WATCHER_DUCKDB_PATH", str(PROJECT_DIR / "target" / "shop.duckdb"))

# The dbt target (profiles.yml output): DuckDB `dev` by default; `postgres` runs on a PostgreSQL server
# (`./dev demo --target postgres` starts one, see local_postgres.py). Each target has its own parse.
TARGET = os.environ.get("DAGSTER_WATCHER_TARGET") or None
shop_project = DbtProject(
    project_dir=PROJECT_DIR,
    profiles_dir=PROJECT_DIR,
    target=TARGET,
    target_path=Path("target") / TARGET if TARGET else Path("target"),
)
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
    """A consumer of the `customers` model. It starts while the dbt build is still running. On the
    postgres target it reads the `customers` table itself and records how many rows it read, when,
    and the producer run's status at that moment. On DuckDB it reads the model's materialization
    metadata from Dagster instead (a DuckDB file admits one process at a time, and dbt holds it until
    the build ends)."""
    latest = context.instance.get_latest_materialization_event(AssetKey("customers"))
    md = latest.asset_materialization.metadata if latest and latest.asset_materialization else {}
    relation = md["dagster_watcher/relation_name"].value if "dagster_watcher/relation_name" in md else None
    metadata: dict[str, MetadataValue] = {
        "upstream_run": MetadataValue.text(latest.run_id if latest else ""),
        "relation": MetadataValue.text(str(relation)),
    }
    if TARGET == "postgres" and relation:
        from local_postgres import connect

        conn = connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"select count(*), count(distinct customer_id), sum(number_of_orders) from {relation}")
                rows, customers, orders = cur.fetchone()
        finally:
            conn.close()
        read_at = time.time()
        producer = context.instance.get_run_by_id(latest.run_id) if latest else None
        metadata.update(
            rows_read=MetadataValue.int(int(rows)),
            distinct_customers=MetadataValue.int(int(customers)),
            orders_of_customers=MetadataValue.int(int(orders or 0)),
            read_at=MetadataValue.timestamp(read_at),
            # STARTED here means the table was read while the one `dbt build` was still going.
            upstream_run_status_at_read=MetadataValue.text(producer.status.value if producer else ""),
        )
    return MaterializeResult(metadata=metadata)


customer_report_job = define_asset_job("customer_report_job", selection=[customer_report])

# -- the daily-partitioned part ------------------------------------------------------------------
# orders_daily is enabled by the parse-time var partitioned_models (see the model), so it has its own
# parse of the same project; the shop's producer above keeps the project without it.
DAILY_VARS = {"partitioned_models": True}
daily_project = DbtProject(
    project_dir=PROJECT_DIR,
    profiles_dir=PROJECT_DIR,
    target=TARGET,
    target_path=(Path("target") / TARGET if TARGET else Path("target")) / "partitioned",
)
prepare_manifest(daily_project, dbt_vars=DAILY_VARS)
daily_partitions = DailyPartitionsDefinition(start_date="2024-02-01", end_date="2024-03-01")


@dbt_watcher_assets(
    manifest=daily_project.manifest_path,
    project=daily_project,
    select="orders_daily",
    partitions_def=daily_partitions,
    # A backfill of N days is one run, one `dbt build` over the N days' window.
    backfill_policy=BackfillPolicy.single_run(),
)
def shop_orders_daily(context: AssetExecutionContext, dbt_watcher_daily: DbtWatcherResource):
    """orders_daily, one partition per day. The build gets the partition window as the dbt vars
    min_date/max_date and as dbt's --event-time-start/--event-time-end (no code here)."""
    yield from dbt_watcher_daily.build(context)


orders_daily_job = define_asset_job("orders_daily_job", selection=[shop_orders_daily])
daily_sensors = build_watcher_sensors(
    shop_orders_daily,
    retry_policy=WatcherRetryPolicy(max_retries=2),
    minimum_interval_seconds=int(os.environ.get("DAGSTER_WATCHER_SENSOR_INTERVAL", "15")),
)

consumer_sensors = build_watcher_sensors(
    shop_dbt_assets,
    downstream={"customers": customer_report_job},
    retry_policy=WatcherRetryPolicy(max_retries=2),
    minimum_interval_seconds=int(os.environ.get("DAGSTER_WATCHER_SENSOR_INTERVAL", "15")),
)

defs = Definitions(
    assets=[shop_dbt_assets, customer_report, shop_orders_daily],
    jobs=[shop_watcher_job, customer_report_job, orders_daily_job],
    sensors=[*consumer_sensors, *daily_sensors],
    # Skips a tick while an earlier build or a consumer's retry of these models is still running.
    schedules=[build_watcher_schedule(shop_dbt_assets, shop_watcher_job, "0 6 * * *", name="shop_daily")],
    resources={
        "dbt_watcher_daily": DbtWatcherResource(
            project_dir=daily_project,
            target=TARGET,
            invocation_mode=os.environ.get("DAGSTER_WATCHER_INVOCATION_MODE", "auto"),  # type: ignore[arg-type]
            # e.g. DAGSTER_WATCHER_DAILY_VARS='{"fail_partition": "2024-02-02"}' to see one day fail.
            dbt_vars={**DAILY_VARS, **json.loads(os.environ.get("DAGSTER_WATCHER_DAILY_VARS") or "{}")},
            # Its own compiled SQL and run_results.json, beside the shop job's.
            target_path=os.environ.get("DAGSTER_WATCHER_DAILY_TARGET_PATH")
            or str(PROJECT_DIR / "target" / "dagster_watcher_daily"),
        ),
        "dbt_watcher": DbtWatcherResource(
            project_dir=shop_project,
            target=TARGET,
            invocation_mode=os.environ.get("DAGSTER_WATCHER_INVOCATION_MODE", "auto"),  # type: ignore[arg-type]
            # e.g. DAGSTER_WATCHER_DBT_VARS='{"fail_model": "stg_orders"}' to see failure handling.
            dbt_vars=json.loads(os.environ.get("DAGSTER_WATCHER_DBT_VARS") or "{}"),
            target_path=os.environ.get("DAGSTER_WATCHER_TARGET_PATH"),
            threads=int(os.environ["DAGSTER_WATCHER_THREADS"]) if os.environ.get("DAGSTER_WATCHER_THREADS") else None,
        ),
    },
)
