"""Retry policy: re-materialize individual dbt nodes that did not succeed, never the whole project.

The truth about what succeeded is the Dagster event log (not a local file), so a retry on another
machine, a consumer sensor and an in-step retry all read the same evidence through
:func:`read_run_outcomes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, RetryPolicy
from dagster import Backoff as DagsterBackoff

from .dagster_events import WATCHER_ERROR_KEY, WATCHER_SKIPPED_BECAUSE_KEY, WATCHER_STATUS_KEY

#: Run tags written on retry runs launched by consumer sensors.
RETRY_OF_TAG = "dagster_watcher/retry_of"
ATTEMPT_TAG = "dagster_watcher/attempt"


@dataclass(frozen=True)
class WatcherRetryPolicy:
    """How failed dbt nodes are retried.

    - ``max_retries``: re-materializations of a failed node after the first attempt.
    - ``delay_seconds`` and ``backoff``: wait ``delay_seconds * backoff ** (attempt - 1)`` after the
      failed run ended before retrying.
    - ``non_retryable``: regular expressions; a node whose dbt error matches one is not retried (a
      compile error fails the same way every time).

    Use it for consumer sensors (``build_watcher_sensors(retry_policy=...)``) and, through
    :meth:`to_dagster`, as the producer op's in-step retry policy.
    """

    max_retries: int = 2
    delay_seconds: float = 0.0
    backoff: float = 1.0
    non_retryable: tuple[str, ...] = (r"Compilation Error", r"Parsing Error", r"failed to compile")

    def is_retryable(self, error: str | None) -> bool:
        return not any(re.search(p, error or "") for p in self.non_retryable)

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return self.delay_seconds * (self.backoff ** max(attempt - 1, 0))

    def to_dagster(self) -> RetryPolicy:
        """The equivalent Dagster op retry policy, for in-step retries of the producer."""
        return RetryPolicy(
            max_retries=self.max_retries,
            delay=self.delay_seconds or None,
            backoff=DagsterBackoff.EXPONENTIAL if self.backoff > 1 else None,
        )


@dataclass
class RunOutcomes:
    """Per-asset and per-check evidence that one run wrote to the event log."""

    planned: set[AssetKey] = field(default_factory=set)
    materialized: set[AssetKey] = field(default_factory=set)
    failures: dict[AssetKey, Mapping[str, object]] = field(default_factory=dict)
    """Watcher observations (status error/skipped/lost) by asset, metadata values unwrapped."""
    checks_done: set[AssetCheckKey] = field(default_factory=set)
    """Checks whose test ran to a verdict (passed, warned or failed); a test that errored is not done."""

    def not_succeeded(self) -> set[AssetKey]:
        return self.planned - self.materialized


def read_run_outcomes(instance: DagsterInstance, run_id: str) -> RunOutcomes:
    """Read what a run recorded per asset and check. Cost grows with that run's size only; it is read
    once per retry decision, never per sensor tick."""
    out = RunOutcomes()
    records = instance.get_records_for_run(
        run_id,
        of_type={
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            DagsterEventType.ASSET_MATERIALIZATION,
            DagsterEventType.ASSET_OBSERVATION,
            DagsterEventType.ASSET_CHECK_EVALUATION,
        },
        limit=1_000_000,
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            status = evaluation.metadata.get(WATCHER_STATUS_KEY)  # type: ignore[union-attr]
            if status is None or status.value != "error":
                out.checks_done.add(evaluation.asset_check_key)  # type: ignore[union-attr]
            continue
        key = event.asset_key
        if key is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            out.planned.add(key)
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            out.materialized.add(key)
            out.failures.pop(key, None)
        else:
            metadata = event.event_specific_data.asset_observation.metadata  # type: ignore[union-attr]
            if WATCHER_STATUS_KEY in metadata and key not in out.materialized:
                out.failures[key] = {k: v.value for k, v in metadata.items()}
    return out


def failure_error(metadata: Mapping[str, object] | None) -> str | None:
    if not metadata:
        return None
    value = metadata.get(WATCHER_ERROR_KEY)
    return str(value) if value is not None else None


def retry_batch(
    outcomes: RunOutcomes,
    policy: WatcherRetryPolicy,
    unique_id_of: Mapping[AssetKey, str],
) -> set[AssetKey]:
    """The assets one retry run should re-materialize after ``outcomes``: every asset of this producer
    that the run planned and did not materialize, except those that would fail the same way again
    (a non-retryable error) or that dbt skipped because of a failing *test* or a non-retryable node
    (re-running them would build on data a test rejected)."""
    candidates = {k for k in outcomes.not_succeeded() if k in unique_id_of}
    blocked_roots: set[str] = set()
    for key in candidates:
        info = outcomes.failures.get(key) or {}
        if info.get(WATCHER_STATUS_KEY) == "error" and not policy.is_retryable(failure_error(info)):
            blocked_roots.add(unique_id_of[key])
    batch: set[AssetKey] = set()
    for key in candidates:
        info = outcomes.failures.get(key) or {}
        if unique_id_of[key] in blocked_roots:
            continue
        if info.get(WATCHER_STATUS_KEY) == "skipped":
            causes = set(_as_list(info.get(WATCHER_SKIPPED_BECAUSE_KEY)))
            if any(c.startswith("test.") or c in blocked_roots for c in causes):
                continue
        batch.add(key)
    return batch


def _as_list(value: object) -> Iterable[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []
