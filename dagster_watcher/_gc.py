"""Definition-time memory: no garbage collection while thousands of long-lived objects are built."""

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
