"""The fault matrix (issue 14 item 7): each row a test with real dbt on DuckDB and a real SQLite
instance, asserting zero false greens, zero duplicate concurrent executions of a node, nothing lost.
Sensors are evaluated through Dagster's sensor API (``build_sensor_context``), as the daemon would.

Rows covered elsewhere (not repeated here):

* model fails then succeeds: ``test_consumers.test_flaky_model_costs_one_targeted_rerun_started_only_after_the_producer``
* retries exhausted: ``test_consumers.test_retries_stop_at_the_limit_and_the_error_stays_visible``
* compile error (not retryable): ``test_consumers.test_compile_errors_are_not_retried``
* producer SIGKILLed mid-build: ``test_consumers.test_sigkill_of_the_producer_mid_build`` and
  ``test_production_producer.test_sigkill_of_the_step_process_leaves_no_dbt_building``
* run terminated mid-build: ``test_production_producer.test_terminated_run_records_every_unreported_node_as_lost_run_terminated``
* producer SIGKILLed early / mid / late under the real daemon, dbt executions counted per node across
  the killed run and its retry: ``test_daemon_faults.test_sigkill_of_the_producer_under_the_daemon_loses_nothing_and_builds_nothing_twice``
* producer killed on another host: ``test_production_consumers``
* daemon stopped (SIGTERM / SIGKILL) and started again mid-retry:
  ``test_daemon_faults.test_daemon_stopped_and_started_again_mid_retry_launches_no_second_retry``
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, DagsterRunStatus
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, build_watcher_sensors, contract, dbt_watcher_assets
from dagster_watcher.contract import RETRY_OF_TAG, retry_sensor_name

from ..support import Sensors, run_watcher
from . import test_production_producer as producer_tests
from .test_consumers import ALL_ASSETS, execute_request, instance_at
from .test_production_producer import SLOW_SECONDS, SlowProject

# The slow project and its step processes, shared with the producer tests (pytest finds fixtures by name).
slow_project = producer_tests.slow_project
start_step = producer_tests.start_step

FAILED_AND_DESCENDANTS = {AssetKey("stg_payments"), AssetKey("orders"), AssetKey("daily_revenue")}


def test_upstream_failure_skips_descendants_never_green_then_one_retry_survives_a_cursor_reset(
    shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    instance = instance_at(tmp_path)
    sensors = Sensors(build_watcher_sensors(shop_assets), instance)
    failed = run_watcher(shop_assets, tmp_path, dbt_vars={"fail_model": "stg_payments"}, instance=instance)
    assert not failed.result.success

    # Never green: the failed model and the descendants dbt skipped have no materialization at all,
    # each carries its own outcome, and the skipped ones name the node that failed.
    statuses = {key: meta[contract.STATUS_KEY] for key, meta in failed.observations().items()}
    assert statuses[AssetKey("stg_payments")] == "error"
    assert statuses[AssetKey("orders")] == statuses[AssetKey("daily_revenue")] == "skipped"
    assert set(failed.materialized()) == ALL_ASSETS - FAILED_AND_DESCENDANTS
    for key in FAILED_AND_DESCENDANTS:
        assert instance.get_latest_materialization_event(key) is None, f"{key} shown green"
    assert "stg_payments" in str(failed.observations()[AssetKey("orders")][contract.ERROR_KEY])

    requested = sensors.tick_all()
    assert len(requested) == 1, "one batched retry for the failed node and its skipped descendants"
    requester, request = requested[0]
    assert requester == retry_sensor_name(shop_assets)
    assert set(request.asset_selection or []) == FAILED_AND_DESCENDANTS
    assert request.run_key == contract.retry_run_key(failed.run_id)

    # A cursor reset (a sensor's cursor cleared, or the sensor redeployed under a new cursor) evaluates
    # from nothing: whatever it asks for carries the run key already used, so the daemon launches
    # nothing twice.
    for name in sensors.cursors:
        sensors.cursors[name] = None
    again = sensors.tick_all()
    assert {r.run_key for _, r in again} <= {request.run_key}, again

    retry = execute_request(request, shop_assets, tmp_path, instance)
    assert retry.result.success
    assert retry.result.dagster_run.tags[RETRY_OF_TAG] == failed.run_id
    assert sorted(retry.materialized()) == sorted(FAILED_AND_DESCENDANTS), "the retry built only what was owed"
    assert sensors.tick_all() == []
    for name in sensors.cursors:
        sensors.cursors[name] = None
    assert sensors.tick_all() == [], "after the retry succeeded, a reset cursor finds nothing to retry"


def _slow_assets(slow: SlowProject) -> AssetsDefinition:
    project = DbtProject(project_dir=slow.project, profiles_dir=slow.project, target_path=slow.project / "target")

    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def shop(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context)

    return shop


def test_two_overlapping_runs_of_the_whole_job_never_write_at_once(
    slow_project: SlowProject,
    start_step,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second whole-project run started while the first builds: on DuckDB it fails on the file
    lock, each of its nodes names the process holding it (the first run's dbt), it builds nothing,
    and the coordinator requests no retry while the first run is in progress."""
    first = start_step("runner")
    first.wait_for("slow_model started")
    instance = first.instance()
    (first_run,) = instance.get_runs()
    holder_pid = first_run.tags[contract.DBT_PID_TAG]

    second_log = tmp_path / "second.log"
    monkeypatch.setenv("DAGSTER_WATCHER_DUCKDB_PATH", str(slow_project.database))
    monkeypatch.setenv("DW_TEST_EXEC_LOG", str(second_log))
    monkeypatch.setenv("DW_TEST_SLOW_SECONDS", "0")
    assets = _slow_assets(slow_project)
    second = run_watcher(
        assets,
        tmp_path / "second",
        instance=instance,
        fresh_database=False,  # the first run's database, locked by its dbt
        project_dir=slow_project.project,
        profiles_dir=str(slow_project.project),
    )
    assert not second.result.success
    assert second.materialized() == [], "the second run wrote nothing"
    assert not second_log.exists(), "no model of the second run executed"
    outcomes = second.observations()
    assert set(outcomes) == set(assets.keys), "every node of the second run has an outcome"
    for key, meta in outcomes.items():
        assert meta[contract.STATUS_KEY] == "lost", (key, meta)
        error = str(meta[contract.ERROR_KEY])
        assert "lock" in error.lower() and holder_pid in error, (key, error)

    sensors = Sensors(build_watcher_sensors(assets), instance)
    assert instance.get_run_by_id(first_run.run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    assert sensors.tick_all() == [], "no retry while the first run builds the same nodes"
    _, reason = sensors.tick(retry_sensor_name(assets), keep_cursor=False)
    assert reason and first_run.run_id[:8] in reason and "in progress" in reason, reason
    assert first.executions() == ["slow_model started"], "only the first run's dbt executed anything"
    assert first.process.poll() is None and SLOW_SECONDS > 0
