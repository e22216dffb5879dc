"""The watcher schedule: a cron schedule that never starts a build while another is running."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dagster import (
    AssetsDefinition,
    DefaultScheduleStatus,
    RunConfig,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
)
from dagster_dbt import build_dbt_asset_selection

from .. import contract
from ..errors import WatcherConfigError
from .sensors import IN_PROGRESS


def build_watcher_schedule(
    assets: AssetsDefinition | Sequence[AssetsDefinition],
    job: Any = None,
    cron_schedule: str | None = None,
    *,
    name: str | None = None,
    execution_timezone: str | None = None,
    default_status: DefaultScheduleStatus = DefaultScheduleStatus.STOPPED,
    job_name: str | None = None,
    dbt_select: str = "fqn:*",
    dbt_exclude: str | None = "",
    dbt_selector: str = "",
    schedule_name: str | None = None,
    tags: Mapping[str, object] | None = None,
    config: RunConfig | None = None,
) -> ScheduleDefinition:
    """A schedule for the watcher job that skips a tick while an earlier run of that job, or a consumer's
    re-materialization run of the same assets, is still in progress, so two dbt builds never work on
    the same models at once (and never on the same DuckDB file).

    Also takes dagster-dbt's ``build_schedule_from_dbt_selection`` arguments, so a call written for it
    works after changing the function's name: ``build_watcher_schedule([my_dbt], job_name="daily_dbt",
    cron_schedule="0 6 * * *", dbt_select="tag:daily")`` defines the job from the dbt selection.

    Args:
        assets: the producer definition (its consumers' retry job counts as busy too); a list of one,
            as dagster-dbt takes it, works too.
        job: the job the schedule launches; or its name (dagster-dbt's positional ``job_name``), to
            define it from ``dbt_select``/``dbt_exclude``/``dbt_selector``.
        cron_schedule: when.
        name: the schedule's name (default ``<job>_schedule``); ``schedule_name`` is the same.
        execution_timezone: timezone of ``cron_schedule``.
        default_status: whether the schedule runs as soon as the code location loads.
        job_name: the name of the job to define from the dbt selection (instead of ``job``).
        dbt_select: dbt selection of the defined job (dagster-dbt's ``build_dbt_asset_selection``).
        dbt_exclude: dbt exclusion of the defined job.
        dbt_selector: a named dbt selector for the defined job.
        schedule_name: dagster-dbt's name for ``name``.
        tags: tags of the schedule's runs.
        config: run config of the schedule's runs.

    Raises:
        WatcherConfigError: no job (neither ``job`` nor ``job_name``), no ``cron_schedule``, or
            ``assets`` is not one producer definition.

    Example::

        build_watcher_schedule(my_dbt, dbt_build_job, "0 6 * * *", name="daily")
        build_watcher_schedule([my_dbt], job_name="daily_dbt", cron_schedule="0 6 * * *", dbt_select="tag:daily")
    """
    if not isinstance(assets, AssetsDefinition):
        producers = list(assets)
        if len(producers) != 1 or not isinstance(producers[0], AssetsDefinition):
            raise WatcherConfigError(
                f"build_watcher_schedule: pass one @dbt_watcher_assets definition, got {len(producers)} "
                "(build one schedule per producer: each guards its own builds)."
            )
        assets = producers[0]
    if isinstance(job, str):
        job, job_name = None, job
    if job is None:
        if not job_name:
            raise WatcherConfigError(
                "build_watcher_schedule: give the job to launch (`job`) or a `job_name` to define."
            )
        job = define_asset_job(
            name=job_name,
            selection=build_dbt_asset_selection(
                [assets], dbt_select=dbt_select, dbt_exclude=dbt_exclude, dbt_selector=dbt_selector
            ),
        )
    if not cron_schedule:
        raise WatcherConfigError('build_watcher_schedule: `cron_schedule` is required (e.g. "0 6 * * *").')
    name = name or schedule_name
    busy_jobs = {job.name, contract.retry_job_name(assets)}

    def evaluate(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        for job_name in sorted(busy_jobs):
            running = context.instance.get_run_records(
                RunsFilter(job_name=job_name, statuses=list(IN_PROGRESS)), limit=1
            )
            if running:
                run_id = running[0].dagster_run.run_id
                return SkipReason(f"run {run_id[:8]} of {job_name} is still in progress; not starting another build.")
        return RunRequest(run_config=config or {}, tags={k: str(v) for k, v in (tags or {}).items()})

    return ScheduleDefinition(
        name=name or f"{job.name}_schedule",
        cron_schedule=cron_schedule,
        job=job,
        execution_fn=evaluate,
        execution_timezone=execution_timezone,
        default_status=default_status,
    )
