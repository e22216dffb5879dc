#!/usr/bin/env python
"""Benchmark harness: every way to run a dbt project (from Dagster or not), side by side in ONE run.

Each variant is timed as the END-TO-END wall time of a fresh process (what a user pays: interpreter
start, imports, definition loading, dbt start-up, the build, the event writes, process exit), on a
fresh DuckDB file, with the same threads, anonymous usage stats off and the same partial-parse
state (the project is parsed once up front; every run starts from a copy of that
``partial_parse.msgpack``). Variants are interleaved (rotated) within each repetition so machine
noise hits all of them alike. See benchmarks/README.md.

    .venv/bin/python benchmarks/run.py --project example --repeat 3
    .venv/bin/python benchmarks/run.py --project fhir --repeat 3 --threads 8 --thread-scaling
    .venv/bin/python benchmarks/run.py --project synthetic-1000 --variants none --load-time --replay --sensor-ticks
    .venv/bin/python benchmarks/run.py --smoke --out-dir /tmp/bench    # tiny, for CI
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
BIN = Path(sys.executable).parent
WORKER = HERE / "_worker.py"
BENCH_DEFS = HERE / "bench_defs.py"

PROJECTS: dict[str, dict[str, Any]] = {
    "example": {"dir": REPO / "example_project"},
    "fhir": {"dir": HERE / "projects" / "fhir", "gen": ["gen_fhir.py"]},
    "synthetic-1000": {"dir": HERE / "projects" / "synthetic_1000", "gen": ["gen_synthetic.py", "--nodes", "1000"]},
    "synthetic-5000": {"dir": HERE / "projects" / "synthetic_5000", "gen": ["gen_synthetic.py", "--nodes", "5000"]},
}

VARIANTS: dict[str, str] = {
    "dbt-cli": "`dbt build` CLI (reference)",
    "per-node-cli": "one `dbt build --select <node>` CLI process per node, topological order",
    "per-node-runner": "one in-process dbtRunner call per node (pre-parsed manifest, one process)",
    "dagster-dbt": 'dagster-dbt `@dbt_assets` + `dbt.cli(["build"]).stream()`, materialize()',
    "watcher-runner": "dagster-watcher, runner mode (in-process dbtRunner), materialize()",
    "watcher-subprocess": "dagster-watcher, subprocess mode (`dbt --log-format json`), materialize()",
    "watcher-runner-cli": "dagster-watcher, runner mode, `dagster asset materialize` CLI",
    "watcher-subprocess-cli": "dagster-watcher, subprocess mode, `dagster asset materialize` CLI",
    "dagster-dbt-cli": "dagster-dbt `@dbt_assets`, `dagster asset materialize` CLI",
    # The cost of runtime metadata (opt-in: `--variants watcher-runner,watcher-runner-fetch,...`).
    "watcher-runner-fetch": "`watcher-runner` with fetch_row_counts=True, fetch_column_metadata=True",
    "dagster-dbt-fetch": "`dagster-dbt` with `.stream().fetch_row_counts().fetch_column_metadata()`",
    # Before/after in one run (needs --before-code).
    "watcher-runner-before": "`watcher-runner` with the dagster_watcher of --before-code",
    "watcher-subprocess-before": "`watcher-subprocess` with the dagster_watcher of --before-code",
}
FETCH_VARIANTS = {"watcher-runner-fetch", "dagster-dbt-fetch"}
BEFORE_VARIANTS = {"watcher-runner-before", "watcher-subprocess-before"}
DEFAULT_VARIANTS = [
    v for v in VARIANTS if v != "dagster-dbt-cli" and v not in FETCH_VARIANTS and v not in BEFORE_VARIANTS
]
SMOKE_VARIANTS = ["dbt-cli", "watcher-runner"]
DAGSTER_VARIANTS = {
    "dagster-dbt",
    "watcher-runner",
    "watcher-subprocess",
    "watcher-runner-cli",
    "watcher-subprocess-cli",
    "dagster-dbt-cli",
    *FETCH_VARIANTS,
    *BEFORE_VARIANTS,
}


# ------------------------------------------------------------------------------------------------
# Running one fresh process


@dataclass
class Measured:
    wall: float
    code: int
    tree_peak_rss_mb: float
    max_process_rss_mb: float
    spawned_at: float = 0.0
    """time.time() right before the spawn (a worker's own timestamps can be measured from it)"""


def run_process(cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path, timeout: float = 3600) -> Measured:
    """Run ``cmd`` to completion; wall time from spawn to reaped exit, peak RSS of its process tree
    (psutil, sampled every 50 ms) and the largest single-process max RSS (kernel, exact)."""
    try:
        import psutil
    except ImportError:  # optional (the `bench` extra): then only the kernel's max RSS is reported
        psutil = None

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        spawned_at = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            if psutil is None:
                return
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                try:
                    total = root.memory_info().rss
                    for child in root.children(recursive=True):
                        try:
                            total += child.memory_info().rss
                        except psutil.Error:
                            pass
                    peak[0] = max(peak[0], total)
                except psutil.Error:
                    return
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            # A short poll keeps the wall-time error to ~5 ms without a busy loop.
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(wall, proc.returncode, peak[0] / 2**20, usage.ru_maxrss / 1024, spawned_at)


# ------------------------------------------------------------------------------------------------
# Project preparation


@dataclass
class Bench:
    project: str
    project_dir: Path
    work: Path
    threads: int
    log: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    keep_runs: bool = False
    dagster_home_root: Path | None = None
    postgres: Any = None
    """A running tests.support.deployment.PostgresServer: each run then gets its own fresh database."""
    _runs: int = 0
    patch_dagster: bool = False
    profile_dir: Path | None = None
    """--profile: where the replay's and load's pyinstrument reports go"""

    @property
    def duckdb(self) -> Path:
        # ONE fixed path for every run: the profile renders it, and a different rendered profile would
        # invalidate partial parsing (each run starts from a fresh file at this path instead).
        return self.work / "warehouse.duckdb"

    @property
    def parsed_target(self) -> Path:
        """Where the up-front `dbt parse` writes manifest.json and partial_parse.msgpack (not the
        project's own target/, which belongs to whoever develops the project)."""
        return self.work / "parsed_target"

    @property
    def msgpack(self) -> Path:
        return self.parsed_target / "partial_parse.msgpack"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "DW_BENCH_", "DAGSTER_"))}
        if self.postgres is not None:
            env["DAGSTER_PG_PASSWORD"] = self.postgres.password
        env.update(
            DBT_SEND_ANONYMOUS_USAGE_STATS="false",
            DO_NOT_TRACK="1",
            DAGSTER_WATCHER_DUCKDB_PATH=str(self.duckdb),
            PYTHONUNBUFFERED="1",
        )
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def fresh_run_dir(self, name: str) -> tuple[Path, dict[str, str]]:
        """A clean run dir (dbt target with the parsed project's partial_parse.msgpack, dbt logs, a
        Dagster home on SQLite) and a fresh DuckDB file; returns the dir and the env for the run."""
        run_dir = self.work / "runs" / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        (run_dir / "target").mkdir(parents=True)
        (run_dir / "logs").mkdir()
        if self.dagster_home_root is not None:
            # e.g. a tmpfs: shows what the Dagster storage's fsyncs cost (see README)
            home = self.dagster_home_root / f"{self.project}-{name}"
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
            (run_dir / "dagster_home").symlink_to(home, target_is_directory=True)
        else:
            (run_dir / "dagster_home").mkdir()
        (run_dir / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        if self.postgres is not None:
            self._fresh_postgres_home(run_dir / "dagster_home")
        shutil.copy(self.msgpack, run_dir / "target" / "partial_parse.msgpack")
        for suffix in ("", ".wal"):
            Path(f"{self.duckdb}{suffix}").unlink(missing_ok=True)
        env = self.base_env()
        env.update(
            DBT_TARGET_PATH=str(run_dir / "target"),
            DBT_LOG_PATH=str(run_dir / "logs"),
            DAGSTER_HOME=str(run_dir / "dagster_home"),
            DW_BENCH_PROJECT_DIR=str(self.project_dir),
            DW_BENCH_TARGET_PATH=str(run_dir / "target"),
            DW_BENCH_MANIFEST_TARGET=str(self.parsed_target),
        )
        return run_dir, env

    def _fresh_postgres_home(self, home: Path) -> None:
        """A new database for this run, its schema created here (untimed: a deployment creates it once)."""
        import contextlib

        import yaml
        from dagster import DagsterInstance
        from dagster._core.instance.ref import InstanceRef

        self._runs += 1
        db = f"bench_{os.getpid()}_{self._runs}"
        with contextlib.closing(self.postgres.connect()) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'create database "{db}"')
        storage = self.postgres.dagster_storage()
        storage["postgres"]["postgres_db"]["db_name"] = db
        (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}, "storage": storage}))
        os.environ["DAGSTER_PG_PASSWORD"] = self.postgres.password
        DagsterInstance.from_ref(InstanceRef.from_dir(str(home))).dispose()

    def dbt_args(self, threads: int) -> list[str]:
        return [
            "--project-dir",
            str(self.project_dir),
            "--profiles-dir",
            str(self.project_dir),
            "--threads",
            str(threads),
        ]

    def done_with(self, run_dir: Path) -> None:
        if not self.keep_runs:
            home = run_dir / "dagster_home"
            if home.is_symlink():
                shutil.rmtree(home.resolve(), ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)


def ensure_project(name: str) -> Path:
    spec = PROJECTS[name]
    project_dir: Path = spec["dir"]
    if not (project_dir / "dbt_project.yml").is_file():
        gen = spec.get("gen")
        if not gen:
            raise SystemExit(f"{project_dir} is not a dbt project")
        print(f"generating {name} -> {project_dir}", flush=True)
        subprocess.run([PY, str(HERE / gen[0]), *gen[1:], "--out", str(project_dir)], check=True)
    return project_dir


def parse_project(bench: Bench) -> float:
    """The up-front parse into <work>/parsed_target: manifest.json for the Dagster definitions and
    partial_parse.msgpack for every dbt process that follows. It goes through the watcher's own
    ``prepare_manifest`` with the workers' env, which also writes the fingerprint sidecar: a plain
    `dbt parse` leaves none, and the first watcher worker would then re-parse inside a timed run."""
    env = bench.base_env()
    env.update(DW_BENCH_PROJECT_DIR=str(bench.project_dir), DW_BENCH_MANIFEST_TARGET=str(bench.parsed_target))
    t0 = time.perf_counter()
    proc = subprocess.run([PY, str(WORKER), "prepare"], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dbt parse failed:\n{proc.stdout}\n{proc.stderr}")
    seconds = time.perf_counter() - t0
    bench.manifest = json.loads((bench.parsed_target / "manifest.json").read_text())
    return seconds


def runnable_nodes(manifest: dict[str, Any]) -> list[str]:
    """Models (not ephemeral), seeds and snapshots in a topological order (what per-node
    orchestration runs one at a time)."""
    nodes = manifest["nodes"]
    parent_map = manifest.get("parent_map") or {}
    wanted = {
        u
        for u, n in nodes.items()
        if n["resource_type"] in ("model", "seed", "snapshot")
        and (n.get("config") or {}).get("materialized") != "ephemeral"
    }
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(u: str) -> None:
        stack = [(u, iter(sorted(parent_map.get(u, ()))))]
        state[u] = 1
        while stack:
            node, parents = stack[-1]
            for p in parents:
                if state.get(p) is None:
                    state[p] = 1
                    stack.append((p, iter(sorted(parent_map.get(p, ())))))
                    break
            else:
                stack.pop()
                state[node] = 2
                order.append(node)

    for u in sorted(nodes):
        if state.get(u) is None:
            visit(u)
    return [u for u in order if u in wanted]


def select_name(manifest: dict[str, Any], unique_id: str) -> str:
    return ".".join(manifest["nodes"][unique_id]["fqn"])


def sample_evenly(items: list[str], n: int) -> list[str]:
    if n <= 0 or n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Reading back what a Dagster run stored


def analyse_dagster_run(run_dir: Path) -> dict[str, Any]:
    """Event latency (dbt's execute completed_at -> the event's timestamp in the instance) and
    event-log rows per node outcome, from the run's SQLite event log and dbt's run_results.json."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    results_files = sorted((run_dir / "target").rglob("run_results.json"), key=lambda p: p.stat().st_mtime)
    if not results_files:
        return {}
    run_results = json.loads(results_files[-1].read_text())["results"]
    completed: dict[str, float] = {}
    for r in run_results:
        for t in r.get("timing") or []:
            if t.get("name") == "execute" and t.get("completed_at"):
                completed[r["unique_id"]] = dt.datetime.fromisoformat(
                    t["completed_at"].replace("Z", "+00:00")
                ).timestamp()
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(run_dir / "dagster_home")))
    try:
        runs = instance.get_runs()
        if not runs:
            return {}
        run = runs[0]
        records = instance.all_logs(run.run_id)
        by_type: Counter[str] = Counter()
        latencies: list[float] = []
        for rec in records:
            ev = rec.dagster_event
            by_type[ev.event_type_value if ev else "LOG_MESSAGE"] += 1
            if ev is None:
                continue
            md: Any = None
            if ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                md = ev.event_specific_data.materialization.metadata  # type: ignore[union-attr]
            elif ev.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                md = ev.event_specific_data.metadata  # type: ignore[union-attr]
            elif ev.event_type == DagsterEventType.ASSET_OBSERVATION:
                md = ev.event_specific_data.asset_observation.metadata  # type: ignore[union-attr]
            if md and "unique_id" in md:
                uid = md["unique_id"].value
                if uid in completed:
                    latencies.append(rec.timestamp - completed[uid])
    finally:
        instance.dispose()
    outcomes = len(run_results)
    node_types = (
        "STEP_OUTPUT",
        "ASSET_MATERIALIZATION",
        "ASSET_CHECK_EVALUATION",
        "ASSET_OBSERVATION",
        "HANDLED_OUTPUT",
        "LOG_MESSAGE",
    )
    planned = by_type.get("ASSET_MATERIALIZATION_PLANNED", 0) + by_type.get("ASSET_CHECK_EVALUATION_PLANNED", 0)
    latencies.sort()
    return {
        "run_status": run.status.value,
        "outcomes": outcomes,
        "rows_total": sum(by_type.values()),
        "rows_by_type": dict(sorted(by_type.items())),
        "rows_per_outcome": sum(by_type.values()) / outcomes if outcomes else None,
        "streamed_rows_per_outcome": sum(by_type.get(t, 0) for t in node_types) / outcomes if outcomes else None,
        "planned_rows_per_outcome": planned / outcomes if outcomes else None,
        "latency_n": len(latencies),
        "latency_p50_ms": _pct(latencies, 0.50) * 1000 if latencies else None,
        "latency_p95_ms": _pct(latencies, 0.95) * 1000 if latencies else None,
        "latency_max_ms": latencies[-1] * 1000 if latencies else None,
    }


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


# ------------------------------------------------------------------------------------------------
# Variants


@dataclass
class Sample:
    variant: str
    threads: int
    rep: int
    seconds: float
    ok: bool
    tree_peak_rss_mb: float | None = None
    max_process_rss_mb: float | None = None
    extrapolated: bool = False
    note: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def _dagster_env(env: dict[str, str], kind: str, mode: str, threads: int, fetch: bool = False) -> dict[str, str]:
    env = dict(env)
    env.update(DW_BENCH_KIND=kind, DW_BENCH_MODE=mode, DW_BENCH_THREADS=str(threads), DW_BENCH_FETCH=str(int(fetch)))
    return env


def run_variant(bench: Bench, variant: str, threads: int, rep: int, opts: argparse.Namespace) -> Sample:
    name = f"{variant}-t{threads}-r{rep}"
    run_dir, env = bench.fresh_run_dir(name)
    log = bench.log
    sample = Sample(variant, threads, rep, float("nan"), False)
    if variant == "dbt-cli":
        m = run_process([BIN / "dbt", "build", *bench.dbt_args(threads)], env=env, cwd=bench.project_dir, log=log)
    elif variant in ("dagster-dbt", "watcher-runner", "watcher-subprocess", *FETCH_VARIANTS, *BEFORE_VARIANTS):
        fetch = variant in FETCH_VARIANTS
        base = variant.removesuffix("-fetch").removesuffix("-before")
        kind = "dagster-dbt" if base == "dagster-dbt" else "watcher"
        mode = base.split("-", 1)[1] if kind == "watcher" else ""
        dagster_env = _dagster_env(env, kind, mode, threads, fetch=fetch)
        if variant in BEFORE_VARIANTS:
            # The other checkout's dagster_watcher comes first on the worker's path (its dbt child too).
            dagster_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(opts.before_code), env.get("PYTHONPATH")) if p)
        m = run_process([PY, WORKER, "materialize"], env=dagster_env, cwd=REPO, log=log)
    elif variant in ("watcher-runner-cli", "watcher-subprocess-cli", "dagster-dbt-cli"):
        kind = "dagster-dbt" if variant.startswith("dagster-dbt") else "watcher"
        mode = variant.split("-")[1] if kind == "watcher" else ""
        cmd = [BIN / "dagster", "asset", "materialize", "-f", BENCH_DEFS, "--select", "*"]
        m = run_process(cmd, env=_dagster_env(env, kind, mode, threads), cwd=REPO, log=log)
    elif variant in ("per-node-cli", "per-node-runner"):
        return _run_per_node(bench, variant, threads, rep, run_dir, env, opts)
    else:
        raise SystemExit(f"unknown variant {variant}")
    sample.seconds, sample.ok = m.wall, m.code == 0
    sample.tree_peak_rss_mb, sample.max_process_rss_mb = m.tree_peak_rss_mb, m.max_process_rss_mb
    if variant in DAGSTER_VARIANTS:
        try:
            sample.metrics = analyse_dagster_run(run_dir)
        except Exception as exc:  # noqa: BLE001 - a broken analysis must not lose the timing
            sample.note = f"analysis failed: {exc!r}"
    bench.done_with(run_dir)
    return sample


def _run_per_node(
    bench: Bench, variant: str, threads: int, rep: int, run_dir: Path, env: dict[str, str], opts: argparse.Namespace
) -> Sample:
    nodes = runnable_nodes(bench.manifest)
    n_sample = opts.per_node_sample if variant == "per-node-cli" else opts.per_node_runner_sample
    chosen = sample_evenly(nodes, n_sample)
    partial = len(chosen) < len(nodes)
    if partial:
        # Sampled nodes are spread over the whole DAG: their upstream relations must exist, so the
        # warehouse is built first (untimed) and each sampled node is then rebuilt on its own.
        run_process([BIN / "dbt", "build", *bench.dbt_args(threads)], env=env, cwd=bench.project_dir, log=bench.log)
    common = ["--target-path", str(run_dir / "target"), *bench.dbt_args(threads)]
    sample = Sample(variant, threads, rep, float("nan"), True, extrapolated=partial)
    if variant == "per-node-cli":
        walls, peak, maxrss = [], 0.0, 0.0
        for uid in chosen:
            cmd = [
                BIN / "dbt",
                "build",
                "--select",
                select_name(bench.manifest, uid),
                "--indirect-selection",
                "buildable",
                "--quiet",
                *common,
            ]
            m = run_process(cmd, env=env, cwd=bench.project_dir, log=bench.log)
            walls.append(m.wall)
            peak, maxrss = max(peak, m.tree_peak_rss_mb), max(maxrss, m.max_process_rss_mb)
            sample.ok = sample.ok and m.code == 0
        per_node = statistics.mean(walls)
        sample.seconds = per_node * len(nodes) if partial else sum(walls)
        sample.metrics = {"nodes": len(nodes), "measured_nodes": len(chosen), "seconds_per_node": per_node}
        sample.tree_peak_rss_mb, sample.max_process_rss_mb = peak, maxrss
    else:
        spec = run_dir / "nodes.json"
        out = run_dir / "per_node.json"
        spec.write_text(
            json.dumps(
                {
                    "manifest": str(bench.parsed_target / "manifest.json"),
                    "selects": [select_name(bench.manifest, u) for u in chosen],
                    "common_args": common,
                }
            )
        )
        m = run_process([PY, WORKER, "per-node-runner", spec, out], env=env, cwd=REPO, log=bench.log)
        data = json.loads(out.read_text()) if out.exists() else {"calls": [], "setup_seconds": 0}
        calls = data["calls"] or [float("nan")]
        per_call = statistics.mean(calls)
        # Process overhead (start, imports, exit) is paid once; the calls once per node.
        overhead = m.wall - sum(data["calls"])
        sample.seconds = overhead + per_call * len(nodes) if partial else m.wall
        sample.ok = m.code == 0
        sample.metrics = {
            "nodes": len(nodes),
            "measured_nodes": len(chosen),
            "seconds_per_node": per_call,
            "process_overhead": overhead,
        }
        sample.tree_peak_rss_mb, sample.max_process_rss_mb = m.tree_peak_rss_mb, m.max_process_rss_mb
    if partial:
        sample.note = f"extrapolated from {len(chosen)} of {len(nodes)} nodes"
    bench.done_with(run_dir)
    return sample


# ------------------------------------------------------------------------------------------------
# Extras: load time, producer replay, sensor ticks


def measure_load(bench: Bench, repeat: int) -> list[dict[str, Any]]:
    rows = []
    configs = [
        ("dagster-dbt", "dagster-dbt", "0"),
        ("watcher", "watcher", "0"),
        ("watcher + consumer sensors", "watcher", "1"),
    ]
    for rep in range(repeat):
        for label, kind, sensors in configs:
            run_dir, env = bench.fresh_run_dir(f"load-{kind}-{sensors}-r{rep}")
            env = _dagster_env(env, kind, "runner", bench.threads)
            env["DW_BENCH_SENSORS"] = sensors
            if bench.profile_dir is not None:
                env["DW_BENCH_PROFILE"] = str(bench.profile_dir / f"load-{bench.project}-{kind}-{sensors}-r{rep}.txt")
            out = run_dir / "load.json"
            m = run_process([PY, WORKER, "load", out], env=env, cwd=REPO, log=bench.log)
            data = json.loads(out.read_text()) if out.exists() else {}
            rows.append(
                {
                    "label": label,
                    "rep": rep,
                    "seconds": m.wall,
                    "ok": m.code == 0,
                    "rss_mb": m.max_process_rss_mb,
                    # What a code server's start-up costs (it serves the snapshot and keeps running);
                    # the process wall also includes tearing the interpreter down.
                    "loaded_seconds": data.get("loaded_at", float("nan")) - m.spawned_at,
                    **data,
                }
            )
            print(
                f"  load {label:28} rep {rep}: loaded {data.get('loaded_at', float('nan')) - m.spawned_at:6.2f}s, "
                f"exited {m.wall:6.2f}s {'ok' if m.code == 0 else 'FAILED'}",
                flush=True,
            )
            bench.done_with(run_dir)
    return rows


def measure_replay(bench: Bench, repeat: int, sensor_ticks: bool) -> dict[str, Any]:
    """The watcher's own per-node cost: its writer fed by a fake dbt that reports every node at once
    (no dbt work), into a real SQLite instance. Optionally followed by one tick of every consumer
    sensor against that instance."""
    out: dict[str, Any] = {"replay": [], "sensors": None}
    for rep in range(repeat):
        run_dir, env = bench.fresh_run_dir(f"replay-r{rep}")
        env = _dagster_env(env, "watcher", "runner", bench.threads)
        if bench.patch_dagster:
            env["DW_BENCH_PATCH_DAGSTER"] = "1"
        if bench.profile_dir is not None:
            env["DW_BENCH_PROFILE"] = str(bench.profile_dir / f"replay-{bench.project}-r{rep}.txt")
        res = run_dir / "replay.json"
        ticks = run_dir / "ticks.json"
        with_ticks = sensor_ticks and rep == repeat - 1
        m = run_process([PY, WORKER, "replay", res, *([ticks] if with_ticks else [])], env=env, cwd=REPO, log=bench.log)
        data = json.loads(res.read_text()) if res.exists() else {"success": False}
        data.update(process_seconds=m.wall, ok=m.code == 0)
        out["replay"].append(data)
        print(
            f"  replay rep {rep}: {data.get('nodes')} nodes, {data.get('per_node_ms', float('nan')):.2f} ms/node, step {data.get('step_seconds', float('nan')):.2f}s",
            flush=True,
        )
        if with_ticks:
            out["sensors"] = json.loads(ticks.read_text()) if ticks.exists() else {"ok": False}
            t = out["sensors"].get("ticks") or [{}]
            print(
                f"  sensor ticks: {out['sensors'].get('sensors')} sensors, first tick {t[0].get('total_seconds', float('nan')):.2f}s",
                flush=True,
            )
        bench.done_with(run_dir)
    return out


# ------------------------------------------------------------------------------------------------
# Reporting


def machine_line() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, load average at start {load}"


def versions_line() -> str:
    from importlib.metadata import version

    parts = []
    for pkg in ("dagster", "dagster-dbt", "dbt-core", "dbt-duckdb"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except Exception:  # noqa: BLE001
            parts.append(f"{pkg} ?")
    return ", ".join(parts)


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return f"{x:.{digits}f}"


def summarise(samples: list[Sample], threads: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        if s.threads != threads:
            continue
        d = out.setdefault(s.variant, {"secs": [], "ok": 0, "n": 0, "samples": []})
        d["n"] += 1
        d["ok"] += int(s.ok)
        d["secs"].append(s.seconds)
        d["samples"].append(s)
    for d in out.values():
        d["min"] = min(d["secs"])
        d["median"] = statistics.median(d["secs"])
    return out


def variant_table(samples: list[Sample], threads: int, order: list[str]) -> list[str]:
    stats = summarise(samples, threads)
    ref = stats.get("dbt-cli")
    ddbt = stats.get("dagster-dbt")
    lines = [
        "| variant | runs ok | min s | median s | x CLI (median / min) | x dagster-dbt (median / min) | peak RSS tree MB | event latency p50 / p95 ms | event rows per outcome (all / streamed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in order:
        if v not in stats:
            continue
        d = stats[v]
        ss: list[Sample] = d["samples"]

        def ratio(other: dict[str, Any] | None, d: dict[str, Any] = d) -> str:
            if not other:
                return "-"
            return f"{d['median'] / other['median']:.2f} / {d['min'] / other['min']:.2f}"

        rss = max((s.tree_peak_rss_mb or 0) for s in ss)
        lat = [s.metrics for s in ss if s.metrics.get("latency_p95_ms") is not None]
        lat_s = (
            f"{_fmt(statistics.median(m['latency_p50_ms'] for m in lat), 0)} / {_fmt(statistics.median(m['latency_p95_ms'] for m in lat), 0)}"
            if lat
            else "-"
        )
        rows = [s.metrics for s in ss if s.metrics.get("rows_per_outcome") is not None]
        rows_s = (
            f"{statistics.median(m['rows_per_outcome'] for m in rows):.2f} / {statistics.median(m['streamed_rows_per_outcome'] for m in rows):.2f}"
            if rows
            else "-"
        )
        name = f"{v} *(extrapolated)*" if any(s.extrapolated for s in ss) else v
        lines.append(
            f"| {name} | {d['ok']}/{d['n']} | {_fmt(d['min'])} | {_fmt(d['median'])} | {ratio(ref)} | {ratio(ddbt)} | {_fmt(rss, 0)} | {lat_s} | {rows_s} |"
        )
    return lines


def fetch_cost_table(samples: list[Sample], threads: int) -> list[str]:
    """What fetching runtime metadata costs: each ``*-fetch`` variant against the same variant
    without fetching, measured in the same run (nothing when no fetch variant ran)."""
    stats = summarise(samples, threads)
    pairs = [(v, v.removesuffix("-fetch")) for v in sorted(FETCH_VARIANTS) if v in stats]
    pairs = [(v, base) for v, base in pairs if base in stats]
    if not pairs:
        return []
    lines = [
        "",
        "Runtime metadata (row counts + column schema + lineage), same run:",
        "",
        "| variant | median s | without fetching, median s | x without (median / min) |",
        "|---|---|---|---|",
    ]
    for v, base in pairs:
        d, b = stats[v], stats[base]
        ratio = f"{d['median'] / b['median']:.2f} / {d['min'] / b['min']:.2f}"
        lines.append(f"| {v} | {_fmt(d['median'])} | {_fmt(b['median'])} | {ratio} |")
    return lines


def scaling_table(samples: list[Sample], threads_list: list[int], variants: list[str]) -> list[str]:
    lines = [
        "| variant | " + " | ".join(f"{t} thr median s (min)" for t in threads_list) + " |",
        "|---|" + "---|" * len(threads_list),
    ]
    for v in variants:
        cells = []
        for t in threads_list:
            secs = [s.seconds for s in samples if s.variant == v and s.threads == t]
            cells.append(f"{statistics.median(secs):.1f} ({min(secs):.1f})" if secs else "-")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    ratio_cells = []
    for t in threads_list:
        a = [s.seconds for s in samples if s.variant == "watcher-runner" and s.threads == t]
        b = [s.seconds for s in samples if s.variant == "dbt-cli" and s.threads == t]
        ratio_cells.append(f"{statistics.median(a) / statistics.median(b):.2f}" if a and b else "-")
    lines.append("| watcher-runner / dbt-cli | " + " | ".join(ratio_cells) + " |")
    return lines


def load_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| code location | assets / checks / sensors | loaded: spawn -> snapshot built, min / median s | process wall incl. exit, min / median s | import libs s | definitions module s | resolve repository s | repository snapshot s | max RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for label in labels:
        rs = [r for r in rows if r["label"] == label and r.get("ok")]
        if not rs:
            lines.append(f"| {label} | FAILED | | | | | | | |")
            continue

        def med(key: str, rs: list[dict[str, Any]] = rs) -> str:
            return f"{statistics.median(r['phases'][key] for r in rs):.2f}"

        walls = [r["seconds"] for r in rs]
        loaded = [r["loaded_seconds"] for r in rs]
        lines.append(
            f"| {label} | {rs[0]['assets']} / {rs[0]['checks']} / {rs[0]['sensors']} | {min(loaded):.2f} / {statistics.median(loaded):.2f} | {min(walls):.2f} / {statistics.median(walls):.2f} | "
            f"{med('import_libraries')} | {med('import_definitions_module')} | {med('resolve_repository')} | {med('repository_snapshot')} | {max(r['rss_mb'] for r in rs):.0f} |"
        )
    return lines


def write_chart(
    path: Path, title: str, samples: list[Sample], threads: int, order: list[str], scaling: list[int] | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarise(samples, threads)
    names = [v for v in order if v in stats]
    has_scaling = bool(scaling) and len({s.threads for s in samples}) > 1
    fig, axes = plt.subplots(1, 2 if has_scaling else 1, figsize=(14 if has_scaling else 9, 5.5), squeeze=False)
    ax = axes[0][0]
    if names:
        medians = [stats[v]["median"] for v in names]
        mins = [stats[v]["min"] for v in names]
        colors = [
            "#444444"
            if v == "dbt-cli"
            else "#d98c1f"
            if "dagster-dbt" in v
            else "#999999"
            if v.startswith("per-node")
            else "#2a7ab0"
            for v in names
        ]
        ypos = range(len(names))
        ax.barh(list(ypos), medians, color=colors)
        ax.plot(mins, list(ypos), "k|", markersize=14, label="min")
        labels = [f"{v} (extrap.)" if any(s.extrapolated for s in stats[v]["samples"]) else v for v in names]
        ax.set_yticks(list(ypos), labels)
        ax.invert_yaxis()
        if max(medians) / max(min(medians), 1e-9) > 15:
            ax.set_xscale("log")
        for y, m in zip(ypos, medians, strict=True):
            ax.text(m, y, f" {m:.1f}s", va="center", fontsize=8)
        ax.set_xlabel("end-to-end wall seconds (bar: median, tick: min)")
        ax.set_title(f"{title}: variants at {threads} threads")
        ax.legend(loc="lower right")
    if has_scaling:
        ax2 = axes[0][1]
        for v in dict.fromkeys(s.variant for s in samples):
            pts = []
            for t in scaling or []:
                secs = [s.seconds for s in samples if s.variant == v and s.threads == t]
                if secs:
                    pts.append((t, statistics.median(secs)))
            if len(pts) > 1:
                ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v)
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(scaling or [], [str(t) for t in scaling or []])
        ax2.set_xlabel("dbt threads")
        ax2.set_ylabel("median wall seconds")
        ax2.set_title("thread scaling")
        ax2.legend()
        ax2.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Variants:\n" + "\n".join(f"  {k:24} {v}" for k, v in VARIANTS.items()),
    )
    p.add_argument("--project", choices=sorted(PROJECTS), default="example")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every measurement (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=8, help="dbt threads for the variant comparison (default: %(default)s)"
    )
    p.add_argument(
        "--variants",
        default="default",
        help="comma list, 'default', 'all' or 'none' (default: all but dagster-dbt-cli)",
    )
    p.add_argument("--thread-scaling", action="store_true", help="also run --scaling-variants at --scaling-threads")
    p.add_argument("--scaling-threads", default="1,2,4,8")
    p.add_argument("--scaling-variants", default="dbt-cli,watcher-runner")
    p.add_argument("--scaling-repeat", type=int, default=0, help="repetitions for thread scaling (default: --repeat)")
    p.add_argument(
        "--per-node-sample",
        type=int,
        default=12,
        help="nodes timed for per-node-cli, extrapolated to all (0: all nodes)",
    )
    p.add_argument(
        "--per-node-runner-sample", type=int, default=0, help="nodes timed for per-node-runner (0: all nodes)"
    )
    p.add_argument(
        "--load-time", action="store_true", help="code-location load time (dagster-dbt, watcher, watcher + sensors)"
    )
    p.add_argument(
        "--replay", action="store_true", help="watcher per-node producer overhead (fake dbt, real SQLite instance)"
    )
    p.add_argument("--replay-repeat", type=int, default=0, help="repetitions of --replay (default: --repeat)")
    p.add_argument(
        "--replay-patch-dagster",
        action="store_true",
        help="replay with a benchmark-only fix of dagster's O(n^3) get_output_asset_keys (see _worker.py)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="run --replay (and its sensor ticks) and --load-time under pyinstrument (slower: for hot spots, not timings); text reports in <out-dir>/profiles/",
    )
    p.add_argument(
        "--sensor-ticks", action="store_true", help="one tick of every consumer sensor after a (replayed) producer run"
    )
    p.add_argument("--smoke", action="store_true", help="tiny CI run: example project, 1 repetition, cheap variants")
    p.add_argument("--out-dir", type=Path, default=HERE / "out")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch (default: <out-dir>/work/<project>)")
    p.add_argument(
        "--instance",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="Dagster storage for every run: SQLite in a fresh DAGSTER_HOME (default) or a fresh database on a local PostgreSQL server started for the benchmark (fsync off; needs the postgresql package, see tests/support/deployment.py)",
    )
    p.add_argument(
        "--dagster-home-root",
        type=Path,
        default=None,
        help="put each run's DAGSTER_HOME (SQLite) under this dir, e.g. /dev/shm (default: the run dir, on disk)",
    )
    p.add_argument("--keep-runs", action="store_true", help="keep each run's dbt target and Dagster home")
    p.add_argument(
        "--before-code",
        type=Path,
        default=None,
        help="a checkout whose dagster_watcher the *-before variants run (e.g. `git worktree add /tmp/before main`)",
    )
    args = p.parse_args(argv)
    args.out_dir = args.out_dir.absolute()
    if args.work_dir is not None:
        args.work_dir = args.work_dir.absolute()
    if args.smoke:
        args.project, args.repeat, args.threads = "example", 1, 4
        if args.variants == "default":
            args.variants = ",".join(SMOKE_VARIANTS)
        args.replay = args.sensor_ticks = True
        args.per_node_sample = args.per_node_sample if args.per_node_sample != 12 else 2
    if args.variants == "default":
        args.variant_list = list(DEFAULT_VARIANTS)
    elif args.variants == "all":
        args.variant_list = [v for v in VARIANTS if args.before_code is not None or v not in BEFORE_VARIANTS]
    elif args.variants == "none":
        args.variant_list = []
    else:
        args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in args.variant_list if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.before_code is not None:
        args.before_code = args.before_code.absolute()
        if not (args.before_code / "dagster_watcher").is_dir():
            p.error(f"--before-code {args.before_code} holds no dagster_watcher package")
    elif BEFORE_VARIANTS & set(args.variant_list):
        p.error("the *-before variants need --before-code")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.instance == "postgres":
        sys.path.insert(0, str(REPO))
        from tests.support.deployment import running_postgres

        with running_postgres(database="bench_admin") as server:
            return _main(opts, server)
    return _main(opts, None)


def _main(opts: argparse.Namespace, postgres: Any) -> int:
    started = dt.datetime.now().astimezone()
    project_dir = ensure_project(opts.project)
    out_dir: Path = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    work = (opts.work_dir or out_dir / "work") / opts.project
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(
        opts.project,
        project_dir,
        work,
        opts.threads,
        work / "bench.log",
        keep_runs=opts.keep_runs,
        dagster_home_root=opts.dagster_home_root,
        postgres=postgres,
    )
    bench.patch_dagster = opts.replay_patch_dagster
    if opts.profile:
        bench.profile_dir = out_dir / "profiles"
        bench.profile_dir.mkdir(parents=True, exist_ok=True)
    bench.log.unlink(missing_ok=True)
    header = [
        f"# Benchmark: {opts.project}",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine_line()}",
        f"- versions: {versions_line()}",
        "- Dagster instance: "
        + (
            "PostgreSQL (local server, fsync off), a fresh database per run"
            if postgres is not None
            else f"SQLite in a fresh DAGSTER_HOME per run, {'under ' + str(opts.dagster_home_root) if opts.dagster_home_root else 'on disk'}"
        ),
        f"- project: `{project_dir.relative_to(REPO) if project_dir.is_relative_to(REPO) else project_dir}`",
    ]
    print("\n".join(header), flush=True)
    parse_seconds = parse_project(bench)
    nodes = bench.manifest["nodes"]
    counts = Counter(n["resource_type"] for n in nodes.values())
    header.append(
        f"- nodes: {', '.join(f'{v} {k}s' for k, v in sorted(counts.items()))}; {len(runnable_nodes(bench.manifest))} runnable (per-node variants)"
    )
    header.append(f"- up-front `dbt parse`: {parse_seconds:.1f}s (every run starts from its partial_parse.msgpack)")
    header.append(f"- repetitions: {opts.repeat}; threads: {opts.threads}")
    print(header[-3:], flush=True)

    samples: list[Sample] = []
    sections: list[str] = []
    raw: dict[str, Any] = {
        "project": opts.project,
        "date": started.isoformat(),
        "machine": machine_line(),
        "samples": samples,
    }

    def run_round(variants: list[str], threads_list: list[int], repeat: int) -> None:
        combos = [(v, t) for t in threads_list for v in variants]
        for rep in range(repeat):
            k = rep % max(len(combos), 1)
            for variant, threads in combos[k:] + combos[:k]:  # rotate so noise hits all alike
                s = run_variant(bench, variant, threads, rep, opts)
                samples.append(s)
                lat = s.metrics.get("latency_p95_ms")
                extra = f" latency p95 {lat:.0f} ms" if lat is not None else ""
                print(
                    f"  rep {rep} {variant:24} t{threads}: {s.seconds:7.2f}s {'ok' if s.ok else 'FAILED'}{extra} {s.note}",
                    flush=True,
                )

    if opts.variant_list:
        run_round(opts.variant_list, [opts.threads], opts.repeat)
        sections += [f"## Variants ({opts.threads} threads, end-to-end wall time of fresh processes)", ""]
        sections += variant_table(samples, opts.threads, opts.variant_list)
        sections += fetch_cost_table(samples, opts.threads)
        sections += [
            "",
            *[
                f"- `{v}`: {VARIANTS[v]}"
                + (f" — {s.note}" if (s := next((x for x in samples if x.variant == v and x.note), None)) else "")
                for v in opts.variant_list
            ],
        ]
        per_node = [s for s in samples if s.variant.startswith("per-node") and s.metrics.get("seconds_per_node")]
        for v in ("per-node-cli", "per-node-runner"):
            ss = [s for s in per_node if s.variant == v]
            if ss:
                sections.append(
                    f"- `{v}`: {statistics.median(s.metrics['seconds_per_node'] for s in ss):.2f}s per node (median over repetitions), {ss[0].metrics['nodes']} nodes"
                )
        sections.append("")
    scaling: list[int] | None = None
    if opts.thread_scaling:
        scaling = [int(t) for t in opts.scaling_threads.split(",")]
        svariants = [v.strip() for v in opts.scaling_variants.split(",")]
        # The comparison round already measured these variants at --threads: reuse those samples.
        reuse = all(v in opts.variant_list for v in svariants)
        todo = [t for t in scaling if not (reuse and t == opts.threads)]
        if todo:
            run_round(svariants, todo, opts.scaling_repeat or opts.repeat)
        sections += ["## Thread scaling", ""] + scaling_table(samples, scaling, svariants) + [""]
    if opts.load_time:
        print("code-location load time:", flush=True)
        load_rows = measure_load(bench, opts.repeat)
        raw["load"] = load_rows
        sections += [
            "## Code-location load time (fresh process: import + Definitions resolution + repository snapshot)",
            "",
        ]
        sections += load_table(load_rows) + [""]
    if opts.replay or opts.sensor_ticks:
        print("producer replay:", flush=True)
        rep_data = measure_replay(bench, (opts.replay_repeat or opts.repeat) if opts.replay else 1, opts.sensor_ticks)
        raw["replay"] = rep_data
        rs = [r for r in rep_data["replay"] if r.get("success")]
        if rs:
            sections += [
                "## Producer overhead (watcher writer fed by a fake dbt that reports every node instantly; real SQLite instance"
                + ("; dagster's get_output_asset_keys patched, benchmark only" if opts.replay_patch_dagster else "")
                + ")",
                "",
                "| nodes | per-node writer cost ms (min / median) | stream s (median) | plan (step start -> dbt start) s | whole step s | process s |",
                "|---|---|---|---|---|---|",
                f"| {rs[0]['nodes']} | {min(r['per_node_ms'] for r in rs):.2f} / {statistics.median(r['per_node_ms'] for r in rs):.2f} | "
                f"{statistics.median(r['stream_seconds'] for r in rs):.2f} | {statistics.median(r['plan_seconds'] for r in rs):.2f} | "
                f"{statistics.median(r['step_seconds'] for r in rs):.2f} | {statistics.median(r['process_seconds'] for r in rs):.2f} |",
                "",
            ]
        sens = rep_data.get("sensors")
        if sens and sens.get("ticks"):
            sections += [
                "## Consumer sensor ticks (every sensor evaluated once, then again with its cursor; real SQLite instance)",
                "",
            ]
            sections += [
                "| sensors | tick | total s | per sensor p50 / p95 / max ms | run requests |",
                "|---|---|---|---|---|",
            ]
            for i, t in enumerate(sens["ticks"]):
                sections.append(
                    f"| {sens['sensors']} | {'first (no cursor)' if i == 0 else 'second (cursor)'} | {t['total_seconds']:.2f} | {t['p50_ms']:.1f} / {t['p95_ms']:.1f} / {t['max_ms']:.1f} | {t['run_requests']} |"
                )
            sections += [
                "",
                f"- building the {sens['sensors']} sensor definitions took {sens['build_seconds']:.2f}s",
                "",
            ]

    text = "\n".join(header + [""] + sections)
    md = out_dir / f"{opts.project}.md"
    md.write_text(text + "\n")
    (out_dir / f"{opts.project}.json").write_text(
        json.dumps(raw, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    )
    chart = out_dir / f"{opts.project}.png"
    if samples:
        try:
            write_chart(chart, opts.project, samples, opts.threads, opts.variant_list, scaling)
        except ImportError:
            print("matplotlib is not installed (pip install matplotlib): no chart written", file=sys.stderr)
    print("\n" + text, flush=True)
    print(f"\nwrote {md}" + (f" and {chart}" if chart.exists() else ""), flush=True)
    failed = [s for s in samples if not s.ok]
    if failed:
        print(f"{len(failed)} run(s) FAILED; see {bench.log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
