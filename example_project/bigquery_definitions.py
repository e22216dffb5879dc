"""The example shop project on BigQuery: the same watcher assets as ``definitions.py`` (one per dbt
model and seed, one check per dbt test), but the models run as asynchronous BigQuery jobs through
``BigQueryWatcherResource`` instead of one ``dbt build`` on DuckDB.

Off by default: ``workspace.yaml`` does not load this file. Load it explicitly::

    dagster dev -f example_project/bigquery_definitions.py

It uses the ``bigquery`` target of ``profiles.yml`` (dbt compiles against it) and the same environment
variables for the resource, so dbt and the jobs always talk to the same BigQuery:

- A local BigQuery-API server (what the tests use): ``python -m tests.support.bigquery.server serve`` prints
  its URL; ``export DAGSTER_WATCHER_BQ_ENDPOINT=<that URL>``. Project ``test-proj``, anonymous access.
- Real BigQuery: ``export DAGSTER_WATCHER_BQ_ENDPOINT=https://bigquery.googleapis.com``,
  ``DAGSTER_WATCHER_BQ_PROJECT=<your project>``, ``DAGSTER_WATCHER_BQ_DATASET=<dataset>``, and
  ``DAGSTER_WATCHER_BQ_TOKEN=$(gcloud auth print-access-token)`` for dbt's compile (the profile's
  ``oauth-secrets`` method). The jobs use Application Default Credentials
  (``gcloud auth application-default login``), or a service-account key in
  ``DAGSTER_WATCHER_BQ_CREDENTIALS_JSON`` (the JSON text or its base64).

Snapshots are excluded: the BigQuery engine runs views, tables, incremental models (merge/append),
seeds and data tests (see docs/bigquery.md).
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from dagster import AssetExecutionContext, AssetSelection, Definitions, EnvVar, define_asset_job
from dagster_dbt import DbtProject

from dagster_watcher import BigQueryWatcherResource, dbt_watcher_assets
from dagster_watcher.dagster_mapping import DagsterNodeEvent
from dagster_watcher.project import prepare_manifest

PROJECT_DIR = Path(__file__).resolve().parent
ENDPOINT = os.environ.get("DAGSTER_WATCHER_BQ_ENDPOINT", "http://127.0.0.1:9050")  # profiles.yml reads the same
# Where the definitions' parse and the per-run compiles are written (kept apart from the DuckDB target).
TARGET_PATH = Path(os.environ.get("DAGSTER_WATCHER_BQ_TARGET_PATH") or PROJECT_DIR / "target" / "bigquery")

shop_bigquery_project = DbtProject(
    project_dir=PROJECT_DIR, profiles_dir=PROJECT_DIR, target="bigquery", target_path=TARGET_PATH / "parse"
)
prepare_manifest(shop_bigquery_project)  # dbt parse for the bigquery target (needs no server)


@dbt_watcher_assets(
    manifest=shop_bigquery_project.manifest_path,
    project=shop_bigquery_project,
    exclude="resource_type:snapshot",
    name="shop_bigquery_dbt_assets",
)
def shop_bigquery_dbt_assets(
    context: AssetExecutionContext, bigquery_watcher: BigQueryWatcherResource
) -> Iterator[DagsterNodeEvent]:
    """The shop project as BigQuery jobs: compiled once per run, each model submitted as soon as its
    parents' jobs succeeded, each outcome recorded the moment its job finishes."""
    yield from bigquery_watcher.build(context)


shop_bigquery_job = define_asset_job(
    "shop_bigquery_job",
    selection=AssetSelection.assets(shop_bigquery_dbt_assets),
    description="Build the shop project's models as asynchronous BigQuery jobs.",
)

defs = Definitions(
    assets=[shop_bigquery_dbt_assets],
    jobs=[shop_bigquery_job],
    resources={
        "bigquery_watcher": BigQueryWatcherResource(
            project_dir=shop_bigquery_project,  # target "bigquery" and the profiles dir come with it
            project=os.environ.get("DAGSTER_WATCHER_BQ_PROJECT", "test-proj"),
            location="US",  # as in profiles.yml
            api_endpoint=ENDPOINT,
            credentials_json=(
                EnvVar("DAGSTER_WATCHER_BQ_CREDENTIALS_JSON")
                if os.environ.get("DAGSTER_WATCHER_BQ_CREDENTIALS_JSON")
                else None
            ),
            max_concurrent_jobs=int(os.environ.get("DAGSTER_WATCHER_BQ_MAX_JOBS", "8")),
            poll_interval=float(os.environ.get("DAGSTER_WATCHER_BQ_POLL_INTERVAL", "1.0")),
            labels={"app": "dagster-watcher-example"},
            # e.g. DAGSTER_WATCHER_DBT_VARS='{"fail_model": "stg_orders"}': the project's failure switch
            # renders BigQuery's ERROR() into that model's pre-hook, to see failure handling.
            dbt_vars=json.loads(os.environ.get("DAGSTER_WATCHER_DBT_VARS") or "{}"),
            target_path=os.fspath(TARGET_PATH / "compile"),
            progress=os.environ.get("DAGSTER_WATCHER_PROGRESS", "1") != "0",
        )
    },
)
