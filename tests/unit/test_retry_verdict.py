"""The pure retry verdict, as tables of cases: ``retry_batch`` (which nodes one retry run gets) and
``decide_retry`` (what one consumer does about its node), from hand-built RunOutcomes / RetryFacts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from dagster import AssetKey

from dagster_watcher import contract
from dagster_watcher.contract import RecordedOutcome
from dagster_watcher.retry import (
    RetryAction,
    RetryFacts,
    RunOutcomes,
    RunRetryFacts,
    WatcherRetryPolicy,
    decide_retry,
    decide_run_retry,
    policy_from_tags,
    retry_batch,
)
from dagster_watcher.status import NodeStatus

RAW = AssetKey("raw_payments")
STG = AssetKey("stg_payments")
ORDERS = AssetKey("orders")
REVENUE = AssetKey("daily_revenue")
CUSTOMERS = AssetKey("customers")
OTHER = AssetKey("not_this_producer")
UNIQUE_ID = {
    RAW: "seed.shop.raw_payments",
    STG: "model.shop.stg_payments",
    ORDERS: "model.shop.orders",
    REVENUE: "model.shop.daily_revenue",
    CUSTOMERS: "model.shop.customers",
}
FAILED_TEST = "test.shop.unique_orders_order_id.fed79b3a6e"
UNIT_TEST = "unit_test.shop.stg_payments.stg_payments_converts_cents_to_dollars"
NOT_SELECTED = RecordedOutcome(NodeStatus.NOT_SELECTED, reason="excluded by --exclude stg_payments+")

RUNTIME_ERROR = RecordedOutcome(NodeStatus.ERROR, "Runtime Error in model stg_payments: boom")
COMPILE_ERROR = RecordedOutcome(NodeStatus.ERROR, "Compilation Error in model stg_payments: 'x' is undefined")


def skipped(*causes: str) -> RecordedOutcome:
    return RecordedOutcome(NodeStatus.SKIPPED, "skipped by dbt", skipped_because=causes)


# -- retry_batch -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchCase:
    failures: dict[AssetKey, RecordedOutcome]
    expected: set[AssetKey]
    materialized: set[AssetKey] = field(default_factory=lambda: {RAW, CUSTOMERS})
    planned: set[AssetKey] = field(default_factory=lambda: {RAW, STG, ORDERS, REVENUE, CUSTOMERS})
    policy: WatcherRetryPolicy = WatcherRetryPolicy()


BATCH_CASES = {
    "all-succeeded": BatchCase(failures={}, expected=set(), materialized={RAW, STG, ORDERS, REVENUE, CUSTOMERS}),
    "retryable-model-failed-its-skipped-descendants-retried": BatchCase(
        failures={STG: RUNTIME_ERROR, ORDERS: skipped(UNIQUE_ID[STG]), REVENUE: skipped(UNIQUE_ID[STG])},
        expected={STG, ORDERS, REVENUE},
    ),
    "skipped-because-a-test-failed-not-retried": BatchCase(
        failures={ORDERS: skipped(FAILED_TEST), REVENUE: skipped(FAILED_TEST)},
        expected=set(),
        materialized={RAW, STG, CUSTOMERS},
    ),
    "skipped-because-of-a-test-and-a-retryable-model-not-retried": BatchCase(
        failures={STG: RUNTIME_ERROR, ORDERS: skipped(UNIQUE_ID[STG]), REVENUE: skipped(FAILED_TEST, UNIQUE_ID[STG])},
        expected={STG, ORDERS},
    ),
    "non-retryable-error-and-what-it-skipped-not-retried": BatchCase(
        failures={STG: COMPILE_ERROR, ORDERS: skipped(UNIQUE_ID[STG]), REVENUE: skipped(UNIQUE_ID[STG])},
        expected=set(),
    ),
    "non-retryable-root-blocks-only-its-own-skips": BatchCase(
        failures={STG: COMPILE_ERROR, ORDERS: RUNTIME_ERROR, REVENUE: skipped(UNIQUE_ID[ORDERS])},
        expected={ORDERS, REVENUE},
    ),
    "custom-non-retryable-pattern": BatchCase(
        failures={STG: RUNTIME_ERROR, ORDERS: skipped(UNIQUE_ID[STG]), REVENUE: skipped(UNIQUE_ID[STG])},
        expected=set(),
        policy=WatcherRetryPolicy(non_retryable=(r"Runtime Error",)),
    ),
    "lost-nodes-retried": BatchCase(failures={}, expected={STG, ORDERS, REVENUE}),
    "skipped-because-a-unit-test-failed-not-retried": BatchCase(
        failures={STG: skipped(UNIT_TEST), ORDERS: skipped(UNIT_TEST), REVENUE: skipped(UNIT_TEST)},
        expected=set(),
    ),
    "not-selected-never-retried": BatchCase(
        failures={STG: NOT_SELECTED, ORDERS: NOT_SELECTED, REVENUE: RUNTIME_ERROR},
        expected={REVENUE},
    ),
    "partial-success-retried-with-what-it-skipped": BatchCase(
        failures={
            STG: RecordedOutcome(NodeStatus.PARTIAL_SUCCESS, "2 batches failed"),
            ORDERS: skipped(UNIQUE_ID[STG]),
        },
        expected={STG, ORDERS, REVENUE},
    ),
    "materialized-after-a-failure-record-not-retried": BatchCase(
        failures={STG: RUNTIME_ERROR}, expected={ORDERS, REVENUE}, materialized={RAW, CUSTOMERS, STG}
    ),
    "only-planned-assets-of-this-producer": BatchCase(
        failures={STG: RUNTIME_ERROR, OTHER: RUNTIME_ERROR},
        expected={STG},
        planned={RAW, STG, OTHER},
    ),
}


@pytest.mark.parametrize("case", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_retry_batch(case: BatchCase):
    outcomes = RunOutcomes(planned=set(case.planned), materialized=set(case.materialized), failures=case.failures)
    assert retry_batch(outcomes, case.policy, UNIQUE_ID) == case.expected


# -- decide_retry ----------------------------------------------------------------------------------

RUN_ID = "0123456789abcdef"
BASE = RetryFacts(
    asset=ORDERS,
    run_id=RUN_ID,
    run_status="FAILURE",
    in_progress=False,
    materialized=False,
    recorded=RUNTIME_ERROR,
    attempt=0,
    seconds_since_end=5.0,
)
DEFAULT = WatcherRetryPolicy()
NOT_ASKED = None  # the case must settle or wait before asking for the run's batch


@dataclass(frozen=True)
class VerdictCase:
    facts: RetryFacts
    policy: WatcherRetryPolicy | None
    batch: frozenset[AssetKey] | None
    action: RetryAction
    reason: str
    """A phrase the verdict's reason must contain (the sensor logs it)."""
    request_attempt: int = 0


VERDICT_CASES = {
    "materialized-settles": VerdictCase(
        replace(BASE, materialized=True, recorded=None), DEFAULT, NOT_ASKED, RetryAction.SETTLE, "materialized by run"
    ),
    "run-in-progress-waits": VerdictCase(
        replace(BASE, in_progress=True, run_status="STARTED", seconds_since_end=0),
        DEFAULT,
        NOT_ASKED,
        RetryAction.WAIT,
        "failed in run 01234567, which is still in progress",
    ),
    "unreported-in-running-run-waits": VerdictCase(
        replace(BASE, in_progress=True, recorded=None, run_status="STARTED", seconds_since_end=0),
        DEFAULT,
        NOT_ASKED,
        RetryAction.WAIT,
        "not reported yet",
    ),
    "lost-after-run-ended-is-due": VerdictCase(
        replace(BASE, asset=CUSTOMERS, recorded=None),
        DEFAULT,
        frozenset({CUSTOMERS, ORDERS}),
        RetryAction.REQUEST,
        "due for one re-materialization of the run's 2 unfinished node(s)",
        request_attempt=1,
    ),
    "every-node-of-the-batch-is-due-not-only-the-first-by-name": VerdictCase(
        replace(BASE, recorded=None),
        DEFAULT,
        frozenset({CUSTOMERS, ORDERS}),
        RetryAction.REQUEST,
        "due for one re-materialization",
        request_attempt=1,
    ),
    "terminated-run-settles": VerdictCase(
        replace(BASE, recorded=None, run_status="CANCELED"),
        DEFAULT,
        NOT_ASKED,
        RetryAction.SETTLE,
        "which was terminated; not retried (retry_terminated=False)",
    ),
    "terminated-run-retried-when-the-policy-says-so": VerdictCase(
        replace(BASE, recorded=None, run_status="CANCELED"),
        WatcherRetryPolicy(retry_terminated=True),
        frozenset({ORDERS}),
        RetryAction.REQUEST,
        "due",
        request_attempt=1,
    ),
    "lost-with-a-profile-error-settles": VerdictCase(
        replace(BASE, recorded=RecordedOutcome(NodeStatus.LOST, "Could not find profile named 'shopp'")),
        DEFAULT,
        NOT_ASKED,
        RetryAction.SETTLE,
        "the error is not retryable",
    ),
    "error-retried-on-second-attempt": VerdictCase(
        replace(BASE, attempt=1), DEFAULT, frozenset({ORDERS}), RetryAction.REQUEST, "due for one", request_attempt=2
    ),
    "attempts-exhausted-settles": VerdictCase(
        replace(BASE, attempt=2), DEFAULT, NOT_ASKED, RetryAction.SETTLE, "after 2 retries (limit 2)"
    ),
    "no-retries-allowed-settles": VerdictCase(
        BASE, WatcherRetryPolicy(max_retries=0), NOT_ASKED, RetryAction.SETTLE, "after 0 retries (limit 0)"
    ),
    "compile-error-settles": VerdictCase(
        replace(BASE, recorded=COMPILE_ERROR), DEFAULT, NOT_ASKED, RetryAction.SETTLE, "the error is not retryable"
    ),
    "delay-not-passed-waits": VerdictCase(
        replace(BASE, seconds_since_end=10),
        WatcherRetryPolicy(delay_seconds=60),
        NOT_ASKED,
        RetryAction.WAIT,
        "retry 1 in 50s",
    ),
    "delay-passed-requests": VerdictCase(
        replace(BASE, seconds_since_end=61),
        WatcherRetryPolicy(delay_seconds=60),
        frozenset({ORDERS}),
        RetryAction.REQUEST,
        "due for one",
        request_attempt=1,
    ),
    "backoff-grows-the-delay": VerdictCase(
        replace(BASE, attempt=1, seconds_since_end=30),
        WatcherRetryPolicy(max_retries=3, delay_seconds=20, backoff=2),
        NOT_ASKED,
        RetryAction.WAIT,
        "retry 2 in 10s",
    ),
    "retries-disabled-settles": VerdictCase(BASE, None, NOT_ASKED, RetryAction.SETTLE, "retries are disabled"),
    "not-selected-settles-never-retried": VerdictCase(
        replace(BASE, recorded=NOT_SELECTED),
        DEFAULT,
        NOT_ASKED,
        RetryAction.SETTLE,
        "not selected by dbt in run 01234567 (excluded by --exclude stg_payments+); not retried",
    ),
    "not-in-the-runs-batch-settles": VerdictCase(
        replace(BASE, recorded=skipped(FAILED_TEST)),
        DEFAULT,
        frozenset({CUSTOMERS}),
        RetryAction.SETTLE,
        "because of a failed test or a non-retryable node",
    ),
}


@pytest.mark.parametrize("case", VERDICT_CASES.values(), ids=VERDICT_CASES.keys())
def test_decide_retry(case: VerdictCase):
    asked: list[bool] = []

    def batch_of_run() -> frozenset[AssetKey]:
        asked.append(True)
        assert case.batch is not None, "asked for the run's batch although the verdict was already known"
        return case.batch

    verdict = decide_retry(case.facts, case.policy, batch_of_run)
    assert verdict.action is case.action, verdict.reason
    assert case.reason in verdict.reason
    assert bool(asked) is (case.batch is not None)
    if case.action is RetryAction.REQUEST:
        assert verdict.batch == case.batch and verdict.attempt == case.request_attempt
    else:
        assert verdict.batch == frozenset() and verdict.attempt == 0


# dbt-core's own messages for errors that fail the same way on every attempt (copied from
# dbt/config/profile.py, dbt/config/runtime.py, dbt_common's env_var, libpq).
CONFIG_ERRORS = [
    "Runtime Error\n  Could not find profile named 'shopp'",
    "Runtime Error\n  The profile 'shop' does not have a target named 'prod'. The valid target names for this "
    "profile are:\n - dev",
    "Parsing Error\n  Env var required but not provided: 'DAGSTER_WATCHER_DUCKDB_PATH'",
    "Runtime Error\n  dbt encountered an error while trying to read your profiles.yml file.",
    "Runtime Error\n  outputs not specified in profile 'shop'",
    'Database Error\n  connection to server at "localhost" (127.0.0.1), port 5432 failed: Connection refused',
    'Database Error\n  FATAL:  password authentication failed for user "dbt"',
    'Database Error\n  could not translate host name "warehouse" to address: Name or service not known',
]


@pytest.mark.parametrize("error", CONFIG_ERRORS)
def test_profile_target_and_connection_errors_are_not_retryable_by_default(error: str):
    assert not DEFAULT.is_retryable(error)
    assert DEFAULT.is_retryable("Runtime Error in model stg_payments: Could not set lock on file")


def test_a_non_retryable_lost_node_blocks_its_batch():
    lost = RecordedOutcome(NodeStatus.LOST, "dbt exited: Env var required but not provided: 'X'")
    outcomes = RunOutcomes(planned={STG, ORDERS}, failures={STG: lost, ORDERS: skipped(UNIQUE_ID[STG])})
    assert retry_batch(outcomes, DEFAULT, UNIQUE_ID) == set()


# -- decide_run_retry (the producer's coordinator, once per failed run) ------------------------------

RUN = RunRetryFacts("0123456789", "FAILURE", 0, 5.0, frozenset({STG, ORDERS}))
RUN_CASES = {
    "failed-run-requests-its-batch": (RUN, DEFAULT, RetryAction.REQUEST, "requesting one re-materialization of its 2"),
    "terminated-run-settles": (
        replace(RUN, run_status="CANCELED"),
        DEFAULT,
        RetryAction.SETTLE,
        "terminated; not retried",
    ),
    "terminated-run-retried-when-asked": (
        replace(RUN, run_status="CANCELED"),
        WatcherRetryPolicy(retry_terminated=True),
        RetryAction.REQUEST,
        "requesting",
    ),
    "a-run-in-progress-planned-part-of-the-batch-waits": (
        replace(RUN, busy={ORDERS: "fedcba9876543"}),
        DEFAULT,
        RetryAction.WAIT,
        "waiting for run(s) fedcba98 in progress, which planned 1 node(s) of its retry batch (orders)",
    ),
    "empty-batch-settles": (replace(RUN, batch=frozenset()), DEFAULT, RetryAction.SETTLE, "nothing left to retry"),
    "limit-settles": (replace(RUN, attempt=2), DEFAULT, RetryAction.SETTLE, "after 2 retries (limit 2)"),
    "delay-waits": (RUN, WatcherRetryPolicy(delay_seconds=60), RetryAction.WAIT, "retry 1 in 55s"),
    "disabled-settles": (RUN, None, RetryAction.SETTLE, "retries are disabled"),
}


@pytest.mark.parametrize("case", RUN_CASES.values(), ids=RUN_CASES.keys())
def test_decide_run_retry(case):  # type: ignore[no-untyped-def]
    facts, policy, action, reason = case
    verdict = decide_run_retry(facts, policy)
    assert verdict.action is action, verdict.reason
    assert reason in verdict.reason
    if action is RetryAction.REQUEST:
        assert verdict.batch == facts.batch and verdict.attempt == facts.attempt + 1


# -- the policy itself -----------------------------------------------------------------------------


def test_policy_defaults_treat_compile_and_parse_errors_as_final():
    policy = WatcherRetryPolicy()
    assert not policy.is_retryable("Compilation Error in model x")
    assert not policy.is_retryable("Parsing Error in file y")
    assert policy.is_retryable("Database Error: connection reset")
    assert policy.is_retryable(None)


def test_delay_for_is_exponential_in_the_attempt():
    policy = WatcherRetryPolicy(delay_seconds=10, backoff=3)
    assert [policy.delay_for(n) for n in (1, 2, 3)] == [10, 30, 90]
    assert WatcherRetryPolicy().delay_for(5) == 0


def test_policy_from_tags_round_trips_the_patterns():
    tags = {contract.NON_RETRYABLE_TAG: contract.encode_non_retryable(("Boom",))}
    assert policy_from_tags(tags).non_retryable == ("Boom",)
    assert policy_from_tags({contract.NON_RETRYABLE_TAG: contract.encode_non_retryable(())}).non_retryable == ()
    assert policy_from_tags({}) == WatcherRetryPolicy()
