"""In-process mode: dbt's ``dbtRunner`` fed the definition-time manifest, in a forked child where the
OS can fork (else in a thread of this process)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._compat import dbt_manifest_from_json, release_adapter_handles, run_own_finalizers
from .._gc import freeze_inherited_heap
from .._process import die_with_parent_in_forked_child, yield_cpu_to_parent
from .._text import describe_exception
from ..dbt_normalizer import WANTED_EVENTS, RawDbtEvent
from ..errors import DbtDidNotComplete, ManifestPreparationError
from ._fetch import RUNTIME_METADATA_EVENT, FetchPlan, MetadataFetcher
from .base import DbtInvocation, InvocationExit, read_lines

# dbt keeps process-global state (flags, adapter registry, event manager callbacks): two dbtRunner
# invocations at once in one process would mix their events and configuration. Serialise them.
_DBT_PROCESS_LOCK = threading.Lock()


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

    With a ``fetch`` plan, the process running dbt also reads each built node's runtime metadata
    (row count, columns) through dbt's adapter on a thread of its own, and sends it back as
    :data:`~dagster_watcher.invocation._fetch.RUNTIME_METADATA_EVENT` events beside dbt's.
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
        cwd: str | os.PathLike[str] | None = None,
        fetch: FetchPlan | None = None,
    ) -> None:
        super().__init__(args, env=env)
        self.cwd = cwd
        self.fetch = fetch
        self._fetcher: MetadataFetcher | None = None
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
            if self._fetcher is not None:
                self._fetcher.observe(msg)  # after the node's own event: its facts follow it

    def _invoke(self, manifest: Any, emit_facts: Any) -> Any:
        """dbtRunner over ``self.args`` with the event callback (and the metadata fetcher, whose
        remaining reads end before this returns, while dbt's adapter is still registered)."""
        from dbt.cli.main import dbtRunner

        self._fetcher = MetadataFetcher(self.fetch, emit_facts) if self.fetch is not None else None
        result: Any = None
        try:
            result = dbtRunner(manifest=manifest, callbacks=[self._callback]).invoke(self.args)
        finally:
            if self._fetcher is not None:
                if result is None or result.exception is not None:
                    self._fetcher.stop()  # dbt did not run to its end: read nothing more
                else:
                    self._fetcher.finish()
        return result

    def events(self) -> Iterator[RawDbtEvent | None]:
        if not _DBT_PROCESS_LOCK.acquire(timeout=-1 if self.lock_timeout is None else self.lock_timeout):
            raise DbtDidNotComplete(
                "Another in-process dbt invocation is running in this Python process and did not finish "
                f"within {self.lock_timeout}s. dbt keeps process-global state, so dagster-watcher runs "
                "one in-process invocation at a time; use the multiprocess executor or "
                "invocation_mode='subprocess' to run dbt builds side by side."
            )
        try:
            # The working directory changes only where dbt runs: in the forked child, or around the
            # thread in this process (never for the writer's whole build).
            with _dbt_process_state(self.env, None):
                manifest = dbt_manifest_from_json(self.manifest_json) if self.manifest_json else None
                # Fork only to execute a manifest built here: a child that had to parse would use
                # dbt's Rust static parser, whose thread pool (started by an earlier parse in this
                # process) does not survive a fork and deadlocks the child.
                try:
                    if self.fork and manifest is not None:
                        yield from self._stream_forked(manifest)
                    else:
                        with _working_directory(self.cwd):
                            yield from self._stream_threaded(manifest)
                finally:
                    self.cancel_if_running()
        finally:
            _DBT_PROCESS_LOCK.release()

    # -- forked child ----------------------------------------------------------------------------

    def _stream_forked(self, manifest: Any) -> Iterator[RawDbtEvent | None]:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            freeze_inherited_heap()
            yield_cpu_to_parent()  # before dbt starts its threads: they inherit it
            die_with_parent_in_forked_child(parent)
            os.close(read_fd)
            self._run_child(manifest, write_fd)
        self._child = pid
        os.close(write_fd)
        self.started(pid)
        final: dict[str, Any] | None = None
        try:
            for line in read_lines(read_fd, self.idle_interval):
                if line is None:
                    yield None
                    continue
                item = json.loads(line)
                if "exit" in item:
                    final = item["exit"]
                else:
                    yield RawDbtEvent(item["name"], item["data"], item["invocation_id"])
        finally:
            os.close(read_fd)
        _, status = os.waitpid(pid, 0)
        self._child = None
        self.exit = self._exit_from_child(final, status)

    def _run_child(self, manifest: Any, write_fd: int) -> None:
        """The forked child: run dbt, stream events, report how it ended, and never return."""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # dbt's Ctrl-C handling stops the build
        if self.cwd is not None:
            os.chdir(self.cwd)
        out = os.fdopen(write_fd, "w", encoding="utf-8")
        write_lock = threading.Lock()
        final: dict[str, Any] = {"success": False, "completed": False}
        try:
            from dbt_common.events.functions import msg_to_dict

            def send(name: str, data: Any, invocation_id: str | None) -> None:
                line = json.dumps({"name": name, "data": data, "invocation_id": invocation_id}, default=str)
                with write_lock:
                    out.write(line + "\n")
                    out.flush()

            def forward(msg: Any) -> None:
                as_dict = msg_to_dict(msg)
                send(msg.info.name, as_dict.get("data") or {}, (as_dict.get("info") or {}).get("invocation_id"))

            self._forward = forward
            result = self._invoke(manifest, lambda facts: send(RUNTIME_METADATA_EVENT, facts, None))
            if result.exception is not None:
                final["error"] = describe_exception(result.exception)
            else:
                final.update(success=bool(result.success), completed=True)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, not lost
            final["error"] = describe_exception(exc)
        if self._callback_error is not None:
            final["callback_error"] = repr(self._callback_error)
        try:
            with write_lock:
                out.write(json.dumps({"exit": final}) + "\n")
                out.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            run_own_finalizers()
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
            result = self._invoke(
                manifest, lambda facts: self._queue.put(RawDbtEvent(RUNTIME_METADATA_EVENT, facts, None))
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the writer thread, not lost
            error = exc
        finally:
            self._queue.put(_Finished(result, error))

    def _stream_threaded(self, manifest: Any) -> Iterator[RawDbtEvent | None]:
        from dbt_common.events.functions import msg_to_dict

        self._thread = threading.Thread(target=self._run, args=(manifest,), name="dagster-watcher-dbt", daemon=True)
        self._thread.start()
        self.started(os.getpid())
        while True:
            try:
                item = self._queue.get(timeout=min(0.5, self.idle_interval))
            except queue.Empty:
                yield None  # wake up so a run termination (signal) reaches this thread
                continue
            if isinstance(item, _Finished):
                break
            if isinstance(item, RawDbtEvent):  # facts the metadata fetcher read
                yield item
                continue
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
            return InvocationExit(ok=False, completed=False, error=describe_exception(finished.error))
        res = finished.result
        if res is None:
            return InvocationExit(ok=False, completed=False, error="dbt returned no result")
        if res.exception is not None:
            return InvocationExit(ok=False, completed=False, error=describe_exception(res.exception))
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


@contextlib.contextmanager
def _dbt_process_state(env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> Iterator[None]:
    """Environment and working directory for an in-process dbt call (the caller holds the process
    lock), restored afterwards; dbt's adapter handles are released as a dbt process's exit would.

    The working directory is the project's, as for a `dbt` process started by subprocess mode or by
    dagster-dbt: dbt-duckdb resolves a relative database path against it."""
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with _working_directory(cwd):
            yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        release_adapter_handles()


@contextlib.contextmanager
def _working_directory(cwd: str | os.PathLike[str] | None) -> Iterator[None]:
    if cwd is None:
        yield
        return
    saved = os.getcwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved)


_QUIET_ENV = {"DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


def run_in_process(
    args: Sequence[str],
    *,
    manifest_json: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> tuple[Any, str | None]:
    """One short dbt command through dbtRunner in this process (serialised with builds), e.g. ``ls``
    over the definition's manifest. Returns (dbt's result payload, None) or (None, the error)."""
    from dbt.cli.main import dbtRunner

    with _DBT_PROCESS_LOCK, _dbt_process_state({**_QUIET_ENV, **(env or {})}, cwd):
        manifest = dbt_manifest_from_json(manifest_json) if manifest_json else None
        try:
            result = dbtRunner(manifest=manifest).invoke(list(args))
        except BaseException as exc:  # noqa: BLE001 - returned, as dbtRunner itself does
            return None, describe_exception(exc)
    if result.exception is not None:
        return None, describe_exception(result.exception)
    if not result.success:
        return result.result, "dbt reported a failure (see the dbt output above)"
    return result.result, None


def parse_in_process(args: Sequence[str], *, cwd: str | os.PathLike[str] | None = None) -> None:
    """Run ``dbt parse`` through dbtRunner (serialised with builds).

    Raises:
        ManifestPreparationError: dbt could not parse the project (the message is dbt's).
    """
    _, error = run_in_process(args, cwd=cwd)
    if error is not None:
        raise ManifestPreparationError(f"`dbt {' '.join(args)}` failed: {error}")
