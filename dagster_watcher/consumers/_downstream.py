"""Downstream launches: one run per attached job per new materialization of a model. The same rule
for a per-model sensor (its own asset) and a per-producer sensor (every asset with jobs attached)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, RunRequest

from .. import contract
from ._reads import Entry

#: Materializations one asset's downstream jobs catch up on per tick (the rest on the next tick).
_PAGE = 100


@dataclass
class WatchedAsset:
    """What a consumer needs to know about one asset (built once, at definition time)."""

    key: AssetKey
    unique_id: str
    downstream_jobs: list[str] = field(default_factory=list)


def downstream_requests(
    instance: Any, watched: WatchedAsset, after: int, entry: Entry | None
) -> tuple[list[RunRequest], int]:
    """The runs to request for ``watched``'s materializations newer than storage id ``after``, and
    the new mark. ``entry`` (the asset's record, when known) saves the read when nothing is newer.
    The evidence of success is the materialization event itself."""
    if not watched.downstream_jobs:
        return [], after
    if entry is not None and (entry.materialization_id or 0) <= after:
        return [], after  # nothing newer than what was handled
    if after == 0:
        # A new sensor (or a reset cursor) acts on the newest materialization only, like Dagster's
        # asset sensors: deploying it must not replay the asset's whole history downstream.
        records = instance.fetch_materializations(watched.key, limit=1, ascending=False).records
    else:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=watched.key, after_storage_id=after), limit=_PAGE, ascending=True
        ).records
    requests = []
    for record in records:
        for job in watched.downstream_jobs:
            requests.append(
                RunRequest(
                    run_key=contract.downstream_run_key(watched.key, record.storage_id, job),
                    job_name=job,
                    tags=contract.downstream_run_tags(watched.key, record.run_id),
                )
            )
        after = max(after, record.storage_id)
    return requests, after
