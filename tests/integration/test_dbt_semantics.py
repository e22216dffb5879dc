"""Exactly dbt's semantics (issue 11): what the watcher records is what dbt was told to run. User
selection flags, slim CI, unit tests, tests without checks, freshness gating, both invocation modes
building the same thing. Real dbt on DuckDB, a real SQLite Dagster instance."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, AssetSelection, DagsterEventType
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject

from dagster_watcher import DbtWatcherResource, build_watcher_sensors, dbt_watcher_assets, prepare_manifest

from ..support import Sensors, WatcherRun, copy_project, run_watcher

MODES = ["runner", "subprocess"]
# Every build here uses the session's DuckDB path (a fresh file per build unless told otherwise).
pytestmark = pytest.mark.usefixtures("duckdb_path")
STATUS, REASON, TEST, SKIPPED_BECAUSE = (
    "dagster_watcher/status",
    "dagster_watcher/reason",
    "dagster_watcher/test",
    "dagster_watcher/skipped_because",
)
UNIT_TEST = "unit_test.shop.stg_payments.stg_payments_converts_cents_to_dollars"
EXCLUDED_ASSETS = {AssetKey("stg_payments"), AssetKey("orders"), AssetKey("daily_revenue")}
EXCLUDED_CHECKS = {
    "unique_stg_payments_payment_id",
    "unique_orders_order_id",
    "accepted_values_orders_status__placed__shipped__completed__returned__return_pending",
    "relationships_orders_customer_id__customer_id__ref_customers_",
    "assert_order_amounts_non_negative",
}


def statuses(run: WatcherRun) -> dict[AssetKey, str]:
    return {key: md[STATUS] for key, md in run.observations().items()}


def no_retry_requested(assets: AssetsDefinition, run: WatcherRun) -> None:
    sensors = Sensors(build_watcher_sensors(assets), run.instance)
    assert sensors.tick_all() == [], "a round of every consumer sensor after the run requests no retry"


def project_assets(project: DbtProject, **kwargs: Any) -> AssetsDefinition:
    @dbt_watcher_assets(manifest=project.manifest_path, project=project, **kwargs)
    def shop(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context)

    return shop


def scratch_project(tmp_path: Path, name: str = "parse") -> tuple[Path, DbtProject]:
    project_dir = copy_project(tmp_path)
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=tmp_path / name)
    prepare_manifest(project)
    return project_dir, project


# -- user selection --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_user_exclude_is_not_selected_never_lost_and_never_retried(
    mode: str, shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    run = run_watcher(shop_assets, tmp_path, mode=mode, extra_flags=["--exclude", "stg_payments+"])
    assert run.result.success, run.step_failure_message() if not run.result.success else ""
    outcome = statuses(run)
    assert "lost" not in outcome.values()
    assert {k for k, s in outcome.items() if s == "not_selected"} == EXCLUDED_ASSETS
    for key in EXCLUDED_ASSETS:
        assert "--exclude stg_payments+" in run.observations()[key][REASON]
    checks = {md[TEST]: md for _, md in run.test_observations() if md[STATUS] == "not_selected"}
    assert set(checks) == EXCLUDED_CHECKS
    assert all("--exclude stg_payments+" in md[REASON] for md in checks.values())
    assert set(run.materialized()) == set(shop_assets.keys) - EXCLUDED_ASSETS
    assert not any(u.startswith("model.shop.stg_payments") for u in run.run_results())
    no_retry_requested(shop_assets, run)


def test_user_select_narrows_a_full_build_and_a_dagster_subset(shop_project: DbtProject, tmp_path: Path) -> None:
    @dbt_watcher_assets(manifest=shop_project.manifest_path, project=shop_project)
    def narrowed(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context, extra_args=["--select", "raw_customers", "stg_customers"])

    full = run_watcher(narrowed, tmp_path / "full")
    assert full.result.success
    assert set(full.run_results()) == {
        "seed.shop.raw_customers",
        "model.shop.stg_customers",
        "test.shop.not_null_stg_customers_email.d7cf761533",
    }, "the user's --select narrowed the whole build to its nodes (and their tests)"
    assert sorted(full.materialized()) == [AssetKey("raw_customers"), AssetKey("stg_customers")]
    assert set(statuses(full).values()) == {"not_selected"}

    subset = run_watcher(
        narrowed,
        tmp_path / "subset",
        selection=AssetSelection.assets("stg_customers", "customers", "stg_orders"),
        fresh_database=False,
    )
    assert subset.result.success
    assert set(subset.run_results()) == {
        "model.shop.stg_customers",
        "test.shop.not_null_stg_customers_email.d7cf761533",
    }, "the Dagster subset AND the user's --select, never their union"
    assert statuses(subset) == {AssetKey("customers"): "not_selected", AssetKey("stg_orders"): "not_selected"}


def test_slim_ci_builds_only_the_changed_model_its_children_and_their_tests(tmp_path: Path) -> None:
    project_dir, prod = scratch_project(tmp_path, "prod")
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(prod.manifest_path, state / "manifest.json")
    first = run_watcher(project_assets(prod), tmp_path / "first", project_dir=project_dir)
    assert first.result.success

    orders_sql = project_dir / "models" / "marts" / "orders.sql"
    orders_sql.write_text(orders_sql.read_text().replace("as amount", "as amount -- changed"))
    ci = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=tmp_path / "ci")
    prepare_manifest(ci)
    assets = project_assets(ci)
    run = run_watcher(
        assets,
        tmp_path / "ci_run",
        project_dir=project_dir,
        fresh_database=False,
        state_path=str(state),
        extra_flags=["--select", "state:modified+"],
    )
    assert run.result.success
    executed = set(run.run_results())
    assert {u for u in executed if not u.startswith("test.")} == {"model.shop.orders", "model.shop.daily_revenue"}
    manifest = json.loads(Path(ci.manifest_path).read_text())
    for test in (u for u in executed if u.startswith("test.")):
        parents = set(manifest["nodes"][test]["depends_on"]["nodes"])
        assert parents & {"model.shop.orders", "model.shop.daily_revenue"}, test
    assert sorted(run.materialized()) == [AssetKey("daily_revenue"), AssetKey("orders")]
    outcome = statuses(run)
    assert "lost" not in outcome.values()
    assert set(outcome) == set(assets.keys) - {AssetKey("orders"), AssetKey("daily_revenue")}
    assert all("state:modified+" in run.observations()[k][REASON] for k in outcome)
    no_retry_requested(assets, run)


# -- unit tests and tests without checks ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_failing_unit_test_skips_its_model_names_itself_and_is_not_retried(
    mode: str, shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    run = run_watcher(shop_assets, tmp_path, mode=mode, dbt_vars={"broken_logic": "stg_payments"})
    assert not run.result.success
    observed = run.observations()
    assert observed[AssetKey("stg_payments")][STATUS] == "skipped"
    assert observed[AssetKey("stg_payments")][SKIPPED_BECAUSE] == [UNIT_TEST]
    for key in (AssetKey("orders"), AssetKey("daily_revenue")):
        assert observed[key][STATUS] == "skipped" and UNIT_TEST in observed[key][SKIPPED_BECAUSE]
    assert "stg_payments_converts_cents_to_dollars" in observed[AssetKey("orders")]["dagster_watcher/error"]
    unit = [(k, md) for k, md in run.test_observations() if md[TEST] == "stg_payments_converts_cents_to_dollars"]
    assert [(k, md[STATUS]) for k, md in unit] == [(AssetKey("stg_payments"), "fail")], (
        "the unit test's verdict is recorded on its model"
    )
    no_retry_requested(shop_assets, run)


def test_a_subset_runs_the_models_unit_test_and_its_buildable_data_tests(
    shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    assert run_watcher(shop_assets, tmp_path / "full").result.success
    run = run_watcher(shop_assets, tmp_path / "one", selection=[AssetKey("stg_payments")], fresh_database=False)
    assert run.result.success
    executed = set(run.run_results())
    assert executed == {
        "model.shop.stg_payments",
        UNIT_TEST,
        "test.shop.unique_stg_payments_payment_id.3744510712",
    }, "the model, its unit test (before it) and its data tests whose parents are built"


@pytest.mark.parametrize("mode", MODES)
def test_failing_test_without_a_check_fails_the_run_and_is_observed_on_each_parent(
    mode: str, shop_assets: AssetsDefinition, tmp_path: Path, full_runs: dict[str, WatcherRun]
) -> None:
    passing = [(k, md) for k, md in full_runs[mode].test_observations() if md[TEST] == "assert_revenue_matches_orders"]
    assert sorted((k, md[STATUS]) for k, md in passing) == [
        (AssetKey("daily_revenue"), "success"),
        (AssetKey("orders"), "success"),
    ]
    run = run_watcher(shop_assets, tmp_path, mode=mode, dbt_vars={"fail_test": "assert_revenue_matches_orders"})
    assert not run.result.success, "a failing test that is no asset check is no false green"
    failing = [(k, md) for k, md in run.test_observations() if md[TEST] == "assert_revenue_matches_orders"]
    assert sorted(k for k, _ in failing) == [AssetKey("daily_revenue"), AssetKey("orders")]
    assert all(md[STATUS] == "fail" and md["dagster_watcher/failure_count"] == 1 for _, md in failing)
    assert "assert_revenue_matches_orders" in run.step_failure_message()
    assert set(run.materialized()) == set(shop_assets.keys), "every model still built"


def test_fail_fast_skips_are_named_and_nothing_is_lost(shop_assets: AssetsDefinition, tmp_path: Path) -> None:
    run = run_watcher(
        shop_assets, tmp_path, dbt_vars={"fail_model": "stg_customers"}, extra_flags=["--fail-fast"], threads=1
    )
    assert not run.result.success
    outcome = statuses(run)
    assert "lost" not in outcome.values()
    fail_fast = [md for md in run.observations().values() if "--fail-fast" in str(md.get("dagster_watcher/error"))]
    assert fail_fast, "the nodes dbt skipped after the failure say --fail-fast stopped the build"
    assert all("stg_customers" in md["dagster_watcher/error"] for md in fail_fast)


# -- both modes build the same thing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        {"extra_flags": ["--exclude", "stg_payments+"]},
        {"dbt_vars": {"broken_logic": "stg_payments"}},
        {"dbt_vars": {"fail_test": "assert_revenue_matches_orders"}},
    ],
    ids=["exclude", "unit-test-fails", "test-without-check-fails"],
)
def test_both_modes_run_the_same_nodes_with_the_same_outcomes(
    scenario: dict[str, Any], shop_assets: AssetsDefinition, tmp_path: Path
) -> None:
    seen = {}
    for mode in MODES:
        run = run_watcher(shop_assets, tmp_path / mode, mode=mode, **scenario)
        seen[mode] = (
            {u: r["status"] for u, r in run.run_results().items()},
            sorted(run.materialized()),
            statuses(run),
            sorted((k, md[TEST], md[STATUS]) for k, md in run.test_observations()),
            run.result.success,
        )
    assert seen["runner"] == seen["subprocess"]


def test_relative_duckdb_path_is_the_same_file_in_both_modes_and_in_dagster_dbt(tmp_path: Path) -> None:
    project_dir = copy_project(tmp_path)
    profiles = project_dir / "profiles.yml"
    profiles.write_text(
        profiles.read_text().replace(
            "{{ env_var('DAGSTER_WATCHER_DUCKDB_PATH', 'target/shop.duckdb') }}", "relative.duckdb"
        )
    )
    if True:  # the copied profile reads no env var: the path is relative
        project = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=tmp_path / "parse")
        prepare_manifest(project)
        assets = project_assets(project)
        expected = project_dir / "relative.duckdb"
        for mode, table in (("runner", "raw_customers"), ("subprocess", "raw_orders")):
            run = run_watcher(
                assets,
                tmp_path / mode,
                mode=mode,
                project_dir=project_dir,
                selection=[AssetKey(table)],
                fresh_database=False,
            )
            assert run.result.success
        DbtCliResource(project_dir=project, dbt_executable=str(Path(sys.executable).parent / "dbt")).cli(
            ["seed", "--select", "raw_payments"]
        ).wait()
    assert not (Path.cwd() / "relative.duckdb").exists(), "never resolved against the caller's directory"
    with duckdb.connect(str(expected), read_only=True) as db:
        tables = {r[0] for r in db.execute("select table_name from information_schema.tables").fetchall()}
    assert {"raw_customers", "raw_orders", "raw_payments"} <= tables, "runner, subprocess and dagster-dbt: one file"


def test_edited_sql_is_built_in_process_after_a_reparse(tmp_path: Path) -> None:
    project_dir, project = scratch_project(tmp_path)
    project_assets(project)  # the definition made before the edit (dagster-dbt caches its manifest)
    model = project_dir / "models" / "staging" / "stg_customers.sql"
    model.write_text("select * from table_that_does_not_exist_anywhere")
    prepare_manifest(project)
    run = run_watcher(project_assets(project), tmp_path, mode="runner", project_dir=project_dir)
    assert not run.result.success, "the new, broken SQL ran, never the old SQL"
    error = run.observations()[AssetKey("stg_customers")]["dagster_watcher/error"]
    assert "table_that_does_not_exist_anywhere" in error


@pytest.mark.parametrize("mode", MODES)
def test_a_var_that_changes_parsing_is_refused_naming_the_var(mode: str, tmp_path: Path) -> None:
    project_dir, project = scratch_project(tmp_path)
    (project_dir / "models" / "marts" / "extra.sql").write_text(
        "{{ config(enabled=var('enable_extra', false)) }}\nselect 1 as one\n"
    )
    prepare_manifest(project, force=True)
    run = run_watcher(
        project_assets(project), tmp_path, mode=mode, project_dir=project_dir, dbt_vars={"enable_extra": True}
    )
    assert not run.result.success
    message = run.step_failure_message()
    assert "enable_extra" in message and "extra.sql" in message and "prepare_manifest" in message
    assert run.materialized() == [], "dbt never ran a graph the definitions do not show"


# -- names and freshness ---------------------------------------------------------------------------


class DottedTranslator(DagsterDbtTranslator):
    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        key = super().get_asset_key(dbt_resource_props)
        return AssetKey(["staging.customers"]) if key == AssetKey("stg_customers") else key


def test_any_asset_name_gets_a_working_consumer_sensor(shop_project: DbtProject, tmp_path: Path) -> None:
    assets = project_assets(shop_project, dagster_dbt_translator=DottedTranslator())
    from dagster import job, op

    @op
    def noop() -> None: ...

    @job(name="after_customers")
    def after_customers() -> None:
        noop()

    sensors = build_watcher_sensors(assets, downstream={AssetKey("staging.customers"): after_customers})
    names = [s.name for s in sensors]
    assert len(set(names)) == len(names)
    (dotted,) = [s for s in sensors if "staging" in s.name and "customers" in s.name]
    run = run_watcher(assets, tmp_path)
    assert run.result.success
    requests, _ = Sensors([dotted], run.instance).tick(dotted.name)
    assert [r.job_name for r in requests] == ["after_customers"], "the dotted model's consumer launches downstream"


def test_stale_source_leaves_its_downstream_models_out_and_builds_the_rest(tmp_path: Path) -> None:
    project_dir = copy_project(tmp_path)
    sources = project_dir / "models" / "staging" / "_sources.yml"
    sources.write_text(
        sources.read_text()
        + """      - name: orders
        identifier: raw_orders
        loaded_at_field: updated_at
        freshness:
          error_after: {count: 1, period: day}
"""
    )
    stg_orders = project_dir / "models" / "staging" / "stg_orders.sql"
    stg_orders.write_text(
        "-- depends_on: {{ ref('raw_orders') }}\n"
        + stg_orders.read_text().replace("{{ ref('raw_orders') }}", "{{ source('raw', 'orders') }}")
    )
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=tmp_path / "parse")
    prepare_manifest(project)
    assets = project_assets(project)
    assert run_watcher(assets, tmp_path / "first", project_dir=project_dir).result.success

    run = run_watcher(
        assets, tmp_path / "gated", project_dir=project_dir, fresh_database=False, skip_stale_sources=True
    )
    assert run.result.success
    gated = {k for k, s in statuses(run).items() if s == "not_selected"}
    assert gated == {AssetKey(k) for k in ("stg_orders", "customers", "orders", "daily_revenue", "order_updates")}
    reasons = {k: run.observations()[k][REASON] for k in gated}
    assert all("source raw.orders is stale" in r for r in reasons.values()), reasons
    assert AssetKey("stg_payments") in run.materialized() and AssetKey("customers_snapshot") in run.materialized()
    freshness = [
        e.dagster_event.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in run.events(DagsterEventType.ASSET_OBSERVATION)
        if "dagster_watcher/freshness" in e.dagster_event.event_specific_data.asset_observation.metadata  # type: ignore[union-attr]
    ]
    assert [(o.asset_key, o.metadata["dagster_watcher/freshness"].value) for o in freshness] == [
        (AssetKey(["raw", "orders"]), "error")
    ]
    no_retry_requested(assets, run)
