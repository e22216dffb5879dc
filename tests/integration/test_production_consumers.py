"""Production topology, consumer side (issue 14): the retry coordinator never overlaps ANY run in
progress, decides each failed run once, and treats a run whose heartbeat expired as dead on any host.
Real dbt on DuckDB, a real SQLite instance, the producer in its own process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dagster import AssetsDefinition, DagsterRunStatus

from dagster_watcher import build_watcher_sensors, contract

from ..support import Sensors
from .test_consumers import ALL_ASSETS, execute_request, instance_at, materialized_by, start_producer, wait_for


def test_a_run_whose_heartbeat_expired_on_another_host_is_failed_and_retried_once(
    shop_assets: AssetsDefinition, tmp_path: Path, duckdb_path: Path
) -> None:
    instance = instance_at(tmp_path)
    sensors = Sensors(build_watcher_sensors(shop_assets, heartbeat_timeout=60), instance)
    producer = start_producer(tmp_path, threads=1)
    run_id = wait_for(lambda: (r := instance.get_runs()) and r[0].run_id, what="the producer run")
    wait_for(lambda: len(materialized_by(instance, run_id)) >= 3, what="a few nodes to finish")
    os.killpg(producer.pid, signal.SIGKILL)
    producer.wait(timeout=60)
    finished = materialized_by(instance, run_id)
    # As a pod on another node would leave it: its host is not this one, its heartbeat is old.
    instance.add_run_tags(
        run_id,
        {contract.HOST_TAG: "other-node-7f9c", **contract.heartbeat_tags(time.time() - 600)},
    )
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]

    requested = sensors.tick_all()
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE, "the dead run is not left in progress"
    assert len(requested) == 1
    request = requested[0][1]
    assert set(request.asset_selection or []) == ALL_ASSETS - finished, "every unfinished node, and only those"
    assert contract.HEARTBEAT_TAG not in request.tags and contract.HOST_TAG not in request.tags

    retry = execute_request(request, shop_assets, tmp_path, instance)
    assert retry.result.success
    assert set(retry.materialized()) == ALL_ASSETS - finished, "nothing finished is rebuilt"
    assert sensors.tick_all() == [], "retried once"
