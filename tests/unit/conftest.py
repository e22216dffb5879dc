"""Session fixtures over the recorded dbt events (``recorded.py``). No dbt build and no Dagster run:
everything here reads the committed data files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from dagster_watcher.dbt_normalizer import RawDbtEvent
from dagster_watcher.status import NodeResult

from .recorded import MODES, load_events, load_graph, replay


@pytest.fixture(scope="session")
def graph() -> Mapping[str, Any]:
    return load_graph()


@pytest.fixture(scope="session")
def recorded() -> dict[str, list[RawDbtEvent]]:
    return {mode: load_events(mode) for mode in MODES}


@pytest.fixture(scope="session")
def replayed(recorded: dict[str, list[RawDbtEvent]], graph: Mapping[str, Any]) -> dict[str, list[NodeResult]]:
    return {mode: replay(events, graph) for mode, events in recorded.items()}


@pytest.fixture(scope="session")
def by_id(replayed: dict[str, list[NodeResult]]) -> dict[str, dict[str, NodeResult]]:
    return {mode: {r.unique_id: r for r in results} for mode, results in replayed.items()}
