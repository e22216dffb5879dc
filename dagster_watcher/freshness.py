"""Freshness-gated builds: ``dbt source freshness`` for the sources a build reads, one observation per
source, and the sources in ``error`` freshness handed to the planner, which leaves everything
downstream of them out of the build (``not_selected``, the stale source named)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import AssetExecutionContext, AssetObservation, MetadataValue

from . import contract
from .planning import BuildPlan
from .selection import DbtSelectionFlags, SelectionResolver

if TYPE_CHECKING:
    from .resource import DbtWatcherResource

#: Metadata keys of a source's freshness observation.
FRESHNESS_STATUS_KEY = "dagster_watcher/freshness"
MAX_LOADED_AT_KEY = "dagster_watcher/max_loaded_at"
AGE_SECONDS_KEY = "dagster_watcher/age_seconds"


class SourceFreshness:
    """One freshness check before a build.

    Args:
        resource: the resource that runs the build (its mode, project and profile).
        plan: the step's plan (its planned nodes decide which sources are read).
        resolver: dbt's selector, in the same environment.
        common_args: project/profile/vars arguments of the build.
        user: the user's selection flags (their state flags apply).
        target_path: where `dbt source freshness` writes (the build's folder's ``freshness``).
    """

    def __init__(
        self,
        resource: DbtWatcherResource,
        plan: BuildPlan,
        resolver: SelectionResolver,
        common_args: list[str],
        user: DbtSelectionFlags,
        *,
        target_path: Path | None = None,
    ) -> None:
        self.resource = resource
        self.plan = plan
        self.resolver = resolver
        self.common_args = common_args
        self.user = user
        self.target_path = target_path or resource.resolved_target_path() / "freshness"

    def args(self) -> list[str]:
        upstream = sorted(
            f"+{f}" for u in self.plan.targets if u.split(".", 1)[0] != "test" if (f := self.plan.fqn_of(u))
        )
        return [
            "source",
            "freshness",
            *self.common_args,
            "--target-path",
            os.fspath(self.target_path),
            *(["--select", *upstream] if upstream else []),
        ]

    def run(self, context: AssetExecutionContext) -> Generator[AssetObservation, None, dict[str, str]]:
        """Run the check; yield one observation per source checked; return the stale sources (unique_id
        -> why)."""
        args = self.args()
        sources_json = self.target_path / "sources.json"
        sources_json.unlink(missing_ok=True)
        error = self._invoke(args)
        if not sources_json.is_file():
            context.log.warning(
                f"dagster-watcher: `dbt {shlex.join(args)}` wrote no sources.json ({error or 'no sources checked'}); "
                "no source is treated as stale."
            )
            return {}
        stale: dict[str, str] = {}
        for result in json.loads(sources_json.read_text()).get("results") or []:
            unique_id = str(result.get("unique_id") or "")
            status = str(result.get("status") or "")
            why = _describe(result)
            if status == "error":
                stale[unique_id] = why
            elif status == "runtime error":
                context.log.warning(f"dagster-watcher: freshness of {unique_id} could not be checked: {why}")
            key = self._asset_key(unique_id)
            if key is None:
                continue
            yield AssetObservation(
                asset_key=key,
                description=f"source freshness {status}: {why}",
                metadata=_metadata(unique_id, status, result),
            )
        return stale

    def _invoke(self, args: list[str]) -> str | None:
        if self.resolver.in_process:
            from .invocation.runner_mode import run_in_process

            _, error = run_in_process(
                args, manifest_json=self.plan.manifest, env=self.resolver.env, cwd=self.resource.project_dir
            )
            return error
        proc = subprocess.run(
            [self.resolver.dbt_executable or "dbt", *args],
            cwd=self.resource.project_dir,
            env={**os.environ, **self.resolver.env},
            capture_output=True,
            text=True,
            check=False,
        )
        return None if proc.returncode in (0, 1) else (proc.stdout + proc.stderr)[-2000:]

    def _asset_key(self, unique_id: str) -> Any:
        props = (self.plan.manifest.get("sources") or {}).get(unique_id)
        if not props:
            return None
        try:
            return self.plan.translator.get_asset_key(props)
        except Exception:  # noqa: BLE001 - a translator that cannot name it: no observation
            return None


def _describe(result: Mapping[str, Any]) -> str:
    age = result.get("max_loaded_at_time_ago_in_s")
    criteria = result.get("criteria") or {}
    limit = criteria.get("error_after") or {}
    if result.get("status") == "runtime error":
        return str(result.get("error") or result.get("message") or "runtime error")
    parts = [f"newest row loaded at {result.get('max_loaded_at')}"]
    if isinstance(age, int | float):
        parts.append(f"{age / 86400:.1f} days ago")
    if limit.get("count") is not None:
        parts.append(f"error after {limit.get('count')} {limit.get('period')}")
    return ", ".join(parts)


def _metadata(unique_id: str, status: str, result: Mapping[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        contract.UNIQUE_ID_KEY: unique_id,
        FRESHNESS_STATUS_KEY: status,
        MAX_LOADED_AT_KEY: str(result.get("max_loaded_at") or ""),
    }
    age = result.get("max_loaded_at_time_ago_in_s")
    if isinstance(age, int | float):
        metadata[AGE_SECONDS_KEY] = MetadataValue.float(float(age))
    return metadata


__all__ = ["SourceFreshness"]
