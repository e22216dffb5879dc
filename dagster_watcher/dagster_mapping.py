"""NodeResult -> Dagster event: one :class:`~dagster_watcher.status.NodeResult` becomes at most one
durable Dagster event. This module knows Dagster, not dbt's event format.

- model/seed/snapshot succeeded -> ``Output`` (stored as the asset's materialization)
- test with an asset check -> ``AssetCheckResult`` (passed, severity, failure count)
- model/seed/snapshot failed, skipped because an upstream failed, or lost -> ``AssetObservation``
  carrying dbt's error text (or the failed upstream), so the outcome of *that* asset is in the event
  log where the UI and the consumer sensors look for it (OSS storage drops
  ``ASSET_FAILED_TO_MATERIALIZE`` events, so an observation is the durable record).

In a partitioned step every asset outcome is per partition: an ``Output`` materializes each partition
of the step (Dagster writes one materialization per key), a failure is one observation per key, and a
microbatch model whose batches failed in some partitions only is a materialization of each partition
that was built and an observation of each that was not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    MetadataValue,
    Output,
)

from . import contract as c
from .partitions import StepPartitions, partitions_of_batches
from .status import NodeResult, NodeStatus, node_name

DagsterNodeEvent = Output[None] | AssetCheckResult | AssetObservation | AssetMaterialization


@dataclass(frozen=True)
class NodeTarget:
    """Where a dbt node's outcome goes in Dagster."""

    unique_id: str
    asset_key: AssetKey | None = None
    output_name: str | None = None
    check_key: AssetCheckKey | None = None
    check_severity: str = "error"
    observe_keys: tuple[AssetKey, ...] = ()
    """For a test with no asset check (or a unit test): the assets its verdict is observed on."""
    test_name: str | None = None
    table_name: str | None = None
    """The asset's ``dagster/table_name`` as its definition states it (dagster-dbt's translator)."""


def _dagster_dbt_metadata(result: NodeResult) -> dict[str, Any]:
    """The keys dagster-dbt writes by default on a node's event, under its names: its execution
    duration and dbt's status (``unique_id``/``invocation_id`` are in :func:`_common_metadata`), and
    for a test the failing row count."""
    metadata: dict[str, Any] = {c.DBT_NODE_STATUS_KEY: result.dbt_status}
    if result.execution_time is not None:
        metadata[c.DBT_EXECUTION_DURATION_KEY] = MetadataValue.float(float(result.execution_time))
    if result.failures is not None:
        metadata[c.DBT_FAILED_ROW_COUNT_KEY] = int(result.failures)
    return metadata


def _common_metadata(result: NodeResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        c.UNIQUE_ID_KEY: result.unique_id,
        c.DBT_STATUS_KEY: result.dbt_status,
        c.STATUS_KEY: result.status.value,
    }
    if result.invocation_id:
        metadata[c.INVOCATION_ID_KEY] = result.invocation_id
    if result.execution_time is not None:
        metadata[c.EXECUTION_DURATION_KEY] = MetadataValue.float(float(result.execution_time))
    if result.started_at is not None:
        metadata[c.STARTED_AT_KEY] = result.started_at.isoformat()
    if result.completed_at is not None:
        metadata[c.COMPLETED_AT_KEY] = result.completed_at.isoformat()
    return metadata


#: adapter_response keys that are also shown as top-level metadata when present (dbt-bigquery's
#: response and the BigQuery engine's both carry them).
_TOP_LEVEL_RESPONSE_KEYS = ("job_id", "statement_type", "bytes_processed", "bytes_billed", "slot_ms")


def _response_metadata(response: dict[str, Any]) -> dict[str, Any]:
    """Readable top-level entries for the warehouse job(s) behind a node, where the adapter said."""
    metadata: dict[str, Any] = {}
    for key in _TOP_LEVEL_RESPONSE_KEYS:
        value = response.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            metadata[key] = MetadataValue.int(value)
        elif isinstance(value, str):
            metadata[key] = value
    job_ids = response.get("job_ids")
    if isinstance(job_ids, list) and len(job_ids) > 1:
        metadata["job_ids"] = MetadataValue.json(job_ids)
    link = response.get("job_link")
    if isinstance(link, str) and link.startswith(("https://", "http://")):
        metadata["job_link"] = MetadataValue.url(link)
    return metadata


def _success_metadata(result: NodeResult, target: NodeTarget) -> dict[str, Any]:
    metadata = {**_dagster_dbt_metadata(result), **_common_metadata(result)}
    if target.table_name:
        metadata[c.TABLE_NAME_KEY] = target.table_name
    response = {k: v for k, v in result.adapter_response.items() if v not in (None, "")}
    if response:
        metadata[c.ADAPTER_RESPONSE_KEY] = MetadataValue.json(response)
        rows = response.get("rows_affected")
        # dbt reports it as a float (73.0) in both modes; a whole non-negative number is a row count.
        if isinstance(rows, int | float) and not isinstance(rows, bool) and rows >= 0 and float(rows).is_integer():
            metadata[c.ROWS_AFFECTED_KEY] = int(rows)
        metadata.update(_response_metadata(response))
    if result.relation_name:
        metadata[c.RELATION_NAME_KEY] = result.relation_name
    if result.compiled_code:
        metadata[c.COMPILED_SQL_KEY] = MetadataValue.md(f"```sql\n{result.compiled_code.strip()}\n```")
    metadata.update(result.runtime_metadata)
    return metadata


def describe_failure(result: NodeResult) -> str:
    """One human sentence for a node that did not succeed (used in events, logs and the step error)."""
    if result.status is NodeStatus.SKIPPED:
        if result.skipped_because:
            upstream = ", ".join(node_name(u) for u in result.skipped_because)
            return f"skipped by dbt because upstream {upstream} failed"
        return result.message or "skipped by dbt because an upstream node failed"
    if result.status is NodeStatus.NOT_SELECTED:
        return f"not selected by dbt in this run: {result.message}" if result.message else "not selected by dbt"
    if result.status is NodeStatus.PARTIAL_SUCCESS:
        batches = ", ".join(result.failed_batches) or "some batches"
        return result.message or f"microbatch model built partially; failed batches: {batches}"
    if result.status is NodeStatus.LOST:
        return result.message or "no outcome reported by dbt"
    return result.message or f"dbt status {result.dbt_status!r} without an error message"


def _not_selected_metadata(result: NodeResult) -> dict[str, Any]:
    metadata = _common_metadata(result)
    metadata[c.REASON_KEY] = MetadataValue.text(result.message or "")
    return metadata


def _test_verdict_metadata(result: NodeResult, test_name: str) -> dict[str, Any]:
    metadata = {**_dagster_dbt_metadata(result), **_common_metadata(result)}
    metadata[c.TEST_KEY] = test_name
    if result.failures is not None:
        metadata[c.FAILURE_COUNT_KEY] = int(result.failures)
    if result.status is NodeStatus.ERROR and result.message:
        metadata[c.ERROR_KEY] = MetadataValue.text(result.message)
    return metadata


def to_dagster_events(
    result: NodeResult,
    target: NodeTarget,
    partitions: StepPartitions | None = None,
    batch_size: str | None = None,
) -> list[DagsterNodeEvent]:
    """The durable Dagster events for a node outcome (usually exactly one):

    - an asset check result for a test with a check (none for a skipped or lost test: an unexecuted
      check is left without a result rather than shown as passed or failed);
    - a materialization (``Output``) for a model/seed/snapshot that was built;
    - one observation for an asset that failed, was skipped, was lost or was not selected;
    - one observation per parent asset for a test that is not an asset check, and on its model for a
      unit test (its verdict, marked with the test's name);
    - one observation on the check's asset for a check dbt's selection left out.

    ``partitions`` are the step's (None: unpartitioned); ``batch_size`` is a microbatch model's, to place
    its failed batches in the partitions.
    """
    if target.check_key is not None:
        return [e for e in [_check_event(result, target)] if e is not None]
    if target.observe_keys:
        if not result.status.ran:
            return []
        description = describe_failure(result) if result.status.is_failure else None
        return [
            AssetObservation(
                asset_key=key,
                description=description,
                metadata=_test_verdict_metadata(result, target.test_name or node_name(result.unique_id)),
            )
            for key in target.observe_keys
        ]
    if target.asset_key is None or target.output_name is None:
        return []
    keys: tuple[str | None, ...] = partitions.keys if partitions is not None else (None,)
    if result.status.materializes:
        failed = (
            partitions_of_batches(partitions, result.failed_batches, batch_size)
            if partitions is not None and result.failed_batches
            else None
        )
        if failed:
            return _per_partition_outcome(result, target, keys, failed)
        metadata = _success_metadata(result, target)
        if result.failed_batches:
            metadata[c.FAILED_BATCHES_KEY] = MetadataValue.json(list(result.failed_batches))
        return [Output(value=None, output_name=target.output_name, metadata=metadata)]
    description = describe_failure(result)
    if result.status is NodeStatus.NOT_SELECTED:
        return [
            AssetObservation(
                asset_key=target.asset_key,
                description=description,
                metadata=_not_selected_metadata(result),
                partition=key,
            )
            for key in keys
        ]
    metadata = _failure_metadata(result, description)
    return [
        AssetObservation(asset_key=target.asset_key, description=description, metadata=metadata, partition=key)
        for key in keys
    ]


def _failure_metadata(result: NodeResult, description: str) -> dict[str, Any]:
    metadata = _common_metadata(result)
    metadata[c.ERROR_KEY] = MetadataValue.text(description)
    metadata.update(_response_metadata(dict(result.adapter_response)))  # the failed job, if any
    if result.skipped_because:
        metadata[c.SKIPPED_BECAUSE_KEY] = MetadataValue.json(list(result.skipped_because))
    return metadata


def _per_partition_outcome(
    result: NodeResult, target: NodeTarget, keys: tuple[str | None, ...], failed: frozenset[str]
) -> list[DagsterNodeEvent]:
    """A microbatch model of a partitioned step whose failed batches lie in ``failed``: each other
    partition is materialized (it was built), each failed one gets the error observation."""
    description = describe_failure(result)
    built = dataclasses.replace(result, status=NodeStatus.SUCCESS)
    success = _success_metadata(built, target)
    asset_key = target.asset_key
    assert asset_key is not None
    failure = _failure_metadata(dataclasses.replace(result, status=NodeStatus.ERROR), description)
    failure[c.FAILED_BATCHES_KEY] = MetadataValue.json(list(result.failed_batches))
    events: list[DagsterNodeEvent] = []
    for key in keys:
        if key in failed:
            events.append(
                AssetObservation(asset_key=asset_key, description=description, metadata=failure, partition=key)
            )
        else:
            events.append(AssetMaterialization(asset_key=asset_key, metadata=success, partition=key))
    return events


def _check_event(result: NodeResult, target: NodeTarget) -> DagsterNodeEvent | None:
    assert target.check_key is not None
    if result.status is NodeStatus.NOT_SELECTED:
        metadata = _not_selected_metadata(result)
        metadata[c.TEST_KEY] = target.check_key.name
        return AssetObservation(
            asset_key=target.check_key.asset_key,
            description=f"check {target.check_key.name}: {describe_failure(result)}",
            metadata=metadata,
        )
    if not result.status.ran:
        return None
    metadata = {**_dagster_dbt_metadata(result), **_common_metadata(result)}
    if result.failures is not None:
        metadata[c.FAILURE_COUNT_KEY] = int(result.failures)
    if result.status is NodeStatus.ERROR and result.message:
        metadata[c.ERROR_KEY] = MetadataValue.text(result.message)
    if result.status is NodeStatus.WARN:
        severity = AssetCheckSeverity.WARN
    elif result.status in (NodeStatus.FAIL, NodeStatus.ERROR):
        severity = AssetCheckSeverity.ERROR
    else:
        severity = AssetCheckSeverity.WARN if target.check_severity == "warn" else AssetCheckSeverity.ERROR
    return AssetCheckResult(
        asset_key=target.check_key.asset_key,
        check_name=target.check_key.name,
        passed=result.status is NodeStatus.SUCCESS,
        severity=severity,
        metadata=metadata,
        description=result.message if not result.status.succeeded else None,
    )
