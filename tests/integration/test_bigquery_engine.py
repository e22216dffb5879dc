"""The BigQuery async engine against a real BigQuery-API server (local-bigquery), no mocks.

The session fixture installs the server into ``.bq-emulator/`` on first use (about a minute on a
fresh machine, a file read afterwards) and starts it on free ports. Select with ``-m bigquery``.

Each test writes to its own dataset, so tests are independent of each other's tables. Job counts
are taken from the server (``list_jobs``), timing only from the jobs' own start/end timestamps;
nothing asserts on a duration.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dagster_watcher.bigquery import (
    BigQueryEngine,
    BigQueryEngineConfig,
    compile_project,
    make_job_id,
)
from dagster_watcher.status import NodeResult, NodeStatus

from ..support.bigquery import server as bigquery_server
from ..support.bigquery.server import jobs_with_prefix, node_jobs, rows

pytestmark = pytest.mark.bigquery

PROJECT_DIR = Path(__file__).resolve().parents[1] / "support" / "bigquery" / "bq_project"
PKG = "bq_project"


def uid(kind: str, name: str) -> str:
    return f"{kind}.{PKG}.{name}"


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def compile_for(
    bq_server: bigquery_server.BigQueryServer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., dict[str, Any]]:
    """Compile the test project for one dataset (dbt-bigquery against the server) -> manifest."""

    def _compile(dataset: str, **vars: Any) -> dict[str, Any]:
        target = tmp_path_factory.mktemp(f"target-{dataset}")
        return compile_project(
            PROJECT_DIR,
            profiles_dir=PROJECT_DIR,
            target_path=target,
            vars=vars or None,
            env={
                "BQ_API_ENDPOINT": bq_server.url,
                "BQ_PROJECT": bq_server.project,
                "BQ_DATASET": dataset,
                "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            },
        )

    return _compile


def engine_for(server: bigquery_server.BigQueryServer, **overrides: Any) -> BigQueryEngine:
    config = BigQueryEngineConfig(project=server.project, api_endpoint=server.url, poll_interval=0.2, **overrides)
    return BigQueryEngine(config)


def by_id(results: list[NodeResult]) -> dict[str, NodeResult]:
    ids = [r.unique_id for r in results]
    assert len(ids) == len(set(ids)), f"a node was reported twice: {ids}"
    return {r.unique_id: r for r in results}


def selection(manifest: dict[str, Any], folder: str, *, with_seeds_and_tests: bool = False) -> list[str]:
    chosen = [
        u
        for u, n in manifest["nodes"].items()
        if n["resource_type"] == "model" and f"models/{folder}/" in n["original_file_path"]
    ]
    if with_seeds_and_tests:
        chosen += [u for u, n in manifest["nodes"].items() if n["resource_type"] == "seed"]
        chosen += [
            u
            for u, n in manifest["nodes"].items()
            if n["resource_type"] == "test" and set(n["depends_on"]["nodes"]) <= set(chosen)
        ]
    return sorted(set(chosen))


# ------------------------------------------------------------------------------------ no server


def test_job_ids_are_deterministic_sanitised_and_bounded() -> None:
    a = make_job_id("dw", "run:1/2", "model.pkg.my model", 0, 1)
    assert a == make_job_id("dw", "run:1/2", "model.pkg.my model", 0, 1)
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert a != make_job_id("dw", "run:1/2", "model.pkg.my model", 1, 1)
    assert a != make_job_id("dw", "run:1/2", "model.pkg.my model", 0, 2)
    # Names that sanitise alike still get different ids (hash of the raw unique_id).
    assert make_job_id("dw", "r", "model.p.a_b", 0, 0) != make_job_id("dw", "r", "model.p.a.b", 0, 0)
    long_id = make_job_id("dw", "r" * 2000, "model.p." + "x" * 3000, 12, 3)
    assert len(long_id) <= 1024 and long_id.endswith("_a12_s3")


def test_plan_follows_ephemerals_and_gates_children_on_tests() -> None:
    nodes = {
        "seed.p.s": {"resource_type": "seed", "config": {"materialized": "seed"}, "depends_on": {}},
        "model.p.a": {
            "resource_type": "model",
            "config": {"materialized": "view"},
            "depends_on": {"nodes": ["seed.p.s"]},
            "compiled_code": "select 1",
        },
        "model.p.e": {
            "resource_type": "model",
            "config": {"materialized": "ephemeral"},
            "depends_on": {"nodes": ["model.p.a"]},
        },
        "model.p.b": {
            "resource_type": "model",
            "config": {"materialized": "table"},
            "depends_on": {"nodes": ["model.p.e"]},
            "compiled_code": "select 1",
        },
        "test.p.t": {
            "resource_type": "test",
            "config": {"materialized": "test"},
            "depends_on": {"nodes": ["model.p.a"]},
            "compiled_code": "select 1",
        },
    }
    plan = BigQueryEngine(BigQueryEngineConfig(project="p")).plan({"nodes": nodes}, list(nodes))
    assert "model.p.e" not in plan  # ephemeral: inlined by dbt, not run
    assert plan["model.p.b"] == {"model.p.a", "test.p.t"}  # through the ephemeral + build gating
    assert plan["test.p.t"] == {"model.p.a"}


# ---------------------------------------------------------------------------------- the harness


def test_server_answers_queries_from_the_official_client(bq_client: Any) -> None:
    assert rows(bq_client, "select 40 + 2 as answer") == [(42,)]


# ------------------------------------------------------------------------------- building models


def test_builds_project_then_merges_and_appends_incrementally(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any, compile_for: Any
) -> None:
    dataset = "t_build"
    manifest = compile_for(dataset)
    selected = selection(manifest, "core", with_seeds_and_tests=True)
    engine = engine_for(bq_server)
    run_1 = f"build1-{uuid.uuid4().hex[:8]}"
    results = by_id(list(engine.run(manifest, selected, run_id=run_1)))

    # Exactly one result per selected non-ephemeral node.
    assert set(results) == set(selected) - {uid("model", "active_customers")}
    statuses = {u: r.status for u, r in results.items()}
    assert statuses[uid("seed", "raw_customers")] is NodeStatus.SUCCESS
    for name in ("stg_customers", "customer_totals", "customers_merge", "events_append"):
        assert statuses[uid("model", name)] is NodeStatus.SUCCESS, results[uid("model", name)].message
    assert statuses[uid("test", "inactive_customers_warn")] is NodeStatus.WARN
    assert results[uid("test", "inactive_customers_warn")].failures == 1
    tests = [r for r in results.values() if r.resource_type == "test"]
    assert sum(r.status is NodeStatus.SUCCESS for r in tests) == len(tests) - 1

    # Relations: seed table, view, aliased table in the custom schema, incremental tables.
    assert bq_client.get_table(f"test-proj.{dataset}.raw_customers").table_type == "TABLE"
    assert bq_client.get_table(f"test-proj.{dataset}.stg_customers").table_type == "VIEW"
    dim = results[uid("model", "customer_totals")]
    assert dim.relation_name == f"`test-proj`.`{dataset}_marts`.`dim_customers`"
    assert rows(bq_client, f"select id, double_amount from `test-proj.{dataset}_marts.dim_customers` order by id") == [
        (1, 21),
        (3, 60.5),
        (4, 0),
    ]
    assert rows(bq_client, f"select count(*) from `test-proj.{dataset}.raw_customers`") == [(4,)]
    assert rows(bq_client, f"select id, amount, batch from `test-proj.{dataset}.customers_merge` order by id") == [
        (1, 110.5, 1),
        (2, 120, 1),
        (3, 130.25, 1),
        (4, 100, 1),
    ]
    assert rows(bq_client, f"select count(*) from `test-proj.{dataset}.events_append`") == [(3,)]

    # adapter_response carries the job, its statement type, stats and a console link.
    response = results[uid("model", "customer_totals")].adapter_response
    job = bq_client.get_job(response["job_id"])
    assert job.state == "DONE" and job.error_result is None
    assert response["statement_type"] == "CREATE_TABLE_AS_SELECT"
    assert response["bytes_processed"] == 0 and "slot_ms" in response
    assert response["job_id"] in response["job_link"]
    assert dim.started_at == job.started and dim.completed_at == job.ended

    # Second batch, a new run: the incremental models now run tmp table -> MERGE/INSERT -> drop.
    manifest_2 = compile_for(dataset, batch=2)
    run_2 = f"build2-{uuid.uuid4().hex[:8]}"
    results_2 = by_id(list(engine.run(manifest_2, selected, run_id=run_2)))
    merged = results_2[uid("model", "customers_merge")]
    assert merged.status is NodeStatus.SUCCESS, merged.message
    assert merged.adapter_response["plan"] == "incremental-merge"
    assert [bq_client.get_job(j).statement_type for j in merged.adapter_response["job_ids"]] == [
        "CREATE_TABLE_AS_SELECT",
        "MERGE",
        "DROP_TABLE",
    ]
    assert merged.adapter_response["statement_type"] == "MERGE"
    assert rows(bq_client, f"select id, amount, batch from `test-proj.{dataset}.customers_merge` order by id") == [
        (1, 110.5, 1),
        (2, 220, 2),
        (3, 230.25, 2),
        (4, 200, 2),
        (5, 205, 2),
    ]
    appended = results_2[uid("model", "events_append")]
    assert appended.adapter_response["statement_type"] == "INSERT"
    assert rows(
        bq_client, f"select batch, count(*) from `test-proj.{dataset}.events_append` group by batch order by batch"
    ) == [(1, 3), (2, 3)]
    tables = {t.table_id for t in bq_client.list_tables(f"test-proj.{dataset}")}
    assert not {t for t in tables if t.endswith("__dbt_tmp")}, tables

    # The first run id again: every job re-attaches (incremental models keep the plan their first
    # attempt chose, "create", although the tables exist now); the server gets no new job.
    before = len(jobs_with_prefix(bq_client, run_1))
    again = by_id(list(engine.run(manifest_2, selected, run_id=run_1)))
    assert len(jobs_with_prefix(bq_client, run_1)) == before
    assert {u: r.status for u, r in again.items()} == statuses
    assert all(r.adapter_response["reattached"] for r in again.values())
    assert again[uid("model", "customers_merge")].adapter_response["plan"] == "create"
    assert rows(bq_client, f"select count(*) from `test-proj.{dataset}.events_append`") == [(6,)]


def test_independent_slow_models_overlap_from_one_thread(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any, compile_for: Any
) -> None:
    # The local server holds each jobs.insert up to 1 s, so submissions are ~1 s apart: each query
    # must run well over 2 s for three of them to be running at once (1300 -> several seconds).
    manifest = compile_for("t_overlap", slow_n=1300)
    selected = selection(manifest, "slow")
    assert len(selected) == 3
    engine = engine_for(bq_server, max_concurrent_jobs=3)
    threads_before = threading.active_count()
    results = []
    for result in engine.run(manifest, selected, run_id=f"overlap-{uuid.uuid4().hex[:8]}"):
        # One process, one loop: the engine starts no thread of its own.
        assert threading.active_count() == threads_before
        results.append(result)
    assert all(r.status is NodeStatus.SUCCESS for r in results), [r.message for r in results]
    jobs = [bq_client.get_job(r.adapter_response["job_id"]) for r in results]
    # All three ran at the same time at some instant: the last start precedes the first end.
    assert max(j.started for j in jobs) < min(j.ended for j in jobs), [(j.started, j.ended) for j in jobs]


# ---------------------------------------------------------------------------- failure and retry


@pytest.fixture(scope="module")
def broken_manifest(compile_for: Any) -> dict[str, Any]:
    return compile_for("t_fail", break_model=True)


def test_failure_carries_bigquery_error_and_skips_descendants(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any, broken_manifest: dict[str, Any]
) -> None:
    selected = [uid("model", n) for n in ("bad_model", "bad_child", "bad_grandchild", "independent")]
    run_id = f"fail-{uuid.uuid4().hex[:8]}"
    results = by_id(list(engine_for(bq_server).run(broken_manifest, selected, run_id=run_id)))

    bad = results[uid("model", "bad_model")]
    assert bad.status is NodeStatus.ERROR and bad.dbt_status == "error"
    message = bad.message or ""
    assert "no_such_table" in message and "was not found" in message, message
    job = bq_client.get_job(bad.adapter_response["job_id"])
    assert job.error_result["message"] in message
    for name in ("bad_child", "bad_grandchild"):
        skipped = results[uid("model", name)]
        assert skipped.status is NodeStatus.SKIPPED
        assert skipped.skipped_because == (uid("model", "bad_model"),)
    assert results[uid("model", "independent")].status is NodeStatus.SUCCESS

    jobs = jobs_with_prefix(bq_client, run_id)
    assert len(node_jobs(jobs, uid("model", "bad_model"))) == 1
    assert len(node_jobs(jobs, uid("model", "bad_child"))) == 0
    assert len(node_jobs(jobs, uid("model", "bad_grandchild"))) == 0
    assert len(node_jobs(jobs, uid("model", "independent"))) == 1


def test_rerun_with_same_run_id_reattaches_and_retries_only_what_failed(
    bq_server: bigquery_server.BigQueryServer,
    bq_client: Any,
    broken_manifest: dict[str, Any],
    compile_for: Any,
) -> None:
    flaky, child, independent = (uid("model", n) for n in ("flaky", "flaky_child", "independent"))
    selected = [flaky, child, independent]
    run_id = f"retry-{uuid.uuid4().hex[:8]}"
    engine = engine_for(bq_server)

    first = by_id(list(engine.run(broken_manifest, selected, run_id=run_id)))
    assert first[flaky].status is NodeStatus.ERROR
    assert first[child].status is NodeStatus.SKIPPED
    assert first[independent].status is NodeStatus.SUCCESS

    fixed = compile_for("t_fail", break_model=False)
    second = by_id(list(engine.run(fixed, selected, run_id=run_id)))
    assert all(r.status is NodeStatus.SUCCESS for r in second.values()), second
    assert second[independent].adapter_response["reattached"] is True
    assert second[flaky].adapter_response["attempt"] == 1
    jobs = jobs_with_prefix(bq_client, run_id)
    # The succeeded model was not submitted again; the failed one got one new attempt.
    assert len(node_jobs(jobs, independent)) == 1
    assert len(node_jobs(jobs, flaky)) == 2
    assert len(node_jobs(jobs, child)) == 1
    assert rows(bq_client, "select fixed from `test-proj.t_fail.flaky_child`") == [(1,)]

    # A third time: everything is done for this run id, nothing is submitted.
    third = by_id(list(engine.run(fixed, selected, run_id=run_id)))
    assert all(r.status is NodeStatus.SUCCESS and r.adapter_response["reattached"] for r in third.values())
    assert len(jobs_with_prefix(bq_client, run_id)) == len(jobs)


# ------------------------------------------------------------------------------ cancel, timeout


@pytest.fixture(scope="module")
def long_manifest(compile_for: Any) -> dict[str, Any]:
    # Large enough to run for much longer than the test waits for it: it is cancelled.
    return compile_for("t_long", slow_n=4000)


def test_cancel_stops_in_flight_jobs_and_submits_nothing_more(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any, long_manifest: dict[str, Any]
) -> None:
    selected = selection(long_manifest, "slow")
    run_id = f"cancel-{uuid.uuid4().hex[:8]}"
    engine = engine_for(bq_server, max_concurrent_jobs=2)
    results: list[NodeResult] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            results.extend(engine.run(long_manifest, selected, run_id=run_id))
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    worker = threading.Thread(target=consume)
    worker.start()
    deadline = time.monotonic() + 120
    while len(engine.inflight_job_ids()) < 2 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.1)
    inflight = engine.inflight_job_ids()
    assert len(inflight) == 2, (inflight, results, errors)
    cancelled = engine.cancel()
    worker.join(120)
    assert not worker.is_alive() and not errors, errors

    assert set(cancelled) == set(inflight)
    for job_id in inflight:
        job = bq_client.get_job(job_id)
        assert job.state == "DONE"
        assert job.error_result["reason"] == "stopped", job.error_result
    statuses = by_id(results)
    assert len(statuses) == 3
    ran = [r for r in results if r.adapter_response.get("job_id") in inflight]
    assert len(ran) == 2 and all(
        r.status is NodeStatus.ERROR and r.dbt_status == "cancelled" and "cancel" in (r.message or "").lower()
        for r in ran
    )
    never = [r for r in results if r not in ran]
    assert [r.status for r in never] == [NodeStatus.LOST]
    # The third model never reached the server.
    assert len(node_jobs(jobs_with_prefix(bq_client, run_id), never[0].unique_id)) == 0
    assert len(jobs_with_prefix(bq_client, run_id)) == 2


def test_job_timeout_cancels_the_job_and_fails_the_node(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any, long_manifest: dict[str, Any]
) -> None:
    model = uid("model", "slow_1")
    engine = engine_for(bq_server, job_timeout=2.0)
    [result] = list(engine.run(long_manifest, [model], run_id=f"timeout-{uuid.uuid4().hex[:8]}"))
    assert result.status is NodeStatus.ERROR
    assert "job_timeout" in (result.message or "") and "cancelled" in (result.message or "")
    job_id = result.adapter_response["job_id"]
    deadline = time.monotonic() + 60
    job = bq_client.get_job(job_id)
    while job.state != "DONE" and time.monotonic() < deadline:
        time.sleep(0.2)
        job = bq_client.get_job(job_id)
    assert job.state == "DONE" and job.error_result["reason"] == "stopped"


def test_manifest_must_be_compiled(bq_server: bigquery_server.BigQueryServer) -> None:
    raw = json.loads(
        json.dumps(
            {
                "nodes": {
                    uid("model", "m"): {
                        "resource_type": "model",
                        "name": "m",
                        "alias": "m",
                        "database": "test-proj",
                        "schema": "t_uncompiled",
                        "config": {"materialized": "table"},
                        "depends_on": {"nodes": []},
                    }
                }
            }
        )
    )
    [result] = list(engine_for(bq_server).run(raw, [uid("model", "m")], run_id="uncompiled"))
    assert result.status is NodeStatus.ERROR and "dbt compile" in (result.message or "")


# ------------------------------------------------------------------- hand-built manifests (no dbt)


def _model(name: str, dataset: str, materialized: str, sql: str, *parents: str, **config: Any) -> dict:
    return {
        "resource_type": "model",
        "name": name,
        "alias": name,
        "database": "test-proj",
        "schema": dataset,
        "relation_name": f"`test-proj`.`{dataset}`.`{name}`",
        "config": {"materialized": materialized, **config},
        "compiled_code": sql,
        "depends_on": {"nodes": list(parents)},
    }


def test_replaces_a_relation_of_the_other_type(bq_server: bigquery_server.BigQueryServer, bq_client: Any) -> None:
    dataset, engine = "t_swap", engine_for(bq_server)
    first = {
        "nodes": {
            uid("model", "swap"): _model("swap", dataset, "view", "select 1 as id"),
            uid("model", "inc"): _model("inc", dataset, "view", "select 1 as id"),
        }
    }
    assert all(
        r.status is NodeStatus.SUCCESS
        for r in engine.run(first, list(first["nodes"]), run_id=f"swap1-{uuid.uuid4().hex[:8]}")
    )
    assert bq_client.get_table(f"test-proj.{dataset}.swap").table_type == "VIEW"

    second = {
        "nodes": {
            uid("model", "swap"): _model("swap", dataset, "table", "select 2 as id"),
            uid("model", "inc"): _model("inc", dataset, "incremental", "select 2 as id", unique_key="id"),
        }
    }
    results = by_id(list(engine.run(second, list(second["nodes"]), run_id=f"swap2-{uuid.uuid4().hex[:8]}")))
    assert results[uid("model", "swap")].adapter_response["plan"] == "table-replace"
    assert results[uid("model", "inc")].adapter_response["plan"] == "create-replace"
    for name in ("swap", "inc"):
        assert results[uid("model", name)].status is NodeStatus.SUCCESS, results[uid("model", name)].message
        assert bq_client.get_table(f"test-proj.{dataset}.{name}").table_type == "TABLE"
        assert rows(bq_client, f"select id from `test-proj.{dataset}.{name}`") == [(2,)]

    third = {"nodes": {uid("model", "swap"): _model("swap", dataset, "view", "select 3 as id")}}
    [result] = list(engine.run(third, list(third["nodes"]), run_id=f"swap3-{uuid.uuid4().hex[:8]}"))
    assert result.adapter_response["plan"] == "view-replace"
    assert bq_client.get_table(f"test-proj.{dataset}.swap").table_type == "VIEW"


def test_failing_test_skips_models_downstream_like_dbt_build(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any
) -> None:
    dataset = "t_gate"
    dup = uid("model", "dup")
    test_id = f"test.{PKG}.unique_dup_id"
    nodes = {
        dup: _model("dup", dataset, "table", "select 1 as id union all select 1 as id"),
        uid("model", "after"): _model("after", dataset, "table", f"select * from `test-proj`.`{dataset}`.`dup`", dup),
        test_id: {
            "resource_type": "test",
            "name": "unique_dup_id",
            "database": "test-proj",
            "schema": dataset,
            "config": {"materialized": "test", "severity": "ERROR"},
            "depends_on": {"nodes": [dup]},
            "compiled_code": f"select id from `test-proj`.`{dataset}`.`dup` group by id having count(*) > 1",
        },
    }
    run_id = f"gate-{uuid.uuid4().hex[:8]}"
    results = by_id(list(engine_for(bq_server).run({"nodes": nodes}, list(nodes), run_id=run_id)))
    assert results[dup].status is NodeStatus.SUCCESS
    assert results[test_id].status is NodeStatus.FAIL and results[test_id].failures == 1
    after = results[uid("model", "after")]
    assert after.status is NodeStatus.SKIPPED and after.skipped_because == (test_id,)
    assert len(node_jobs(jobs_with_prefix(bq_client, run_id), uid("model", "after"))) == 0


SLOW_SQL = (
    "select sum(mod(a * b + c, 7)) as s from unnest(generate_array(1, 1300)) a "
    "cross join unnest(generate_array(1, 1300)) b cross join unnest(generate_array(1, 130)) c"
)


def test_new_process_reattaches_to_a_job_still_running(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any
) -> None:
    dataset, run_id = "t_attach", f"attach-{uuid.uuid4().hex[:8]}"
    slow, fast = uid("model", "slow"), uid("model", "fast")
    manifest = {
        "nodes": {
            slow: _model("slow", dataset, "table", SLOW_SQL),
            fast: _model("fast", dataset, "table", "select 1 as x"),
        }
    }
    # The first "process" stops consuming after the fast model and leaves the slow job running.
    first = engine_for(bq_server, cancel_on_close=False)
    results = first.run(manifest, [slow, fast], run_id=run_id)
    assert next(iter(results)).unique_id == fast
    [slow_job_id] = first.inflight_job_ids()
    results.close()
    assert bq_client.get_job(slow_job_id).state in ("PENDING", "RUNNING")

    second = by_id(list(engine_for(bq_server).run(manifest, [slow, fast], run_id=run_id)))
    assert second[slow].status is NodeStatus.SUCCESS
    assert second[slow].adapter_response["job_id"] == slow_job_id
    assert second[fast].adapter_response["reattached"] and second[slow].adapter_response["reattached"]
    assert len(jobs_with_prefix(bq_client, run_id)) == 2  # nothing was submitted twice


def test_unsupported_nodes_fail_loudly_and_skip_their_children(
    bq_server: bigquery_server.BigQueryServer, bq_client: Any
) -> None:
    dataset = "t_unsupported"
    hooked, child = uid("model", "hooked"), uid("model", "hooked_child")
    nodes = {
        hooked: _model("hooked", dataset, "table", "select 1 as id", **{"post-hook": ["grant"]}),
        child: _model("hooked_child", dataset, "view", "select 1 as id", hooked),
    }
    run_id = f"unsup-{uuid.uuid4().hex[:8]}"
    results = by_id(list(engine_for(bq_server).run({"nodes": nodes}, list(nodes), run_id=run_id)))
    assert results[hooked].status is NodeStatus.ERROR and "hooks" in (results[hooked].message or "")
    assert results[child].status is NodeStatus.SKIPPED and results[child].skipped_because == (hooked,)
    assert jobs_with_prefix(bq_client, run_id) == []
