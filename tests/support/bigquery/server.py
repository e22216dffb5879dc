"""A real BigQuery-API server for tests: ``local-bigquery`` 0.3.2 in its own Python 3.13 venv.

Why a separate venv: local-bigquery needs Python >= 3.13 while the project runs on 3.11, and its
DuckDB (1.5.5) must not meet the project's DuckDB. Why these exact pins: 0.4.0 needs DuckDB 2.0
extensions that no package provides offline; 0.3.2 works with DuckDB 1.5.5 and the extension wheels
from PyPI (see shared/notes/bigquery-emulator.md).

Everything lives under one cache directory (default ``<repo>/.bq-emulator``, gitignored, override
with ``DW_BQ_EMULATOR_HOME``):

- ``venv/``   the server's virtualenv; ``venv/.dw-installed`` marks a finished install of exactly
  :data:`SERVER_REQUIREMENTS` (a second call is a file read).
- ``home/``   the ``HOME`` the server runs with. DuckDB keeps its extensions under ``$HOME/.duckdb``,
  so the extensions are imported with this same HOME; the server never touches the user's HOME.

Usage from pytest (session fixture)::

    with running_server() as server:
        client = server.client()

or by hand: ``python -m tests.support.bigquery.server serve`` (prints the URL, Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CACHE_DIR = REPO_ROOT / ".bq-emulator"
DEFAULT_PROJECT = "test-proj"

#: What the server venv gets, exactly as in shared/notes/bigquery-emulator.md.
SERVER_REQUIREMENTS: tuple[str, ...] = (
    "local-bigquery==0.3.2",
    "duckdb==1.5.5",
    "duckdb-extensions==1.5.5",
    "duckdb-extension-ducklake==1.5.5",
    "duckdb-extension-icu==1.5.5",
    "duckdb-extension-spatial==1.5.5",
)

#: Transitive pins (the resolution that was verified to work). Used as a pip constraints file so a
#: newer release of some dependency (sqlglot, fastapi, ...) cannot silently change the server.
SERVER_CONSTRAINTS: tuple[str, ...] = (
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "certifi==2026.10.18",
    "cffi==2.1.1",
    "charset-normalizer==3.5.2",
    "click==8.5.1",
    "cryptography==50.0.2",
    "fastapi==0.165.0",
    "fastavro==1.13.1",
    "google-api-core==2.44.0",
    "google-auth==2.62.2",
    "google-cloud-bigquery-storage==2.43.0",
    "googleapis-common-protos==1.76.0",
    "grpcio==1.85.1",
    "grpcio-status==1.85.1",
    "h11==0.16.0",
    "idna==3.20",
    "mini-racer==0.14.1",
    "numpy==2.5.5",
    "opentelemetry-api==1.45.2",
    "prompt_toolkit==3.0.53",
    "proto-plus==1.29.0",
    "protobuf==7.36.2",
    "pyarrow==26.0.1",
    "pyasn1==0.6.5",
    "pyasn1_modules==0.4.2",
    "pycparser==3.12",
    "pydantic==2.14.3",
    "pydantic-settings==2.16.3",
    "pydantic_core==2.50.4",
    "Pygments==2.21.0",
    "python-dotenv==1.2.4",
    "requests==2.34.2",
    "sqlglot==30.30.0",
    "starlette==1.10.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "urllib3==2.8.0",
    "uvicorn==0.54.0",
    "wcwidth==0.9.4",
)

DUCKDB_EXTENSIONS = ("ducklake", "icu", "spatial")
_MARKER = ".dw-installed"


class ServerSetupError(RuntimeError):
    """The server could not be installed or started; the message says why and where the log is."""


def cache_dir() -> Path:
    return Path(os.environ.get("DW_BQ_EMULATOR_HOME") or DEFAULT_CACHE_DIR)


def find_python313() -> Path:
    """Locate a Python >= 3.13 interpreter: ``DW_BQ_PYTHON``, then pyenv's 3.13.x, then PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("DW_BQ_PYTHON"):
        candidates.append(Path(env))
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            roots.insert(
                0,
                subprocess.run(
                    ["pyenv", "root"], capture_output=True, text=True, check=True, timeout=30
                ).stdout.strip(),
            )
    for root in filter(None, roots):
        versions = Path(root) / "versions"
        if versions.is_dir():
            # Prefer 3.13.0 (the verified one), then any other 3.13.x, newest first.
            found = sorted(versions.glob("3.13*"), key=lambda p: (p.name != "3.13.0", p.name))
            candidates += [p / "bin" / "python3" for p in found]
    for name in ("python3.13",):
        if which := shutil.which(name):
            candidates.append(Path(which))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ServerSetupError(
        "local-bigquery needs Python 3.13, none found (looked at $DW_BQ_PYTHON, pyenv versions, "
        "python3.13 on PATH). Install it with `pyenv install 3.13.0` or set DW_BQ_PYTHON."
    )


def _requirements_digest() -> str:
    text = "\n".join(SERVER_REQUIREMENTS + ("--",) + SERVER_CONSTRAINTS + DUCKDB_EXTENSIONS)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ServerInstall:
    """Paths of an installed server: its venv's executable and the HOME it must run with."""

    root: Path
    venv: Path
    home: Path

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "local-bigquery"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["HOME"] = str(self.home)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env


def install(root: Path | None = None, *, quiet: bool = True) -> ServerInstall:
    """Create (or reuse) the server venv and the DuckDB extensions under ``root``. Idempotent.

    A marker file holding a digest of the pins is written last, so a half-finished install (killed
    CI run) is redone, and a change of pins reinstalls. An exclusive file lock serialises concurrent
    callers (e.g. pytest-xdist workers).
    """
    root = Path(root or cache_dir()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    venv, home = root / "venv", root / "home"
    result = ServerInstall(root=root, venv=venv, home=home)
    marker, digest = venv / _MARKER, _requirements_digest()
    if marker.exists() and marker.read_text() == digest and result.executable.exists():
        return result
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == digest and result.executable.exists():
            return result
        python = find_python313()
        if venv.exists():
            shutil.rmtree(venv)
        home.mkdir(parents=True, exist_ok=True)
        _run([str(python), "-m", "venv", str(venv)], "create the server venv")
        constraints = root / "constraints.txt"
        constraints.write_text("\n".join(SERVER_CONSTRAINTS) + "\n")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        if quiet:
            pip.append("-q")
        _run([*pip, "-c", str(constraints), *SERVER_REQUIREMENTS], "install local-bigquery")
        # DuckDB looks for extensions under $HOME/.duckdb: import them with the server's HOME.
        # Without `spatial` the server's first request fails and the process stays broken.
        code = (
            "from duckdb_extensions import import_extension\n"
            f"for name in {DUCKDB_EXTENSIONS!r}: import_extension(name)\n"
            "import local_bigquery.cli\n"
        )
        _run([str(venv / "bin" / "python"), "-c", code], "import the DuckDB extensions", env=result.env())
        marker.write_text(digest)
    return result


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ServerSetupError(
            f"could not {what} ({' '.join(cmd[:4])} ...):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BigQueryServer:
    """A running local-bigquery process."""

    process: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    project: str
    data_dir: Path
    log_path: Path
    owns_data_dir: bool = True
    started_in: float = 0.0
    _log_file: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, project: str | None = None) -> Any:
        """A google-cloud-bigquery client pointed at this server (anonymous credentials)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=project or self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and remove its data dir if we created it."""
        if self.process.poll() is None:
            # The server runs in its own session: signal that process group so uvicorn's children die too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _ready(url: str, project: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/bigquery/v2/projects/{project}/datasets", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(
    *,
    project: str = DEFAULT_PROJECT,
    data_dir: Path | None = None,
    installation: ServerInstall | None = None,
    ready_timeout: float = 90.0,
    attempts: int = 3,
) -> BigQueryServer:
    """Install if needed, start the server on free ports and wait until it answers.

    Retries on a fresh pair of ports if the process dies while starting (a port picked by
    :func:`free_port` can be taken by someone else before the server binds it).
    """
    installation = installation or install()
    last_error = ""
    for _ in range(attempts):
        owns = data_dir is None
        ddir = (
            Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="bq-data-", dir=installation.root))
        )
        port, grpc_port = free_port(), free_port()
        while grpc_port == port:
            grpc_port = free_port()
        log_path = ddir.with_name(ddir.name + ".log") if owns else installation.root / f"server-{port}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - stays open for the server's lifetime
        began = time.monotonic()
        process = subprocess.Popen(
            [
                str(installation.executable),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--project",
                project,
                "--data-dir",
                str(ddir),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=installation.env(),
            cwd=str(installation.root),
            start_new_session=True,
        )
        server = BigQueryServer(
            process=process,
            port=port,
            grpc_port=grpc_port,
            project=project,
            data_dir=ddir,
            log_path=log_path,
            owns_data_dir=owns,
            _log_file=log_file,
        )
        deadline = began + ready_timeout
        while time.monotonic() < deadline and process.poll() is None:
            if _ready(server.url, project):
                server.started_in = time.monotonic() - began
                return server
            time.sleep(0.2)
        last_error = server.log_tail()
        server.stop()
        with contextlib.suppress(OSError):
            log_path.unlink()
    raise ServerSetupError(f"local-bigquery did not become ready; last log:\n{last_error}")


def jobs_with_prefix(client: Any, key: str) -> list[Any]:
    """Every job on the server whose id was derived from run key ``key`` (ids are ``dw_<key>_...``)."""
    prefix = f"dw_{key}_"
    return [j for j in client.list_jobs(all_users=True, max_results=100000) if j.job_id.startswith(prefix)]


def node_jobs(jobs: list[Any], unique_id: str) -> list[Any]:
    """Jobs of one node: ids end ``_<sanitised unique_id>_<hash>_a<attempt>_s<statement>``."""
    pattern = re.compile("_" + re.escape(unique_id.replace(".", "_")) + r"_[0-9a-f]{10}_a\d+_s\d+$")
    return [j for j in jobs if pattern.search(j.job_id)]


def rows(client: Any, sql: str) -> list[tuple[Any, ...]]:
    """A query's rows as tuples."""
    return [tuple(r.values()) for r in client.query(sql, job_retry=None).result()]


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[BigQueryServer]:
    """Context manager around :func:`start` / :meth:`BigQueryServer.stop`."""
    server = start(**kwargs)
    try:
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            server.log_path.unlink()


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    began = time.monotonic()
    installation = install(quiet=False)
    print(f"installed at {installation.root} ({time.monotonic() - began:.1f}s)", flush=True)
    if command == "install":
        return 0
    with running_server(installation=installation) as server:
        print(
            f"local-bigquery ready at {server.url} (project {server.project}, grpc "
            f"{server.grpc_port}) in {server.started_in:.1f}s; Ctrl-C stops it",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
