"""Partitions as dbt sees them (pure): the vars and event-time flags of a step's partitions, and which
partitions a microbatch model's failed batches belong to."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import AssetKey, DailyPartitionsDefinition, StaticPartitionsDefinition

from dagster_watcher import contract
from dagster_watcher.dagster_mapping import NodeTarget, to_dagster_events
from dagster_watcher.errors import WatcherConfigError
from dagster_watcher.partitions import (
    DEFAULT_PARTITION_VARS,
    StepPartitions,
    checked_partition_vars,
    contiguous_ranges,
    event_time_args,
    keys_in_range,
    partitions_of_batches,
    render_partition_vars,
)
from dagster_watcher.status import NodeResult, NodeStatus

DAILY = DailyPartitionsDefinition(start_date="2024-02-01", end_date="2024-03-01")


def daily(*keys: str) -> StepPartitions:
    windows = tuple((w.start, w.end) for w in (DAILY.time_window_for_partition_key(k) for k in keys))
    return StepPartitions(keys=keys, window=(windows[0][0], windows[-1][1]), key_windows=windows)


def test_a_time_window_range_renders_its_start_and_end_and_no_key() -> None:
    assert render_partition_vars(daily("2024-02-01", "2024-02-02", "2024-02-03"), DEFAULT_PARTITION_VARS) == {
        "min_date": "2024-02-01T00:00:00+00:00",
        "max_date": "2024-02-04T00:00:00+00:00",
    }


def test_one_time_partition_renders_its_key_too_and_the_format_is_configurable() -> None:
    assert render_partition_vars(daily("2024-02-02"), DEFAULT_PARTITION_VARS, "%Y-%m-%d") == {
        "min_date": "2024-02-02",
        "max_date": "2024-02-03",
        "partition_key": "2024-02-02",
    }


def test_static_partitions_render_the_key_or_the_first_and_last_key_of_the_range() -> None:
    names = {"start": "first_region", "end": "last_region", "key": "region"}
    assert render_partition_vars(StepPartitions(keys=("eu",)), names) == {
        "first_region": "eu",
        "last_region": "eu",
        "region": "eu",
    }
    assert render_partition_vars(StepPartitions(keys=("eu", "us")), {"key": "region"}) == {}


def test_partition_var_roles_are_checked_and_empty_names_leave_a_var_out() -> None:
    assert checked_partition_vars({"start": "min_date", "end": "", "key": None}, "here") == {"start": "min_date"}
    with pytest.raises(WatcherConfigError, match=r"partition_vars has \['begin'\]; its keys are"):
        checked_partition_vars({"begin": "min_date"}, "here")


def test_event_time_flags_are_the_window_in_utc() -> None:
    assert event_time_args(daily("2024-02-01", "2024-02-02")) == [
        "--event-time-start",
        "2024-02-01T00:00:00",
        "--event-time-end",
        "2024-02-03T00:00:00",
    ]
    assert event_time_args(StepPartitions(keys=("eu",))) == []


def test_failed_batches_are_placed_in_the_partitions_they_overlap() -> None:
    step = daily("2024-02-01", "2024-02-02", "2024-02-03")
    assert partitions_of_batches(step, ["2024-02-02T00:00:00+00:00"], "day") == {"2024-02-02"}
    assert partitions_of_batches(step, ["2024-02-02T05:00:00+00:00"], "hour") == {"2024-02-02"}
    assert partitions_of_batches(step, ["2024-02-01T00:00:00+00:00"], "month") == set(step.keys)
    assert partitions_of_batches(StepPartitions(keys=("eu",)), ["2024-02-01T00:00:00+00:00"], "day") is None


def test_contiguous_ranges_and_keys_in_range() -> None:
    assert contiguous_ranges(["a", "b", "c", "d"], {"a", "b", "d"}) == [("a", "b"), ("d", "d")]
    assert keys_in_range(DAILY, "2024-02-01", "2024-02-03") == ["2024-02-01", "2024-02-02", "2024-02-03"]
    assert keys_in_range(StaticPartitionsDefinition(["eu", "us", "apac"]), "eu", "apac") == ["eu", "us", "apac"]


def _partial(failed_batches: tuple[str, ...]) -> NodeResult:
    return NodeResult(
        unique_id="model.shop.orders_daily",
        resource_type="model",
        status=NodeStatus.PARTIAL_SUCCESS,
        dbt_status="partial success",
        message="PARTIAL SUCCESS (2/3): failed batches 2024-02-02: boom",
        started_at=datetime(2024, 2, 4, tzinfo=UTC),
        failed_batches=failed_batches,
    )


TARGET = NodeTarget(unique_id="model.shop.orders_daily", asset_key=AssetKey("orders_daily"), output_name="out")


def test_a_partial_microbatch_range_materializes_the_built_partitions_and_observes_the_failed_one() -> None:
    events = to_dagster_events(
        _partial(("2024-02-02T00:00:00+00:00",)), TARGET, daily("2024-02-01", "2024-02-02", "2024-02-03"), "day"
    )
    kinds = {e.partition: type(e).__name__ for e in events}  # type: ignore[union-attr]
    assert kinds == {
        "2024-02-01": "AssetMaterialization",
        "2024-02-02": "AssetObservation",
        "2024-02-03": "AssetMaterialization",
    }
    failed = next(e for e in events if e.partition == "2024-02-02")  # type: ignore[union-attr]
    outcome = contract.recorded_outcome(failed.metadata)
    assert outcome is not None and outcome.status is NodeStatus.ERROR and "boom" in (outcome.error or "")
    built = next(e for e in events if e.partition == "2024-02-01")  # type: ignore[union-attr]
    assert contract.recorded_outcome(built.metadata).status is NodeStatus.SUCCESS  # type: ignore[union-attr]


def test_a_failure_in_a_partitioned_step_is_one_observation_per_partition() -> None:
    error = NodeResult("model.shop.orders_daily", "model", NodeStatus.ERROR, "error", message="boom")
    events = to_dagster_events(error, TARGET, daily("2024-02-01", "2024-02-02"))
    assert [e.partition for e in events] == ["2024-02-01", "2024-02-02"]  # type: ignore[union-attr]
    (unpartitioned,) = to_dagster_events(error, TARGET)
    assert unpartitioned.partition is None  # type: ignore[union-attr]
