"""Subprocess mode: ``dbt ... --log-format json`` in a child process (dbt may live in another
environment), its log read line by line as dbt writes it."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .._process import preexec_dbt_process
from ..dbt_normalizer import WANTED_EVENTS, RawDbtEvent
from ..errors import WatcherConfigError
from ._fetch import FACTS_PREFIX, PLAN_ENV, RUNTIME_METADATA_EVENT, FetchPlan
from .base import DbtInvocation, InvocationExit, read_lines

# Substrings of the JSON lines the writer must parse. Everything else is either printed (info and
# above, so dbt's usual console output reaches the compute logs) or dropped without parsing.
_WANTED_MARKERS = (*(f'"name": "{name}"' for name in WANTED_EVENTS), FACTS_PREFIX)
#: The dbt command of a build that fetches runtime metadata: run as a script by this interpreter.
DBT_ENTRY = Path(__file__).with_name("_dbt_entry.py")


class SubprocessInvocation(DbtInvocation):
    """``dbt ... --log-format json --log-level debug`` in a child process (dbt may live in another
    environment: ``dbt_executable``), read line by line as dbt writes it.

    With a ``fetch`` plan, the child is ``python .../_dbt_entry.py`` (this interpreter's dbt, the
    same CLI and log) instead, which also reads each built node's runtime
    metadata through dbt's adapter and logs it beside dbt's events."""

    mode = "subprocess"

    def __init__(
        self,
        args: Sequence[str],
        *,
        dbt_executable: str = "dbt",
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        echo: bool = True,
        fetch: FetchPlan | None = None,
    ) -> None:
        super().__init__(args, env=env)
        self.dbt_executable = dbt_executable
        self.fetch = fetch
        self.cwd = cwd
        self.echo = echo
        self._process: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def command(self) -> list[str]:
        dbt = [sys.executable, os.fspath(DBT_ENTRY)] if self.fetch else [self.dbt_executable]
        # NodeFinished (which carries adapter_response and error text) is a debug-level event.
        return [*dbt, *self.args, "--log-format", "json", "--log-level", "debug"]

    def events(self) -> Iterator[RawDbtEvent | None]:
        if self.fetch is None:
            yield from self._events({**os.environ, **self.env})
            return
        with tempfile.TemporaryDirectory(prefix="dagster_watcher_fetch_") as folder:
            plan_file = Path(folder) / "fetch_plan.json"
            plan_file.write_text(self.fetch.to_json())
            yield from self._events({**os.environ, **self.env, PLAN_ENV: os.fspath(plan_file)})

    def _events(self, env: Mapping[str, str]) -> Iterator[RawDbtEvent | None]:
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                bufsize=0,
                cwd=self.cwd,
                env=env,
                # dbt dies with this process (an OOM-killed step must not leave a dbt building), and
                # lets this process's writer run first.
                preexec_fn=preexec_dbt_process(os.getpid()),
            )
        except FileNotFoundError as exc:
            raise WatcherConfigError(
                f"dbt executable {self.dbt_executable!r} was not found: set `dbt_executable` on the "
                "DbtWatcherResource to the dbt of the environment that should run this project."
            ) from exc
        self.started(self._process.pid)
        tail: collections.deque[str] = collections.deque(maxlen=40)
        last_error: str | None = None
        assert self._process.stdout is not None
        try:
            for line in read_lines(self._process.stdout.fileno(), self.idle_interval):
                if line is None:
                    yield None
                    continue
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
                msg = info.get("msg")
                if isinstance(msg, str) and msg.startswith(FACTS_PREFIX):
                    yield RawDbtEvent(RUNTIME_METADATA_EVENT, json.loads(msg[len(FACTS_PREFIX) :]), None)
                    continue
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
            self._process.stdout.close()
        if self._cancelled:
            self.exit = InvocationExit(ok=False, completed=False, error="dbt was stopped (run terminated)")
        elif code in (0, 1):
            # dbt's exit codes: 0 all good, 1 some nodes failed, 2 dbt itself failed.
            self.exit = InvocationExit(ok=code == 0, completed=True)
        else:
            # The last error dbt logged says what to fix; a crash's traceback is only its last lines.
            detail = last_error or "\n".join(list(tail)[-8:]) or "no output"
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
