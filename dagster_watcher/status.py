"""The vocabulary both sides share: a node's terminal :class:`NodeStatus` and its :class:`NodeResult`.

Producers (the dbt-event normaliser, the BigQuery engine) make results; the Dagster mapping writes
them; consumers read the status back (``contract.recorded_outcome``). Status is this enum end to end:
nothing compares status strings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class NodeStatus(enum.StrEnum):
    """The terminal outcome of one dbt node, normalised across dbt versions and invocation modes.

    Example::

        if result.status.succeeded: ...
        if result.status in NodeStatus.blocking(): ...
    """

    SUCCESS = "success"
    """A model/seed/snapshot was built, or a test passed."""
    WARN = "warn"
    """A test with ``severity: warn`` found failing rows (the node itself ran)."""
    FAIL = "fail"
    """A test with ``severity: error`` found failing rows."""
    ERROR = "error"
    """The node errored: database error, compile error, runtime exception."""
    SKIPPED = "skipped"
    """dbt skipped the node because an upstream node failed."""
    LOST = "lost"
    """dbt never reported an outcome for a node it should have run (dbt crashed, was killed or stopped)."""
    NOT_SELECTED = "not_selected"
    """dbt's selection for this invocation leaves the node out (a user ``--exclude``, ``state:modified``,
    a stale source...). Not a failure: never retried, never shown as materialized."""
    PARTIAL_SUCCESS = "partial_success"
    """A microbatch model built some batches and failed others: materialized, but dbt skips its
    descendants and the failed batches still need a run."""

    @property
    def succeeded(self) -> bool:
        """The node did all its work (a warning test still ran)."""
        return self in _SUCCEEDED

    @property
    def materializes(self) -> bool:
        """The node's relation was written (a success, or a microbatch model's partial success)."""
        return self in _SUCCEEDED or self is NodeStatus.PARTIAL_SUCCESS

    @property
    def is_failure(self) -> bool:
        """The node should have done its work and did not: fails the step, may be retried."""
        return self not in _SUCCEEDED and self is not NodeStatus.NOT_SELECTED

    @property
    def blocks_descendants(self) -> bool:
        """dbt skips a node's descendants after this outcome (a skip is a consequence, never a cause)."""
        return self in _BLOCKING

    @property
    def ran(self) -> bool:
        """dbt executed the node to a verdict of its own (not skipped, not lost)."""
        return self in _RAN

    @classmethod
    def succeeded_statuses(cls) -> frozenset[NodeStatus]:
        return _SUCCEEDED

    @classmethod
    def blocking(cls) -> frozenset[NodeStatus]:
        return _BLOCKING

    @classmethod
    def parse(cls, value: object) -> NodeStatus | None:
        """The status a stored value names, or None when it names none (an event from elsewhere)."""
        try:
            return cls(str(value))
        except ValueError:
            return None


_SUCCEEDED = frozenset({NodeStatus.SUCCESS, NodeStatus.WARN})
_BLOCKING = frozenset({NodeStatus.ERROR, NodeStatus.FAIL, NodeStatus.LOST, NodeStatus.PARTIAL_SUCCESS})
_RAN = frozenset({NodeStatus.SUCCESS, NodeStatus.WARN, NodeStatus.FAIL, NodeStatus.ERROR, NodeStatus.PARTIAL_SUCCESS})


@dataclass(frozen=True)
class NodeResult:
    """One dbt node's terminal outcome, as reported by dbt (or by an engine that runs compiled SQL)."""

    unique_id: str
    resource_type: str
    status: NodeStatus
    dbt_status: str
    message: str | None = None
    execution_time: float | None = None
    adapter_response: Mapping[str, Any] = field(default_factory=dict)
    failures: int | None = None
    compiled_code: str | None = None
    relation_name: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    thread: str | None = None
    invocation_id: str | None = None
    skipped_because: tuple[str, ...] = ()
    """unique_ids of the failed upstream nodes that made dbt skip this node."""
    failed_batches: tuple[str, ...] = ()
    """A microbatch model's batches that failed or were skipped (their starts, ISO 8601 in UTC), on a partial
    success."""
    runtime_metadata: Mapping[str, Any] = field(default_factory=dict)
    """Metadata read from the warehouse after the node was built, when the build asked for it
    (dagster-dbt's ``dagster/row_count``, ``dagster/column_schema``, ``dagster/column_lineage``)."""


LOST_MESSAGE = "dbt exited without reporting an outcome for this node (dbt crashed, was stopped, or never started it)."


def lost_result(unique_id: str, manifest: Mapping[str, Any], invocation_id: str | None = None) -> NodeResult:
    """The outcome of a selected node that nothing ever reported: never success, never silent."""
    return _unreported(unique_id, manifest, NodeStatus.LOST, "not reported", LOST_MESSAGE, invocation_id)


def not_selected_result(unique_id: str, manifest: Mapping[str, Any], reason: str) -> NodeResult:
    """A planned node that dbt's selection for this invocation leaves out."""
    return _unreported(unique_id, manifest, NodeStatus.NOT_SELECTED, "not selected", reason, None)


def _unreported(
    unique_id: str,
    manifest: Mapping[str, Any],
    status: NodeStatus,
    dbt_status: str,
    message: str,
    invocation_id: str | None,
) -> NodeResult:
    node = (manifest.get("nodes") or {}).get(unique_id) or {}
    return NodeResult(
        unique_id=unique_id,
        resource_type=node.get("resource_type", resource_type_of(unique_id)),
        status=status,
        dbt_status=dbt_status,
        message=message,
        relation_name=node.get("relation_name"),
        invocation_id=invocation_id,
    )


def is_test(unique_id: str) -> bool:
    """A data test or a unit test (its outcome gates the models after it)."""
    return unique_id.startswith(("test.", "unit_test."))


def resource_type_of(unique_id: str) -> str:
    """``model.shop.orders`` -> ``model``: dbt's unique_ids start with the resource type."""
    return unique_id.split(".", 1)[0]


def node_name(unique_id: str) -> str:
    """``model.shop.stg_orders`` -> ``stg_orders`` (tests: their name without the hash; unit tests,
    ``unit_test.<package>.<model>.<name>``: their name; sources: ``<source>.<table>``)."""
    parts = unique_id.split(".")
    if parts[0] == "unit_test" and len(parts) > 3:
        return parts[-1]
    if parts[0] == "source" and len(parts) > 3:
        return f"{parts[2]}.{parts[3]}"
    return parts[2] if len(parts) > 2 else unique_id
