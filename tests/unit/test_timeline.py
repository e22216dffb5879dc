"""The build timeline as a pure function of node outcomes."""

from __future__ import annotations

from datetime import datetime, timedelta

from dagster_watcher.status import NodeResult, NodeStatus
from dagster_watcher.timeline import critical_path, render_timeline

T0 = datetime(2026, 12, 1, 12, 0, 0)
MANIFEST = {
    "nodes": {
        "model.p.a": {"depends_on": {"nodes": []}},
        "model.p.b": {"depends_on": {"nodes": []}},
        "model.p.c": {"depends_on": {"nodes": ["model.p.a", "model.p.b"]}},
        "model.p.d": {"depends_on": {"nodes": ["model.p.c"]}},
    }
}


def _ran(unique_id: str, start: float, end: float, status: NodeStatus = NodeStatus.SUCCESS, thread: str = "T1"):
    return NodeResult(
        unique_id=unique_id,
        resource_type="model",
        status=status,
        dbt_status=status.value,
        started_at=T0 + timedelta(seconds=start),
        completed_at=T0 + timedelta(seconds=end),
        thread=thread,
    )


def test_the_critical_path_follows_the_parent_that_finished_last() -> None:
    results = [_ran("model.p.a", 0, 1), _ran("model.p.b", 0, 3, thread="T2"), _ran("model.p.c", 3, 4)]
    assert critical_path(results, MANIFEST) == ["model.p.b", "model.p.c"]


def test_one_bar_per_node_that_ran_and_the_rest_counted() -> None:
    skipped = NodeResult(unique_id="model.p.d", resource_type="model", status=NodeStatus.SKIPPED, dbt_status="skipped")
    results = [_ran("model.p.a", 0, 1), _ran("model.p.c", 1, 2, NodeStatus.ERROR, thread="T2"), skipped]
    svg = render_timeline(results, MANIFEST)
    assert svg.count('<rect class="node"') == 2
    assert 'data-unique-id="model.p.c" data-status="error"' in svg and "✗ c" in svg
    assert "did not run: 1 skipped" in svg
    assert svg.count('stroke="#000"') == 2, "a -> c is the critical path"
