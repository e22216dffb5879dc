"""The pure parts of dagster-dbt's runtime metadata on the watcher's events: which nodes get which
reads (``fetch_plan``), the plan as the dbt process receives it, the join of each node's result with
the facts read for it (whichever arrives first), and facts -> dagster-dbt's metadata keys. The reads
themselves run against real dbt in ``tests/integration/test_runtime_metadata.py``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, AssetSpec, TableColumnDep
from dagster_dbt import DagsterDbtTranslator

from dagster_watcher.invocation._fetch import FetchPlan, NodeFetch
from dagster_watcher.runtime_metadata import FetchedMetadata, fetch_plan, metadata_from_facts
from dagster_watcher.status import NodeResult, NodeStatus


def _node(unique_id: str, materialized: str = "table", **extra: Any) -> dict[str, Any]:
    resource_type, package, name = unique_id.split(".")[:3]
    return {
        "unique_id": unique_id,
        "resource_type": resource_type,
        "name": name,
        "package_name": package,
        "original_file_path": f"models/{name}.sql",
        "database": "shop",
        "schema": "main",
        "alias": name,
        "relation_name": f'"shop"."main"."{name}"',
        "config": {"materialized": materialized},
        "depends_on": {"nodes": []},
        **extra,
    }


MANIFEST: dict[str, Any] = {
    "metadata": {"adapter_type": "duckdb"},
    "nodes": {
        "model.shop.orders": _node("model.shop.orders", depends_on={"nodes": ["model.shop.stg", "source.shop.raw.o"]}),
        "model.shop.stg": _node("model.shop.stg", "view"),
        "model.shop.eph": _node("model.shop.eph", "ephemeral"),
        "seed.shop.raw_s": _node("seed.shop.raw_s", "seed"),
        "snapshot.shop.snap": _node("snapshot.shop.snap", "snapshot"),
        "test.shop.not_null_x": _node("test.shop.not_null_x", "test"),
    },
    "sources": {
        "source.shop.raw.o": {
            "unique_id": "source.shop.raw.o",
            "resource_type": "source",
            "database": "shop",
            "schema": "raw",
            "identifier": "orders_table",
            "relation_name": '"shop"."raw"."orders_table"',
        }
    },
    "parent_map": {
        "model.shop.orders": ["model.shop.stg", "source.shop.raw.o"],
        "snapshot.shop.snap": ["seed.shop.raw_s"],
    },
}
ALL = list(MANIFEST["nodes"])


def test_fetch_plan_reads_what_dagster_dbt_reads():
    plan = fetch_plan(MANIFEST, ALL, row_counts=True, columns=True)
    assert plan is not None and plan.adapter_type == "duckdb"
    assert set(plan.nodes) == {"model.shop.orders", "model.shop.stg", "seed.shop.raw_s", "snapshot.shop.snap"}, (
        "built relations only: no ephemeral model, no test"
    )
    orders = plan.nodes["model.shop.orders"]
    assert orders == NodeFetch(
        relation=("shop", "main", "orders"),
        row_count=True,
        columns=True,
        parents=(("shop", "main", "stg"), ("shop", "raw", "orders_table")),  # a source by its identifier
    )
    assert plan.nodes["model.shop.stg"].row_count is False, "a view is never counted (it would run its query)"
    assert plan.nodes["seed.shop.raw_s"].parents == (), "a seed has no SQL to trace"


def test_fetch_plan_for_one_flag_or_none():
    counts = fetch_plan(MANIFEST, ALL, row_counts=True, columns=False)
    assert counts is not None and not any(n.columns or n.parents for n in counts.nodes.values())
    columns = fetch_plan(MANIFEST, ALL, row_counts=False, columns=True)
    assert columns is not None and not any(n.row_count for n in columns.nodes.values())
    assert fetch_plan(MANIFEST, ALL, row_counts=False, columns=False) is None
    assert fetch_plan(MANIFEST, ["test.shop.not_null_x"], row_counts=True, columns=True) is None


def test_fetch_plan_travels_to_the_dbt_process_as_json():
    plan = fetch_plan(MANIFEST, ALL, row_counts=True, columns=True)
    assert plan is not None
    assert FetchPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("dbt_status", "wanted"),
    [("success", True), ("no-op", True), ("partial success", True), ("error", False), ("skipped", False)],
)
def test_metadata_is_read_for_built_nodes_only(dbt_status: str, wanted: bool):
    plan = FetchPlan("duckdb", {"model.shop.orders": NodeFetch(("shop", "main", "orders"), row_count=True)})
    assert plan.wants("model.shop.orders", dbt_status) is wanted
    assert plan.wants("model.shop.other", "success") is False


def _result(unique_id: str, status: NodeStatus = NodeStatus.SUCCESS) -> NodeResult:
    return NodeResult(unique_id=unique_id, resource_type="model", status=status, dbt_status=status.value)


def _join() -> FetchedMetadata:
    plan = FetchPlan("duckdb", {"model.shop.orders": NodeFetch(("shop", "main", "orders"), row_count=True)})
    return FetchedMetadata(plan, MANIFEST, translator=DagsterDbtTranslator(), project=None, target_path=None)


def test_a_built_node_waits_for_its_facts():
    join = _join()
    assert join.accept(_result("model.shop.orders")) == [], "held until its row count arrives"
    (released,) = join.arrived({"unique_id": "model.shop.orders", "row_count": 60})
    assert released.runtime_metadata == {"dagster/row_count": 60, "dagster/storage_kind": "duckdb"}


def test_facts_that_arrive_first_wait_for_their_node():
    join = _join()
    assert join.arrived({"unique_id": "model.shop.orders", "row_count": 3}) == []
    (released,) = join.accept(_result("model.shop.orders"))
    assert released.runtime_metadata["dagster/row_count"] == 3


def test_nodes_without_facts_pass_at_once_and_waiting_ones_are_released_at_the_end():
    join = _join()
    failed = _result("model.shop.orders", NodeStatus.ERROR)
    assert join.accept(failed) == [failed], "no facts come for a node that was not built"
    other = _result("model.shop.stg")
    assert join.accept(other) == [other]
    built = _result("model.shop.orders")
    assert join.accept(built) == []
    assert join.release() == [built], "dbt exited: the node goes on without metadata, never stays unrecorded"
    assert join.release() == []


def test_facts_become_dagster_dbts_keys():
    facts = {
        "unique_id": "model.shop.orders",
        "row_count": 60,
        "columns": [["order_id", "INTEGER"], ["amount", "DOUBLE"]],
    }
    md = metadata_from_facts(
        facts,
        MANIFEST["nodes"]["model.shop.orders"],
        MANIFEST,
        translator=DagsterDbtTranslator(),
        project=None,
        target_path=None,
        adapter_type="duckdb",
    )
    assert set(md) == {"dagster/row_count", "dagster/storage_kind", "dagster/column_schema"}
    schema = md["dagster/column_schema"]  # a TableSchema, as dagster-dbt leaves it
    assert [(c.name, c.type) for c in schema.columns] == [("order_id", "INTEGER"), ("amount", "DOUBLE")]


def test_facts_with_errors_give_what_was_read():
    facts = {"unique_id": "model.shop.orders", "errors": ["row count: boom"], "columns": [["a", "INTEGER"]]}
    md = metadata_from_facts(
        facts, {}, MANIFEST, translator=DagsterDbtTranslator(), project=None, target_path=None, adapter_type="duckdb"
    )
    assert set(md) == {"dagster/column_schema"}


class _KeyByName(DagsterDbtTranslator):
    """Parents' asset keys without a full manifest node (the lineage only asks for the key)."""

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Any) -> AssetSpec:
        return AssetSpec(key=AssetKey(["lake", unique_id.split(".")[-1]]))


def _lineage_case(tmp_path: Path, sql: str) -> dict[str, Any]:
    compiled = tmp_path / "compiled" / "shop" / "models" / "orders.sql"
    compiled.parent.mkdir(parents=True)
    compiled.write_text(sql)
    facts = {
        "unique_id": "model.shop.orders",
        "columns": [["order_id", "INTEGER"], ["total", "DOUBLE"]],
        "parents": {
            '"shop"."main"."stg"': [["id", "INTEGER"], ["amount", "DOUBLE"]],
            '"shop"."raw"."orders_table"': [["id", "INTEGER"]],
        },
    }
    return metadata_from_facts(
        facts,
        MANIFEST["nodes"]["model.shop.orders"],
        MANIFEST,
        translator=_KeyByName(),
        project=None,
        target_path=tmp_path,
        adapter_type="duckdb",
    )


def test_column_lineage_is_dagster_dbts_sqlglot_lineage(tmp_path: Path):
    md = _lineage_case(tmp_path, 'select id as order_id, amount * 2 as total from "shop"."main"."stg"')
    deps = md["dagster/column_lineage"].deps_by_column
    assert deps["order_id"] == [TableColumnDep(asset_key=AssetKey(["lake", "stg"]), column_name="id")]
    assert deps["total"] == [TableColumnDep(asset_key=AssetKey(["lake", "stg"]), column_name="amount")]


def test_sql_that_sqlglot_cannot_trace_leaves_the_lineage_out(tmp_path: Path):
    md = _lineage_case(tmp_path, 'select nope as order_id from "shop"."main"."stg"')
    assert "dagster/column_lineage" not in md and "dagster/column_schema" in md
