"""``DbtWatcherResource``: how the producer runs dbt (project, profile, threads, invocation mode)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dagster import AssetExecutionContext, ConfigurableResource
from dagster_dbt import DbtProject
from pydantic import Field, field_validator

from .dagster_mapping import DagsterNodeEvent
from .errors import WatcherConfigError
from .invocation import DbtInvocation, RunnerInvocation, SubprocessInvocation
from .producer import DbtResultSource, start_step, stream_build
from .project import (
    checked_project_dir,
    profile_fingerprint,
    profiles_dir_for,
    project_kwargs,
    recorded_fingerprint,
)

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
    target_path: str | None = Field(
        default=None,
        description=(
            "Where dbt writes compiled SQL and run_results.json. Default: <project>/target/dagster_watcher, "
            "so a build never overwrites the manifest.json the Dagster definitions were loaded from."
        ),
    )

    def __init__(self, project_dir: str | Path | DbtProject, **kwargs: Any) -> None:
        super().__init__(**project_kwargs(project_dir, kwargs))

    @field_validator("project_dir")
    @classmethod
    def _check_project_dir(cls, value: str) -> str:
        return checked_project_dir(value, "DbtWatcherResource")

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
        return Path(self.target_path or Path(self.project_dir) / "target" / "dagster_watcher").absolute()

    def build_args(
        self, selection_args: Sequence[str], extra_args: Sequence[str] = (), dbt_vars: Mapping[str, Any] | None = None
    ) -> list[str]:
        """The `dbt build` arguments for a selection (without the executable)."""
        args = ["build", "--project-dir", self.project_dir, "--target-path", os.fspath(self.resolved_target_path())]
        profiles_dir = profiles_dir_for(self.project_dir, self.profiles_dir)
        if profiles_dir:
            args += ["--profiles-dir", profiles_dir]
        if self.target:
            args += ["--target", self.target]
        if self.threads:
            args += ["--threads", str(self.threads)]
        merged_vars = {**self.dbt_vars, **(dbt_vars or {})}
        if merged_vars:
            args += ["--vars", json.dumps(merged_vars)]
        return [*args, *self.extra_flags, *extra_args, *selection_args]

    def make_invocation(self, args: Sequence[str], manifest: Mapping[str, Any] | None) -> DbtInvocation:
        # Anonymous usage stats would make dbt call out to the network on every invocation.
        env = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        if self.resolved_mode() == "runner":
            return RunnerInvocation(args, manifest=manifest, env=env)
        return SubprocessInvocation(args, dbt_executable=self._dbt_executable(), cwd=Path(self.project_dir), env=env)

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
    ) -> Iterator[DagsterNodeEvent]:
        """Run ``dbt build`` for the step's selection and yield each node's Dagster event as it finishes.

        Use it as the body of a :func:`dbt_watcher_assets` function::

            yield from dbt_watcher.build(context)

        Raises :class:`dagster.Failure` once every outcome is recorded if any node did not succeed.
        """
        plan = start_step(context)
        if plan is None:
            return
        args = self.build_args(plan.selection_args, extra_args, dbt_vars)
        manifest: Mapping[str, Any] | None = plan.manifest
        if self.resolved_mode() == "runner" and not self._manifest_matches_profile(plan.project):
            # The definitions' manifest was parsed against another profile/target/environment: its
            # relation names may point at another database. Let dbt parse for this build instead.
            context.log.warning(
                "dagster-watcher: the manifest was parsed for a different profile, target or environment "
                "than this build uses; dbt parses the project for this build. Re-parse (prepare_manifest) "
                "with the build's settings to skip this."
            )
            manifest = None
        invocation = self.make_invocation(args, manifest)
        context.log.info(f"dagster-watcher: dbt build of {len(plan.expected)} node(s) in {invocation.mode} mode")
        yield from stream_build(
            context,
            plan,
            DbtResultSource(invocation, plan.manifest, self.resolved_target_path()),
            progress=self.progress,
        )
