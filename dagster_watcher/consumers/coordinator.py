"""The producer's retry coordinator: ONE sensor per producer that decides each finished failed run's
retry batch exactly once (run key per failed run), so a newer run that planned a single node can
never swallow another run's batch, and no retry starts while ANY run in progress planned a node of it.

Per tick: end STARTED runs whose producer is dead (:mod:`._liveness`), pick up runs that finished
failed or terminated since the last tick, and for each pending one gather facts for the pure
:func:`~dagster_watcher.retry.decide_run_retry`.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    PartitionsDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
)

from .. import contract
from .._compat import sensor_instance
from ..partitions import contiguous_ranges, keys_in_range
from ..retry import RetryAction, RunOutcomes, RunRetryFacts, WatcherRetryPolicy, decide_run_retry, retry_batch
from ._downstream import WatchedAsset, downstream_requests
from ._liveness import end_if_dead
from ._reads import Entry, SharedReads, read_entries

_IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
_FINISHED_FAILED = [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
#: A new (or reset) coordinator looks back at this many failed runs, not the whole history; runs
#: whose nodes were rebuilt since settle with nothing to retry.
_FIRST_LOOK_BACK = 20
_PAGE = 100
_REMEMBERED = 200
_PLANNED_CACHE = 64


@dataclass
class _CoordinatorCursor:
    updated_after: float = 0.0
    """Update time of the newest finished run picked up."""
    pending: list[str] = field(default_factory=list)
    """Finished failed runs of this producer still waiting (delay, or a run in progress)."""
    decided: list[str] = field(default_factory=list)
    """Runs already decided (newest last), so an update of their record decides nothing twice."""
    materializations: dict[str, int] = field(default_factory=dict)
    """Per-producer shape: per asset with downstream jobs, the storage id of the last materialization
    whose downstream runs were requested."""

    @classmethod
    def load(cls, raw: str | None) -> _CoordinatorCursor | None:
        if not raw:
            return None
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class _Planned:
    """Which of this producer's assets each run planned (written when the run is created, so read
    once per run)."""

    def __init__(self, keys: frozenset[AssetKey]) -> None:
        self._keys = keys
        self._cache: OrderedDict[str, frozenset[AssetKey]] = OrderedDict()

    def of(self, instance: Any, run_id: str) -> frozenset[AssetKey]:
        cached = self._cache.get(run_id)
        if cached is not None:
            return cached
        records = instance.get_records_for_run(
            run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=1_000_000
        ).records
        planned = frozenset(
            k
            for r in records
            if r.event_log_entry.dagster_event is not None
            and (k := r.event_log_entry.dagster_event.asset_key) is not None
            and k in self._keys
        )
        self._cache[run_id] = planned
        while len(self._cache) > _PLANNED_CACHE:
            self._cache.popitem(last=False)
        return planned


def build_coordinator(
    name: str,
    keys: frozenset[AssetKey],
    unique_id_of: Mapping[AssetKey, str],
    retry_job_def: Any,
    policy: WatcherRetryPolicy | None,
    shared: SharedReads,
    *,
    heartbeat_timeout: float,
    minimum_interval_seconds: int,
    default_status: DefaultSensorStatus,
    partitions_def: PartitionsDefinition | None = None,
    downstream: Sequence[WatchedAsset] = (),
    downstream_jobs: Sequence[Any] = (),
) -> SensorDefinition:
    """The coordinator sensor. With ``downstream`` (the per-producer shape, ``per_model=False``) it
    also launches the downstream jobs of those assets, reading their entries from ``shared``."""
    planned = _Planned(keys)
    retry_job = retry_job_def.name
    with_jobs = [w for w in downstream if w.downstream_jobs]

    def evaluate(context: SensorEvaluationContext) -> SensorResult:
        instance = sensor_instance(context)
        cursor = _CoordinatorCursor.load(context.cursor)
        first = cursor is None
        cursor = cursor or _CoordinatorCursor()
        in_progress: dict[str, Mapping[str, str]] = {}
        """Runs in progress that planned an asset of this producer, with their tags."""
        for record in instance.get_run_records(filters=RunsFilter(statuses=_IN_PROGRESS)):
            run = record.dagster_run
            if not planned.of(instance, run.run_id):
                continue
            if end_if_dead(instance, run, heartbeat_timeout):
                continue  # failed now: picked up below as a finished run
            in_progress[run.run_id] = run.tags

        if first:
            found = instance.get_run_records(
                filters=RunsFilter(statuses=_FINISHED_FAILED), limit=_FIRST_LOOK_BACK, order_by="update_timestamp"
            )[::-1]
        else:
            found = instance.get_run_records(
                filters=RunsFilter(
                    statuses=_FINISHED_FAILED,
                    updated_after=datetime.fromtimestamp(cursor.updated_after, tz=UTC),
                ),
                limit=_PAGE,
                order_by="update_timestamp",
                ascending=True,
            )
        records = {r.dagster_run.run_id: r for r in found}
        for run_id, record in records.items():
            cursor.updated_after = max(cursor.updated_after, record.update_timestamp.timestamp())
            if run_id not in cursor.pending and run_id not in cursor.decided:
                cursor.pending.append(run_id)

        requests: list[RunRequest] = []
        reasons: list[str] = []
        still: list[str] = []
        for run_id in cursor.pending:
            found_record = records.get(run_id) or instance.get_run_record_by_id(run_id)
            if found_record is None:
                continue  # deleted
            record = found_record
            run = record.dagster_run
            # The finished run's outcome (shared with the per-model sensors) says what it planned.
            outcomes = shared.run_outcomes(instance, run_id, finished=True)
            if not outcomes.planned & keys:
                continue  # not a run of this producer
            batch = retry_batch(outcomes, policy or WatcherRetryPolicy(), unique_id_of)
            failed_partitions: dict[AssetKey, frozenset[str]] | None = None
            if any(outcomes.planned_partitions.get(k) for k in batch):
                # Per partition: a partition that materialized is not retried, nor one a later run planned.
                failed_partitions = _failed_partitions(instance, run_id, outcomes, batch)
                batch = set(failed_partitions)
            else:
                batch = _not_taken_over(instance, shared, run_id, batch)
            busy: dict[AssetKey, str] = {}
            for other in in_progress:
                if other != run_id:
                    other_partitions = _run_partitions(partitions_def, in_progress[other])
                    for key in planned.of(instance, other) & batch:
                        overlaps = (
                            failed_partitions is None
                            or other_partitions is None
                            or bool(other_partitions & failed_partitions[key])
                        )
                        if overlaps:
                            busy.setdefault(key, other)
            ended = record.end_time or time.time()
            facts = RunRetryFacts(
                run_id=run_id,
                run_status=run.status.value,
                attempt=contract.attempt_of(run.tags),
                seconds_since_end=time.time() - ended,
                batch=frozenset(batch),
                busy=busy,
            )
            verdict = decide_run_retry(facts, policy)
            reasons.append(verdict.reason)
            if verdict.action is RetryAction.WAIT:
                still.append(run_id)
                continue
            cursor.decided = [*cursor.decided, run_id][-_REMEMBERED:]
            if verdict.action is RetryAction.REQUEST:
                tags = {**contract.carried_run_tags(run.tags), **contract.retry_run_tags(run_id, verdict.attempt)}
                if failed_partitions is None:
                    requests.append(
                        RunRequest(
                            run_key=contract.retry_run_key(run_id),
                            job_name=retry_job,
                            asset_selection=sorted(verdict.batch, key=lambda k: k.to_user_string()),
                            # Same resource/op config as the failed run (e.g. dbt vars set in the launchpad).
                            run_config=run.run_config,
                            partition_key=run.tags.get(contract.PARTITION_TAG),
                            tags=tags,
                        )
                    )
                else:
                    requests += _partition_requests(
                        run_id, retry_job, run, tags, {k: failed_partitions[k] for k in verdict.batch}, partitions_def
                    )
        cursor.pending = still
        if with_jobs:
            requests += _downstream_of_all(context, instance, with_jobs, shared, cursor.materializations)
        skip = None if requests else (" ".join(reasons) or "no failed run to decide.")
        return SensorResult(run_requests=requests, skip_reason=skip, cursor=cursor.dump())

    evaluate.__annotations__ = {"context": SensorEvaluationContext, "return": SensorResult}
    return SensorDefinition(
        name=name,
        evaluation_fn=evaluate,
        jobs=[retry_job_def, *downstream_jobs],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="dagster-watcher retry coordinator: decides each failed run's retry batch once."
        + (f" Launches the downstream jobs of {len(with_jobs)} model(s) (per_model=False)." if with_jobs else ""),
    )


def _downstream_of_all(
    context: SensorEvaluationContext,
    instance: Any,
    watched: Sequence[WatchedAsset],
    shared: SharedReads,
    marks: dict[str, int],
) -> list[RunRequest]:
    """The per-producer shape's downstream launches: every asset's new materializations, from one
    batched read of their entries (``marks`` is updated in place)."""
    entries = shared.snapshot(instance)
    if entries is None:  # the event log moved less than a refresh interval ago: read them now
        entries = read_entries(instance, [w.key for w in watched])
    requests: list[RunRequest] = []
    for w in watched:
        name = w.key.to_user_string()
        found, marks[name] = downstream_requests(
            context, instance, w, marks.get(name, 0), entries.get(w.key) or Entry(None, None, None)
        )
        requests += found
    return requests


def _failed_partitions(
    instance: Any, run_id: str, outcomes: RunOutcomes, batch: set[AssetKey]
) -> dict[AssetKey, frozenset[str]]:
    """For each asset of ``batch``, the partitions the run planned and did not materialize that no
    later run has planned since (a later run's outcome is that run's to decide); assets left with no
    partition are left out."""
    out: dict[AssetKey, frozenset[str]] = {}
    for key in sorted(batch, key=lambda k: k.to_user_string()):
        mine = set()
        for partition in sorted(outcomes.not_succeeded_partitions(key)):
            info = instance.get_latest_planned_materialization_info(key, partition)
            if info is None or info.run_id == run_id:
                mine.add(partition)
        if mine:
            out[key] = frozenset(mine)
    return out


def _run_partitions(partitions_def: PartitionsDefinition | None, tags: Mapping[str, str]) -> frozenset[str] | None:
    """The partitions a run builds, from its tags; None when unpartitioned or not listable (then it
    counts as building every partition)."""
    span = contract.partition_span(tags)
    if span is None or partitions_def is None:
        return None
    keys = keys_in_range(partitions_def, *span)
    return frozenset(keys) if keys is not None else None


def _partition_requests(
    run_id: str,
    retry_job: str,
    run: Any,
    tags: Mapping[str, str],
    failed: Mapping[AssetKey, frozenset[str]],
    partitions_def: PartitionsDefinition | None,
) -> list[RunRequest]:
    """The retry runs of a partitioned run: the assets that failed in the same partitions together,
    one run per contiguous range of those partitions (a single partition is the run's partition key,
    a range its range tags, as a single-run backfill's run has), each with the failed run's tags."""
    span = contract.partition_span(run.tags)
    ordered = keys_in_range(partitions_def, *span) if span is not None and partitions_def is not None else None
    by_partitions: dict[frozenset[str], list[AssetKey]] = {}
    for key, partitions in failed.items():
        by_partitions.setdefault(partitions, []).append(key)
    requests = []
    base = contract.without_partition_tags(tags)
    for partitions, keys in sorted(by_partitions.items(), key=lambda item: sorted(item[0])):
        if ordered is not None and partitions <= set(ordered):
            ranges = contiguous_ranges(ordered, partitions)
        else:
            ranges = [(p, p) for p in sorted(partitions)]
        for first, last in ranges:
            requests.append(
                RunRequest(
                    run_key=contract.retry_run_key(run_id, (first, last)),
                    job_name=retry_job,
                    asset_selection=sorted(keys, key=lambda k: k.to_user_string()),
                    run_config=run.run_config,
                    partition_key=first if first == last else None,
                    tags=base if first == last else {**base, **contract.partition_range_tags(first, last)},
                )
            )
    return requests


def _not_taken_over(instance: Any, shared: SharedReads, run_id: str, batch: set[AssetKey]) -> set[AssetKey]:
    """The nodes of ``batch`` that no later run has planned or materialized since ``run_id`` did (a
    later run's outcome is that run's to decide; a later materialization is success)."""
    if not batch:
        return batch
    snapshot = shared.snapshot(instance)
    if snapshot is not None and all(k in snapshot for k in batch):
        return {k for k in batch if snapshot[k].last_run_id in (run_id, None)}
    return {
        r.asset_entry.asset_key
        for r in instance.get_asset_records(sorted(batch, key=lambda k: k.to_user_string()))
        if r.asset_entry.last_run_id in (run_id, None)
    }
