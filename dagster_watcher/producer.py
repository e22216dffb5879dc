"""The producer: one `dbt build` for the selected part of a ``@dbt_watcher_assets`` definition, with
every node's outcome written to Dagster the moment dbt reports it.

The generator in :func:`stream_build` runs on the op's own thread and is the single, ordered writer:
invocation modes only hand it raw events (dbt's worker threads never touch Dagster), the normaliser
turns them into one terminal result per node, and ``dagster_events`` maps each result to one event.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dagster import AssetExecutionContext, Failure, MetadataValue
from dagster_dbt import DbtProject
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets
from dagster_dbt.dagster_dbt_translator import DagsterDbtTranslator

from .asset_decorator import HOST_TAG, PID_TAG, policy_from_tags
from .dagster_events import DagsterNodeEvent, NodeTarget, describe_failure, to_dagster_event
from .events import DbtEventNormalizer, NodeResult, NodeStatus, lost_result
from .invocation import DbtInvocation, InvocationExit
from .retry import WatcherRetryPolicy, read_run_outcomes

_UNIQUE_ID = "dagster_dbt/unique_id"
_SELECT_TAG = "dagster_dbt/select"
_EXCLUDE_TAG = "dagster_dbt/exclude"
_SELECTOR_TAG = "dagster_dbt/selector"


@dataclass
class BuildPlan:
    """What this step asks dbt to do, and which node outcomes it must account for."""

    manifest: Mapping[str, Any]
    translator: DagsterDbtTranslator
    targets: dict[str, NodeTarget]
    """Every node of this step's selection that has a Dagster home, by unique_id."""
    selection_args: list[str] = field(default_factory=list)
    retry_policy: WatcherRetryPolicy = field(default_factory=WatcherRetryPolicy)
    """The policy the definition was made with (decides whether a failure may be retried in-step)."""
    already_done: frozenset[str] = frozenset()
    """Nodes that succeeded in an earlier attempt of this step (retries run only the rest)."""
    project: DbtProject | None = None
    """The dagster-dbt project the definition was made with (None for a bare manifest)."""

    @property
    def expected(self) -> frozenset[str]:
        return frozenset(self.targets) - self.already_done

    @property
    def is_empty(self) -> bool:
        return not self.expected

    def name_of(self, unique_id: str) -> str:
        node = (self.manifest.get("nodes") or {}).get(unique_id) or {}
        return str(node.get("name") or unique_id)


def plan_for_context(context: AssetExecutionContext, already_done: frozenset[str] = frozenset()) -> BuildPlan:
    """Work out this step's dbt selection from the Dagster selection (a subset in the UI, a job's asset
    selection, or a retry's remaining nodes)."""
    assets_def = context.assets_def
    manifest, translator, project = get_manifest_and_translator_from_dbt_assets([assets_def])
    selected_keys = context.selected_asset_keys
    selected_checks = context.selected_asset_check_keys
    nodes = manifest.get("nodes") or {}

    targets: dict[str, NodeTarget] = {}
    for key in selected_keys:
        unique_id = assets_def.get_asset_spec(key).metadata[_UNIQUE_ID]
        targets[unique_id] = NodeTarget(
            unique_id=unique_id, asset_key=key, output_name=assets_def.get_output_name_for_asset_key(key)
        )
    for check_key in selected_checks:
        spec = assets_def.get_spec_for_check_key(check_key)
        unique_id = (spec.metadata or {}).get(_UNIQUE_ID)
        if not unique_id:
            continue
        severity = str(((nodes.get(unique_id) or {}).get("config") or {}).get("severity", "error")).lower()
        targets[unique_id] = NodeTarget(unique_id=unique_id, check_key=check_key, check_severity=severity)

    plan = BuildPlan(
        manifest=manifest,
        translator=translator,
        targets=targets,
        already_done=already_done,
        retry_policy=policy_from_tags(context.op_execution_context.op.tags),
        project=project,
    )
    is_full = (
        not already_done
        and assets_def.keys_by_output_name == assets_def.node_keys_by_output_name
        and assets_def.check_specs_by_output_name == assets_def.node_check_specs_by_output_name
    )
    if is_full:
        # The definition's own selection: readable, and dbt also runs tests that are not checks.
        tags = context.op_execution_context.op.tags
        for flag, tag in (("--select", _SELECT_TAG), ("--exclude", _EXCLUDE_TAG), ("--selector", _SELECTOR_TAG)):
            if tags.get(tag):
                plan.selection_args += [flag, tags[tag]]
    else:
        # Exactly the nodes asked for, by fully qualified name, and no test dbt would add on its own
        # (eager indirect selection can pull in a test whose other parent is not being built). The
        # list goes to dbt as arguments, never into a copy of the project; in-process it has no
        # length limit at all.
        fqns = sorted(".".join(nodes[u]["fqn"]) for u in plan.expected if u in nodes)
        if fqns:
            plan.selection_args += ["--select", *fqns, "--indirect-selection", "empty"]
    return plan


def start_step(context: AssetExecutionContext) -> BuildPlan | None:
    """Everything a producer does before it starts work, whatever runs the nodes: on a retried step,
    leave out what already succeeded in this run; plan the selection; record the process for the
    consumers' liveness check. Returns None when there is nothing to build."""
    already_done: frozenset[str] = frozenset()
    if context.retry_number > 0:
        # A retried step builds only what has not succeeded in this run so far, as recorded in the
        # event log (so a retry on another machine sees the same truth).
        already_done = succeeded_in_run(context)
        context.log.info(
            f"dagster-watcher: attempt {context.retry_number + 1}; {len(already_done)} node(s) already "
            "succeeded in this run and are not rebuilt"
        )
    plan = plan_for_context(context, already_done)
    if plan.is_empty:
        context.log.info("dagster-watcher: nothing left to build in this step; nothing was started.")
        return None
    _memoize_output_asset_keys(context)
    # One write per step: lets consumer sensors tell a live producer from a killed one (Dagster's
    # default run launcher cannot health-check run workers).
    context.instance.add_run_tags(context.run.run_id, {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    return plan


def _memoize_output_asset_keys(context: AssetExecutionContext) -> None:
    """Dagster 1.13 recomputes ``StepExecutionContext.get_output_asset_keys()`` for every ``Output`` a
    step yields, looping over every output and rebuilding the node's key set each time: O(n^3) for a
    step with n assets, the largest cost of a 200-node build. Its answer is fixed for the step, so this
    step's context object (only this one; nothing global is patched) remembers it. If Dagster's
    internals change, this does nothing."""
    try:
        step_context = context.op_execution_context._step_execution_context
        keys = step_context.get_output_asset_keys()
        step_context.get_output_asset_keys = lambda: keys  # type: ignore[method-assign]
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


def succeeded_in_run(context: AssetExecutionContext) -> frozenset[str]:
    """unique_ids of this step's nodes that already have a success recorded in this run."""
    outcomes = read_run_outcomes(context.instance, context.run.run_id)
    assets_def = context.assets_def
    done: set[str] = set()
    for key in outcomes.materialized & set(assets_def.keys):
        done.add(assets_def.get_asset_spec(key).metadata[_UNIQUE_ID])
    for check_key in outcomes.checks_done & set(assets_def.check_keys):
        unique_id = (assets_def.get_spec_for_check_key(check_key).metadata or {}).get(_UNIQUE_ID)
        if unique_id:
            done.add(unique_id)
    return frozenset(done)


class _Progress:
    """A live progress line per node on stdout (compute logs / terminal), never in the event log."""

    def __init__(self, plan: BuildPlan, enabled: bool) -> None:
        self.total = len(plan.expected)
        self.done = 0
        self.enabled = enabled
        self.plan = plan

    def node(self, result: NodeResult) -> None:
        if result.unique_id in self.plan.targets:
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

    def results(self) -> Iterator[NodeResult]:
        """Start the work and yield terminal results in finish order, on the caller's thread."""

    def release_held(self) -> list[NodeResult]:
        """Results still held back (e.g. waiting for error text) when the work is stopped early."""

    def cancel(self) -> None:
        """Stop the work (run termination). Safe from any thread."""


class DbtResultSource:
    """A dbt invocation (in-process or subprocess) whose raw events go through the normaliser."""

    def __init__(self, invocation: DbtInvocation, manifest: Mapping[str, Any], target_path: Path | None) -> None:
        self.invocation = invocation
        self.mode = invocation.mode
        self.normalizer = DbtEventNormalizer(manifest, target_path=target_path)

    @property
    def exit(self) -> InvocationExit | None:
        return self.invocation.exit

    def results(self) -> Iterator[NodeResult]:
        for raw in self.invocation.stream():
            yield from self.normalizer.feed(raw.name, raw.data, raw.invocation_id)
        yield from self.normalizer.release_held()

    def release_held(self) -> list[NodeResult]:
        return self.normalizer.release_held()

    def cancel(self) -> None:
        self.invocation.cancel()


def stream_build(
    context: AssetExecutionContext,
    plan: BuildPlan,
    source: NodeResultSource,
    *,
    progress: bool = True,
) -> Iterator[DagsterNodeEvent]:
    """Run ``source`` and yield one Dagster event per node outcome as it is reported.

    Every selected node ends with exactly one outcome: what the source never reported is recorded as
    lost. Raises :class:`dagster.Failure` after every outcome has been written if any selected node did
    not succeed or the run did not complete; materializations written before that stay.
    """
    bar = _Progress(plan, progress)
    results: list[NodeResult] = []
    started = time.monotonic()

    def emit(result: NodeResult) -> Iterator[DagsterNodeEvent]:
        results.append(result)
        bar.node(result)
        target = plan.targets.get(result.unique_id)
        if target is None:
            if not result.status.succeeded:
                context.log.warning(f"dbt {result.unique_id}: {describe_failure(result)}")
            return
        if not result.status.succeeded:
            context.log.error(f"{plan.name_of(result.unique_id)} ({result.unique_id}): {describe_failure(result)}")
        event = to_dagster_event(result, target)
        if event is not None:
            yield event

    try:
        for result in source.results():
            yield from emit(result)
    except GeneratorExit:
        # Dagster closed the step's generator: nothing more may be yielded; just stop the work.
        source.cancel()
        raise
    except BaseException:
        # Termination or any error on the writer's side: stop the work; record what is known; re-raise.
        source.cancel()
        for result in source.release_held():
            yield from emit(result)
        raise
    reported = {r.unique_id for r in results}
    invocation_id = next((r.invocation_id for r in results if r.invocation_id), None)
    for unique_id in sorted(plan.expected - reported):
        yield from emit(lost_result(unique_id, plan.manifest, invocation_id))

    exit_ = source.exit
    failed = [r for r in results if r.unique_id in plan.targets and not r.status.succeeded]
    summary = _summary(plan, results, time.monotonic() - started)
    if progress:
        print(summary, flush=True)
    metadata = {"failed_nodes": MetadataValue.json(_failure_table(plan, failed)), "summary": MetadataValue.md(summary)}
    if exit_ is not None and not exit_.completed:
        raise Failure(description=f"dbt did not complete ({source.mode} mode): {exit_.error}", metadata=metadata)
    if failed:
        first = "; ".join(f"{plan.name_of(r.unique_id)}: {describe_failure(r)}" for r in failed[:5])
        more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
        retryable = any(r.status is not NodeStatus.ERROR or plan.retry_policy.is_retryable(r.message) for r in failed)
        raise Failure(
            allow_retries=retryable,
            description=f"{len(failed)} dbt node(s) did not succeed: {first}{more}",
            metadata=metadata,
        )


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
