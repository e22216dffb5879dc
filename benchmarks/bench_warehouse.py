#!/usr/bin/env python
"""Warehouse-like benchmark: the FHIR topology on PostgreSQL where every model also waits on the server
like a warehouse query (``pg_sleep`` of 0.2-2 s per model, drawn once with a fixed seed, the same in
every variant), 8 threads. Side by side in ONE run, repeated, variants rotated:

- end-to-end wall of a fresh process (as ``run.py``: spawn to reaped exit), ratios to the CLI;
- event latency: dbt finished a node (run_results.json ``completed_at``) -> its event stored;
- time-to-downstream: for 10 models spread over the DAG, each with a downstream asset that reads the
  model's table, the delay from dbt finishing the model to the downstream run being created
  (requested) and started (run record ``start_time``; in-run: the downstream step's start), under a
  real ``dagster-daemon`` (sensor interval 5 s).

    .venv/bin/python benchmarks/bench_warehouse.py --repeat 3
    .venv/bin/python benchmarks/bench_warehouse.py --repeat 1 --variants dbt-cli,watcher-sensors

Needs PostgreSQL's server binaries (``apt-get install postgresql``; ``./dev`` installs them): one
throwaway server holds the warehouse database (recreated before every run) and, with the default
``--instance postgres``, a fresh Dagster storage database per run. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (HERE, REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import run as harness  # noqa: E402  (benchmarks/run.py: process timing, parse state, reporting helpers)

PY = sys.executable
BIN = Path(sys.executable).parent
PROJECT_DIR = HERE / "projects" / "fhir_warehouse"
GENERATOR = ["gen_fhir.py", "--dialect", "postgres", "--latency", "0.2,2.0", "--latency-seed", "13"]
WAREHOUSE_DB = "fhir"
DEFS = HERE / "warehouse_defs.py"


@dataclass(frozen=True)
class Variant:
    description: str
    kind: str = ""
    """``watcher`` / ``dagster-dbt``; empty: the dbt CLI."""
    mode: str = ""
    consumers: str = "none"
    """How the downstream assets start (warehouse_defs.py): none, in-run, eager, sensors."""

    @property
    def daemon(self) -> bool:
        return self.consumers in ("eager", "sensors")


VARIANTS: dict[str, Variant] = {
    "dbt-cli": Variant("`dbt build` CLI (reference)"),
    "watcher-runner": Variant(
        "dagster-watcher, runner mode (in-process dbtRunner), materialize()", "watcher", "runner"
    ),
    "watcher-subprocess": Variant(
        "dagster-watcher, subprocess mode (`dbt --log-format json`), materialize()", "watcher", "subprocess"
    ),
    "dagster-dbt": Variant(
        'dagster-dbt `@dbt_assets` + `dbt.cli(["build"]).stream()`, materialize(); the 10 downstream assets in the '
        "same run (they start when the dbt step ends)",
        "dagster-dbt",
        consumers="in-run",
    ),
    "dagster-dbt-eager": Variant(
        "dagster-dbt, materialize(); the downstream assets have `AutomationCondition.eager()`, launched by an "
        "automation condition sensor in the daemon",
        "dagster-dbt",
        consumers="eager",
    ),
    "watcher-sensors": Variant(
        "dagster-watcher runner mode, materialize(); the downstream jobs launched by `build_watcher_sensors` "
        "in the daemon (one sensor per model, the retry coordinator)",
        "watcher",
        "runner",
        consumers="sensors",
    ),
}


# ------------------------------------------------------------------------------------------------
# Pure analysis (unit-tested in tests/unit/test_bench_warehouse.py)


def completed_at(run_results: Mapping[str, Any]) -> dict[str, float]:
    """unique_id -> epoch seconds when dbt finished executing the node (its ``execute`` timing)."""
    out: dict[str, float] = {}
    for r in run_results.get("results") or []:
        for t in r.get("timing") or []:
            if t.get("name") == "execute" and t.get("completed_at"):
                out[r["unique_id"]] = dt.datetime.fromisoformat(t["completed_at"].replace("Z", "+00:00")).timestamp()
    return out


@dataclass(frozen=True)
class DownstreamStart:
    """When one downstream asset's run was requested and started (epoch seconds; None: never)."""

    model: str
    done_at: float | None
    requested_at: float | None
    started_at: float | None
    ended_at: float | None = None

    @property
    def to_request(self) -> float | None:
        if self.done_at is None or self.requested_at is None:
            return None
        return self.requested_at - self.done_at

    @property
    def to_start(self) -> float | None:
        if self.done_at is None or self.started_at is None:
            return None
        return self.started_at - self.done_at


def first_runs_per_asset(runs: Sequence[Mapping[str, Any]], assets: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """The earliest-created run that targets each asset. A run is a dict with ``assets`` (the asset
    names it materializes) and ``created`` (epoch seconds)."""
    found: dict[str, Mapping[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["created"]):
        for name in run["assets"]:
            if name in assets and name not in found:
                found[name] = run
    return found


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (as run.py's tables), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------------------
# The bench: a PostgreSQL server for the warehouse (and the Dagster storage)


class WarehouseBench(harness.Bench):
    """run.py's Bench, on the warehouse: every run starts on a freshly created warehouse database and,
    with a Dagster storage server, a fresh Dagster database configured for the daemon."""

    server: Any = None
    instance_extra: dict[str, Any] = {}

    def base_env(self) -> dict[str, str]:
        env = super().base_env()
        env.update(
            DAGSTER_WATCHER_PG_HOST=self.server.host,
            DAGSTER_WATCHER_PG_PORT=str(self.server.port),
            DAGSTER_WATCHER_PG_USER=self.server.user,
            DAGSTER_WATCHER_PG_PASSWORD=self.server.password,
            DAGSTER_WATCHER_PG_DBNAME=WAREHOUSE_DB,
            DAGSTER_PG_PASSWORD=self.server.password,
        )
        return env

    def reset_warehouse(self) -> None:
        with contextlib.closing(self.server.connect()) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'drop database if exists "{WAREHOUSE_DB}" with (force)')
                cur.execute(f'create database "{WAREHOUSE_DB}"')

    def fresh_run_dir(self, name: str) -> tuple[Path, dict[str, str]]:
        import yaml

        self.reset_warehouse()
        run_dir, env = super().fresh_run_dir(name)
        config_file = run_dir / "dagster_home" / "dagster.yaml"
        config = yaml.safe_load(config_file.read_text()) or {}
        config.update(self.instance_extra)
        config_file.write_text(yaml.safe_dump(config))
        return run_dir, env


def ensure_project() -> Path:
    if not (PROJECT_DIR / "dbt_project.yml").is_file():
        print(f"generating {PROJECT_DIR}", flush=True)
        subprocess.run([PY, str(HERE / GENERATOR[0]), *GENERATOR[1:], "--out", str(PROJECT_DIR)], check=True)
    return PROJECT_DIR


def downstream_models(manifest: Mapping[str, Any], n: int) -> list[str]:
    """``n`` models spread over the DAG (evenly over a topological order), by name."""
    models = [u for u in harness.runnable_nodes(dict(manifest)) if u.startswith("model.")]
    return [manifest["nodes"][u]["name"] for u in harness.sample_evenly(models, n)]


# ------------------------------------------------------------------------------------------------
# The daemon


@contextlib.contextmanager
def running_daemon(run_dir: Path, env: dict[str, str], log: Path, ready_timeout: float = 300) -> Any:
    """``dagster-daemon run`` on the run's DAGSTER_HOME with the warehouse definitions as its code
    location; yields once every sensor has ticked at least once (the steady state a deployment is in
    before a build starts), and stops it with its code server and run workers afterwards."""
    import yaml
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from tests.support.deployment import stop_process_tree

    workspace = run_dir / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_file": {
                            "relative_path": str(DEFS),
                            "location_name": "warehouse",
                            "working_directory": str(REPO),
                        }
                    }
                ]
            }
        )
    )
    home = env["DAGSTER_HOME"]
    with open(log, "ab") as out:
        out.write(f"\n$ dagster-daemon run -w {workspace}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(home))
    try:
        t0 = time.monotonic()
        settled = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {proc.returncode}; see {log}")
            ticked, total = _sensors_ticked(instance)
            if total and ticked == total:
                settled = settled or time.monotonic()
                # Every sensor known to the daemon has ticked; a second look makes sure the list is complete.
                if time.monotonic() - settled > 3:
                    break
            if time.monotonic() - t0 > ready_timeout:
                raise RuntimeError(f"the daemon's sensors did not all tick within {ready_timeout}s ({ticked}/{total})")
            time.sleep(1)
        yield instance
    finally:
        instance.dispose()
        stop_process_tree(proc, grace=20, env_marker=f"DAGSTER_HOME={home}")


def _sensors_ticked(instance: Any) -> tuple[int, int]:
    from dagster._core.definitions.run_request import InstigatorType

    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    ticked = sum(1 for s in states if instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1))
    return ticked, len(states)


def wait_for_downstream(instance: Any, assets: Sequence[str], since: float, timeout: float) -> None:
    """Until every downstream asset has a finished run created after ``since`` (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _run_dicts(instance, since)
        first = first_runs_per_asset(runs, assets)
        if len(first) == len(assets) and all(r["ended"] is not None for r in first.values()):
            return
        time.sleep(1)


def _run_dicts(instance: Any, since: float = 0) -> list[dict[str, Any]]:
    """Every run as a dict: id, job, the asset names it targets, created/started/ended epoch seconds."""
    out = []
    for rec in instance.get_run_records():
        run = rec.dagster_run
        created = rec.create_timestamp.timestamp()
        if created < since:
            continue
        if run.asset_selection:
            assets = [k.path[-1] for k in run.asset_selection]
        elif run.job_name.startswith("after_") and run.job_name.endswith("_job"):
            assets = [run.job_name[: -len("_job")]]
        else:
            assets = []
        out.append(
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "status": run.status.value,
                "assets": assets,
                "created": created,
                "started": rec.start_time,
                "ended": rec.end_time,
            }
        )
    return out


# ------------------------------------------------------------------------------------------------
# One run of one variant


@dataclass
class Sample:
    variant: str
    rep: int
    seconds: float
    ok: bool
    note: str = ""
    latency_ms: list[float] = field(default_factory=list)
    downstream: list[DownstreamStart] = field(default_factory=list)
    downstream_done_seconds: float | None = None
    """Spawn of the producer -> the last downstream run (or step) ended."""
    metrics: dict[str, Any] = field(default_factory=dict)


def run_variant(bench: WarehouseBench, name: str, rep: int, models: list[str], opts: argparse.Namespace) -> Sample:
    spec = VARIANTS[name]
    run_dir, env = bench.fresh_run_dir(f"{name}-r{rep}")
    sample = Sample(name, rep, float("nan"), False)
    if not spec.kind:
        m = harness.run_process(
            [BIN / "dbt", "build", *bench.dbt_args(opts.threads)], env=env, cwd=bench.project_dir, log=bench.log
        )
        sample.seconds, sample.ok = m.wall, m.code == 0
        bench.done_with(run_dir)
        return sample
    env.update(
        DW_BENCH_KIND=spec.kind,
        DW_BENCH_MODE=spec.mode or "runner",
        DW_BENCH_THREADS=str(opts.threads),
        DW_WH_CONSUMERS=spec.consumers,
        DW_WH_DOWNSTREAM=",".join(models),
        DW_WH_SENSOR_INTERVAL=str(opts.sensor_interval),
    )
    assets = [f"after_{m}" for m in models]
    cmd = [PY, str(Path(__file__).resolve()), "--worker-materialize"]
    if opts.profile:
        (opts.out_dir / "profiles").mkdir(parents=True, exist_ok=True)
        env["DW_BENCH_PROFILE"] = str(opts.out_dir / "profiles" / f"{name}-r{rep}.txt")
    if spec.daemon:
        with running_daemon(run_dir, env, bench.log) as instance:
            m = harness.run_process(cmd, env=env, cwd=REPO, log=bench.log)
            wait_for_downstream(instance, assets, m.spawned_at, opts.downstream_timeout)
    else:
        m = harness.run_process(cmd, env=env, cwd=REPO, log=bench.log)
    sample.seconds, sample.ok = m.wall, m.code == 0
    try:
        analyse(run_dir, sample, models, spec, m.spawned_at)
    except Exception as exc:  # noqa: BLE001 - a broken analysis must not lose the timing
        sample.note = f"analysis failed: {exc!r}"
    bench.done_with(run_dir)
    return sample


def analyse(run_dir: Path, sample: Sample, models: list[str], spec: Variant, spawned_at: float) -> None:
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    results_files = sorted((run_dir / "target").rglob("run_results.json"), key=lambda p: p.stat().st_mtime)
    done = completed_at(json.loads(results_files[-1].read_text())) if results_files else {}
    uid_of = {n["name"]: u for u, n in _MANIFEST.get("nodes", {}).items() if u.startswith("model.")}
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(run_dir / "dagster_home")))
    try:
        runs = _run_dicts(instance)
        producer = min(runs, key=lambda r: r["created"])
        records = instance.all_logs(producer["run_id"])
        step_start: dict[str, float] = {}
        step_end: dict[str, float] = {}
        for rec in records:
            ev = rec.dagster_event
            if ev is None:
                continue
            if ev.event_type == DagsterEventType.STEP_START and ev.step_key:
                step_start[ev.step_key] = rec.timestamp
            elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE) and ev.step_key:
                step_end[ev.step_key] = rec.timestamp
            md: Any = None
            if ev.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                md = ev.event_specific_data.materialization.metadata  # type: ignore[union-attr]
            elif ev.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                md = ev.event_specific_data.metadata  # type: ignore[union-attr]
            elif ev.event_type == DagsterEventType.ASSET_OBSERVATION:
                md = ev.event_specific_data.asset_observation.metadata  # type: ignore[union-attr]
            if md and "unique_id" in md and md["unique_id"].value in done:
                sample.latency_ms.append((rec.timestamp - done[md["unique_id"].value]) * 1000)
        sample.metrics["producer_status"] = producer["status"]
        if spec.consumers == "in-run":
            for m in models:
                key = f"after_{m}"
                sample.downstream.append(
                    DownstreamStart(
                        m, done.get(uid_of.get(m, "")), step_start.get(key), step_start.get(key), step_end.get(key)
                    )
                )
        elif spec.consumers != "none":
            first = first_runs_per_asset([r for r in runs if r is not producer], [f"after_{m}" for m in models])
            for m in models:
                r = first.get(f"after_{m}")
                sample.downstream.append(
                    DownstreamStart(
                        m,
                        done.get(uid_of.get(m, "")),
                        r["created"] if r else None,
                        r["started"] if r else None,
                        r["ended"] if r else None,
                    )
                )
            sample.metrics["downstream_runs"] = len({r["run_id"] for r in first.values()})
        ends = [d.ended_at for d in sample.downstream if d.ended_at is not None]
        if ends and len(ends) == len(models):
            sample.downstream_done_seconds = max(ends) - spawned_at
    finally:
        instance.dispose()


_MANIFEST: dict[str, Any] = {}


# ------------------------------------------------------------------------------------------------
# The producer worker (a fresh process per run)


def worker_materialize() -> int:
    target = os.environ.get("DW_BENCH_PROFILE")
    if not target:
        return _materialize()
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.002)
    profiler.start()
    try:
        return _materialize()
    finally:
        profiler.stop()
        Path(target).write_text(profiler.output_text(unicode=False, color=False, show_all=True))
        Path(target).with_suffix(".flat.txt").write_text(profiler.output_text(unicode=False, color=False, flat=True))


def _materialize() -> int:
    import warehouse_defs
    from dagster import DagsterInstance, materialize

    assets = [warehouse_defs.warehouse_dbt]
    if warehouse_defs.CONSUMERS == "in-run":
        assets += warehouse_defs.downstream_assets
    result = materialize(
        assets, resources=warehouse_defs.resources, instance=DagsterInstance.get(), raise_on_error=False
    )
    return 0 if result.success else 1


# ------------------------------------------------------------------------------------------------
# Reporting


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def summary(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        d = out.setdefault(s.variant, {"samples": []})
        d["samples"].append(s)
    for d in out.values():
        ss: list[Sample] = d["samples"]
        secs = [s.seconds for s in ss]
        lat = [x for s in ss for x in s.latency_ms]
        req = [x.to_request for s in ss for x in s.downstream if x.to_request is not None]
        start = [x.to_start for s in ss for x in s.downstream if x.to_start is not None]
        d.update(
            n=len(ss),
            ok=sum(s.ok for s in ss),
            min=min(secs),
            median=statistics.median(secs),
            lat_p50=percentile(lat, 0.5),
            lat_p95=percentile(lat, 0.95),
            lat_n=len(lat),
            req_p50=percentile(req, 0.5),
            req_p95=percentile(req, 0.95),
            start_p50=percentile(start, 0.5),
            start_p95=percentile(start, 0.95),
            start_max=max(start) if start else None,
            downstream_n=len(start),
            downstream_expected=sum(len(s.downstream) for s in ss),
            done=statistics.median(x)
            if (x := [s.downstream_done_seconds for s in ss if s.downstream_done_seconds])
            else None,
        )
    return out


def table(stats: dict[str, dict[str, Any]], order: list[str]) -> list[str]:
    ref, ddbt = stats.get("dbt-cli"), stats.get("dagster-dbt")
    lines = [
        "| variant | runs ok | min s | median s | x CLI (median / min) | x dagster-dbt (median / min) | event latency p50 / p95 ms | time-to-downstream, run requested p50 / p95 s | time-to-downstream, run started p50 / p95 / max s | spawn -> last downstream done, median s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in order:
        if v not in stats:
            continue
        d = stats[v]

        def ratio(other: dict[str, Any] | None, d: dict[str, Any] = d) -> str:
            return f"{d['median'] / other['median']:.2f} / {d['min'] / other['min']:.2f}" if other else "-"

        lat = f"{_f(d['lat_p50'], 0)} / {_f(d['lat_p95'], 0)}" if d["lat_n"] else "-"
        has_down = d["downstream_expected"] > 0
        missing = d["downstream_expected"] - d["downstream_n"]
        req = f"{_f(d['req_p50'])} / {_f(d['req_p95'])}" if has_down and VARIANTS[v].daemon else "-"
        start = f"{_f(d['start_p50'])} / {_f(d['start_p95'])} / {_f(d['start_max'])}" if has_down else "-"
        if missing:
            start += f" ({missing} never started)"
        lines.append(
            f"| {v} | {d['ok']}/{d['n']} | {_f(d['min'])} | {_f(d['median'])} | {ratio(ref)} | {ratio(ddbt)} | {lat} | {req} | {start} | {_f(d['done'])} |"
        )
    return lines


def goals(stats: dict[str, dict[str, Any]], interval: int) -> list[str]:
    out = []
    cli, runner, sensors = stats.get("dbt-cli"), stats.get("watcher-runner"), stats.get("watcher-sensors")
    if cli and runner:
        r = runner["median"] / cli["median"]
        out.append(
            f"- watcher (runner) wall <= 1.03x the CLI: {r:.3f}x (median/median): **{'met' if r <= 1.03 else 'not met'}**"
        )
    if sensors and sensors["start_p95"] is not None:
        p95 = sensors["start_p95"]
        out.append(
            f"- watcher time-to-downstream p95 (run started) <= sensor interval + 2 s = {interval + 2} s: {p95:.1f} s: "
            f"**{'met' if p95 <= interval + 2 else 'not met'}**"
            + (
                f" (run requested p95 {sensors['req_p95']:.1f} s: {'met' if sensors['req_p95'] <= interval + 2 else 'not met'})"
                if sensors["req_p95"] is not None
                else ""
            )
        )
        for other in ("dagster-dbt", "dagster-dbt-eager"):
            o = stats.get(other)
            if o and o["start_p95"] is not None:
                f = o["start_p95"] / p95 if p95 > 0 else float("inf")
                out.append(
                    f"- watcher time-to-downstream p95 >= 5x shorter than {other}'s ({o['start_p95']:.1f} s): {f:.1f}x: "
                    f"**{'met' if f >= 5 else 'not met'}**"
                )
    for v in ("watcher-runner", "watcher-subprocess"):
        d, ddbt = stats.get(v), stats.get("dagster-dbt")
        if d and ddbt and d["lat_p95"] is not None and ddbt["lat_p95"] is not None:
            out.append(
                f"- {v} event latency p95 <= dagster-dbt's: {d['lat_p95']:.0f} vs {ddbt['lat_p95']:.0f} ms: "
                f"**{'met' if d['lat_p95'] <= ddbt['lat_p95'] else 'not met'}**"
            )
    return out


def write_chart(path: Path, stats: dict[str, dict[str, Any]], order: list[str], interval: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in order if v in stats]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    colors = ["#444444" if v == "dbt-cli" else "#d98c1f" if "dagster-dbt" in v else "#2a7ab0" for v in names]
    y = list(range(len(names)))
    med = [stats[v]["median"] for v in names]
    ax1.barh(y, med, color=colors)
    ax1.plot([stats[v]["min"] for v in names], y, "k|", markersize=14, label="min")
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    for yy, m in zip(y, med, strict=True):
        ax1.text(m, yy, f" {m:.1f}s", va="center", fontsize=8)
    ax1.set_xlabel("end-to-end wall seconds of the producer (bar: median, tick: min)")
    ax1.set_title("FHIR on PostgreSQL, 0.2-2 s wait per model, 8 threads")
    ax1.legend(loc="lower right")
    down = [v for v in names if stats[v]["downstream_n"]]
    yd = list(range(len(down)))
    p50 = [stats[v]["start_p50"] for v in down]
    p95 = [stats[v]["start_p95"] for v in down]
    ax2.barh([i - 0.2 for i in yd], p50, height=0.4, color="#7fb3d5", label="p50")
    ax2.barh([i + 0.2 for i in yd], p95, height=0.4, color="#1f618d", label="p95")
    for i, (a, b) in enumerate(zip(p50, p95, strict=True)):
        ax2.text(a, i - 0.2, f" {a:.1f}s", va="center", fontsize=8)
        ax2.text(b, i + 0.2, f" {b:.1f}s", va="center", fontsize=8)
    ax2.axvline(
        interval + 2, color="#c0392b", linestyle="--", linewidth=1, label=f"sensor interval + 2 s = {interval + 2} s"
    )
    ax2.set_yticks(yd, down)
    ax2.invert_yaxis()
    ax2.set_xlabel("model finished in dbt -> its downstream run started, seconds")
    ax2.set_title("time-to-downstream (10 models spread over the DAG)")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Variants:\n" + "\n".join(f"  {k:20} {v.description}" for k, v in VARIANTS.items()),
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--variants", default="all", help="comma list or 'all' (default)")
    p.add_argument("--downstream", type=int, default=10, help="models with a downstream asset (default: %(default)s)")
    p.add_argument(
        "--sensor-interval", type=int, default=5, help="sensors' minimum_interval_seconds (default: %(default)s)"
    )
    p.add_argument(
        "--dequeue-interval",
        type=int,
        default=1,
        help="the queued run coordinator's dequeue_interval_seconds (Dagster's default: 5; default here: %(default)s)",
    )
    p.add_argument(
        "--downstream-timeout", type=float, default=120, help="seconds to wait for downstream runs after the producer"
    )
    p.add_argument(
        "--instance", choices=["postgres", "sqlite"], default="postgres", help="Dagster storage (default: %(default)s)"
    )
    p.add_argument("--out-dir", type=Path, default=HERE / "out")
    p.add_argument("--keep-runs", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run each producer under pyinstrument (slower: for hot spots, not timings); reports in <out-dir>/profiles/",
    )
    p.add_argument("--worker-materialize", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out_dir = args.out_dir.absolute()
    args.variant_list = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.worker_materialize:
        return worker_materialize()
    from tests.support.deployment import running_postgres

    with running_postgres(user="bench", database="bench_admin") as server:
        return _main(opts, server)


def _main(opts: argparse.Namespace, server: Any) -> int:
    started = dt.datetime.now().astimezone()
    load_at_start = os.getloadavg()
    project_dir = ensure_project()
    out_dir: Path = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work" / "warehouse"
    work.mkdir(parents=True, exist_ok=True)
    bench = WarehouseBench(
        "warehouse",
        project_dir,
        work,
        opts.threads,
        work / "bench.log",
        keep_runs=opts.keep_runs,
        postgres=server if opts.instance == "postgres" else None,
    )
    bench.server = server
    bench.instance_extra = {
        "run_queue": {"dequeue_interval_seconds": opts.dequeue_interval},
        "sensors": {"use_threads": True, "num_workers": 4},
    }
    bench.log.unlink(missing_ok=True)
    os.environ["DAGSTER_PG_PASSWORD"] = server.password
    bench.reset_warehouse()
    parse_seconds = harness.parse_project(bench)
    _MANIFEST.update(bench.manifest)
    models = downstream_models(bench.manifest, opts.downstream)
    generator = json.loads((project_dir / "generator.json").read_text())
    lat = generator.get("latency") or {}
    header = [
        "# Benchmark: FHIR on PostgreSQL (warehouse-like)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M %Z}",
        f"- machine: {harness.machine_line()}",
        f"- versions: {harness.versions_line()}, dbt-postgres {_version('dbt-postgres')}",
        f"- warehouse: local PostgreSQL {_server_version(server)} (fsync off), the database recreated before every run",
        "- Dagster instance: "
        + (
            "PostgreSQL on the same server, a fresh database per run"
            if opts.instance == "postgres"
            else "SQLite in a fresh DAGSTER_HOME per run"
        )
        + f"; queued run coordinator, dequeue every {opts.dequeue_interval} s; sensors on 4 threads; DefaultRunLauncher",
        f"- project: `{project_dir.relative_to(REPO)}` (`benchmarks/{' '.join(GENERATOR)}`): every model first waits "
        f"{lat.get('low')}-{lat.get('high')} s (`pg_sleep`, seed {lat.get('seed')}; {lat.get('total_seconds')} s in all)",
        f"- up-front `dbt parse`: {parse_seconds:.1f}s; repetitions: {opts.repeat}; threads: {opts.threads}; "
        f"sensor interval {opts.sensor_interval} s",
        f"- downstream models ({len(models)}): {', '.join(f'`{m}`' for m in models)}",
    ]
    print("\n".join(header), flush=True)
    samples: list[Sample] = []
    order = opts.variant_list
    for rep in range(opts.repeat):
        k = rep % len(order)
        for v in order[k:] + order[:k]:
            s = run_variant(bench, v, rep, models, opts)
            samples.append(s)
            st = [x.to_start for x in s.downstream if x.to_start is not None]
            extra = f" to-downstream p95 {percentile(st, 0.95):.1f}s" if st else ""
            lat95 = percentile(s.latency_ms, 0.95)
            extra += f" latency p95 {lat95:.0f} ms" if lat95 is not None else ""
            print(f"  rep {rep} {v:20} {s.seconds:7.2f}s {'ok' if s.ok else 'FAILED'}{extra} {s.note}", flush=True)
    stats = summary(samples)
    load_at_end = os.getloadavg()
    body = [
        f"- load average at start {' / '.join(f'{x:.1f}' for x in load_at_start)}, at end {' / '.join(f'{x:.1f}' for x in load_at_end)} (the machine is shared: ratios within this run are the measure)",
        "",
        f"## Variants ({opts.threads} threads)",
        "",
        *table(stats, order),
        "",
        *[f"- `{v}`: {VARIANTS[v].description}" for v in order],
        "",
        "## Goals",
        "",
        *goals(stats, opts.sensor_interval),
        "",
    ]
    text = "\n".join(header + body)
    (out_dir / "warehouse.md").write_text(text + "\n")
    (out_dir / "warehouse.json").write_text(
        json.dumps(
            {"date": started.isoformat(), "models": models, "samples": [asdict(s) for s in samples]},
            indent=1,
            default=str,
        )
    )
    chart = out_dir / "warehouse.png"
    try:
        write_chart(chart, stats, order, opts.sensor_interval)
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
    print("\n" + text, flush=True)
    print(f"\nwrote {out_dir / 'warehouse.md'}" + (f" and {chart}" if chart.exists() else ""), flush=True)
    return 0 if all(s.ok for s in samples) else 1


def _version(pkg: str) -> str:
    from importlib.metadata import version

    try:
        return version(pkg)
    except Exception:  # noqa: BLE001
        return "?"


def _server_version(server: Any) -> str:
    with contextlib.closing(server.connect()) as conn, conn.cursor() as cur:
        cur.execute("show server_version")
        return str(cur.fetchone()[0]).split()[0]


if __name__ == "__main__":
    sys.exit(main())
