"""The engine: :class:`BigQueryEngine` runs a set of dbt nodes as asynchronous BigQuery jobs.

The engine owns what outlives one invocation and is shared with other threads: the client and the
:class:`JobRegistry` (the lock, the jobs in flight, the ids being submitted, cancellation). One
invocation's own state machine lives in :mod:`dagster_watcher.bigquery._invocation` and reaches the
engine only through :attr:`BigQueryEngine.jobs` and :attr:`BigQueryEngine.client`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dagster_watcher.bigquery.config import BigQueryEngineConfig
from dagster_watcher.bigquery.graph import _build_graph
from dagster_watcher.status import NodeResult

if TYPE_CHECKING:  # imported lazily at run time: google-cloud-bigquery is an optional dependency
    from google.cloud.bigquery import Client

logger = logging.getLogger(__name__)

__all__ = ["BigQueryEngine", "JobRegistry"]


class JobRegistry:
    """The jobs of the current invocation, shared with :meth:`BigQueryEngine.cancel` on any thread.

    Holds the one lock, the cancellation flag, the jobs in flight and the ids whose submission has
    started but whose job is not tracked yet (the server may already run it). Every method is
    thread-safe.

    Args:
        cancel_job: asks BigQuery to cancel one job: ``(job_id, project, location)``; may raise.
        project: the project a job being submitted runs in (its job object is not known yet).
        location: the location of such a job.

    Example::

        registry = JobRegistry(lambda job_id, project, location: None, "my-project", "EU")
        registry.begin_submit("dw_run_model_a0_s0")
    """

    def __init__(self, cancel_job: Callable[[str, str, str | None], None], project: str, location: str | None) -> None:
        self._cancel_job = cancel_job
        self._project = project
        self._location = location
        self._lock = threading.Lock()
        self._cancel_event = threading.Event()
        self._inflight: dict[str, Any] = {}
        self._cancelled_jobs: set[str] = set()
        self._submitting: set[str] = set()

    def reset(self) -> None:
        """Forget the previous invocation (and its cancellation): a new one starts."""
        self._cancel_event.clear()
        with self._lock:
            self._inflight.clear()
            self._cancelled_jobs.clear()
            self._submitting.clear()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel_all` was called (until :meth:`reset`)."""
        return self._cancel_event.is_set()

    def wait_for_cancel(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds; wake up at once when :meth:`cancel_all` is called."""
        self._cancel_event.wait(timeout)

    def cancel_all(self) -> list[str]:
        """Stop submitting and ask BigQuery to cancel every in-flight job (and any job whose
        submission is under way). Returns the ids a cancel was requested for. Idempotent."""
        self._cancel_event.set()
        with self._lock:
            jobs = [
                (job_id, job.project, job.location)
                for job_id, job in self._inflight.items()
                if job_id not in self._cancelled_jobs
            ]
            self._cancelled_jobs.update(job_id for job_id, _, _ in jobs)
            # A submission in progress (or interrupted mid-request): the server may have created the
            # job already. Not marked cancelled: if its insert still returns, track() cancels again.
            jobs += [
                (job_id, self._project, self._location)
                for job_id in sorted(self._submitting)
                if job_id not in self._inflight
            ]
        cancelled = []
        for job_id, project, location in jobs:
            if self._try_cancel(job_id, project, location):
                cancelled.append(job_id)
        return cancelled

    def begin_submit(self, job_id: str) -> None:
        """``jobs.insert`` (or a re-attach) of ``job_id`` starts: cancel it too if cancelled now."""
        with self._lock:
            self._submitting.add(job_id)

    def end_submit(self, job_id: str) -> None:
        """The submission of ``job_id`` has a clean outcome (tracked, finished, or failed to insert)."""
        with self._lock:
            self._submitting.discard(job_id)

    def track(self, job: Any) -> None:
        """``job`` is in flight; if :meth:`cancel_all` ran while it was being submitted, cancel it."""
        with self._lock:
            self._inflight[job.job_id] = job
            cancel_now = self._cancel_event.is_set() and job.job_id not in self._cancelled_jobs
            if cancel_now:
                self._cancelled_jobs.add(job.job_id)
        if cancel_now:
            self._try_cancel(job.job_id, job.project, job.location)

    def untrack(self, job: Any) -> None:
        """``job`` is no longer in flight (done, given up)."""
        with self._lock:
            self._inflight.pop(job.job_id, None)

    def inflight_job_ids(self) -> list[str]:
        """Ids of the jobs in flight."""
        with self._lock:
            return sorted(self._inflight)

    def submitting_job_ids(self) -> list[str]:
        """Ids whose submission started and has no clean outcome yet."""
        with self._lock:
            return sorted(self._submitting)

    def _try_cancel(self, job_id: str, project: str, location: str | None) -> bool:
        try:
            self._cancel_job(job_id, project, location)
        except Exception as error:  # noqa: BLE001 - a job that just finished cannot be cancelled
            logger.warning("could not cancel BigQuery job %s: %s", job_id, error)
            return False
        return True


class BigQueryEngine:
    """Runs a set of dbt nodes as asynchronous BigQuery jobs, polled by one loop in the caller's thread.

    ``dbt build`` on BigQuery holds one dbt thread per running model, each blocked on its job. This
    engine takes the SQL ``dbt compile`` produced, generates the statements each materialization
    needs, keeps up to ``max_concurrent_jobs`` jobs in flight and yields each node's terminal
    :class:`~dagster_watcher.status.NodeResult` as soon as it is known. Job ids are deterministic
    in (run id, node, attempt, statement), so running a run id again re-attaches. A node whose parent
    failed (or whose parent's test failed, like ``dbt build``) is reported SKIPPED and never submitted.

    One engine runs one :meth:`run` at a time. :meth:`cancel` may be called from any thread.

    Args:
        config: how to reach BigQuery and how hard to drive it.
        client: a ``google.cloud.bigquery.Client`` to use instead of ``config.make_client()``.

    Example::

        engine = BigQueryEngine(BigQueryEngineConfig(project="my-project", location="EU"))
        manifest = compile_project("path/to/dbt_project", target="prod")
        for result in engine.run(manifest, ["model.shop.orders"], run_id="nightly-2024-01-01"):
            print(result.unique_id, result.status)
    """

    def __init__(self, config: BigQueryEngineConfig, client: Client | None = None) -> None:
        self.config = config
        self._client = client
        self.jobs = JobRegistry(self._cancel_job, config.project, config.location)
        """The current invocation's jobs and its cancellation (shared with :meth:`cancel`)."""

    @property
    def client(self) -> Client:
        """The BigQuery client (made from the config on first use)."""
        if self._client is None:
            self._client = self.config.make_client()
        return self._client

    def cancel(self) -> list[str]:
        """Stop submitting and cancel every in-flight job. Thread-safe; idempotent.

        The running :meth:`run` keeps polling the cancelled jobs until BigQuery reports them DONE and
        yields their nodes as ERROR; nodes not submitted yet are yielded as LOST (``dbt_status``
        ``cancelled``).

        Returns:
            The ids of the jobs a cancel was requested for.

        Example::

            threading.Timer(60, engine.cancel).start()
        """
        return self.jobs.cancel_all()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called (reset by the next :meth:`run`)."""
        return self.jobs.cancelled

    def inflight_job_ids(self) -> list[str]:
        """Ids of the jobs the current run is polling. Thread-safe."""
        return self.jobs.inflight_job_ids()

    def plan(
        self, manifest: Mapping[str, Any], unique_ids: Iterable[str], *, build_semantics: bool = True
    ) -> dict[str, set[str]]:
        """The nodes :meth:`run` would run, each with its parents within the run set (for inspection).

        Args:
            manifest: a parsed ``manifest.json``.
            unique_ids: the nodes to run.
            build_semantics: models also wait for the tests of what they are built on.

        Raises:
            KeyError: a unique_id is not a node of the manifest.
            ValueError: the selected nodes contain a dependency cycle.

        Example::

            engine.plan(manifest, ["model.shop.orders", "model.shop.customers"])
        """
        graph = _build_graph(manifest, unique_ids, build_semantics=build_semantics)
        return {uid: set(n.parents) for uid, n in graph.items()}

    def run(
        self,
        manifest: Mapping[str, Any],
        unique_ids: Iterable[str],
        run_id: str,
        *,
        full_refresh: bool = False,
        build_semantics: bool = True,
    ) -> Generator[NodeResult, None, None]:
        """Run the nodes; yield each node's terminal :class:`NodeResult` as soon as it is known.

        Every selected node gets exactly one result. A node the engine cannot run (unsupported
        config, failed compile) is reported ERROR with the reason, and its descendants SKIPPED.

        Args:
            manifest: a parsed ``manifest.json`` compiled for this BigQuery target.
            unique_ids: nodes to run (models, seeds, tests). Ephemeral models are ignored (inlined).
                Parents outside the set are assumed built.
            run_id: part of every job id. Running the same ``run_id`` again re-attaches: statements
                whose job succeeded are not run again, running jobs are polled, failed ones are retried.
            full_refresh: incremental models are rebuilt (``config.full_refresh`` on a node wins).
            build_semantics: like ``dbt build``, a failing test skips the models downstream of what
                it tests.

        Raises:
            KeyError: a unique_id is not a node of the manifest.
            ValueError: the selected nodes contain a dependency cycle.

        Example::

            for result in engine.run(manifest, unique_ids, run_id="run-1"):
                print(result.unique_id, result.status, result.adapter_response.get("job_link"))
        """
        from dagster_watcher.bigquery._invocation import _Invocation

        self.jobs.reset()
        invocation = _Invocation(
            self, manifest, unique_ids, run_id, full_refresh=full_refresh, build_semantics=build_semantics
        )
        return invocation.iterate()

    def _cancel_job(self, job_id: str, project: str, location: str | None) -> None:
        self.client.cancel_job(job_id, project=project, location=location, timeout=self.config.api_timeout)
