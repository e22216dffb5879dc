"""A picture of one build: one bar per executed node on its dbt thread, coloured by outcome, the
critical path outlined. Pure functions from node outcomes to an SVG document (no plotting library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from .status import NodeResult, NodeStatus, node_name

#: The file written beside run_results.json at the end of a producer step.
TIMELINE_FILE = "dagster_watcher_timeline.svg"

_COLOURS = {
    NodeStatus.SUCCESS: "#3fb950",
    NodeStatus.WARN: "#d29922",
    NodeStatus.PARTIAL_SUCCESS: "#d29922",
    NodeStatus.FAIL: "#f85149",
    NodeStatus.ERROR: "#f85149",
}
_ROW = 22
_LEFT = 150
_WIDTH = 900
_TOP = 40


def _timed(results: Sequence[NodeResult]) -> list[NodeResult]:
    return [r for r in results if r.started_at is not None and r.completed_at is not None]


def critical_path(results: Sequence[NodeResult], manifest: Mapping[str, Any]) -> list[str]:
    """unique_ids of the chain that ended the build: from the last node to finish, back through the
    parent (among the executed nodes) that finished last, to a node with no executed parent."""
    timed = {r.unique_id: r for r in _timed(results)}
    if not timed:
        return []
    nodes = {**(manifest.get("nodes") or {}), **(manifest.get("unit_tests") or {})}

    def finished(unique_id: str) -> datetime:
        completed = timed[unique_id].completed_at
        assert completed is not None
        return completed

    current = max(timed, key=finished)
    path = [current]
    while True:
        parents = (nodes.get(current) or {}).get("depends_on", {}).get("nodes", [])
        ran = [p for p in parents if p in timed and p not in path]
        if not ran:
            return list(reversed(path))
        current = max(ran, key=finished)
        path.append(current)


def render_timeline(results: Sequence[NodeResult], manifest: Mapping[str, Any]) -> str:
    """The build as an SVG document: a bar per node that ran (``data-unique-id`` and ``data-status``
    on each), lanes by dbt thread, failed nodes marked, the critical path outlined; nodes that did not
    run (skipped, not selected, lost) are counted under the chart.

    Args:
        results: the step's node outcomes, as the writer recorded them.
        manifest: the dbt manifest (for the dependencies the critical path follows).
    """
    timed = sorted(_timed(results), key=lambda r: (r.started_at, r.unique_id))
    threads = sorted({r.thread or "main" for r in timed})
    lane = {t: i for i, t in enumerate(threads)}
    start = min((r.started_at for r in timed if r.started_at), default=None)
    end = max((r.completed_at for r in timed if r.completed_at), default=None)
    span = max((end - start).total_seconds(), 1e-3) if start and end else 1.0
    on_path = set(critical_path(results, manifest))
    height = _TOP + _ROW * max(len(threads), 1) + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="10" y="20" font-size="14">dbt build: {len(timed)} node(s) ran in {span:.1f}s on '
        f"{len(threads)} thread(s); outlined: the critical path</text>",
    ]
    for thread, i in lane.items():
        out.append(f'<text x="10" y="{_TOP + i * _ROW + 15}">{escape(thread)}</text>')
    for r in timed:
        assert r.started_at is not None and r.completed_at is not None and start is not None
        x = _LEFT + (r.started_at - start).total_seconds() / span * _WIDTH
        w = max((r.completed_at - r.started_at).total_seconds() / span * _WIDTH, 1.0)
        y = _TOP + lane[r.thread or "main"] * _ROW
        colour = _COLOURS.get(r.status, "#8b949e")
        stroke = ' stroke="#000" stroke-width="2"' if r.unique_id in on_path else ""
        label = f"{node_name(r.unique_id)}: {r.status.value} ({(r.completed_at - r.started_at).total_seconds():.2f}s)"
        out.append(
            f'<rect class="node" data-unique-id="{escape(r.unique_id)}" data-status="{r.status.value}" '
            f'x="{x:.1f}" y="{y}" width="{w:.1f}" height="{_ROW - 4}" fill="{colour}"{stroke}>'
            f"<title>{escape(label)}</title></rect>"
        )
        if r.status.is_failure:
            out.append(f'<text x="{x:.1f}" y="{y - 1}" fill="#f85149">✗ {escape(node_name(r.unique_id))}</text>')
    untimed: dict[str, int] = {}
    ran = {r.unique_id for r in timed}
    for r in results:
        if r.unique_id not in ran:
            untimed[r.status.value] = untimed.get(r.status.value, 0) + 1
    if untimed:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(untimed.items()))
        out.append(f'<text x="10" y="{height - 15}">did not run: {escape(counts)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_timeline(directory: Path, results: Sequence[NodeResult], manifest: Mapping[str, Any]) -> Path:
    """Write :func:`render_timeline` to ``directory``/:data:`TIMELINE_FILE` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TIMELINE_FILE
    path.write_text(render_timeline(results, manifest), encoding="utf-8")
    return path
