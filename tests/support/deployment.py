"""Helpers for deployment tests: a real ``dagster dev`` (webserver + daemon + code server), a real
throwaway PostgreSQL server, a small GraphQL client, and headless Chromium.

Every helper is a context manager that stops what it started, also when the test fails:

- :func:`running_dagster_dev` starts ``dagster dev -w <workspace> -h 127.0.0.1 -p <free port>`` in its
  own process group with a temporary ``DAGSTER_HOME`` (SQLite, or PostgreSQL storage when given a
  :class:`PostgresServer`), waits until GraphQL answers and the code location is loaded, and on exit
  interrupts it, then kills its whole process group and any process still carrying its
  ``DAGSTER_HOME`` (run workers, compute-log tails).
- :func:`running_postgres` runs ``initdb`` + ``postgres`` from Debian's ``postgresql`` package on a
  free port of 127.0.0.1 with a fresh data dir (as the ``postgres`` system user when running as root,
  because PostgreSQL refuses to run as root), with password authentication over TCP.
- :class:`GraphQLClient` speaks to the webserver's ``/graphql`` endpoint (Dagster 1.13 schema).
- :func:`chromium_capture` renders a page of the UI with headless Chromium and returns its DOM after
  saving a screenshot.

Run by hand (prints the URL, Ctrl-C stops everything)::

    .venv/bin/python -m tests.support.deployment [--postgres]
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = REPO / "workspace.yaml"
ARTIFACTS = REPO / "tests" / "artifacts"
VENV_BIN = Path(sys.executable).parent

LOCATION = "shop"
#: The repository name Dagster gives a module-level ``Definitions`` object.
REPOSITORY = "__repository__"
JOB = "shop_watcher_job"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------ processes


def _children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses.
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _pids_with_env(marker: str) -> set[int]:
    """Processes whose environment contains ``marker`` (a ``KEY=value`` unique to one helper run, e.g.
    its temporary DAGSTER_HOME): whatever one of our servers started, even if it was re-parented."""
    needle = b"\0" + marker.encode() + b"\0"
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + environ + b"\0":
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_process_tree(
    process: subprocess.Popen[Any],
    *,
    first_signal: int = signal.SIGINT,
    grace: float = 20.0,
    env_marker: str | None = None,
) -> None:
    """Stop ``process`` (started with ``start_new_session=True``) and everything it started: a polite
    signal to the leader, then SIGKILL for its process group, its descendants, and (with
    ``env_marker``) any process whose environment carries the marker."""
    known = _children_of(process.pid) | ({process.pid} if process.poll() is None else set())
    if env_marker:
        known |= _pids_with_env(env_marker)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(first_signal)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left: the leader, its group, its (possibly re-parented) descendants.
    known |= _children_of(process.pid)
    if env_marker:
        known |= _pids_with_env(env_marker)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in known:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in known):
        time.sleep(0.1)


# ------------------------------------------------------------------------------------ PostgreSQL


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[Any]

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def connect(self) -> Any:
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.database
        )

    def dagster_storage(self, password_env: str = "DAGSTER_PG_PASSWORD") -> dict[str, Any]:
        """The ``storage:`` block of a dagster.yaml; the password is read from ``password_env``."""
        return {
            "postgres": {
                "postgres_db": {
                    "username": self.user,
                    "password": {"env": password_env},
                    "hostname": self.host,
                    "db_name": self.database,
                    "port": self.port,
                    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; dagster-postgres
                    # depends on psycopg2 (psycopg2-binary).
                    "scheme": "postgresql+psycopg2",
                }
            }
        }

    def dump_text(self) -> str:
        """Every row of every table in the public schema, as text (for searching stored values)."""
        out: list[str] = []
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute("select tablename from pg_tables where schemaname = 'public'")
            for (table,) in cur.fetchall():
                cur.execute(f'select t::text from "{table}" t')
                out.extend(f"{table}: {row[0]}" for row in cur.fetchall())
        return "\n".join(out)


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
        "apt-get install postgresql (.ci/run does this)"
    )


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` system user (the Debian
    package creates it)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root and there is no `postgres` user: apt-get install postgresql") from exc
    return "postgres"


@contextlib.contextmanager
def running_postgres(
    *, user: str = "dagster", database: str = "dagster", timeout: float = 60
) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on 127.0.0.1:<free port>, removed afterwards."""
    bin_dir = _postgres_bin()
    run_as = _postgres_user()
    # Not under pytest's tmp dir: that is private to root and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="dw-postgres-"))
    process: subprocess.Popen[Any] | None = None
    try:
        base.chmod(0o755)
        data_dir, socket_dir = base / "data", base / "socket"
        socket_dir.mkdir()
        password = secrets.token_hex(12)
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        if run_as:
            shutil.chown(base, run_as)
            shutil.chown(socket_dir, run_as)
            shutil.chown(pwfile, run_as)
        init = subprocess.run(
            [
                str(bin_dir / "initdb"), "-D", str(data_dir), "-U", user, "--pwfile", str(pwfile),
                "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            user=run_as, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        pwfile.unlink()
        port = free_port()
        log_path = base / "postgres.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        if run_as:
            shutil.chown(log_path, run_as)
        process = subprocess.Popen(
            [
                str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port), "-k", str(socket_dir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ],
            user=run_as, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        server = PostgresServer("127.0.0.1", port, user, password, "postgres", data_dir, log_path, process)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with contextlib.closing(server.connect()) as conn:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(f'create database "{database}"')
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not accept connections in {timeout}s: {exc}\n{log_path.read_text()}"
                    ) from exc
                time.sleep(0.2)
        server.database = database
        yield server
    finally:
        if process is not None:
            # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, exit cleanly.
            stop_process_tree(process, first_signal=signal.SIGINT, grace=30)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------ GraphQL

METADATA_FIELDS = """
  label
  ... on TextMetadataEntry { text }
  ... on MarkdownMetadataEntry { mdStr }
  ... on JsonMetadataEntry { jsonString }
  ... on IntMetadataEntry { intRepr }
  ... on FloatMetadataEntry { floatRepr }
  ... on BoolMetadataEntry { boolValue }
  ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url }
  ... on TimestampMetadataEntry { timestamp }
"""

PYTHON_ERROR_FIELDS = "message className stack causes { message className stack }"

RUN_EVENT_FIELDS = f"""
  __typename
  ... on MessageEvent {{ runId message timestamp level stepKey eventType }}
  ... on DisplayableEvent {{ label description metadataEntries {{ {METADATA_FIELDS} }} }}
  ... on MaterializationEvent {{ assetKey {{ path }} }}
  ... on ObservationEvent {{ assetKey {{ path }} }}
  ... on AssetMaterializationPlannedEvent {{ assetKey {{ path }} }}
  ... on AssetCheckEvaluationEvent {{
    evaluation {{
      checkName success severity description assetKey {{ path }} metadataEntries {{ {METADATA_FIELDS} }}
    }}
  }}
  ... on ExecutionStepFailureEvent {{
    error {{ {PYTHON_ERROR_FIELDS} }}
    failureMetadata {{ label description metadataEntries {{ {METADATA_FIELDS} }} }}
  }}
  ... on RunFailureEvent {{ error {{ {PYTHON_ERROR_FIELDS} }} }}
  ... on EngineEvent {{ error {{ {PYTHON_ERROR_FIELDS} }} }}
"""


class GraphQLError(RuntimeError):
    pass


def is_test_verdict(observation: Mapping[str, Any]) -> bool:
    """An observation of a test's verdict on an asset (a test with no check, a unit test), not the
    asset's own outcome."""
    return "dagster_watcher/test" in metadata_dict(observation.get("metadataEntries") or [])


def node_observations(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The observations among ``events`` that record an asset's own outcome."""
    return [e for e in events if e.get("eventType") == "ASSET_OBSERVATION" and not is_test_verdict(e)]


def metadata_dict(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """GraphQL metadata entries -> {label: value} (the value field of whatever entry type it is)."""
    out: dict[str, Any] = {}
    for entry in entries:
        value = None
        for key in ("text", "mdStr", "jsonString", "intRepr", "floatRepr", "boolValue", "path", "url", "timestamp"):
            if key in entry:
                value = entry[key]
                break
        out[entry["label"]] = value
    return out


def key_str(asset_key: Mapping[str, Any] | None) -> str | None:
    return "/".join(asset_key["path"]) if asset_key else None


@dataclass
class GraphQLClient:
    url: str
    timeout: float = 60

    def query(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise GraphQLError(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from exc
        if payload.get("errors"):
            raise GraphQLError(json.dumps(payload["errors"], indent=1)[:4000])
        return payload["data"]

    # -- workspace ----------------------------------------------------------------------------

    def location_state(self, location: str = LOCATION) -> tuple[str | None, str | None]:
        """(loadStatus, load error message or None) of a code location."""
        data = self.query(
            """query($name: String!) {
              workspaceLocationEntryOrError(name: $name) {
                __typename
                ... on WorkspaceLocationEntry {
                  loadStatus
                  locationOrLoadError {
                    __typename
                    ... on RepositoryLocation { repositories { name } }
                    ... on PythonError { message }
                  }
                }
                ... on PythonError { message }
              }
            }""",
            {"name": location},
        )["workspaceLocationEntryOrError"]
        if data is None:
            return None, None
        if data["__typename"] == "PythonError":
            return None, data["message"]
        loaded = data.get("locationOrLoadError") or {}
        error = loaded.get("message") if loaded.get("__typename") == "PythonError" else None
        return data["loadStatus"], error

    def repositories(self, location: str = LOCATION) -> list[str]:
        data = self.query(
            """query($name: String!) {
              workspaceLocationEntryOrError(name: $name) {
                ... on WorkspaceLocationEntry {
                  locationOrLoadError { ... on RepositoryLocation { repositories { name } } }
                }
              }
            }""",
            {"name": location},
        )
        return [r["name"] for r in data["workspaceLocationEntryOrError"]["locationOrLoadError"]["repositories"]]

    # -- runs ---------------------------------------------------------------------------------

    def launch_run(
        self,
        job: str = JOB,
        run_config: Mapping[str, Any] | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        location: str = LOCATION,
        repository: str = REPOSITORY,
    ) -> str:
        data = self.query(
            """mutation($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on RunConfigValidationInvalid { errors { message } }
                ... on Error { message }
                ... on PythonError { stack }
              }
            }""",
            {
                "params": {
                    "selector": {"jobName": job, "repositoryName": repository, "repositoryLocationName": location},
                    "runConfigData": dict(run_config or {}),
                    "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
                }
            },
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launchRun failed: {json.dumps(data, indent=1)[:4000]}")
        return str(data["run"]["runId"])

    def run(self, run_id: str) -> dict[str, Any]:
        data = self.query(
            """query($runId: ID!) {
              runOrError(runId: $runId) {
                __typename
                ... on Run {
                  runId status jobName runConfigYaml creationTime startTime endTime tags { key value }
                  assetSelection { path }
                }
                ... on Error { message }
              }
            }""",
            {"runId": run_id},
        )["runOrError"]
        if data["__typename"] != "Run":
            raise GraphQLError(f"run {run_id}: {data}")
        return data

    def wait_for_run(self, run_id: str, timeout: float = 300) -> dict[str, Any]:
        """Poll until the run is finished (SUCCESS, FAILURE or CANCELED); return the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s")
            time.sleep(0.5)

    def run_events(self, run_id: str, page: int = 500) -> list[dict[str, Any]]:
        """Every event of a run in event-log order (pages through ``logsForRun``)."""
        events: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            data = self.query(
                f"""query($runId: ID!, $cursor: String, $limit: Int) {{
                  logsForRun(runId: $runId, afterCursor: $cursor, limit: $limit) {{
                    __typename
                    ... on EventConnection {{ cursor hasMore events {{ {RUN_EVENT_FIELDS} }} }}
                    ... on Error {{ message }}
                  }}
                }}""",
                {"runId": run_id, "cursor": cursor, "limit": page},
            )["logsForRun"]
            if data["__typename"] != "EventConnection":
                raise GraphQLError(f"logsForRun {run_id}: {data}")
            events.extend(data["events"])
            cursor = data["cursor"]
            if not data["hasMore"]:
                return events

    def captured_logs(self, run_id: str) -> dict[str, str]:
        """stdout + stderr the compute log manager captured for a run, by file key (one per process
        that ran steps: see the run's LOGS_CAPTURED events)."""
        file_keys = {
            e["fileKey"]
            for e in self.query(
                """query($runId: ID!) {
                  logsForRun(runId: $runId, limit: 100000) {
                    ... on EventConnection { events { __typename ... on LogsCapturedEvent { fileKey } } }
                  }
                }""",
                {"runId": run_id},
            )["logsForRun"]["events"]
            if e["__typename"] == "LogsCapturedEvent"
        }
        out: dict[str, str] = {}
        for file_key in sorted(file_keys):
            logs = self.query(
                """query($logKey: [String!]!) { capturedLogs(logKey: $logKey) { stdout stderr } }""",
                {"logKey": [run_id, "compute_logs", file_key]},
            )["capturedLogs"]
            out[file_key] = f"{logs['stdout'] or ''}\n{logs['stderr'] or ''}"
        return out

    def runs(
        self, limit: int = 100, *, job: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The instance's latest runs (optionally of one job / with these tags), newest first."""
        run_filter: dict[str, Any] = {}
        if job:
            run_filter["pipelineName"] = job
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        data = self.query(
            """query($limit: Int, $filter: RunsFilter) {
              runsOrError(limit: $limit, filter: $filter) {
                __typename
                ... on Runs { results { runId jobName status creationTime tags { key value } } }
                ... on Error { message }
              }
            }""",
            {"limit": limit, "filter": run_filter or None},
        )["runsOrError"]
        if data["__typename"] != "Runs":
            raise GraphQLError(f"runsOrError: {data}")
        return data["results"]

    def wait_for_new_run(
        self,
        *,
        job: str | None = None,
        tags: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
        timeout: float = 300,
    ) -> str:
        """Wait until a run (of ``job``, with ``tags``) not in ``exclude`` exists, e.g. one a sensor
        launched; return its run id (the oldest such run)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.runs(job=job, tags=tags) if r["runId"] not in exclude]
            if found:
                return str(found[-1]["runId"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new run (job={job}, tags={tags}) after {timeout}s")
            time.sleep(1)

    def wait_until_idle(self, timeout: float = 300) -> None:
        """Wait until no run is queued, starting, started or cancelling."""
        deadline = time.monotonic() + timeout
        while True:
            busy = [
                r for r in self.runs() if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
            ]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still in progress after {timeout}s: {busy}")
            time.sleep(0.5)

    # -- sensors and UI state ----------------------------------------------------------------

    def sensors(self, location: str = LOCATION, repository: str = REPOSITORY) -> list[dict[str, Any]]:
        data = self.query(
            """query($selector: RepositorySelector!) {
              sensorsOrError(repositorySelector: $selector) {
                __typename
                ... on Sensors { results { name jobOriginId sensorState { id selectorId status } } }
                ... on Error { message }
              }
            }""",
            {"selector": {"repositoryName": repository, "repositoryLocationName": location}},
        )["sensorsOrError"]
        if data["__typename"] != "Sensors":
            raise GraphQLError(f"sensorsOrError: {data}")
        return data["results"]

    def stop_sensor(self, sensor: Mapping[str, Any]) -> None:
        data = self.query(
            """mutation($originId: String, $selectorId: String) {
              stopSensor(jobOriginId: $originId, jobSelectorId: $selectorId) {
                __typename
                ... on StopSensorMutationResult { instigationState { status } }
                ... on Error { message }
              }
            }""",
            {"originId": sensor["jobOriginId"], "selectorId": sensor["sensorState"]["selectorId"]},
        )["stopSensor"]
        if data["__typename"] != "StopSensorMutationResult" or data["instigationState"]["status"] != "STOPPED":
            raise GraphQLError(f"stopSensor {sensor['name']}: {data}")

    def start_sensor(self, name: str, location: str = LOCATION, repository: str = REPOSITORY) -> None:
        data = self.query(
            """mutation($selector: SensorSelector!) {
              startSensor(sensorSelector: $selector) {
                __typename
                ... on Sensor { sensorState { status } }
                ... on Error { message }
              }
            }""",
            {"selector": {"repositoryName": repository, "repositoryLocationName": location, "sensorName": name}},
        )["startSensor"]
        if data["__typename"] != "Sensor" or data["sensorState"]["status"] != "RUNNING":
            raise GraphQLError(f"startSensor {name}: {data}")

    def sensor_ticks(
        self,
        name: str,
        *,
        limit: int = 100,
        after: float | None = None,
        location: str = LOCATION,
        repository: str = REPOSITORY,
    ) -> list[dict[str, Any]]:
        """The latest ticks of one sensor (newest first), optionally only those after ``after`` (epoch
        seconds): status, timestamp, the runs it launched and its skip reason."""
        data = self.query(
            """query($selector: SensorSelector!, $limit: Int, $after: Float) {
              sensorOrError(sensorSelector: $selector) {
                __typename
                ... on Sensor {
                  sensorState {
                    status
                    ticks(limit: $limit, afterTimestamp: $after) {
                      id status timestamp endTimestamp runIds runKeys skipReason error { message }
                    }
                  }
                }
                ... on Error { message }
              }
            }""",
            {
                "selector": {"repositoryName": repository, "repositoryLocationName": location, "sensorName": name},
                "limit": limit,
                "after": after,
            },
        )["sensorOrError"]
        if data["__typename"] != "Sensor":
            raise GraphQLError(f"sensorOrError {name}: {data}")
        return list(data["sensorState"]["ticks"])

    def stop_all_sensors(self) -> list[str]:
        """Stop every running sensor of the location; return their names."""
        stopped = []
        for sensor in self.sensors():
            if sensor["sensorState"]["status"] == "RUNNING":
                for attempt in range(10):
                    try:
                        self.stop_sensor(sensor)
                        break
                    except GraphQLError as error:
                        # The daemon stores a default-running sensor's state on its first tick; a stop
                        # racing that write is refused ("already present in storage"): ask again.
                        if "already present in storage" not in str(error) or attempt == 9:
                            raise
                        time.sleep(0.5)
                stopped.append(sensor["name"])
        return stopped

    def dismiss_welcome_dialog(self) -> None:
        """The UI greets a new instance with a "Join the Dagster community" dialog over every page."""
        self.query("mutation { setNuxSeen }")

    # -- assets -------------------------------------------------------------------------------

    def asset_nodes(self) -> list[dict[str, Any]]:
        """Every asset of the workspace with its latest materialization, latest observation and checks
        (each check with its latest execution)."""
        return self.query(
            f"""query {{
              assetNodes {{
                assetKey {{ path }}
                opNames
                assetMaterializations(limit: 1) {{ runId timestamp metadataEntries {{ {METADATA_FIELDS} }} }}
                assetObservations(limit: 10) {{
                  runId timestamp description metadataEntries {{ {METADATA_FIELDS} }}
                }}
                assetChecksOrError {{
                  __typename
                  ... on AssetChecks {{
                    checks {{
                      name
                      executionForLatestMaterialization {{
                        runId status evaluation {{ success severity metadataEntries {{ {METADATA_FIELDS} }} }}
                      }}
                    }}
                  }}
                }}
              }}
            }}"""
        )["assetNodes"]

    def check_executions(self, asset_key: Sequence[str], check_name: str, limit: int = 5) -> list[dict[str, Any]]:
        """Latest executions of one asset check, newest first."""
        return self.query(
            f"""query($assetKey: AssetKeyInput!, $checkName: String!, $limit: Int!) {{
              assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: $limit) {{
                runId status timestamp
                evaluation {{ success severity description metadataEntries {{ {METADATA_FIELDS} }} }}
              }}
            }}""",
            {"assetKey": {"path": list(asset_key)}, "checkName": check_name, "limit": limit},
        )["assetCheckExecutions"]


# ------------------------------------------------------------------------------------ dagster dev


@dataclass
class DagsterDev:
    url: str
    home: Path
    log_path: Path
    process: subprocess.Popen[Any]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def graphql(self) -> GraphQLClient:
        return GraphQLClient(f"{self.url}/graphql")

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def write_dagster_yaml(
    home: Path, postgres: PostgresServer | None = None, extra: Mapping[str, Any] | None = None
) -> Path:
    """A dagster.yaml for ``home``: SQLite storage in it (Dagster's default) or PostgreSQL storage."""
    config: dict[str, Any] = {"telemetry": {"enabled": False}}
    if postgres is not None:
        config["storage"] = postgres.dagster_storage()
    config.update(extra or {})
    path = home / "dagster.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def deployment_env(
    home: Path, env: Mapping[str, str] | None = None, postgres: PostgresServer | None = None
) -> dict[str, str]:
    """The environment of a deployment's processes (and so of their code servers and run workers):
    ``home`` as DAGSTER_HOME, the example's DuckDB file in it, then ``env``."""
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_WATCHER_DUCKDB_PATH": str(home / "shop.duckdb"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if postgres is not None:
        full_env["DAGSTER_PG_PASSWORD"] = postgres.password
    # Never let a developer's settings leak in: these would change what the definitions load.
    for key in ("DAGSTER_WATCHER_DBT_VARS", "DAGSTER_WATCHER_INVOCATION_MODE"):
        if key not in (env or {}):
            full_env.pop(key, None)
    return full_env


@contextlib.contextmanager
def running_dagster_dev(
    home: Path,
    *,
    workspace: Path = WORKSPACE,
    env: Mapping[str, str] | None = None,
    postgres: PostgresServer | None = None,
    location: str = LOCATION,
    startup_timeout: float = 240,
    dagster_yaml: Mapping[str, Any] | None = None,
) -> Iterator[DagsterDev]:
    """``dagster dev`` on a free port with ``home`` as DAGSTER_HOME, ready when the code location is loaded.

    ``env`` is added to the environment of dagster dev (and so of its code servers and run workers);
    by default DAGSTER_WATCHER_DUCKDB_PATH points into ``home``. ``dagster_yaml`` adds top-level
    sections to the instance's dagster.yaml (e.g. ``{"sensors": {"use_threads": True}}``).
    """
    home.mkdir(parents=True, exist_ok=True)
    write_dagster_yaml(home, postgres, dagster_yaml)
    port = free_port()
    full_env = deployment_env(home, env, postgres)
    log_path = home / "dagster-dev.log"
    dagster = VENV_BIN / "dagster"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=str(workspace.parent),
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # A shell's background job starts with SIGINT ignored, and an ignored signal stays ignored
            # across exec: dagster dev would then never get the Ctrl-C that makes it shut down cleanly.
            preexec_fn=_default_sigint,
        )
    dev = DagsterDev(f"http://127.0.0.1:{port}", home, log_path, process, full_env)
    try:
        _wait_until_loaded(dev, location, startup_timeout)
        yield dev
    finally:
        stop_process_tree(process, first_signal=signal.SIGINT, grace=30, env_marker=f"DAGSTER_HOME={home}")


@dataclass
class SplitDeployment:
    """A webserver and a separately started ``dagster-daemon run`` over one DAGSTER_HOME (what
    ``dagster dev`` runs as one process tree, split so that the daemon alone can be stopped and
    started again while the webserver, the runs and their code servers go on)."""

    webserver: DagsterDev
    workspace: Path
    daemon: subprocess.Popen[Any] | None = None
    daemon_starts: int = 0

    @property
    def graphql(self) -> GraphQLClient:
        return self.webserver.graphql

    @property
    def env(self) -> dict[str, str]:
        return self.webserver.env

    def start_daemon(self) -> subprocess.Popen[Any]:
        assert self.daemon is None or self.daemon.poll() is not None, "the daemon is running"
        self.daemon_starts += 1
        log_path = self.webserver.home / f"dagster-daemon-{self.daemon_starts}.log"
        with open(log_path, "wb") as log:
            self.daemon = subprocess.Popen(
                [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(self.workspace)],
                cwd=str(self.workspace.parent),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_default_sigint,
            )
        return self.daemon

    def stop_daemon(self, sig: int, timeout: float = 60) -> None:
        """Send ``sig`` to the daemon process only (its code server and the runs it launched are left
        to themselves, as when a daemon pod dies) and wait until it has exited."""
        assert self.daemon is not None and self.daemon.poll() is None, "the daemon is not running"
        self.daemon.send_signal(sig)
        self.daemon.wait(timeout=timeout)

    def daemon_log_tail(self, chars: int = 6000) -> str:
        path = self.webserver.home / f"dagster-daemon-{self.daemon_starts}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def running_split_deployment(
    home: Path,
    *,
    workspace: Path = WORKSPACE,
    env: Mapping[str, str] | None = None,
    location: str = LOCATION,
    startup_timeout: float = 240,
) -> Iterator[SplitDeployment]:
    """``dagster-webserver`` plus ``dagster-daemon run`` (SQLite instance in ``home``), each in its
    own process group; ready when the webserver has loaded the code location (the daemon is started
    then: wait for its first sensor ticks before relying on it).
    ``env`` is added to the environment of both (and so of their code servers and run workers)."""
    home.mkdir(parents=True, exist_ok=True)
    write_dagster_yaml(home)
    port = free_port()
    full_env = deployment_env(home, env)
    log_path = home / "dagster-webserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=str(workspace.parent),
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    deployment = SplitDeployment(DagsterDev(f"http://127.0.0.1:{port}", home, log_path, process, full_env), workspace)
    try:
        # The webserver creates the instance's storage; a daemon starting at the same time would race
        # it on the schema migrations of a fresh SQLite home ("more than one head present").
        _wait_until_loaded(deployment.webserver, location, startup_timeout)
        deployment.start_daemon()
        yield deployment
    finally:
        if deployment.daemon is not None:
            stop_process_tree(deployment.daemon, first_signal=signal.SIGTERM, grace=20)
        stop_process_tree(process, first_signal=signal.SIGINT, grace=20, env_marker=f"DAGSTER_HOME={home}")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until_loaded(dev: DagsterDev, location: str, timeout: float) -> None:
    client = dev.graphql
    client.timeout = 10
    deadline = time.monotonic() + timeout
    last: object = "no answer"
    while True:
        if dev.process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}")
        try:
            status, error = client.location_state(location)
            if error:
                raise RuntimeError(f"code location {location!r} failed to load:\n{error}\n{dev.log_tail()}")
            if status == "LOADED":
                client.timeout = 60
                return
            last = status
        except (urllib.error.URLError, ConnectionError, TimeoutError, GraphQLError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"dagster dev not ready after {timeout}s (last: {last}):\n{dev.log_tail()}")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------ Chromium


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("Chromium not found: apt-get install chromium (.ci/run does this)")


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
)


def _chromium(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="dw-chromium-")
    process = subprocess.Popen(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "HOME": profile},
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        stop_process_tree(process, first_signal=signal.SIGTERM, grace=5, env_marker=f"HOME={profile}")
        shutil.rmtree(profile, ignore_errors=True)


def chromium_capture(
    url: str,
    screenshot: Path,
    *,
    window: tuple[int, int] = (1600, 1000),
    budget_ms: int = 15000,
    timeout: float = 120,
) -> str:
    """Render ``url`` in headless Chromium: save a PNG screenshot and return the DOM, both taken after
    the page ran for ``budget_ms`` of virtual time (the React app has fetched its data and rendered)."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    result = _chromium(
        [
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        timeout,
    )
    if not screenshot.is_file() or not result.stdout.strip():
        raise RuntimeError(f"chromium failed ({result.returncode}) on {url}:\n{result.stderr[-3000:]}")
    return result.stdout


# ------------------------------------------------------------------------------------ by hand


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Start dagster dev (optionally on PostgreSQL) until Ctrl-C.")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dw-dagster-home-"))
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(running_postgres()) if args.postgres else None
        dev = stack.enter_context(running_dagster_dev(home, postgres=pg))
        print(f"dagster dev at {dev.url} (DAGSTER_HOME={home}); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while dev.process.poll() is None:
                time.sleep(1)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    _main()
