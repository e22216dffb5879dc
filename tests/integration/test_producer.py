"""The producer: one `dbt build`, every node's outcome in Dagster as it finishes (issue 2).

Every test runs real dbt-core + dbt-duckdb against a real Dagster instance on SQLite."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, AssetKey, AssetsDefinition, AssetSelection, DagsterEventType
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from dagster_watcher import DbtWatcherResource, dbt_watcher_assets
from dagster_watcher.invocation import RunnerInvocation
from dagster_watcher.project import profile_fingerprint, recorded_fingerprint
from dagster_watcher.timeline import TIMELINE_FILE

from ..support import EXAMPLE, WatcherRun, run_watcher

MODES = ["runner", "subprocess"]

FAILING = AssetKey("stg_payments")
DOWNSTREAM_OF_FAILING = {AssetKey("orders"), AssetKey("daily_revenue")}
UNRELATED = {
    AssetKey("customers"),
    AssetKey("order_updates"),
    AssetKey("customers_snapshot"),
    AssetKey("stg_customers"),
    AssetKey("stg_orders"),
    AssetKey("raw_customers"),
    AssetKey("raw_orders"),
    AssetKey("raw_payments"),
}


@pytest.mark.parametrize("mode", MODES)
def test_full_build_one_materialization_per_node_and_one_check_result_per_test(
    mode: str, full_runs: dict[str, WatcherRun], shop_assets: AssetsDefinition
) -> None:
    run = full_runs[mode]
    assert run.result.success
    materialized = run.materialized()
    assert sorted(materialized) == sorted(shop_assets.keys), "exactly one materialization per asset"
    checks = run.check_evaluations()
    assert set(checks) == set(shop_assets.check_keys), "exactly one result per dbt test"
    assert run.observations() == {}, "nothing else is recorded for a node that succeeded"

    warn = checks[next(k for k in checks if k.name == "not_null_stg_customers_email")]
    assert not warn.passed and warn.severity == AssetCheckSeverity.WARN
    assert warn.metadata["dagster_watcher/failure_count"].value == 2
    assert all(c.passed for k, c in checks.items() if k.name != "not_null_stg_customers_email")


@pytest.mark.parametrize("mode", MODES)
def test_materialization_metadata_names_the_dbt_node(mode: str, full_runs: dict[str, WatcherRun]) -> None:
    run = full_runs[mode]
    by_key = {
        e.dagster_event.asset_key: e.dagster_event.event_specific_data.materialization.metadata  # type: ignore[union-attr]
        for e in run.events(DagsterEventType.ASSET_MATERIALIZATION)
    }
    md = by_key[AssetKey("customers")]
    assert md["unique_id"].value == "model.shop.customers"
    assert md["dagster_watcher/dbt_status"].value == "success"
    assert md["dagster_watcher/execution_duration"].value > 0
    assert (
        "main" in md["dagster_watcher/relation_name"].value and "customers" in md["dagster_watcher/relation_name"].value
    )
    assert (
        "select" in md["dagster_watcher/compiled_sql"].value.lower()
        and "{{" not in md["dagster_watcher/compiled_sql"].value
    )
    invocation_ids = {m["invocation_id"].value for m in by_key.values()}
    assert len(invocation_ids) == 1, "every node comes from the same single dbt invocation"


def test_asset_and_check_keys_equal_dbt_assets(shop_project: DbtProject, shop_assets: AssetsDefinition) -> None:
    def body(context, dbt: DbtCliResource):  # type: ignore[no-untyped-def]
        yield from dbt.cli(["build"], context=context).stream()

    plain = dbt_assets(manifest=shop_project.manifest_path, project=shop_project)(body)

    assert set(shop_assets.keys) == set(plain.keys)
    assert set(shop_assets.check_keys) == set(plain.check_keys)
    assert {k: shop_assets.asset_deps[k] for k in shop_assets.keys} == {k: plain.asset_deps[k] for k in plain.keys}


def test_defining_assets_leaves_the_garbage_collector_as_it_was(shop_project: DbtProject) -> None:
    def body(context, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context)

    for enabled in (True, False):
        gc.enable() if enabled else gc.disable()
        try:
            dbt_watcher_assets(manifest=shop_project.manifest_path, project=shop_project)(body)
            assert gc.isenabled() is enabled
            assert gc.get_freeze_count() == 0
        finally:
            gc.enable()


def test_fingerprint_vouches_for_the_parse_it_was_recorded_for(shop_project: DbtProject, tmp_path: Path) -> None:
    source = Path(shop_project.manifest_path)
    manifest, sidecar = tmp_path / "manifest.json", tmp_path / "dagster_watcher_profile.json"
    shutil.copy(source, manifest)  # a copy (new mtime) of the same parse
    shutil.copy(source.with_name(sidecar.name), sidecar)
    assert recorded_fingerprint(manifest) == profile_fingerprint(shop_project.profiles_dir, shop_project.target)

    data = json.loads(manifest.read_text())
    data["metadata"]["generated_at"] = "2001-01-01T00:00:00.000000Z"
    manifest.write_text(json.dumps(data))  # another parse
    assert recorded_fingerprint(manifest) is None

    # generated_at is read from the file's head; any other layout falls back to parsing it all.
    manifest.write_text(json.dumps({"nodes": data["nodes"], "metadata": data["metadata"]}))
    assert recorded_fingerprint(manifest) is None
    data["metadata"]["generated_at"] = json.loads(sidecar.read_text())["generated_at"]
    manifest.write_text(json.dumps({"nodes": data["nodes"], "metadata": data["metadata"]}))
    assert recorded_fingerprint(manifest) is not None


@pytest.mark.parametrize("mode", MODES)
def test_materializations_stream_while_dbt_still_runs(mode: str, full_runs: dict[str, WatcherRun]) -> None:
    run = full_runs[mode]
    first_stored = min(e.timestamp for e in run.events(DagsterEventType.ASSET_MATERIALIZATION))
    # dbt's own record of when each node finished executing.
    finished = [
        datetime.fromisoformat(t["completed_at"].replace("Z", "+00:00")).timestamp()
        for r in run.run_results().values()
        for t in r["timing"]
        if t["name"] == "execute" and t.get("completed_at")
    ]
    assert first_stored < max(finished), "the first materialization was stored before dbt finished its last node"


@pytest.mark.parametrize("mode", MODES)
def test_failing_model_error_text_skips_and_unrelated_branches(mode: str, failing_runs: dict[str, WatcherRun]) -> None:
    run = failing_runs[mode]
    assert not run.result.success
    observed = run.observations()

    failed = observed[FAILING]
    assert failed["dagster_watcher/status"] == "error"
    assert "stg_payments failed on purpose" in failed["dagster_watcher/error"]

    for key in DOWNSTREAM_OF_FAILING:
        assert observed[key]["dagster_watcher/status"] == "skipped"
        assert observed[key]["dagster_watcher/skipped_because"] == ["model.shop.stg_payments"]
        assert "stg_payments" in observed[key]["dagster_watcher/error"]

    assert set(observed) == {FAILING, *DOWNSTREAM_OF_FAILING}
    assert set(run.materialized()) == UNRELATED
    assert "stg_payments failed on purpose" in run.step_failure_message()


@pytest.mark.parametrize("mode", MODES)
def test_the_build_leaves_a_timeline_with_one_bar_per_executed_node(
    mode: str, failing_runs: dict[str, WatcherRun]
) -> None:
    run = failing_runs[mode]
    svg = (run.build_dir / TIMELINE_FILE).read_text()
    bars = dict(re.findall(r'<rect class="node" data-unique-id="([^"]+)" data-status="([^"]+)"', svg))
    executed = {u for u, r in run.run_results().items() if r["status"] != "skipped"}
    assert set(bars) == executed, "one bar per node dbt executed (run_results.json), no other"
    assert bars["model.shop.stg_payments"] == "error", "the failed model is marked failed"
    assert "did not run:" in svg and "skipped" in svg, "the skipped descendants are counted under the chart"


def test_subset_materialization_runs_only_the_selected_nodes(shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    # stg_customers and its parent seed only; checks of those assets come along with them.
    selection = AssetSelection.assets("raw_customers", "stg_customers")
    run = run_watcher(shop_assets, tmp_path, selection=selection)
    assert run.result.success
    assert sorted(run.materialized()) == sorted([AssetKey("raw_customers"), AssetKey("stg_customers")])
    executed = set(run.run_results())
    assert executed == {
        "seed.shop.raw_customers",
        "model.shop.stg_customers",
        "test.shop.not_null_stg_customers_email.d7cf761533",
    }, "dbt executed exactly the selected nodes and their checks"
    assert {k.name for k in run.check_evaluations()} == {"not_null_stg_customers_email"}


def test_model_that_fails_to_compile_names_the_model(shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    # flaky_model without flaky_dir makes the example's fail switch raise a compilation error.
    run = run_watcher(shop_assets, tmp_path, dbt_vars={"flaky_model": "stg_orders"})
    assert not run.result.success
    error = run.observations()[AssetKey("stg_orders")]
    assert error["dagster_watcher/status"] == "error"
    assert "Compilation Error" in error["dagster_watcher/error"] and "stg_orders" in error["dagster_watcher/error"]
    assert AssetKey("customers_snapshot") in run.materialized(), "unrelated nodes still build"


def test_wrong_project_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no dbt_project.yml"):
        DbtWatcherResource(project_dir=str(tmp_path))


@pytest.mark.parametrize("mode", MODES)
def test_broken_profile_fails_the_run_with_dbt_error(mode: str, shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text("shop:\n  target: dev\n  outputs:\n    dev:\n      type: nosuchadapter\n")
    run = run_watcher(shop_assets, tmp_path, mode=mode, profiles_dir=str(profiles))
    assert not run.result.success
    message = run.step_failure_message()
    assert "dbt did not complete" in message
    assert "nosuchadapter" in message, message
    assert run.materialized() == []


def test_dbt_killed_mid_run_keeps_finished_nodes_and_reports_the_rest(
    shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    """Subprocess mode: dbt dies (SIGKILL) after the first node finished."""
    killed: list[int] = []
    original_events = __import__("dagster_watcher.invocation", fromlist=["x"]).SubprocessInvocation.events

    def events_then_kill(self):  # type: ignore[no-untyped-def]
        for event in original_events(self):
            yield event
            if event is not None and event.name == "NodeFinished" and not killed and self._process is not None:
                killed.append(self._process.pid)
                os.kill(self._process.pid, signal.SIGKILL)

    mp = pytest.MonkeyPatch()
    mp.setattr("dagster_watcher.invocation.SubprocessInvocation.events", events_then_kill)
    try:
        run = run_watcher(shop_assets, tmp_path, mode="subprocess")
    finally:
        mp.undo()
    assert killed
    assert not run.result.success
    assert "killed by signal 9" in run.step_failure_message()
    materialized = set(run.materialized())
    observed = run.observations()
    assert materialized, "the node that finished before the crash keeps its materialization"
    assert observed and all(o["dagster_watcher/status"] == "lost" for o in observed.values())
    assert materialized.isdisjoint(observed)
    assert materialized | set(observed) == set(shop_assets.keys), "every asset has exactly one outcome"


def test_exception_in_dbt_callback_fails_the_run_instead_of_hanging(
    shop_assets: AssetsDefinition, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dbt swallows exceptions raised in its callbacks; ours must surface, and nothing may hang."""
    original = RunnerInvocation._accept

    def accept_or_raise(self, msg):  # type: ignore[no-untyped-def]
        if msg.info.name == "NodeFinished" and msg.data.node_info.unique_id == "model.shop.customers":
            raise RuntimeError("boom in callback")
        original(self, msg)

    monkeypatch.setattr(RunnerInvocation, "_accept", accept_or_raise)
    run = run_watcher(shop_assets, tmp_path, mode="runner")
    assert not run.result.success
    message = run.step_failure_message()
    assert "boom in callback" in message
    observed = run.observations()
    assert observed[AssetKey("customers")]["dagster_watcher/status"] == "lost"
    assert AssetKey("orders") in run.materialized(), "other nodes keep their events"


def test_two_in_process_invocations_are_serialised(shop_manifest: dict, tmp_path: Path) -> None:
    """dbt's process-global state means two dbtRunner builds at once would mix their events: the
    second waits for the first, and each stream carries only its own invocation's events."""
    seen: dict[str, list[tuple[float, str | None]]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        args = [
            "build",
            "--project-dir",
            str(EXAMPLE),
            "--profiles-dir",
            str(EXAMPLE),
            "--target-path",
            str(tmp_path / name),
            "--select",
            "raw_customers",
            "raw_orders",
        ]
        inv = RunnerInvocation(args, manifest=shop_manifest)
        try:
            for event in inv.stream():
                seen[name].append((time.monotonic(), event.invocation_id))
            assert inv.exit is not None and inv.exit.ok, inv.exit
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    a, b = seen["a"], seen["b"]
    assert len(a) >= 2 and len(b) >= 2
    assert len({i for _, i in a}) == 1 and len({i for _, i in b}) == 1
    assert a[0][1] != b[0][1], "two separate dbt invocations"
    first, second = (a, b) if a[0][0] < b[0][0] else (b, a)
    assert first[-1][0] < second[0][0], "one invocation's events all came before the other's"


def test_runner_mode_reparses_when_the_profile_environment_changed(
    shop_assets: AssetsDefinition, tmp_path: Path, duckdb_path: Path
) -> None:
    """The session manifest was parsed for shop.duckdb (database "shop"). A build against other.duckdb
    must not reuse relation names that point at the old database."""
    os.environ["DAGSTER_WATCHER_DUCKDB_PATH"] = str(tmp_path / "other.duckdb")
    try:
        run = run_watcher(shop_assets, tmp_path, mode="runner")
    finally:
        os.environ["DAGSTER_WATCHER_DUCKDB_PATH"] = str(duckdb_path)
    assert run.result.success
    md = run.events(DagsterEventType.ASSET_MATERIALIZATION)[
        0
    ].dagster_event.event_specific_data.materialization.metadata  # type: ignore[union-attr]
    assert '"other"' in md["dagster_watcher/relation_name"].value


def test_in_process_build_releases_the_warehouse_file(shop_manifest: dict, tmp_path: Path, duckdb_path: Path) -> None:
    """Like a `dbt` process that exits, an in-process build gives the DuckDB file back: consumers and
    later builds in other processes can open it (DuckDB admits one process at a time)."""
    import subprocess
    import sys

    duckdb_path.unlink(missing_ok=True)
    args = ["build", "--project-dir", str(EXAMPLE), "--profiles-dir", str(EXAMPLE)]
    args += ["--target-path", str(tmp_path / "t"), "--select", "raw_customers"]
    invocation = RunnerInvocation(args, manifest=shop_manifest)
    list(invocation.stream())
    assert invocation.exit is not None and invocation.exit.ok
    reader = f"import duckdb; print(duckdb.connect({str(duckdb_path)!r}).execute('select count(*) from raw_customers').fetchone()[0])"
    out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "30"
