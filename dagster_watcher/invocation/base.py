"""What every invocation mode implements: :class:`DbtInvocation` starts one `dbt` command and yields
its raw events (:class:`~dagster_watcher.dbt_normalizer.RawDbtEvent`) in the order dbt fired them, on
the caller's thread, until dbt has exited; afterwards :attr:`DbtInvocation.exit` says how dbt ended.
No mode touches Dagster: the caller's thread is the single writer (``producer.py``).
"""

from __future__ import annotations

import abc
import os
import select
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..dbt_normalizer import RawDbtEvent


@dataclass(frozen=True)
class InvocationExit:
    """How a dbt invocation ended."""

    ok: bool
    """dbt ran to the end and every node succeeded (dbt's own success flag / exit code 0)."""
    completed: bool
    """dbt ran its node graph to the end (nodes may still have failed). False: dbt crashed, refused
    to start (bad project, profile, selector) or was stopped."""
    error: str | None = None
    """The error dbt or the process reported when ``completed`` is False."""


class DbtInvocation(abc.ABC):
    """One `dbt` command, started by :meth:`stream`."""

    mode: str
    exit: InvocationExit | None = None
    pid: int | None = None
    """The process that runs dbt, once started (this process when dbt runs in a thread of it)."""
    on_start: Callable[[int], None] | None = None
    """Called on the caller's thread with :attr:`pid` as soon as dbt's process exists."""

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = dict(env or {})

    def started(self, pid: int) -> None:
        self.pid = pid
        if self.on_start is not None:
            self.on_start(pid)

    idle_interval: float = 1.0
    """Longest wait (seconds) for dbt before :meth:`events` yields None, so the caller's thread can do
    its own periodic work (the producer's heartbeat) while dbt is quiet."""

    def stream(self) -> Iterator[RawDbtEvent]:
        """Start dbt and yield its wanted events in firing order until it exits."""
        for event in self.events():
            if event is not None:
                yield event

    @abc.abstractmethod
    def events(self) -> Iterator[RawDbtEvent | None]:
        """As :meth:`stream`, plus None whenever dbt said nothing for :attr:`idle_interval` seconds."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Ask dbt to stop (run termination). Safe to call from any thread, any number of times."""


def read_lines(fd: int, idle: float) -> Iterator[str | None]:
    """Lines (with their newline) read from ``fd`` until end of file, and None whenever nothing arrived
    for ``idle`` seconds. Where ``select`` cannot wait on a pipe (Windows), lines only."""
    if os.name == "nt":  # pragma: no cover - select() takes sockets only there
        with os.fdopen(os.dup(fd), "rb") as f:
            for raw in f:
                yield raw.decode("utf-8", "replace")
        return
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], idle)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            if pending:
                yield pending.decode("utf-8", "replace")
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace") + "\n"
