"""Every error dagster-watcher raises: one root under Dagster's ``Failure``, specific subclasses.

Catch :class:`DagsterWatcherError` for anything of this library, :class:`NodesDidNotSucceed` for
"dbt ran, some nodes failed" and :class:`DbtDidNotComplete` for "dbt itself did not run to the end".
Errors about bad input also derive from ``ValueError`` (configuration) or ``RuntimeError`` (a tool
that failed), so code written against the built-in types keeps working.

Example::

    from dagster_watcher.errors import DbtDidNotComplete, NodesDidNotSucceed

    try:
        result = materialize([my_dbt], resources=..., raise_on_error=True)
    except NodesDidNotSucceed as error:
        print("failed nodes:", error.failed_nodes)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dagster import Failure


class DagsterWatcherError(Failure):
    """The root of every error dagster-watcher raises."""


class NodesDidNotSucceed(DagsterWatcherError):
    """dbt ran to the end, and at least one selected node failed, errored, was skipped because of a
    failure, or was never reported. Raised by a producer step after every node's outcome is recorded.

    Args:
        description: one sentence naming the first nodes and why they did not succeed.
        failed_nodes: unique_ids of every node of the step that did not succeed.
        metadata: the step failure's metadata (a table of the failed nodes and the build summary).
        allow_retries: whether Dagster may retry the step (False when every failure is non-retryable).
    """

    def __init__(
        self,
        description: str,
        *,
        failed_nodes: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        allow_retries: bool | None = None,
    ) -> None:
        super().__init__(description=description, metadata=metadata, allow_retries=allow_retries)
        self.failed_nodes = tuple(failed_nodes)


class DbtDidNotComplete(DagsterWatcherError):
    """dbt did not run its graph to the end: it refused to start (bad project, profile or selector),
    crashed, was killed, or was stopped. Nodes it did not report are recorded as ``lost``.

    Args:
        description: what dbt or the process reported.
        mode: the invocation mode (``runner``, ``subprocess``, ``bigquery``).
        metadata: the step failure's metadata.
    """

    def __init__(self, description: str, *, mode: str | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(description=description, metadata=metadata)
        self.mode = mode


class WatcherConfigError(DagsterWatcherError, ValueError):
    """Bad input to a dagster-watcher API (a path, a name, a selection); the text names what to fix."""


class DbtSelectionError(WatcherConfigError):
    """dbt's selector rejected the selection of a build (a bad selector name, a missing state manifest,
    a profile dbt cannot load); the message is dbt's."""


class ManifestPreparationError(DagsterWatcherError, RuntimeError):
    """``dbt parse`` (or ``dbt deps``) failed while preparing the manifest the definitions load."""


class BigQueryWatcherError(DagsterWatcherError):
    """The root of the BigQuery engine's errors."""


class UnsupportedNodeError(BigQueryWatcherError, ValueError):
    """A node needs something the BigQuery engine does not generate (snapshots, custom materializations,
    ingestion-time partitioning)."""


class BigQueryCompileError(BigQueryWatcherError, RuntimeError):
    """``dbt compile`` for the BigQuery engine failed as a whole (no node could be compiled)."""


__all__ = [
    "BigQueryCompileError",
    "BigQueryWatcherError",
    "DagsterWatcherError",
    "DbtDidNotComplete",
    "DbtSelectionError",
    "ManifestPreparationError",
    "NodesDidNotSucceed",
    "UnsupportedNodeError",
    "WatcherConfigError",
]
