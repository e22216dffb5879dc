"""Dagster definitions of the warehouse-like benchmark (``bench_warehouse.py``): the FHIR project on
PostgreSQL, and for ten of its models a downstream asset that reads the model's table on the server.

The same module is imported by the producer (``materialize()`` in a fresh process), by the code server
that ``dagster-daemon`` starts (sensors, automation) and by the run workers it launches, all with the
same environment:

- ``DW_BENCH_PROJECT_DIR``, ``DW_BENCH_MANIFEST_TARGET``, ``DW_BENCH_TARGET_PATH``, ``DW_BENCH_THREADS``:
  as in ``bench_defs.py``.
- ``DW_BENCH_KIND``: ``watcher`` or ``dagster-dbt``; ``DW_BENCH_MODE``: the watcher's invocation mode.
- ``DW_WH_DOWNSTREAM``: comma-separated model names that get a downstream asset ``after_<model>``.
- ``DW_WH_CONSUMERS``: how the downstream assets start:
  ``none`` (no downstream assets), ``in-run`` (in the producer's own run, after the dbt step),
  ``eager`` (``AutomationCondition.eager()`` and an automation condition sensor), or
  ``sensors`` (the watcher's ``build_watcher_sensors``, one downstream job per model).
- ``DW_WH_SENSOR_INTERVAL``: ``minimum_interval_seconds`` of the sensors (watcher and automation).
- ``DW_WH_ALL_SENSORS=1``: run every per-model watcher sensor (``idle_status=RUNNING``; by default the
  daemon ticks the retry coordinator and the ten with a downstream job, the others are declared stopped).
"""

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
    in_process_executor,
)
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from dagster_watcher import DbtWatcherResource, build_watcher_sensors, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

PROJECT_DIR = Path(os.environ["DW_BENCH_PROJECT_DIR"])
KIND = os.environ.get("DW_BENCH_KIND", "watcher")
MODE = os.environ.get("DW_BENCH_MODE", "runner")
THREADS = int(os.environ.get("DW_BENCH_THREADS", "8"))
TARGET_PATH = os.environ.get("DW_BENCH_TARGET_PATH")
CONSUMERS = os.environ.get("DW_WH_CONSUMERS", "none")
DOWNSTREAM = [n for n in os.environ.get("DW_WH_DOWNSTREAM", "").split(",") if n]
SENSOR_INTERVAL = int(os.environ.get("DW_WH_SENSOR_INTERVAL", "5"))
ALL_SENSORS = os.environ.get("DW_WH_ALL_SENSORS", "") == "1"

project = DbtProject(
    project_dir=PROJECT_DIR, profiles_dir=PROJECT_DIR, target_path=os.environ.get("DW_BENCH_MANIFEST_TARGET", "target")
)

if KIND == "dagster-dbt":

    @dbt_assets(manifest=project.manifest_path, project=project)
    def warehouse_dbt(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
        yield from dbt.cli(["build", "--threads", str(THREADS)], context=context).stream()

    resources: dict[str, Any] = {"dbt": DbtCliResource(project_dir=project)}
elif KIND == "watcher":
    prepare_manifest(project)

    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def warehouse_dbt(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource) -> Iterator[Any]:
        yield from dbt_watcher.build(context)

    resources = {
        "dbt_watcher": DbtWatcherResource(
            project_dir=project,
            invocation_mode=MODE,
            threads=THREADS,
            target_path=TARGET_PATH,
            progress=False,
        )
    }
else:
    raise ValueError(f"DW_BENCH_KIND must be 'watcher' or 'dagster-dbt', not {KIND!r}")


def _key_of(assets: AssetsDefinition, name: str) -> AssetKey:
    for key in assets.keys:
        if key.path[-1] == name:
            return key
    raise ValueError(f"DW_WH_DOWNSTREAM: {name!r} is not a model of the project")


def _relation_of(assets: AssetsDefinition, key: AssetKey) -> str:
    unique_id = assets.get_asset_spec(key).metadata["dagster_dbt/unique_id"]
    return _MANIFEST["nodes"][unique_id]["relation_name"]


_MANIFEST = json.loads(Path(project.manifest_path).read_text()) if CONSUMERS != "none" else {}


def _downstream_asset(name: str) -> AssetsDefinition:
    """``after_<name>``: counts the rows of the model's table on the warehouse (a real consumer read)."""
    upstream = _key_of(warehouse_dbt, name)
    relation = _relation_of(warehouse_dbt, upstream)

    @asset(
        name=f"after_{name}",
        deps=[upstream],
        automation_condition=AutomationCondition.eager() if CONSUMERS == "eager" else None,
        group_name="downstream",
    )
    def _after() -> MaterializeResult:
        import psycopg2

        conn = psycopg2.connect(
            host=os.environ["DAGSTER_WATCHER_PG_HOST"],
            port=int(os.environ["DAGSTER_WATCHER_PG_PORT"]),
            user=os.environ["DAGSTER_WATCHER_PG_USER"],
            password=os.environ["DAGSTER_WATCHER_PG_PASSWORD"],
            dbname=os.environ["DAGSTER_WATCHER_PG_DBNAME"],
        )
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(f"select count(*) from {relation}")
            (rows,) = cur.fetchone()
        return MaterializeResult(metadata={"rows": int(rows)})

    return _after


downstream_assets = [_downstream_asset(n) for n in DOWNSTREAM] if CONSUMERS != "none" else []
jobs = []
sensors: list[Any] = []
if CONSUMERS == "sensors":
    if KIND != "watcher":
        raise ValueError("DW_WH_CONSUMERS=sensors needs DW_BENCH_KIND=watcher")
    by_model: dict[str | AssetKey, Any] = {
        n: define_asset_job(f"after_{n}_job", selection=AssetSelection.assets(a), executor_def=in_process_executor)
        for n, a in zip(DOWNSTREAM, downstream_assets, strict=True)
    }
    jobs = list(by_model.values())
    sensors = build_watcher_sensors(
        warehouse_dbt,
        downstream=by_model,
        minimum_interval_seconds=SENSOR_INTERVAL,
        # The default declares the ~190 sensors that launch nothing stopped; all running, one daemon on
        # 2 shared cores falls minutes behind (a first round took ~300 s).
        idle_status=DefaultSensorStatus.RUNNING if ALL_SENSORS else DefaultSensorStatus.STOPPED,
    )
elif CONSUMERS == "eager":
    sensors = [
        AutomationConditionSensorDefinition(
            "downstream_automation",
            target=AssetSelection.assets(*downstream_assets),
            minimum_interval_seconds=SENSOR_INTERVAL,
            default_status=DefaultSensorStatus.RUNNING,
        )
    ]

defs = Definitions(
    assets=[warehouse_dbt, *downstream_assets],
    jobs=jobs,
    sensors=sensors,
    resources=resources,
    # Runs launched by the daemon execute in their run worker (no extra process per step).
    executor=in_process_executor,
)
