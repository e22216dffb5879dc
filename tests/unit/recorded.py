"""The recorded dbt events of ``example_project`` with ``fail_model=stg_payments`` (written by
``record_events.py``) and the normaliser replaying them, for the unit tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster_watcher.dbt_normalizer import DbtEventNormalizer, RawDbtEvent
from dagster_watcher.status import NodeResult

DATA = Path(__file__).resolve().parent / "data"
MODES = ("runner", "subprocess")

FAILED_MODEL = "model.shop.stg_payments"
WARN_TEST = "test.shop.not_null_stg_customers_email.d7cf761533"


def load_graph() -> dict[str, Any]:
    """The recording's manifest, trimmed to what the normaliser reads (nodes, parent_map, child_map)."""
    return json.loads((DATA / "manifest_graph.json").read_text())


def load_events(mode: str) -> list[RawDbtEvent]:
    lines = (DATA / f"events_{mode}.jsonl").read_text().splitlines()
    return [RawDbtEvent(e["name"], e["data"], e["invocation_id"]) for e in map(json.loads, lines)]


def replay(events: list[RawDbtEvent], graph: Mapping[str, Any], **kwargs: Any) -> list[NodeResult]:
    """Every result the normaliser releases for ``events``, in release order (as the producer feeds it)."""
    normalizer = DbtEventNormalizer(graph, **kwargs)
    out: list[NodeResult] = []
    for event in events:
        out += normalizer.feed(event.name, event.data, event.invocation_id)
    return out + normalizer.release_held()
