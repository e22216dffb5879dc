"""Downstream launches: one run per attached job per new materialization of a model (per partition
for a partitioned job). The same rule for a per-model sensor (its own asset) and the per-producer
sensor (every asset with jobs attached, ``build_watcher_sensors(..., per_model=False)``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, PartitionsDefinition, RunRequest, SensorEvaluationContext

from .. import contract
from ._reads import Entry

#: Materializations one asset's downstream jobs catch up on per tick (the rest on the next tick).
_PAGE = 100
#: How many of the newest materializations a new sensor reads to find all of the newest run's partitions.
_NEWEST_RUN_PAGE = 1_000


@dataclass
class WatchedAsset:
    """What a consumer needs to know about one asset (built once, at definition time)."""

    key: AssetKey
    unique_id: str
    downstream_jobs: list[str] = field(default_factory=list)
    downstream_partitions_defs: dict[str, PartitionsDefinition | None] = field(default_factory=dict)
    """The partitions each downstream job was declared with (an asset job's may only be known once
    the code location resolves it)."""
    partitioned: bool = False
    """The asset is partitioned: a run materialized it only if it materialized each planned partition."""


def downstream_requests(
    context: SensorEvaluationContext, instance: Any, watched: WatchedAsset, after: int, entry: Entry | None
) -> tuple[list[RunRequest], int]:
    """The runs to request for ``watched``'s materializations newer than storage id ``after``, and the
    new mark. ``entry`` (the asset's record, when known) saves the read when nothing is newer. The
    evidence of success is the materialization event itself."""
    if not watched.downstream_jobs:
        return [], after
    if entry is not None and (entry.materialization_id or 0) <= after:
        return [], after  # nothing newer than what was handled
    if after == 0:
        # A new sensor (or a reset cursor) acts on the newest materialization only, like Dagster's
        # asset sensors: deploying it must not replay the asset's whole history downstream.
        newest = instance.fetch_materializations(watched.key, limit=1, ascending=False).records
        records = newest
        if newest and newest[0].partition_key is not None:
            # ... of the newest run: all the partitions it materialized (a backfill's range). Read
            # from the asset's own rows: their storage ids are the ones the cursor compares (a run's
            # records may be numbered per run, e.g. SQLite's run shards).
            recent = instance.fetch_materializations(watched.key, limit=_NEWEST_RUN_PAGE, ascending=False)
            records = list(takewhile(lambda r: r.run_id == newest[0].run_id, recent.records))[::-1]
    else:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=watched.key, after_storage_id=after), limit=_PAGE, ascending=True
        ).records
    requests: list[RunRequest] = []
    by_run: dict[str, list[Any]] = {}
    for record in records:
        by_run.setdefault(record.run_id, []).append(record)
        after = max(after, record.storage_id)
    for run_id, found in by_run.items():
        # A downstream run carries the upstream run's own tags (user tags, pools, run-launcher config).
        upstream = instance.get_run_record_by_id(run_id)
        carried = contract.without_partition_tags(
            contract.carried_run_tags(upstream.dagster_run.tags if upstream else {})
        )
        tags = {**carried, **contract.downstream_run_tags(watched.key, run_id)}
        for job in watched.downstream_jobs:
            partitioned = _job_partitions_def(context, job, watched.downstream_partitions_defs.get(job)) is not None
            if partitioned and any(r.partition_key for r in found):
                # One run per materialized partition, with that partition's key.
                requests += [
                    RunRequest(
                        run_key=contract.downstream_run_key(watched.key, r.storage_id, job),
                        job_name=job,
                        partition_key=r.partition_key,
                        tags=tags,
                    )
                    for r in found
                    if r.partition_key
                ]
            elif any(r.partition_key for r in found):
                # An unpartitioned job runs once for the partitions one run materialized.
                requests.append(
                    RunRequest(
                        run_key=contract.downstream_run_key(watched.key, found[-1].storage_id, job),
                        job_name=job,
                        tags=tags,
                    )
                )
            else:
                requests += [
                    RunRequest(
                        run_key=contract.downstream_run_key(watched.key, r.storage_id, job),
                        job_name=job,
                        tags=tags,
                    )
                    for r in found
                ]
    return requests, after


def _job_partitions_def(context: SensorEvaluationContext, job: str, declared: PartitionsDefinition | None) -> Any:
    """The downstream job's partitions: the resolved job's in the code location (an asset job takes
    its assets'), else those it was declared with."""
    repository = context.repository_def
    if repository is not None and repository.has_job(job):
        return repository.get_job(job).partitions_def
    return declared
