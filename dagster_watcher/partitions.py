"""Partitioned producers: what a step's partitions are, the dbt vars and flags they become, and which
partitions a microbatch model's failed batches belong to.

A partitioned step covers one partition key or a range of them (a single-run backfill). Its dbt build
gets the partition as vars, named by the resource's ``partition_vars`` (dagster-dbt users template
the same values into ``--vars``: ``context.partition_time_window`` for time windows, the key
otherwise), and, for time windows, dbt's own ``--event-time-start``/``--event-time-end``, so a
microbatch model builds exactly the window's batches. dbt builds each batch on its own, so one
partition can fail while the others are written: :func:`partitions_of_batches` says which.

Everything here is pure except :func:`step_partitions`, which reads the step's context.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    PartitionKeyRange,
    PartitionsDefinition,
    TimeWindowPartitionsDefinition,
)

from .errors import WatcherConfigError

#: What a partition var can hold: ``start``/``end`` of the step's time window (ISO 8601, the end
#: exclusive as Dagster's windows are) or, for partitions that are not time windows, the first and
#: last key of the step's range; ``key``, the partition key of a single-partition step.
PARTITION_VAR_ROLES = ("start", "end", "key")
#: The var names of a time window in dagster-dbt's documentation (``min_date``/``max_date``).
DEFAULT_PARTITION_VARS: Mapping[str, str] = {"start": "min_date", "end": "max_date", "key": "partition_key"}

#: dbt's ``--event-time-start``/``--event-time-end`` are ``click.DateTime``s, read as UTC.
_EVENT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class StepPartitions:
    """The partitions one producer step builds."""

    keys: tuple[str, ...]
    """The step's partition keys, in the partitions definition's order."""
    window: tuple[datetime, datetime] | None = None
    """The step's time window (start inclusive, end exclusive), for time-window partitions."""
    key_windows: tuple[tuple[datetime, datetime], ...] | None = None
    """Each key's own window, in ``keys`` order (time-window partitions only)."""

    @property
    def is_range(self) -> bool:
        return len(self.keys) > 1

    def describe(self) -> str:
        return self.keys[0] if not self.is_range else f"{self.keys[0]}...{self.keys[-1]}"


def step_partitions(context: AssetExecutionContext) -> StepPartitions | None:
    """The partitions of this step, or None for an unpartitioned one."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    keys = tuple(context.partition_keys)
    if not keys:
        return None
    partitions_def = context.assets_def.partitions_def
    window: tuple[datetime, datetime] | None = None
    key_windows: tuple[tuple[datetime, datetime], ...] | None = None
    if isinstance(partitions_def, TimeWindowPartitionsDefinition):
        found = [partitions_def.time_window_for_partition_key(k) for k in keys]
        key_windows = tuple((w.start, w.end) for w in found)
    try:
        # Also the time dimension of a multi-partitions definition.
        time_window = context.partition_time_window
        window = (time_window.start, time_window.end)
    except Exception:  # noqa: BLE001 - Dagster raises a plain check error when there is no time window
        window = None
    return StepPartitions(keys=keys, window=window, key_windows=key_windows)


def checked_partition_vars(names: Mapping[str, str | None], where: str) -> dict[str, str]:
    """``names`` (role -> dbt var name; an empty name renders nothing) checked against the roles.

    Raises:
        WatcherConfigError: a role that does not exist, named with the ones that do.
    """
    unknown = sorted(set(names) - set(PARTITION_VAR_ROLES))
    if unknown:
        raise WatcherConfigError(
            f"{where}: partition_vars has {unknown}; its keys are {list(PARTITION_VAR_ROLES)} (the dbt var "
            "names of the window's start and end, and of a single partition's key), e.g. "
            "{'start': 'min_date', 'end': 'max_date'}. Give an empty name to leave one out."
        )
    return {role: str(name) for role, name in names.items() if name}


def render_partition_vars(
    partitions: StepPartitions, names: Mapping[str, str], time_format: str | None = None
) -> dict[str, str]:
    """The dbt vars of a step's partitions.

    Args:
        partitions: the step's partitions.
        names: role (``start``, ``end``, ``key``) -> dbt var name; a missing role is not rendered.
        time_format: ``strftime`` format of a time window's start and end (default: ISO 8601 with
            the offset, e.g. ``2024-02-01T00:00:00+00:00``).

    Example::

        render_partition_vars(StepPartitions(("a", "b", "c")), {"start": "first", "end": "last"})
        # {"first": "a", "last": "c"}
    """
    out: dict[str, str] = {}
    if partitions.window is not None:
        start, end = (t.strftime(time_format) if time_format else t.isoformat() for t in partitions.window)
    else:
        start, end = partitions.keys[0], partitions.keys[-1]
    if names.get("start"):
        out[names["start"]] = start
    if names.get("end"):
        out[names["end"]] = end
    if names.get("key") and not partitions.is_range:
        out[names["key"]] = partitions.keys[0]
    return out


def event_time_args(partitions: StepPartitions) -> list[str]:
    """dbt's ``--event-time-start``/``--event-time-end`` for the step's time window (none without one):
    a microbatch model then builds the batches of exactly these partitions."""
    if partitions.window is None:
        return []
    start, end = (t.astimezone(UTC).strftime(_EVENT_TIME_FORMAT) for t in partitions.window)
    return ["--event-time-start", start, "--event-time-end", end]


def is_microbatch(node: Mapping[str, Any]) -> bool:
    return str((node.get("config") or {}).get("incremental_strategy") or "").lower() == "microbatch"


def batch_end(start: datetime, batch_size: str | None) -> datetime:
    """The end of a microbatch batch that starts at ``start`` (dbt's ``batch_size``: hour, day, month,
    year); an unknown size ends a microsecond later (the batch is then placed by its start alone)."""
    size = (batch_size or "").lower()
    if size == "hour":
        return start + timedelta(hours=1)
    if size == "day":
        return start + timedelta(days=1)
    if size == "month":
        days = calendar.monthrange(start.year, start.month)[1]
        return start + timedelta(days=days)
    if size == "year":
        return start.replace(year=start.year + 1)
    return start + timedelta(microseconds=1)


def partitions_of_batches(
    partitions: StepPartitions, batch_starts: Iterable[str], batch_size: str | None
) -> frozenset[str] | None:
    """The step's partition keys whose window overlaps one of the batches (given by their ISO starts),
    or None when that cannot be told (no per-key windows, or a start that is not a time)."""
    if partitions.key_windows is None:
        return None
    found: set[str] = set()
    for text in batch_starts:
        try:
            start = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        end = batch_end(start, batch_size)
        for key, (key_start, key_end) in zip(partitions.keys, partitions.key_windows, strict=True):
            if key_start < end and start < key_end:
                found.add(key)
    return frozenset(found)


# -- partitions of runs (the consumers' side) ------------------------------------------------------


def contiguous_ranges(ordered: Sequence[str], subset: Iterable[str]) -> list[tuple[str, str]]:
    """``subset`` of ``ordered`` as (first, last) key ranges of neighbours in ``ordered``.

    Example::

        contiguous_ranges(["a", "b", "c", "d"], {"a", "b", "d"})  # [("a", "b"), ("d", "d")]
    """
    wanted = set(subset)
    ranges: list[tuple[str, str]] = []
    first: str | None = None
    previous: str | None = None
    for key in ordered:
        if key in wanted:
            first = first if first is not None else key
            previous = key
        elif first is not None and previous is not None:
            ranges.append((first, previous))
            first = previous = None
    if first is not None and previous is not None:
        ranges.append((first, previous))
    return ranges


def keys_in_range(partitions_def: PartitionsDefinition, first: str, last: str) -> list[str] | None:
    """The keys from ``first`` to ``last`` in the definition's order (``[first]`` when they are equal),
    or None when the definition cannot list them on its own (dynamic partitions need the instance)."""
    if first == last:
        return [first]
    try:
        return list(partitions_def.get_partition_keys_in_range(PartitionKeyRange(first, last)))
    except Exception:  # noqa: BLE001 - Dagster raises check errors for definitions it cannot list here
        return None
