"""Consumers and retries (issue 3): per-model sensors evaluated through Dagster's sensor API against a
real SQLite instance, producer runs with real dbt on DuckDB (in a separate process where the test needs
the producer to be running, or to die)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    build_schedule_context,
    define_asset_job,
    job,
    op,
)

from dagster_watcher import (
    DbtWatcherResource,
    WatcherRetryPolicy,
    build_watcher_schedule,
    build_watcher_sensors,
    dbt_watcher_assets,
)
from dagster_watcher.consumers._reads import SNAPSHOT_REFRESH_SECONDS
from dagster_watcher.contract import ATTEMPT_TAG, RETRY_OF_TAG, retry_sensor_name

from ..support import EXAMPLE, REPO, Sensors, run_watcher
from ..support.waiting import wait_for

ALL_ASSETS = {
    AssetKey(k)
    for k in [
        "raw_customers",
        "raw_orders",
        "raw_payments",
        "stg_customers",
        "stg_orders",
        "stg_payments",
        "customers",
        "orders",
        "daily_revenue",
        "order_updates",
        "customers_snapshot",
    ]
}


@op
def notify() -> None:
    """Stands for any consumer job (a sync, an export, a notebook refresh)."""


@job(name="notify_job")
def notify_job() -> None:
    notify()


def start_producer(tmp_path: Path, dbt_vars: dict[str, Any] | None = None, threads: int = 1) -> subprocess.Popen[bytes]:
    """The example's watcher job in its own process group, as a deployment would run it."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    # The session's DuckDB path (fresh file): retries run in this process then build on its tables.
    database = Path(os.environ["DAGSTER_WATCHER_DUCKDB_PATH"])
    database.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_WATCHER_TARGET_PATH": str(tmp_path / "producer_target"),
        "DAGSTER_WATCHER_DBT_VARS": json.dumps(dbt_vars or {}),
        "DAGSTER_WATCHER_THREADS": str(threads),
    }
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "job",
            "execute",
            "-f",
            str(EXAMPLE / "definitions.py"),
            "-j",
            "shop_watcher_job",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def instance_at(tmp_path: Path) -> DagsterInstance:
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    return DagsterInstance.from_config(str(tmp_path / "dagster_home"))


def only_run(instance: DagsterInstance) -> str:
    runs = instance.get_runs()
    return runs[0].run_id if len(runs) == 1 else ""


def materialized_by(instance: DagsterInstance, run_id: str) -> set[AssetKey]:
    from dagster_watcher.retry import read_run_outcomes

    return read_run_outcomes(instance, run_id).materialized


def execute_request(
    request: RunRequest, assets: AssetsDefinition, tmp_path: Path, instance: DagsterInstance, **kwargs: Any
):  # type: ignore[no-untyped-def]
    """Run what a consumer requested (the daemon would launch it; here it runs in this process)."""
    return run_watcher(
        assets,
        tmp_path,
        selection=list(request.asset_selection or []),
        instance=instance,
        tags=dict(request.tags),
        fresh_database=False,  # a retry builds on what the failed run left
        **kwargs,
    )


def test_downstream_job_is_requested_while_the_producer_still_runs(
    shop_assets: AssetsDefinition, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = instance_at(tmp_path)
    sensors = Sensors(build_watcher_sensors(shop_assets, downstream={"stg_customers": notify_job}), instance)
    producer = start_producer(tmp_path, threads=1)
    try:
        run_id = wait_for(lambda: only_run(instance), what="the producer run")
        # The example's daily schedule does not start a second build while this one runs.
        job_def = define_asset_job("shop_watcher_job", selection=[shop_assets])
        schedule = build_watcher_schedule(shop_assets, job_def, "0 6 * * *")
        tick = schedule.evaluate_tick(build_schedule_context(instance=instance))
        assert not tick.run_requests and "still in progress" in (tick.skip_message or "")

        def downstream_requested() -> list[RunRequest]:
            requests, _ = sensors.tick("watch_stg_customers")
            return [r for r in requests if r.job_name == "notify_job"]

        first_cursor = sensors.cursors["watch_stg_customers"]
        requests = wait_for(downstream_requested, what="a downstream request for stg_customers")
        status = instance.get_run_by_id(run_id).status  # type: ignore[union-attr]
        assert status == DagsterRunStatus.STARTED, "requested while the producer run was still in progress"
        assert len(requests) == 1

        # The same tick evaluated again (same cursor) asks for the same run_key: the daemon launches once.
        sensors.cursors["watch_stg_customers"] = first_cursor
        again = [
            r for r in wait_for(lambda: downstream_requested(), what="re-evaluation") if r.job_name == "notify_job"
        ]
        assert [r.run_key for r in again] == [r.run_key for r in requests]
        # With the advanced cursor, nothing new is requested for the same materialization.
        assert downstream_requested() == []
    finally:
        producer.wait(timeout=300)
    assert producer.returncode == 0
    assert schedule.evaluate_tick(build_schedule_context(instance=instance)).run_requests, "free again once it ended"

    # Once the build is over, a round of every consumer shares ONE batched read of the asset records
    # and no sensor reads its own asset's rows; a second round (nothing new) reads no records at all.
    reads = count_reads(instance, monkeypatch)
    time.sleep(SNAPSHOT_REFRESH_SECONDS)  # the snapshot taken during the build may refresh
    assert sensors.tick_all() == []
    assert reads == {"get_asset_records": 1}, reads
    messages = [sensors.tick(name)[1] or "" for name in sorted(sensors.by_name)]
    coordinator = messages.pop(sorted(sensors.by_name).index(retry_sensor_name(shop_assets)))
    assert all("nothing to do" in m for m in messages), messages
    assert coordinator == "no failed run to decide.", coordinator
    assert reads == {"get_asset_records": 1}, reads


def count_reads(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the instance reads consumer sensors make (the real reads still happen)."""
    counts: dict[str, int] = {}
    for name in (
        "get_asset_records",
        "get_latest_planned_materialization_info",
        "fetch_materializations",
        "fetch_observations",
        "get_run_record_by_id",
        "get_records_for_run",
    ):
        real = getattr(instance, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            counts[_name] = counts.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(instance, name, counted)
    return counts


def test_flaky_model_costs_one_targeted_rerun_started_only_after_the_producer(
    shop_assets: AssetsDefinition, tmp_path: Path, duckdb_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky_dir = tmp_path / "flaky"
    flaky_dir.mkdir()
    dbt_vars = {"flaky_model": "stg_payments", "flaky_dir": str(flaky_dir), "flaky_failures": 1}
    instance = instance_at(tmp_path)
    sensors = Sensors(build_watcher_sensors(shop_assets, retry_policy=WatcherRetryPolicy(max_retries=2)), instance)
    producer = start_producer(tmp_path, dbt_vars, threads=1)
    try:
        run_id = wait_for(lambda: only_run(instance), what="the producer run")

        def failure_seen_while_running() -> str | None:
            requests, reason = sensors.tick("watch_stg_payments", keep_cursor=False)
            assert requests == [], "no retry may start while the producer run is in progress"
            return reason if reason and "still in progress" in reason and "failed" in reason else None

        reason = wait_for(failure_seen_while_running, what="stg_payments failing inside the running producer")
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED, reason  # type: ignore[union-attr]
    finally:
        producer.wait(timeout=300)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]

    reads = count_reads(instance, monkeypatch)
    time.sleep(SNAPSHOT_REFRESH_SECONDS)
    requested = sensors.tick_all()
    assert len(requested) == 1, "several failed/skipped nodes, one batched re-materialization run"
    # Every sensor decided from one read of the asset records, the run record and the run's outcome.
    assert reads == {"get_asset_records": 1, "get_run_record_by_id": 1, "get_records_for_run": 1}, reads
    requester, request = requested[0]
    assert requester == retry_sensor_name(shop_assets), "the producer's coordinator requests the batch"
    assert set(request.asset_selection or []) == {
        AssetKey("stg_payments"),
        AssetKey("orders"),
        AssetKey("daily_revenue"),
    }
    assert request.tags[RETRY_OF_TAG] == run_id and request.tags[ATTEMPT_TAG] == "1"
    assert sensors.tick_all() == [], "a tick evaluated again launches nothing twice"

    retry = execute_request(request, shop_assets, tmp_path, instance, dbt_vars=dbt_vars)
    assert retry.result.success
    assert len(list(flaky_dir.glob("attempt_*.csv"))) == 2, "exactly one extra dbt execution of the flaky model"
    executed = {u for u in retry.run_results() if not u.startswith(("test.", "unit_test."))}
    assert executed == {"model.shop.stg_payments", "model.shop.orders", "model.shop.daily_revenue"}, (
        "the retry ran the failed model and its skipped descendants, no other node"
    )
    for key in ALL_ASSETS:
        latest = instance.get_latest_materialization_event(key)
        assert latest is not None, f"{key} ends materialized"
    assert sensors.tick_all() == []


def test_sigkill_of_the_producer_mid_build(shop_assets: AssetsDefinition, tmp_path: Path, duckdb_path: Path) -> None:
    instance = instance_at(tmp_path)
    sensors = Sensors(build_watcher_sensors(shop_assets), instance)
    producer = start_producer(tmp_path, threads=1)
    run_id = wait_for(lambda: only_run(instance), what="the producer run")
    wait_for(lambda: len(materialized_by(instance, run_id)) >= 3, what="a few nodes to finish")
    os.killpg(producer.pid, signal.SIGKILL)
    producer.wait(timeout=60)
    pid = int(instance.get_run_by_id(run_id).tags["dagster_watcher/pid"])  # type: ignore[union-attr]
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the producer process to be gone")

    finished = materialized_by(instance, run_id)
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    assert finished and finished != ALL_ASSETS

    requested = sensors.tick_all()
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE, (  # type: ignore[union-attr]
        "the consumer saw the producer's process is gone and ended the run: it is not green"
    )
    assert materialized_by(instance, run_id) == finished, (
        "nothing unfinished is shown as materialized by the killed run"
    )
    assert len(requested) == 1
    _, request = requested[0]
    assert set(request.asset_selection or []) == ALL_ASSETS - finished, "every unfinished node, and only those"

    retry = execute_request(request, shop_assets, tmp_path, instance)
    assert retry.result.success
    assert set(retry.materialized()) == ALL_ASSETS - finished, "no node is executed twice"
    assert sensors.tick_all() == []


def test_retries_stop_at_the_limit_and_the_error_stays_visible(shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    instance = instance_at(tmp_path)
    failing = {"fail_model": "stg_payments"}
    sensors = Sensors(build_watcher_sensors(shop_assets, retry_policy=WatcherRetryPolicy(max_retries=1)), instance)
    first = run_watcher(shop_assets, tmp_path, dbt_vars=failing, instance=instance)
    assert not first.result.success

    requested = sensors.tick_all()
    assert len(requested) == 1
    retry = execute_request(requested[0][1], shop_assets, tmp_path, instance, dbt_vars=failing)
    assert not retry.result.success
    assert retry.run_results()["model.shop.stg_payments"]["status"] == "error"

    assert sensors.tick_all() == [], "the policy allows one retry"
    _, reason = sensors.tick("watch_stg_payments", keep_cursor=False)
    sensors.cursors["watch_stg_payments"] = None
    _, reason = sensors.tick("watch_stg_payments")
    assert reason and "limit 1" in reason and "stg_payments failed on purpose" in reason, reason
    latest = instance.fetch_observations(AssetKey("stg_payments"), limit=1).records[0]
    assert "failed on purpose" in latest.asset_observation.metadata["dagster_watcher/error"].value  # type: ignore[union-attr]
    assert instance.get_latest_materialization_event(AssetKey("stg_payments")) is None


def test_compile_errors_are_not_retried(shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    instance = instance_at(tmp_path)
    sensors = Sensors(build_watcher_sensors(shop_assets), instance)
    run_watcher(shop_assets, tmp_path, dbt_vars={"flaky_model": "stg_orders"}, instance=instance)
    assert sensors.tick_all() == []
    _, reason = sensors.tick("watch_stg_orders", keep_cursor=False)
    sensors.cursors["watch_stg_orders"] = None
    _, reason = sensors.tick("watch_stg_orders")
    assert reason and "not retryable" in reason and "Compilation Error" in reason


def test_in_step_retry_rebuilds_only_what_did_not_succeed(shop_project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    @dbt_watcher_assets(
        manifest=shop_project.manifest_path, project=shop_project, retry_policy=WatcherRetryPolicy(max_retries=1)
    )
    def shop(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context)

    flaky_dir = tmp_path / "flaky"
    flaky_dir.mkdir()
    run = run_watcher(shop, tmp_path, dbt_vars={"flaky_model": "stg_payments", "flaky_dir": str(flaky_dir)})
    assert run.result.success, "attempt 2 built what attempt 1 could not"
    assert len(list(flaky_dir.glob("attempt_*.csv"))) == 2
    materialized = run.materialized()
    assert sorted(materialized) == sorted(ALL_ASSETS), "each asset materialized exactly once in the run"
    second_attempt = {u for u in run.run_results() if not u.startswith(("test.", "unit_test."))}
    assert second_attempt == {"model.shop.stg_payments", "model.shop.orders", "model.shop.daily_revenue"}


def test_downstream_of_an_ephemeral_model_is_a_clear_error(shop_assets: AssetsDefinition) -> None:
    with pytest.raises(ValueError, match="ephemeral"):
        build_watcher_sensors(shop_assets, downstream={"int_order_payments": notify_job})


def test_a_new_sensor_does_not_replay_the_materialization_history(
    shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    """Deploying a consumer on an instance with history acts on the newest materialization only."""
    instance = instance_at(tmp_path)
    for _ in range(3):
        instance.report_runless_asset_event(AssetMaterialization(AssetKey("customers")))
    sensors = Sensors(build_watcher_sensors(shop_assets, downstream={"customers": notify_job}), instance)
    requests, _ = sensors.tick("watch_customers")
    assert len(requests) == 1
    newest = instance.fetch_materializations(AssetKey("customers"), limit=1).records[0].storage_id
    assert requests[0].run_key == f"watch_customers:{newest}:notify_job"
    assert sensors.tick("watch_customers")[0] == []
