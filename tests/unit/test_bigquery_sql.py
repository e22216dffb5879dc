"""The BigQuery engine's pure parts, no server: the SQL each materialization gets, job ids and links,
the dependency graph (order, priorities, test edges, unsupported reasons) and SKIPPED propagation
when a node fails."""

from __future__ import annotations

from typing import Any

import pytest

from dagster_watcher.bigquery import (
    JOB_ID_MAX_LENGTH,
    RENDERED_HOOKS_KEY,
    console_link,
    make_job_id,
    quote,
    relation_of,
)
from dagster_watcher.bigquery._ledger import _Ledger
from dagster_watcher.bigquery.graph import _build_graph, _topological, _unsupported_reason
from dagster_watcher.bigquery.sql import (
    COMPILE_ERROR_KEY,
    _hook_statements,
    _insert_sql,
    _merge_sql,
    _table_ddl,
    _test_sql,
)
from dagster_watcher.errors import UnsupportedNodeError
from dagster_watcher.status import NodeStatus


def _node(name: str, *parents: str, rtype: str = "model", materialized: str = "table", **config: Any) -> dict:
    return {
        "unique_id": f"{rtype}.pkg.{name}",
        "resource_type": rtype,
        "name": name,
        "database": "proj",
        "schema": "ds",
        "config": {"materialized": materialized, **config},
        "depends_on": {"nodes": list(parents)},
        "compiled_code": f"select 1 as id /* {name} */",
    }


def _manifest(*nodes: dict) -> dict[str, Any]:
    return {"nodes": {n["unique_id"]: n for n in nodes}}


# ---------------------------------------------------------------------------------------- SQL


def test_quote_escapes_backticks_and_backslashes():
    assert quote("a`b\\c") == "`a\\`b\\\\c`"


def test_relation_is_the_manifests_relation_name_or_built_from_alias():
    node = {**_node("m"), "relation_name": "`p`.`d`.`custom`"}
    assert relation_of(node) == "`p`.`d`.`custom`"
    assert relation_of({**_node("m"), "alias": "other"}) == "`proj`.`ds`.`other`"
    assert relation_of(node, "__dbt_tmp") == "`proj`.`ds`.`m__dbt_tmp`"


def test_table_ddl_renders_partition_cluster_and_labels_like_dbt_bigquery():
    node = _node(
        "m",
        partition_by={"field": "ts", "data_type": "timestamp", "granularity": "hour"},
        cluster_by=["a", "b"],
        labels={"team": "x"},
    )
    ddl = _table_ddl(node, "`proj`.`ds`.`m`", "select 1")
    assert ddl.startswith(
        "create or replace table `proj`.`ds`.`m` partition by timestamp_trunc(ts, hour) cluster by a, b "
        "options(labels=[('''team''', '''x''')])"
    )
    assert ddl.endswith("as (\nselect 1\n)")
    tmp = _table_ddl(_node("m"), "t", "select 1", tmp=True)
    assert "expiration_timestamp=TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 12 hour)" in tmp


def test_int64_range_partition_and_unsupported_ingestion_partitioning():
    node = _node("m", partition_by={"field": "n", "data_type": "int64", "range": {"start": 0, "end": 9}})
    assert "partition by range_bucket(n, generate_array(0, 9, 1))" in _table_ddl(node, "t", "s")
    with pytest.raises(UnsupportedNodeError, match="time_ingestion_partitioning"):
        _table_ddl(_node("m", partition_by={"field": "d", "time_ingestion_partitioning": True}), "t", "s")


def test_merge_updates_matched_rows_on_the_unique_key_and_inserts_the_rest():
    node = _node("m", materialized="incremental", unique_key="id", merge_exclude_columns=["created"])
    sql = _merge_sql(node, "T", "S", ["id", "value", "created"])
    assert sql.splitlines() == [
        "merge into T as DBT_INTERNAL_DEST",
        "using S as DBT_INTERNAL_SOURCE",
        "on (DBT_INTERNAL_SOURCE.id = DBT_INTERNAL_DEST.id)",
        "when matched then update set `id` = DBT_INTERNAL_SOURCE.`id`, `value` = DBT_INTERNAL_SOURCE.`value`",
        "when not matched then insert (`id`, `value`, `created`) values (`id`, `value`, `created`)",
    ]


def test_merge_without_key_never_matches_and_insert_selects_the_target_columns():
    assert "on FALSE" in _merge_sql(_node("m"), "T", "S", ["a"])
    assert "when matched" not in _merge_sql(_node("m"), "T", "S", ["a"])
    assert _insert_sql("T", "S", ["a", "b"]) == "insert into T (`a`, `b`)\nselect `a`, `b` from S"


def test_hooks_run_in_dbts_order_and_empty_ones_are_dropped():
    node = {
        **_node("m"),
        RENDERED_HOOKS_KEY: {
            "pre": [{"sql": "in1", "transaction": True}, {"sql": "out1", "transaction": False}, {"sql": "  "}],
            "post": [{"sql": "out2", "transaction": False}, {"sql": "in2", "transaction": True}],
        },
    }
    assert [s.sql for s in _hook_statements(node, "pre")] == ["out1", "in1"]
    assert [s.sql for s in _hook_statements(node, "post")] == ["in2", "out2"]
    assert {s.kind for s in _hook_statements(node, "pre")} == {"pre_hook"}


def test_test_sql_computes_failures_and_the_warn_error_verdicts():
    node = _node("t", rtype="test", materialized="test", warn_if=">10", limit=5)
    sql = _test_sql(node)
    assert "count(*) as failures" in sql
    assert "count(*) >10 as should_warn" in sql and "count(*) != 0 as should_error" in sql
    assert "limit 5\n) dbt_internal_test" in sql


# ------------------------------------------------------------------------------------ job ids


def test_job_ids_are_deterministic_sanitised_and_keep_sanitised_twins_apart():
    a = make_job_id("dw", "run/1", "model.p.a.b", 0, 2)
    assert a == make_job_id("dw", "run/1", "model.p.a.b", 0, 2)
    assert a.startswith("dw_run_1_model_p_a_b_") and a.endswith("_a0_s2")
    assert a != make_job_id("dw", "run/1", "model.p.a_b", 0, 2)
    assert a != make_job_id("dw", "run/1", "model.p.a.b", 1, 2)
    long_id = make_job_id("dw", "r" * 5000, "model.p." + "x" * 5000, 3, 4)
    assert len(long_id) <= JOB_ID_MAX_LENGTH and long_id.endswith("_a3_s4")


def test_console_link_names_project_location_and_job():
    assert console_link("p", None, "j") == (
        "https://console.cloud.google.com/bigquery?project=p&j=bq:US:j&page=queryresults"
    )
    assert "j=bq:EU:j" in console_link("p", "EU", "j")


# -------------------------------------------------------------------------------------- graph


def test_edges_pass_through_ephemeral_models_and_the_critical_path_goes_first():
    a = _node("a")
    eph = _node("eph", "model.pkg.a", materialized="ephemeral")
    b = _node("b", "model.pkg.eph")
    c = _node("c", "model.pkg.b")
    lone = _node("lone")
    manifest = _manifest(a, eph, b, c, lone)
    ids = [n["unique_id"] for n in (a, eph, b, c, lone)]
    graph = _build_graph(manifest, ids, build_semantics=False)
    assert "model.pkg.eph" not in graph
    assert graph["model.pkg.b"].parents == {"model.pkg.a"}
    assert (graph["model.pkg.a"].priority, graph["model.pkg.lone"].priority) == (3, 1)
    order = _topological(graph)
    assert order.index("model.pkg.a") < order.index("model.pkg.b") < order.index("model.pkg.c")


def test_build_semantics_make_models_wait_for_the_tests_of_what_they_read():
    a = _node("a")
    test = _node("not_null_a", "model.pkg.a", rtype="test", materialized="test")
    b = _node("b", "model.pkg.a")
    manifest = _manifest(a, test, b)
    ids = list(manifest["nodes"])
    assert _build_graph(manifest, ids, build_semantics=True)["model.pkg.b"].parents == {
        "model.pkg.a",
        "test.pkg.not_null_a",
    }
    assert _build_graph(manifest, ids, build_semantics=False)["model.pkg.b"].parents == {"model.pkg.a"}


def test_a_cycle_and_an_unknown_node_are_named():
    a, b = _node("a", "model.pkg.b"), _node("b", "model.pkg.a")
    with pytest.raises(ValueError, match="dependency cycle"):
        _build_graph(_manifest(a, b), ["model.pkg.a", "model.pkg.b"], build_semantics=False)
    with pytest.raises(KeyError, match="model.pkg.nope"):
        _build_graph(_manifest(a), ["model.pkg.nope"], build_semantics=False)


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (_node("m", materialized="snapshot"), "materialization 'snapshot' is not supported"),
        ({**_node("m"), "language": "python"}, "python models are not supported"),
        (_node("m", **{"pre-hook": ["select 1"]}), "unless rendered at compile time"),
        (_node("m", grants={"select": ["x"]}), "grants are not supported"),
        (_node("m", contract={"enforced": True}), "enforced model contracts"),
        (_node("m", materialized="incremental", incremental_strategy="insert_overwrite"), "'insert_overwrite'"),
        (_node("m", materialized="incremental", on_schema_change="fail"), "on_schema_change 'fail'"),
        ({**_node("m"), "compiled_code": None}, "run `dbt compile`"),
        ({**_node("m"), COMPILE_ERROR_KEY: "dbt compile failed: boom"}, "dbt compile failed: boom"),
        (_node("s", rtype="snapshot", materialized="snapshot"), "resource type 'snapshot'"),
    ],
    ids=[
        "snapshot",
        "python",
        "unrendered-hooks",
        "grants",
        "contract",
        "strategy",
        "schema-change",
        "uncompiled",
        "compile-error",
        "resource-type",
    ],
)
def test_unsupported_reason_names_what_to_change(node: dict, reason: str):
    config = node["config"]
    found = _unsupported_reason(node, node["resource_type"], config["materialized"])
    assert found is not None and reason in found


def test_a_plain_table_view_and_incremental_are_supported():
    for materialized in ("table", "view", "incremental"):
        assert _unsupported_reason(_node("m", materialized=materialized), "model", materialized) is None


# ------------------------------------------------------------------------ SKIPPED propagation


def test_a_failed_node_skips_every_descendant_once_and_names_the_failure():
    """Also: a second outcome for a finished node is ignored (exactly one result each)."""
    a, b, c = _node("a"), _node("b", "model.pkg.a"), _node("c", "model.pkg.b", "model.pkg.a")
    other = _node("other")
    manifest = _manifest(a, b, c, other)
    ledger = _Ledger(_build_graph(manifest, list(manifest["nodes"]), build_semantics=True), "r", None)
    ledger.fail(ledger.node_jobs["model.pkg.a"], "boom")
    ledger.fail(ledger.node_jobs["model.pkg.a"], "reported twice")
    by_id = {r.unique_id: r for r in ledger.drain()}
    assert len(by_id) == 3 and not ledger.results
    assert by_id["model.pkg.a"].status is NodeStatus.ERROR and by_id["model.pkg.a"].message == "boom"
    for uid in ("model.pkg.b", "model.pkg.c"):
        assert by_id[uid].status is NodeStatus.SKIPPED
        assert by_id[uid].skipped_because == ("model.pkg.a",)
        assert by_id[uid].message == "skipped: upstream model.pkg.a did not succeed"
    assert "model.pkg.other" not in by_id


def test_secrets_in_bigquery_error_text_are_masked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DBT_ENV_SECRET_TOKEN", "hunter2")
    manifest = _manifest(_node("a"))
    ledger = _Ledger(_build_graph(manifest, ["model.pkg.a"], build_semantics=True), "r", None)
    ledger.fail(ledger.node_jobs["model.pkg.a"], "Syntax error near 'hunter2'")
    (result,) = ledger.results
    assert result.message is not None and "hunter2" not in result.message
