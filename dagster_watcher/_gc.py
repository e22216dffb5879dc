"""Garbage collection around the watcher's large, long-lived heaps: the definitions built at load
time, and the copy of them a forked dbt child inherits."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No garbage collection while a definition is built.

    Building one allocates a few hundred thousand long-lived objects at 5,000 nodes (the parsed
    manifest; a spec, output and metadata set per node; a sensor per model). Each 25% growth of the
    heap would trigger a full collection that scans all of them and frees next to nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            # Move what was built straight to the oldest generation, as if it had survived the young
            # collections, instead of having them scan it all again; nothing stays frozen. (Skipped
            # when the host froze objects itself: unfreeze would release those too.)
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def freeze_inherited_heap() -> None:
    """In a forked child: leave everything inherited from the parent out of garbage collection.

    The child inherits the whole step process (Dagster, the definitions, the manifest twice: as JSON
    and as dbt's objects) and only runs dbt. Every full collection in it would scan all of that while
    dbt's worker threads wait on the interpreter lock, delaying the events they are about to send,
    and would write to every inherited object, copying the memory it shares with the parent. What
    dbt allocates afterwards is still collected as usual."""
    gc.freeze()
