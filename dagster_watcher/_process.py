"""A dbt process never outlives the step process that started it, and yields the CPU to it.

An OOM kill or SIGKILL of the step gives it no chance to stop dbt; a dbt left behind is re-parented
to PID 1 and keeps building models nobody records (and holds the DuckDB lock the retry needs). The
child therefore asks the kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``); where
that is unavailable, a daemon thread in the child polls its parent and exits when it is gone.

The step process's one writer thread stores each node's Dagster event the moment dbt reports it.
dbt's worker threads (and its adapter's, e.g. DuckDB's) outnumber it, and the scheduler shares the
CPU per thread: at equal priority, on a machine with few cores, the writer falls behind a busy dbt
and events queue up in the pipe. dbt therefore runs a few ``nice`` steps lower
(:data:`DBT_NICE_INCREMENT`): the writer runs as soon as an event arrives, and dbt still gets every
cycle the writer does not use. The increment is small, so dbt keeps most of its share against other
work on the machine.
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

#: How many ``nice`` steps below the step process a dbt process runs.
DBT_NICE_INCREMENT = 5


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


def yield_cpu_to_parent(increment: int = DBT_NICE_INCREMENT) -> None:
    """Lower this process's CPU priority by ``increment`` nice steps, before dbt starts: Linux applies
    a nice value to the calling thread, and every thread started afterwards inherits it. Nothing
    happens where the OS refuses."""
    if not hasattr(os, "nice"):  # pragma: no cover - Windows
        return
    try:
        os.nice(increment)
    except OSError:
        pass


def die_with_parent_in_forked_child(parent_pid: int) -> None:
    """In a forked Python child: the kernel's parent-death signal, or a watcher thread where the OS has
    none; then exit at once if the parent already died before the signal was armed (race)."""
    if not set_parent_death_signal():
        threading.Thread(target=watch_parent, args=(parent_pid,), name="dagster-watcher-parent", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def preexec_dbt_process(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a `dbt` child process: a lower CPU priority (:func:`yield_cpu_to_parent`),
    the parent-death signal where the OS has one, and exit at once if the parent already died. None
    where processes are not forked (Windows)."""
    if os.name == "nt":  # pragma: no cover - no preexec_fn there
        return None

    def preexec() -> None:
        yield_cpu_to_parent()
        if _PRCTL is not None:
            set_parent_death_signal()
            if os.getppid() != parent_pid:
                os._exit(1)

    return preexec
