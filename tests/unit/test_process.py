"""dbt never outlives its producer: the parent-death signal and its polling fallback."""

from __future__ import annotations

import os
import signal
import time

from dagster_watcher import _process


def test_fallback_watcher_exits_when_the_parent_is_gone() -> None:
    parents = iter([100, 100, 1])  # re-parented to init on the third look
    exits: list[int] = []
    _process.watch_parent(100, getppid=lambda: next(parents), exit_=exits.append, sleep=lambda _: None)
    assert exits == [1]


def test_forked_child_without_prctl_still_dies_with_its_parent(monkeypatch) -> None:
    # The fallback for an OS without prctl: a thread in the child that polls its parent. A middle
    # process forks the child and dies; the child must exit although nothing signals it.
    monkeypatch.setattr(_process, "_PRCTL", None)
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - the middle process
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            _process.die_with_parent_in_forked_child(parent)
            time.sleep(30)
            os._exit(0)
        os.write(write_fd, f"{child}\n".encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(middle, 0)
    child = int(os.read(read_fd, 64).decode())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")


def test_parent_death_signal_is_available_on_linux() -> None:
    assert _process.set_parent_death_signal(0) is True or not os.uname().sysname == "Linux"


def test_read_lines_yields_none_while_the_writer_is_quiet() -> None:
    from dagster_watcher.invocation.base import read_lines

    read_fd, write_fd = os.pipe()
    lines = read_lines(read_fd, 0.05)
    assert next(lines) is None  # nothing written yet: the reader wakes up anyway
    os.write(write_fd, b'{"a": 1}\n{"b"')
    assert next(lines) == '{"a": 1}\n'
    os.write(write_fd, b": 2}\n")
    assert next(lines) == '{"b": 2}\n'
    os.close(write_fd)
    assert list(lines) == []
    os.close(read_fd)


def test_a_dbt_process_runs_a_few_nice_steps_below_its_parent() -> None:
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports its niceness
        _process.yield_cpu_to_parent()
        os.write(write_fd, f"{os.nice(0)}\n".encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(child, 0)
    assert int(os.read(read_fd, 64).decode()) == min(19, os.nice(0) + _process.DBT_NICE_INCREMENT)
    os.close(read_fd)
