"""``DbtWatcherProjectComponent``: dagster-dbt's ``DbtProjectComponent`` for ``dg`` projects, whose
assets run as ONE ``dbt build`` through :class:`DbtWatcherResource`, with the watcher's job, retry job,
consumer sensors and schedule, all from one ``defs.yaml``.

Everything dagster-dbt's component resolves (``project``, ``select``/``exclude``/``selector``,
``translation``, ``translation_settings``, ``op``, ``cli_args`` templating, the project's defs state)
is the parent's; this module only replaces what runs the build and adds the watcher's attributes.

Example (``defs.yaml``)::

    type: dagster_watcher.DbtWatcherProjectComponent
    attributes:
      project: "{{ context.project_root }}/../my_dbt_project"
      threads: 8
      retry_policy: {max_retries: 2}
      downstream: {customers: crm_sync_job}
      schedule: {cron_schedule: "0 6 * * *"}
"""

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from dagster import Resolver
from dagster_dbt import DbtProject, DbtProjectComponent
from dagster_shared.yaml_utils import safe_load_yaml

from . import contract
from ._compat import dbt_component_scope
from .asset_decorator import dbt_watcher_assets
from .consumers import build_watcher_schedule, build_watcher_sensors
from .dagster_mapping import DagsterNodeEvent
from .errors import WatcherConfigError
from .project import prepare_manifest
from .resource import DbtWatcherResource, InvocationMode
from .retry import WatcherRetryPolicy

_DEFAULT_POLICY = WatcherRetryPolicy()
# What a Dagster job name may be; any other `downstream` string is an asset selection.
_JOB_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class WatcherRetryPolicyArgs(dg.Resolvable):
    """The YAML form of :class:`WatcherRetryPolicy` (how consumers re-materialize failed nodes)."""

    max_retries: int = _DEFAULT_POLICY.max_retries
    delay_seconds: float = _DEFAULT_POLICY.delay_seconds
    backoff: float = _DEFAULT_POLICY.backoff
    non_retryable: Annotated[
        list[str] | None,
        Resolver.default(
            description=(
                "Regular expressions of dbt errors that are not retried; replaces the defaults "
                "(compile/parse errors, profile/target/env var and connection errors)."
            ),
            examples=[["Compilation Error", "permission denied"]],
        ),
    ] = None
    retry_terminated: bool = _DEFAULT_POLICY.retry_terminated

    def to_policy(self) -> WatcherRetryPolicy:
        """The policy these attributes describe.

        Example::

            WatcherRetryPolicyArgs(max_retries=3).to_policy()
        """
        return WatcherRetryPolicy(
            max_retries=self.max_retries,
            delay_seconds=self.delay_seconds,
            backoff=self.backoff,
            non_retryable=tuple(self.non_retryable)
            if self.non_retryable is not None
            else _DEFAULT_POLICY.non_retryable,
            retry_terminated=self.retry_terminated,
        )


@dataclass
class WatcherSensorsArgs(dg.Resolvable):
    """How the consumer sensors (one per model, seed and snapshot, plus the retry coordinator) tick.
    Unset values take :func:`build_watcher_sensors`' defaults."""

    minimum_interval_seconds: int | None = None
    default_status: Literal["running", "stopped"] | None = None
    heartbeat_timeout: float | None = None
    idle_status: Literal["running", "stopped"] | None = None
    """Sensors of models without a downstream job (``build_watcher_sensors``' ``idle_status``)."""

    def kwargs(self) -> dict[str, Any]:
        """The ``build_watcher_sensors`` keyword arguments that are set."""
        out: dict[str, Any] = {}
        if self.minimum_interval_seconds is not None:
            out["minimum_interval_seconds"] = self.minimum_interval_seconds
        if self.default_status is not None:
            out["default_status"] = dg.DefaultSensorStatus(self.default_status.upper())
        if self.heartbeat_timeout is not None:
            out["heartbeat_timeout"] = self.heartbeat_timeout
        if self.idle_status is not None:
            out["idle_status"] = dg.DefaultSensorStatus(self.idle_status.upper())
        return out


@dataclass
class WatcherScheduleArgs(dg.Resolvable):
    """A :func:`build_watcher_schedule` for the watcher job (skips a tick while a build is running)."""

    cron_schedule: str
    name: str | None = None
    execution_timezone: str | None = None
    default_status: Literal["running", "stopped"] = "stopped"


# dagster-dbt's scaffolder (``--project-path``, ``--git-url``, ``--init``) is inherited with the class.
@dataclass
class DbtWatcherProjectComponent(DbtProjectComponent):
    """dagster-dbt's ``DbtProjectComponent`` whose assets are built by ONE ``dbt build`` that reports
    every node as it finishes (:func:`dbt_watcher_assets` / :class:`DbtWatcherResource`), plus the job
    that builds them, the retry job, one consumer sensor per model and an optional schedule.

    Takes every attribute of ``DbtProjectComponent`` (``project``, ``select``, ``exclude``,
    ``selector``, ``translation``, ``op``, ...). ``cli_args`` are extra ``dbt build`` flags: its first
    element may be ``build`` (the default), a ``--vars`` entry becomes the build's vars, and partition
    templates (``{{ partition_key }}``, ...) render as in dagster-dbt. Scaffold one with
    ``dg scaffold defs dagster_watcher.DbtWatcherProjectComponent <name> --project-path <dbt project>``.

    Args:
        invocation_mode: ``auto``, ``runner`` or ``subprocess`` (see :class:`DbtWatcherResource`).
        threads: dbt threads (default: the profile's).
        job_name: name of the job that builds every asset (default ``<dbt project name>_watcher_job``).
        retry_policy: how consumers retry failed nodes; ``null`` disables retries.
        sensors: tick interval and default status of the consumer sensors; ``null``: no sensors.
        downstream: model name -> a job name, or an asset selection string (``key:report``), or a
            list of them, launched as soon as that model is materialized.
        schedule: a cron schedule of the watcher job.

    Raises:
        WatcherConfigError: an attribute the watcher cannot honour (named in the message).

    Example (``defs.yaml``)::

        type: dagster_watcher.DbtWatcherProjectComponent
        attributes:
          project: "{{ context.project_root }}/../my_dbt_project"
          retry_policy: {max_retries: 2}
          downstream: {customers: crm_sync_job}
          schedule: {cron_schedule: "0 6 * * *"}
    """

    invocation_mode: Annotated[
        InvocationMode,
        Resolver.default(
            description=(
                "'runner': dbt in the step's process over the parsed manifest (fastest); 'subprocess': a "
                "`dbt` child process; 'auto': runner when dbt is importable."
            )
        ),
    ] = "auto"
    threads: Annotated[int | None, Resolver.default(description="dbt threads (default: the profile's).")] = None
    job_name: Annotated[
        str | None,
        Resolver.default(
            description="Name of the job building every asset. Default: `<dbt project name>_watcher_job`."
        ),
    ] = None
    retry_policy: Annotated[
        WatcherRetryPolicyArgs | None,
        Resolver.default(
            description="How consumer sensors re-materialize failed nodes; null disables retries.",
            examples=[{"max_retries": 2, "delay_seconds": 60, "backoff": 2}],
        ),
    ] = field(default_factory=WatcherRetryPolicyArgs)
    sensors: Annotated[
        WatcherSensorsArgs | None,
        Resolver.default(
            description="The consumer sensors' settings; null builds no sensors.",
            examples=[{"minimum_interval_seconds": 30, "default_status": "stopped"}],
        ),
    ] = field(default_factory=WatcherSensorsArgs)
    downstream: Annotated[
        dict[str, str | list[str]],
        Resolver.default(
            description=(
                "Model name -> job name(s) or asset selection string(s) to launch when it materializes. A bare "
                "name is a job; anything else (`key:report`, `group:marts`) is an asset selection."
            ),
            examples=[{"customers": "crm_sync_job", "orders": ["key:order_report", "finance_job"]}],
        ),
    ] = field(default_factory=dict)
    schedule: Annotated[
        WatcherScheduleArgs | None,
        Resolver.default(
            description="A cron schedule of the watcher job, skipped while a build is running.",
            examples=[{"cron_schedule": "0 6 * * *", "name": "daily_dbt"}],
        ),
    ] = None

    @cached_property
    def watcher_retry_policy(self) -> WatcherRetryPolicy | None:
        """The consumers' retry policy (None: retries disabled)."""
        return self.retry_policy.to_policy() if self.retry_policy is not None else None

    def watcher_resource(self, project: DbtProject) -> DbtWatcherResource:
        """The resource the asset body builds with: this component's project, target and settings.

        Example::

            class MyComponent(DbtWatcherProjectComponent):
                def watcher_resource(self, project):
                    return super().watcher_resource(project).model_copy(update={"extra_flags": ["--fail-fast"]})
        """
        return DbtWatcherResource(project_dir=project, invocation_mode=self.invocation_mode, threads=self.threads)

    def build_defs_from_state(self, context: dg.ComponentLoadContext, state_path: Path | None) -> dg.Definitions:
        """The watcher's definitions for the project as the parent resolves it: the assets, the watcher
        job, the retry job, the consumer sensors and the schedule.

        Raises:
            WatcherConfigError: ``include_metadata`` is set, or ``downstream`` names no asset of the project.
            ManifestPreparationError: dbt could not parse the project (no defs state stored).
        """
        if self.include_metadata:
            raise WatcherConfigError(
                f"DbtWatcherProjectComponent: include_metadata {self.include_metadata} is not supported yet; "
                "remove it from defs.yaml (the watcher's events carry relation_name, rows_affected and timings)."
            )
        project = self._project_manager.get_project(state_path)
        if state_path is None:
            # No stored state (a fresh clone outside `dagster dev`, or prepare_if_dev: false): parse in this
            # process, and only when the manifest is missing or stale, as definitions.py files do.
            prepare_manifest(project)
        res_ctx = context.resolution_context
        op_tags = dict(self.op.tags or {}) if self.op else {}
        resource = self.watcher_resource(project)

        @dbt_watcher_assets(
            manifest=project.manifest_path,
            project=project,
            select=self.select,
            exclude=self.exclude,
            selector=self.selector or None,
            name=self.op.name if self.op and self.op.name else project.name,
            dagster_dbt_translator=self.translator,
            backfill_policy=self.op.backfill_policy if self.op else None,
            op_tags=op_tags,
            pool=self.op.pool if self.op else None,
        )
        def _watcher_fn(context: dg.AssetExecutionContext) -> Iterator[Any]:
            with dbt_component_scope(res_ctx):
                yield from self.execute(context=context, dbt=resource)

        job = dg.define_asset_job(
            self.job_name or f"{project.name}_watcher_job",
            selection=dg.AssetSelection.assets(_watcher_fn),
            description=f"Build every dbt node of {project.name!r} in one `dbt build`.",
        )
        sensors: list[dg.SensorDefinition] = []
        if self.sensors is not None:
            sensors = build_watcher_sensors(
                _watcher_fn,
                downstream=_downstream_targets(self.downstream),
                retry_policy=self.watcher_retry_policy,
                **self.sensors.kwargs(),
            )
        elif self.downstream:
            raise WatcherConfigError(
                "DbtWatcherProjectComponent: `downstream` needs the consumer sensors, but `sensors` is null."
            )
        schedules = []
        if self.schedule is not None:
            schedules.append(
                build_watcher_schedule(
                    _watcher_fn,
                    job,
                    self.schedule.cron_schedule,
                    name=self.schedule.name,
                    execution_timezone=self.schedule.execution_timezone,
                    default_status=dg.DefaultScheduleStatus(self.schedule.default_status.upper()),
                )
            )
        # The retry job every sensor targets (the same object: a second definition of it would clash).
        retry_name = contract.retry_job_name(_watcher_fn)
        retry_jobs: list[Any] = [j for j in sensors[0].jobs if j.name == retry_name] if sensors else []
        return dg.Definitions(assets=[_watcher_fn], jobs=[job, *retry_jobs], sensors=sensors, schedules=schedules)

    def execute(  # type: ignore[override]  # the watcher's resource, not DbtCliResource
        self, context: dg.AssetExecutionContext, dbt: DbtWatcherResource
    ) -> Iterator[DagsterNodeEvent | dg.AssetObservation]:
        """Runs one ``dbt build`` of the step's selection and yields each node's event as it finishes.

        Override it to wrap the build; ``cli_args`` reach it as extra flags and vars.

        Raises:
            WatcherConfigError: ``cli_args`` name a dbt command other than ``build``.

        Example::

            class MyComponent(DbtWatcherProjectComponent):
                def execute(self, context, dbt):
                    context.log.info("starting the build")
                    yield from super().execute(context, dbt)
        """
        extra_args, dbt_vars = watcher_build_args(self.get_cli_args(context))
        yield from dbt.build(context, extra_args=extra_args, dbt_vars=dbt_vars)


def watcher_build_args(cli_args: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split the parent's resolved ``cli_args`` into ``dbt build`` flags and ``--vars``: the watcher
    always runs ``build``, and merges vars with the resource's.

    Raises:
        WatcherConfigError: a command other than ``build``, or ``--vars`` that are not a mapping.

    Example::

        watcher_build_args(["build", "--vars", '{"day": "2024-01-01"}'])  # ([], {"day": "2024-01-01"})
    """
    args = list(cli_args)
    if args and not args[0].startswith("-"):
        if args[0] != "build":
            raise WatcherConfigError(
                f"DbtWatcherProjectComponent runs `dbt build`, but cli_args start with {args[0]!r}: remove the "
                "command from cli_args (use --select/--exclude to narrow the build)."
            )
        args = args[1:]
    flags: list[str] = []
    dbt_vars: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--vars" or arg.startswith("--vars="):
            raw = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in arg else 2
            parsed = safe_load_yaml(raw) if raw else None  # dbt reads --vars as YAML (JSON is YAML)
            if not isinstance(parsed, Mapping):
                raise WatcherConfigError(f"cli_args: --vars {raw!r} is not a mapping of var names to values.")
            dbt_vars.update(parsed)
            continue
        flags.append(arg)
        i += 1
    return flags, dbt_vars


def _downstream_targets(
    downstream: Mapping[str, str | list[str]],
) -> dict[str | dg.AssetKey, list[str | dg.AssetSelection]]:
    """``downstream`` as :func:`build_watcher_sensors` takes it: job names stay names, any other string
    is parsed as an asset selection."""
    out: dict[str | dg.AssetKey, list[str | dg.AssetSelection]] = {}
    for model, refs in downstream.items():
        targets: list[str | dg.AssetSelection] = []
        for ref in [refs] if isinstance(refs, str) else refs:
            if _JOB_NAME.match(ref):
                targets.append(ref)
                continue
            try:
                targets.append(dg.AssetSelection.from_string(ref))
            except Exception as error:  # noqa: BLE001 - Dagster's parser raises several types
                raise WatcherConfigError(
                    f"downstream[{model!r}]: {ref!r} is neither a job name nor an asset selection ({error})."
                ) from error
        out[model] = targets
    return out


__all__ = [
    "DbtWatcherProjectComponent",
    "WatcherRetryPolicyArgs",
    "WatcherScheduleArgs",
    "WatcherSensorsArgs",
    "watcher_build_args",
]
