"""Consumer sensors: one per dbt model (and seed/snapshot) that reads the producer's events for that
asset from the Dagster event log and acts on them, while the build is still running.

Per tick a sensor answers one question: what happened to *my* asset in the latest run that planned it?

- materialized -> launch the downstream jobs attached to the model, once per materialization;
- failed / skipped because an upstream failed / never reported -> once that run is over, say whether
  it is due for a retry (the retry policy decides); the producer's retry coordinator
  (``coordinator.py``) requests ONE re-materialization run of every node the run did not build;
- the run is still going -> wait. A sensor never starts dbt for a model while a run that planned it
  is in progress, and never treats "no event" as success.

A tick gathers facts (``SharedReads`` first, the asset's own rows when the snapshot cannot tell),
hands them to the pure :func:`~dagster_watcher.retry.decide_retry`, and applies its verdict to the
cursor. The cursor remembers runs already settled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    AssetSelection,
    DagsterRunStatus,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    define_asset_job,
)

from .. import contract
from .._compat import add_job_name_targets, asset_job_types, is_job_like, sensor_instance
from .._gc import paused_gc
from ..contract import RecordedOutcome
from ..errors import WatcherConfigError
from ..retry import RetryAction, RetryFacts, WatcherRetryPolicy, decide_retry, retry_batch
from ._downstream import WatchedAsset, downstream_requests
from ._liveness import DEFAULT_HEARTBEAT_TIMEOUT, end_if_dead
from ._reads import Entry, SharedReads
from .coordinator import build_coordinator

IN_PROGRESS = frozenset(
    {
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    }
)
_WATCHED_TYPES = ("model", "seed", "snapshot")

DownstreamTarget = Any
"""A job definition (``define_asset_job`` or ``@job``), a job's name (a job defined elsewhere in the code
location, e.g. by a ``dg`` project's Python module), or an ``AssetSelection``."""


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


def _resolve_downstream(
    assets: AssetsDefinition, downstream: Mapping[str | AssetKey, DownstreamTarget | Sequence[DownstreamTarget]]
) -> tuple[dict[AssetKey, list[str]], list[Any]]:
    by_name: dict[str, AssetKey] = {}
    for key in assets.keys:
        by_name[key.path[-1]] = key
        by_name[key.to_user_string()] = key
    jobs: dict[str, Any] = {}
    attached: dict[AssetKey, list[str]] = {}
    for ref, targets in downstream.items():
        found = ref if isinstance(ref, AssetKey) else by_name.get(ref)
        if found is None or found not in assets.keys:
            raise WatcherConfigError(
                f"build_watcher_sensors: {ref!r} is not an asset of {assets.node_def.name!r}. Downstream "
                "jobs attach to dbt models, seeds and snapshots that are assets; ephemeral and disabled "
                "models never run on their own (attach to the first non-ephemeral model below them), "
                "and models outside the definition's select/exclude are not built by it."
            )
        key = found
        # Job definitions are records (tuples): test for a single target first.
        single = isinstance(targets, (str, *asset_job_types(), AssetSelection)) or is_job_like(targets)
        seq: list[DownstreamTarget] = [targets] if single else list(targets)
        for target in seq:
            if isinstance(target, str):  # a job by name, resolved by Dagster when the run is requested
                jobs[target] = target
                attached.setdefault(key, []).append(target)
                continue
            job_def = (
                define_asset_job(contract.downstream_job_name(key), selection=target)
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
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    per_model: bool = True,
    idle_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED,
) -> list[SensorDefinition]:
    """One consumer sensor per dbt model/seed/snapshot asset of a :func:`dbt_watcher_assets` definition
    (or, with ``per_model=False``, one sensor for the whole producer).

    Args:
        assets: the producer definition.
        downstream: jobs (or asset selections) to launch when a model materializes, keyed by model
            name or asset key, e.g. ``{"customers": crm_sync_job}``. A job may be given by its name
            (``"crm_sync_job"``) when it is defined elsewhere in the code location. They start while the dbt build
            is still running, the moment the model's materialization is in the event log.
        retry_policy: how failed, skipped and lost nodes are re-materialized; ``None`` disables retries.
        minimum_interval_seconds: sensor tick interval.
        default_status: whether the sensors run as soon as the code location loads.
        heartbeat_timeout: seconds without a producer heartbeat after which a STARTED run is dead,
            whatever host it runs on: it is marked failed and its unreported nodes retried.
        per_model: ``True`` (default): a sensor per model (``watch_<model>``), each with its own ticks,
            cursor and skip reason in the UI; those of models with downstream jobs run (see
            ``idle_status``). ``False``: ONE sensor, the producer's coordinator, also launches every
            model's downstream jobs: the daemon pays one tick per interval instead of one per model
            with consumers (see README "Consumers and retries").
            Same launches and retries either way; downstream jobs must then be job definitions or
            asset selections (not names).
        idle_status: the default status of the per-model sensors of models with no downstream job,
            when there is a retry coordinator. Such a sensor launches nothing (the coordinator decides
            retries and ends dead runs); it only shows the model's state in its skip reason, and each
            running one costs the daemon a tick record per interval. So they are declared ``STOPPED``:
            start one in the UI to follow that model tick by tick, or pass ``RUNNING`` for all. Never
            more than ``default_status``. Without a retry policy there is no coordinator and every
            sensor runs with ``default_status`` (each ends its own dead runs).

    With a retry policy, the first sensor is the producer's retry coordinator
    (``contract.retry_sensor_name``): it decides each failed run's retry batch once, never while a
    run in progress planned a node of it, and ends runs whose producer is dead. With
    ``per_model=False`` it is the only sensor, also without a retry policy (it then ends dead runs and
    launches downstream jobs, and retries nothing).

    Raises:
        WatcherConfigError: a ``downstream`` key that is not an asset of ``assets``, or a job given by
            name with ``per_model=False``.

    Example::

        sensors = build_watcher_sensors(my_dbt, downstream={"customers": crm_sync_job})
        defs = Definitions(assets=[my_dbt], sensors=sensors, jobs=[crm_sync_job], ...)
        # the daemon ticks watch_customers and the coordinator; the other watch_* sensors are
        # declared STOPPED (idle_status=DefaultSensorStatus.RUNNING runs them all)
        # one sensor tick per interval, whatever the number of models with consumers:
        sensors = build_watcher_sensors(my_dbt, downstream={"customers": crm_sync_job}, per_model=False)
    """
    with paused_gc():
        return _build_sensors(
            assets,
            downstream or {},
            retry_policy,
            minimum_interval_seconds=minimum_interval_seconds,
            default_status=default_status,
            heartbeat_timeout=heartbeat_timeout,
            per_model=per_model,
            idle_status=idle_status,
        )


def _build_sensors(
    assets: AssetsDefinition,
    downstream: Mapping[str | AssetKey, DownstreamTarget | Sequence[DownstreamTarget]],
    retry_policy: WatcherRetryPolicy | None,
    *,
    minimum_interval_seconds: int,
    default_status: DefaultSensorStatus,
    heartbeat_timeout: float,
    per_model: bool = True,
    idle_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED,
) -> list[SensorDefinition]:
    attached, downstream_jobs = _resolve_downstream(assets, downstream)
    retry_job = define_asset_job(
        contract.retry_job_name(assets),
        selection=AssetSelection.assets(assets),
        description="Re-materializes dbt nodes that did not succeed (launched by dagster-watcher consumers).",
    )
    unique_id_of = contract.unique_ids_by_asset_key(assets)
    watched_keys = sorted(
        (k for k in assets.keys if unique_id_of[k].split(".", 1)[0] in _WATCHED_TYPES),
        key=lambda k: k.to_user_string(),
    )
    watched = {
        key: WatchedAsset(
            key=key,
            unique_id=unique_id_of[key],
            downstream_jobs=attached.get(key, []),
            partitioned=assets.partitions_def is not None,
            downstream_partitions_defs={
                j.name: getattr(j, "partitions_def", None)
                for j in downstream_jobs
                if not isinstance(j, str) and j.name in attached.get(key, [])
            },
        )
        for key in watched_keys
    }
    coordinator = contract.retry_sensor_name(assets)

    def coordinator_sensor(shared: SharedReads, **downstream_shape: Any) -> SensorDefinition:
        return build_coordinator(
            coordinator,
            frozenset(assets.keys),
            unique_id_of,
            retry_job,
            retry_policy,
            shared,
            heartbeat_timeout=heartbeat_timeout,
            minimum_interval_seconds=minimum_interval_seconds,
            default_status=default_status,
            partitions_def=assets.partitions_def,
            **downstream_shape,
        )

    if not per_model:
        by_name = sorted(j for j in downstream_jobs if isinstance(j, str))
        if by_name:
            raise WatcherConfigError(
                f"build_watcher_sensors(per_model=False): downstream jobs {by_name} are given by name; the "
                "per-producer sensor needs the job definitions (or asset selections of what they build)."
            )
        # Its snapshot holds only the assets it launches jobs for; a retry decision reads its batch.
        with_jobs = [w for w in watched.values() if w.downstream_jobs]
        return [
            coordinator_sensor(
                SharedReads([w.key for w in with_jobs]), downstream=with_jobs, downstream_jobs=downstream_jobs
            )
        ]
    shared = SharedReads(watched_keys)
    # A model's sensor that launches nothing only repeats the coordinator's decisions in its skip reason.
    idle = (
        DefaultSensorStatus.STOPPED
        if retry_policy is not None and DefaultSensorStatus.STOPPED in (default_status, idle_status)
        else default_status
    )
    sensors = []
    if retry_policy is not None:
        # First, so that in one round the dead runs it ends are seen ended by every per-model sensor.
        sensors.append(coordinator_sensor(shared))
    for key in watched_keys:
        one = watched[key]
        # Every sensor names the retry job too, so it is in the repository without a coordinator.
        jobs = [
            retry_job,
            *(j for j in downstream_jobs if not isinstance(j, str) and j.name in one.downstream_jobs),
        ]
        by_name = [j for j in downstream_jobs if isinstance(j, str) and j in one.downstream_jobs]
        sensor = _ConsumerSensor(
            job_names=by_name,
            name=contract.sensor_name(key),
            evaluation_fn=_make_evaluation(
                one, unique_id_of, retry_job.name, retry_policy, shared, coordinator, heartbeat_timeout
            ),
            jobs=jobs,
            minimum_interval_seconds=minimum_interval_seconds,
            default_status=default_status if one.downstream_jobs else idle,
            description=f"dagster-watcher consumer of {key.to_user_string()} ({one.unique_id}).",
        )
        sensors.append(sensor)
    return sensors


class _ConsumerSensor(SensorDefinition):
    """A consumer sensor that may also target jobs known by name only (defined elsewhere in the code
    location). Dagster copies sensors with ``with_attributes`` (binding resources, adding a component's
    metadata) and rebuilds the copy from its job definitions, which would drop the name targets: this
    class re-adds them on every copy."""

    def __init__(self, *, job_names: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._watcher_kwargs = kwargs
        self._watcher_job_names = tuple(job_names)
        if self._watcher_job_names and not add_job_name_targets(self, self._watcher_job_names):
            raise WatcherConfigError(
                f"build_watcher_sensors: downstream jobs {list(self._watcher_job_names)} of sensor {self.name!r} "
                "are given by name, which this Dagster release does not support for sensors: pass the job "
                "definitions, or an asset selection of what they build."
            )

    def with_attributes(
        self, *, jobs: Sequence[Any] | None = None, metadata: Mapping[str, Any] | None = None
    ) -> _ConsumerSensor:
        kwargs = dict(self._watcher_kwargs)
        if jobs is not None:
            kwargs["jobs"] = list(jobs)
        kwargs["metadata"] = metadata if metadata is not None else self.metadata
        return _ConsumerSensor(job_names=self._watcher_job_names, **kwargs)


def _make_evaluation(
    watched: WatchedAsset,
    unique_id_of: Mapping[AssetKey, str],
    retry_job: str,
    policy: WatcherRetryPolicy | None,
    shared: SharedReads,
    coordinator: str,
    heartbeat_timeout: float,
) -> Any:
    def evaluate(context: SensorEvaluationContext) -> SensorResult:
        cursor = _Cursor.load(context.cursor)
        instance = sensor_instance(context)
        snapshot = shared.snapshot(instance)
        entry = snapshot.get(watched.key) if snapshot is not None else None
        if snapshot is not None and entry is None:
            entry = Entry(None, None, None)  # no record: never planned nor materialized
        requests, cursor.materialization = downstream_requests(
            context, instance, watched, cursor.materialization, entry
        )
        reason = _retry_decision(
            instance, watched, cursor, unique_id_of, retry_job, policy, entry, shared, coordinator, heartbeat_timeout
        )
        return SensorResult(
            run_requests=requests,
            skip_reason=None if requests else reason,
            cursor=cursor.dump(),
        )

    # Real types, not strings: Dagster resolves a sensor function's annotations per SensorDefinition,
    # which is measurable for thousands of sensors when they are strings.
    evaluate.__annotations__ = {"context": SensorEvaluationContext, "return": SensorResult}
    return evaluate


@dataclass(frozen=True)
class _RunFacts:
    run_id: str
    record: Any
    """The run's record."""
    materialized: bool
    recorded: RecordedOutcome | None
    """The watcher's record of the asset in that run (None: none recorded)."""


def _finished_run_facts(instance: Any, key: AssetKey, entry: Entry, shared: SharedReads) -> _RunFacts | None:
    """The facts from the latest planning run's whole outcome when that run has ended: read once per
    run and shared by every sensor of its nodes, so a failed 1,000-node build costs one read, not one
    per sensor. None when the snapshot cannot tell (the caller reads the asset's own rows)."""
    run_id = entry.last_run_id
    if not run_id:
        return None
    record = shared.run_record(instance, run_id)
    if record is None or record.dagster_run.status in IN_PROGRESS:
        return None
    outcomes = shared.run_outcomes(instance, run_id, finished=True)
    # last_run_id is the newest run that planned OR materialized the asset: only a run that planned
    # it is the one whose outcome decides.
    if key not in outcomes.planned:
        return None
    return _RunFacts(run_id, record, key in outcomes.materialized, outcomes.failures.get(key))


def _run_facts_from_rows(instance: Any, key: AssetKey, run_id: str, planned_storage_id: int) -> _RunFacts | None:
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        return None
    after = AssetRecordsFilter(asset_key=key, after_storage_id=planned_storage_id)
    if any(r.run_id == run_id for r in instance.fetch_materializations(after, limit=5).records):
        return _RunFacts(run_id, record, True, None)
    for r in instance.fetch_observations(after, limit=100).records:
        recorded = contract.recorded_outcome(r.asset_observation.metadata if r.asset_observation else None)
        if r.run_id == run_id and recorded is not None:
            return _RunFacts(run_id, record, False, recorded)
    return _RunFacts(run_id, record, False, None)


def _gather(
    instance: Any, watched: WatchedAsset, cursor: _Cursor, entry: Entry | None, shared: SharedReads
) -> _RunFacts | str:
    """The facts about the latest run that planned the asset, or the reason there is nothing to decide."""
    name = watched.key.to_user_string()
    if entry is not None:
        # The newest run that planned the asset also sets last_run_id; when that is the run already
        # settled, or the run whose materialization is the newest, the answer needs no more reads.
        if entry.last_run_id is None:
            return f"{name}: no run has planned it yet."
        if entry.last_run_id == cursor.settled:
            return f"{name}: nothing to do for run {entry.last_run_id[:8]}."
        if entry.materialization_run_id == entry.last_run_id and not watched.partitioned:
            cursor.settled = entry.last_run_id
            return f"{name}: materialized by run {entry.last_run_id[:8]}."
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
    return facts


def _retry_decision(
    instance: Any,
    watched: WatchedAsset,
    cursor: _Cursor,
    unique_id_of: Mapping[AssetKey, str],
    retry_job: str,
    policy: WatcherRetryPolicy | None,
    entry: Entry | None,
    shared: SharedReads,
    coordinator: str,
    heartbeat_timeout: float,
) -> str:
    gathered = _gather(instance, watched, cursor, entry, shared)
    if isinstance(gathered, str):
        return gathered
    run = gathered.record.dagster_run
    in_progress = run.status in IN_PROGRESS
    if in_progress and not gathered.materialized and end_if_dead(instance, run, heartbeat_timeout):
        in_progress = False
    ended = gathered.record.end_time or time.time()
    facts = RetryFacts(
        asset=watched.key,
        run_id=gathered.run_id,
        run_status=run.status.value,
        in_progress=in_progress,
        materialized=gathered.materialized,
        recorded=gathered.recorded,
        attempt=contract.attempt_of(run.tags),
        seconds_since_end=0.0 if in_progress else time.time() - ended,
    )

    def batch() -> set[AssetKey]:
        finished = run.status not in IN_PROGRESS
        return retry_batch(shared.run_outcomes(instance, gathered.run_id, finished=finished), policy, unique_id_of)  # type: ignore[arg-type]

    verdict = decide_retry(facts, policy, batch)
    if verdict.action is RetryAction.WAIT:
        return verdict.reason
    cursor.settled = gathered.run_id
    if verdict.action is RetryAction.SETTLE:
        return verdict.reason
    # Due: the producer's coordinator requests the run's whole batch, once.
    return f"{verdict.reason[:-1]}, requested by {coordinator}."
