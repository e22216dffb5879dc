#!/usr/bin/env python
"""Daemon cost of the consumer sensors: the REAL ``dagster-daemon`` and the code server it starts,
serving a synthetic project (``gen_synthetic.py``) with ``build_watcher_sensors``.

For each configuration (models x instance storage x ``use_threads`` x sensor shape x code) the
harness starts a fresh ``DAGSTER_HOME`` (SQLite, or a fresh database on a local PostgreSQL server),
runs ``dagster-daemon run`` until every sensor has been evaluated ``--rounds`` times with nothing to
do, then materializes one model that has a downstream job and times until the daemon has created
that job's run, and stops the daemon. Everything is read back from the instance afterwards:

- **one round** = the k-th tick of every sensor; its wall time is the span from the first of those
  ticks starting to the last one finishing (Dagster's tick records: ``timestamp`` / ``end_timestamp``).
  With ``--interval 0`` every daemon iteration evaluates every sensor, so a round is one iteration.
  Round 1 is the first evaluation (no cursor, sensor state rows created); rounds 2.. are quiet.
- **downstream launch** = the downstream run's creation time minus the materialization's timestamp.

``--code before`` runs the same configuration with another git ref's ``dagster_watcher`` (default
``main``, exported with ``git archive`` and put first on the code server's ``PYTHONPATH``), side by
side with the working tree's (``after``), so before/after are measured in one run. Downstream runs
are queued, never launched (``QueuedRunCoordinator`` with ``max_concurrent_runs: 0``).

    .venv/bin/python benchmarks/bench_daemon.py --models 200,1000 --instances sqlite,postgres \\
        --threads off,on --shapes per-model,per-producer --code before,after --rounds 3
    .venv/bin/python benchmarks/bench_daemon.py --models 5000 --instances postgres --threads on \\
        --shapes per-producer --code after

Output: a Markdown table on stdout and in ``<out-dir>/daemon.md``, raw numbers in ``daemon.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
BIN = Path(sys.executable).parent
DEFS = HERE / "bench_daemon_defs.py"
sys.path.insert(0, str(REPO))

from benchmarks.run import Bench, machine_line, parse_project, versions_line  # noqa: E402

#: Log lines of the sensor daemon (dagster/_daemon/sensor.py) that end one evaluation without runs.
_FINISHED = re.compile(r"Sensor \S+ skipped: |No run requests returned for ")
_DOWNSTREAM_JOB = "bench_downstream_job"


@dataclass(frozen=True)
class Config:
    models: int
    instance: str  # sqlite | postgres
    threads: bool
    shape: str  # per-model (idle sensors stopped) | per-model-all (every sensor running) | per-producer
    code: str  # after | before

    @property
    def name(self) -> str:
        return f"m{self.models}-{self.instance}-{'threads' if self.threads else 'serial'}-{self.shape}-{self.code}"


@dataclass
class Result:
    config: Config
    ok: bool
    sensors: int = 0
    rounds: list[float] | None = None
    """Wall seconds of each complete round (first, then quiet ones)."""
    tick_ms_p50: float = float("nan")
    """Median duration of one quiet tick (its own record's start to end)."""
    launch_seconds: float = float("nan")
    downstream_runs: int = 0
    load_seconds: float = float("nan")
    """Daemon start to its first sensor evaluation (code server start + location load)."""
    watcher_from: str = ""
    error: str = ""

    @property
    def first(self) -> float:
        return self.rounds[0] if self.rounds else float("nan")

    @property
    def quiet(self) -> float:
        quiet = (self.rounds or [])[1:]
        return statistics.median(quiet) if quiet else float("nan")


# ------------------------------------------------------------------------------------------------
# Preparation


def ensure_project(models: int) -> Path:
    project_dir = HERE / "projects" / f"synthetic_{models}"
    if not (project_dir / "dbt_project.yml").is_file():
        print(f"generating synthetic_{models} -> {project_dir}", flush=True)
        subprocess.run(
            [PY, str(HERE / "gen_synthetic.py"), "--nodes", str(models), "--out", str(project_dir)], check=True
        )
    return project_dir


def export_code(ref: str, dest: Path) -> Path:
    """``dagster_watcher`` of ``ref`` (git archive), for the "before" code server's PYTHONPATH."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = dest / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), ref, "dagster_watcher"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return dest


def _dagster_yaml(config: Config, postgres: Any, db: str | None, num_workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "telemetry": {"enabled": False},
        "sensors": {"use_threads": config.threads, "num_workers": num_workers},
        # Downstream runs are created (what the launch time measures), never started.
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": 0},
        },
    }
    if config.instance == "postgres":
        storage = postgres.dagster_storage()
        storage["postgres"]["postgres_db"]["db_name"] = db
        out["storage"] = storage
    return out


def _fresh_home(bench: Bench, config: Config, postgres: Any, num_workers: int) -> Path:
    home = bench.work / "homes" / config.name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    db = None
    if config.instance == "postgres":
        db = f"daemon_{os.getpid()}_{config.name.replace('-', '_')}"
        with contextlib.closing(postgres.connect()) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'drop database if exists "{db}"')
                cur.execute(f'create database "{db}"')
    (home / "dagster.yaml").write_text(json.dumps(_dagster_yaml(config, postgres, db, num_workers), indent=2))
    (home / "workspace.yaml").write_text(
        json.dumps(
            {
                "load_from": [
                    {
                        "python_file": {
                            "relative_path": str(DEFS),
                            "location_name": "bench",
                            "working_directory": str(REPO),
                        }
                    }
                ]
            }
        )
    )
    if postgres is not None:
        os.environ["DAGSTER_PG_PASSWORD"] = postgres.password
    from dagster import DagsterInstance

    # The schema is created here, untimed (a deployment creates it once).
    DagsterInstance.from_config(str(home)).dispose()
    return home


def watched_count(manifest: dict[str, Any]) -> int:
    return sum(
        1
        for n in manifest["nodes"].values()
        if n["resource_type"] in ("model", "seed", "snapshot") and n["config"].get("materialized") != "ephemeral"
    )


# ------------------------------------------------------------------------------------------------
# One configuration


def _finished_evaluations(log: Path) -> int:
    try:
        return len(_FINISHED.findall(log.read_text(errors="replace")))
    except OSError:
        return 0


def measure(bench: Bench, config: Config, *, postgres: Any, opts: argparse.Namespace, baseline: Path | None) -> Result:
    from tests.support.deployment import stop_process_tree

    home = _fresh_home(bench, config, postgres, opts.num_workers)
    info_path = home / "defs_info.json"
    env = bench.base_env()
    env.update(
        DAGSTER_HOME=str(home),
        DW_BENCH_KIND="watcher",
        DW_BENCH_PROJECT_DIR=str(bench.project_dir),
        DW_BENCH_MANIFEST_TARGET=str(bench.parsed_target),
        DW_BENCH_SENSOR_INTERVAL=str(opts.interval),
        DW_BENCH_PER_MODEL="0" if config.shape == "per-producer" else "1",
        DW_BENCH_IDLE="running" if config.shape == "per-model-all" else "",
        DW_BENCH_DOWNSTREAM_EVERY=str(opts.downstream_every),
        DW_BENCH_INFO=str(info_path),
    )
    if config.code == "before":
        assert baseline is not None
        env["PYTHONPATH"] = str(baseline)
    watched = watched_count(bench.manifest)
    expected = 1 if config.shape == "per-producer" else watched + 1  # + the retry coordinator
    log = home / "daemon.log"
    result = Result(config, ok=False, sensors=expected)
    started = time.time()
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + opts.timeout
        while not info_path.exists():  # the code server has loaded the definitions
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("the code server did not load the definitions")
            time.sleep(0.5)
        time.sleep(0.5)
        # The sensors the daemon ticks: the older code declares every sensor running.
        expected = result.sensors = json.loads(info_path.read_text()).get("running_sensors", expected)
        while _finished_evaluations(log) < expected * opts.rounds:
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{_finished_evaluations(log)} evaluations in {opts.timeout}s")
            time.sleep(0.5)
        info = json.loads(info_path.read_text())
        result.watcher_from = info["dagster_watcher"]
        probe_at, launch = _probe_downstream(home, info["downstream"][-1], deadline, daemon)
        result.launch_seconds = launch
        # One more round: the materialization must not be launched twice.
        more = _finished_evaluations(log) + expected
        while _finished_evaluations(log) < more and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the next configuration runs
        result.error = f"{type(exc).__name__}: {exc}"
        probe_at = time.time()
    finally:
        stop_process_tree(daemon, first_signal=signal.SIGINT, grace=30, env_marker=f"DAGSTER_HOME={home}")
    _read_ticks(home, result, probe_at, started)
    result.ok = not result.error and bool(result.rounds)
    return result


def _probe_downstream(home: Path, key_path: list[str], deadline: float, daemon: Any) -> tuple[float, float]:
    """Materialize one model that has a downstream job; seconds until the daemon created that run."""
    from dagster import AssetKey, AssetMaterialization, DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(home)) as instance:
        key = AssetKey(key_path)
        instance.report_runless_asset_event(AssetMaterialization(key, description="bench_daemon probe"))
        event = instance.fetch_materializations(key, limit=1).records[0]
        while True:
            found = instance.get_run_records(filters=RunsFilter(job_name=_DOWNSTREAM_JOB))
            if found:
                return event.timestamp, found[-1].create_timestamp.timestamp() - event.timestamp
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise TimeoutError("the downstream run was not created")
            time.sleep(0.2)


def _read_ticks(home: Path, result: Result, probe_at: float, started: float) -> None:
    from dagster import DagsterInstance, RunsFilter
    from dagster._core.definitions.run_request import InstigatorType

    with DagsterInstance.from_config(str(home)) as instance:
        states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        selector_ids = [s.selector_id for s in states]
        by_sensor = instance.get_batch_ticks(selector_ids, limit=100_000) if selector_ids else {}
        result.downstream_runs = len(instance.get_run_records(filters=RunsFilter(job_name=_DOWNSTREAM_JOB)))
    # (start, end) of each sensor's finished ticks before the probe, oldest first.
    ticks = {
        sid: sorted((t.timestamp, t.end_timestamp) for t in found if t.end_timestamp and t.timestamp < probe_at)
        for sid, found in by_sensor.items()
    }
    if not ticks or len(ticks) < result.sensors:
        result.error = result.error or f"{len(ticks)} of {result.sensors} sensors ticked"
        return
    complete = min(len(t) for t in ticks.values())
    rounds = []
    for k in range(complete):
        kth = [t[k] for t in ticks.values()]
        rounds.append(max(end for _, end in kth) - min(start for start, _ in kth))
    result.rounds = rounds
    quiet = [end - start for found in ticks.values() for start, end in found[1:]]
    if quiet:
        result.tick_ms_p50 = statistics.median(quiet) * 1000
    result.load_seconds = min(t[0][0] for t in ticks.values()) - started


# ------------------------------------------------------------------------------------------------
# Reporting


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def table(results: list[Result]) -> list[str]:
    lines = [
        "| models | sensors | instance | use_threads | shape | code | first round s | quiet round s (median) "
        "| quiet tick p50 ms | downstream launch s | downstream runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.config
        quiet = _fmt(r.quiet) if r.ok else f"failed: {r.error[:80]}"
        lines.append(
            f"| {c.models} | {r.sensors} | {c.instance} | {'on' if c.threads else 'off'} | {c.shape} | {c.code} "
            f"| {_fmt(r.first)} | {quiet} | {_fmt(r.tick_ms_p50, 1)} | {_fmt(r.launch_seconds)} | {r.downstream_runs} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="200,1000", help="comma-separated model counts (synthetic projects)")
    p.add_argument("--instances", default="sqlite,postgres", help="sqlite, postgres or both")
    p.add_argument("--threads", default="off,on", help="sensors use_threads: off, on or both")
    p.add_argument(
        "--shapes",
        default="per-model,per-producer",
        help="per-model (the default shape: sensors of models without downstream jobs declared stopped), "
        "per-model-all (idle_status=RUNNING: every sensor running, the 'before' shape), per-producer",
    )
    p.add_argument("--code", default="after", help="after (working tree), before (--baseline-ref) or both")
    p.add_argument("--baseline-ref", default="main", help="git ref of the 'before' code")
    p.add_argument("--rounds", type=int, default=3, help="rounds before the downstream probe (first + quiet)")
    p.add_argument("--interval", type=int, default=0, help="sensors' minimum_interval_seconds")
    p.add_argument("--num-workers", type=int, default=4, help="sensors num_workers when use_threads is on")
    p.add_argument("--downstream-every", type=int, default=10, help="a downstream job on every n-th model")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--out-dir", type=Path, default=HERE / "out")
    return p.parse_args(argv)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    models = [int(m) for m in _split(opts.models)]
    instances = _split(opts.instances)
    threads = [t == "on" for t in _split(opts.threads)]
    shapes = _split(opts.shapes)
    codes = _split(opts.code)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    work = opts.out_dir / "daemon_work"
    work.mkdir(parents=True, exist_ok=True)
    baseline = export_code(opts.baseline_ref, work / "baseline") if "before" in codes else None
    started = dt.datetime.now(dt.UTC)
    header = [
        "# Daemon cost of the consumer sensors (benchmarks/bench_daemon.py)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_line()}",
        f"- versions: {versions_line()}",
        f"- sensors' minimum_interval_seconds: {opts.interval}; num_workers (use_threads on): {opts.num_workers}; "
        f"a downstream job on every {opts.downstream_every}th model; before = `{opts.baseline_ref}`",
    ]
    print("\n".join(header), flush=True)
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        postgres = None
        if "postgres" in instances:
            from tests.support.deployment import running_postgres

            postgres = stack.enter_context(running_postgres(database="bench_admin"))
        for n in models:
            project_dir = ensure_project(n)
            bench = Bench(f"synthetic-{n}", project_dir, work / f"synthetic_{n}", 8, work / f"synthetic_{n}.log")
            bench.work.mkdir(parents=True, exist_ok=True)
            bench.postgres = postgres
            seconds = parse_project(bench)
            print(
                f"synthetic_{n}: parsed in {seconds:.1f}s, {watched_count(bench.manifest)} watched assets", flush=True
            )
            for inst, thr, shape, code in itertools.product(instances, threads, shapes, codes):
                if shape in ("per-producer", "per-model-all") and code == "before":
                    continue  # the before code has no per-producer shape, and runs every sensor
                config = Config(n, inst, thr, shape, code)
                load = os.getloadavg()[0]
                r = measure(bench, config, postgres=postgres, opts=opts, baseline=baseline)
                results.append(r)
                print(
                    f"  {config.name}: rounds {[round(x, 2) for x in r.rounds or []]}, tick p50 {_fmt(r.tick_ms_p50, 1)} ms, "
                    f"launch {_fmt(r.launch_seconds)} s, runs {r.downstream_runs}, load avg {load:.1f}"
                    + (f", ERROR {r.error}" if r.error else ""),
                    flush=True,
                )
                (opts.out_dir / "daemon.json").write_text(
                    json.dumps({"header": header, "results": [asdict(x) for x in results]}, indent=2, default=str)
                )
    finished = dt.datetime.now(dt.UTC)
    lines = [
        *header,
        f"- finished: {finished:%H:%M} UTC, load average at the end {machine_line().split('load average at start ')[-1]}",
        "",
        *table(results),
    ]
    (opts.out_dir / "daemon.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
