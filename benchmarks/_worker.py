"""Child-process entry points of the benchmark harness (``run.py`` starts each in a fresh Python process
so every measurement pays what a user pays: interpreter start, imports, definition loading).

    _worker.py prepare                      the up-front parse: prepare_manifest(force=True) for bench_defs
    _worker.py materialize                  materialize() the bench_defs assets (env-configured)
    _worker.py per-node-runner NODES OUT    one in-process dbtRunner call per node, pre-parsed manifest
    _worker.py load OUT                     code-location load: import bench_defs + resolve + snapshot
    _worker.py replay OUT                   producer overhead: the watcher's writer fed by a fake dbt
    _worker.py sensor-ticks OUT             evaluate every consumer sensor once (twice) on DAGSTER_HOME

Results go to the JSON file OUT; the harness measures the process wall time itself.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _dump(out: str, data: dict) -> None:
    Path(out).write_text(json.dumps(data, indent=1, default=str))


def cmd_prepare() -> int:
    """Parse the project the way bench_defs' ``prepare_manifest`` would (same DbtProject, same env), so
    its fingerprint sidecar is valid for every worker and no timed run parses again."""
    from dagster_dbt import DbtProject

    from dagster_watcher.project import prepare_manifest

    project_dir = Path(os.environ["DW_BENCH_PROJECT_DIR"])
    # Same arguments as bench_defs.project.
    project = DbtProject(
        project_dir=project_dir, profiles_dir=project_dir, target_path=os.environ["DW_BENCH_MANIFEST_TARGET"]
    )
    prepare_manifest(project, force=True)
    return 0


def cmd_materialize() -> int:
    import bench_defs
    from dagster import DagsterInstance, materialize

    instance = DagsterInstance.get()
    result = materialize(
        [bench_defs.bench_dbt_assets], resources=bench_defs.resources, instance=instance, raise_on_error=False
    )
    return 0 if result.success else 1


def cmd_per_node_runner(nodes_file: str, out: str) -> int:
    """One dbtRunner invocation per node, all in this process, each fed the pre-parsed manifest (the
    cheapest way to run dbt once per node: no process start, no parse)."""
    t_imports = time.perf_counter()
    from dbt.cli.main import dbtRunner

    from dagster_watcher._compat import dbt_manifest_from_json

    spec = json.loads(Path(nodes_file).read_text())
    manifest_json = json.loads(Path(spec["manifest"]).read_text())
    os.environ["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    setup = time.perf_counter() - T_START
    calls = []
    failed = []
    for select in spec["selects"]:
        t0 = time.perf_counter()
        res = dbtRunner(manifest=dbt_manifest_from_json(manifest_json)).invoke(
            ["build", "--select", select, "--indirect-selection", "buildable", "--quiet", *spec["common_args"]]
        )
        calls.append(time.perf_counter() - t0)
        if not res.success:
            failed.append(select)
    _dump(out, {"setup_seconds": setup, "import_seconds": t_imports - T_START, "calls": calls, "failed": failed})
    return 0 if not failed else 1


def cmd_load(out: str) -> int:
    """What a code server does when it loads the location: import the module (which builds the
    asset definitions from the manifest), resolve the Definitions into a repository with its jobs,
    and build the snapshot the webserver/daemon receive."""
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    import dagster  # noqa: F401
    import dagster_dbt  # noqa: F401

    import dagster_watcher  # noqa: F401

    phases["import_libraries"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import bench_defs

    phases["import_definitions_module"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    repo = bench_defs.defs.get_repository_def()
    jobs = repo.get_all_jobs()
    phases["resolve_repository"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from dagster._core.remote_representation.external_data import RepositorySnap

    snap = RepositorySnap.from_def(repo)
    phases["repository_snapshot"] = time.perf_counter() - t0
    phases["in_process_total"] = time.perf_counter() - T_START
    _dump(
        out,
        {
            "loaded_at": time.time(),
            "phases": phases,
            "assets": len(bench_defs.bench_dbt_assets.keys),
            "checks": len(bench_defs.bench_dbt_assets.check_keys),
            "jobs": len(jobs),
            "sensors": len(snap.sensors),
        },
    )
    return 0


def _topological(manifest: dict) -> list[str]:
    """Every node of the manifest, parents first (dbt's own finish order respects this too)."""
    parent_map = manifest.get("parent_map") or {}
    order: list[str] = []
    seen: set[str] = set()
    for start in sorted(manifest["nodes"]):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(parent_map.get(start, ()))))]
        while stack:
            node, parents = stack[-1]
            for p in parents:
                if p not in seen:
                    seen.add(p)
                    stack.append((p, iter(sorted(parent_map.get(p, ())))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


class _FakeInvocation:
    """Stands in for dbt: yields one NodeFinished (success/pass) per expected node as fast as the
    writer consumes them, so the step's time is the watcher's own per-node cost (normaliser, event
    mapping, Dagster event writes) without dbt's."""

    mode = "replay"

    def __init__(self, manifest: dict, expected: frozenset[str]) -> None:
        self.manifest = manifest
        self.expected = expected
        self.exit = None
        self.t_first = self.t_end = None

    def stream(self):
        from dagster_watcher.dbt_normalizer import RawDbtEvent
        from dagster_watcher.invocation import InvocationExit

        nodes = {**self.manifest["nodes"], **(self.manifest.get("unit_tests") or {})}
        # Unit tests first: dbt runs a model's unit tests before the model.
        order = [u for u in self.manifest.get("unit_tests") or {} if u in self.expected]
        order += [u for u in _topological(self.manifest) if u in self.expected]
        self.t_first = time.time()
        for i, unique_id in enumerate(order):
            node = nodes[unique_id]
            is_test = node["resource_type"] in ("test", "unit_test")
            now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"
            yield RawDbtEvent(
                "NodeFinished",
                {
                    "node_info": {
                        "unique_id": unique_id,
                        "resource_type": node["resource_type"],
                        "node_relation": {"relation_name": node.get("relation_name")},
                    },
                    "run_result": {
                        "status": "pass" if is_test else "success",
                        "message": "PASS" if is_test else "OK",
                        "execution_time": 0.01,
                        "adapter_response": {} if is_test else {"_message": "OK", "rows_affected": 100},
                        "thread": f"Thread-{i % 8 + 1}",
                        "num_failures": 0 if is_test else None,
                        "timing_info": [
                            {"name": "compile", "started_at": now, "completed_at": now},
                            {"name": "execute", "started_at": now, "completed_at": now},
                        ],
                    },
                },
                "replay-invocation",
            )
        self.t_end = time.time()
        self.exit = InvocationExit(ok=True, completed=True)

    def events(self):
        # What the producer reads (DbtInvocation.events: stream() plus idle ticks; a fake is never idle).
        return self.stream()

    def cancel(self) -> None:
        pass


def _patch_dagster_output_asset_keys() -> None:
    """BENCHMARK-ONLY monkeypatch (DW_BENCH_PATCH_DAGSTER=1), to measure what the producer costs once
    a Dagster hot spot is fixed; dagster_watcher itself patches nothing.

    dagster 1.13's ``StepExecutionContext.get_output_asset_keys`` is called for EVERY ``Output`` a step
    yields (``_step_output_error_checked_user_event_sequence``, execute_step.py:239) and loops over
    every step output, calling ``AssetLayer.get_selected_entity_keys_for_node`` inside the loop, which
    rebuilds the set of all the node's asset and check keys (``AssetsDefinition.asset_and_check_keys``)
    each time: O(outputs x keys) per Output, O(n^3) for a step with n outputs. The set it returns is
    fixed for the step, so computing it once per step context gives the same answer."""
    from dagster._core.execution.context.system import StepExecutionContext

    original = StepExecutionContext.get_output_asset_keys

    def get_output_asset_keys(self):  # type: ignore[no-untyped-def]
        cached = self.__dict__.get("_dw_bench_output_asset_keys")
        if cached is None:
            cached = self.__dict__["_dw_bench_output_asset_keys"] = original(self)
        return cached

    StepExecutionContext.get_output_asset_keys = get_output_asset_keys  # type: ignore[method-assign]


def cmd_replay(out: str, ticks_out: str | None = None) -> int:
    import bench_defs
    from dagster import DagsterEventType, DagsterInstance, materialize

    from dagster_watcher import DbtWatcherResource

    if os.environ.get("DW_BENCH_PATCH_DAGSTER") == "1":
        _patch_dagster_output_asset_keys()

    fakes: list[_FakeInvocation] = []
    assets = bench_defs.bench_dbt_assets
    # The plan's expected nodes are exactly the assets + checks of the definition.
    uids = {assets.get_asset_spec(k).metadata["dagster_dbt/unique_id"] for k in assets.keys}
    uids |= {(assets.get_spec_for_check_key(c).metadata or {}).get("dagster_dbt/unique_id") for c in assets.check_keys}
    # Tests that are no asset check are recorded too (observed on their parents): report them as well.
    manifest_json = json.loads(Path(bench_defs.project.manifest_path).read_text())
    uids |= {u for u, n in manifest_json["nodes"].items() if n.get("resource_type") == "test"}
    uids |= set(manifest_json.get("unit_tests") or {})

    class ReplayResource(DbtWatcherResource):
        def make_invocation(self, args, manifest, fetch=None):  # type: ignore[override]
            fake = _FakeInvocation(dict(manifest or {}), frozenset(uids))
            fakes.append(fake)
            return fake  # type: ignore[return-value]

    res = bench_defs.resources["dbt_watcher"]
    replay = ReplayResource(
        project_dir=res.project_dir,
        profiles_dir=res.profiles_dir,
        invocation_mode="runner",
        threads=res.threads,
        target_path=res.target_path,
        progress=os.environ.get("DW_BENCH_PROGRESS", "1") == "1",
    )

    instance = DagsterInstance.get()
    t0 = time.time()
    result = materialize([assets], resources={"dbt_watcher": replay}, instance=instance, raise_on_error=False)
    t1 = time.time()
    records = instance.all_logs(result.run_id)
    step_start = next(
        r.timestamp for r in records if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_START
    )
    step_end = next(
        r.timestamp
        for r in records
        if r.dagster_event
        and r.dagster_event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)
    )
    fake = fakes[0]
    n = len(uids)
    _dump(
        out,
        {
            "success": result.success,
            "nodes": n,
            "materialize_seconds": t1 - t0,
            "plan_seconds": fake.t_first - step_start,
            "stream_seconds": fake.t_end - fake.t_first,
            "step_seconds": step_end - step_start,
            "per_node_ms": (fake.t_end - fake.t_first) / n * 1000,
            "dagster_patched": os.environ.get("DW_BENCH_PATCH_DAGSTER") == "1",
            "run_id": result.run_id,
        },
    )
    if ticks_out:
        # Same process (saves a start-up): the sensors read the run just written.
        cmd_sensor_ticks(ticks_out)
    return 0 if result.success else 1


def cmd_sensor_ticks(out: str) -> int:
    import bench_defs
    from dagster import DagsterInstance, build_sensor_context

    from dagster_watcher import build_watcher_sensors

    instance = DagsterInstance.get()
    t0 = time.perf_counter()
    sensors = build_watcher_sensors(bench_defs.bench_dbt_assets)
    build_seconds = time.perf_counter() - t0
    ticks = []
    cursors: dict[str, str | None] = {s.name: None for s in sensors}
    for _ in range(2):
        per_sensor = []
        requests = 0
        t_tick = time.perf_counter()
        for sensor in sensors:
            t = time.perf_counter()
            ctx = build_sensor_context(instance=instance, cursor=cursors[sensor.name], sensor_name=sensor.name)
            data = sensor.evaluate_tick(ctx)
            per_sensor.append(time.perf_counter() - t)
            cursors[sensor.name] = data.cursor
            requests += len(data.run_requests or [])
        total = time.perf_counter() - t_tick
        per_sensor.sort()
        ticks.append(
            {
                "total_seconds": total,
                "p50_ms": per_sensor[len(per_sensor) // 2] * 1000,
                "p95_ms": per_sensor[int(len(per_sensor) * 0.95)] * 1000,
                "max_ms": per_sensor[-1] * 1000,
                "run_requests": requests,
            }
        )
    _dump(out, {"sensors": len(sensors), "build_seconds": build_seconds, "ticks": ticks})
    return 0


def main(argv: list[str]) -> int:
    cmd, *rest = argv
    if cmd == "prepare":
        return cmd_prepare()
    if cmd == "materialize":
        return cmd_materialize()
    if cmd == "per-node-runner":
        return cmd_per_node_runner(*rest)
    if cmd == "load":
        return cmd_load(*rest)
    if cmd == "replay":
        return cmd_replay(*rest)
    if cmd == "sensor-ticks":
        return cmd_sensor_ticks(*rest)
    raise SystemExit(f"unknown worker command {cmd!r}")


def _profiled_main(argv: list[str]) -> int:
    """DW_BENCH_PROFILE=FILE: run the command under pyinstrument and write its text report to FILE
    (how the hot spots in the README were found)."""
    target = os.environ.get("DW_BENCH_PROFILE")
    if not target:
        return main(argv)
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.002)
    profiler.start()
    try:
        return main(argv)
    finally:
        profiler.stop()
        Path(target).write_text(profiler.output_text(unicode=False, color=False, show_all=True))
        Path(target).with_suffix(".flat.txt").write_text(profiler.output_text(unicode=False, color=False, flat=True))


if __name__ == "__main__":
    sys.exit(_profiled_main(sys.argv[1:]))
