"""BigQueryWatcherResource in Dagster, against a real BigQuery-API server (local-bigquery), no mocks.

Real Dagster instances on SQLite (``DagsterInstance.local_temp``), real ``dbt compile`` with
dbt-bigquery against the server, real jobs. Select with ``-m bigquery``.

- the example project (``example_project/bigquery_definitions.py`` as shipped) builds through the
  resource, then merges its incremental model on a second run;
- a failing model's BigQuery error is on its asset and its descendants are never submitted;
- independent models' jobs overlap in time, submitted and polled by one engine invocation;
- terminating a run (the run worker gets the signal Dagster's termination sends) cancels the jobs
  in flight: DONE with reason ``stopped``;
- a run worker killed mid-run, then re-executed from failure: the new run re-attaches to the jobs
  that were still running or had succeeded, and submits only what failed.

The termination and crash tests run the op in a real run worker process (``dagster api
execute_run``, what Dagster's launchers start). Job counts come from the server's ``list_jobs``,
timing only from the jobs' own start/end timestamps; nothing asserts a duration.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    EventLogEntry,
    materialize,
)
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import serialize_value
from dagster_dbt import DbtProject

from dagster_watcher import BigQueryWatcherResource, WatcherRetryPolicy, dbt_watcher_assets
from dagster_watcher.bigquery import job_run_key
from dagster_watcher.contract import ERROR_KEY as WATCHER_ERROR_KEY
from dagster_watcher.contract import RETRY_OF_TAG
from dagster_watcher.contract import SKIPPED_BECAUSE_KEY as WATCHER_SKIPPED_BECAUSE_KEY
from dagster_watcher.contract import STATUS_KEY as WATCHER_STATUS_KEY
from dagster_watcher.project import prepare_manifest

from ..support.bigquery import server as bigquery_server
from ..support.bigquery.server import jobs_with_prefix, node_jobs, rows
from ..support.waiting import wait_for

pytestmark = pytest.mark.bigquery

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "example_project"
DEFS_FILE = REPO / "tests" / "support" / "bigquery" / "dagster_defs.py"
PARSE_DATASET = "t_parse"  # the dataset in the definitions' parse env; runs use their own datasets


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bq_env(
    bq_server: bigquery_server.BigQueryServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """What both profiles (example_project's ``bigquery`` target and tests/support/bigquery/bq_project) read, for this
    module only (restored afterwards: other modules' profile fingerprints must not see it)."""
    target = tmp_path_factory.mktemp("bq_dagster")
    values = {
        # tests/support/bigquery/bq_project (and dagster_defs.py beside it)
        "BQ_API_ENDPOINT": bq_server.url,
        "BQ_PROJECT": bq_server.project,
        "BQ_DATASET": PARSE_DATASET,
        "DW_BQ_TEST_TARGET": str(target / "bq_project"),
        # example_project's bigquery target (and example_project/bigquery_definitions.py)
        "DAGSTER_WATCHER_BQ_ENDPOINT": bq_server.url,
        "DAGSTER_WATCHER_BQ_PROJECT": bq_server.project,
        "DAGSTER_WATCHER_BQ_DATASET": PARSE_DATASET,
        "DAGSTER_WATCHER_BQ_TARGET_PATH": str(target / "example"),
        "DAGSTER_WATCHER_BQ_POLL_INTERVAL": "0.2",
        "DAGSTER_WATCHER_PROGRESS": "0",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DAGSTER_TELEMETRY_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(bq_env: dict[str, str]) -> ModuleType:
    """example_project/bigquery_definitions.py as shipped (parsed for the bigquery target)."""
    return _load_module(EXAMPLE / "bigquery_definitions.py", "dw_example_bigquery_definitions")


@pytest.fixture(scope="module")
def bq_defs(bq_env: dict[str, str]) -> ModuleType:
    return _load_module(DEFS_FILE, "dw_bq_dagster_defs")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster_home")) as inst:
        yield inst


# ---------------------------------------------------------------------------------------- helpers


def records(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> list[EventLogEntry]:
    return [
        r for r in instance.all_logs(run_id) if r.dagster_event is not None and r.dagster_event.event_type == event_type
    ]


def materializations(instance: DagsterInstance, run_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records(instance, run_id, DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.dagster_event.event_specific_data.materialization  # type: ignore[union-attr]
        name = mat.asset_key.to_user_string()
        assert name not in out, f"{name} materialized twice in one run"
        out[name] = {k: v.value for k, v in mat.metadata.items()}
    return out


def materializations_all(instance: DagsterInstance, run_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records(instance, run_id, DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.dagster_event.event_specific_data.materialization  # type: ignore[union-attr]
        out.setdefault(mat.asset_key.to_user_string(), []).append({k: v.value for k, v in mat.metadata.items()})
    return out


def observations(instance: DagsterInstance, run_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records(instance, run_id, DagsterEventType.ASSET_OBSERVATION):
        obs = record.dagster_event.event_specific_data.asset_observation  # type: ignore[union-attr]
        out[obs.asset_key.to_user_string()] = {k: v.value for k, v in obs.metadata.items()}
    return out


def check_results(instance: DagsterInstance, run_id: str) -> dict[AssetCheckKey, Any]:
    return {
        r.dagster_event.event_specific_data.asset_check_key: r.dagster_event.event_specific_data  # type: ignore[union-attr]
        for r in records(instance, run_id, DagsterEventType.ASSET_CHECK_EVALUATION)
    }


def seed_rows(name: str) -> list[dict[str, str]]:
    with open(EXAMPLE / "seeds" / f"{name}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the example project

EXAMPLE_MODELS = {
    # asset -> (relation type, statement type of its job)
    "raw_customers": ("TABLE", "LOAD"),
    "raw_orders": ("TABLE", "LOAD"),
    "raw_payments": ("TABLE", "LOAD"),
    "stg_customers": ("VIEW", "CREATE_VIEW"),
    "stg_orders": ("VIEW", "CREATE_VIEW"),
    "stg_payments": ("VIEW", "CREATE_VIEW"),
    "customers": ("TABLE", "CREATE_TABLE_AS_SELECT"),
    "orders": ("TABLE", "CREATE_TABLE_AS_SELECT"),
    "daily_revenue": ("TABLE", "CREATE_TABLE_AS_SELECT"),
    "order_updates": ("TABLE", "CREATE_TABLE_AS_SELECT"),  # incremental: its first run creates it
}


def test_example_project_builds_through_the_resource_then_merges_incrementally(
    example: ModuleType, bq_client: Any, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = "shop_build"
    monkeypatch.setenv("DAGSTER_WATCHER_BQ_DATASET", dataset)  # what the bigquery target compiles for
    first = materialize([example.shop_bigquery_dbt_assets], resources=example.defs.resources, instance=instance)
    assert first.success

    # Every model and seed is materialized once, with its job's id, link, type and statistics.
    mats = materializations(instance, first.run_id)
    assert set(mats) == set(EXAMPLE_MODELS)
    for name, (relation_type, statement_type) in EXAMPLE_MODELS.items():
        md = mats[name]
        job = bq_client.get_job(md["job_id"])
        assert job.state == "DONE" and job.error_result is None, (name, job.error_result)
        assert md["statement_type"] == statement_type, name
        assert md["job_id"] in md["job_link"] and md["job_link"].startswith("https://console.cloud.google.com/")
        assert md["bytes_processed"] == 0 and md["slot_ms"] >= 0  # the local server reports 0 bytes
        assert md["dagster_watcher/relation_name"] == f"`test-proj`.`{dataset}`.`{name}`"
        assert md["dagster_watcher/adapter_response"]["job_id"] == md["job_id"]
        assert bq_client.get_table(f"test-proj.{dataset}.{name}").table_type == relation_type, name
        # Job labels tie each job to the Dagster run that submitted it.
        assert job.labels["dagster-run"] == first.run_id

    # The right rows: seeds loaded, views and tables built from them.
    customers, orders, payments = seed_rows("raw_customers"), seed_rows("raw_orders"), seed_rows("raw_payments")
    for name, expected in [
        ("raw_customers", len(customers)),
        ("raw_orders", len(orders)),
        ("raw_payments", len(payments)),
        ("stg_orders", len(orders)),
        ("customers", len(customers)),
        ("orders", len(orders)),
        ("order_updates", len(orders)),
        ("daily_revenue", len({o["ordered_on"] for o in orders})),
    ]:
        assert rows(bq_client, f"select count(*) from `test-proj.{dataset}.{name}`") == [(expected,)], name
    order_ids = {o["id"] for o in orders}
    cents = sum(int(p["amount_cents"]) for p in payments if p["order_id"] in order_ids)
    assert rows(bq_client, f"select cast(round(sum(amount) * 100) as int64) from `test-proj.{dataset}.orders`") == [
        (cents,)
    ]

    # Tests ran as queries and became asset checks: the email test warns (two customers have none).
    checks = check_results(instance, first.run_id)
    assert len(checks) == 10
    failing = {k.name: ev for k, ev in checks.items() if not ev.passed}
    assert set(failing) == {"not_null_stg_customers_email"}
    assert failing["not_null_stg_customers_email"].severity.value == "WARN"
    assert failing["not_null_stg_customers_email"].metadata["dagster_watcher/failure_count"].value == 2

    # Second run (a new Dagster run: new job ids): the incremental model now runs dbt's statement
    # sequence (temp table, MERGE on unique_key, drop) and merges instead of rebuilding or appending.
    second = materialize([example.shop_bigquery_dbt_assets], resources=example.defs.resources, instance=instance)
    assert second.success
    updates = materializations(instance, second.run_id)["order_updates"]
    response = updates["dagster_watcher/adapter_response"]
    assert response["plan"] == "incremental-merge"
    assert response["statements"] == ["create_tmp", "merge", "drop_tmp"]
    assert updates["statement_type"] == "MERGE"
    assert updates["job_ids"] == response["job_ids"] and len(response["job_ids"]) == 3
    assert [bq_client.get_job(j).statement_type for j in response["job_ids"]] == [
        "CREATE_TABLE_AS_SELECT",
        "MERGE",
        "DROP_TABLE",
    ]
    # Still one row per order; the rows the incremental filter selected carry the new load time.
    assert rows(
        bq_client,
        f"select count(*), count(distinct order_id), count(distinct loaded_at) from `test-proj.{dataset}.order_updates`",
    ) == [(len(orders), len(orders), 2)]
    newest = max(o["updated_at"] for o in orders)
    reloaded = rows(
        bq_client,
        f"select count(*) from `test-proj.{dataset}.order_updates` "
        f"where loaded_at = (select max(loaded_at) from `test-proj.{dataset}.order_updates`)",
    )
    assert reloaded == [(sum(1 for o in orders if o["updated_at"] == newest),)]
    assert not [t.table_id for t in bq_client.list_tables(f"test-proj.{dataset}") if t.table_id.endswith("__dbt_tmp")]


def test_failing_model_carries_bigquery_error_and_descendants_are_never_submitted(
    example: ModuleType,
    bq_server: bigquery_server.BigQueryServer,
    bq_client: Any,
    instance: DagsterInstance,
    tmp_path: Path,
) -> None:
    dataset = "shop_fail"
    # The example's failure switch renders `select error('...')` into stg_orders' pre-hook: the hook
    # job fails in BigQuery with that text, and the model's own statement is never submitted.
    resource = BigQueryWatcherResource(
        project_dir=example.shop_bigquery_project,
        project=bq_server.project,
        location="US",
        api_endpoint=bq_server.url,
        poll_interval=0.2,
        dbt_vars={"fail_model": "stg_orders"},
        dbt_env={"DAGSTER_WATCHER_BQ_DATASET": dataset},
        target_path=str(tmp_path / "compile"),
        progress=False,
    )
    result = materialize(
        [example.shop_bigquery_dbt_assets],
        resources={"bigquery_watcher": resource},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    key = result.run_id  # a new run: job ids derive from its own id
    jobs = jobs_with_prefix(bq_client, key)

    obs = observations(instance, result.run_id)
    failed = obs["stg_orders"]
    assert failed[WATCHER_STATUS_KEY] == "error"
    error = failed[WATCHER_ERROR_KEY]
    assert "dagster-watcher demo: model stg_orders failed on purpose" in error, error
    job = bq_client.get_job(failed["job_id"])
    assert job.state == "DONE" and job.error_result["message"] in error
    assert failed["job_id"] in failed["job_link"]
    assert len(node_jobs(jobs, "model.shop.stg_orders")) == 1  # the hook; the CREATE VIEW never ran

    descendants = {"customers", "orders", "order_updates", "daily_revenue"}
    for name in descendants:
        assert obs[name][WATCHER_STATUS_KEY] == "skipped", name
        assert obs[name][WATCHER_SKIPPED_BECAUSE_KEY] == ["model.shop.stg_orders"], name
        assert node_jobs(jobs, f"model.shop.{name}") == [], f"{name} was submitted"
    mats = materializations(instance, result.run_id)
    assert set(mats) == set(EXAMPLE_MODELS) - descendants - {"stg_orders"}
    # No check result for a test that never ran; the ones on built models ran.
    checked = {k.asset_key.to_user_string() for k in check_results(instance, result.run_id)}
    assert checked == {"stg_customers", "stg_payments"}
    step_failure = records(instance, result.run_id, DagsterEventType.STEP_FAILURE)[0]
    assert "failed on purpose" in step_failure.dagster_event.event_specific_data.error.message  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ concurrency


def test_independent_models_run_as_overlapping_jobs_from_one_engine(
    bq_defs: ModuleType, bq_client: Any, instance: DagsterInstance
) -> None:
    dataset = "t_overlap"
    # Each job must outlast the server's ~1 s hold on jobs.insert, on an idle machine too (1300: seconds).
    resource = bq_defs.make_resource(dbt_vars={"slow_n": 1300}, max_concurrent_jobs=3, dbt_env={"BQ_DATASET": dataset})
    result = materialize(
        [bq_defs.bq_project_assets], selection=bq_defs.SLOW, resources={"bigquery_watcher": resource}, instance=instance
    )
    assert result.success
    mats = materializations(instance, result.run_id)
    assert set(mats) == {"slow_1", "slow_2", "slow_3"}
    jobs = [bq_client.get_job(md["job_id"]) for md in mats.values()]
    # At one instant all three were running: the last start precedes the first end.
    assert max(j.started for j in jobs) < min(j.ended for j in jobs), [(j.started, j.ended) for j in jobs]
    # Submitted and polled by one engine invocation (one loop in the step's process, no worker per model).
    assert len({j.labels["dw-invocation"] for j in jobs}) == 1
    assert len(records(instance, result.run_id, DagsterEventType.STEP_START)) == 1
    assert rows(bq_client, f"select k from `test-proj.{dataset}.slow_2`") == [(2,)]


# ---------------------------------------------------------------------------- real run worker


def _recon_job(job_name: str) -> ReconstructableJob:
    repo = ReconstructableRepository.for_file(str(DEFS_FILE), "defs", working_directory=str(REPO))
    return repo.get_reconstructable_job(job_name)


def start_run_worker(
    instance: DagsterInstance,
    job_name: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    resume_of: DagsterRun | None = None,
) -> tuple[DagsterRun, subprocess.Popen[bytes]]:
    """Create a run and execute it in a real run worker process (``dagster api execute_run``, what
    Dagster's run launchers start). ``resume_of``: create it as Dagster's "re-execute from failure"
    (and run retries) do: parent/root ids, ``dagster/is_resume_retry``, only the steps not done."""
    recon = _recon_job(job_name)
    job_def = recon.get_definition()
    kwargs: dict[str, Any] = {}
    if resume_of is not None:
        step_keys, known_state = KnownExecutionState.build_resume_retry_reexecution(instance, resume_of)
        root = resume_of.root_run_id or resume_of.run_id
        kwargs = {
            "execution_plan": create_execution_plan(
                recon, step_keys_to_execute=step_keys, known_state=known_state, tags=resume_of.tags
            ),
            "tags": {
                **resume_of.tags,
                "dagster/parent_run_id": resume_of.run_id,
                "dagster/root_run_id": root,
                "dagster/is_resume_retry": "true",
            },
            "root_run_id": root,
            "parent_run_id": resume_of.run_id,
        }
    run = instance.create_run_for_job(job_def=job_def, job_code_origin=recon.get_python_origin(), **kwargs)
    args = ExecuteRunArgs(
        job_origin=recon.get_python_origin(),
        run_id=run.run_id,
        instance_ref=instance.get_ref(),
        set_exit_code_on_failure=True,
    )
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the process is reaped (see below)
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "api", "execute_run", serialize_value(args)],
        env={**os.environ, **env},
        cwd=str(REPO),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return run, process


def _finish(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 300) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
        raise AssertionError(f"run worker did not exit; log:\n{log_path.read_text(errors='replace')[-4000:]}") from None


def test_terminating_the_run_cancels_every_job_in_flight(
    bq_defs: ModuleType, bq_client: Any, instance: DagsterInstance, tmp_path: Path
) -> None:
    # Three models far slower than the test waits for, at most two in flight.
    env = {
        "DW_BQ_TEST_DATASET": "t_cancel",
        "DW_BQ_TEST_VARS": json.dumps({"slow_n": 4000}),
        "DW_BQ_TEST_MAX_JOBS": "2",
    }
    log_path = tmp_path / "worker.log"
    run, process = start_run_worker(instance, "slow_job", env, log_path)
    try:

        def two_running() -> list[Any]:
            assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            jobs = jobs_with_prefix(bq_client, run.run_id)
            return jobs if len(jobs) == 2 and all(j.state == "RUNNING" for j in jobs) else []

        inflight = wait_for(two_running, 240, "two RUNNING jobs of the run")
        # Dagster's termination: the run is marked CANCELING, and the run worker gets a signal
        # (SIGTERM from Docker/K8s launchers; the default launcher's code server sends SIGINT; Dagster
        # maps both to DagsterExecutionInterruptedError raised inside the op).
        instance.report_run_canceling(instance.get_run_by_id(run.run_id))  # type: ignore[arg-type]
        process.send_signal(signal.SIGTERM)
        _finish(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)

    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED  # type: ignore[union-attr]
    for job in inflight:

        def cancelled_job(job_id: str = job.job_id) -> Any:
            current = bq_client.get_job(job_id)
            return current if current.state == "DONE" else None

        done = wait_for(cancelled_job, 60, f"{job.job_id} to be DONE")
        assert done.error_result["reason"] == "stopped", done.error_result
    # Nothing else was submitted (the third model waited for a free slot), nothing materialized.
    assert len(jobs_with_prefix(bq_client, run.run_id)) == 2
    assert materializations(instance, run.run_id) == {}
    # The step saw Dagster's interruption inside the op (that is what made the producer cancel).
    [failure] = records(instance, run.run_id, DagsterEventType.STEP_FAILURE)
    assert failure.dagster_event.event_specific_data.error.cls_name == "DagsterExecutionInterruptedError"  # type: ignore[union-attr]


def test_reexecution_after_a_killed_run_worker_reattaches_and_reruns_only_failures(
    bq_defs: ModuleType, bq_client: Any, instance: DagsterInstance, tmp_path: Path
) -> None:
    dataset = "t_reattach"
    env = {
        "DW_BQ_TEST_DATASET": dataset,
        # flaky reads a table that does not exist yet: it fails until the test creates the table.
        "DW_BQ_TEST_VARS": json.dumps({"slow_n": 1300, "break_model": True}),
        "DW_BQ_TEST_MAX_JOBS": "8",
    }
    uid = {
        name: f"model.bq_project.{name}"
        for name in ("slow_1", "slow_2", "slow_3", "flaky", "flaky_child", "independent")
    }
    slow = ("slow_1", "slow_2", "slow_3")

    log_1 = tmp_path / "worker-1.log"
    first, process = start_run_worker(instance, "retry_job", env, log_1)
    try:

        def first_state() -> list[Any] | None:
            assert process.poll() is None, log_1.read_text(errors="replace")[-4000:]
            jobs = jobs_with_prefix(bq_client, first.run_id)
            flaky, independent = node_jobs(jobs, uid["flaky"]), node_jobs(jobs, uid["independent"])
            submitted = all(node_jobs(jobs, uid[n]) for n in slow)
            done = flaky and independent and flaky[0].state == "DONE" and independent[0].state == "DONE"
            return jobs if submitted and done else None

        jobs = wait_for(first_state, 240, "the fast models to finish while the slow ones run")
        still_running = [j.job_id for j in jobs if j.state != "DONE"]
        # The run worker dies (OOM, node loss): no cancel, the slow jobs keep running server-side.
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert still_running, "every slow job had finished before the worker was killed; nothing to re-attach to"
    assert node_jobs(jobs, uid["flaky"])[0].error_result is not None
    # Run monitoring (or the watcher's consumer sensor) marks the dead run failed.
    instance.report_run_failed(instance.get_run_by_id(first.run_id))  # type: ignore[arg-type]

    # The cause of flaky's failure is fixed, and the run is re-executed from failure.
    bq_client.query(
        f"create table `test-proj.{dataset}.missing_for_flaky` as select 1 as fixed", job_retry=None
    ).result()
    log_2 = tmp_path / "worker-2.log"
    second, process = start_run_worker(
        instance, "retry_job", env, log_2, resume_of=instance.get_run_by_id(first.run_id)
    )
    assert _finish(process, log_2) == 0, log_2.read_text(errors="replace")[-4000:]
    assert instance.get_run_by_id(second.run_id).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]

    # The re-execution used the first run's job ids: it submitted no job under its own run id, the
    # slow models' jobs (still running or finished) were re-attached, not run again, and only the
    # failed model got a new attempt.
    assert jobs_with_prefix(bq_client, second.run_id) == []
    after = jobs_with_prefix(bq_client, first.run_id)
    counts = {name: len(node_jobs(after, uid[name])) for name in uid}
    assert counts == {"slow_1": 1, "slow_2": 1, "slow_3": 1, "flaky": 2, "flaky_child": 1, "independent": 1}
    mats = materializations(instance, second.run_id)
    for name in slow:
        response = mats[name]["dagster_watcher/adapter_response"]
        assert response["reattached"] is True and response["attempt"] == 0, name
        assert mats[name]["job_id"] == node_jobs(after, uid[name])[0].job_id
    assert mats["flaky"]["dagster_watcher/adapter_response"]["attempt"] == 1
    assert set(still_running) <= {mats[n]["job_id"] for n in slow}
    assert rows(bq_client, f"select fixed from `test-proj.{dataset}.flaky_child`") == [(1,)]


def test_retried_step_reattaches_and_reruns_only_what_failed(
    bq_defs: ModuleType, bq_client: Any, instance: DagsterInstance
) -> None:
    dataset = "t_step_retry"

    @dbt_watcher_assets(
        manifest=bq_defs.bq_project.manifest_path,
        project=bq_defs.bq_project,
        select="path:models/failing",
        name="bq_failing",
        retry_policy=WatcherRetryPolicy(max_retries=2, delay_seconds=3),
    )
    def bq_failing(context: AssetExecutionContext, bigquery_watcher: BigQueryWatcherResource) -> Iterator[Any]:
        yield from bigquery_watcher.build(context)

    resource = bq_defs.make_resource(dbt_vars={"break_model": True}, dbt_env={"BQ_DATASET": dataset})
    flaky, child, independent = (f"model.bq_project.{n}" for n in ("flaky", "flaky_child", "independent"))
    selection = [AssetKey(["flaky"]), AssetKey(["flaky_child"]), AssetKey(["independent"])]
    fixed = threading.Event()
    earlier = {j.job_id for j in bq_client.list_jobs(all_users=True, max_results=100000)}

    def fix_when_flaky_failed() -> None:
        # The transient cause goes away once the first attempt's job has failed (between attempts).
        def failed() -> bool:
            jobs = [j for j in bq_client.list_jobs(all_users=True, max_results=100000) if j.job_id not in earlier]
            return any(j.state == "DONE" and j.error_result for j in node_jobs(jobs, flaky))

        wait_for(failed, 240, "flaky's first job to fail")
        bq_client.query(
            f"create table `test-proj.{dataset}.missing_for_flaky` as select 1 as fixed", job_retry=None
        ).result()
        fixed.set()

    fixer = threading.Thread(target=fix_when_flaky_failed, daemon=True)
    fixer.start()
    result = materialize([bq_failing], selection=selection, resources={"bigquery_watcher": resource}, instance=instance)
    fixer.join(60)
    assert fixed.is_set() and result.success
    attempts = 1 + len(records(instance, result.run_id, DagsterEventType.STEP_RESTARTED))
    assert attempts >= 2
    jobs = jobs_with_prefix(bq_client, result.run_id)
    # Same run, same job ids: the model that succeeded in attempt 1 was not submitted again; the
    # failed one got one new job per attempt; its child ran once, when its parent succeeded.
    assert len(node_jobs(jobs, independent)) == 1
    assert len(node_jobs(jobs, flaky)) == attempts
    assert len(node_jobs(jobs, child)) == 1
    mats = materializations_all(instance, result.run_id)
    assert len(mats["independent"]) == 1 and len(mats["flaky"]) == 1 and len(mats["flaky_child"]) == 1
    assert mats["flaky"][0]["dagster_watcher/adapter_response"]["attempt"] == attempts - 1
    # The retried attempt reused the run's compile instead of compiling again.
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert sum("dbt compile of" in m for m in logs) == 1
    assert sum("reusing this run's dbt compile" in m for m in logs) == attempts - 1


def test_compile_errors_fail_their_model_only_and_a_broken_compile_loses_every_node(
    bq_env: dict[str, str], bq_client: Any, instance: DagsterInstance, tmp_path: Path
) -> None:
    # A copy of tests/support/bigquery/bq_project where one model does not compile (dbt parse accepts it).
    project_dir = tmp_path / "bq_project"
    shutil.copytree(DEFS_FILE.parent / "bq_project", project_dir, ignore=shutil.ignore_patterns("target", "logs"))
    (project_dir / "models" / "failing" / "flaky.sql").write_text("select {{ no_such_macro() }} as x\n")
    project = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=tmp_path / "parse")
    prepare_manifest(project)

    @dbt_watcher_assets(manifest=project.manifest_path, project=project, select="path:models/failing", name="cerr")
    def cerr(context: AssetExecutionContext, bigquery_watcher: BigQueryWatcherResource) -> Iterator[Any]:
        yield from bigquery_watcher.build(context)

    def resource(**overrides: Any) -> BigQueryWatcherResource:
        return BigQueryWatcherResource(
            project_dir=project,
            project=bq_env["BQ_PROJECT"],
            api_endpoint=bq_env["BQ_API_ENDPOINT"],
            poll_interval=0.2,
            dbt_env={"BQ_DATASET": "t_compile_error"},
            target_path=str(tmp_path / "compile"),
            progress=False,
            **overrides,
        )

    selection = [AssetKey(["flaky"]), AssetKey(["flaky_child"]), AssetKey(["independent"])]
    result = materialize(
        [cerr], selection=selection, resources={"bigquery_watcher": resource()}, instance=instance, raise_on_error=False
    )
    assert not result.success
    obs = observations(instance, result.run_id)
    # dbt's compile error is on the model that did not compile; its child is skipped; the rest ran.
    assert obs["flaky"][WATCHER_STATUS_KEY] == "error"
    assert "Compilation Error" in obs["flaky"][WATCHER_ERROR_KEY] and "no_such_macro" in obs["flaky"][WATCHER_ERROR_KEY]
    assert obs["flaky_child"][WATCHER_STATUS_KEY] == "skipped"
    assert set(materializations(instance, result.run_id)) == {"independent"}
    jobs = jobs_with_prefix(bq_client, result.run_id)
    assert node_jobs(jobs, "model.bq_project.flaky") == [] and node_jobs(jobs, "model.bq_project.flaky_child") == []
    # A compile error is not worth retrying: the step failure says so (Dagster would not retry it).
    [failure] = records(instance, result.run_id, DagsterEventType.STEP_FAILURE)
    assert "Compilation Error" in failure.dagster_event.event_specific_data.error.message  # type: ignore[union-attr]

    # dbt itself fails (no such target): nothing is submitted, every node is recorded as lost and the
    # step fails with dbt's own output.
    broken = materialize(
        [cerr],
        selection=selection,
        resources={"bigquery_watcher": resource(target="no_such_target")},
        instance=instance,
        raise_on_error=False,
    )
    assert not broken.success
    lost = observations(instance, broken.run_id)
    assert {name: md[WATCHER_STATUS_KEY] for name, md in lost.items()} == {
        "flaky": "lost",
        "flaky_child": "lost",
        "independent": "lost",
    }
    [failure] = records(instance, broken.run_id, DagsterEventType.STEP_FAILURE)
    message = failure.dagster_event.event_specific_data.error.message  # type: ignore[union-attr]
    assert "did not complete (bigquery mode)" in message and "no_such_target" in message, message
    assert jobs_with_prefix(bq_client, broken.run_id) == []


# ---------------------------------------------------------------------------------- no server


def test_job_run_key_follows_resumed_runs_only(tmp_path: Path) -> None:
    with DagsterInstance.local_temp(str(tmp_path)) as instance:

        def add(
            tags: Mapping[str, str] | None = None, parent: DagsterRun | None = None, steps: Any = None
        ) -> DagsterRun:
            run_id = str(uuid.uuid4())
            root = (parent.root_run_id or parent.run_id) if parent else None
            return instance.add_run(
                DagsterRun(
                    job_name="j",
                    run_id=run_id,
                    tags=dict(tags or {}),
                    status=DagsterRunStatus.FAILURE,
                    root_run_id=root,
                    parent_run_id=parent.run_id if parent else None,
                    step_keys_to_execute=steps,
                )
            )

        original = add()
        resumed = add({"dagster/is_resume_retry": "true"}, parent=original)
        resumed_again = add({"dagster/is_resume_retry": "true"}, parent=resumed)
        all_steps = add(parent=original)  # "re-execute all": rebuild
        watcher_retry = add({RETRY_OF_TAG: resumed.run_id})
        asset_resume = add({"dagster/is_asset_resume_retry": "true"}, parent=watcher_retry)
        assert job_run_key(instance, original) == original.run_id
        assert job_run_key(instance, resumed) == original.run_id
        assert job_run_key(instance, resumed_again) == original.run_id
        assert job_run_key(instance, all_steps) == all_steps.run_id
        assert job_run_key(instance, all_steps, "always") == original.run_id
        assert job_run_key(instance, resumed, "never") == resumed.run_id
        assert job_run_key(instance, watcher_retry) == original.run_id
        assert job_run_key(instance, asset_resume) == original.run_id
        # Python API re-execution of selected steps of a failed run resumes it.
        assert job_run_key(instance, add(parent=original, steps=["s"])) == original.run_id


def test_resource_config_accepts_service_account_json_or_base64(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k",
        "private_key": pem,
        "client_email": "sa@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    for text in (json.dumps(info), base64.b64encode(json.dumps(info).encode()).decode()):
        resource = BigQueryWatcherResource(project_dir=EXAMPLE, project="p", credentials_json=text)
        credentials = resource.make_credentials()
        assert credentials is not None and credentials.service_account_email == "sa@p.iam.gserviceaccount.com"  # type: ignore[attr-defined]
    assert BigQueryWatcherResource(project_dir=EXAMPLE, project="p", anonymous=True).make_credentials() is not None
    assert BigQueryWatcherResource(project_dir=EXAMPLE, project="p").make_credentials() is None  # ADC
    config = BigQueryWatcherResource(
        project_dir=EXAMPLE, project="p", api_endpoint="http://127.0.0.1:1"
    ).engine_config()
    assert config.api_endpoint == "http://127.0.0.1:1" and config.project == "p"
    with pytest.raises(ValueError, match="no dbt_project.yml"):
        BigQueryWatcherResource(project_dir=tmp_path, project="p")


def test_configs_the_engine_does_not_generate_fail_loudly() -> None:
    from dagster_watcher.bigquery import COMPILE_ERROR_KEY, RENDERED_HOOKS_KEY
    from dagster_watcher.bigquery.graph import _unsupported_reason

    base = {"compiled_code": "select 1", "config": {}}

    def reason(config: dict[str, Any], rtype: str = "model", extra: dict[str, Any] | None = None) -> str | None:
        node = {**base, **(extra or {}), "config": config}
        return _unsupported_reason(node, rtype, config.get("materialized", "table"))

    assert reason({"materialized": "table", "grants": {}, "contract": {"enforced": False}}) is None
    assert "grants" in (reason({"grants": {"roles/bigquery.dataViewer": ["user:a@b.c"]}}) or "")
    assert "contract" in (reason({"contract": {"enforced": True}}) or "")
    assert "store_failures" in (reason({"store_failures": True}, "test") or "")
    assert "kms_key_name" in (reason({"kms_key_name": "k"}) or "")
    hooks = {"pre-hook": [{"sql": "{{ x() }}"}]}
    assert "hooks" in (reason(hooks) or "")  # unrendered: needs compile_project
    assert reason(hooks, extra={RENDERED_HOOKS_KEY: {"pre": [], "post": []}}) is None
    assert reason({}, extra={COMPILE_ERROR_KEY: "dbt compile failed: boom"}) == "dbt compile failed: boom"
