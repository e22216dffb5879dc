"""A dbt process never outlives the step process that started it.

An OOM kill or SIGKILL of the step gives it no chance to stop dbt; a dbt left behind is re-parented
to PID 1 and keeps building models nobody records (and holds the DuckDB lock the retry needs). The
child therefore asks the kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``); where
that is unavailable, a daemon thread in the child polls its parent and exits when it is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


# Resolved once in the parent: a child between fork and exec should do as little as possible.
_PRCTL = _load_prctl()


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) dies. False where the
    OS cannot (not Linux, no libc prctl)."""
    if _PRCTL is None:
        return False
    return _PRCTL(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) == 0


def watch_parent(
    parent_pid: int,
    *,
    interval: float = 0.5,
    getppid: Callable[[], int] = os.getppid,
    exit_: Callable[[int], object] = os._exit,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Poll the parent and exit when it is gone (re-parented: the pid changed). The fallback of
    :func:`set_parent_death_signal`; runs until it exits the process."""
    while getppid() == parent_pid:
        sleep(interval)
    exit_(1)


def die_with_parent_in_forked_child(parent_pid: int) -> None:
    """In a forked Python child: the kernel's parent-death signal, or a watcher thread where the OS has
    none; then exit at once if the parent already died before the signal was armed (race)."""
    if not set_parent_death_signal():
        threading.Thread(target=watch_parent, args=(parent_pid,), name="dagster-watcher-parent", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def preexec_die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a `dbt` child process: the parent-death signal, and exit at once if the
    parent already died. None where the OS has no such signal (nothing safe to run before exec)."""
    if _PRCTL is None:
        return None

    def preexec() -> None:
        set_parent_death_signal()
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec
