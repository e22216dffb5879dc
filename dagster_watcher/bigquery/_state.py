"""The state of one node within one engine invocation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagster_watcher.bigquery.graph import _Node
from dagster_watcher.bigquery.sql import Statement


@dataclass
class _NodeJob:
    spec: _Node
    attempt: int = 0
    plan: str | None = None
    statements: list[Statement] = field(default_factory=list)
    index: int = 0
    job: Any = None
    """The in-flight job (QueryJob / LoadJob) or None."""
    done_jobs: list[Any] = field(default_factory=list)
    submitted_at: float = 0.0
    poll_errors: int = 0
    reattached: bool = False
