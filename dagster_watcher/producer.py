"""The producer step: one `dbt build` (or another :class:`NodeResultSource`) for the selected part of
a ``@dbt_watcher_assets`` definition, with every node's outcome written to Dagster the moment it is
reported.

The generator in :func:`stream_build` runs on the op's own thread and is the single, ordered writer:
sources only hand it results (dbt's worker threads never touch Dagster), and ``dagster_mapping``
turns each result into one event. What the step plans comes from ``planning``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    DagsterExecutionInterruptedError,
    DagsterRunStatus,
    MetadataValue,
)

from . import contract
from ._compat import memoize_output_asset_keys
from ._text import describe_exception, scrub_result, scrub_secrets
from .dagster_mapping import DagsterNodeEvent, describe_failure, to_dagster_events
from .dbt_normalizer import DbtEventNormalizer
from .errors import DbtDidNotComplete, NodesDidNotSucceed
from .invocation import DbtInvocation, InvocationExit
from .invocation._fetch import RUNTIME_METADATA_EVENT
from .planning import BuildPlan, plan_for_context, succeeded_in_run
from .runtime_metadata import FetchedMetadata
from .status import LOST_MESSAGE, NodeResult, NodeStatus, lost_result, not_selected_result
from .timeline import write_timeline

logger = logging.getLogger("dagster_watcher")


def start_step(context: AssetExecutionContext) -> BuildPlan | None:
    """Everything a producer does before it starts work, whatever runs the nodes: on a retried step,
    leave out what already succeeded in this run; plan the selection; record the process for the
    consumers' liveness check. Returns None when there is nothing to build."""
    already_done: frozenset[str] = frozenset()
    # A retried step, or a run resumed by Dagster's run monitoring (its run already carries the
    # liveness tags an earlier worker wrote), builds only what has not succeeded in this run so far, as
    # recorded in the event log (so a worker on another machine sees the same truth).
    resumed = contract.liveness_from_tags(context.run.tags) is not None
    if context.retry_number > 0 or resumed:
        already_done = succeeded_in_run(context)
        step = f"attempt {context.retry_number + 1}" if context.retry_number else "resumed run"
        context.log.info(
            f"dagster-watcher: {step}; {len(already_done)} node(s) already succeeded in this run and are not rebuilt"
        )
    plan = plan_for_context(context, already_done)
    if plan.is_empty:
        context.log.info("dagster-watcher: nothing left to build in this step; nothing was started.")
        return None
    memoize_output_asset_keys(context)
    # One write per step: lets consumer sensors tell a live producer from a killed one (Dagster's
    # default run launcher cannot health-check run workers).
    context.instance.add_run_tags(context.run.run_id, contract.liveness_tags(os.getpid(), socket.gethostname()))
    return plan


class _Progress:
    """A live progress line per node on stdout (compute logs / terminal), never in the event log."""

    def __init__(self, plan: BuildPlan, enabled: bool) -> None:
        self.expected = plan.expected
        self.total = len(self.expected)
        self.done = 0
        self.enabled = enabled
        self.plan = plan

    def node(self, result: NodeResult) -> None:
        if result.unique_id in self.expected:
            self.done += 1
        if not self.enabled:
            return
        secs = f" {result.execution_time:.2f}s" if result.execution_time else ""
        print(
            f"[dagster-watcher {self.done}/{self.total}] {result.status.value.upper():8} "
            f"{result.resource_type} {self.plan.name_of(result.unique_id)}{secs}",
            flush=True,
        )


class NodeResultSource(Protocol):
    """Where node outcomes come from: a dbt invocation (either mode) behind the normaliser, or an engine
    that runs compiled SQL itself (BigQuery jobs). The producer's writer only sees this."""

    mode: str

    @property
    def exit(self) -> InvocationExit | None:
        """How the run ended; set once :meth:`results` is exhausted."""

    def results(self) -> Iterator[NodeResult | None]:
        """Start the work and yield terminal results in finish order, on the caller's thread; None
        (optionally) while the work is quiet, so the writer can beat its heartbeat."""

    def release_held(self) -> list[NodeResult]:
        """Results still held back (e.g. waiting for error text) when the work is stopped early."""

    def cancel(self) -> None:
        """Stop the work (run termination). Safe from any thread."""


class DbtResultSource:
    """A dbt invocation (in-process or subprocess) whose raw events go through the normaliser.

    With ``fetched``, the invocation also reads runtime metadata in the dbt process: a built node's
    result waits for its facts and goes on with dagster-dbt's metadata attached."""

    def __init__(
        self,
        invocation: DbtInvocation,
        manifest: Mapping[str, Any],
        target_path: Path | None,
        expected: frozenset[str] = frozenset(),
        fetched: FetchedMetadata | None = None,
    ) -> None:
        self.invocation = invocation
        self.mode = invocation.mode
        self.normalizer = DbtEventNormalizer(manifest, target_path=target_path)
        self.expected = expected
        self.fetched = fetched
        #: Where dbt writes run_results.json; the build's timeline is written beside it.
        self.artifacts_dir = target_path

    @property
    def exit(self) -> InvocationExit | None:
        return self.invocation.exit

    def results(self) -> Iterator[NodeResult | None]:
        for raw in self.invocation.events():
            if raw is None:
                yield None
            elif raw.name == RUNTIME_METADATA_EVENT:
                if self.fetched is not None:
                    yield from self.fetched.arrived(raw.data)
            else:
                for result in self.normalizer.feed(raw.name, raw.data, raw.invocation_id):
                    yield from self._with_metadata(result)
        yield from self.release_held()
        yield from self.normalizer.unreported(self.expected)

    def _with_metadata(self, result: NodeResult) -> list[NodeResult]:
        return self.fetched.accept(result) if self.fetched is not None else [result]

    def release_held(self) -> list[NodeResult]:
        held = self.normalizer.release_held()
        return held + (self.fetched.release() if self.fetched is not None else [])

    def cancel(self) -> None:
        self.invocation.cancel()

    def on_process_start(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` with dbt's pid when its process starts (on the caller's thread)."""
        self.invocation.on_start = callback


class NoWork:
    """The source of a step in which nothing runs: dbt's selection leaves out every node
    (:meth:`nothing_selected`), or the work could not start (:meth:`failed`: dbt rejected the
    selection or the profile, the BigQuery compile failed), so every expected node is recorded as lost
    and the step fails with the error."""

    def __init__(self, mode: str, exit: InvocationExit) -> None:
        self.mode = mode
        self.exit = exit

    @classmethod
    def nothing_selected(cls) -> NoWork:
        return cls("none", InvocationExit(ok=True, completed=True))

    @classmethod
    def failed(cls, mode: str, error: str) -> NoWork:
        return cls(mode, InvocationExit(ok=False, completed=False, error=error))

    def results(self) -> Iterator[NodeResult]:
        return iter(())

    def release_held(self) -> list[NodeResult]:
        return []

    def cancel(self) -> None:
        pass


def stream_build(
    context: AssetExecutionContext,
    plan: BuildPlan,
    source: NodeResultSource,
    *,
    progress: bool = True,
    heartbeat_interval: float = 0,
) -> Iterator[DagsterNodeEvent]:
    """Run ``source`` and yield each node outcome's Dagster events as it is reported.

    Every ``heartbeat_interval`` seconds (0: never) while the source works, and once at its start,
    this thread refreshes the run's heartbeat tag: a writer that is dead or stuck stops beating.

    Every planned node ends with exactly one outcome: what dbt's selection leaves out is recorded as
    not selected before dbt starts; what the source never reported is recorded as lost.
    Materializations written before a failure stay.

    Raises:
        DbtDidNotComplete: after every outcome is written, when the source did not run to the end.
        NodesDidNotSucceed: after every outcome is written, when a selected node did not succeed.
    """
    writer = _OpenWriter()
    run_id = context.run.run_id
    _OPEN_WRITERS.add(run_id, writer)
    try:
        yield from _write_build(
            context, plan, source, progress=progress, heartbeat_interval=heartbeat_interval, writer=writer
        )
    except GeneratorExit:
        # Dagster closed the step's generator: nothing more may be yielded, but what is owed is still
        # recorded (see _OpenWriter).
        writer.record_unyielded()
        raise
    finally:
        _OPEN_WRITERS.remove(run_id, writer)


def _write_build(
    context: AssetExecutionContext,
    plan: BuildPlan,
    source: NodeResultSource,
    *,
    progress: bool,
    heartbeat_interval: float,
    writer: _OpenWriter,
) -> Iterator[DagsterNodeEvent]:
    """The body of :func:`stream_build`; ``writer`` learns how to record what this generator owes if
    Dagster leaves it suspended."""
    bar = _Progress(plan, progress)
    results: list[NodeResult] = []
    started = time.monotonic()
    log = _ScrubbedLog(context)

    def emit(result: NodeResult) -> Iterator[DagsterNodeEvent]:
        # The one place every text of a node outcome is scrubbed, whatever source produced it.
        result = scrub_result(result)
        results.append(result)
        bar.node(result)
        target = plan.target_of(result.unique_id)
        if target is None:
            if result.status.is_failure:
                log.warning(f"dbt {result.unique_id}: {describe_failure(result)}")
            return
        if result.status.is_failure:
            log.error(f"{plan.name_of(result.unique_id)} ({result.unique_id}): {describe_failure(result)}")
        yield from to_dagster_events(result, target, plan.partitions, plan.batch_size_of(result.unique_id))

    def unreported(message: str) -> Iterator[DagsterNodeEvent]:
        reported = {r.unique_id for r in results}
        invocation_id = next((r.invocation_id for r in results if r.invocation_id), None)
        for unique_id in sorted(plan.expected - reported):
            lost = lost_result(unique_id, plan.manifest, invocation_id)
            yield from emit(dataclasses.replace(lost, message=message))

    outcomes: Iterator[NodeResult | None] | None = None

    def record_unyielded() -> None:
        # Without yielding: stop the work, let the source's cleanup wait for dbt to stop, and write
        # each planned node without an outcome through context.log_event, which stores it in this
        # run's event log at once (observations only: how a failed or lost node is recorded).
        source.cancel()
        close = getattr(outcomes, "close", None)  # a generator source: its cleanup waits for dbt
        if close is not None:
            close()
        message = _lost_message_after_close(context)
        log.warning(f"dagster-watcher: the step was stopped; nodes without an outcome are recorded as lost: {message}")
        for result in source.release_held():
            _log_observations(context, emit(result))
        _log_observations(context, unreported(message))

    writer.bind(record_unyielded)
    for unique_id, reason in sorted(plan.not_selected.items()):
        yield from emit(not_selected_result(unique_id, plan.manifest, reason))
    if plan.not_selected:
        log.info(f"dagster-watcher: {len(plan.not_selected)} planned node(s) are not selected by dbt in this run")
    on_process_start = getattr(source, "on_process_start", None)
    if on_process_start is not None:
        run_id = context.run.run_id
        on_process_start(lambda pid: context.instance.add_run_tags(run_id, contract.dbt_process_tags(pid)))
    heartbeat = _Heartbeat(context, heartbeat_interval)
    outcomes = source.results()
    try:
        for result in outcomes:
            heartbeat.maybe()
            if result is not None:
                yield from emit(result)
    except GeneratorExit:
        raise  # Dagster closed the step: nothing more may be yielded (stream_build records the rest)
    except BaseException as error:
        # Termination or any error on the writer's side: stop the work (the source's own cleanup has
        # waited for dbt to stop), record what is known and every other planned node as lost with the
        # reason, then re-raise.
        source.cancel()
        for result in source.release_held():
            yield from emit(result)
        if isinstance(error, DagsterExecutionInterruptedError | KeyboardInterrupt):
            log.warning("dagster-watcher: the run was terminated; nodes without an outcome are recorded as lost")
            yield from unreported(contract.RUN_TERMINATED)
        else:
            yield from unreported(f"{LOST_MESSAGE} The build stopped: {describe_exception(error)}")
        raise

    exit_ = source.exit
    lost_message = LOST_MESSAGE
    if exit_ is not None and not exit_.completed and exit_.error:
        # dbt's own words (a lock held by another process, a wrong target) on every affected node.
        lost_message = f"{LOST_MESSAGE} dbt said: {exit_.error}"
    yield from unreported(lost_message)

    failed = [r for r in results if plan.target_of(r.unique_id) is not None and r.status.is_failure]
    summary = scrub_secrets(_summary(plan, results, time.monotonic() - started))
    if progress:
        print(summary, flush=True)
    metadata = {"failed_nodes": MetadataValue.json(_failure_table(plan, failed)), "summary": MetadataValue.md(summary)}
    artifacts_dir = getattr(source, "artifacts_dir", None)
    if artifacts_dir is not None and any(r.started_at for r in results):
        try:
            timeline = write_timeline(Path(artifacts_dir), results, plan.manifest)
        except OSError as error:
            log.warning(f"dagster-watcher: the build's timeline could not be written: {error}")
        else:
            log.info(f"dagster-watcher: timeline of this build (one bar per node on its dbt thread): {timeline}")
            metadata["timeline"] = MetadataValue.path(os.fspath(timeline))
    if exit_ is not None and not exit_.completed:
        raise DbtDidNotComplete(
            scrub_secrets(f"dbt did not complete ({source.mode} mode): {exit_.error}"),
            mode=source.mode,
            metadata=metadata,
        )
    if failed:
        first = "; ".join(f"{plan.name_of(r.unique_id)}: {describe_failure(r)}" for r in failed[:5])
        more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
        retryable = any(r.status is not NodeStatus.ERROR or plan.retry_policy.is_retryable(r.message) for r in failed)
        raise NodesDidNotSucceed(
            scrub_secrets(f"{len(failed)} dbt node(s) did not succeed: {first}{more}"),
            failed_nodes=[r.unique_id for r in failed],
            metadata=metadata,
            allow_retries=retryable,
        )


class _OpenWriter:
    """What a producer's writer still owes the event log if Dagster leaves its generator suspended.

    A termination's interrupt that arrives while Dagster stores one of the step's events (not while
    the writer runs) is raised by Dagster itself, before it resumes the generator: the step fails with
    the writer suspended at a ``yield``, and the generator is closed only when garbage collection gets
    to it, possibly never. Dagster still tears the run's resources down afterwards, so the watcher
    resources' teardown calls :func:`record_abandoned_writers`, and a close calls
    :meth:`record_unyielded` too; whichever comes first records every planned node without an outcome
    as lost (the other finds nothing to do)."""

    def __init__(self) -> None:
        self._record: Callable[[], None] | None = None
        self._done = False

    def bind(self, record: Callable[[], None]) -> None:
        self._record = record

    def record_unyielded(self) -> None:
        if self._done or self._record is None:
            return
        self._done = True
        self._record()


class _OpenWriters:
    """The writers of this process that have started and not ended, by run id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[str, list[_OpenWriter]] = {}

    def add(self, run_id: str, writer: _OpenWriter) -> None:
        with self._lock:
            self._by_run.setdefault(run_id, []).append(writer)

    def remove(self, run_id: str, writer: _OpenWriter) -> None:
        with self._lock:
            writers = self._by_run.get(run_id, [])
            if writer in writers:
                writers.remove(writer)
            if not writers:
                self._by_run.pop(run_id, None)

    def take(self, run_id: str) -> list[_OpenWriter]:
        with self._lock:
            return self._by_run.pop(run_id, [])


_OPEN_WRITERS = _OpenWriters()


def record_abandoned_writers(run_id: str | None) -> int:
    """Record as lost every planned node without an outcome of this run's producer steps whose writer
    Dagster left suspended (see :class:`_OpenWriter`); a writer that ended normally is not affected.
    Called by the watcher resources' ``teardown_after_execution``, which Dagster runs even when an
    interrupt ended the step. Returns how many writers it finished.

    Args:
        run_id: the run whose resources are torn down (None outside a run: nothing to do).
    """
    if run_id is None:
        return 0
    writers = _OPEN_WRITERS.take(run_id)
    for writer in writers:
        try:
            writer.record_unyielded()
        except Exception as error:  # noqa: BLE001 - teardown must not hide the step's own failure
            logger.warning("dagster-watcher: could not record the lost nodes of a stopped step: %s", error)
    return len(writers)


def _log_observations(context: AssetExecutionContext, events: Iterator[DagsterNodeEvent]) -> None:
    for event in events:
        if isinstance(event, AssetObservation):
            context.log_event(event)


def _lost_message_after_close(context: AssetExecutionContext) -> str:
    """Why the nodes of a step Dagster closed early are lost: a run being terminated, or else the step
    ended for a reason the writer cannot see (an error in Dagster while it stored an event)."""
    try:
        run = context.instance.get_run_by_id(context.run.run_id)
    except Exception:  # noqa: BLE001 - the record is what matters, not the exact reason
        run = None
    if run is not None and run.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
        return contract.RUN_TERMINATED
    return f"{LOST_MESSAGE} Dagster stopped the step before dbt finished."


class _Heartbeat:
    """The run's heartbeat tag, written by the writer's own thread (never dbt's): at start, then at
    most once per ``interval`` seconds."""

    def __init__(self, context: AssetExecutionContext, interval: float) -> None:
        self._context = context
        self._interval = interval
        self._last = float("-inf")
        self.maybe()

    def maybe(self) -> None:
        if self._interval <= 0:
            return
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._context.instance.add_run_tags(self._context.run.run_id, contract.heartbeat_tags(time.time()))


class _ScrubbedLog:
    """The step's log, every line scrubbed (the writer's texts are already; this covers the rest)."""

    def __init__(self, context: AssetExecutionContext) -> None:
        self._log = context.log

    def info(self, text: str) -> None:
        self._log.info(scrub_secrets(text))

    def warning(self, text: str) -> None:
        self._log.warning(scrub_secrets(text))

    def error(self, text: str) -> None:
        self._log.error(scrub_secrets(text))


def _failure_table(plan: BuildPlan, failed: Sequence[NodeResult]) -> list[dict[str, Any]]:
    return [
        {
            "unique_id": r.unique_id,
            "status": r.status.value,
            "error": describe_failure(r)[:2000],
        }
        for r in failed
    ]


def _summary(plan: BuildPlan, results: Sequence[NodeResult], seconds: float) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    lines = ["| node | type | status | seconds |", "|---|---|---|---|"]
    for r in results:
        secs = f"{r.execution_time:.2f}" if r.execution_time is not None else ""
        lines.append(f"| {plan.name_of(r.unique_id)} | {r.resource_type} | {r.status.value} | {secs} |")
    totals = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append("")
    lines.append(f"dagster-watcher: {len(results)} node outcomes in {seconds:.1f}s: {totals}")
    return "\n".join(lines)
