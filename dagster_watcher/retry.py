"""Retry policy: re-materialize individual dbt nodes that did not succeed, never the whole project.

The truth about what succeeded is the Dagster event log (not a local file), so a retry on another
machine, a consumer sensor and an in-step retry all read the same evidence through
:func:`read_run_outcomes`. Deciding is pure: :func:`retry_batch` (which nodes one retry run gets) and
:func:`decide_retry` (what one consumer does about its node) take facts and return a verdict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import Enum

from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, RetryPolicy
from dagster import Backoff as DagsterBackoff

from . import contract
from .contract import RecordedOutcome
from .status import NodeStatus


@dataclass(frozen=True)
class WatcherRetryPolicy:
    """How failed dbt nodes are retried.

    Args:
        max_retries: re-materializations of a failed node after the first attempt.
        delay_seconds: wait ``delay_seconds * backoff ** (attempt - 1)`` after the failed run ended.
        backoff: see ``delay_seconds``.
        non_retryable: regular expressions; a node whose dbt error matches one is not retried (a
            compile error, a missing profile or target, an unset env var or a refused connection
            fail the same way every time). The defaults are dbt-core's own messages.
        retry_terminated: retry the nodes of a run a user terminated (CANCELED). Off by default: a
            user who stops a run expects it to stay stopped.

    Use it for consumer sensors (``build_watcher_sensors(retry_policy=...)``) and, through
    :meth:`to_dagster`, as the producer op's in-step retry policy.

    Example::

        build_watcher_sensors(my_dbt, retry_policy=WatcherRetryPolicy(max_retries=3, delay_seconds=60))
    """

    max_retries: int = 2
    delay_seconds: float = 0.0
    backoff: float = 1.0
    non_retryable: tuple[str, ...] = (
        r"Compilation Error",
        r"Parsing Error",
        r"failed to compile",
        # dbt-core's profile/target/env errors (dbt/config/profile.py, dbt/exceptions.py,
        # dbt_common's env_var): a run with the same profile fails the same way again.
        r"Could not find profile named",
        r"does not have a target named",
        r"Env var required but not provided",
        r"dbt encountered an error while trying to read your profiles\.yml",
        r"outputs not specified in profile",
        # Connection classes (psycopg2/libpq, socket errors surfaced through FailedToConnectError).
        r"Connection refused",
        r"password authentication failed",
        r"could not translate host name",
        r"Name or service not known",
    )
    retry_terminated: bool = False

    def is_retryable(self, error: str | None) -> bool:
        """False when ``error`` matches one of the ``non_retryable`` patterns."""
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


def policy_from_tags(tags: Mapping[str, object]) -> WatcherRetryPolicy:
    """The retry policy the producer op was defined with (default policy when none was given)."""
    patterns = contract.decode_non_retryable(tags)
    return WatcherRetryPolicy(non_retryable=patterns) if patterns is not None else WatcherRetryPolicy()


@dataclass
class RunOutcomes:
    """Per-asset and per-check evidence that one run wrote to the event log.

    For a partitioned run an asset counts as materialized only when every partition the run planned
    for it was materialized; the partitions are in ``planned_partitions``/``materialized_partitions``."""

    planned: set[AssetKey] = field(default_factory=set)
    materialized: set[AssetKey] = field(default_factory=set)
    failures: dict[AssetKey, RecordedOutcome] = field(default_factory=dict)
    """The watcher's record of each asset that did not materialize (error, skipped, lost); for a
    partitioned run, the record of one of its partitions that did not."""
    checks_done: set[AssetCheckKey] = field(default_factory=set)
    """Checks whose test ran to a verdict (passed, warned or failed); a test that errored is not done."""
    planned_partitions: dict[AssetKey, set[str]] = field(default_factory=dict)
    """The partitions the run planned, per asset (none for an unpartitioned run)."""
    materialized_partitions: dict[AssetKey, set[str]] = field(default_factory=dict)

    def not_succeeded(self) -> set[AssetKey]:
        return self.planned - self.materialized

    def not_succeeded_partitions(self, key: AssetKey) -> frozenset[str]:
        """The partitions of ``key`` the run planned and did not materialize (none when unpartitioned)."""
        return frozenset(self.planned_partitions.get(key, set()) - self.materialized_partitions.get(key, set()))


def read_run_outcomes(instance: DagsterInstance, run_id: str) -> RunOutcomes:
    """Read what a run recorded per asset (and partition) and check. Cost grows with that run's size
    only; it is read once per retry decision, never per sensor tick."""
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
    partition_failures: dict[AssetKey, dict[str, RecordedOutcome]] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            recorded = contract.recorded_outcome(evaluation.metadata)  # type: ignore[union-attr]
            if recorded is None or recorded.status is not NodeStatus.ERROR:
                out.checks_done.add(evaluation.asset_check_key)  # type: ignore[union-attr]
            continue
        key = event.asset_key
        if key is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            out.planned.add(key)
            planned = event.event_specific_data
            subset = getattr(planned, "partitions_subset", None)
            partition = getattr(planned, "partition", None)
            if subset is not None:
                out.planned_partitions.setdefault(key, set()).update(subset.get_partition_keys())
            elif partition is not None:
                out.planned_partitions.setdefault(key, set()).add(str(partition))
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
            recorded = contract.recorded_outcome(materialization.metadata)
            partial = recorded is not None and recorded.status is NodeStatus.PARTIAL_SUCCESS
            if materialization.partition is not None:
                if partial:
                    partition_failures.setdefault(key, {})[materialization.partition] = recorded  # type: ignore[assignment]
                else:
                    out.materialized_partitions.setdefault(key, set()).add(materialization.partition)
                    partition_failures.get(key, {}).pop(materialization.partition, None)
                continue
            if partial:
                # Written, but with failed batches: still to be re-run.
                out.failures[key] = recorded  # type: ignore[assignment]
                continue
            out.materialized.add(key)
            out.failures.pop(key, None)
        else:
            observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
            recorded = contract.recorded_outcome(observation.metadata)
            if recorded is None:
                continue
            if observation.partition is not None:
                if observation.partition not in out.materialized_partitions.get(key, set()):
                    partition_failures.setdefault(key, {})[observation.partition] = recorded
            elif key not in out.materialized:
                out.failures[key] = recorded
    for key, partitions in out.planned_partitions.items():
        # A partitioned asset is materialized when each partition the run planned is.
        if partitions <= out.materialized_partitions.get(key, set()):
            out.materialized.add(key)
            out.failures.pop(key, None)
            continue
        failed = partition_failures.get(key, {})
        for partition in sorted(partitions - out.materialized_partitions.get(key, set())):
            if partition in failed:
                out.failures.setdefault(key, failed[partition])
                break
    return out


def retry_batch(
    outcomes: RunOutcomes,
    policy: WatcherRetryPolicy,
    unique_id_of: Mapping[AssetKey, str],
) -> set[AssetKey]:
    """The assets one retry run should re-materialize after ``outcomes``: every asset of this producer
    that the run planned and did not materialize, except those that would fail the same way again
    (a non-retryable error) or that dbt skipped because of a failing *test* or a non-retryable node
    (re-running them would build on data a test rejected)."""
    candidates = {
        k
        for k in outcomes.not_succeeded()
        if k in unique_id_of
        and not ((recorded := outcomes.failures.get(k)) is not None and recorded.status is NodeStatus.NOT_SELECTED)
    }
    blocked_roots = {
        unique_id_of[key]
        for key in candidates
        if (recorded := outcomes.failures.get(key)) is not None
        and recorded.status in _CHECKED_ERRORS
        and not policy.is_retryable(recorded.error)
    }
    batch: set[AssetKey] = set()
    for key in candidates:
        if unique_id_of[key] in blocked_roots:
            continue
        recorded = outcomes.failures.get(key)
        if recorded is not None and (
            recorded.skipped_by_test or any(c in blocked_roots for c in recorded.skipped_because)
        ):
            continue
        batch.add(key)
    return batch


#: The Dagster status of a run a user terminated.
TERMINATED_STATUS = "CANCELED"
#: Outcomes whose error text is matched against ``non_retryable``: dbt's own errors, and lost nodes
#: (their text carries the cause when the producer knows it, e.g. a profile error before any node ran).
_CHECKED_ERRORS = frozenset({NodeStatus.ERROR, NodeStatus.LOST})


# --------------------------------------------------------------------------------------------------
# One consumer's decision


class RetryAction(Enum):
    WAIT = "wait"
    """Nothing to do yet (the run is going on, or the retry delay has not passed); ask again later."""
    SETTLE = "settle"
    """Nothing (more) to do for this run: remember it as settled."""
    REQUEST = "request"
    """Request the retry run of ``batch`` (this consumer leads the batch); then settle."""


@dataclass(frozen=True)
class RetryFacts:
    """What a consumer knows about its asset in the latest run that planned it."""

    asset: AssetKey
    run_id: str
    run_status: str
    """The run's Dagster status value (``SUCCESS``, ``FAILURE``, ``STARTED``...)."""
    in_progress: bool
    materialized: bool
    recorded: RecordedOutcome | None
    """The producer's record for the asset (None: nothing recorded, i.e. lost)."""
    attempt: int
    """Consumer retries that led to this run."""
    seconds_since_end: float
    """How long ago the run ended (0 while it is going on)."""


@dataclass(frozen=True)
class RetryVerdict:
    action: RetryAction
    reason: str
    batch: frozenset[AssetKey] = frozenset()
    attempt: int = 0
    """The attempt number of the requested retry."""


def decide_retry(
    facts: RetryFacts,
    policy: WatcherRetryPolicy | None,
    batch_of_run: Callable[[], AbstractSet[AssetKey]],
) -> RetryVerdict:
    """What one consumer does about its asset, from ``facts`` alone.

    ``batch_of_run`` returns the run's retry batch (:func:`retry_batch`); it is called only once the
    node is known to be retryable. ``REQUEST`` means the node is due for a retry: the producer's
    retry coordinator (:func:`decide_run_retry`) requests it, once per failed run, for the whole batch.

    Example::

        verdict = decide_retry(facts, WatcherRetryPolicy(), lambda: {AssetKey("orders")})
        assert verdict.action is RetryAction.REQUEST
    """
    name, run = facts.asset.to_user_string(), facts.run_id[:8]
    if facts.materialized:
        return RetryVerdict(RetryAction.SETTLE, f"{name}: materialized by run {run}.")
    if facts.in_progress:
        what = "failed" if facts.recorded is not None else "not reported yet"
        return RetryVerdict(
            RetryAction.WAIT, f"{name}: {what} in run {run}, which is still in progress; waiting for it to end."
        )
    if facts.recorded is not None and facts.recorded.status is NodeStatus.NOT_SELECTED:
        return RetryVerdict(
            RetryAction.SETTLE,
            f"{name}: not selected by dbt in run {run} ({facts.recorded.reason or 'no reason given'}); not retried.",
        )
    if facts.recorded is not None:
        status, error = facts.recorded.status, facts.recorded.error or ""
    else:
        status, error = NodeStatus.LOST, f"run {run} ended ({facts.run_status}) without reporting {name}"

    if policy is None:
        return RetryVerdict(RetryAction.SETTLE, f"{name}: {status} in run {run} ({error}); retries are disabled.")
    if facts.attempt >= policy.max_retries:
        plural = "y" if facts.attempt == 1 else "ies"
        return RetryVerdict(
            RetryAction.SETTLE,
            f"{name}: {status} after {facts.attempt} retr{plural} (limit {policy.max_retries}): {error}",
        )
    if facts.run_status == TERMINATED_STATUS and not policy.retry_terminated:
        return RetryVerdict(
            RetryAction.SETTLE,
            f"{name}: {status} in run {run}, which was terminated; not retried (retry_terminated=False).",
        )
    if status in _CHECKED_ERRORS and not policy.is_retryable(error):
        return RetryVerdict(RetryAction.SETTLE, f"{name}: not retried, the error is not retryable: {error}")
    wait = policy.delay_for(facts.attempt + 1) - facts.seconds_since_end
    if wait > 0:
        return RetryVerdict(
            RetryAction.WAIT, f"{name}: {status} in run {run}; retry {facts.attempt + 1} in {wait:.0f}s."
        )

    batch = frozenset(batch_of_run())
    if facts.asset not in batch:
        return RetryVerdict(
            RetryAction.SETTLE,
            f"{name}: {status} in run {run}, but dbt skipped it because of a failed test or a non-retryable "
            "node; not retried.",
        )
    return RetryVerdict(
        RetryAction.REQUEST,
        f"{name}: {status} in run {run}; due for one re-materialization of the run's {len(batch)} unfinished node(s).",
        batch=batch,
        attempt=facts.attempt + 1,
    )


# --------------------------------------------------------------------------------------------------
# The producer's retry coordinator: one decision per failed run


@dataclass(frozen=True)
class RunRetryFacts:
    """What the retry coordinator knows about one finished run of its producer."""

    run_id: str
    run_status: str
    """The run's Dagster status value (``FAILURE``, ``CANCELED``...)."""
    attempt: int
    """Consumer retries that led to this run."""
    seconds_since_end: float
    batch: frozenset[AssetKey]
    """:func:`retry_batch` of the run, less what a later run planned or materialized since."""
    busy: Mapping[AssetKey, str] = field(default_factory=dict)
    """Assets of ``batch`` that a run still in progress planned, with that run's id."""


def decide_run_retry(facts: RunRetryFacts, policy: WatcherRetryPolicy | None) -> RetryVerdict:
    """What the retry coordinator does about one finished run: request ONE retry run of its batch,
    wait, or settle it for good. Never while a run in progress planned any node of the batch (two
    builds of a node at once), never for a run a user terminated unless ``retry_terminated``.

    Example::

        facts = RunRetryFacts("0123abcd", "FAILURE", 0, 5.0, frozenset({AssetKey("orders")}))
        assert decide_run_retry(facts, WatcherRetryPolicy()).action is RetryAction.REQUEST
    """
    run = facts.run_id[:8]
    if policy is None:
        return RetryVerdict(RetryAction.SETTLE, f"run {run}: retries are disabled.")
    if facts.run_status == TERMINATED_STATUS and not policy.retry_terminated:
        return RetryVerdict(RetryAction.SETTLE, f"run {run} was terminated; not retried (retry_terminated=False).")
    if not facts.batch:
        return RetryVerdict(RetryAction.SETTLE, f"run {run}: nothing left to retry.")
    if facts.attempt >= policy.max_retries:
        return RetryVerdict(
            RetryAction.SETTLE,
            f"run {run}: {len(facts.batch)} node(s) did not succeed after {facts.attempt} retries "
            f"(limit {policy.max_retries}).",
        )
    if facts.busy:
        runs = sorted({r[:8] for r in facts.busy.values()})
        names = sorted(k.to_user_string() for k in facts.busy)
        return RetryVerdict(
            RetryAction.WAIT,
            f"run {run}: waiting for run(s) {', '.join(runs)} in progress, which planned {len(names)} node(s) of "
            f"its retry batch ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}).",
        )
    wait = policy.delay_for(facts.attempt + 1) - facts.seconds_since_end
    if wait > 0:
        return RetryVerdict(RetryAction.WAIT, f"run {run}: retry {facts.attempt + 1} in {wait:.0f}s.")
    return RetryVerdict(
        RetryAction.REQUEST,
        f"run {run}: requesting one re-materialization of its {len(facts.batch)} unfinished node(s).",
        batch=facts.batch,
        attempt=facts.attempt + 1,
    )
