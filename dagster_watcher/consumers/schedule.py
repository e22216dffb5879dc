"""The watcher schedule: a cron schedule that never starts a build while another is running."""

from __future__ import annotations

from typing import Any

from dagster import (
    AssetsDefinition,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
)

from .. import contract
from .sensors import IN_PROGRESS


def build_watcher_schedule(
    assets: AssetsDefinition,
    job: Any,
    cron_schedule: str,
    *,
    name: str | None = None,
    execution_timezone: str | None = None,
    default_status: DefaultScheduleStatus = DefaultScheduleStatus.STOPPED,
) -> ScheduleDefinition:
    """A schedule for the watcher job that skips a tick while an earlier run of that job, or a consumer's
    re-materialization run of the same assets, is still in progress, so two dbt builds never work on
    the same models at once (and never on the same DuckDB file).

    Args:
        assets: the producer definition (its consumers' retry job counts as busy too).
        job: the job the schedule launches.
        cron_schedule: when.
        name: the schedule's name (default ``<job>_schedule``).
        execution_timezone: timezone of ``cron_schedule``.
        default_status: whether the schedule runs as soon as the code location loads.

    Example::

        build_watcher_schedule(my_dbt, dbt_build_job, "0 6 * * *", name="daily")
    """
    busy_jobs = {job.name, contract.retry_job_name(assets)}

    def evaluate(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        for job_name in sorted(busy_jobs):
            running = context.instance.get_run_records(
                RunsFilter(job_name=job_name, statuses=list(IN_PROGRESS)), limit=1
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
