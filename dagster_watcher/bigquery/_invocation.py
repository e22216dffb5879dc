"""One engine invocation: submit ready nodes, poll their jobs, release or skip their children.

Each selected node gets exactly one terminal :class:`~dagster_watcher.status.NodeResult`. The
statements a node runs are chosen by :class:`~dagster_watcher.bigquery._planner._StatementPlanner`;
what finished jobs mean is read by :mod:`dagster_watcher.bigquery._outcomes`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dagster_watcher._text import describe_exception
from dagster_watcher.bigquery._ledger import _Ledger
from dagster_watcher.bigquery._outcomes import (
    _job_error_message,
    _main_job,
    _success_message,
    _test_outcome,
)
from dagster_watcher.bigquery._planner import _plan_from_label, _StatementPlanner
from dagster_watcher.bigquery._state import _NodeJob
from dagster_watcher.bigquery._submit import job_labels, submit_statement
from dagster_watcher.bigquery.graph import _build_graph
from dagster_watcher.bigquery.job_ids import (
    LABEL_INVOCATION,
    LABEL_PLAN,
    _label_value,
    make_job_id,
)
from dagster_watcher.status import NodeResult, NodeStatus

if TYPE_CHECKING:
    from dagster_watcher.bigquery.engine import BigQueryEngine

logger = logging.getLogger(__name__)


class _Invocation:
    """One engine invocation (one :meth:`BigQueryEngine.run` call); :meth:`iterate` is its polling loop.

    Talks to the engine only through ``engine.jobs`` (the shared :class:`JobRegistry`),
    ``engine.client`` and ``engine.cancel()``."""

    def __init__(
        self,
        engine: BigQueryEngine,
        manifest: Mapping[str, Any],
        unique_ids: Iterable[str],
        run_id: str,
        *,
        full_refresh: bool,
        build_semantics: bool,
    ) -> None:
        self.engine = engine
        self.config = engine.config
        self.run_id = run_id
        self.jobs = engine.jobs
        self.planner = _StatementPlanner(lambda: engine.client, engine.config, full_refresh=full_refresh)
        self.graph = _build_graph(manifest, list(unique_ids), build_semantics=build_semantics)
        self.invocation_id = uuid.uuid4().hex[:16]
        self.ledger = _Ledger(self.graph, run_id, engine.config.location)
        self.inflight: dict[str, _NodeJob] = {}
        self.cancel_seen_at: float | None = None

    # ---------------------------------------------------------------------------- main loop

    def iterate(self) -> Generator[NodeResult, None, None]:
        from google.api_core import retry as retries

        # Polls retry transient errors briefly; a longer outage is counted per job (max_poll_errors).
        self.poll_retry = retries.Retry(deadline=min(30.0, self.config.api_timeout))
        try:
            if self.config.create_datasets:
                self._create_datasets()
            next_poll = time.monotonic()
            while not self.ledger.all_finished:
                progressed = False
                if self.jobs.cancelled:
                    progressed |= self.ledger.drop_unsubmitted(self.inflight)
                    progressed |= self._give_up_after_grace()
                else:
                    progressed |= self._submit_ready()
                # At most one jobs.get per in-flight job per poll_interval, however many jobs
                # finish in between; jobs that jobs.insert already answered DONE need no poll.
                now = time.monotonic()
                reload = now >= next_poll
                if reload:
                    next_poll = now + self.config.poll_interval
                progressed |= self._poll(reload=reload)
                if not (progressed or self.inflight or self.ledger.ready or self.jobs.cancelled):
                    self.ledger.fail_stuck()  # never expected; guarantees termination and a result each
                yield from self.ledger.drain()
                if self.ledger.all_finished:
                    break
                if not progressed:
                    pause = max(0.0, next_poll - time.monotonic())
                    if self.jobs.cancelled:
                        time.sleep(pause)
                    else:  # cancel() wakes the loop up at once
                        self.jobs.wait_for_cancel(pause)
            yield from self.ledger.drain()
        finally:
            leftover = [r.job for r in self.inflight.values() if r.job is not None]
            leftover += self.jobs.submitting_job_ids()
            if leftover and self.config.cancel_on_close:
                logger.warning("result iterator closed with %d jobs in flight: cancelling them", len(leftover))
                self.engine.cancel()

    def _create_datasets(self) -> None:
        from google.cloud import bigquery

        datasets = sorted(
            {
                (r.spec.node["database"], r.spec.node["schema"])
                for r in self.ledger.node_jobs.values()
                if r.spec.resource_type in ("model", "seed") and not r.spec.unsupported
            }
        )
        for project, dataset_id in datasets:
            dataset = bigquery.Dataset(f"{project}.{dataset_id}")
            if self.config.location:
                dataset.location = self.config.location
            self.engine.client.create_dataset(dataset, exists_ok=True, timeout=self.config.api_timeout)

    # --------------------------------------------------------------------------- submission

    def _submit_ready(self) -> bool:
        progressed = False
        while self.ledger.ready and len(self.inflight) < self.config.max_concurrent_jobs:
            if self.jobs.cancelled:
                break
            node_job = self.ledger.pop_ready()
            uid = node_job.spec.unique_id
            progressed = True
            if node_job.spec.unsupported:
                self.ledger.fail(node_job, node_job.spec.unsupported)
                continue
            try:
                self.planner.choose(node_job)
                self._advance(node_job)
            except Exception as error:
                logger.exception("submitting %s failed", uid)
                self.ledger.fail(node_job, describe_exception(error))
        return progressed

    def _advance(self, node_job: _NodeJob) -> None:
        """Submit the node's current statement; on 409 re-attach and walk forward.

        A loop, not recursion: a re-attaching run may find several finished statements in a row.
        """
        from google.api_core.exceptions import Conflict

        guard = 0
        while True:
            guard += 1
            if guard > 1000:
                raise RuntimeError("too many re-attach steps")
            if node_job.index >= len(node_job.statements):
                self._complete(node_job)
                return
            job_id = make_job_id(
                self.config.job_id_prefix, self.run_id, node_job.spec.unique_id, node_job.attempt, node_job.index
            )
            # Until the job is tracked (or known to be finished), its id is "being submitted": an
            # interrupt that lands inside jobs.insert (the server may already run the job) or
            # inside the re-attach still cancels it. Only a clean outcome clears the mark.
            self.jobs.begin_submit(job_id)
            try:
                labels = job_labels(self.config, node_job, self.run_id, self.invocation_id)
                statement = node_job.statements[node_job.index]
                job = submit_statement(self.engine.client, self.config, statement, job_id, labels)
            except Conflict:
                job = self.engine.client.get_job(
                    job_id, project=self.config.project, location=self.config.location, timeout=self.config.api_timeout
                )
                action = self._adopt(node_job, job)
                self.jobs.end_submit(job_id)
                if action == "failed":
                    self._fail_job(node_job, job)
                    return
                if action == "poll":
                    return
                continue  # "next" (index advanced) or "retry" (attempt bumped)
            except Exception:
                self.jobs.end_submit(job_id)  # the insert failed: reported as the node's error
                raise
            self._start_polling(node_job, job)
            self.jobs.end_submit(job_id)
            return

    def _adopt(self, node_job: _NodeJob, job: Any) -> str:
        """Decide what an existing job with our id means: ``poll`` (still running), ``next``
        (succeeded: go on with the next statement), ``retry`` (failed in an earlier invocation: new
        attempt) or ``failed`` (failed in this invocation)."""
        labels = dict(job.labels or {})
        if node_job.index == 0 and labels.get(LABEL_PLAN) not in (None, _label_value(node_job.plan or "")):
            # A previous attempt chose another statement sequence (an incremental model's first
            # run creates the table; now that it exists we would merge). Follow the earlier choice:
            # the job ids of this attempt belong to it.
            try:
                self.planner.choose(node_job, plan=_plan_from_label(node_job, labels[LABEL_PLAN]))
            except Exception:  # noqa: BLE001 - cannot rebuild that sequence: start a new attempt
                node_job.attempt += 1
                self.planner.choose(node_job)
                return "retry"
        if job.state != "DONE":
            node_job.reattached = True
            self._start_polling(node_job, job)
            return "poll"
        if job.error_result:
            if labels.get(LABEL_INVOCATION) == self.invocation_id:
                # Our own job (a client-side retry of the insert hit our first request): its failure
                # is this run's failure, not a previous attempt's.
                return "failed"
            # A previous invocation's failed (or cancelled) job: retry the node under the next
            # attempt, from its first statement, with a freshly chosen plan.
            logger.info(
                "%s: job %s failed earlier (%s); retrying as attempt %d",
                node_job.spec.unique_id,
                job.job_id,
                job.error_result.get("message"),
                node_job.attempt + 1,
            )
            node_job.attempt += 1
            node_job.index = 0
            node_job.done_jobs.clear()
            self.planner.choose(node_job)
            return "retry"
        node_job.reattached = True
        node_job.done_jobs.append(job)
        node_job.index += 1
        return "next"

    def _start_polling(self, node_job: _NodeJob, job: Any) -> None:
        node_job.job = job
        node_job.submitted_at = time.monotonic()
        node_job.poll_errors = 0
        self.inflight[node_job.spec.unique_id] = node_job
        self.jobs.track(job)

    # --------------------------------------------------------------------------------- polling

    def _poll(self, *, reload: bool = True) -> bool:
        progressed = False
        for uid, node_job in list(self.inflight.items()):
            job = node_job.job
            if job.state != "DONE" and reload:  # jobs.insert may already have answered DONE
                try:
                    job.reload(retry=self.poll_retry, timeout=self.config.api_timeout)
                    node_job.poll_errors = 0
                except Exception as error:  # noqa: BLE001 - transient: try again next poll
                    node_job.poll_errors += 1
                    logger.warning("polling %s failed (%d): %s", job.job_id, node_job.poll_errors, error)
                    if node_job.poll_errors >= self.config.max_poll_errors:
                        self._finish_job(node_job)
                        self.ledger.fail(node_job, f"lost contact with BigQuery job {job.job_id}: {error}")
                        progressed = True
                    continue
            if job.state == "DONE":
                progressed = True
                self._finish_job(node_job)
                if job.error_result:
                    self._fail_job(node_job, job)
                    continue
                node_job.done_jobs.append(job)
                node_job.index += 1
                if self.jobs.cancelled and node_job.index < len(node_job.statements):
                    self.ledger.fail(
                        node_job,
                        f"run cancelled after statement {node_job.index} of "
                        f"{len(node_job.statements)} ({node_job.statements[node_job.index - 1].kind})",
                        dbt_status="cancelled",
                    )
                    continue
                try:
                    self._advance(node_job)
                except Exception as error:
                    logger.exception("submitting the next statement of %s failed", uid)
                    self.ledger.fail(node_job, describe_exception(error))
            elif self.config.job_timeout and time.monotonic() - node_job.submitted_at > self.config.job_timeout:
                progressed = True
                try:
                    self.engine.client.cancel_job(
                        job.job_id, project=job.project, location=job.location, timeout=self.config.api_timeout
                    )
                except Exception as error:  # noqa: BLE001
                    logger.warning("could not cancel timed-out job %s: %s", job.job_id, error)
                self._finish_job(node_job)
                node_job.done_jobs.append(job)
                self.ledger.fail(
                    node_job,
                    f"BigQuery job {job.job_id} ({node_job.statements[node_job.index].kind}) "
                    f"exceeded job_timeout={self.config.job_timeout:g}s and was cancelled",
                )
        return progressed

    def _finish_job(self, node_job: _NodeJob) -> None:
        self.inflight.pop(node_job.spec.unique_id, None)
        if node_job.job is not None:
            self.jobs.untrack(node_job.job)

    def _fail_job(self, node_job: _NodeJob, job: Any) -> None:
        node_job.done_jobs.append(job)
        reason = (job.error_result or {}).get("reason")
        message = _job_error_message(job)
        if reason == "stopped":
            self.ledger.fail(node_job, f"BigQuery job {job.job_id} was cancelled: {message}", dbt_status="cancelled")
        else:
            self.ledger.fail(node_job, message)

    # ------------------------------------------------------------------------------- outcomes

    def _complete(self, node_job: _NodeJob) -> None:
        """All statements succeeded: build the SUCCESS (or test) result and release children."""
        spec = node_job.spec
        status, dbt_status, failures, message = NodeStatus.SUCCESS, "success", None, None
        if spec.resource_type == "test":
            status, dbt_status, failures, message = _test_outcome(node_job, self.config.api_timeout)
        else:
            message = _success_message(_main_job(node_job))
        self.ledger.emit(node_job, status, dbt_status, message=message, failures=failures)
        if status.succeeded:
            self.ledger.release_children(spec.unique_id)
        else:
            self.ledger.skip_descendants(spec.unique_id)

    def _give_up_after_grace(self) -> bool:
        """Cancellation is best effort: do not wait forever for jobs that ignore it."""
        now = time.monotonic()
        if self.cancel_seen_at is None:
            self.cancel_seen_at = now
            return False
        if now - self.cancel_seen_at < self.config.cancel_grace or not self.inflight:
            return False
        for node_job in list(self.inflight.values()):
            job = node_job.job
            self._finish_job(node_job)
            node_job.done_jobs.append(job)
            self.ledger.fail(
                node_job,
                f"run cancelled; BigQuery job {job.job_id} still reported {job.state} "
                f"after {self.config.cancel_grace:g}s",
                dbt_status="cancelled",
            )
        return True
