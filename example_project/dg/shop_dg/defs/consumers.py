"""A consumer of the `customers` model, launched by its watcher sensor as soon as `customers` is
materialized (``downstream`` in watcher/defs.yaml names its job), while dbt still builds the rest."""

import dagster as dg


@dg.asset(deps=[dg.AssetKey("customers")], group_name="consumers")
def customer_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Records which producer run materialized `customers` and the relation it wrote (read from the
    materialization's metadata: a DuckDB file admits one process at a time while dbt builds)."""
    latest = context.instance.get_latest_materialization_event(dg.AssetKey("customers"))
    md = latest.asset_materialization.metadata if latest and latest.asset_materialization else {}
    return dg.MaterializeResult(
        metadata={
            "upstream_run": dg.MetadataValue.text(latest.run_id if latest else ""),
            "relation": dg.MetadataValue.text(
                str(md["dagster_watcher/relation_name"].value if "dagster_watcher/relation_name" in md else None)
            ),
        }
    )


customer_report_job = dg.define_asset_job("customer_report_job", selection=[customer_report])
