"""The per-producer consumer shape (``build_watcher_sensors(..., per_model=False)``, issue 14 item 2):
ONE sensor does what the per-model sensors and the retry coordinator do together. Real dbt on DuckDB,
a real SQLite instance; both shapes are evaluated through Dagster's sensor API against the SAME
instance after the SAME builds, and must request the same runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, AssetsDefinition, DagsterInstance, RunRequest

from dagster_watcher import WatcherRetryPolicy, build_watcher_sensors
from dagster_watcher.contract import ATTEMPT_TAG, RETRY_OF_TAG, UPSTREAM_TAG, retry_sensor_name, unique_ids_by_asset_key

from ..support import Sensors, run_watcher
from .test_consumers import execute_request, notify_job

#: The flaky model fails once, and dbt skips these below it; the retry builds all three.
RETRIED = {AssetKey("stg_payments"), AssetKey("orders"), AssetKey("daily_revenue")}
#: Models with a downstream job: one the failed build materialized, one only the retry does.
DOWNSTREAM = {"customers": notify_job, "orders": notify_job}


@dataclass
class Shapes:
    instance: DagsterInstance
    failed_run_id: str
    per_model: Sensors
    per_producer: Sensors
    flaky_vars: dict[str, object]


def described(requests: list[RunRequest]) -> list[tuple[str, str | None, frozenset[AssetKey], str | None]]:
    """What decides what a request launches: job, run key (Dagster launches a key once), selection."""
    return sorted(
        ((r.job_name or "", r.run_key, frozenset(r.asset_selection or []), r.tags.get(UPSTREAM_TAG)) for r in requests),
        key=repr,
    )


@pytest.fixture(scope="module")
def shapes(shop_assets: AssetsDefinition, tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    """One build that fails on the flaky model (on the session's example project), and both sensor
    shapes over its instance."""
    tmp_path = tmp_path_factory.mktemp("per_producer")
    flaky_dir = tmp_path / "flaky"
    flaky_dir.mkdir()
    flaky_vars: dict[str, object] = {"flaky_model": "stg_payments", "flaky_dir": str(flaky_dir), "flaky_failures": 1}
    (tmp_path / "dagster_home").mkdir()
    instance = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    failed = run_watcher(shop_assets, tmp_path, dbt_vars=flaky_vars, instance=instance)
    assert not failed.result.success
    policy = WatcherRetryPolicy(max_retries=2)
    return Shapes(
        instance,
        failed.run_id,
        Sensors(build_watcher_sensors(shop_assets, downstream=DOWNSTREAM, retry_policy=policy), instance),
        Sensors(
            build_watcher_sensors(shop_assets, downstream=DOWNSTREAM, retry_policy=policy, per_model=False), instance
        ),
        flaky_vars,
    )


def test_one_sensor_for_the_whole_producer(shop_assets: AssetsDefinition, shapes: Shapes) -> None:
    [sensor] = shapes.per_producer.by_name.values()
    assert sensor.name == retry_sensor_name(shop_assets), "the producer's coordinator is the one sensor"
    assert {j.name for j in sensor.jobs} == {f"{shop_assets.node_def.name}__watcher_retry", "notify_job"}
    watched = [
        u for u in unique_ids_by_asset_key(shop_assets).values() if u.split(".")[0] in ("model", "seed", "snapshot")
    ]
    assert len(shapes.per_model.by_name) == 1 + len(watched), "the coordinator and one sensor per model, seed, snapshot"
    [alone] = build_watcher_sensors(shop_assets, downstream=DOWNSTREAM, retry_policy=None, per_model=False)
    assert alone.name == sensor.name, "without a retry policy the one sensor still launches downstream jobs"


def requests_of(sensors: Sensors) -> list[RunRequest]:
    """One round of every sensor of a shape (with the cursors of the previous rounds)."""
    return [r for _, r in sensors.tick_all()]


def test_same_launches_and_retry_as_per_model_sensors(
    shop_assets: AssetsDefinition, shapes: Shapes, tmp_path: Path
) -> None:
    instance = shapes.instance
    retry_job = f"{shop_assets.node_def.name}__watcher_retry"
    # After the failed build: the retry batch once, and customers' downstream job once.
    launched = requests_of(shapes.per_producer)
    assert described(launched) == described(requests_of(shapes.per_model))
    [retry] = [r for r in launched if r.job_name == retry_job]
    assert set(retry.asset_selection or []) == RETRIED
    assert retry.tags[RETRY_OF_TAG] == shapes.failed_run_id and retry.tags[ATTEMPT_TAG] == "1"
    downstream = [r.tags[UPSTREAM_TAG] for r in launched if r.job_name == "notify_job"]
    assert downstream == ["customers"], "orders was skipped by the failed build: nothing to launch for it"
    assert requests_of(shapes.per_producer) == [], "the next tick launches nothing twice"
    assert requests_of(shapes.per_model) == []

    # The retry run materializes the three: orders' downstream job once, no second retry.
    rerun = execute_request(retry, shop_assets, tmp_path, instance, dbt_vars=shapes.flaky_vars)
    assert rerun.result.success
    after_retry = requests_of(shapes.per_producer)
    assert described(after_retry) == described(requests_of(shapes.per_model))
    assert [(r.job_name, r.tags[UPSTREAM_TAG]) for r in after_retry] == [("notify_job", "orders")]
    assert requests_of(shapes.per_producer) == []

    # Each new materialization of customers launches its job once more, and once only.
    for _ in range(2):
        instance.report_runless_asset_event(AssetMaterialization(AssetKey("customers")))
        again = requests_of(shapes.per_producer)
        assert described(again) == described(requests_of(shapes.per_model))
        newest = instance.fetch_materializations(AssetKey("customers"), limit=1).records[0].storage_id
        assert [r.run_key for r in again] == [f"watch_customers:{newest}:notify_job"]
        assert requests_of(shapes.per_producer) == []
