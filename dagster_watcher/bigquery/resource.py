"""``BigQueryWatcherResource``: the producer's BigQuery mode. The step's dbt models are compiled once
(``dbt compile`` with dbt-bigquery) and then run as asynchronous BigQuery jobs by
:class:`~dagster_watcher.bigquery.BigQueryEngine`, many in flight at once and polled from the op's
own thread; each node's outcome goes to Dagster the moment its job finishes, through the same
writer (:func:`~dagster_watcher.producer.stream_build`) as a ``dbt build``.

The body of a :func:`~dagster_watcher.dbt_watcher_assets` definition is the same as with
:class:`~dagster_watcher.DbtWatcherResource`::

    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def my_dbt(context: AssetExecutionContext, bigquery_watcher: BigQueryWatcherResource):
        yield from bigquery_watcher.build(context)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    InitResourceContext,
)
from dagster_dbt import DbtProject
from pydantic import Field, field_validator

from dagster_watcher._text import describe_exception, scrub_secrets
from dagster_watcher.bigquery.compile import COMPILED_IDS_KEY, compile_project
from dagster_watcher.bigquery.config import BigQueryEngineConfig
from dagster_watcher.bigquery.engine import BigQueryEngine
from dagster_watcher.bigquery.sql import COMPILE_ERROR_KEY, RENDERED_HOOKS_KEY
from dagster_watcher.contract import RETRY_OF_TAG
from dagster_watcher.dagster_mapping import DagsterNodeEvent
from dagster_watcher.errors import WatcherConfigError
from dagster_watcher.invocation import InvocationExit
from dagster_watcher.planning import BuildPlan
from dagster_watcher.producer import NoWork, record_abandoned_writers, start_step, stream_build
from dagster_watcher.project import checked_project_dir, profiles_dir_for, project_kwargs
from dagster_watcher.status import NodeResult

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

__all__ = ["BigQueryResultSource", "BigQueryWatcherResource", "ReattachMode", "job_run_key"]

#: Dagster's tags on a re-execution "from failure" (run retries, "Re-execute from failure" in the UI).
_RESUME_TAGS = ("dagster/is_resume_retry", "dagster/is_asset_resume_retry")
_ROOT_RUN_TAG = "dagster/root_run_id"
_PARENT_RUN_TAG = "dagster/parent_run_id"
_BIGQUERY_SCOPES = ("https://www.googleapis.com/auth/bigquery", "https://www.googleapis.com/auth/cloud-platform")
_COMPILE_INFO = "dw-compile.json"


#: Which re-executions reuse the job ids of the run they re-execute (see :func:`job_run_key`).
ReattachMode = Literal["from_failure", "always", "never"]


def job_run_key(instance: DagsterInstance, run: DagsterRun, mode: ReattachMode = "from_failure") -> str:
    """The run id BigQuery job ids are derived from: the run that *first* tried these nodes.

    A run that resumes another one uses the key of the run it resumes, so its jobs re-attach: a job
    still running is polled, a job that succeeded is not run again, a job that failed is retried
    under the next attempt number. With ``mode="from_failure"`` (default) a run resumes another when
    it is a re-execution *from failure* (Dagster's run retries and "Re-execute from failure" tag it
    ``dagster/is_resume_retry``; the Python API's ``ReexecutionOptions.from_failure`` re-executes
    selected steps of a run that did not succeed), or a dagster-watcher retry run launched by a
    consumer sensor. Any other run, including "re-execute all", gets fresh job ids and rebuilds.
    ``"always"``: every re-execution resumes its root run. ``"never"``: only retries of a step
    within one run re-attach.

    Args:
        instance: the Dagster instance holding the runs.
        run: the current Dagster run.
        mode: which re-executions resume the run they re-execute.

    Example::

        key = job_run_key(context.instance, context.run, "from_failure")
    """
    if mode == "never":
        return run.run_id
    current: DagsterRun | None = run
    key = run.run_id
    seen: set[str] = set()
    while current is not None and current.run_id not in seen:
        seen.add(current.run_id)
        key = current.run_id
        previous = _resumed_run_id(instance, current, mode)
        if not previous or previous == current.run_id:
            break
        key = previous
        current = instance.get_run_by_id(previous)
    return key


def _resumed_run_id(instance: DagsterInstance, run: DagsterRun, mode: ReattachMode) -> str | None:
    tags = run.tags
    root = run.root_run_id or tags.get(_ROOT_RUN_TAG)
    parent = run.parent_run_id or tags.get(_PARENT_RUN_TAG)
    if parent:
        if mode == "always" or any(tags.get(tag) == "true" for tag in _RESUME_TAGS):
            return root or parent
        if run.step_keys_to_execute is not None:
            previous = instance.get_run_by_id(parent)
            if previous is not None and previous.status != DagsterRunStatus.SUCCESS:
                return root or parent
        return None
    return tags.get(RETRY_OF_TAG)


class BigQueryResultSource:
    """A :class:`~dagster_watcher.producer.NodeResultSource` over :meth:`BigQueryEngine.run`.

    An error of the engine itself (no access to BigQuery) ends the source with an exit that says so;
    the producer then records every node not reported as lost.

    Args:
        engine: the engine that runs the nodes.
        manifest: the manifest compiled for this run.
        unique_ids: the nodes to run.
        run_id: the run the job ids derive from (:func:`job_run_key`).
        full_refresh: rebuild incremental models.

    Example::

        source = BigQueryResultSource(engine, manifest, unique_ids, job_run_key(context.instance, context.run))
        yield from stream_build(context, plan, source)
    """

    mode = "bigquery"

    def __init__(
        self,
        engine: BigQueryEngine,
        manifest: Mapping[str, Any],
        unique_ids: Iterable[str],
        run_id: str,
        *,
        full_refresh: bool = False,
    ) -> None:
        self.engine = engine
        self.manifest = manifest
        self.unique_ids = sorted(set(unique_ids))
        self.run_id = run_id
        self.full_refresh = full_refresh
        self._exit: InvocationExit | None = None

    @property
    def exit(self) -> InvocationExit | None:
        return self._exit

    def results(self) -> Iterator[NodeResult]:
        ok = True
        try:
            for result in self.engine.run(self.manifest, self.unique_ids, self.run_id, full_refresh=self.full_refresh):
                ok = ok and result.status.succeeded
                yield result
        except Exception as error:  # noqa: BLE001 - e.g. no access to BigQuery: every node is then "lost"
            self._exit = InvocationExit(ok=False, completed=False, error=describe_exception(error))
            return
        cancelled = self.engine.cancelled
        self._exit = InvocationExit(
            ok=ok and not cancelled,
            completed=not cancelled,
            error="the run was cancelled; in-flight BigQuery jobs were cancelled" if cancelled else None,
        )

    def release_held(self) -> list[NodeResult]:
        return []

    def cancel(self) -> None:
        self.engine.cancel()


class BigQueryWatcherResource(ConfigurableResource):
    """Runs the dbt models of a :func:`~dagster_watcher.dbt_watcher_assets` step as asynchronous
    BigQuery jobs (see ``docs/bigquery.md``).

    Example::

        bigquery_watcher = BigQueryWatcherResource(
            project_dir=my_dbt_project,          # or a dagster-dbt DbtProject
            target="prod",                        # a BigQuery target of the dbt profile
            project="my-gcp-project",
            location="EU",
            credentials_json=EnvVar("BIGQUERY_SERVICE_ACCOUNT_JSON"),
            max_concurrent_jobs=50,
        )

    dbt is used only to compile (``dbt compile``, once per step, right before the jobs are
    submitted so ``is_incremental()`` sees the warehouse as it is); dbt's profile must reach the same
    BigQuery as the fields below.

    Args:
        project_dir: the dbt project: its folder or a dagster-dbt ``DbtProject``.
        **kwargs: the fields below (each documented by its ``description``).

    Raises:
        WatcherConfigError: ``project_dir`` is not a dbt project folder, or ``credentials_json`` is
            neither service-account JSON nor its base64 (when credentials are made).
    """

    # -- BigQuery ---------------------------------------------------------------------------------
    project: str = Field(description="Google Cloud project the jobs run in (and are billed to).")
    location: str | None = Field(default=None, description="Job location, e.g. US, EU, europe-west1.")
    dataset: str | None = Field(
        default=None, description="Default dataset for unqualified names (compiled dbt SQL is fully qualified)."
    )
    api_endpoint: str | None = Field(
        default=None,
        description="BigQuery API URL override, e.g. http://127.0.0.1:9050 for a local BigQuery-API server.",
    )
    credentials_json: str | None = Field(
        default=None,
        description=(
            "Service-account key: the JSON text or its base64. Pass it as EnvVar('...') so it is read from "
            "the environment at run time and never stored in the run config."
        ),
    )
    keyfile: str | None = Field(default=None, description="Path of a service-account key file.")
    anonymous: bool = Field(
        default=False,
        description="Anonymous credentials, for a local server (implied by a plain-http api_endpoint).",
    )
    max_concurrent_jobs: int = Field(default=8, ge=1, description="At most this many BigQuery jobs in flight.")
    poll_interval: float = Field(default=1.0, gt=0, description="Seconds between polls of the in-flight jobs.")
    job_timeout: float | None = Field(
        default=None, description="Seconds one job may run before it is cancelled and its model fails."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels put on every job.")
    job_id_prefix: str = Field(default="dw", description="Prefix of the deterministic job ids.")
    create_datasets: bool = Field(default=True, description="Create the datasets the models write to.")
    reattach: ReattachMode = Field(
        default="from_failure",
        description=(
            "Which re-executions reuse the job ids of the run they re-execute (so finished jobs are not run "
            "again and running ones are re-attached): 'from_failure' (run retries, re-execute from failure, "
            "dagster-watcher retry runs), 'always', or 'never'. Step retries within a run always re-attach."
        ),
    )

    # -- dbt (compile only) -------------------------------------------------------------------------
    project_dir: str = Field(description="Path to the dbt project (the folder with dbt_project.yml).")
    profiles_dir: str | None = Field(
        default=None, description="Folder holding profiles.yml. Default: the project dir if it has one."
    )
    target: str | None = Field(default=None, description="dbt target: a BigQuery output of the profile.")
    dbt_vars: dict[str, Any] = Field(default_factory=dict, description="dbt --vars for the compile.")
    dbt_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for dbt compile (e.g. what profiles.yml reads)."
    )
    dbt_executable: str | None = Field(
        default=None,
        description=(
            "dbt from another environment for the compile. Default: dbt of this interpreter, which also "
            "renders pre-/post-hooks (with another dbt, models with hooks are reported unsupported)."
        ),
    )
    full_refresh: bool = Field(default=False, description="Rebuild incremental models (dbt --full-refresh).")
    target_path: str | None = Field(
        default=None,
        description="Where compiles are written, one folder per run. Default: <project>/target/dagster_watcher_bigquery.",
    )
    compile_retention_hours: float = Field(
        default=72.0, description="Compiled run folders older than this are removed when a new one is written."
    )
    progress: bool = Field(default=True, description="Print a progress line per node and a summary to stdout.")

    def __init__(self, project_dir: str | Path | DbtProject, **kwargs: Any) -> None:
        super().__init__(**project_kwargs(project_dir, kwargs))

    @field_validator("project_dir")
    @classmethod
    def _check_project_dir(cls, value: str) -> str:
        return checked_project_dir(value, "BigQueryWatcherResource")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Dagster tears a run's resources down even when a termination's interrupt ended the step:
        record the lost nodes of a producer writer it left suspended (see
        :func:`~dagster_watcher.producer.record_abandoned_writers`)."""
        record_abandoned_writers(context.run.run_id if context.run is not None else None)

    # -- configuration helpers ----------------------------------------------------------------------

    def make_credentials(self) -> Credentials | None:
        """Explicit credentials from ``credentials_json``/``keyfile``; None means Application Default
        Credentials (or anonymous for a local server)."""
        if self.anonymous:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        if self.credentials_json:
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(
                _service_account_info(self.credentials_json), scopes=_BIGQUERY_SCOPES
            )
        if self.keyfile:
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_file(self.keyfile, scopes=_BIGQUERY_SCOPES)
        return None

    def engine_config(self, extra_labels: Mapping[str, str] | None = None) -> BigQueryEngineConfig:
        return BigQueryEngineConfig(
            project=self.project,
            location=self.location,
            dataset=self.dataset,
            api_endpoint=self.api_endpoint,
            credentials=self.make_credentials(),
            anonymous=self.anonymous,
            max_concurrent_jobs=self.max_concurrent_jobs,
            poll_interval=self.poll_interval,
            job_timeout=self.job_timeout,
            labels={**self.labels, **(extra_labels or {})},
            job_id_prefix=self.job_id_prefix,
            create_datasets=self.create_datasets,
        )

    def resolved_target_path(self) -> Path:
        return Path(self.target_path or Path(self.project_dir) / "target" / "dagster_watcher_bigquery").absolute()

    # -- compile --------------------------------------------------------------------------------------

    def compile_for_run(
        self,
        run_id: str,
        plan: BuildPlan,
        *,
        dbt_vars: Mapping[str, Any] | None = None,
        full_refresh: bool | None = None,
        log: Any = None,
    ) -> Mapping[str, Any]:
        """``dbt compile`` of the step's selection for this Dagster run, or the manifest an earlier
        attempt of the run already compiled (a retried step reuses it when it covers every node left)."""
        merged_vars = {**self.dbt_vars, **(dbt_vars or {})}
        refresh = self.full_refresh if full_refresh is None else full_refresh
        identity = {
            "project_dir": self.project_dir,
            "profiles_dir": profiles_dir_for(self.project_dir, self.profiles_dir),
            "target": self.target,
            "vars": merged_vars,
            "full_refresh": refresh,
        }
        args = [*plan.selection_args, *(["--full-refresh"] if refresh else [])]
        root = self.resolved_target_path()
        run_dir = root / "runs" / _safe_name(run_id)
        wanted = {u for u in plan.expected if u.split(".", 1)[0] in ("model", "test")}
        reused = _reusable_compile(run_dir, identity, wanted)
        if reused is not None:
            if log is not None:
                log.info(f"dagster-watcher: reusing this run's dbt compile ({reused.parent.name}/{reused.name})")
            with open(reused / "manifest.json") as handle:
                manifest: dict[str, Any] = json.load(handle)
            with open(reused / _COMPILE_INFO) as handle:
                manifest[COMPILED_IDS_KEY] = json.load(handle)["compiled"]
            _attach_annotations(manifest, reused)
            return manifest
        digest = hashlib.sha1(json.dumps({**identity, "args": args}, sort_keys=True, default=str).encode()).hexdigest()
        out = run_dir / digest[:12]
        if out.exists():  # a compile of this selection that did not finish: start it over
            shutil.rmtree(out, ignore_errors=True)
        _prune(root / "runs", self.compile_retention_hours * 3600, keep=run_dir)
        began = time.monotonic()
        manifest = compile_project(
            self.project_dir,
            profiles_dir=profiles_dir_for(self.project_dir, self.profiles_dir),
            target=self.target,
            target_path=out,
            vars=merged_vars or None,
            env={"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **self.dbt_env},
            dbt_executable=self.dbt_executable,
            extra_args=args,
            fail_fast=False,
            parse_cache=root / "partial_parse.msgpack",
        )
        _save_annotations(manifest, out)
        with open(out / _COMPILE_INFO, "w") as handle:
            json.dump({"identity": identity, "compiled": manifest.get(COMPILED_IDS_KEY) or []}, handle, default=str)
        if log is not None:
            log.info(
                f"dagster-watcher: dbt compile of {len(manifest.get(COMPILED_IDS_KEY) or [])} node(s) "
                f"for BigQuery in {time.monotonic() - began:.1f}s"
            )
        return manifest

    # -- what the asset body calls --------------------------------------------------------------------

    def build(
        self,
        context: AssetExecutionContext,
        *,
        dbt_vars: Mapping[str, Any] | None = None,
        full_refresh: bool | None = None,
    ) -> Iterator[DagsterNodeEvent]:
        """Compile the step's selection once and run it as BigQuery jobs; yield each node's Dagster
        event the moment its job (or its last statement's job) finishes.

        Use it as the body of a :func:`~dagster_watcher.dbt_watcher_assets` function::

            yield from bigquery_watcher.build(context)

        Job ids are deterministic in (run, node, attempt, statement): a retried step or a run that
        resumes this one re-attaches to jobs still running or already succeeded. Terminating the run
        cancels every job in flight.

        Args:
            context: the asset step's context.
            dbt_vars: more dbt ``--vars`` for the compile (over the resource's ``dbt_vars``).
            full_refresh: overrides the resource's ``full_refresh``.

        Raises:
            NodesDidNotSucceed: once every outcome is recorded, when a node did not succeed.
            DbtDidNotComplete: once every outcome is recorded, when the compile failed (every node
                is then lost, nothing was submitted) or the run was cancelled.
        """
        plan = start_step(context)
        if plan is None:
            return
        refresh = self.full_refresh if full_refresh is None else full_refresh
        key = job_run_key(context.instance, context.run, self.reattach)
        try:
            manifest = self.compile_for_run(
                context.run.run_id, plan, dbt_vars=dbt_vars, full_refresh=refresh, log=context.log
            )
        except Exception as error:  # noqa: BLE001 - recorded on every node, then the step fails
            context.log.error(
                f"dagster-watcher: dbt compile failed, nothing was submitted: {scrub_secrets(str(error))}"
            )
            source = NoWork.failed("bigquery", scrub_secrets(str(error))[-8000:])
            yield from stream_build(context, plan, source, progress=self.progress)
            return
        unique_ids = self.nodes_to_run(plan, manifest)
        labels = {"dagster-run": context.run.run_id, "dagster-job": context.job_name}
        engine = BigQueryEngine(self.engine_config(labels))
        context.log.info(
            f"dagster-watcher: {len(unique_ids)} node(s) as BigQuery jobs in project {self.project} "
            f"(at most {self.max_concurrent_jobs} at once; job ids from run {key})"
        )
        yield from stream_build(
            context,
            plan,
            BigQueryResultSource(engine, manifest, unique_ids, key, full_refresh=refresh),
            progress=self.progress,
        )

    @staticmethod
    def nodes_to_run(plan: BuildPlan, manifest: Mapping[str, Any]) -> list[str]:
        """The step's nodes, plus the data tests the compile selected that are not asset checks (a
        full ``dbt build`` selection runs them too, and a failing one stops the models built on
        what it tests)."""
        compiled = set(manifest.get(COMPILED_IDS_KEY) or [])
        nodes = manifest.get("nodes") or {}
        extra = {u for u in compiled - plan.already_done if u.startswith("test.") and u in nodes}
        return sorted(set(plan.expected) | extra)


# --------------------------------------------------------------------------------------------------
# helpers


def _service_account_info(text: str) -> dict[str, Any]:
    raw = text.strip()
    if not raw.startswith("{"):
        try:
            raw = base64.b64decode(raw, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as error:
            raise WatcherConfigError("credentials_json is neither service-account JSON nor its base64") from error
    info = json.loads(raw)
    if not isinstance(info, dict):
        raise WatcherConfigError("credentials_json must be a JSON object (a service-account key)")
    return info


def _safe_name(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)[:200]


_ANNOTATIONS = "dw-annotations.json"


def _save_annotations(manifest: Mapping[str, Any], folder: Path) -> None:
    """Rendered hooks and compile errors live outside manifest.json: keep them beside it for reuse."""
    keep = {
        uid: {k: node[k] for k in (RENDERED_HOOKS_KEY, COMPILE_ERROR_KEY) if k in node}
        for uid, node in (manifest.get("nodes") or {}).items()
        if RENDERED_HOOKS_KEY in node or COMPILE_ERROR_KEY in node
    }
    with open(folder / _ANNOTATIONS, "w") as handle:
        json.dump(keep, handle)


def _attach_annotations(manifest: dict[str, Any], folder: Path) -> None:
    with contextlib.suppress(OSError, ValueError), open(folder / _ANNOTATIONS) as handle:
        for uid, extra in json.load(handle).items():
            node = (manifest.get("nodes") or {}).get(uid)
            if node is not None:
                node.update(extra)


def _reusable_compile(run_dir: Path, identity: Mapping[str, Any], wanted: set[str]) -> Path | None:
    """A finished compile of this run with the same project/profile/vars that covers ``wanted``."""
    if not run_dir.is_dir():
        return None
    expected = json.loads(json.dumps(identity, default=str))
    for info_path in sorted(run_dir.glob(f"*/{_COMPILE_INFO}")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("identity") == expected and wanted <= set(info.get("compiled") or []):
            return info_path.parent
    return None


def _prune(runs_root: Path, max_age: float, keep: Path) -> None:
    """Remove compiled run folders not touched for ``max_age`` seconds (never ``keep``)."""
    if not runs_root.is_dir():
        return
    cutoff = time.time() - max_age
    for folder in runs_root.iterdir():
        with contextlib.suppress(OSError):
            if folder != keep and folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
