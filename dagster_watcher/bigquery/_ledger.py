"""The outcomes of one engine invocation: which nodes are ready, finished, skipped, and the results
not yet handed to the caller. Knows the graph, not BigQuery."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping

from dagster_watcher.bigquery._outcomes import _node_result
from dagster_watcher.bigquery._state import _NodeJob
from dagster_watcher.bigquery.graph import _Node
from dagster_watcher.status import NodeResult, NodeStatus


class _Ledger:
    """Every selected node gets exactly one result here: :meth:`emit` ignores a second one."""

    def __init__(self, graph: Mapping[str, _Node], run_id: str, default_location: str | None) -> None:
        self.graph = graph
        self.run_id = run_id
        self.default_location = default_location
        self.node_jobs = {uid: _NodeJob(spec) for uid, spec in graph.items()}
        self.remaining_parents = {uid: len(n.parents) for uid, n in graph.items()}
        self.finished: set[str] = set()
        self.ready: list[tuple[int, str]] = []
        self.results: list[NodeResult] = []
        self.skipped_because: dict[str, tuple[str, ...]] = {}
        for uid, count in self.remaining_parents.items():
            if count == 0:
                heapq.heappush(self.ready, (-graph[uid].priority, uid))

    @property
    def all_finished(self) -> bool:
        return len(self.finished) >= len(self.graph)

    def pop_ready(self) -> _NodeJob:
        """The ready node with the longest chain below it."""
        _, uid = heapq.heappop(self.ready)
        return self.node_jobs[uid]

    def release_children(self, succeeded: str) -> None:
        """``succeeded`` is done: children whose parents all succeeded become ready."""
        for child in self.graph[succeeded].children:
            if child in self.finished or child in self.skipped_because:
                continue
            self.remaining_parents[child] -= 1
            if self.remaining_parents[child] == 0:
                heapq.heappush(self.ready, (-self.graph[child].priority, child))

    def drain(self) -> Iterator[NodeResult]:
        while self.results:
            yield self.results.pop(0)

    def fail(self, node_job: _NodeJob, message: str, *, dbt_status: str = "error") -> None:
        self.emit(node_job, NodeStatus.ERROR, dbt_status, message=message)
        self.skip_descendants(node_job.spec.unique_id)

    def skip_descendants(self, failed: str) -> None:
        stack = list(self.graph[failed].children)
        while stack:
            uid = stack.pop()
            if uid in self.finished or uid in self.skipped_because:
                continue
            self.skipped_because[uid] = (failed,)
            node_job = self.node_jobs[uid]
            self.emit(
                node_job,
                NodeStatus.SKIPPED,
                "skipped",
                skipped_because=(failed,),
                message=f"skipped: upstream {failed} did not succeed",
            )
            stack.extend(self.graph[uid].children)

    def fail_stuck(self) -> None:
        for uid, node_job in self.node_jobs.items():
            if uid not in self.finished:
                waiting = sorted(p for p in node_job.spec.parents if p not in self.finished)
                self.emit(
                    node_job,
                    NodeStatus.ERROR,
                    "error",
                    message=f"internal error: node never became ready (waiting for {waiting})",
                )

    def drop_unsubmitted(self, inflight: Mapping[str, _NodeJob]) -> bool:
        """After cancel(): nodes never submitted end as LOST (they did not run; no upstream failed)."""
        progressed = False
        for uid, node_job in self.node_jobs.items():
            if uid in self.finished or uid in inflight:
                continue
            self.emit(node_job, NodeStatus.LOST, "cancelled", message="not submitted: the run was cancelled")
            progressed = True
        self.ready.clear()
        return progressed

    def emit(
        self,
        node_job: _NodeJob,
        status: NodeStatus,
        dbt_status: str,
        *,
        message: str | None = None,
        failures: int | None = None,
        skipped_because: tuple[str, ...] = (),
    ) -> None:
        if node_job.spec.unique_id in self.finished:
            return
        self.finished.add(node_job.spec.unique_id)
        self.results.append(
            _node_result(
                node_job,
                status,
                dbt_status,
                message=message,
                failures=failures,
                skipped_because=skipped_because,
                run_id=self.run_id,
                default_location=self.default_location,
            )
        )
