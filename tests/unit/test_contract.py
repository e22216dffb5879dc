"""The producer/consumer contract: names, run keys and tags both sides derive from ``contract.py``,
and the decoders on what they read back (including malformed input)."""

from __future__ import annotations

import pytest
from dagster import AssetKey, MetadataValue, asset

from dagster_watcher import contract as c
from dagster_watcher.status import NodeStatus

KEY = AssetKey(["shop", "orders"])


@asset(key=KEY)
def _orders() -> None:
    pass


def test_names_and_run_keys():
    assert c.key_slug(KEY) == "shop__orders"
    assert c.sensor_name(KEY) == "watch_shop__orders"
    assert c.sensor_name(AssetKey("customers")) == "watch_customers"
    assert c.downstream_job_name(KEY) == "shop__orders__downstream"
    assert c.retry_job_name(_orders) == f"{_orders.node_def.name}__watcher_retry"
    assert c.retry_run_key("abc-123") == "dagster_watcher_retry:abc-123"
    assert c.downstream_run_key(KEY, 42, "crm_sync") == "watch_shop__orders:42:crm_sync"


def test_run_keys_differ_per_materialization_and_job():
    keys = {c.downstream_run_key(KEY, m, j) for m in (1, 2) for j in ("a", "b")}
    assert len(keys) == 4


def test_run_tags():
    assert c.retry_run_tags("run-1", 2) == {c.RETRY_OF_TAG: "run-1", c.ATTEMPT_TAG: "2"}
    assert c.downstream_run_tags(KEY, "run-9") == {c.UPSTREAM_TAG: "shop/orders", c.UPSTREAM_RUN_TAG: "run-9"}


@pytest.mark.parametrize(
    ("tags", "attempt"),
    [
        ({}, 0),
        (c.retry_run_tags("run-1", 3), 3),
        ({c.ATTEMPT_TAG: "two"}, 0),
        ({c.ATTEMPT_TAG: ""}, 0),
        ({c.ATTEMPT_TAG: "1.5"}, 0),
    ],
    ids=["no-tag", "round-trip", "word", "empty", "not-an-int"],
)
def test_attempt_of(tags: dict[str, str], attempt: int):
    assert c.attempt_of(tags) == attempt


@pytest.mark.parametrize(
    ("tags", "liveness"),
    [
        (c.liveness_tags(4242, "host-a"), (4242, "host-a")),
        ({}, None),
        ({c.PID_TAG: "4242"}, None),
        ({c.HOST_TAG: "host-a"}, None),
        ({c.PID_TAG: "not-a-pid", c.HOST_TAG: "host-a"}, None),
        ({c.PID_TAG: "", c.HOST_TAG: "host-a"}, None),
    ],
    ids=["round-trip", "none", "no-host", "no-pid", "bad-pid", "empty-pid"],
)
def test_liveness_from_tags(tags: dict[str, str], liveness: tuple[int, str] | None):
    assert c.liveness_from_tags(tags) == liveness


@pytest.mark.parametrize("patterns", [("Compilation Error", r"failed to \w+"), ()], ids=["patterns", "empty"])
def test_non_retryable_round_trip(patterns: tuple[str, ...]):
    assert c.decode_non_retryable({c.NON_RETRYABLE_TAG: c.encode_non_retryable(patterns)}) == patterns


def test_no_non_retryable_tag_means_no_policy():
    assert c.decode_non_retryable({}) is None


# -- recorded_outcome on what is not the watcher's --------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [None, {}, {"unique_id": "model.shop.orders"}, {c.STATUS_KEY: "not-a-status"}],
    ids=["none", "empty", "no-status", "unknown-status"],
)
def test_recorded_outcome_ignores_foreign_metadata(metadata):
    assert c.recorded_outcome(metadata) is None


def test_recorded_outcome_reads_wrapped_and_plain_values():
    wrapped = {
        c.STATUS_KEY: MetadataValue.text("skipped"),
        c.ERROR_KEY: MetadataValue.text("skipped by dbt"),
        c.SKIPPED_BECAUSE_KEY: MetadataValue.json(["test.shop.t"]),
    }
    plain = {c.STATUS_KEY: "skipped", c.ERROR_KEY: "skipped by dbt", c.SKIPPED_BECAUSE_KEY: ("test.shop.t",)}
    for metadata in (wrapped, plain):
        outcome = c.recorded_outcome(metadata)
        assert outcome == c.RecordedOutcome(NodeStatus.SKIPPED, "skipped by dbt", ("test.shop.t",))
        assert outcome.skipped_by_test


def test_skipped_by_test_only_for_skips_caused_by_tests():
    assert not c.RecordedOutcome(NodeStatus.SKIPPED, skipped_because=("model.shop.a",)).skipped_by_test
    assert not c.RecordedOutcome(NodeStatus.ERROR, skipped_because=("test.shop.t",)).skipped_by_test
    assert c.RecordedOutcome(NodeStatus.SKIPPED, skipped_because=("model.shop.a", "test.shop.t")).skipped_by_test


def test_malformed_skip_cause_is_read_as_none():
    outcome = c.recorded_outcome({c.STATUS_KEY: "skipped", c.SKIPPED_BECAUSE_KEY: "model.shop.a"})
    assert outcome is not None and outcome.skipped_because == ()
