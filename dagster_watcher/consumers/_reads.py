"""Reads shared by the consumer sensors of one producer: one batched snapshot of every watched asset's
record, and the outcomes of finished runs."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import AssetKey

from .._compat import EventLogVersion
from ..retry import RunOutcomes, read_run_outcomes


@dataclass(frozen=True)
class Entry:
    """What the asset's record says (Dagster keeps it up to date on every planned/materialized event)."""

    last_run_id: str | None
    """The newest run that planned or materialized the asset."""
    materialization_id: int | None
    materialization_run_id: str | None


def read_entries(instance: Any, keys: Sequence[AssetKey]) -> dict[AssetKey, Entry]:
    """The entries of ``keys`` that have an asset record (one batched read)."""
    entries: dict[AssetKey, Entry] = {}
    for record in instance.get_asset_records(list(keys)):
        entry = record.asset_entry
        mat = entry.last_materialization_record
        entries[entry.asset_key] = Entry(
            last_run_id=entry.last_run_id,
            materialization_id=mat.storage_id if mat else None,
            materialization_run_id=mat.run_id if mat else None,
        )
    return entries


# A snapshot whose event log has moved on is taken again at most this often; in between, sensors
# that cannot use it read their own rows (so a build in progress costs what it did before, not a
# re-read of every asset per sensor).
SNAPSHOT_REFRESH_SECONDS = 1.0
_OUTCOME_CACHE_SIZE = 8


class SharedReads:
    """Reads shared by the consumer sensors of one producer, within one process (the code server
    evaluates every sensor of the location; the daemon may do so from several threads).

    - a snapshot of every watched asset's record, valid exactly as long as the event log's newest
      row id is unchanged (read per tick, as cheaply as the storage allows: ``_compat.EventLogVersion``);
    - the outcomes of finished runs, which no longer change (one read per failed run, not per
      sensor of its retry batch).

    From the snapshot a sensor concludes "nothing new", "materialized by the run that planned it",
    or, for a run that has ended, its outcome for the asset; a run still in progress, or anything
    the snapshot cannot tell, is decided from the asset's own rows."""

    def __init__(self, keys: Sequence[AssetKey]) -> None:
        self._keys = list(keys)
        self._lock = threading.Lock()
        self._storage: object = None
        self._version: object = None
        self._taken_at = 0.0
        self._entries: dict[AssetKey, Entry] = {}
        self._version_reader = EventLogVersion()
        self._outcomes: OrderedDict[str, RunOutcomes] = OrderedDict()
        self._runs: dict[str, Any] = {}

    def snapshot(self, instance: Any) -> Mapping[AssetKey, Entry] | None:
        """Every watched asset's entry as of the event log's current state, or None when it moved on
        less than a refresh interval ago (the caller then reads its own rows)."""
        with self._lock:
            storage, version = self._version_reader.read(instance)
            if (storage, version) == (self._storage, self._version):
                return self._entries
            now = time.monotonic()
            if storage == self._storage and now - self._taken_at < SNAPSHOT_REFRESH_SECONDS:
                return None
            entries = read_entries(instance, self._keys)
            # The version was read before the records: a write in between makes the next tick re-read.
            self._storage, self._version, self._taken_at, self._entries = storage, version, now, entries
            self._runs = {}
            return entries

    def run_record(self, instance: Any, run_id: str) -> Any:
        """The run's record, read once per snapshot (a run's status change is an event-log write, so
        it comes with a new snapshot)."""
        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id]
        record = instance.get_run_record_by_id(run_id)
        with self._lock:
            self._runs[run_id] = record
        return record

    def run_outcomes(self, instance: Any, run_id: str, finished: bool) -> RunOutcomes:
        with self._lock:
            cached = self._outcomes.get(run_id)
        if cached is not None:
            return cached
        outcomes = read_run_outcomes(instance, run_id)
        if finished:
            with self._lock:
                self._outcomes[run_id] = outcomes
                while len(self._outcomes) > _OUTCOME_CACHE_SIZE:
                    self._outcomes.popitem(last=False)
        return outcomes
