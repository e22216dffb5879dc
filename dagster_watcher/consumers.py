"""Consumers: one sensor per dbt model (and seed/snapshot) that reads the producer's events for that
asset from the Dagster event log and acts on them, while the build is still running.

Per tick a sensor answers one question: what happened to *my* asset in the latest run that planned it?

- materialized -> launch the downstream jobs attached to the model, once per materialization;
- failed / skipped because an upstream failed / never reported -> once that run is over, request ONE
  re-materialization run of every node the run did not build (the retry policy decides), launched
  by exactly one sensor of the batch so several failures cost one run;
- the run is still going -> wait. A sensor never starts dbt for a model while a run that planned it
  is in progress, and never treats "no event" as success.

Each tick reads only its own asset's rows (indexed by asset key), so its cost does not grow with the
size of the project; the cursor remembers runs already settled so a quiet tick is one query.
"""

from __future__ import annotations

import json
import os
import socket
import time
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

from .asset_decorator import HOST_TAG, PID_TAG
from .dagster_events import WATCHER_ERROR_KEY, WATCHER_STATUS_KEY
from .retry import ATTEMPT_TAG, RETRY_OF_TAG, WatcherRetryPolicy, read_run_outcomes, retry_batch

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
    attached, downstream_jobs = _resolve_downstream(assets, downstream or {})
    retry_job = define_asset_job(
        retry_job_name(assets),
        selection=AssetSelection.assets(assets),
        description="Re-materializes dbt nodes that did not succeed (launched by dagster-watcher consumers).",
    )
    unique_id_of = {key: assets.get_asset_spec(key).metadata[_UNIQUE_ID] for key in assets.keys}
    sensors = []
    for key in sorted(assets.keys, key=lambda k: k.to_user_string()):
        if not unique_id_of[key].startswith(_WATCHED_TYPES):
            continue
        watched = WatchedAsset(key=key, unique_id=unique_id_of[key], downstream_jobs=attached.get(key, []))
        jobs = [retry_job, *(j for j in downstream_jobs if j.name in watched.downstream_jobs)]
        sensors.append(
            SensorDefinition(
                name=_sensor_name(key),
                evaluation_fn=_make_evaluation(watched, unique_id_of, retry_job.name, retry_policy),
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
) -> Any:
    def evaluate(context: SensorEvaluationContext) -> SensorResult:
        cursor = _Cursor.load(context.cursor)
        requests = _downstream_requests(context, watched, cursor)
        decision = _retry_decision(context, watched, cursor, unique_id_of, retry_job, policy)
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

    return evaluate


def _downstream_requests(context: SensorEvaluationContext, watched: WatchedAsset, cursor: _Cursor) -> list[RunRequest]:
    """One run per attached job per new materialization: the evidence of success is the event itself."""
    if not watched.downstream_jobs:
        return []
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


def _retry_decision(
    context: SensorEvaluationContext,
    watched: WatchedAsset,
    cursor: _Cursor,
    unique_id_of: Mapping[AssetKey, str],
    retry_job: str,
    policy: WatcherRetryPolicy | None,
) -> RunRequest | str:
    instance = context.instance
    name = watched.key.to_user_string()
    planned = instance.get_latest_planned_materialization_info(watched.key)
    if planned is None:
        return f"{name}: no run has planned it yet."
    run_id = planned.run_id
    if cursor.settled == run_id:
        return f"{name}: nothing to do for run {run_id[:8]}."
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return f"{name}: run {run_id[:8]} was deleted."
    run = record.dagster_run

    after = AssetRecordsFilter(asset_key=watched.key, after_storage_id=planned.storage_id)
    if any(r.run_id == run_id for r in instance.fetch_materializations(after, limit=5).records):
        cursor.settled = run_id
        return f"{name}: materialized by run {run_id[:8]}."
    failure = next(
        (
            r
            for r in instance.fetch_observations(after, limit=5).records
            if r.run_id == run_id
            and WATCHER_STATUS_KEY in (r.asset_observation.metadata if r.asset_observation else {})
        ),
        None,
    )

    if run.status in _IN_PROGRESS:
        if _process_is_gone(run.tags):
            instance.report_run_failed(
                run,
                f"dagster-watcher: the run worker (pid {run.tags.get(PID_TAG)} on {run.tags.get(HOST_TAG)}) "
                "is gone; nodes it did not report are treated as lost.",
            )
        else:
            what = "failed" if failure is not None else "not reported yet"
            return f"{name}: {what} in run {run_id[:8]}, which is still in progress; waiting for it to end."

    if failure is not None and failure.asset_observation is not None:
        md = failure.asset_observation.metadata
        status = str(md[WATCHER_STATUS_KEY].value)
        error = str(md[WATCHER_ERROR_KEY].value) if WATCHER_ERROR_KEY in md else ""
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

    batch = retry_batch(read_run_outcomes(instance, run_id), policy, unique_id_of)
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
