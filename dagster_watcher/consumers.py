"""Consumers: one sensor per dbt model (and seed/snapshot) that reads the producer's events for that
asset from the Dagster event log and acts on them, while the build is still running.

Per tick a sensor answers one question: what happened to *my* asset in the latest run that planned it?

- materialized -> launch the downstream jobs attached to the model, once per materialization;
- failed / skipped because an upstream failed / never reported -> once that run is over, request ONE
  re-materialization run of every node the run did not build (the retry policy decides), launched
  by exactly one sensor of the batch so several failures cost one run;
- the run is still going -> wait. A sensor never starts dbt for a model while a run that planned it
  is in progress, and never treats "no event" as success.

The sensors of one producer share a snapshot of all their assets' records (one batched read, taken
again only when the event log has changed), so a quiet tick of 1,000 sensors costs about one query in
all; a sensor whose snapshot entry shows something new reads its own asset's rows (indexed by asset
key) for the exact answer. The cursor remembers runs already settled.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSelection,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from .asset_decorator import HOST_TAG, PID_TAG, paused_gc
from .dagster_events import WATCHER_ERROR_KEY, WATCHER_STATUS_KEY
from .retry import ATTEMPT_TAG, RETRY_OF_TAG, RunOutcomes, WatcherRetryPolicy, read_run_outcomes, retry_batch

_UNIQUE_ID = "dagster_dbt/unique_id"
_IN_PROGRESS = {
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
}
_WATCHED_TYPES = ("model.", "seed.", "snapshot.")

DownstreamTarget = JobDefinition | UnresolvedAssetJobDefinition | AssetSelection


@dataclass
class _Cursor:
    materialization: int = 0
    """Storage id of the last materialization whose downstream runs were requested."""
    settled: str | None = None
    """Run whose outcome for this asset needs no more action (materialized, retried or given up)."""

    @classmethod
    def load(cls, raw: str | None) -> _Cursor:
        if not raw:
            return cls()
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class WatchedAsset:
    """What one consumer sensor needs to know about its asset (built once, at definition time)."""

    key: AssetKey
    unique_id: str
    downstream_jobs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Entry:
    """What the asset's record says (Dagster keeps it up to date on every planned/materialized event)."""

    last_run_id: str | None
    """The newest run that planned or materialized the asset."""
    materialization_id: int | None
    materialization_run_id: str | None


# A snapshot whose event log has moved on is taken again at most this often; in between, sensors
# that cannot use it read their own rows (so a build in progress costs what it did before, not a
# re-read of every asset per sensor).
_SNAPSHOT_REFRESH_SECONDS = 1.0
_OUTCOME_CACHE_SIZE = 8


class _SharedReads:
    """Reads shared by the consumer sensors of one producer, within one process (the code server
    evaluates every sensor of the location; the daemon may do so from several threads).

    - a snapshot of every watched asset's record, valid exactly as long as the event log's newest
      row id is unchanged (the id is read per tick: one tiny query, or a private read-only SQLite
      connection for the default storage, which otherwise opens a new engine per query);
    - the outcomes of finished runs, which no longer change (one read per failed run, not per
      sensor of its retry batch).

    From the snapshot a sensor concludes "nothing new", "materialized by the run that planned it",
    or, for a run that has ended, its outcome for the asset; a run still in progress, or anything
    the snapshot cannot tell, is decided from the asset's own rows."""

    def __init__(self, keys: Sequence[AssetKey]) -> None:
        self._keys = list(keys)
        self._lock = threading.Lock()
        self._storage: object = None
        self._version: object = None
        self._taken_at = 0.0
        self._entries: dict[AssetKey, _Entry] = {}
        self._sqlite: tuple[str, sqlite3.Connection] | None = None
        """A read-only connection to the SQLite index shard last used (one instance per process)."""
        self._outcomes: OrderedDict[str, RunOutcomes] = OrderedDict()
        self._runs: dict[str, Any] = {}

    def _event_log_version(self, instance: Any) -> tuple[object, object]:
        """(which storage, its newest row id). The storage is named by its location or config, not
        the object: a code server builds a new instance for every sensor evaluation."""
        # Imported here: the storage modules cost ~0.4 s to import, which a code location's load
        # should not pay for sensors that have not ticked yet.
        from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

        storage = instance.event_log_storage
        if isinstance(storage, SqliteEventLogStorage):
            path = storage.path_for_shard("index")
            conn = self._sqlite_connection(path)
            if conn is not None:
                try:
                    return path, conn.execute("select max(id) from event_logs").fetchone()[0]
                except sqlite3.Error:
                    self._close_sqlite()
        inst_data = getattr(storage, "inst_data", None)
        which = (type(storage).__name__, inst_data) if inst_data is not None else id(storage)
        return which, storage.get_maximum_record_id()

    def _sqlite_connection(self, path: str) -> sqlite3.Connection | None:
        if self._sqlite is not None and self._sqlite[0] != path:
            self._close_sqlite()
        if self._sqlite is None and os.path.exists(path):
            self._sqlite = path, sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        return self._sqlite[1] if self._sqlite is not None else None

    def _close_sqlite(self) -> None:
        if self._sqlite is not None:
            self._sqlite[1].close()
            self._sqlite = None

    def snapshot(self, instance: Any) -> Mapping[AssetKey, _Entry] | None:
        """Every watched asset's entry as of the event log's current state, or None when it moved on
        less than a refresh interval ago (the caller then reads its own rows)."""
        with self._lock:
            storage, version = self._event_log_version(instance)
            if (storage, version) == (self._storage, self._version):
                return self._entries
            now = time.monotonic()
            if storage == self._storage and now - self._taken_at < _SNAPSHOT_REFRESH_SECONDS:
                return None
            entries: dict[AssetKey, _Entry] = {}
            for record in instance.get_asset_records(self._keys):
                entry = record.asset_entry
                mat = entry.last_materialization_record
                entries[entry.asset_key] = _Entry(
                    last_run_id=entry.last_run_id,
                    materialization_id=mat.storage_id if mat else None,
                    materialization_run_id=mat.run_id if mat else None,
                )
            # The version was read before the records: a write in between makes the next tick re-read.
            self._storage, self._version, self._taken_at, self._entries = storage, version, now, entries
            self._runs = {}
            return entries

    def run_record(self, instance: Any, run_id: str) -> Any:
        """The run's record, read once per snapshot (a run's status change is an event-log write, so
        it comes with a new snapshot)."""
        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id]
        record = instance.get_run_record_by_id(run_id)
        with self._lock:
            self._runs[run_id] = record
        return record

    def run_outcomes(self, instance: Any, run_id: str, finished: bool) -> RunOutcomes:
        with self._lock:
            cached = self._outcomes.get(run_id)
        if cached is not None:
            return cached
        outcomes = read_run_outcomes(instance, run_id)
        if finished:
            with self._lock:
                self._outcomes[run_id] = outcomes
                while len(self._outcomes) > _OUTCOME_CACHE_SIZE:
                    self._outcomes.popitem(last=False)
        return outcomes


def _sensor_name(key: AssetKey) -> str:
    return "watch_" + "__".join(key.path)


def _resolve_downstream(
    assets: AssetsDefinition, downstream: Mapping[str | AssetKey, DownstreamTarget | Sequence[DownstreamTarget]]
) -> tuple[dict[AssetKey, list[str]], list[JobDefinition | UnresolvedAssetJobDefinition]]:
    by_name: dict[str, AssetKey] = {}
    for key in assets.keys:
        by_name[key.path[-1]] = key
        by_name[key.to_user_string()] = key
    jobs: dict[str, JobDefinition | UnresolvedAssetJobDefinition] = {}
    attached: dict[AssetKey, list[str]] = {}
    for ref, targets in downstream.items():
        found = ref if isinstance(ref, AssetKey) else by_name.get(ref)
        if found is None or found not in assets.keys:
            raise ValueError(
                f"build_watcher_sensors: {ref!r} is not an asset of {assets.node_def.name!r}. Downstream "
                "jobs attach to dbt models, seeds and snapshots that are assets; ephemeral and disabled "
                "models never run on their own (attach to the first non-ephemeral model below them), "
                "and models outside the definition's select/exclude are not built by it."
            )
        key = found
        # Job definitions are records (tuples): test for a single target first.
        seq: list[DownstreamTarget] = (
            [targets]
            if isinstance(targets, JobDefinition | UnresolvedAssetJobDefinition | AssetSelection)
            else list(targets)
        )
        for target in seq:
            job_def = (
                define_asset_job(f"{'__'.join(key.path)}__downstream", selection=target)
                if isinstance(target, AssetSelection)
                else target
            )
            jobs[job_def.name] = job_def
            attached.setdefault(key, []).append(job_def.name)
    return attached, list(jobs.values())


def build_watcher_sensors(
    assets: AssetsDefinition,
    *,
    downstream: Mapping[str | AssetKey, DownstreamTarget | Sequence[DownstreamTarget]] | None = None,
    retry_policy: WatcherRetryPolicy | None = WatcherRetryPolicy(),
    minimum_interval_seconds: int = 15,
    default_status: DefaultSensorStatus = DefaultSensorStatus.RUNNING,
) -> list[SensorDefinition]:
    """One consumer sensor per dbt model/seed/snapshot asset of a :func:`dbt_watcher_assets` definition.

    Args:
        assets: the producer definition.
        downstream: jobs (or asset selections) to launch when a model materializes, keyed by model
            name or asset key, e.g. ``{"customers": crm_sync_job}``. They start while the dbt build
            is still running, the moment the model's materialization is in the event log.
        retry_policy: how failed, skipped and lost nodes are re-materialized; ``None`` disables retries.
        minimum_interval_seconds: sensor tick interval.
        default_status: whether the sensors run as soon as the code location loads.
    """
    with paused_gc():
        return _build_sensors(
            assets,
            downstream or {},
            retry_policy,
            minimum_interval_seconds=minimum_interval_seconds,
            default_status=default_status,
        )


def _build_sensors(
    assets: AssetsDefinition,
    downstream: Mapping[str | AssetKey, DownstreamTarget | Sequence[DownstreamTarget]],
    retry_policy: WatcherRetryPolicy | None,
    *,
    minimum_interval_seconds: int,
    default_status: DefaultSensorStatus,
) -> list[SensorDefinition]:
    attached, downstream_jobs = _resolve_downstream(assets, downstream)
    retry_job = define_asset_job(
        retry_job_name(assets),
        selection=AssetSelection.assets(assets),
        description="Re-materializes dbt nodes that did not succeed (launched by dagster-watcher consumers).",
    )
    unique_id_of = {key: assets.get_asset_spec(key).metadata[_UNIQUE_ID] for key in assets.keys}
    watched_keys = sorted(
        (k for k in assets.keys if unique_id_of[k].startswith(_WATCHED_TYPES)), key=lambda k: k.to_user_string()
    )
    shared = _SharedReads(watched_keys)
    sensors = []
    for key in watched_keys:
        watched = WatchedAsset(key=key, unique_id=unique_id_of[key], downstream_jobs=attached.get(key, []))
        jobs = [retry_job, *(j for j in downstream_jobs if j.name in watched.downstream_jobs)]
        sensors.append(
            SensorDefinition(
                name=_sensor_name(key),
                evaluation_fn=_make_evaluation(watched, unique_id_of, retry_job.name, retry_policy, shared),
                jobs=jobs,
                minimum_interval_seconds=minimum_interval_seconds,
                default_status=default_status,
                description=f"dagster-watcher consumer of {key.to_user_string()} ({watched.unique_id}).",
            )
        )
    return sensors


def retry_job_name(assets: AssetsDefinition) -> str:
    """Name of the job consumer sensors launch re-materializations with."""
    return f"{assets.node_def.name}__watcher_retry"


def build_watcher_schedule(
    assets: AssetsDefinition,
    job: JobDefinition | UnresolvedAssetJobDefinition,
    cron_schedule: str,
    *,
    name: str | None = None,
    execution_timezone: str | None = None,
    default_status: DefaultScheduleStatus = DefaultScheduleStatus.STOPPED,
) -> ScheduleDefinition:
    """A schedule for the watcher job that skips a tick while an earlier run of that job, or a consumer's
    re-materialization run of the same assets, is still in progress, so two dbt builds never work on
    the same models at once (and never on the same DuckDB file)."""
    busy_jobs = {job.name, retry_job_name(assets)}

    def evaluate(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        for job_name in sorted(busy_jobs):
            running = context.instance.get_run_records(
                RunsFilter(job_name=job_name, statuses=list(_IN_PROGRESS)), limit=1
            )
            if running:
                run_id = running[0].dagster_run.run_id
                return SkipReason(f"run {run_id[:8]} of {job_name} is still in progress; not starting another build.")
        return RunRequest()

    return ScheduleDefinition(
        name=name or f"{job.name}_schedule",
        cron_schedule=cron_schedule,
        job=job,
        execution_fn=evaluate,
        execution_timezone=execution_timezone,
        default_status=default_status,
    )


def _make_evaluation(
    watched: WatchedAsset,
    unique_id_of: Mapping[AssetKey, str],
    retry_job: str,
    policy: WatcherRetryPolicy | None,
    shared: _SharedReads,
) -> Any:
    def evaluate(context: SensorEvaluationContext) -> SensorResult:
        cursor = _Cursor.load(context.cursor)
        snapshot = shared.snapshot(context.instance)
        entry = snapshot.get(watched.key) if snapshot is not None else None
        if snapshot is not None and entry is None:
            entry = _Entry(None, None, None)  # no record: never planned nor materialized
        requests = _downstream_requests(context, watched, cursor, entry)
        decision = _retry_decision(context, watched, cursor, unique_id_of, retry_job, policy, entry, shared)
        if isinstance(decision, RunRequest):
            requests.append(decision)
            reason = None
        else:
            reason = decision
        return SensorResult(
            run_requests=requests,
            skip_reason=None if requests else reason,
            cursor=cursor.dump(),
        )

    # Real types, not the strings this module's `from __future__ import annotations` leaves: Dagster
    # resolves a sensor function's annotations per SensorDefinition, ~0.1 ms each for strings.
    evaluate.__annotations__ = {"context": SensorEvaluationContext, "return": SensorResult}
    return evaluate


def _downstream_requests(
    context: SensorEvaluationContext, watched: WatchedAsset, cursor: _Cursor, entry: _Entry | None
) -> list[RunRequest]:
    """One run per attached job per new materialization: the evidence of success is the event itself."""
    if not watched.downstream_jobs:
        return []
    if entry is not None and (entry.materialization_id or 0) <= cursor.materialization:
        return []  # nothing newer than what the cursor has handled
    if cursor.materialization == 0:
        # A new sensor (or a reset cursor) acts on the newest materialization only, like Dagster's
        # asset sensors: deploying it must not replay the asset's whole history downstream.
        records = context.instance.fetch_materializations(watched.key, limit=1, ascending=False).records
    else:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=watched.key, after_storage_id=cursor.materialization),
            limit=100,
            ascending=True,
        ).records
    requests = []
    for record in records:
        for job in watched.downstream_jobs:
            requests.append(
                RunRequest(
                    run_key=f"{_sensor_name(watched.key)}:{record.storage_id}:{job}",
                    job_name=job,
                    tags={
                        "dagster_watcher/upstream": watched.key.to_user_string(),
                        "dagster_watcher/upstream_run": record.run_id,
                    },
                )
            )
        cursor.materialization = max(cursor.materialization, record.storage_id)
    return requests


def _process_is_gone(tags: Mapping[str, str]) -> bool:
    """True only when the producer recorded its pid on THIS host and that process no longer exists.
    On another host we cannot know: the run stays "in progress" until Dagster's run monitoring (or a
    person) ends it, and the sensor keeps waiting rather than risk a duplicate dbt run."""
    pid, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


_RunFacts = tuple[str, Any, bool, Mapping[str, object] | None]
"""(run id, its run record, materialized by it, the watcher's failure metadata for the asset)."""


def _finished_run_facts(instance: Any, key: AssetKey, entry: _Entry, shared: _SharedReads) -> _RunFacts | None:
    """The facts from the latest planning run's whole outcome when that run has ended: read once per
    run and shared by every sensor of its nodes, so a failed 1,000-node build costs one read, not one
    per sensor. None when the snapshot cannot tell (the caller reads the asset's own rows)."""
    run_id = entry.last_run_id
    if not run_id:
        return None
    record = shared.run_record(instance, run_id)
    if record is None or record.dagster_run.status in _IN_PROGRESS:
        return None
    outcomes = shared.run_outcomes(instance, run_id, finished=True)
    # last_run_id is the newest run that planned OR materialized the asset: only a run that planned
    # it is the one whose outcome decides.
    if key not in outcomes.planned:
        return None
    return run_id, record, key in outcomes.materialized, outcomes.failures.get(key)


def _run_facts_from_rows(instance: Any, key: AssetKey, run_id: str, planned_storage_id: int) -> _RunFacts | None:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return None
    after = AssetRecordsFilter(asset_key=key, after_storage_id=planned_storage_id)
    if any(r.run_id == run_id for r in instance.fetch_materializations(after, limit=5).records):
        return run_id, record, True, None
    for r in instance.fetch_observations(after, limit=5).records:
        metadata = r.asset_observation.metadata if r.asset_observation else {}
        if r.run_id == run_id and WATCHER_STATUS_KEY in metadata:
            return run_id, record, False, {k: v.value for k, v in metadata.items()}
    return run_id, record, False, None


def _retry_decision(
    context: SensorEvaluationContext,
    watched: WatchedAsset,
    cursor: _Cursor,
    unique_id_of: Mapping[AssetKey, str],
    retry_job: str,
    policy: WatcherRetryPolicy | None,
    entry: _Entry | None,
    shared: _SharedReads,
) -> RunRequest | str:
    instance = context.instance
    name = watched.key.to_user_string()
    if entry is not None:
        # The newest run that planned the asset also sets last_run_id; when that is the run already
        # settled, or the run whose materialization is the newest, the answer needs no more reads.
        if entry.last_run_id is None:
            return f"{name}: no run has planned it yet."
        if entry.last_run_id == cursor.settled:
            return f"{name}: nothing to do for run {entry.last_run_id[:8]}."
        if entry.materialization_run_id == entry.last_run_id:
            cursor.settled = entry.last_run_id
            by = f"run {entry.last_run_id[:8]}" if entry.last_run_id else "an event reported outside any run"
            return f"{name}: materialized by {by}."
    facts = _finished_run_facts(instance, watched.key, entry, shared) if entry is not None else None
    if facts is None:
        planned = instance.get_latest_planned_materialization_info(watched.key)
        if planned is None:
            return f"{name}: no run has planned it yet."
        if cursor.settled == planned.run_id:
            return f"{name}: nothing to do for run {planned.run_id[:8]}."
        facts = _run_facts_from_rows(instance, watched.key, planned.run_id, planned.storage_id)
        if facts is None:
            return f"{name}: run {planned.run_id[:8]} was deleted."
    run_id, record, materialized, failure_md = facts
    run = record.dagster_run
    if materialized:
        cursor.settled = run_id
        return f"{name}: materialized by run {run_id[:8]}."

    if run.status in _IN_PROGRESS:
        if _process_is_gone(run.tags):
            instance.report_run_failed(
                run,
                f"dagster-watcher: the run worker (pid {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}) "
                "is gone; nodes it did not report are treated as lost.",
            )
        else:
            what = "failed" if failure_md is not None else "not reported yet"
            return f"{name}: {what} in run {run_id[:8]}, which is still in progress; waiting for it to end."

    if failure_md is not None:
        status = str(failure_md[WATCHER_STATUS_KEY])
        error = str(failure_md.get(WATCHER_ERROR_KEY) or "")
    else:
        status, error = "lost", f"run {run_id[:8]} ended ({run.status.value}) without reporting {name}"

    if policy is None:
        cursor.settled = run_id
        return f"{name}: {status} in run {run_id[:8]} ({error}); retries are disabled."
    attempt = int(run.tags.get(ATTEMPT_TAG, "0"))
    if attempt >= policy.max_retries:
        cursor.settled = run_id
        return f"{name}: {status} after {attempt} retr{'y' if attempt == 1 else 'ies'} (limit {policy.max_retries}): {error}"
    if status == "error" and not policy.is_retryable(error):
        cursor.settled = run_id
        return f"{name}: not retried, the error is not retryable: {error}"

    ended = record.end_time or time.time()
    wait = ended + policy.delay_for(attempt + 1) - time.time()
    if wait > 0:
        return f"{name}: {status} in run {run_id[:8]}; retry {attempt + 1} in {wait:.0f}s."

    batch = retry_batch(
        shared.run_outcomes(instance, run_id, finished=run.status not in _IN_PROGRESS), policy, unique_id_of
    )
    if watched.key not in batch:
        cursor.settled = run_id
        return f"{name}: {status} in run {run_id[:8]}, but dbt skipped it because of a failed test or a non-retryable node; not retried."
    leader = min(batch, key=lambda k: k.to_user_string())
    cursor.settled = run_id
    if leader != watched.key:
        return f"{name}: re-materialization of run {run_id[:8]}'s {len(batch)} unfinished node(s) is requested by {_sensor_name(leader)}."
    return RunRequest(
        run_key=f"dagster_watcher_retry:{run_id}",
        job_name=retry_job,
        asset_selection=sorted(batch, key=lambda k: k.to_user_string()),
        # Same resource/op config as the failed run (e.g. dbt vars set in the launchpad).
        run_config=run.run_config,
        tags={RETRY_OF_TAG: run_id, ATTEMPT_TAG: str(attempt + 1)},
    )
