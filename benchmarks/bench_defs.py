"""Dagster definitions for the benchmark harness, configured through environment variables so one
file serves every project and variant (``materialize()`` workers, ``dagster asset materialize -f``
and the code-location load-time measurement all import it in a fresh process).

- ``DW_BENCH_PROJECT_DIR``: the dbt project (its pre-parsed ``target/manifest.json`` is used).
- ``DW_BENCH_KIND``: ``watcher`` (``@dbt_watcher_assets`` + ``DbtWatcherResource``) or ``dagster-dbt``
  (``@dbt_assets`` + ``DbtCliResource`` with ``dbt.cli(["build"], context=context).stream()``).
- ``DW_BENCH_MODE``: watcher invocation mode, ``runner`` or ``subprocess``.
- ``DW_BENCH_THREADS``: dbt ``--threads`` for the build.
- ``DW_BENCH_TARGET_PATH``: dbt target path for the build (artifacts, run_results.json).
- ``DW_BENCH_MANIFEST_TARGET``: where the harness's up-front ``dbt parse`` wrote manifest.json.
- ``DW_BENCH_SENSORS=1``: also define one consumer sensor per model (``build_watcher_sensors``).
- ``DW_BENCH_FETCH=1``: also fetch row counts and column metadata (dagster-dbt's
  ``fetch_row_counts().fetch_column_metadata()``, the watcher's ``fetch_row_counts``/``fetch_column_metadata``).
"""

import os
from pathlib import Path

from dagster import AssetExecutionContext, Definitions
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from dagster_watcher import DbtWatcherResource, build_watcher_sensors, dbt_watcher_assets
from dagster_watcher.project import prepare_manifest

PROJECT_DIR = Path(os.environ.get("DW_BENCH_PROJECT_DIR") or Path(__file__).resolve().parents[1] / "example_project")
KIND = os.environ.get("DW_BENCH_KIND", "watcher")
MODE = os.environ.get("DW_BENCH_MODE", "runner")
THREADS = int(os.environ.get("DW_BENCH_THREADS", "4"))
TARGET_PATH = os.environ.get("DW_BENCH_TARGET_PATH")
WITH_SENSORS = os.environ.get("DW_BENCH_SENSORS") == "1"
FETCH = os.environ.get("DW_BENCH_FETCH") == "1"

# The harness parses once into DW_BENCH_MANIFEST_TARGET (absolute); default: the project's target/.
project = DbtProject(
    project_dir=PROJECT_DIR, profiles_dir=PROJECT_DIR, target_path=os.environ.get("DW_BENCH_MANIFEST_TARGET", "target")
)

if KIND == "dagster-dbt":

    @dbt_assets(manifest=project.manifest_path, project=project)
    def bench_dbt_assets(context: AssetExecutionContext, dbt: DbtCliResource):
        stream = dbt.cli(["build", "--threads", str(THREADS)], context=context).stream()
        yield from stream.fetch_row_counts().fetch_column_metadata() if FETCH else stream

    resources = {"dbt": DbtCliResource(project_dir=project)}
    sensors = []
elif KIND == "watcher":
    # What a watcher user writes: make sure the manifest is current (a no-op stat walk here, the
    # harness parsed beforehand), then define the assets from it.
    prepare_manifest(project)

    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def bench_dbt_assets(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
        yield from dbt_watcher.build(context)

    resources = {
        "dbt_watcher": DbtWatcherResource(
            project_dir=project,
            invocation_mode=MODE,  # type: ignore[arg-type]
            threads=THREADS,
            target_path=TARGET_PATH,
            fetch_row_counts=FETCH,
            fetch_column_metadata=FETCH,
        )
    }
    sensors = build_watcher_sensors(bench_dbt_assets) if WITH_SENSORS else []
else:
    raise ValueError(f"DW_BENCH_KIND must be 'watcher' or 'dagster-dbt', not {KIND!r}")

defs = Definitions(assets=[bench_dbt_assets], resources=resources, sensors=sensors)
