"""``DbtWatcherResource``: how the producer runs dbt (project, profile, threads, invocation mode)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dagster import AssetExecutionContext, AssetObservation, ConfigurableResource, InitResourceContext
from dagster_dbt import DbtProject
from pydantic import Field, field_validator

from .artifacts import build_dir, keep_partial_parse, partial_parse_args, prune_runs
from .dagster_mapping import DagsterNodeEvent
from .errors import DbtSelectionError, WatcherConfigError
from .freshness import SourceFreshness
from .invocation import DbtInvocation, RunnerInvocation, SubprocessInvocation
from .invocation._fetch import FetchPlan
from .partitions import (
    DEFAULT_PARTITION_VARS,
    checked_partition_vars,
    event_time_args,
    is_microbatch,
    render_partition_vars,
)
from .planning import BuildPlan, resolve_plan
from .producer import DbtResultSource, NoWork, record_abandoned_writers, start_step, stream_build
from .project import (
    check_parse_time_vars,
    checked_project_dir,
    manifest_older_than_project,
    profile_fingerprint,
    profiles_dir_for,
    project_kwargs,
    recorded_fingerprint,
)
from .runtime_metadata import FetchedMetadata, fetch_plan
from .selection import DbtSelectionFlags, SelectionResolver

#: How the producer runs dbt: ``runner`` (in-process dbtRunner over the definition's manifest, in a
#: forked child), ``subprocess`` (a `dbt` process whose JSON log is read), ``auto`` (runner when dbt
#: is importable).
InvocationMode = Literal["auto", "runner", "subprocess"]


def dbt_is_importable() -> bool:
    try:
        import dbt.cli.main  # noqa: F401
    except ImportError:
        return False
    return True


class DbtWatcherResource(ConfigurableResource):
    """Runs one ``dbt build`` per step of a :func:`dbt_watcher_assets` definition and streams every
    node's outcome to Dagster as it finishes.

    Example::

        dbt_watcher = DbtWatcherResource(project_dir=my_dbt_project, threads=8)

    ``project_dir`` also accepts a dagster-dbt :class:`~dagster_dbt.DbtProject`, whose profiles dir and
    target are then used unless set here.
    """

    project_dir: str = Field(description="Path to the dbt project (the folder with dbt_project.yml).")
    profiles_dir: str | None = Field(
        default=None,
        description="Folder holding profiles.yml. Default: the project dir if it has one, else dbt's default.",
    )
    target: str | None = Field(default=None, description="dbt target (profiles.yml output) to run against.")
    threads: int | None = Field(default=None, description="dbt threads. Default: the profile's setting.")
    invocation_mode: InvocationMode = Field(
        default="auto",
        description=(
            "'runner': dbt in this process via dbtRunner, reusing the parsed manifest (fastest). "
            "'subprocess': a `dbt` child process whose JSON log is read line by line (dbt may live in "
            "another environment, see dbt_executable). 'auto': runner when dbt is importable."
        ),
    )
    dbt_executable: str = Field(default="dbt", description="The dbt command for subprocess mode.")
    dbt_vars: dict[str, Any] = Field(default_factory=dict, description="dbt --vars for every build.")
    extra_flags: list[str] = Field(
        default_factory=list, description="More `dbt build` flags, e.g. ['--full-refresh', '--fail-fast']."
    )
    progress: bool = Field(default=True, description="Print a progress line per node and a summary to stdout.")
    state_path: str | None = Field(
        default=None,
        description=(
            "Folder with the manifest.json of a previous (e.g. production) build, for `state:` selection and "
            "--defer (slim CI). Given to dbt as --state when a selection uses state or defer is on. "
            "Default: the DbtProject's state_path."
        ),
    )
    defer: bool = Field(
        default=False, description="Pass --defer: refs to nodes not built in this run resolve to the state's relations."
    )
    skip_stale_sources: bool = Field(
        default=False,
        description=(
            "Run `dbt source freshness` for the sources the build reads first; models downstream of a source "
            "whose freshness is `error` are left out of the build (recorded as not_selected, the source named)."
        ),
    )
    target_path: str | None = Field(
        default=None,
        description=(
            "Where builds write dbt's artifacts: one folder per run and step attempt, "
            "<target_path>/runs/<run_id>/<step>-<attempt> (compiled SQL, run_results.json, the timeline). "
            "Default: <project>/target/dagster_watcher, so a build never overwrites the manifest.json the "
            "Dagster definitions were loaded from."
        ),
    )
    keep_runs: int = Field(
        default=20,
        ge=1,
        description=(
            "How many run folders under target_path/runs to keep: when a build starts, the oldest beyond "
            "this number (by modification time) are removed, never one of a run still in progress."
        ),
    )
    fetch_row_counts: bool = Field(
        default=False,
        description=(
            "Attach `dagster/row_count` to each built table's materialization, as dagster-dbt's "
            "fetch_row_counts(): a count(*) through dbt's own adapter, in the dbt process, after the node "
            "(never for views)."
        ),
    )
    fetch_column_metadata: bool = Field(
        default=False,
        description=(
            "Attach `dagster/column_schema` and `dagster/column_lineage` to each built node's materialization, "
            "as dagster-dbt's fetch_column_metadata(): the columns of the node and its parents read through "
            "dbt's own adapter after the node, lineage traced by dagster-dbt's sqlglot-based builder."
        ),
    )

    partition_vars: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_PARTITION_VARS),
        description=(
            "dbt vars a partitioned step's build gets, as {role: var name}: 'start' and 'end' of its time "
            "window (ISO 8601, end exclusive; for other partitions the first and last key of its range), "
            "'key' of a single partition. An empty name leaves that var out. Default: "
            "{'start': 'min_date', 'end': 'max_date', 'key': 'partition_key'}."
        ),
    )
    partition_time_format: str | None = Field(
        default=None,
        description=(
            "strftime format of a time window's start and end in partition_vars, e.g. '%Y-%m-%d'. "
            "Default: ISO 8601 with the offset (2024-02-01T00:00:00+00:00)."
        ),
    )

    heartbeat_interval: float = Field(
        default=15.0,
        ge=0,
        description=(
            "Seconds between the producer's heartbeats (a run tag the consumers read: a run whose heartbeat "
            "is too old is dead or stuck, on any host). Written from the writer's thread; 0 disables."
        ),
    )

    def __init__(self, project_dir: str | Path | DbtProject, **kwargs: Any) -> None:
        if isinstance(project_dir, DbtProject) and project_dir.state_path is not None:
            kwargs.setdefault("state_path", os.fspath(project_dir.state_path))
        super().__init__(**project_kwargs(project_dir, kwargs))

    @field_validator("project_dir")
    @classmethod
    def _check_project_dir(cls, value: str) -> str:
        return checked_project_dir(value, "DbtWatcherResource")

    @field_validator("partition_vars")
    @classmethod
    def _check_partition_vars(cls, value: dict[str, str]) -> dict[str, str]:
        checked_partition_vars(value, "DbtWatcherResource")
        return value

    @field_validator("profiles_dir")
    @classmethod
    def _check_profiles_dir(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).absolute()
        if not (path / "profiles.yml").is_file():
            raise WatcherConfigError(
                f"profiles_dir {value!r} ({path}) has no profiles.yml. Point profiles_dir at the folder "
                "that holds profiles.yml, or leave it unset to use dbt's default (~/.dbt)."
            )
        return os.fspath(path.resolve())

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Dagster tears a run's resources down even when a termination's interrupt ended the step:
        record the lost nodes of a producer writer it left suspended (see
        :func:`~dagster_watcher.producer.record_abandoned_writers`)."""
        record_abandoned_writers(context.run.run_id if context.run is not None else None)

    # -- what the producer calls ------------------------------------------------------------------

    def resolved_mode(self) -> Literal["runner", "subprocess"]:
        if self.invocation_mode == "auto":
            return "runner" if dbt_is_importable() else "subprocess"
        return self.invocation_mode

    def _manifest_matches_profile(self, project: DbtProject | None) -> bool:
        if project is None:
            return True  # a manifest given without a DbtProject: nothing to compare, trust it
        recorded = recorded_fingerprint(Path(project.manifest_path))
        if recorded is None:
            return True
        return recorded == profile_fingerprint(
            profiles_dir_for(self.project_dir, self.profiles_dir) or Path.home() / ".dbt", self.target or project.target
        )

    def resolved_target_path(self) -> Path:
        """The root of every build's artifacts (``target_path``, or its default), absolute."""
        return Path(self.target_path or Path(self.project_dir) / "target" / "dagster_watcher").absolute()

    def prepare_build_dir(self, context: AssetExecutionContext) -> Path:
        """Create this step attempt's artifact folder (see :mod:`dagster_watcher.artifacts`) and apply
        the retention rule (``keep_runs``) to the other runs' folders; returns the folder.

        Args:
            context: the producer step's context (its run id, op name and retry number name the folder).
        """
        root = self.resolved_target_path()
        path = build_dir(root, context.run.run_id, context.op_def.name, context.retry_number + 1)
        path.mkdir(parents=True, exist_ok=True)
        instance = context.instance

        def in_progress(run_id: str) -> bool:
            try:
                run = instance.get_run_by_id(run_id)
            except Exception:  # noqa: BLE001 - when in doubt, keep the folder
                return True
            return run is not None and not run.is_finished

        removed = prune_runs(root, self.keep_runs, in_progress=in_progress, current=path.parent.name)
        if removed:
            context.log.debug(f"dagster-watcher: removed {len(removed)} old run folder(s) (keep_runs={self.keep_runs})")
        return path

    def common_args(self, dbt_vars: Mapping[str, Any] | None = None) -> list[str]:
        """The arguments every dbt command of a build gets: project, profile, target, vars."""
        args = ["--project-dir", self.project_dir]
        profiles_dir = profiles_dir_for(self.project_dir, self.profiles_dir)
        if profiles_dir:
            args += ["--profiles-dir", profiles_dir]
        if self.target:
            args += ["--target", self.target]
        merged_vars = self.merged_vars(dbt_vars)
        if merged_vars:
            args += ["--vars", json.dumps(merged_vars)]
        return args

    def merged_vars(self, dbt_vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**self.dbt_vars, **(dbt_vars or {})}

    def user_flags(self, extra_args: Sequence[str] = ()) -> tuple[DbtSelectionFlags, list[str]]:
        """The user's dbt flags (resource ``extra_flags``, then the call's ``extra_args``) split into
        what selects nodes and the rest; ``state_path``/``defer`` added as dbt flags."""
        flags, rest = DbtSelectionFlags.split([*self.extra_flags, *extra_args])
        state = list(flags.state_args)
        wants_state = (
            self.defer
            or "--defer" in state
            or any("state:" in s or "result:" in s for s in (*flags.select, *flags.exclude))
        )
        if self.state_path and wants_state and "--state" not in state:
            state += ["--state", self.state_path]
        if self.defer and "--defer" not in state and "--no-defer" not in state:
            state.append("--defer")
        return dataclasses.replace(flags, state_args=tuple(state)), rest

    def make_invocation(
        self, args: Sequence[str], manifest: Mapping[str, Any] | None, fetch: FetchPlan | None = None
    ) -> DbtInvocation:
        """The dbt command of a build (``fetch``: runtime metadata the dbt process reads, see
        :meth:`can_fetch_metadata`)."""
        # Anonymous usage stats would make dbt call out to the network on every invocation.
        env = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        if self.resolved_mode() == "runner":
            return RunnerInvocation(args, manifest=manifest, env=env, cwd=self.project_dir, fetch=fetch)
        return SubprocessInvocation(
            args, dbt_executable=self._dbt_executable(), cwd=Path(self.project_dir), env=env, fetch=fetch
        )

    def can_fetch_metadata(self) -> str | None:
        """Why this resource's builds cannot read runtime metadata in the dbt process, or None when they
        can: runner mode always can; subprocess mode only runs its own dbt entry point (the dbt beside
        dagster-watcher) with the default ``dbt_executable``."""
        if self.resolved_mode() == "runner":
            return None
        if self.dbt_executable != "dbt":
            return (
                f"dbt_executable={self.dbt_executable!r} runs dbt in another environment, where dagster-watcher "
                "cannot read metadata through dbt's adapter; use runner mode or the default dbt_executable"
            )
        if not dbt_is_importable():
            return "dbt is not installed beside dagster-watcher, so its adapter cannot be used to read metadata"
        return None

    def selection_resolver(self, manifest: Mapping[str, Any], build: Path | None = None) -> SelectionResolver:
        """dbt's selector for this resource's environment (in this process when dbt is importable);
        ``dbt ls`` writes into ``build``/selection (default: the target path's)."""
        in_process = dbt_is_importable()
        return SelectionResolver(
            manifest,
            target_path=os.fspath((build or self.resolved_target_path()) / "selection"),
            dbt_executable=None if in_process else self._dbt_executable(),
            cwd=self.project_dir,
            env={"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
            in_process=in_process,
        )

    def _dbt_executable(self) -> str:
        found = shutil.which(self.dbt_executable)
        if found:
            return found
        # A virtualenv that is not activated still has its dbt next to its python.
        beside = Path(sys.executable).parent / self.dbt_executable
        if os.sep not in self.dbt_executable and beside.is_file():
            return os.fspath(beside)
        raise WatcherConfigError(
            f"dbt_executable {self.dbt_executable!r} was not found on PATH: set "
            "DbtWatcherResource(dbt_executable=...) to the dbt of the environment that runs this project."
        )

    def build(
        self,
        context: AssetExecutionContext,
        *,
        extra_args: Sequence[str] = (),
        dbt_vars: Mapping[str, Any] | None = None,
        skip_stale_sources: bool | None = None,
        fetch_row_counts: bool | None = None,
        fetch_column_metadata: bool | None = None,
        partition_vars: Mapping[str, str | None] | None = None,
    ) -> Iterator[DagsterNodeEvent | AssetObservation]:
        """Run ``dbt build`` for the step's selection and yield each node's Dagster event as it finishes.

        What dbt runs is decided by dbt's own selector before it starts: the Dagster selection
        intersected with the user's selection flags (``extra_flags``, ``extra_args``); planned nodes it
        leaves out are recorded as ``not_selected``.

        Args:
            context: the asset step's context.
            extra_args: more `dbt build` flags for this call (e.g. ``["--select", "state:modified+"]``).
            dbt_vars: more ``--vars`` for this call (they win over the partition vars, which win over
                the resource's ``dbt_vars``).
            skip_stale_sources: overrides the resource's ``skip_stale_sources`` for this call.
            fetch_row_counts: overrides the resource's ``fetch_row_counts`` for this call
                (dagster-dbt's ``.fetch_row_counts()``).
            fetch_column_metadata: overrides the resource's ``fetch_column_metadata`` for this call
                (dagster-dbt's ``.fetch_column_metadata()``).
            partition_vars: overrides the resource's ``partition_vars`` names for this call.

        A partitioned step (one partition, or a range in a single-run backfill) is ONE build whose
        vars hold its partitions (``partition_vars``); a time window also becomes dbt's
        ``--event-time-start``/``--event-time-end`` when a microbatch model is built, so dbt builds
        the window's batches, each on its own: a batch that fails leaves only its partitions
        unmaterialized.

        Raises:
            NodesDidNotSucceed: once every outcome is recorded, when a node did not succeed.
            DbtDidNotComplete: once every outcome is recorded, when dbt did not run to the end.
            WatcherConfigError: a flag or var that cannot work (named in the message).

        Example::

            @dbt_watcher_assets(manifest=project.manifest_path, project=project)
            def my_dbt(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
                yield from dbt_watcher.build(context, fetch_row_counts=True, fetch_column_metadata=True)
        """
        plan = start_step(context)
        if plan is None:
            return
        rendered: dict[str, str] = {}
        if plan.partitions is not None:
            names = checked_partition_vars(
                self.partition_vars if partition_vars is None else partition_vars, "DbtWatcherResource.build"
            )
            rendered = render_partition_vars(plan.partitions, names, self.partition_time_format)
            context.log.info(
                f"dagster-watcher: partition(s) {plan.partitions.describe()}: dbt vars {json.dumps(rendered)}"
            )
        call_vars = {**rendered, **(dbt_vars or {})}
        merged_vars = self.merged_vars(call_vars)
        check_parse_time_vars(plan.project, self.project_dir, merged_vars)
        user, rest = self.user_flags(extra_args)
        common = self.common_args(call_vars)
        build = self.prepare_build_dir(context)
        resolver = self.selection_resolver(plan.manifest, build)
        stale: dict[str, str] = {}
        if self.skip_stale_sources if skip_stale_sources is None else skip_stale_sources:
            check = SourceFreshness(self, plan, resolver, common, user, target_path=build / "freshness")
            stale = yield from check.run(context)
        try:
            resolve_plan(plan, user, resolver, common, stale_sources=stale)
        except DbtSelectionError as error:
            # dbt refuses this build as it would refuse `dbt build` itself: the same failure, recorded
            # the same way (every planned node lost, the step fails with dbt's message).
            yield from stream_build(context, plan, NoWork.failed(self.resolved_mode(), str(error)), progress=False)
            return
        if not plan.expected:
            context.log.info("dagster-watcher: dbt's selection runs none of this step's nodes; dbt is not started.")
            yield from stream_build(context, plan, NoWork.nothing_selected(), progress=self.progress)
            return
        root = self.resolved_target_path()
        args = ["build", *common, "--target-path", os.fspath(build), *partial_parse_args(root, rest)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        args += [*rest, *user.state_args, *plan.selection_args]
        if plan.partitions is not None and "--event-time-start" not in rest and self._builds_microbatch(plan):
            args += event_time_args(plan.partitions)
        manifest: Mapping[str, Any] | None = plan.manifest
        if self.resolved_mode() == "runner":
            stale_reason = self._runner_manifest_problem(plan)
            if stale_reason:
                context.log.warning(f"dagster-watcher: {stale_reason}; dbt parses the project for this build.")
                manifest = None
        fetched = self._fetched_metadata(
            context,
            plan,
            self.fetch_row_counts if fetch_row_counts is None else fetch_row_counts,
            self.fetch_column_metadata if fetch_column_metadata is None else fetch_column_metadata,
            build,
        )
        invocation = self.make_invocation(args, manifest, fetch=fetched.plan if fetched is not None else None)
        context.log.info(
            f"dagster-watcher: dbt build of {len(plan.expected)} node(s) in {invocation.mode} mode; "
            f"dbt's artifacts (run_results.json, compiled SQL, the timeline) in {build}"
        )
        try:
            yield from stream_build(
                context,
                plan,
                DbtResultSource(invocation, plan.manifest, build, expected=plan.expected, fetched=fetched),
                progress=self.progress,
                heartbeat_interval=self.heartbeat_interval,
            )
        finally:
            keep_partial_parse(build, root)

    def _fetched_metadata(
        self, context: AssetExecutionContext, plan: BuildPlan, row_counts: bool, columns: bool, build: Path
    ) -> FetchedMetadata | None:
        """What the dbt process reads after each built node (None: nothing), for this build's assets."""
        if not (row_counts or columns):
            return None
        why_not = self.can_fetch_metadata()
        if why_not is not None:
            context.log.warning(f"dagster-watcher: row counts and column metadata are not fetched: {why_not}.")
            return None
        assets = [u for u in plan.expected if (t := plan.target_of(u)) is not None and t.asset_key is not None]
        fetch = fetch_plan(plan.manifest, assets, row_counts=row_counts, columns=columns)
        if fetch is None:
            return None
        return FetchedMetadata(
            fetch,
            plan.manifest,
            translator=plan.translator,
            project=plan.project,
            target_path=build,
        )

    @staticmethod
    def _builds_microbatch(plan: BuildPlan) -> bool:
        nodes = plan.manifest.get("nodes") or {}
        return any(is_microbatch(nodes.get(u) or {}) for u in plan.expected)

    def _runner_manifest_problem(self, plan: BuildPlan) -> str | None:
        """Why runner mode must not execute the definition's manifest as it is, or None: it was parsed
        for another profile/target/environment (relation names may point at another database), or the
        project's files changed after it was parsed (subprocess mode would build the new SQL)."""
        if not self._manifest_matches_profile(plan.project):
            return "the manifest was parsed for a different profile, target or environment than this build uses"
        if manifest_older_than_project(plan.manifest, Path(self.project_dir)):
            return "project files changed after the definitions' manifest was parsed"
        return None
