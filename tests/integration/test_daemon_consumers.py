"""Consumers with the real daemon (issue 6 item 2, second half; issue 3's "at least one test with the
real daemon running").

One ``dagster dev`` (webserver + daemon + code server, SQLite instance in a temporary DAGSTER_HOME)
serves a copy of the example code location with its consumer sensors RUNNING every 2 s, and with the
flaky switch on for ``stg_payments`` (``flaky_failures: 1``: the first execution fails, the next one
succeeds, so the "switch is turned off" after the first failure without touching the deployment).

Everything is driven and read through GraphQL; nothing evaluates a sensor but the daemon:

1. ``shop_watcher_job`` is launched and FAILS; dbt's error for stg_payments is in the event log and in
   the asset catalog; orders/daily_revenue are skipped; the rest is materialized.
2. The daemon's sensor for ``customers`` launched ``customer_report_job`` once for that materialization.
3. After the producer run ended (not before), the daemon launched exactly ONE run of
   ``shop_dbt_assets__watcher_retry`` tagged ``dagster_watcher/retry_of=<producer>``, selecting
   exactly stg_payments, orders and daily_revenue, and it SUCCEEDED; more sensor ticks launch nothing.
   The daemon runs only the sensors that launch something (the coordinator, ``watch_customers``);
   the other models' sensors are declared stopped (``idle_status``).
4. Every model's latest materialization is present (the three from the retry run, the rest from the
   producer), and the flaky model ran exactly twice (two attempt files).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from dagster_watcher.artifacts import build_dirs_of_run

from ..support.deployment import GraphQLClient, key_str, metadata_dict, node_observations, running_dagster_dev
from .test_deployment import (
    DBT_ASSETS,
    FAILING,
    dbt_nodes,
    latest_materialization,
    latest_observation,
    staged_workspace,
)

pytestmark = pytest.mark.slow

RETRY_JOB = "shop_dbt_assets__watcher_retry"
REPORT_JOB = "customer_report_job"
RETRY_OF = "dagster_watcher/retry_of"
ATTEMPT = "dagster_watcher/attempt"
SENSOR_INTERVAL = 2
#: The failed model and what dbt skipped because of it (int_order_payments is ephemeral: no asset).
RETRIED = {FAILING, "orders", "daily_revenue"}
#: The sensor that requests the batch: the producer's retry coordinator.
LEADER_SENSOR = "watcher_retries_shop_dbt_assets"
FLAKY_TEXT = f"model {FAILING} failed on purpose (flaky attempt 1 of 1 failing"
#: dbt tests attached to the retried models: they run again with them.
RETRIED_CHECKS = {
    "unique_stg_payments_payment_id",
    "unique_orders_order_id",
    "relationships_orders_customer_id__customer_id__ref_customers_",
    "accepted_values_orders_status__placed__shipped__completed__returned__return_pending",
    "assert_order_amounts_non_negative",
}
#: The one model with a downstream job (customer_report_job): the only model sensor the daemon ticks.
WATCHED = "watch_customers"
#: After the retry ended, wait for this many more ticks of each running sensor.
EXTRA_TICKS = 2
#: The producer's run config: the in-process executor (one process per run instead of a run worker
#: plus a step subprocess that loads the definitions again: ~15 s less per run on 2 cores). The
#: retry must be launched with the same run config.
PRODUCER_RUN_CONFIG: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}


def tags_of(run: Mapping[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def run_ids(runs: list[dict[str, Any]]) -> list[str]:
    return sorted(r["runId"] for r in runs)


def wait_for_ticks(
    client: GraphQLClient, sensors: list[str], after: float, count: int, timeout: float = 120
) -> dict[str, list[dict[str, Any]]]:
    """Wait until each sensor has had ``count`` finished ticks after ``after`` (epoch seconds); return
    those ticks (a tick still being evaluated is listed as STARTED, without its outcome)."""
    deadline = time.monotonic() + timeout
    while True:
        ticks = {
            name: [t for t in client.sensor_ticks(name, after=after) if t["status"] != "STARTED"] for name in sensors
        }
        if all(len(t) >= count for t in ticks.values()):
            return ticks
        if time.monotonic() > deadline:
            raise TimeoutError(f"sensors did not tick {count} times after {after} in {timeout}s: {ticks}")
        time.sleep(1)


@dataclass
class DaemonRetry:
    """Everything read back through GraphQL once the daemon had settled the flaky build."""

    client: GraphQLClient
    sensors_before: list[dict[str, Any]]
    first_ticks: list[dict[str, Any]]
    producer: dict[str, Any]
    producer_events: list[dict[str, Any]]
    retry: dict[str, Any]
    retry_events: list[dict[str, Any]]
    retry_runs: list[dict[str, Any]]
    """Every run tagged retry_of=<producer>, after the extra ticks."""
    retry_job_runs: list[dict[str, Any]]
    report_runs: list[dict[str, Any]]
    ticks_after_retry: dict[str, list[dict[str, Any]]]
    all_ticks: dict[str, list[dict[str, Any]]]
    assets: list[dict[str, Any]]
    flaky_files: list[str]
    retry_run_results: list[dict[str, Any]]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def daemon_retry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonRetry]:
    started = time.monotonic()
    seconds: dict[str, float] = {}
    tmp = tmp_path_factory.mktemp("daemon_consumers")
    workspace = staged_workspace(tmp / "repo")
    project_dir = workspace.parent / "example_project"
    flaky_dir = tmp / "flaky"
    flaky_dir.mkdir()
    env = {
        "DAGSTER_WATCHER_SENSOR_INTERVAL": str(SENSOR_INTERVAL),
        "DAGSTER_WATCHER_DBT_VARS": json.dumps(
            {"flaky_model": FAILING, "flaky_dir": str(flaky_dir), "flaky_failures": 1}
        ),
    }
    with running_dagster_dev(tmp / "dagster_home", workspace=workspace, env=env) as dev:
        client = dev.graphql
        seconds["dagster dev ready"] = time.monotonic() - started
        sensors_before = client.sensors()
        # The daemon is evaluating the sensors before anything runs (nothing planned yet).
        first_ticks = wait_for_ticks(client, [WATCHED], after=0, count=1, timeout=120)[WATCHED]

        producer_id = client.launch_run(run_config=PRODUCER_RUN_CONFIG)
        client.wait_for_run(producer_id, timeout=300)
        seconds["producer ended"] = time.monotonic() - started
        producer_events = client.run_events(producer_id)

        retry_id = client.wait_for_new_run(job=RETRY_JOB, tags={RETRY_OF: producer_id}, timeout=180)
        retry = client.wait_for_run(retry_id, timeout=300)
        seconds["retry ended"] = time.monotonic() - started

        # More daemon ticks of every running sensor, after the retry ended: none may launch again.
        ticks_after = wait_for_ticks(client, [LEADER_SENSOR, WATCHED], after=float(retry["endTime"]), count=EXTRA_TICKS)
        client.wait_until_idle(timeout=120)  # the consumer job's run, if still going
        seconds["extra ticks seen"] = time.monotonic() - started

        names = sorted(s["name"] for s in client.sensors())
        yield DaemonRetry(
            client=client,
            sensors_before=sensors_before,
            first_ticks=first_ticks,
            producer=client.run(producer_id),
            producer_events=producer_events,
            retry=client.run(retry_id),
            retry_events=client.run_events(retry_id),
            retry_runs=client.runs(tags={RETRY_OF: producer_id}),
            retry_job_runs=client.runs(job=RETRY_JOB),
            report_runs=[client.run(r["runId"]) for r in client.runs(job=REPORT_JOB)],
            ticks_after_retry=ticks_after,
            all_ticks={name: client.sensor_ticks(name, limit=1000) for name in names},
            assets=client.asset_nodes(),
            flaky_files=sorted(p.name for p in flaky_dir.iterdir()),
            retry_run_results=json.loads(
                (
                    build_dirs_of_run(project_dir / "target" / "dagster_watcher", retry_id)[-1] / "run_results.json"
                ).read_text()
            )["results"],
            seconds=seconds,
        )
    print(f"\ndaemon consumer timings (s since start): { {k: round(v, 1) for k, v in seconds.items()} }")


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("eventType") in types]


def asset_names(events: list[dict[str, Any]], *types: str) -> list[str]:
    return sorted(key_str(e["assetKey"]) for e in of_type(events, *types))  # type: ignore[misc]


# ------------------------------------------------------------------------------------ tests


def test_sensors_run_in_the_daemon(daemon_retry: DaemonRetry) -> None:
    """One consumer sensor per dbt asset; the daemon runs from the start those that launch something
    (the coordinator, the sensor of the model with a downstream job), the others are declared stopped."""
    sensors = {s["name"]: s["sensorState"]["status"] for s in daemon_retry.sensors_before}
    # The example's second, daily-partitioned producer (README "Partitions") has its own two.
    daily = {"watch_orders_daily": "STOPPED", "watcher_retries_shop_orders_daily": "RUNNING"}
    per_model = {f"watch_{name}": "STOPPED" for name in DBT_ASSETS} | {WATCHED: "RUNNING"}
    assert sensors == per_model | {LEADER_SENSOR: "RUNNING"} | daily
    assert daemon_retry.first_ticks, "the daemon never evaluated a consumer sensor"
    assert any("no run has planned it yet" in (t["skipReason"] or "") for t in daemon_retry.first_ticks), (
        daemon_retry.first_ticks
    )
    errors = {n: [t["error"] for t in ticks if t["error"]] for n, ticks in daemon_retry.all_ticks.items()}
    assert all(not e for e in errors.values()), errors


def test_producer_failed_with_dbt_error_visible(daemon_retry: DaemonRetry) -> None:
    d = daemon_retry
    assert d.producer["status"] == "FAILURE"
    observed = {
        key_str(e["assetKey"]): metadata_dict(e["metadataEntries"]) for e in node_observations(d.producer_events)
    }
    assert set(observed) == RETRIED
    assert observed[FAILING]["dagster_watcher/status"] == "error"
    assert FLAKY_TEXT in observed[FAILING]["dagster_watcher/error"]
    assert {observed[n]["dagster_watcher/status"] for n in RETRIED - {FAILING}} == {"skipped"}
    assert asset_names(d.producer_events, "ASSET_MATERIALIZATION") == sorted(DBT_ASSETS - RETRIED)
    failures = [e["error"]["message"] for e in of_type(d.producer_events, "STEP_FAILURE") if e.get("error")]
    assert failures and "failed on purpose" in failures[0], failures

    # The catalog keeps dbt's error as the failed model's latest observation.
    node = dbt_nodes(d.assets)[FAILING]
    obs = latest_observation(node)
    assert obs is not None
    assert obs["runId"] == d.producer["runId"]
    assert FLAKY_TEXT in metadata_dict(obs["metadataEntries"])["dagster_watcher/error"]


def test_daemon_launched_one_retry_after_the_producer_ended(daemon_retry: DaemonRetry) -> None:
    d = daemon_retry
    producer_id, retry_id = d.producer["runId"], d.retry["runId"]
    # Exactly one re-materialization run, of this producer run, even after more ticks of every
    # running sensor.
    assert run_ids(d.retry_runs) == [retry_id]
    assert run_ids(d.retry_job_runs) == [retry_id]
    assert all(len(t) >= EXTRA_TICKS for t in d.ticks_after_retry.values())
    assert [t for ticks in d.ticks_after_retry.values() for t in ticks if t["runIds"]] == []
    launched_by = {n: [r for t in ticks for r in t["runIds"]] for n, ticks in d.all_ticks.items()}
    assert [n for n, runs in launched_by.items() if retry_id in runs] == [LEADER_SENSOR]
    assert launched_by[LEADER_SENSOR].count(retry_id) == 1

    tags = tags_of(d.retry)
    assert d.retry["jobName"] == RETRY_JOB
    assert tags[RETRY_OF] == producer_id
    assert tags[ATTEMPT] == "1"
    assert tags["dagster/sensor_name"] == LEADER_SENSOR
    assert tags["dagster/run_key"] == f"dagster_watcher_retry:{producer_id}"
    assert "in_process" in d.producer["runConfigYaml"]
    assert d.retry["runConfigYaml"] == d.producer["runConfigYaml"], "the failed run's run config"

    # Created only once the producer had ended: the run's creation (its first event, the
    # ASSET_MATERIALIZATION_PLANNED events written when Dagster creates it, ms resolution; SQLite
    # keeps creationTime in whole seconds) and its start are after the producer's end.
    producer_end = float(d.producer["endTime"])
    created = min(float(e["timestamp"]) / 1000 for e in d.retry_events)
    assert created > producer_end, (created, producer_end)
    assert float(d.retry["creationTime"]) >= int(producer_end)
    assert float(d.retry["startTime"]) > producer_end
    # The daemon tick that launched it ended after the producer did (a tick's timestamp is when the
    # daemon started it, before the code server evaluated the sensor, so it may be a bit earlier).
    launching = [t for t in d.all_ticks[LEADER_SENSOR] if retry_id in t["runIds"]]
    assert len(launching) == 1 and float(launching[0]["endTimestamp"]) > producer_end, launching


def test_retry_selected_the_failed_model_and_its_skipped_descendants_and_succeeded(daemon_retry: DaemonRetry) -> None:
    d = daemon_retry
    assert sorted("/".join(k["path"]) for k in d.retry["assetSelection"]) == sorted(RETRIED)
    assert asset_names(d.retry_events, "ASSET_MATERIALIZATION_PLANNED") == sorted(RETRIED)
    assert d.retry["status"] == "SUCCESS", [e.get("message") for e in of_type(d.retry_events, "STEP_FAILURE")]
    assert asset_names(d.retry_events, "ASSET_MATERIALIZATION") == sorted(RETRIED)
    assert node_observations(d.retry_events) == []
    checks = {
        e["evaluation"]["checkName"]: e["evaluation"]["success"]
        for e in of_type(d.retry_events, "ASSET_CHECK_EVALUATION")
    }
    assert checks == dict.fromkeys(RETRIED_CHECKS, True)

    # dbt itself ran nothing else: the retry's run_results.json has the three models and their tests.
    executed: dict[str, set[str]] = {}
    for r in d.retry_run_results:
        kind, name = r["unique_id"].split(".")[0], r["unique_id"].split(".")[2]
        executed.setdefault(kind, set()).add(name)
        assert r["status"] in ("success", "pass"), r
    # Their tests as dbt builds them (issue 11): the checks, the test with no check over two of them,
    # and stg_payments' unit test (its third part is the model it tests).
    assert executed == {
        "model": RETRIED,
        "test": RETRIED_CHECKS | {"assert_revenue_matches_orders"},
        "unit_test": {"stg_payments"},
    }


def test_every_model_materialized_and_the_flaky_model_ran_twice(daemon_retry: DaemonRetry) -> None:
    d = daemon_retry
    nodes = dbt_nodes(d.assets)
    assert set(nodes) == DBT_ASSETS
    latest = {name: (latest_materialization(node) or {}).get("runId") for name, node in nodes.items()}
    assert latest == {name: d.retry["runId"] if name in RETRIED else d.producer["runId"] for name in DBT_ASSETS}
    executions = {
        c["name"]: c["executionForLatestMaterialization"]
        for name in RETRIED
        for c in nodes[name]["assetChecksOrError"].get("checks") or []
    }
    assert {n: (e or {}).get("runId") for n, e in executions.items()} == dict.fromkeys(RETRIED_CHECKS, d.retry["runId"])
    assert {e["status"] for e in executions.values()} == {"SUCCEEDED"}

    # Exactly one extra execution of the flaky model: its first (failed) attempt and the retry's.
    assert len(d.flaky_files) == 2, d.flaky_files
    assert all(f.startswith("attempt_") and f"_{FAILING}_" in f for f in d.flaky_files), d.flaky_files


def test_consumer_job_launched_once_for_the_customers_materialization(daemon_retry: DaemonRetry) -> None:
    d = daemon_retry
    assert len(d.report_runs) == 1, d.report_runs
    report = d.report_runs[0]
    tags = tags_of(report)
    assert tags["dagster/sensor_name"] == "watch_customers"
    assert tags["dagster_watcher/upstream"] == "customers"
    assert tags["dagster_watcher/upstream_run"] == d.producer["runId"]
    assert report["status"] == "SUCCESS"
    # Requested no earlier than the producer started (it needs the customers materialization).
    assert float(report["creationTime"]) >= int(float(d.producer["startTime"]))
    print(
        f"\n{REPORT_JOB} created {float(report['creationTime']) - float(d.producer['endTime']):+.1f}s "
        "relative to the producer's end (SQLite creationTime has 1 s resolution)"
    )
