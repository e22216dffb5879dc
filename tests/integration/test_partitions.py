"""Partitions end to end (issue 12, item 4): a single-run backfill of the example's daily-partitioned
microbatch model ``orders_daily`` with real dbt on DuckDB and a real SQLite instance; the producer's
retry coordinator and the per-model sensor evaluated through Dagster's sensor API (no daemon)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    DailyPartitionsDefinition,
    Definitions,
    RunRequest,
    asset,
    build_sensor_context,
    define_asset_job,
    materialize,
)
from dagster._core.execution.execution_result import ExecutionResult
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, WatcherRetryPolicy, build_watcher_sensors, dbt_watcher_assets
from dagster_watcher.contract import (
    ATTEMPT_TAG,
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    PARTITION_TAG,
    RETRY_OF_TAG,
    UPSTREAM_RUN_TAG,
    retry_sensor_name,
)
from dagster_watcher.project import prepare_manifest

from ..support import EXAMPLE, Sensors, run_watcher

#: The example's parse-time switch that enables orders_daily (see example_project/definitions.py).
DAILY_VARS = {"partitioned_models": True}
DAILY = DailyPartitionsDefinition(start_date="2024-02-01", end_date="2024-03-01")
ORDERS_DAILY = AssetKey("orders_daily")
#: The backfill's run tags besides its range: a user label, a run-launcher config and a concurrency key.
USER_TAGS = {
    "team": "shop",
    "dagster-k8s/config": json.dumps({"container_config": {"resources": {"limits": {"cpu": "1"}}}}),
    "dagster/concurrency_key": "warehouse",
}


@pytest.fixture(scope="module")
def daily_assets(tmp_path_factory: pytest.TempPathFactory, duckdb_path: Path) -> AssetsDefinition:
    """The example's second producer, as definitions.py declares it (parsed into a temp dir)."""
    project = DbtProject(project_dir=EXAMPLE, profiles_dir=EXAMPLE, target_path=tmp_path_factory.mktemp("daily"))
    prepare_manifest(project, force=True, dbt_vars=DAILY_VARS)

    @dbt_watcher_assets(
        manifest=project.manifest_path,
        project=project,
        select="orders_daily",
        partitions_def=DAILY,
        backfill_policy=BackfillPolicy.single_run(),
    )
    def shop_orders_daily(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
        yield from dbt_watcher.build(context)

    return shop_orders_daily


@asset(partitions_def=DAILY, deps=[ORDERS_DAILY])
def orders_daily_report() -> None:
    """Stands for a partitioned consumer of orders_daily (an export of that day)."""


report_job = define_asset_job("orders_daily_report_job", selection=[orders_daily_report])


class DefinedSensors(Sensors):
    """Sensors evaluated with their code location's definitions, as the daemon does (a partitioned
    RunRequest is resolved against the repository's asset graph)."""

    def __init__(self, definitions: Definitions, instance: DagsterInstance) -> None:
        super().__init__(list(definitions.sensors or []), instance)
        self.definitions = definitions

    def tick(self, name: str, *, keep_cursor: bool = True) -> tuple[list[RunRequest], str | None]:
        context = build_sensor_context(
            instance=self.instance, cursor=self.cursors[name], sensor_name=name, definitions=self.definitions
        )
        result = self.by_name[name].evaluate_tick(context)
        if keep_cursor:
            self.cursors[name] = result.cursor
        return list(result.run_requests or []), result.skip_message


def daily_resource(tmp_path: Path, dbt_vars: dict[str, Any]) -> DbtWatcherResource:
    return DbtWatcherResource(
        project_dir=str(EXAMPLE),
        dbt_vars={**DAILY_VARS, **dbt_vars},
        target_path=str(tmp_path / "daily_target"),
        progress=False,
    )


def build_daily(
    assets: AssetsDefinition,
    instance: DagsterInstance,
    tmp_path: Path,
    dbt_vars: dict[str, Any],
    tags: dict[str, str],
    partition_key: str | None = None,
) -> ExecutionResult:
    return materialize(
        [assets],
        resources={"dbt_watcher": daily_resource(tmp_path, dbt_vars)},
        instance=instance,
        partition_key=partition_key,
        tags=tags,
        raise_on_error=False,
    )


def materialized_partitions(instance: DagsterInstance, run_id: str) -> set[str]:
    return {
        r.partition_key
        for r in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        if r.asset_key == ORDERS_DAILY and r.partition_key
    }


def table_rows(duckdb_path: Path) -> dict[str, tuple[int, str, str]]:
    with duckdb.connect(str(duckdb_path), read_only=True) as db:
        rows = db.execute(
            "select cast(order_date as varchar), orders, built_for_min_date, built_for_max_date from orders_daily"
        ).fetchall()
    return {day: (orders, low, high) for day, orders, low, high in rows}


def test_backfill_of_three_days_is_one_build_and_only_the_failed_day_is_retried(
    shop_assets: AssetsDefinition, daily_assets: AssetsDefinition, tmp_path: Path, duckdb_path: Path
) -> None:
    (tmp_path / "dagster_home").mkdir()
    instance = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    # orders_daily reads stg_orders, which the shop's own (unpartitioned) producer builds.
    upstream = run_watcher(
        shop_assets, tmp_path / "upstream", selection=[AssetKey("raw_orders"), AssetKey("stg_orders")]
    )
    assert upstream.result.success
    consumers = build_watcher_sensors(
        daily_assets, downstream={"orders_daily": report_job}, retry_policy=WatcherRetryPolicy(max_retries=2)
    )
    definitions = Definitions(
        assets=[daily_assets, orders_daily_report],
        jobs=[report_job],
        sensors=consumers,
        resources={"dbt_watcher": daily_resource(tmp_path, {})},
    )
    sensors = DefinedSensors(definitions, instance)

    # A single-run backfill of 3 days is one run over the range (as Dagster launches it for
    # BackfillPolicy.single_run()), with the middle day failing on purpose.
    backfill_tags = {**USER_TAGS, PARTITION_RANGE_START_TAG: "2024-02-01", PARTITION_RANGE_END_TAG: "2024-02-03"}
    backfill = build_daily(daily_assets, instance, tmp_path, {"fail_partition": "2024-02-02"}, backfill_tags)
    assert not backfill.success
    assert materialized_partitions(instance, backfill.run_id) == {"2024-02-01", "2024-02-03"}
    # ONE dbt build, over the 3 days' window: the rendered vars are in every row it wrote.
    window = ("2024-02-01T00:00:00+00:00", "2024-02-04T00:00:00+00:00")
    assert table_rows(duckdb_path) == {"2024-02-01": (2, *window), "2024-02-03": (2, *window)}
    failures = [
        r.asset_observation
        for r in instance.fetch_observations(ORDERS_DAILY, limit=10).records
        if r.asset_observation is not None and r.asset_observation.partition == "2024-02-02"
    ]
    assert failures and "2024-02-02 failed on purpose" in str(failures[0].metadata["dagster_watcher/error"].value), (
        "the failed day's error is on its partition"
    )

    requested = sensors.tick_all()
    retries = [(name, r) for name, r in requested if r.job_name != report_job.name]
    downstream = [r for _, r in requested if r.job_name == report_job.name]
    assert len(retries) == 1, "exactly one retry run"
    requester, retry = retries[0]
    assert requester == retry_sensor_name(daily_assets)
    assert retry.partition_key == "2024-02-02", "for the failed day only"
    assert PARTITION_RANGE_START_TAG not in retry.tags and PARTITION_RANGE_END_TAG not in retry.tags
    assert set(retry.asset_selection or []) == {ORDERS_DAILY}
    assert {k: retry.tags[k] for k in USER_TAGS} == USER_TAGS, "the backfill's own tags"
    assert retry.tags[RETRY_OF_TAG] == backfill.run_id and retry.tags[ATTEMPT_TAG] == "1"
    # Downstream: one run per materialized day, with that day and the backfill's tags.
    assert sorted(r.partition_key or "" for r in downstream) == ["2024-02-01", "2024-02-03"]
    for request in downstream:
        assert {k: request.tags[k] for k in USER_TAGS} == USER_TAGS
        assert request.tags[UPSTREAM_RUN_TAG] == backfill.run_id
    assert sensors.tick_all() == [], "a tick evaluated again launches nothing twice"

    # The retry (as the daemon would launch it: its partition key and tags), the failure gone.
    rerun = build_daily(daily_assets, instance, tmp_path, {}, dict(retry.tags), partition_key=retry.partition_key)
    assert rerun.success
    run = instance.get_run_by_id(rerun.run_id)
    assert run is not None and run.tags[PARTITION_TAG] == "2024-02-02"
    assert materialized_partitions(instance, rerun.run_id) == {"2024-02-02"}
    rows = table_rows(duckdb_path)
    assert rows["2024-02-02"] == (2, "2024-02-02T00:00:00+00:00", "2024-02-03T00:00:00+00:00")
    assert rows["2024-02-01"] == (2, *window) and rows["2024-02-03"] == (2, *window), "the others not rebuilt"

    after = sensors.tick_all()
    assert [(r.job_name, r.partition_key) for _, r in after] == [(report_job.name, "2024-02-02")], (
        "no other retry; the retried day goes downstream"
    )
