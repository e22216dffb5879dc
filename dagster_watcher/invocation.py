"""Invocation modes: how one `dbt build` is started and how its raw events reach the ordered writer.

Both modes implement :class:`DbtInvocation`: :meth:`DbtInvocation.stream` yields ``RawDbtEvent``s in
the order dbt fired them, on the caller's thread, and ends once dbt has exited; afterwards
:attr:`DbtInvocation.exit` says how dbt ended. Neither mode touches Dagster: the caller's thread is
the single writer that turns events into Dagster events (see ``producer.py``).
"""

from __future__ import annotations

import abc
import collections
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .events import WANTED_EVENTS, scrub_secrets


@dataclass(frozen=True)
class RawDbtEvent:
    """One dbt event as the normaliser consumes it (same shape in both modes)."""

    name: str
    data: Mapping[str, Any]
    invocation_id: str | None


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

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = dict(env or {})

    @abc.abstractmethod
    def stream(self) -> Iterator[RawDbtEvent]:
        """Start dbt and yield its wanted events in firing order until it exits."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Ask dbt to stop (run termination). Safe to call from any thread, any number of times."""


# --------------------------------------------------------------------------------------------------
# In-process dbtRunner


# dbt keeps process-global state (flags, adapter registry, event manager callbacks): two dbtRunner
# invocations at once in one process would mix their events and configuration. Serialise them.
_DBT_PROCESS_LOCK = threading.Lock()

_WRITABLE_CACHE: dict[tuple[str, str, int], Any] = {}
_WRITABLE_CACHE_LOCK = threading.Lock()


def dbt_manifest_from_json(manifest_json: Mapping[str, Any]) -> Any:
    """dbt's in-memory ``Manifest`` for a manifest.json dict, without parsing the project.

    dbtRunner accepts a pre-parsed manifest and then skips parsing entirely. Building it from the
    manifest.json the Dagster definitions were made from (dagster-dbt's ``DbtProject`` preparation or
    a shipped manifest) lets the in-process mode start executing nodes without a second parse, and
    guarantees dbt runs exactly the graph Dagster shows.

    The deserialised artifact is cached per process; the ``Manifest`` itself is rebuilt for every
    invocation because dbt mutates it while it runs (compiled SQL, injected ephemeral CTEs), and a
    reused one makes the next build skip work it must redo.
    """
    from dbt.contracts.graph.manifest import Manifest, WritableManifest

    meta = manifest_json.get("metadata") or {}
    key = (str(meta.get("invocation_id")), str(meta.get("generated_at")), len(manifest_json.get("nodes") or {}))
    with _WRITABLE_CACHE_LOCK:
        writable = _WRITABLE_CACHE.get(key)
        if writable is None:
            # Upgrade paths may mutate what they are given: hand them a copy.
            writable = WritableManifest.upgrade_schema_version(json.loads(json.dumps(manifest_json)))
            _WRITABLE_CACHE.clear()  # keep one version: an edited project must not pin old ones
            _WRITABLE_CACHE[key] = writable
    manifest = Manifest.from_writable_manifest(writable)
    _retype_nodes(manifest, manifest_json)
    return manifest


def _retype_nodes(manifest: Any, manifest_json: Mapping[str, Any]) -> None:
    """manifest.json's node union deserialises every test as a singular test; a generic test then
    fails to compile (`'_dbt_generic_test_kwargs' is undefined`). Rebuild each node with the class its
    resource_type (and, for tests, test_metadata) calls for."""
    from dbt.artifacts.resources import GenericTest
    from dbt.contracts.graph.nodes import GenericTestNode

    for unique_id, node in (manifest_json.get("nodes") or {}).items():
        if node.get("resource_type") == "test" and node.get("test_metadata"):
            current = manifest.nodes.get(unique_id)
            if current is not None and not isinstance(current, GenericTestNode):
                manifest.nodes[unique_id] = GenericTestNode.from_resource(GenericTest.from_dict(node))


class _Finished:
    __slots__ = ("error", "result")

    def __init__(self, result: Any, error: BaseException | None) -> None:
        self.result = result
        self.error = error


class RunnerInvocation(DbtInvocation):
    """dbt's ``dbtRunner`` fed a pre-parsed manifest, with an event callback: no dbt process start, no
    import of dbt, no parse.

    Where the OS can fork (Linux, macOS) and a manifest is given, dbt runs in a forked child: the child
    inherits the imported dbt and the manifest already built here, runs dbt in its own main thread and
    sends the wanted events back over a pipe. This keeps dbt's worker threads and the writer that
    stores Dagster events off each other's GIL (in one interpreter, a busy dbt starves the writer and
    events arrive seconds late), and lets a termination stop dbt with a real SIGINT. Elsewhere dbt runs
    in a thread of this process.

    dbt calls the callback on its worker threads and swallows whatever it raises, so the callback does
    the least possible work and can not raise; any failure inside it is remembered and turns the
    invocation into a failed one instead of vanishing.
    """

    mode = "runner"

    def __init__(
        self,
        args: Sequence[str],
        *,
        manifest: Mapping[str, Any] | None,
        env: Mapping[str, str] | None = None,
        lock_timeout: float | None = None,
        fork: bool | None = None,
    ) -> None:
        super().__init__(args, env=env)
        self.manifest_json = manifest
        self.lock_timeout = lock_timeout
        self.fork = hasattr(os, "fork") if fork is None else fork
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._child: int | None = None
        self._callback_error: BaseException | str | None = None
        self._cancelled = False
        self._forward: Any = self._queue.put

    def _callback(self, msg: Any) -> None:
        try:
            self._accept(msg)
        except BaseException as exc:  # never let dbt swallow it: report it after the run
            if self._callback_error is None:
                self._callback_error = exc

    def _accept(self, msg: Any) -> None:
        if msg.info.name in WANTED_EVENTS:
            self._forward(msg)

    def stream(self) -> Iterator[RawDbtEvent]:
        if not _DBT_PROCESS_LOCK.acquire(timeout=-1 if self.lock_timeout is None else self.lock_timeout):
            raise RuntimeError(
                "Another in-process dbt invocation is running in this Python process and did not finish "
                f"within {self.lock_timeout}s. dbt keeps process-global state, so dagster-watcher runs "
                "one in-process invocation at a time; use the multiprocess executor or "
                "invocation_mode='subprocess' to run dbt builds side by side."
            )
        saved_env = {k: os.environ.get(k) for k in self.env}
        try:
            manifest = dbt_manifest_from_json(self.manifest_json) if self.manifest_json else None
            os.environ.update(self.env)
            # Fork only to execute a manifest built here: a child that had to parse would use dbt's
            # Rust static parser, whose thread pool (started by an earlier parse in this process)
            # does not survive a fork and deadlocks the child.
            if self.fork and manifest is not None:
                yield from self._stream_forked(manifest)
            else:
                yield from self._stream_threaded(manifest)
        finally:
            self.cancel_if_running()
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            release_adapter_handles()
            _DBT_PROCESS_LOCK.release()

    # -- forked child ----------------------------------------------------------------------------

    def _stream_forked(self, manifest: Any) -> Iterator[RawDbtEvent]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            os.close(read_fd)
            self._run_child(manifest, write_fd)
        self._child = pid
        os.close(write_fd)
        final: dict[str, Any] | None = None
        with os.fdopen(read_fd, "r", encoding="utf-8") as pipe:
            for line in pipe:
                item = json.loads(line)
                if "exit" in item:
                    final = item["exit"]
                else:
                    yield RawDbtEvent(item["name"], item["data"], item["invocation_id"])
        _, status = os.waitpid(pid, 0)
        self._child = None
        self.exit = self._exit_from_child(final, status)

    def _run_child(self, manifest: Any, write_fd: int) -> None:
        """The forked child: run dbt, stream events, report how it ended, and never return."""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # dbt's Ctrl-C handling stops the build
        out = os.fdopen(write_fd, "w", encoding="utf-8")
        write_lock = threading.Lock()
        final: dict[str, Any] = {"success": False, "completed": False}
        try:
            from dbt.cli.main import dbtRunner
            from dbt_common.events.functions import msg_to_dict

            def forward(msg: Any) -> None:
                as_dict = msg_to_dict(msg)
                line = json.dumps(
                    {
                        "name": msg.info.name,
                        "data": as_dict.get("data") or {},
                        "invocation_id": (as_dict.get("info") or {}).get("invocation_id"),
                    },
                    default=str,
                )
                with write_lock:
                    out.write(line + "\n")
                    out.flush()

            self._forward = forward
            result = dbtRunner(manifest=manifest, callbacks=[self._callback]).invoke(self.args)
            if result.exception is not None:
                final["error"] = _describe(result.exception)
            else:
                final.update(success=bool(result.success), completed=True)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, not lost
            final["error"] = _describe(exc)
        if self._callback_error is not None:
            final["callback_error"] = repr(self._callback_error)
        try:
            with write_lock:
                out.write(json.dumps({"exit": final}) + "\n")
                out.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            # dbt's adapter creates multiprocessing locks here, registered with the resource tracker
            # the parent shares; os._exit skips their cleanup, and the parent then warns of "leaked
            # semaphore objects" when it exits. Run this process's own finalizers (multiprocessing
            # skips those inherited from the parent: they record the pid that made them).
            from multiprocessing import util as mp_util

            mp_util._run_finalizers()  # type: ignore[attr-defined]
        finally:
            os._exit(0)  # never run the parent's cleanup (atexit, Dagster) in the child

    def _exit_from_child(self, final: dict[str, Any] | None, status: int) -> InvocationExit:
        if final is None:
            how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {status}"
            return InvocationExit(ok=False, completed=False, error=f"the dbt process died ({how})")
        if final.get("callback_error"):
            return InvocationExit(
                ok=False,
                completed=False,
                error=f"dagster-watcher's dbt event callback failed: {final['callback_error']}",
            )
        if self._cancelled:
            return InvocationExit(ok=False, completed=False, error="dbt was stopped (run terminated)")
        if not final.get("completed"):
            return InvocationExit(ok=False, completed=False, error=final.get("error") or "dbt returned no result")
        return InvocationExit(ok=bool(final.get("success")), completed=True)

    # -- thread of this process (no fork available) -----------------------------------------------

    def _run(self, manifest: Any) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            from dbt.cli.main import dbtRunner

            result = dbtRunner(manifest=manifest, callbacks=[self._callback]).invoke(self.args)
        except BaseException as exc:  # noqa: BLE001 - reported to the writer thread, not lost
            error = exc
        finally:
            self._queue.put(_Finished(result, error))

    def _stream_threaded(self, manifest: Any) -> Iterator[RawDbtEvent]:
        from dbt_common.events.functions import msg_to_dict

        self._thread = threading.Thread(target=self._run, args=(manifest,), name="dagster-watcher-dbt", daemon=True)
        self._thread.start()
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue  # wake up so a run termination (signal) reaches this thread
            if isinstance(item, _Finished):
                break
            as_dict = msg_to_dict(item)
            info = as_dict.get("info") or {}
            yield RawDbtEvent(item.info.name, as_dict.get("data") or {}, info.get("invocation_id"))
        self.exit = self._exit_from(item)

    def _exit_from(self, finished: _Finished) -> InvocationExit:
        if self._callback_error is not None:
            return InvocationExit(
                ok=False,
                completed=False,
                error=f"dagster-watcher's dbt event callback failed: {self._callback_error!r}",
            )
        if finished.error is not None:
            return InvocationExit(ok=False, completed=False, error=_describe(finished.error))
        res = finished.result
        if res is None:
            return InvocationExit(ok=False, completed=False, error="dbt returned no result")
        if res.exception is not None:
            return InvocationExit(ok=False, completed=False, error=_describe(res.exception))
        if self._cancelled:
            return InvocationExit(ok=False, completed=False, error="dbt was stopped (run terminated)")
        return InvocationExit(ok=bool(res.success), completed=True)

    # -- stopping --------------------------------------------------------------------------------

    def cancel(self) -> None:
        # dbt stops a build cleanly on KeyboardInterrupt (it cancels open connections and marks the
        # remaining nodes): SIGINT to the forked child, or an asynchronous KeyboardInterrupt in dbt's
        # thread (a daemon: a terminated run worker exiting also ends it).
        self._cancelled = True
        child = self._child
        if child is not None:
            try:
                os.kill(child, signal.SIGINT)
            except ProcessLookupError:
                pass
            return
        thread = self._thread
        if thread is not None and thread.is_alive() and thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt)
            )

    def cancel_if_running(self) -> None:
        """Called when the writer stops early: make sure no dbt outlives the invocation."""
        child = self._child
        if child is not None:
            self.cancel()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                done, _ = os.waitpid(child, os.WNOHANG)
                if done:
                    break
                time.sleep(0.1)
            else:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
            self._child = None
        elif self._thread is not None and self._thread.is_alive():
            self.cancel()
            self._thread.join(timeout=30)


def release_adapter_handles() -> None:
    """Give back what an in-process dbt invocation holds once it is over, as the end of a `dbt` process
    would: dbt's adapter connections, and dbt-duckdb's process-wide DuckDB instance, which otherwise
    keeps the warehouse file open (a DuckDB file admits one process at a time: consumers and later
    builds in other processes could not open it, and a build in this process would keep writing to a
    file that was replaced on disk)."""
    try:
        from dbt.adapters.factory import reset_adapters

        reset_adapters()
    except Exception:  # noqa: BLE001 - best effort: never turn a finished build into a failure
        pass
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    with DuckDBConnectionManager._LOCK:
        env = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass


def _describe(exc: BaseException) -> str:
    text = scrub_secrets(str(exc).strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Subprocess reading dbt's JSON log

# Substrings of the JSON lines the writer must parse. Everything else is either printed (info and
# above, so dbt's usual console output reaches the compute logs) or dropped without parsing.
_WANTED_MARKERS = tuple(f'"name": "{name}"' for name in WANTED_EVENTS)


class SubprocessInvocation(DbtInvocation):
    """``dbt ... --log-format json --log-level debug`` in a child process (dbt may live in another
    environment: ``dbt_executable``), read line by line as dbt writes it."""

    mode = "subprocess"

    def __init__(
        self,
        args: Sequence[str],
        *,
        dbt_executable: str = "dbt",
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        echo: bool = True,
    ) -> None:
        super().__init__(args, env=env)
        self.dbt_executable = dbt_executable
        self.cwd = cwd
        self.echo = echo
        self._process: subprocess.Popen[str] | None = None
        self._cancelled = False

    def command(self) -> list[str]:
        # NodeFinished (which carries adapter_response and error text) is a debug-level event.
        return [self.dbt_executable, *self.args, "--log-format", "json", "--log-level", "debug"]

    def stream(self) -> Iterator[RawDbtEvent]:
        env = {**os.environ, **self.env}
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                cwd=self.cwd,
                env=env,
            )
        except FileNotFoundError as exc:
            raise RuntimeError(
                f"dbt executable {self.dbt_executable!r} was not found: set `dbt_executable` on the "
                "DbtWatcherResource to the dbt of the environment that should run this project."
            ) from exc
        tail: collections.deque[str] = collections.deque(maxlen=40)
        last_error: str | None = None
        assert self._process.stdout is not None
        try:
            for line in self._process.stdout:
                if not line.startswith("{"):
                    tail.append(line.rstrip())  # a traceback or anything dbt did not log as JSON
                    if self.echo:
                        print(line, end="")
                    continue
                wanted = any(marker in line for marker in _WANTED_MARKERS)
                if not wanted and '"level": "debug"' in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    tail.append(line.rstrip())
                    continue
                info = event.get("info") or {}
                if self.echo and info.get("level") != "debug" and info.get("msg"):
                    print(info["msg"])
                if info.get("level") == "error" and info.get("msg"):
                    last_error = info["msg"]
                if wanted:
                    yield RawDbtEvent(info.get("name", ""), event.get("data") or {}, info.get("invocation_id"))
            code = self._process.wait()
        finally:
            if self._process.poll() is None:
                self.cancel()
        if self._cancelled:
            self.exit = InvocationExit(ok=False, completed=False, error="dbt was stopped (run terminated)")
        elif code in (0, 1):
            # dbt's exit codes: 0 all good, 1 some nodes failed, 2 dbt itself failed.
            self.exit = InvocationExit(ok=code == 0, completed=True)
        else:
            # The last error dbt logged says what to fix; a crash's traceback is only its last lines.
            detail = scrub_secrets(last_error or "\n".join(list(tail)[-8:]) or "no output")
            reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self.exit = InvocationExit(ok=False, completed=False, error=f"dbt {reason}: {detail}")

    def cancel(self) -> None:
        self._cancelled = True
        process = self._process
        if process is None or process.poll() is not None:
            return
        # SIGINT first: dbt handles it like Ctrl-C and cancels running queries.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def parse_in_process(args: Sequence[str]) -> None:
    """Run ``dbt parse`` through dbtRunner (serialised with builds), raising a clear error if it fails."""
    from dbt.cli.main import dbtRunner

    with _DBT_PROCESS_LOCK:
        saved = os.environ.get("DBT_SEND_ANONYMOUS_USAGE_STATS")
        os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        try:
            result = dbtRunner().invoke(list(args))
        finally:
            release_adapter_handles()
            if saved is None:
                os.environ.pop("DBT_SEND_ANONYMOUS_USAGE_STATS", None)
            else:
                os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = saved
    if not result.success:
        raise RuntimeError(
            f"`dbt {' '.join(args)}` failed: "
            f"{_describe(result.exception) if result.exception else 'see the dbt output above'}"
        )
