"""Every private Dagster/dbt access in ``_compat.py`` keeps working when the internal is not there.

Each fallback is forced by making the internal unavailable (an import that fails, an attribute that
is missing or raises) and the documented fallback is asserted; the primary path is exercised where it
is cheap."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from collections.abc import Mapping
from multiprocessing import util as mp_util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, JobDefinition, define_asset_job, job, op

from dagster_watcher import _compat

UNRESOLVED_JOB_MODULE = "dagster._core.definitions.unresolved_asset_job_definition"
SQLITE_STORAGE_MODULE = "dagster._core.storage.event_log.sqlite.sqlite_event_log"


def make_import_fail(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """``import module`` / ``from module import x`` raise ImportError until the test ends."""
    monkeypatch.setitem(sys.modules, module, None)


@op
def _noop() -> None:
    pass


@job
def _a_job() -> None:
    _noop()


# -- asset_job_types / is_job_like ------------------------------------------------------------------


def test_asset_job_types_includes_unresolved_asset_jobs():
    types = _compat.asset_job_types()
    assert JobDefinition in types
    assert isinstance(define_asset_job("j", selection=[AssetKey("x")]), types)


def test_asset_job_types_falls_back_to_job_definition(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, UNRESOLVED_JOB_MODULE)
    assert _compat.asset_job_types() == (JobDefinition,)


@pytest.mark.parametrize("private_import", ["available", "fails"])
def test_is_job_like(private_import: str, monkeypatch: pytest.MonkeyPatch):
    if private_import == "fails":
        make_import_fail(monkeypatch, UNRESOLVED_JOB_MODULE)
    assert _compat.is_job_like(_a_job)
    assert _compat.is_job_like(define_asset_job("j", selection=[AssetKey("x")]))  # by duck typing when the import fails
    assert not _compat.is_job_like("my_job")
    assert not _compat.is_job_like(SimpleNamespace(name="j", selection="*", resolve="not callable"))
    assert not _compat.is_job_like(SimpleNamespace(name="j", resolve=lambda: None))


# -- add_job_name_targets -------------------------------------------------------------------------


def _sensor_with(job_def: Any) -> Any:
    from dagster import SensorDefinition

    return SensorDefinition(name="s", evaluation_fn=lambda context: None, jobs=[job_def])


def test_add_job_name_targets_makes_a_sensor_target_a_job_by_name():
    sensor = _sensor_with(_a_job)
    assert _compat.add_job_name_targets(sensor, ["elsewhere_job", "elsewhere_job"])
    assert [t.job_name for t in sensor.targets] == ["_a_job", "elsewhere_job"]
    assert [j.name for j in sensor.jobs] == ["_a_job"]  # a name is no job definition


def test_add_job_name_targets_when_dagsters_target_class_moved(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, "dagster._core.definitions.target")
    sensor = _sensor_with(_a_job)
    assert not _compat.add_job_name_targets(sensor, ["elsewhere_job"])
    assert [t.job_name for t in sensor.targets] == ["_a_job"]


def test_add_job_name_targets_when_the_sensor_keeps_no_target_list():
    assert not _compat.add_job_name_targets(SimpleNamespace(_targets=("frozen",)), ["elsewhere_job"])


# -- dbt_component_scope ----------------------------------------------------------------------------


def test_dbt_component_scope_lets_dagster_dbt_render_cli_args():
    from dagster import build_asset_context
    from dagster.components.resolved.context import ResolutionContext
    from dagster_dbt.components.dbt_component_utils import resolve_cli_args

    scope = ResolutionContext.default().with_scope(dbt_target="prod")
    with _compat.dbt_component_scope(scope):
        args = resolve_cli_args(["build", "--target", "{{ dbt_target }}"], build_asset_context())
    assert args == ["build", "--target", "prod"]


def test_dbt_component_scope_when_dagster_dbts_helper_moved(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, "dagster_dbt.components.dbt_component_utils")
    with _compat.dbt_component_scope(object()):
        pass  # nothing set, nothing raised


# -- memoize_output_asset_keys ----------------------------------------------------------------------


class _StepContext:
    """Stands in for the one method of Dagster's StepExecutionContext the memo replaces."""

    def __init__(self) -> None:
        self.calls = 0

    def get_output_asset_keys(self) -> set[AssetKey]:
        self.calls += 1
        return {AssetKey("a"), AssetKey("b")}


def test_memoize_output_asset_keys_computes_once():
    step = _StepContext()
    context = SimpleNamespace(op_execution_context=SimpleNamespace(_step_execution_context=step))
    assert _compat.memoize_output_asset_keys(context) is True
    for _ in range(3):
        assert step.get_output_asset_keys() == {AssetKey("a"), AssetKey("b")}
    assert step.calls == 1


def test_memoize_output_asset_keys_without_the_private_attribute_changes_nothing():
    context = SimpleNamespace(op_execution_context=SimpleNamespace())
    before = vars(context.op_execution_context).copy()
    assert _compat.memoize_output_asset_keys(context) is False
    assert vars(context.op_execution_context) == before
    assert _compat.memoize_output_asset_keys(object()) is False


def test_memoize_output_asset_keys_when_the_method_raises_changes_nothing():
    class Raising:
        def get_output_asset_keys(self) -> set[AssetKey]:
            raise RuntimeError("moved")

    step = Raising()
    context = SimpleNamespace(op_execution_context=SimpleNamespace(_step_execution_context=step))
    assert _compat.memoize_output_asset_keys(context) is False
    assert "get_output_asset_keys" not in vars(step)


# -- sensor_instance -------------------------------------------------------------------------------


def test_sensor_instance_is_built_once_per_instance_config(tmp_path: Path):
    """What a code server gets: a ref per evaluation. The instance is built once, not per evaluation."""
    from dagster import build_sensor_context

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref_a = DagsterInstance.local_temp(str(tmp_path / "a")).get_ref()
    ref_b = DagsterInstance.local_temp(str(tmp_path / "b")).get_ref()
    first = build_sensor_context(instance_ref=ref_a)
    shared = _compat.sensor_instance(first)
    assert first._instance is None, "the context built no instance of its own"  # type: ignore[attr-defined]
    assert _compat.sensor_instance(build_sensor_context(instance_ref=ref_a)) is shared
    other = _compat.sensor_instance(build_sensor_context(instance_ref=ref_b))
    assert other is not shared
    assert other.root_directory == str(tmp_path / "b")


def test_sensor_instance_without_a_ref_is_the_contexts_own(sqlite_instance: DagsterInstance):
    """Under build_sensor_context(instance=...) (tests) there is no ref: the given instance is used."""
    from dagster import build_sensor_context

    assert _compat.sensor_instance(build_sensor_context(instance=sqlite_instance)) is sqlite_instance
    # A context without the private attribute at all.
    assert _compat.sensor_instance(SimpleNamespace(instance=sqlite_instance)) is sqlite_instance


def test_sensor_instance_when_the_ref_cannot_be_serialized(sqlite_instance: DagsterInstance):
    context = SimpleNamespace(instance=sqlite_instance, instance_ref=object())
    assert _compat.sensor_instance(context) is sqlite_instance


# -- EventLogVersion --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_instance(tmp_path_factory: pytest.TempPathFactory) -> DagsterInstance:
    """Dagster's default storage (SQLite) with one event in its log; shared: tests only add events."""
    instance = DagsterInstance.local_temp(str(tmp_path_factory.mktemp("home")))
    instance.report_runless_asset_event(AssetMaterialization("x"))
    return instance


def test_event_log_version_reads_the_sqlite_index(sqlite_instance: DagsterInstance):
    version = _compat.EventLogVersion()
    storage = sqlite_instance.event_log_storage
    index = str(storage.path_for_shard("index"))  # type: ignore[attr-defined]
    assert version.read(sqlite_instance) == (index, storage.get_maximum_record_id())
    sqlite_instance.report_runless_asset_event(AssetMaterialization("x"))
    assert version.read(sqlite_instance) == (index, storage.get_maximum_record_id())  # sees new rows
    version.close()


def test_event_log_version_follows_a_change_of_storage(sqlite_instance: DagsterInstance, tmp_path: Path):
    (tmp_path / "other").mkdir()
    other = DagsterInstance.local_temp(str(tmp_path / "other"))
    for _ in range(3):
        other.report_runless_asset_event(AssetMaterialization("y"))
    version = _compat.EventLogVersion()
    first, second = version.read(sqlite_instance), version.read(other)
    assert first[0] != second[0]
    assert first[1] == sqlite_instance.event_log_storage.get_maximum_record_id()
    assert second[1] == 3
    version.close()


def assert_public_read(version: _compat.EventLogVersion, instance: DagsterInstance) -> None:
    storage = instance.event_log_storage
    which, newest = version.read(instance)
    assert newest == storage.get_maximum_record_id()
    assert which == id(storage)  # named by the object: these instances have no inst_data


def test_event_log_version_on_other_storage_uses_the_public_read():
    instance = DagsterInstance.ephemeral()  # in-memory storage: not SqliteEventLogStorage
    instance.report_runless_asset_event(AssetMaterialization("x"))
    assert_public_read(_compat.EventLogVersion(), instance)


def test_event_log_version_when_the_sqlite_class_moved(sqlite_instance: DagsterInstance, monkeypatch):
    make_import_fail(monkeypatch, SQLITE_STORAGE_MODULE)
    assert_public_read(_compat.EventLogVersion(), sqlite_instance)


def test_event_log_version_when_the_shard_path_is_unavailable(sqlite_instance: DagsterInstance, monkeypatch):
    def moved(shard: str) -> str:
        raise AttributeError("path_for_shard moved")

    monkeypatch.setattr(sqlite_instance.event_log_storage, "path_for_shard", moved)
    assert_public_read(_compat.EventLogVersion(), sqlite_instance)


def test_event_log_version_when_the_index_file_is_missing(sqlite_instance: DagsterInstance, monkeypatch, tmp_path):
    monkeypatch.setattr(sqlite_instance.event_log_storage, "path_for_shard", lambda shard: str(tmp_path / "gone.db"))
    assert_public_read(_compat.EventLogVersion(), sqlite_instance)
    assert not (tmp_path / "gone.db").exists()  # read-only: never creates a file


def test_event_log_version_on_a_sql_error(sqlite_instance: DagsterInstance, monkeypatch, tmp_path):
    other_db = tmp_path / "not_an_event_log.db"
    sqlite3.connect(other_db).close()  # a SQLite file without an event_logs table
    monkeypatch.setattr(sqlite_instance.event_log_storage, "path_for_shard", lambda shard: str(other_db))
    version = _compat.EventLogVersion()
    assert_public_read(version, sqlite_instance)
    assert_public_read(version, sqlite_instance)  # and again, after the failed connection was closed


# -- dbt_manifest_from_json -------------------------------------------------------------------------


def test_dbt_manifest_from_json_builds_dbts_manifest(shop_manifest: Mapping[str, Any]):
    from dbt.contracts.graph.manifest import Manifest
    from dbt.contracts.graph.nodes import GenericTestNode

    manifest = _compat.dbt_manifest_from_json(shop_manifest)
    assert isinstance(manifest, Manifest)
    assert set(manifest.nodes) == set(shop_manifest["nodes"])
    generic = [u for u, n in shop_manifest["nodes"].items() if n["resource_type"] == "test" and n.get("test_metadata")]
    assert generic and all(isinstance(manifest.nodes[u], GenericTestNode) for u in generic)
    # dbt mutates the Manifest it runs: each invocation gets its own.
    again = _compat.dbt_manifest_from_json(shop_manifest)
    assert again is not manifest and again.nodes is not manifest.nodes


@pytest.mark.parametrize(
    "garbage",
    [{}, {"metadata": "x", "nodes": 3}, {"metadata": {}, "nodes": {"model.x.y": {"resource_type": "model"}}}],
    ids=["empty", "wrong-types", "incomplete-node"],
)
def test_dbt_manifest_from_json_on_garbage_returns_none(garbage: dict[str, Any], caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="dagster_watcher"):
        assert _compat.dbt_manifest_from_json(garbage) is None
    assert "dbt will parse" in caplog.text


def test_dbt_manifest_from_json_when_dbts_classes_moved(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, "dbt.contracts.graph.manifest")
    assert _compat.dbt_manifest_from_json({"metadata": {}, "nodes": {}}) is None


# -- release_adapter_handles ------------------------------------------------------------------------


class _Env:
    def __init__(self, fail: bool = False) -> None:
        self.closed = False
        self.fail = fail

    def close(self) -> None:
        self.closed = True
        if self.fail:
            raise RuntimeError("already closed")


@pytest.fixture
def duckdb_manager() -> type:
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    return DuckDBConnectionManager


def test_release_adapter_handles_closes_duckdbs_process_wide_instance(duckdb_manager: type, monkeypatch):
    env = _Env()
    monkeypatch.setattr(duckdb_manager, "_ENV", env)
    _compat.release_adapter_handles()
    assert env.closed and duckdb_manager._ENV is None  # type: ignore[attr-defined]


def test_release_adapter_handles_when_closing_fails(duckdb_manager: type, monkeypatch):
    env = _Env(fail=True)
    monkeypatch.setattr(duckdb_manager, "_ENV", env)
    _compat.release_adapter_handles()
    assert env.closed and duckdb_manager._ENV is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("missing", ["_ENV", "_LOCK"])
def test_release_adapter_handles_with_a_duckdb_class_lacking_internals(duckdb_manager: type, monkeypatch, missing):
    monkeypatch.delattr(duckdb_manager, missing)
    _compat.release_adapter_handles()
    assert not hasattr(duckdb_manager, missing)  # nothing invented


def test_release_adapter_handles_when_reset_adapters_fails(duckdb_manager: type, monkeypatch):
    import dbt.adapters.factory

    def broken() -> None:
        raise RuntimeError("registry changed")

    monkeypatch.setattr(dbt.adapters.factory, "reset_adapters", broken)
    env = _Env()
    monkeypatch.setattr(duckdb_manager, "_ENV", env)
    _compat.release_adapter_handles()
    assert env.closed  # the DuckDB file is still given back


def test_release_adapter_handles_without_dbt_duckdb(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, "dbt.adapters.duckdb.connections")
    _compat.release_adapter_handles()


# -- run_own_finalizers -----------------------------------------------------------------------------


def test_run_own_finalizers_runs_multiprocessings_finalizers(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(mp_util, "_run_finalizers", lambda *args: calls.append(args))
    _compat.run_own_finalizers()
    assert calls == [()]


def test_run_own_finalizers_when_they_fail(monkeypatch: pytest.MonkeyPatch):
    def broken(*args: Any) -> None:
        raise RuntimeError("finalizer failed")

    monkeypatch.setattr(mp_util, "_run_finalizers", broken)
    _compat.run_own_finalizers()


def test_run_own_finalizers_when_multiprocessing_moved_them(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delattr(mp_util, "_run_finalizers")
    _compat.run_own_finalizers()


def _write_manifest(path: Path, generated_at: str, nodes: int) -> None:
    path.write_text(
        json.dumps({"metadata": {"generated_at": generated_at}, "nodes": {f"model.p.m{i}": {} for i in range(nodes)}})
    )


def test_current_manifest_follows_a_reparse_through_dagster_dbts_cache(tmp_path: Path):
    path = tmp_path / "manifest.json"
    _write_manifest(path, "2026-01-01T00:00:00Z", 1)
    assert len(_compat.current_manifest(path)["nodes"]) == 1
    _write_manifest(path, "2026-01-02T00:00:00Z", 2)  # a new parse at the same path
    assert len(_compat.current_manifest(path)["nodes"]) == 2, "never the first parse of a path forever"
    assert _compat.current_manifest(path) is _compat.current_manifest(path), "still served from the cache"


def test_current_manifest_reads_the_file_when_dagster_dbts_reader_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "manifest.json"
    _write_manifest(path, "2026-01-03T00:00:00Z", 3)
    monkeypatch.setitem(sys.modules, "dagster_dbt.dbt_manifest", None)  # import fails
    assert len(_compat.current_manifest(path)["nodes"]) == 3


# -- dbt_adapter ------------------------------------------------------------------------------------


def test_dbt_adapter_is_the_one_dbt_registered(monkeypatch: pytest.MonkeyPatch):
    import dbt.adapters.factory

    registered = object()
    monkeypatch.setattr(dbt.adapters.factory, "get_adapter_by_type", lambda t: registered if t == "duckdb" else None)
    assert _compat.dbt_adapter("duckdb") is registered


def test_dbt_adapter_when_none_is_registered():
    assert _compat.dbt_adapter("no_such_adapter_type") is None  # dbt's lookup raises: no metadata, no error


def test_dbt_adapter_when_dbts_factory_moved(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, "dbt.adapters.factory")
    assert _compat.dbt_adapter("duckdb") is None


# -- column_lineage_metadata (its primary path: tests/unit/test_runtime_metadata.py) -----------------


def test_column_lineage_metadata_when_dagster_dbts_builder_moved(monkeypatch: pytest.MonkeyPatch):
    make_import_fail(monkeypatch, "dagster_dbt.core.dbt_cli_event")
    assert _compat.column_lineage_metadata({"a": {"data_type": "INTEGER"}}, {}, {}, {}, None, None, None) == {}


# -- dbt_target ------------------------------------------------------------------------------------

PROFILES = """
shop:
  target: dev
  outputs:
    dev: {type: duckdb, path: "{{ env_var('DW_TEST_TARGET_DB', 'first.duckdb') }}", threads: 1}
    other: {type: duckdb, path: other.duckdb, schema: reports, threads: 1}
"""


def test_dbt_target_renders_the_profile_with_this_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "profiles.yml").write_text(PROFILES)
    assert _compat.dbt_target(tmp_path, "shop", None) == {
        "name": "dev",
        "type": "duckdb",
        "database": "first",
        "schema": "main",
    }
    monkeypatch.setenv("DW_TEST_TARGET_DB", "/elsewhere/second.duckdb")
    assert _compat.dbt_target(tmp_path, "shop", None)["database"] == "second", "the file's name is the database"
    assert _compat.dbt_target(tmp_path, "shop", "other") == {
        "name": "other",
        "type": "duckdb",
        "database": "other",
        "schema": "reports",
    }


@pytest.mark.parametrize("what", ["no such profile", "no such target", "no profiles.yml"])
def test_dbt_target_that_cannot_be_rendered_is_none(what: str, tmp_path: Path):
    if what != "no profiles.yml":
        (tmp_path / "profiles.yml").write_text(PROFILES)
    profile, target = (
        ("nope", None) if what == "no such profile" else ("shop", "nope" if what == "no such target" else None)
    )
    assert _compat.dbt_target(tmp_path, profile, target) is None


def test_dbt_target_when_dbts_profile_classes_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "profiles.yml").write_text(PROFILES)
    make_import_fail(monkeypatch, "dbt.config.profile")
    assert _compat.dbt_target(tmp_path, "shop", None) is None


def test_every_compat_function_is_covered_here():
    """A new private access in _compat.py needs its fallback test in this file."""
    import inspect

    public = {
        name
        for name, value in vars(_compat).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == _compat.__name__
    }
    source = Path(__file__).read_text()
    assert public == {
        "asset_job_types",
        "is_job_like",
        "memoize_output_asset_keys",
        "sensor_instance",
        "EventLogVersion",
        "dbt_manifest_from_json",
        "release_adapter_handles",
        "run_own_finalizers",
        "current_manifest",
        "dbt_adapter",
        "column_lineage_metadata",
        "dbt_target",
        "add_job_name_targets",
        "dbt_component_scope",
    }
    assert all(f"_compat.{name}" in source for name in public)
