"""dbt events -> :class:`~dagster_watcher.status.NodeResult`: every dbt invocation mode feeds raw dbt
events in here and gets back exactly one terminal result per dbt node.

This module knows dbt's event format, not Dagster. Results become Dagster events in
``dagster_mapping.py``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .status import NodeResult, NodeStatus, is_test, resource_type_of

# dbt statuses (RunStatus / TestStatus / FreshnessStatus values) -> our terminal status.
_STATUS_MAP: dict[str, NodeStatus] = {
    "success": NodeStatus.SUCCESS,
    "pass": NodeStatus.SUCCESS,
    "warn": NodeStatus.WARN,
    "fail": NodeStatus.FAIL,
    "error": NodeStatus.ERROR,
    "runtime error": NodeStatus.ERROR,
    "skipped": NodeStatus.SKIPPED,
    "partial success": NodeStatus.PARTIAL_SUCCESS,
    # dbt reports `no-op` for nodes it deliberately did nothing for (e.g. a partial retry); treat it as
    # success only because dbt itself says the relation is in place.
    "no-op": NodeStatus.SUCCESS,
}


def status_of(dbt_status: str) -> NodeStatus:
    """Our terminal status for the status dbt reported (``success``, ``pass``, ``runtime error``...);
    anything dbt may add later counts as an error, never as a success."""
    return _STATUS_MAP.get(dbt_status.lower(), NodeStatus.ERROR)


@dataclasses.dataclass(frozen=True)
class RawDbtEvent:
    """One dbt event as the normaliser consumes it: the same shape whichever mode produced it (a
    dbtRunner callback message turned into a dict, or one line of dbt's JSON log)."""

    name: str
    data: Mapping[str, Any]
    invocation_id: str | None


#: The only dbt event names the normaliser consumes. Invocation modes filter on this set as early as
#: possible (in dbt's thread for the runner, by substring for the JSON log) so the ordered writer
#: never sees the dozens of debug events dbt fires per node.
WANTED_EVENTS = frozenset(
    {"NodeFinished", "RunResultError", "MainReportVersion", "LogBatchResult", "GenericExceptionOnRun"}
)
#: Of those, the ones only a microbatch model's build fires: one ``LogBatchResult`` per batch (each
#: batch is also followed by a ``NodeFinished`` of the model, which is not the model's outcome), and
#: ``GenericExceptionOnRun`` with a failed batch's error text (its ``NodeFinished`` says only "ERROR").
MICROBATCH_EVENTS = frozenset({"LogBatchResult", "GenericExceptionOnRun"})


def _parse_ts(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class DbtEventNormalizer:
    """Turns raw dbt events (name + dict payload, identical for both invocation modes) into exactly
    one terminal :class:`NodeResult` per node.

    Results are released the moment dbt reports a node finished, with two exceptions that exist so
    error text is never lost: an errored node whose ``NodeFinished`` carries no message is held until
    its ``RunResultError`` arrives (subprocess mode on some dbt versions), and whatever is still held
    when dbt exits is released by :meth:`release_held`.
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        *,
        target_path: Any = None,
        invocation_id: str | None = None,
    ) -> None:
        # `dbt build` reports every node it ran; what it never reported is decided by the writer
        # (producer.stream_build), which knows the selection.
        self._manifest = manifest
        self._parent_map: Mapping[str, list[str]] = manifest.get("parent_map") or {}
        self._child_map: Mapping[str, list[str]] = manifest.get("child_map") or {}
        self._target_path = target_path
        self.invocation_id = invocation_id
        self._done: dict[str, NodeResult] = {}
        self._held: dict[str, NodeResult] = {}
        self._failed: set[str] = set()
        """Nodes whose outcome makes dbt skip their descendants."""
        self._unit_tests_of: dict[str, list[str]] = {}
        """model unique_id -> its unit tests (they are in no child_map: dbt runs them before the model)."""
        for unit_test_id, unit_test in (manifest.get("unit_tests") or {}).items():
            tested = ((unit_test.get("depends_on") or {}).get("nodes") or [None])[0]
            if tested:
                self._unit_tests_of.setdefault(tested, []).append(unit_test_id)
        self._first_failure: str | None = None
        self.fail_fast_after: str | None = None
        """With ``--fail-fast``: the first failed node, once dbt said it stops the build."""
        self.dbt_version: str | None = None
        self._batches: dict[str, list[tuple[str, str]]] = {}
        """microbatch model -> (batch start as dbt prints it, status) of each batch reported so far."""
        self._batch_finishes: dict[str, int] = {}
        """microbatch model -> how many of its batches' own NodeFinished events were consumed."""
        self._exceptions: dict[str, list[str]] = {}
        """node -> the error texts of exceptions dbt reported on its worker thread (failed batches)."""

    @property
    def results(self) -> Mapping[str, NodeResult]:
        """Every terminal result released so far, by unique_id."""
        return self._done

    def feed(self, name: str, data: Mapping[str, Any], invocation_id: str | None = None) -> list[NodeResult]:
        """Consume one dbt event; return the terminal results it completes (usually zero or one)."""
        if invocation_id and not self.invocation_id:
            self.invocation_id = invocation_id
        if name == "NodeFinished":
            return self._on_node_finished(data)
        if name == "RunResultError":
            return self._on_run_result_error(data)
        if name == "LogBatchResult":
            self._on_batch_result(data)
            return []
        if name == "GenericExceptionOnRun":
            unique_id = data.get("unique_id") or (data.get("node_info") or {}).get("unique_id")
            if unique_id and data.get("exc"):
                self._exceptions.setdefault(str(unique_id), []).append(str(data["exc"]))
            return []
        if name == "MainReportVersion":
            self.dbt_version = str(data.get("version", "")).lstrip("=") or None
        return []

    def unreported(self, expected: Iterable[str]) -> list[NodeResult]:
        """Outcomes dbt gave only in words for expected nodes it never reported: with ``--fail-fast``,
        the nodes it skipped after the first failure (never lost: dbt decided not to run them)."""
        if self.fail_fast_after is None:
            return []
        cause = self.fail_fast_after
        message = f"skipped by dbt: --fail-fast stopped the build after {cause.split('.')[-1]} failed"
        out = []
        for unique_id in sorted(set(expected) - set(self._done) - set(self._held)):
            node = (self._manifest.get("nodes") or {}).get(unique_id) or {}
            out.append(
                self._release(
                    NodeResult(
                        unique_id=unique_id,
                        resource_type=node.get("resource_type") or resource_type_of(unique_id),
                        status=NodeStatus.SKIPPED,
                        dbt_status="skipped",
                        message=message,
                        invocation_id=self.invocation_id,
                    )
                )
            )
        return out

    def release_held(self) -> list[NodeResult]:
        """dbt has exited (or is being stopped): release results still waiting for their error text."""
        out = [self._release(r) for r in list(self._held.values())]
        self._held.clear()
        return out

    # -- internals -----------------------------------------------------------------------------

    def _node(self, unique_id: str) -> Mapping[str, Any]:
        return (self._manifest.get("nodes") or {}).get(unique_id) or {}

    def _release(self, result: NodeResult) -> NodeResult:
        self._done[result.unique_id] = result
        if result.status.blocks_descendants:
            self._failed.add(result.unique_id)
            self._first_failure = self._first_failure or result.unique_id
        return result

    def _on_node_finished(self, data: Mapping[str, Any]) -> list[NodeResult]:
        node_info = data.get("node_info") or {}
        run_result = data.get("run_result") or {}
        unique_id = node_info.get("unique_id")
        if not unique_id or unique_id in self._done or unique_id in self._held:
            # dbt fires NodeFinished once per node; a repeat would be a dbt bug. Never emit twice.
            return []
        if len(self._batches.get(unique_id, ())) > self._batch_finishes.get(unique_id, 0):
            # A microbatch model's batch (its LogBatchResult came first, on the same thread): the
            # model's own outcome is the NodeFinished after its last batch.
            self._batch_finishes[unique_id] = self._batch_finishes.get(unique_id, 0) + 1
            return []
        resource_type = node_info.get("resource_type") or resource_type_of(unique_id)
        dbt_status = str(run_result.get("status") or node_info.get("node_status") or "")
        status = status_of(dbt_status)
        message = run_result.get("message") or None
        timing = {t.get("name"): t for t in run_result.get("timing_info") or []}
        started = _parse_ts((timing.get("compile") or timing.get("execute") or {}).get("started_at"))
        completed = _parse_ts((timing.get("execute") or timing.get("compile") or {}).get("completed_at"))
        relation = (node_info.get("node_relation") or {}).get("relation_name") or None
        failures = run_result.get("num_failures")
        if failures is None:
            failures = run_result.get("failures")
        result = NodeResult(
            unique_id=unique_id,
            resource_type=resource_type,
            status=status,
            dbt_status=dbt_status,
            message=message,
            execution_time=run_result.get("execution_time"),
            adapter_response=dict(run_result.get("adapter_response") or {}),
            failures=failures if resource_type in ("test", "unit_test") else None,
            compiled_code=self._compiled_code(unique_id) if status.succeeded and resource_type == "model" else None,
            relation_name=relation,
            started_at=started,
            completed_at=completed,
            thread=run_result.get("thread"),
            invocation_id=self.invocation_id,
            skipped_because=self._failed_ancestors(unique_id) if status is NodeStatus.SKIPPED else (),
            failed_batches=self._failed_batches(unique_id, run_result) if status is NodeStatus.PARTIAL_SUCCESS else (),
        )
        if unique_id in self._batches:
            result = dataclasses.replace(result, message=self._batch_message(unique_id, message))
        if status is NodeStatus.ERROR and not message:
            # The text may still come in RunResultError at the end of the run: hold, don't lose it.
            self._held[unique_id] = result
            return []
        return [self._release(result)]

    def _on_run_result_error(self, data: Mapping[str, Any]) -> list[NodeResult]:
        unique_id = (data.get("node_info") or {}).get("unique_id")
        msg = data.get("msg") or ""
        if not unique_id and "fail_fast" in msg and self.fail_fast_after is None:
            # dbt reports the nodes --fail-fast skipped only as these lines, without the node.
            self.fail_fast_after = self._first_failure or "a node"
        if not unique_id or not msg.strip():
            # dbt follows real errors with trailing empty RunResultError lines: never let them
            # overwrite text we already have.
            return []
        held = self._held.pop(unique_id, None)
        if held is not None:
            return [self._release(dataclasses.replace(held, message=msg))]
        return []

    def _on_batch_result(self, data: Mapping[str, Any]) -> None:
        unique_id = (data.get("node_info") or {}).get("unique_id")
        found = _BATCH_DESCRIPTION.match(str(data.get("description") or ""))
        if unique_id and found:
            self._batches.setdefault(unique_id, []).append((found.group(1), str(data.get("status") or "").lower()))

    def _failed_batches(self, unique_id: str, run_result: Mapping[str, Any]) -> tuple[str, ...]:
        """The start (ISO 8601, UTC) of each failed or skipped batch of a microbatch model, from its
        batches' results (dbt's ``NodeFinished`` has no ``batch_results``; run_results.json has)."""
        printed = [start for start, status in self._batches.get(unique_id, ()) if status in _FAILED_BATCH_STATUSES]
        if not printed:
            # A recorded or future event that carries dbt's [start, end] pairs itself.
            failed = (run_result.get("batch_results") or {}).get("failed") or []
            printed = [str(b[0] if isinstance(b, list | tuple) and b else b) for b in failed]
        starts = [batch_start(p) for p in printed]
        return tuple(sorted(s.isoformat() if s is not None else p for s, p in zip(starts, printed, strict=True)))

    def _batch_message(self, unique_id: str, message: str | None) -> str | None:
        """dbt's summary of a microbatch model ("PARTIAL SUCCESS (2/3)") with the batches that failed
        and their error texts, which dbt reports only on the batches' own events."""
        failed = [start for start, status in self._batches.get(unique_id, ()) if status in _FAILED_BATCH_STATUSES]
        if not failed:
            return message
        errors = "; ".join(dict.fromkeys(e.strip() for e in self._exceptions.get(unique_id, ()) if e.strip()))
        text = f"{message or 'microbatch model'}: failed batches {', '.join(failed)}"
        return f"{text}: {errors}" if errors else text

    def _compiled_code(self, unique_id: str) -> str | None:
        """Compiled SQL as dbt wrote it to target/compiled during this invocation."""
        if self._target_path is None:
            return None
        node = self._node(unique_id)
        package, path = node.get("package_name"), node.get("original_file_path")
        if not package or not path:
            return None
        file = Path(self._target_path) / "compiled" / package / path
        try:
            return file.read_text()
        except OSError:
            return None

    def _failed_ancestors(self, unique_id: str) -> tuple[str, ...]:
        """The failed nodes upstream of a skipped node: failed ancestors, failed data tests on them (in
        `dbt build` a failing test also skips its model's children), and failed unit tests of the node
        itself or of an ancestor (dbt runs a model's unit tests first and skips it when one fails)."""
        found: list[str] = [u for u in self._unit_tests_of.get(unique_id, ()) if u in self._failed]
        seen = {unique_id}
        stack = list(self._parent_map.get(unique_id, ()))
        while stack:
            parent = stack.pop()
            if parent in seen:
                continue
            seen.add(parent)
            if parent in self._failed:
                found.append(parent)
            for child in [*self._child_map.get(parent, ()), *self._unit_tests_of.get(parent, ())]:
                if is_test(child) and child in self._failed and child not in seen:
                    seen.add(child)
                    found.append(child)
            stack.extend(self._parent_map.get(parent, ()))
        return tuple(sorted(set(found)))


def batch_start(printed: str) -> datetime | None:
    """A batch's start from the way dbt prints it (``MicrobatchBuilder.format_batch_start``: ``2024``,
    ``2024-09``, ``2024-09-17``, ``2024-09-17T16`` by batch size; dbt's batches are in UTC), or None."""
    text = printed.strip()
    for fmt in ("%Y-%m-%dT%H", "%Y-%m-%d", "%Y-%m", "%Y"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    parsed = _parse_ts(text)
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


_BATCH_DESCRIPTION = re.compile(r"^batch (\S+) of ")
_FAILED_BATCH_STATUSES = frozenset({"error", "skipped", "fail"})
