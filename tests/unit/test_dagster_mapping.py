"""NodeResult -> Dagster event -> what the consumers read back: ``to_dagster_event`` writes, and
``contract.recorded_outcome`` on that event's metadata returns the same status, error and skip cause.

Results are the normaliser's output for the recorded dbt events, plus hand-built ones for outcomes
the recording has none of (lost, failed and errored tests)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from dagster import AssetCheckKey, AssetCheckResult, AssetCheckSeverity, AssetKey, AssetObservation, Output

from dagster_watcher import contract as c
from dagster_watcher.dagster_mapping import NodeTarget, describe_failure, to_dagster_events
from dagster_watcher.status import LOST_MESSAGE, NodeResult, NodeStatus, lost_result, node_name, not_selected_result

from .recorded import FAILED_MODEL, MODES, WARN_TEST

CHECK_ASSET = AssetKey(["shop", "orders"])


def only_event(result, target):  # type: ignore[no-untyped-def]
    """The one event a node outcome with an asset or check home gives (None when it gives none)."""
    events = to_dagster_events(result, target)
    assert len(events) <= 1, events
    return events[0] if events else None


def target_for(result: NodeResult, *, as_check: bool = True) -> NodeTarget:
    name = node_name(result.unique_id)
    if result.resource_type == "test":
        check = AssetCheckKey(CHECK_ASSET, name) if as_check else None
        return NodeTarget(result.unique_id, check_key=check)
    return NodeTarget(result.unique_id, asset_key=AssetKey(["shop", name]), output_name=name)


def plain(metadata: Any) -> dict[str, Any]:
    return c.unwrap_metadata(metadata)


def model_result(status: NodeStatus, **kwargs: Any) -> NodeResult:
    fields: dict[str, Any] = {"dbt_status": status.value, "invocation_id": "inv-1", **kwargs}
    return NodeResult(unique_id="model.shop.orders", resource_type="model", status=status, **fields)


def dbt_test_result(status: NodeStatus, dbt_status: str, **kwargs: Any) -> NodeResult:
    return NodeResult(
        unique_id="test.shop.unique_orders_order_id.fed79b3a6e",
        resource_type="test",
        status=status,
        dbt_status=dbt_status,
        **kwargs,
    )


HAND_BUILT = {
    "model-success": model_result(NodeStatus.SUCCESS, message="OK", execution_time=0.5),
    "model-error": model_result(NodeStatus.ERROR, message="Database Error in model orders: boom"),
    "model-skipped": model_result(NodeStatus.SKIPPED, skipped_because=("model.shop.stg_payments",)),
    "model-lost": lost_result("model.shop.orders", {"nodes": {}}, invocation_id="inv-1"),
    "check-pass": dbt_test_result(NodeStatus.SUCCESS, "pass", failures=0),
    "check-warn": dbt_test_result(
        NodeStatus.WARN, "warn", failures=2, message="Got 2 results, configured to warn if != 0"
    ),
    "check-fail": dbt_test_result(
        NodeStatus.FAIL, "fail", failures=3, message="Got 3 results, configured to fail if != 0"
    ),
    "check-error": dbt_test_result(NodeStatus.ERROR, "error", message="Database Error in test: no such column"),
}


def expected_error(result: NodeResult) -> str | None:
    """What the consumers must read as the error: dbt's text, or the sentence for a skip/loss."""
    if result.status.succeeded:
        return None
    if result.resource_type == "test":
        return result.message if result.status is NodeStatus.ERROR else None
    return describe_failure(result)


def assert_round_trip(result: NodeResult, event: Any) -> None:
    recorded = c.recorded_outcome(event.metadata)
    assert recorded is not None
    assert recorded.status is result.status
    assert recorded.error == expected_error(result)
    assert recorded.skipped_because == result.skipped_because


@pytest.mark.parametrize("case", list(HAND_BUILT), ids=list(HAND_BUILT))
def test_round_trip_hand_built(case: str):
    result = HAND_BUILT[case]
    event = only_event(result, target_for(result))
    assert event is not None
    assert_round_trip(result, event)


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_of_every_recorded_result(mode: str, replayed: dict[str, list[NodeResult]]):
    for result in replayed[mode]:
        event = only_event(result, target_for(result))
        if result.resource_type == "test" and result.status is NodeStatus.SKIPPED:
            assert event is None, result.unique_id
            continue
        assert event is not None, result.unique_id
        assert_round_trip(result, event)


def test_event_kind_per_outcome(by_id: dict[str, dict[str, NodeResult]]):
    results = by_id["runner"]
    kinds = {
        "seed.shop.raw_orders": Output,
        "model.shop.stg_orders": Output,
        "snapshot.shop.customers_snapshot": Output,
        FAILED_MODEL: AssetObservation,
        "model.shop.orders": AssetObservation,  # skipped
        WARN_TEST: AssetCheckResult,
        "test.shop.unique_customers_customer_id.c5af1ff4b1": AssetCheckResult,
    }
    for unique_id, kind in kinds.items():
        assert isinstance(only_event(results[unique_id], target_for(results[unique_id])), kind), unique_id


# -- results that give no event --------------------------------------------------------------------


@pytest.mark.parametrize("status", [NodeStatus.SKIPPED, NodeStatus.LOST])
def test_unexecuted_test_leaves_its_check_without_a_result(status: NodeStatus):
    result = dbt_test_result(status, status.value, skipped_because=("model.shop.orders",))
    assert only_event(result, target_for(result)) is None


@pytest.mark.parametrize("case", list(HAND_BUILT), ids=list(HAND_BUILT))
def test_node_without_a_dagster_home_gives_no_event(case: str):
    result = HAND_BUILT[case]
    assert only_event(result, NodeTarget(result.unique_id)) is None
    assert only_event(result, NodeTarget(result.unique_id, asset_key=AssetKey("orders"))) is None


# -- metadata keys, as the README's "What lands in Dagster" table says -----------------------------


def test_materialization_metadata(by_id: dict[str, dict[str, NodeResult]]):
    result = by_id["runner"]["model.shop.stg_orders"]
    result = NodeResult(**{**result.__dict__, "compiled_code": "select 1\n"})
    event = only_event(result, target_for(result))
    assert isinstance(event, Output) and event.output_name == "stg_orders"
    md = plain(event.metadata)
    assert md[c.UNIQUE_ID_KEY] == "model.shop.stg_orders"
    assert md[c.DBT_STATUS_KEY] == "success"
    assert md[c.STATUS_KEY] == "success"
    assert md[c.INVOCATION_ID_KEY] == result.invocation_id
    assert md[c.EXECUTION_DURATION_KEY] == pytest.approx(result.execution_time)
    assert md[c.ADAPTER_RESPONSE_KEY]["_message"] == "OK"
    assert md[c.RELATION_NAME_KEY] == '"shop"."main"."stg_orders"'
    assert md[c.COMPILED_SQL_KEY] == "```sql\nselect 1\n```"
    assert md[c.STARTED_AT_KEY] == result.started_at.isoformat()  # type: ignore[union-attr]
    assert md[c.COMPLETED_AT_KEY] == result.completed_at.isoformat()  # type: ignore[union-attr]
    assert c.ERROR_KEY not in md and c.SKIPPED_BECAUSE_KEY not in md


def test_rows_affected_from_a_hand_built_response():
    result = model_result(NodeStatus.SUCCESS, adapter_response={"_message": "INSERT 5", "rows_affected": 5})
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert md[c.ROWS_AFFECTED_KEY] == 5


@pytest.mark.parametrize("mode", MODES)
def test_rows_affected_of_a_recorded_seed(mode: str, by_id: dict[str, dict[str, NodeResult]]):
    result = by_id[mode]["seed.shop.raw_payments"]
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert md[c.ROWS_AFFECTED_KEY] == 73


def test_error_observation_metadata(by_id: dict[str, dict[str, NodeResult]]):
    result = by_id["runner"][FAILED_MODEL]
    event = only_event(result, target_for(result))
    assert isinstance(event, AssetObservation) and event.asset_key == AssetKey(["shop", "stg_payments"])
    md = plain(event.metadata)
    assert md[c.STATUS_KEY] == "error"
    assert md[c.ERROR_KEY] == result.message and "stg_payments failed on purpose" in md[c.ERROR_KEY]
    assert event.description == result.message
    assert md[c.UNIQUE_ID_KEY] == FAILED_MODEL and md[c.DBT_STATUS_KEY] == "error"


def test_skipped_observation_names_the_failed_upstream(by_id: dict[str, dict[str, NodeResult]]):
    result = by_id["runner"]["model.shop.daily_revenue"]
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert md[c.STATUS_KEY] == "skipped"
    assert md[c.SKIPPED_BECAUSE_KEY] == [FAILED_MODEL]
    assert md[c.ERROR_KEY] == "skipped by dbt because upstream stg_payments failed"


def test_lost_observation():
    result = HAND_BUILT["model-lost"]
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert md[c.STATUS_KEY] == "lost" and md[c.ERROR_KEY] == LOST_MESSAGE
    assert md[c.DBT_STATUS_KEY] == "not reported"


@pytest.mark.parametrize(
    ("case", "passed", "severity", "failure_count", "error"),
    [
        ("check-pass", True, AssetCheckSeverity.ERROR, 0, None),
        ("check-warn", False, AssetCheckSeverity.WARN, 2, None),
        ("check-fail", False, AssetCheckSeverity.ERROR, 3, None),
        ("check-error", False, AssetCheckSeverity.ERROR, None, "Database Error in test: no such column"),
    ],
    ids=["pass", "warn", "fail", "error"],
)
def test_check_result(case: str, passed: bool, severity: AssetCheckSeverity, failure_count: int | None, error):
    result = HAND_BUILT[case]
    event = only_event(result, target_for(result))
    assert isinstance(event, AssetCheckResult)
    assert (event.asset_key, event.check_name) == (CHECK_ASSET, "unique_orders_order_id")
    assert event.passed is passed and event.severity == severity
    md = plain(event.metadata)
    assert md.get(c.FAILURE_COUNT_KEY) == failure_count
    assert md.get(c.ERROR_KEY) == error
    assert md[c.STATUS_KEY] == result.status.value
    assert event.description == (None if result.status.succeeded else result.message)


def test_passing_check_takes_the_tests_configured_severity():
    result = HAND_BUILT["check-pass"]
    target = NodeTarget(result.unique_id, check_key=AssetCheckKey(CHECK_ASSET, "x"), check_severity="warn")
    event = only_event(result, target)
    assert isinstance(event, AssetCheckResult) and event.severity == AssetCheckSeverity.WARN


def test_recorded_warn_test_becomes_a_warning_check(by_id: dict[str, dict[str, NodeResult]]):
    result = by_id["subprocess"][WARN_TEST]
    event = only_event(result, target_for(result))
    assert isinstance(event, AssetCheckResult)
    assert event.passed is False and event.severity == AssetCheckSeverity.WARN
    assert plain(event.metadata)[c.FAILURE_COUNT_KEY] == 2


# -- dagster-dbt's own keys, under its names ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_materialization_has_dagster_dbts_default_keys_beside_ours(mode: str, by_id: dict[str, dict[str, NodeResult]]):
    result = by_id[mode]["model.shop.stg_orders"]
    target = NodeTarget(
        result.unique_id, asset_key=AssetKey("stg_orders"), output_name="stg_orders", table_name="shop.main.stg_orders"
    )
    md = plain(only_event(result, target).metadata)  # type: ignore[union-attr]
    # What DbtCliEventMessage writes on a materialization, under the same names and types...
    assert md["unique_id"] == "model.shop.stg_orders" and md["invocation_id"] == result.invocation_id
    assert md["status"] == "success"
    assert isinstance(md["Execution Duration"], float) and md["Execution Duration"] == pytest.approx(
        result.execution_time
    )
    assert md["dagster/table_name"] == "shop.main.stg_orders"
    # ...and ours stay beside them.
    assert md[c.EXECUTION_DURATION_KEY] == md["Execution Duration"] and md[c.DBT_STATUS_KEY] == "success"
    assert "dagster/row_count" not in md, "runtime metadata only when a build asks for it"


def test_fetched_runtime_metadata_lands_on_the_materialization():
    result = model_result(
        NodeStatus.SUCCESS, runtime_metadata={"dagster/row_count": 7, "dagster/storage_kind": "duckdb"}
    )
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert (md["dagster/row_count"], md["dagster/storage_kind"]) == (7, "duckdb")


@pytest.mark.parametrize(("case", "dbt_status", "failed_rows"), [("check-pass", "pass", 0), ("check-warn", "warn", 2)])
def test_check_result_has_dagster_dbts_keys(case: str, dbt_status: str, failed_rows: int):
    result = dataclasses.replace(HAND_BUILT[case], execution_time=0.25, invocation_id="inv-1")
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert md["status"] == dbt_status
    assert md["dagster_dbt/failed_row_count"] == failed_rows == md[c.FAILURE_COUNT_KEY]
    assert md["Execution Duration"] == 0.25
    assert {"unique_id", "invocation_id"} <= set(md)


def test_failure_observation_has_no_dagster_dbt_event_keys():
    """dagster-dbt emits nothing for a failed node; its keys are only on the events it would emit."""
    result = HAND_BUILT["model-error"]
    md = plain(only_event(result, target_for(result)).metadata)  # type: ignore[union-attr]
    assert "status" not in md and "Execution Duration" not in md


def test_not_selected_asset_is_one_observation_with_the_reason_and_never_a_failure_record():
    result = not_selected_result("model.shop.orders", {}, "excluded by --exclude stg_payments+")
    (event,) = to_dagster_events(result, target_for(model_result(NodeStatus.SUCCESS)))
    assert isinstance(event, AssetObservation)
    md = plain(event.metadata)
    assert md[c.STATUS_KEY] == "not_selected"
    assert md[c.REASON_KEY] == "excluded by --exclude stg_payments+"
    assert c.ERROR_KEY not in md
    recorded = c.recorded_outcome(event.metadata)
    assert recorded is not None and recorded.status is NodeStatus.NOT_SELECTED
    assert recorded.reason == "excluded by --exclude stg_payments+"


def test_not_selected_check_is_observed_on_its_asset_marked_as_the_tests():
    result = not_selected_result("test.shop.unique_orders_order_id.fed79b3a6e", {}, "excluded by --exclude x")
    check = AssetCheckKey(AssetKey("orders"), "unique_orders_order_id")
    (event,) = to_dagster_events(result, NodeTarget(result.unique_id, check_key=check))
    assert isinstance(event, AssetObservation) and event.asset_key == AssetKey("orders")
    assert plain(event.metadata)[c.TEST_KEY] == "unique_orders_order_id"
    assert c.recorded_outcome(event.metadata) is None, "says nothing about the asset's own outcome"
    assert c.recorded_outcome(event.metadata, include_tests=True).status is NodeStatus.NOT_SELECTED  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "failures"), [(NodeStatus.SUCCESS, 0), (NodeStatus.FAIL, 1)])
def test_a_test_without_a_check_leaves_its_verdict_on_each_parent(status: NodeStatus, failures: int):
    result = NodeResult(
        unique_id="test.shop.assert_revenue_matches_orders",
        resource_type="test",
        status=status,
        dbt_status=status.value,
        failures=failures,
    )
    parents = (AssetKey("daily_revenue"), AssetKey("orders"))
    target = NodeTarget(result.unique_id, observe_keys=parents, test_name="assert_revenue_matches_orders")
    events = to_dagster_events(result, target)
    assert [e.asset_key for e in events] == list(parents)
    for event in events:
        md = plain(event.metadata)
        assert (md[c.STATUS_KEY], md[c.FAILURE_COUNT_KEY], md[c.TEST_KEY]) == (
            status.value,
            failures,
            "assert_revenue_matches_orders",
        )
    skipped = NodeResult(result.unique_id, "test", NodeStatus.SKIPPED, "skipped")
    assert to_dagster_events(skipped, target) == [], "a test dbt skipped has no verdict"
