"""Is a run that Dagster shows as in progress still alive? Read by every consumer the same way."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from dagster import DagsterRunStatus

from .. import contract

#: A run whose producer heartbeat is older than this is dead (the producer refreshes it every ~15 s).
DEFAULT_HEARTBEAT_TIMEOUT = 120.0


def _process_is_gone(tags: Mapping[str, str]) -> bool:
    """True only when the producer recorded its pid on THIS host and that process no longer exists."""
    where = contract.liveness_from_tags(tags)
    if where is None or where[1] != socket.gethostname():
        return False
    try:
        os.kill(where[0], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def why_dead(tags: Mapping[str, str], heartbeat_timeout: float, now: float | None = None) -> str | None:
    """Why a STARTED run's producer is dead, or None when it may be alive.

    A pid recorded on THIS host that no longer exists is death at once; a heartbeat older than
    ``heartbeat_timeout`` is death on any host (an OOM-killed pod, a hung producer). A run on another
    host without a heartbeat tag stays in progress until Dagster's run monitoring or a person ends it."""
    beat = contract.heartbeat_from_tags(tags)
    where = contract.liveness_from_tags(tags)
    name = f"pid {where[0]} on {where[1]}" if where else "the run worker"
    # A gone process on this host is checked first: it is certain at once, while a fresh heartbeat only
    # says the producer was alive when it last wrote one.
    if _process_is_gone(tags):
        return f"dagster-watcher: the run worker ({name}) is gone; nodes it did not report are treated as lost."
    if beat is not None:
        age = (time.time() if now is None else now) - beat
        if age > heartbeat_timeout:
            return (
                f"dagster-watcher: the producer ({name}) sent no heartbeat for {age:.0f}s (timeout "
                f"{heartbeat_timeout:.0f}s); nodes it did not report are treated as lost."
            )
    return None


def end_if_dead(instance: Any, run: Any, heartbeat_timeout: float) -> bool:
    """Mark a STARTED run whose producer is dead as failed (its unreported nodes then count as lost
    and are retried). True when it did."""
    if run.status != DagsterRunStatus.STARTED:
        return False
    reason = why_dead(run.tags, heartbeat_timeout)
    if reason is None:
        return False
    instance.report_run_failed(run, reason)
    return True
