"""The `dg` example (example_project/dg: a defs.yaml using DbtWatcherProjectComponent) through the real
`dg` CLI and a real dbt build: it lists what the Python example (example_project/definitions.py)
defines, `dg check defs` accepts it, and materializing it gives the Python example's events. A defs.yaml
made by `dg scaffold defs` is accepted by `dg check defs` too.

Everything runs on a copy of example_project in a temp dir with its own DuckDB file (a DuckDB file
admits one process at a time; the repo's example_project/target is shared state)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster import DagsterEventType, DagsterInstance

from dagster_watcher.contract import SPEC_UNIQUE_ID_KEY, STATUS_KEY, TEST_KEY, sensor_name

from ..support import EXAMPLE

BIN = Path(sys.executable).parent
IGNORED = shutil.ignore_patterns(
    "target", "logs", "dbt_packages", "*.duckdb", "*.duckdb.wal", "__pycache__", ".local_defs_state"
)


def _env(duckdb: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_WATCHER_")}
    env.update(DAGSTER_WATCHER_DUCKDB_PATH=str(duckdb), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def _dg(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "dg"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"dg {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of example_project (sources only, dg/ included), with this module's DuckDB file set in the
    environment for the in-process builds too."""
    root = tmp_path_factory.mktemp("dg_example")
    shutil.copytree(EXAMPLE, root / "example_project", ignore=IGNORED)
    saved = {k: v for k, v in os.environ.items() if k.startswith("DAGSTER_WATCHER_")}
    for name in saved:
        del os.environ[name]
    os.environ["DAGSTER_WATCHER_DUCKDB_PATH"] = str(root / "shop.duckdb")
    yield root / "example_project"
    for name in [k for k in os.environ if k.startswith("DAGSTER_WATCHER_")]:
        del os.environ[name]
    os.environ.update(saved)


@pytest.fixture(scope="module")
def listed(example: Path) -> dict[str, Any]:
    """`dg list defs --json` of the dg example (its first load parses the project, in place)."""
    done = _dg(["list", "defs", "--json"], example / "dg", _env(example.parent / "shop.duckdb"))
    return json.loads(done.stdout[done.stdout.index("{") :])


@pytest.fixture(scope="module")
def python_defs(example: Path, listed: dict[str, Any]) -> dg.Definitions:
    """example_project/definitions.py of the copy, loaded as `dagster dev -f` would."""
    spec = importlib.util.spec_from_file_location("shop_python_example", example / "definitions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


@pytest.fixture(scope="module")
def component_defs(example: Path, listed: dict[str, Any]) -> Iterator[dg.Definitions]:
    """The dg example's definitions, loaded in this process from its defs folder."""
    sys.path.insert(0, str(example / "dg"))
    try:
        yield dg.load_from_defs_folder(path_within_project=example / "dg" / "shop_dg")
    finally:
        sys.path.remove(str(example / "dg"))
        for name in [m for m in sys.modules if m == "shop_dg" or m.startswith("shop_dg.")]:
            del sys.modules[name]


def _built_by_dbt(defs: dg.Definitions) -> set[str]:
    """The assets a dbt build materializes: models, seeds and snapshots (not sources, not ephemerals)."""
    return {
        spec.key.to_user_string()
        for spec in defs.get_assets_def("customers").specs
        if spec.metadata[SPEC_UNIQUE_ID_KEY].split(".")[0] in ("model", "seed", "snapshot")
    }


def _names(items: list[dict[str, Any]]) -> set[str]:
    return {item["name"] for item in items}


def test_dg_list_defs_lists_what_the_python_example_defines(listed: dict[str, Any], python_defs: dg.Definitions):
    repo = python_defs.get_repository_def()
    watched = {sensor_name(dg.AssetKey.from_user_string(k)) for k in _built_by_dbt(python_defs)}
    # The Python example's second, daily-partitioned producer (README "Partitions") is not in the dg example.
    daily = python_defs.get_assets_def("orders_daily")

    def shop(name: str) -> bool:
        return "orders_daily" not in name

    assert {a["asset_key"] for a in listed["assets"]} == {
        k.to_user_string() for k in repo.asset_graph.get_all_asset_keys() if k not in daily.keys
    }
    assert {c["key"] for c in listed["asset_checks"]} == {
        f"{k.asset_key.to_user_string()}:{k.name}"
        for k in repo.asset_graph.asset_check_keys
        if k not in daily.check_keys
    }
    assert {"shop_watcher_job", "shop_dbt_assets__watcher_retry", "customer_report_job"} <= _names(listed["jobs"])
    assert _names(listed["jobs"]) == {n for n in repo.job_names if not n.startswith("__") and shop(n)}
    # One consumer sensor per model, seed and snapshot, and the retry coordinator.
    assert (
        _names(listed["sensors"])
        == watched | {"watcher_retries_shop_dbt_assets"}
        == {s.name for s in repo.sensor_defs if shop(s.name)}
    )
    assert _names(listed["schedules"]) == {"shop_daily"} == {s.name for s in repo.schedule_defs}


def test_dg_check_defs_accepts_the_example(example: Path, listed: dict[str, Any]):
    done = _dg(["check", "defs"], example / "dg", _env(example.parent / "shop.duckdb"))
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def _build(defs: dg.Definitions, instance: DagsterInstance) -> tuple[dg.ExecuteInProcessResult, dict[str, Any]]:
    """Run the watcher job on a fresh DuckDB file; what it recorded, per asset and check."""
    database = Path(os.environ["DAGSTER_WATCHER_DUCKDB_PATH"])
    database.unlink(missing_ok=True)
    result = defs.resolve_job_def("shop_watcher_job").execute_in_process(instance=instance, raise_on_error=False)
    records = instance.all_logs(result.run_id)
    events: dict[str, Any] = {"materialized": {}, "checks": {}, "observed": {}}
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            md = event.event_specific_data.materialization.metadata  # type: ignore[union-attr]
            events["materialized"][event.asset_key.to_user_string()] = sorted(md)  # type: ignore[union-attr]
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.event_specific_data  # type: ignore[assignment]
            events["checks"][f"{check.asset_key.to_user_string()}:{check.check_name}"] = (
                check.passed,
                sorted(check.metadata),
            )  # type: ignore[union-attr]
        elif event.event_type == DagsterEventType.ASSET_OBSERVATION:
            md = event.event_specific_data.asset_observation.metadata  # type: ignore[union-attr]
            verdict = md.get(TEST_KEY) or md.get(STATUS_KEY)
            key = event.asset_key.to_user_string()  # type: ignore[union-attr]
            events["observed"].setdefault(key, set()).add((str(verdict.value) if verdict else None, tuple(sorted(md))))
    return result, events


def test_materializing_the_component_gives_the_python_examples_events(
    python_defs: dg.Definitions, component_defs: dg.Definitions, tmp_path: Path
):
    (tmp_path / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    python_result, python_events = _build(python_defs, instance)
    component_result, component_events = _build(component_defs, instance)

    assert python_result.success and component_result.success
    assert set(component_events["materialized"]) == _built_by_dbt(
        component_defs
    )  # one materialization per model/seed/snapshot
    assert component_events["materialized"] == python_events["materialized"]  # same metadata keys
    assert component_events["checks"] == python_events["checks"]
    assert component_events["observed"] == python_events["observed"]

    # The consumer named by job name in defs.yaml starts on the component's materialization of customers.
    sensor = component_defs.get_sensor_def("watch_customers")
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=component_defs))
    assert [(r.job_name, r.tags.get("dagster_watcher/upstream_run")) for r in tick.run_requests] == [
        ("customer_report_job", component_result.run_id)
    ]


def test_dg_scaffold_defs_makes_a_defs_yaml_dg_check_defs_accepts(example: Path, tmp_path: Path):
    """A fresh dg project: `dg scaffold defs ... --project-path` then `dg check defs` (the component's
    defaults: dagster-dbt's state handling prepares the project and loads it from its stored copy)."""
    project = tmp_path / "fresh"
    (project / "fresh_dg" / "defs").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "fresh"\nversion = "0.1.0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "fresh_dg"\n'
    )
    (project / "fresh_dg" / "__init__.py").write_text("")
    (project / "fresh_dg" / "defs" / "__init__.py").write_text("")
    shutil.copy2(example / "dg" / "shop_dg" / "definitions.py", project / "fresh_dg" / "definitions.py")
    dbt_project = tmp_path / "shop"
    shutil.copytree(example, dbt_project, ignore=shutil.ignore_patterns("dg", "target", "*.duckdb"))
    env = _env(tmp_path / "fresh.duckdb")

    _dg(
        [
            "scaffold",
            "defs",
            "dagster_watcher.DbtWatcherProjectComponent",
            "watcher",
            "--project-path",
            str(dbt_project),
        ],
        project,
        env,
    )
    defs_yaml = project / "fresh_dg" / "defs" / "watcher" / "defs.yaml"
    assert defs_yaml.read_text().startswith("type: dagster_watcher.DbtWatcherProjectComponent")
    assert "{{ context.project_root }}/../shop" in defs_yaml.read_text()

    done = _dg(["check", "defs"], project, env)
    assert "All definitions loaded successfully" in done.stdout + done.stderr
