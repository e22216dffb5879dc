"""The example on its postgres target (issue 13 item 1): a real multi-client warehouse.

One watcher build on a throwaway local PostgreSQL server (example_project/local_postgres.py), then the
example's consumer asset reads the `customers` table itself from that server.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from dagster_watcher import DbtWatcherResource

from ..support import EXAMPLE


def test_watcher_build_on_postgres_and_consumer_reads_the_table(tmp_path: Path, monkeypatch) -> None:
    import sys

    sys.path.insert(0, str(EXAMPLE))
    from local_postgres import local_postgres

    monkeypatch.setenv("DAGSTER_WATCHER_TARGET", "postgres")
    with local_postgres():
        spec = importlib.util.spec_from_file_location("shop_pg_definitions", EXAMPLE / "definitions.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        instance = DagsterInstance.ephemeral()
        resource = DbtWatcherResource(
            project_dir=module.shop_project,
            target="postgres",
            invocation_mode="runner",
            target_path=os.fspath(tmp_path / "dbt_target"),
            progress=False,
        )
        build = materialize([module.shop_dbt_assets], resources={"dbt_watcher": resource}, instance=instance)
        assert build.success
        customers = instance.get_latest_materialization_event(AssetKey("customers"))
        assert customers is not None and customers.run_id == build.run_id

        report = materialize([module.customer_report], instance=instance)
        assert report.success
        md = instance.get_latest_materialization_event(AssetKey("customer_report")).asset_materialization.metadata
        # The consumer read the table on the server (30 customers in the seed), not Dagster's metadata.
        assert md["rows_read"].value == 30
        assert md["upstream_run"].value == build.run_id
