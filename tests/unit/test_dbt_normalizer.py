"""DbtEventNormalizer: real dbt events (both invocation modes) in, exactly one NodeResult per node out.

The recorded events come from one ``dbt build`` of example_project with ``fail_model=stg_payments``
in each mode (``record_events.py``); the error-text rules are fed event sequences built here, in the
shape dbt uses."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dagster_watcher._text import MASK, scrub_result, scrub_secrets
from dagster_watcher.dbt_normalizer import (
    MICROBATCH_EVENTS,
    WANTED_EVENTS,
    DbtEventNormalizer,
    RawDbtEvent,
    batch_start,
)
from dagster_watcher.status import NodeResult, NodeStatus

from .recorded import FAILED_MODEL, MODES, WARN_TEST, replay

ERROR_TEXT = "stg_payments failed on purpose"


def descendants(graph: Mapping[str, Any], unique_id: str) -> set[str]:
    found: set[str] = set()
    stack = list(graph["child_map"].get(unique_id, ()))
    while stack:
        child = stack.pop()
        if child not in found:
            found.add(child)
            stack.extend(graph["child_map"].get(child, ()))
    return found


# -- recorded events ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_recording_holds_only_wanted_events_of_one_invocation(mode: str, recorded: dict[str, list[RawDbtEvent]]):
    events = recorded[mode]
    # The recorded project has no microbatch model: every wanted event but the batches' own.
    assert {e.name for e in events} == WANTED_EVENTS - MICROBATCH_EVENTS
    assert len({e.invocation_id for e in events}) == 1


@pytest.mark.parametrize("mode", MODES)
def test_exactly_one_result_per_node(
    mode: str, replayed: dict[str, list[NodeResult]], recorded: dict[str, list[RawDbtEvent]], graph: Mapping[str, Any]
):
    counts = collections.Counter(r.unique_id for r in replayed[mode])
    assert set(counts.values()) == {1}, f"released more than once: {[u for u, n in counts.items() if n > 1]}"
    finished = {e.data["node_info"]["unique_id"] for e in recorded[mode] if e.name == "NodeFinished"}
    # Every node of the project is built by `dbt build` (ephemeral ones are reported too).
    assert set(counts) == finished == set(graph["nodes"])


def test_both_modes_give_the_same_nodes_and_statuses(by_id: dict[str, dict[str, NodeResult]]):
    runner, subprocess = ({u: r.status for u, r in by_id[mode].items()} for mode in MODES)
    assert runner == subprocess
    assert set(runner.values()) == {NodeStatus.SUCCESS, NodeStatus.WARN, NodeStatus.ERROR, NodeStatus.SKIPPED}


@pytest.mark.parametrize("mode", MODES)
def test_failed_model_is_error_with_dbts_text(mode: str, by_id: dict[str, dict[str, NodeResult]]):
    result = by_id[mode][FAILED_MODEL]
    assert result.status is NodeStatus.ERROR
    assert result.dbt_status == "error"
    assert result.resource_type == "model"
    assert result.message is not None and ERROR_TEXT in result.message
    assert result.skipped_because == ()
    assert result.compiled_code is None


@pytest.mark.parametrize("mode", MODES)
def test_descendants_of_the_failure_are_skipped_because_of_it(
    mode: str, by_id: dict[str, dict[str, NodeResult]], graph: Mapping[str, Any]
):
    below = descendants(graph, FAILED_MODEL)
    assert {"model.shop.orders", "model.shop.daily_revenue", "model.shop.int_order_payments"} <= below
    skipped = {u for u, r in by_id[mode].items() if r.status is NodeStatus.SKIPPED}
    assert skipped == below
    for unique_id in below:
        assert by_id[mode][unique_id].skipped_because == (FAILED_MODEL,), unique_id
    for result in by_id[mode].values():
        if result.status is not NodeStatus.SKIPPED:
            assert result.skipped_because == (), result.unique_id


@pytest.mark.parametrize("mode", MODES)
def test_warn_test_is_warn_with_its_failure_count(mode: str, by_id: dict[str, dict[str, NodeResult]]):
    result = by_id[mode][WARN_TEST]
    assert result.status is NodeStatus.WARN
    assert result.status.succeeded
    assert result.failures == 2
    assert result.message == "Got 2 results, configured to warn if != 0"


@pytest.mark.parametrize("mode", MODES)
def test_successes_carry_dbts_facts(
    mode: str, by_id: dict[str, dict[str, NodeResult]], recorded: dict[str, list[RawDbtEvent]]
):
    seed = by_id[mode]["seed.shop.raw_payments"]
    assert seed.status is NodeStatus.SUCCESS and seed.dbt_status == "success"
    assert seed.resource_type == "seed"
    assert seed.relation_name == '"shop"."main"."raw_payments"'
    assert seed.adapter_response["rows_affected"] == 73
    assert seed.failures is None  # only tests have a failure count
    assert isinstance(seed.execution_time, float) and seed.execution_time > 0
    assert isinstance(seed.started_at, datetime) and isinstance(seed.completed_at, datetime)
    assert seed.started_at.tzinfo is not None and seed.started_at <= seed.completed_at
    assert seed.invocation_id == recorded[mode][0].invocation_id
    passed = by_id[mode]["test.shop.unique_customers_customer_id.c5af1ff4b1"]
    assert passed.status is NodeStatus.SUCCESS and passed.dbt_status == "pass" and passed.failures == 0


@pytest.mark.parametrize("mode", MODES)
def test_dbt_version_is_read_from_the_report(mode: str, recorded: dict[str, list[RawDbtEvent]], graph):
    normalizer = DbtEventNormalizer(graph)
    for event in recorded[mode]:
        normalizer.feed(event.name, event.data, event.invocation_id)
    assert normalizer.dbt_version is not None
    assert normalizer.dbt_version[0].isdigit()  # dbt reports "=1.11.x"; the "=" is dropped
    assert normalizer.invocation_id == recorded[mode][0].invocation_id


def test_compiled_sql_is_read_for_succeeded_models_only(
    recorded: dict[str, list[RawDbtEvent]], graph: Mapping[str, Any], tmp_path: Path
):
    compiled = tmp_path / "compiled" / "shop" / "models" / "staging"
    compiled.mkdir(parents=True)
    for name in ("stg_orders", "stg_payments"):
        (compiled / f"{name}.sql").write_text(f"select * from {name}_source")
    results = {r.unique_id: r for r in replay(recorded["runner"], graph, target_path=tmp_path)}
    assert results["model.shop.stg_orders"].compiled_code == "select * from stg_orders_source"
    assert results[FAILED_MODEL].compiled_code is None  # errored: no SQL shown as if it had run
    assert results["model.shop.stg_customers"].compiled_code is None  # no file written: nothing invented
    assert results["seed.shop.raw_orders"].compiled_code is None


# -- the error-text rule, on sequences built in dbt's shape ----------------------------------------

MODEL = "model.shop.stg_payments"
GRAPH: dict[str, Any] = {
    "nodes": {MODEL: {"resource_type": "model"}},
    "parent_map": {MODEL: []},
    "child_map": {MODEL: []},
}


def node_finished(unique_id: str = MODEL, status: str = "error", message: str | None = None) -> dict[str, Any]:
    return {
        "node_info": {"unique_id": unique_id, "resource_type": unique_id.split(".")[0], "node_status": status},
        "run_result": {"status": status, "message": message, "timing_info": [], "adapter_response": {}},
    }


def run_result_error(msg: str, unique_id: str | None = MODEL) -> dict[str, Any]:
    return {"msg": msg, "node_info": {"unique_id": unique_id} if unique_id else {}}


def test_errored_node_without_message_is_held_until_its_run_result_error():
    normalizer = DbtEventNormalizer(GRAPH)
    assert normalizer.feed("NodeFinished", node_finished(message=None)) == []
    assert MODEL not in normalizer.results
    # An unrelated (node-less) or empty RunResultError does not release it.
    assert normalizer.feed("RunResultError", run_result_error("some other text", unique_id=None)) == []
    assert normalizer.feed("RunResultError", run_result_error("   ")) == []
    released = normalizer.feed("RunResultError", run_result_error("Database Error: boom"))
    assert [(r.unique_id, r.status, r.message) for r in released] == [(MODEL, NodeStatus.ERROR, "Database Error: boom")]
    assert normalizer.results[MODEL].message == "Database Error: boom"
    assert normalizer.release_held() == []


def test_trailing_empty_run_result_error_never_overwrites_text():
    normalizer = DbtEventNormalizer(GRAPH)
    normalizer.feed("NodeFinished", node_finished(message=None))
    normalizer.feed("RunResultError", run_result_error("Database Error: boom"))
    for trailing in ("", "  ", "\n"):
        assert normalizer.feed("RunResultError", run_result_error(trailing)) == []
    assert normalizer.results[MODEL].message == "Database Error: boom"


def test_run_result_error_after_release_changes_nothing():
    normalizer = DbtEventNormalizer(GRAPH)
    (first,) = normalizer.feed("NodeFinished", node_finished(message="Runtime Error: first"))
    assert normalizer.feed("RunResultError", run_result_error("Runtime Error: other")) == []
    assert normalizer.results[MODEL] is first and first.message == "Runtime Error: first"


def test_held_node_is_released_when_dbt_exits_without_its_text():
    normalizer = DbtEventNormalizer(GRAPH)
    normalizer.feed("NodeFinished", node_finished(message=""))
    (released,) = normalizer.release_held()
    assert (released.status, released.message) == (NodeStatus.ERROR, None)
    assert normalizer.release_held() == []


def test_non_error_without_message_is_not_held():
    normalizer = DbtEventNormalizer(GRAPH)
    (result,) = normalizer.feed("NodeFinished", node_finished(status="success", message=None))
    assert result.status is NodeStatus.SUCCESS


@pytest.mark.parametrize("message", ["Runtime Error: boom", None], ids=["with-text", "held"])
def test_duplicate_node_finished_never_emits_twice(message: str | None):
    normalizer = DbtEventNormalizer(GRAPH)
    released = normalizer.feed("NodeFinished", node_finished(message=message))
    released += normalizer.feed("NodeFinished", node_finished(message="Runtime Error: again"))
    released += normalizer.feed("RunResultError", run_result_error("Runtime Error: late"))
    released += normalizer.release_held()
    assert len(released) == 1
    assert released[0].message == (message or "Runtime Error: late")


def test_unknown_dbt_status_is_an_error_not_a_success():
    normalizer = DbtEventNormalizer(GRAPH)
    (result,) = normalizer.feed("NodeFinished", node_finished(status="exploded", message="?"))
    assert result.status is NodeStatus.ERROR and result.dbt_status == "exploded"


def test_skip_names_a_failed_test_on_an_ancestor():
    """In `dbt build` a failing test skips its model's children: the test is named as the cause."""
    model, test, child = "model.p.a", "test.p.not_null_a", "model.p.b"
    graph = {
        "nodes": {},
        "parent_map": {model: [], test: [model], child: [model]},
        "child_map": {model: [test, child], test: [], child: []},
    }
    normalizer = DbtEventNormalizer(graph)
    normalizer.feed("NodeFinished", node_finished(model, "success", "OK"))
    normalizer.feed("NodeFinished", node_finished(test, "fail", "Got 1 result"))
    (skipped,) = normalizer.feed("NodeFinished", node_finished(child, "skipped"))
    assert skipped.status is NodeStatus.SKIPPED and skipped.skipped_because == (test,)


# -- secrets ---------------------------------------------------------------------------------------

SECRET = "pa55-w0rd-xyz"


def test_secrets_are_masked_in_node_finished_and_run_result_error(monkeypatch: pytest.MonkeyPatch):
    # The normaliser keeps dbt's words; the writer scrubs every result once (scrub_result), whatever
    # source produced it.
    monkeypatch.setenv("DBT_ENV_SECRET_PASSWORD", SECRET)
    normalizer = DbtEventNormalizer(GRAPH)
    (direct,) = normalizer.feed(
        "NodeFinished", node_finished("model.shop.a", message=f"could not log in with {SECRET}")
    )
    normalizer.feed("NodeFinished", node_finished(message=None))
    (late,) = normalizer.feed("RunResultError", run_result_error(f"password {SECRET} rejected"))
    for result in (scrub_result(direct), scrub_result(late)):
        assert result.message is not None
        assert SECRET not in result.message and MASK in result.message


def test_credential_named_variables_are_masked_too(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DAGSTER_WATCHER_BQ_TOKEN", SECRET)
    monkeypatch.setenv("SOME_DB_PASSWORD", "hunter2-long")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to mask without garbling the text
    text = f"token {SECRET}, password hunter2-long, abc"
    assert scrub_secrets(text) == f"token {MASK}, password {MASK}, abc"


def test_scrub_secrets_masks_only_secret_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DBT_ENV_SECRET_TOKEN", SECRET)
    monkeypatch.setenv("DBT_ENV_SECRET_UNSET", "")  # an empty secret must not mask every gap
    monkeypatch.setenv("DBT_PLAIN_VALUE", "visible-value")
    assert scrub_secrets(f"token={SECRET} other=visible-value") == f"token={MASK} other=visible-value"
    assert scrub_secrets("nothing secret") == "nothing secret"


# -- unit tests, --fail-fast, microbatch -------------------------------------------------------------

UNIT_TEST = "unit_test.shop.stg_payments.stg_payments_converts_cents_to_dollars"


def _finished(unique_id: str, status: str, message: str | None = None, **run_result: object) -> RawDbtEvent:
    return RawDbtEvent(
        "NodeFinished",
        {
            "node_info": {"unique_id": unique_id, "resource_type": unique_id.split(".", 1)[0]},
            "run_result": {"status": status, "message": message, **run_result},
        },
        "inv",
    )


def _graph_with_unit_test(graph: Mapping[str, Any]) -> dict[str, Any]:
    return {**graph, "unit_tests": {UNIT_TEST: {"depends_on": {"nodes": ["model.shop.stg_payments"]}}}}


def test_a_failed_unit_test_is_named_as_the_cause_of_its_model_and_descendants(graph: Mapping[str, Any]):
    normalizer = DbtEventNormalizer(_graph_with_unit_test(graph))
    (unit,) = normalizer.feed(*_as_args(_finished(UNIT_TEST, "fail", "actual differs from expected", failures=1)))
    assert unit.status is NodeStatus.FAIL and unit.failures == 1
    (model,) = normalizer.feed(*_as_args(_finished("model.shop.stg_payments", "skipped")))
    (orders,) = normalizer.feed(*_as_args(_finished("model.shop.orders", "skipped")))
    assert model.skipped_because == (UNIT_TEST,)
    assert orders.skipped_because == (UNIT_TEST,)


def test_fail_fast_skips_are_skipped_with_the_first_failure_named_never_lost(graph: Mapping[str, Any]):
    normalizer = DbtEventNormalizer(graph)
    normalizer.feed(*_as_args(_finished("model.shop.stg_customers", "error", "Runtime Error: boom")))
    for _ in range(3):  # dbt names the nodes it skipped only in words, without the node
        assert normalizer.feed("RunResultError", {"msg": "Skipping due to fail_fast"}, "inv") == []
    rest = normalizer.unreported({"model.shop.customers", "model.shop.stg_customers"})
    assert [r.unique_id for r in rest] == ["model.shop.customers"]
    assert rest[0].status is NodeStatus.SKIPPED
    assert rest[0].message == "skipped by dbt: --fail-fast stopped the build after stg_customers failed"


def test_without_fail_fast_nothing_unreported_is_decided_by_the_normaliser(graph: Mapping[str, Any]):
    assert DbtEventNormalizer(graph).unreported({"model.shop.customers"}) == []


def test_microbatch_partial_success_materializes_names_failed_batches_and_blocks(graph: Mapping[str, Any]):
    normalizer = DbtEventNormalizer(graph)
    batches = {"successful": [["2026-01-01", "2026-01-02"]], "failed": [["2026-01-02", "2026-01-03"]]}
    (result,) = normalizer.feed(
        *_as_args(_finished("model.shop.orders", "partial success", "1 of 2 batches failed", batch_results=batches))
    )
    assert result.status is NodeStatus.PARTIAL_SUCCESS
    assert result.status.materializes and result.status.blocks_descendants and not result.status.succeeded
    assert result.failed_batches == ("2026-01-02T00:00:00+00:00",)
    (child,) = normalizer.feed(*_as_args(_finished("model.shop.daily_revenue", "skipped")))
    assert child.skipped_because == ("model.shop.orders",)


def _as_args(event: RawDbtEvent) -> tuple[str, Mapping[str, Any], str | None]:
    return event.name, event.data, event.invocation_id


def _batch(unique_id: str, printed_start: str, status: str, index: int, total: int) -> RawDbtEvent:
    return RawDbtEvent(
        "LogBatchResult",
        {
            "node_info": {"unique_id": unique_id, "resource_type": "model"},
            "description": f"batch {printed_start} of main.orders",
            "status": status,
            "batch_index": index,
            "total_batches": total,
        },
        "inv",
    )


def test_a_microbatch_models_outcome_is_its_last_node_finished_with_the_failed_batches_and_their_error(
    graph: Mapping[str, Any],
):
    """dbt 1.9+ fires LogBatchResult then NodeFinished per batch (batches may interleave on threads),
    and the model's own NodeFinished last, without batch_results; a failed batch's error text is only
    in GenericExceptionOnRun."""
    model = "model.shop.orders"
    normalizer = DbtEventNormalizer(graph)
    events = [
        _batch(model, "2024-02-01", "OK", 1, 3),
        _finished(model, "success", "OK"),
        RawDbtEvent(
            "GenericExceptionOnRun",
            {"unique_id": model, "exc": "Runtime Error\n  Invalid Input Error: partition 2024-02-02 failed"},
            "inv",
        ),
        _batch(model, "2024-02-02", "error", 2, 3),
        _batch(model, "2024-02-03", "OK", 3, 3),
        _finished(model, "error", "ERROR"),
        _finished(model, "success", "OK"),
    ]
    for event in events:
        assert normalizer.feed(*_as_args(event)) == [], f"{event.name} of a batch is no outcome of the model"
    (result,) = normalizer.feed(*_as_args(_finished(model, "partial success", "PARTIAL SUCCESS (2/3)")))
    assert result.status is NodeStatus.PARTIAL_SUCCESS
    assert result.failed_batches == ("2024-02-02T00:00:00+00:00",)
    assert result.message is not None
    assert result.message.startswith("PARTIAL SUCCESS (2/3): failed batches 2024-02-02: ")
    assert "Invalid Input Error: partition 2024-02-02 failed" in result.message
    (child,) = normalizer.feed(*_as_args(_finished("model.shop.daily_revenue", "skipped")))
    assert child.skipped_because == (model,)


def test_a_microbatch_model_whose_batches_all_succeed_is_one_success(graph: Mapping[str, Any]):
    model = "model.shop.orders"
    normalizer = DbtEventNormalizer(graph)
    for i, day in enumerate(["2024-02-01", "2024-02-02"], start=1):
        assert normalizer.feed(*_as_args(_batch(model, day, "OK", i, 2))) == []
        assert normalizer.feed(*_as_args(_finished(model, "success", "OK"))) == []
    (result,) = normalizer.feed(*_as_args(_finished(model, "success", "SUCCESS")))
    assert result.status is NodeStatus.SUCCESS and result.failed_batches == () and result.message == "SUCCESS"


@pytest.mark.parametrize(
    ("printed", "iso"),
    [
        ("2024", "2024-01-01T00:00:00+00:00"),
        ("2024-09", "2024-09-01T00:00:00+00:00"),
        ("2024-09-17", "2024-09-17T00:00:00+00:00"),
        ("2024-09-17T16", "2024-09-17T16:00:00+00:00"),
    ],
)
def test_batch_starts_as_dbt_prints_them_per_batch_size(printed: str, iso: str):
    start = batch_start(printed)
    assert start is not None and start.isoformat() == iso
