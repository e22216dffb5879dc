"""dagster-dbt's runtime metadata on the watcher's events (issue 12, item 3): for the same project
and node, every key dagster-dbt's ``dbt.cli(["build"]).stream().fetch_row_counts()
.fetch_column_metadata()`` writes, with the same values, in both invocation modes; row counts as the
warehouse has them after the build.

Three real dbt builds (dagster-dbt once, the watcher once per mode) on DuckDB, real SQLite instances.
"""

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterEventType,
    DagsterInstance,
    MetadataValue,
    materialize,
    with_source_code_references,
)
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, DbtProject, dbt_assets

from dagster_watcher import DbtWatcherResource, dbt_watcher_assets

from ..support import EXAMPLE, WatcherRun, run_watcher

MODES = ["runner", "subprocess"]
FETCHED = {"dagster/row_count", "dagster/storage_kind", "dagster/column_schema", "dagster/column_lineage"}


@dataclass
class Events:
    """Metadata of one run's events, by the asset or check they are about."""

    materializations: dict[AssetKey, Mapping[str, MetadataValue]]
    checks: dict[AssetCheckKey, Mapping[str, MetadataValue]]
    observed_keys: dict[AssetKey, set[str]]
    """Per asset: the union of the keys of the test-verdict observations on it."""


def _events(instance: DagsterInstance, run_id: str) -> Events:
    out = Events({}, {}, {})
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            out.materializations[event.asset_key] = event.event_specific_data.materialization.metadata  # type: ignore[union-attr,index]
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            out.checks[event.event_specific_data.asset_check_key] = event.event_specific_data.metadata  # type: ignore[union-attr]
        elif event.event_type == DagsterEventType.ASSET_OBSERVATION:
            observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
            out.observed_keys.setdefault(event.asset_key, set()).update(observation.metadata)  # type: ignore[arg-type]
    return out


def _warehouse_counts(database: Path, manifest: Mapping[str, Any]) -> dict[str, int]:
    """Rows of every table the build wrote, read from the DuckDB file after dbt has exited."""
    counts: dict[str, int] = {}
    with duckdb.connect(os.fspath(database), read_only=True) as connection:
        for unique_id, node in manifest["nodes"].items():
            if node["resource_type"] in ("model", "seed", "snapshot") and node["config"]["materialized"] != "view":
                if node["config"]["materialized"] == "ephemeral":
                    continue
                (count,) = connection.execute(f"select count(*) from {node['relation_name']}").fetchone()  # type: ignore[misc]
                counts[unique_id] = int(count)
    return counts


@pytest.fixture(scope="module")
def dagster_dbt_events(shop_project: DbtProject, duckdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Events:
    """dagster-dbt's own events for the example project, with both fetches on."""

    @dbt_assets(manifest=shop_project.manifest_path, project=shop_project)
    def plain(context: AssetExecutionContext, dbt: DbtCliResource):  # type: ignore[no-untyped-def]
        yield from dbt.cli(["build"], context=context).stream().fetch_row_counts().fetch_column_metadata()

    for leftover in (duckdb_path, duckdb_path.with_name(duckdb_path.name + ".wal")):
        leftover.unlink(missing_ok=True)
    home = tmp_path_factory.mktemp("dagster_dbt_home")
    instance = DagsterInstance.local_temp(os.fspath(home))
    dbt = DbtCliResource(
        project_dir=shop_project,
        profiles_dir=os.fspath(EXAMPLE),
        dbt_executable=os.fspath(Path(sys.executable).parent / "dbt"),
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DBT_TARGET_PATH", os.fspath(home / "dbt_target"))  # not the repo's example_project/target
        result = materialize([plain], resources={"dbt": dbt}, instance=instance, raise_on_error=False)
    assert result.success
    return _events(instance, result.run_id)


@pytest.fixture(scope="module")
def fetching_runs(
    shop_assets: AssetsDefinition,
    shop_project: DbtProject,
    shop_manifest: Mapping[str, Any],
    duckdb_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[WatcherRun, Events, dict[str, int]]]:
    """One watcher build per mode with both fetches on: in runner mode through the resource's fields,
    in subprocess mode through the call's arguments. Each with the warehouse's row counts after it."""

    @dbt_watcher_assets(manifest=shop_project.manifest_path, project=shop_project)
    def shop_fetching(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context, fetch_row_counts=True, fetch_column_metadata=True)

    runs = {}
    for mode, assets, config in (
        ("runner", shop_assets, {"fetch_row_counts": True, "fetch_column_metadata": True}),
        ("subprocess", shop_fetching, {}),
    ):
        run = run_watcher(assets, tmp_path_factory.mktemp(f"fetch_{mode}"), mode=mode, **config)
        assert run.result.success
        runs[mode] = (run, _events(run.instance, run.run_id), _warehouse_counts(duckdb_path, shop_manifest))
    return runs


@pytest.mark.parametrize("mode", MODES)
def test_every_key_dagster_dbt_writes_is_on_the_watchers_events(
    mode: str, dagster_dbt_events: Events, fetching_runs: dict[str, tuple[WatcherRun, Events, dict[str, int]]]
) -> None:
    _, ours, _ = fetching_runs[mode]
    theirs = dagster_dbt_events
    assert set(ours.materializations) == set(theirs.materializations)
    for key, metadata in theirs.materializations.items():
        missing = set(metadata) - set(ours.materializations[key])
        assert not missing, f"{key.to_user_string()}: dagster-dbt writes {sorted(missing)}, the watcher does not"
    assert set(ours.checks) == set(theirs.checks)
    for check, metadata in theirs.checks.items():
        missing = set(metadata) - set(ours.checks[check])
        assert not missing, f"check {check.name}: dagster-dbt writes {sorted(missing)}, the watcher does not"
    for key, keys in theirs.observed_keys.items():
        assert keys <= ours.observed_keys.get(key, set()), f"observations on {key.to_user_string()}"
    # The comparison is not vacuous: dagster-dbt wrote each fetched key on some node.
    assert FETCHED <= set().union(*(set(m) for m in theirs.materializations.values()))


@pytest.mark.parametrize("mode", MODES)
def test_fetched_values_are_dagster_dbts(
    mode: str, dagster_dbt_events: Events, fetching_runs: dict[str, tuple[WatcherRun, Events, dict[str, int]]]
) -> None:
    """Same column schemas and the same column lineage (dagster-dbt's sqlglot builder), node by node."""
    _, ours, _ = fetching_runs[mode]
    for key, theirs in dagster_dbt_events.materializations.items():
        for name in ("dagster/column_schema", "dagster/column_lineage", "dagster/storage_kind", "status"):
            if name in theirs:
                assert ours.materializations[key][name] == theirs[name], f"{key.to_user_string()} {name}"
    for check, theirs in dagster_dbt_events.checks.items():
        assert ours.checks[check]["dagster_dbt/failed_row_count"] == theirs["dagster_dbt/failed_row_count"]
        assert ours.checks[check]["status"] == theirs["status"]


@pytest.mark.parametrize("mode", MODES)
def test_row_counts_are_the_warehouses(
    mode: str,
    shop_assets: AssetsDefinition,
    fetching_runs: dict[str, tuple[WatcherRun, Events, dict[str, int]]],
) -> None:
    _, ours, warehouse = fetching_runs[mode]
    unique_ids = {key: assets_uid for key, assets_uid in _unique_ids(shop_assets).items()}
    counted = {
        unique_ids[key]: metadata["dagster/row_count"].value
        for key, metadata in ours.materializations.items()
        if "dagster/row_count" in metadata
    }
    assert counted == warehouse, "every table counted, as the warehouse has it after the build; views never"
    assert counted["model.shop.customers"] > 0


def _unique_ids(assets: AssetsDefinition) -> dict[AssetKey, str]:
    return {key: str(assets.get_asset_spec(key).metadata["dagster_dbt/unique_id"]) for key in assets.keys}


def test_a_build_that_fetches_nothing_still_has_dagster_dbts_default_keys(
    full_runs: dict[str, WatcherRun], dagster_dbt_events: Events
) -> None:
    default = {"unique_id", "invocation_id", "status", "Execution Duration"}
    for run in full_runs.values():
        events = _events(run.instance, run.run_id)
        for key, metadata in events.materializations.items():
            assert default <= set(metadata), key
            assert not FETCHED & set(metadata), "nothing is read from the warehouse unless asked for"
        for check, metadata in events.checks.items():
            assert {*default, "dagster_dbt/failed_row_count"} <= set(metadata), check


def test_code_references_are_dagster_dbts(shop_project: DbtProject) -> None:
    """Code references are definition metadata from dagster-dbt's translator: the same on both."""
    translator = DagsterDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_code_references=True))

    def body(context: AssetExecutionContext):  # type: ignore[no-untyped-def]
        yield from ()

    plain = dbt_assets(manifest=shop_project.manifest_path, project=shop_project, dagster_dbt_translator=translator)(
        body
    )
    ours = dbt_watcher_assets(
        manifest=shop_project.manifest_path, project=shop_project, dagster_dbt_translator=translator
    )(body)
    for key in plain.keys:
        references = plain.specs_by_key[key].metadata["dagster/code_references"]
        assert ours.specs_by_key[key].metadata["dagster/code_references"] == references
        assert references.code_references[0].file_path.startswith(os.fspath(EXAMPLE.resolve()))
    (with_references,) = with_source_code_references([ours])
    assert isinstance(with_references, AssetsDefinition)


def test_subprocess_mode_with_a_dbt_elsewhere_says_why_it_cannot_fetch() -> None:
    elsewhere = DbtWatcherResource(project_dir=EXAMPLE, invocation_mode="subprocess", dbt_executable="/opt/other/dbt")
    assert "dbt_executable='/opt/other/dbt'" in (elsewhere.can_fetch_metadata() or "")
    assert DbtWatcherResource(project_dir=EXAMPLE, invocation_mode="subprocess").can_fetch_metadata() is None
    assert DbtWatcherResource(project_dir=EXAMPLE, invocation_mode="runner").can_fetch_metadata() is None
