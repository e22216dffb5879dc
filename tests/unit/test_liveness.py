"""Consumers' pure rules: when a run in progress is dead, and which tags the runs it leads to carry."""

from __future__ import annotations

import socket
import subprocess
import sys

from dagster_watcher import contract
from dagster_watcher.consumers._liveness import why_dead


def test_liveness_rules() -> None:
    now = 1_000_000.0
    fresh = {**contract.liveness_tags(1, "elsewhere"), **contract.heartbeat_tags(now - 30)}
    stale = {**contract.liveness_tags(1, "elsewhere"), **contract.heartbeat_tags(now - 300)}
    assert why_dead(fresh, 120, now) is None
    assert "no heartbeat for 300s (timeout 120s)" in (why_dead(stale, 120, now) or "")
    # No heartbeat tag: only a pid on this host can tell, so another host's run is never called dead.
    assert why_dead(contract.liveness_tags(1, "elsewhere"), 120, now) is None
    # A gone process on this host is dead at once, even while its last heartbeat is still fresh.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here_fresh = {**contract.liveness_tags(gone.pid, socket.gethostname()), **contract.heartbeat_tags(now - 1)}
    assert "is gone" in (why_dead(here_fresh, 120, now) or "")


def test_retry_runs_carry_the_failed_runs_own_tags() -> None:
    tags = {
        "team": "finance",
        "dagster-k8s/config": '{"container_config": {}}',
        "dagster/partition": "2026-12-01",
        "dagster/asset_partition_range_start": "a",
        "dagster/asset_partition_range_end": "b",
        "dagster/concurrency_key": "warehouse",
        "dagster/priority": "5",
        ".dagster/pool/dbt": "1",
        "dagster/run_key": "x",
        "dagster/sensor_name": "s",
        "dagster/backfill": "b1",
        "dagster/failure_reason": "RUN_WORKER_CRASH",
        contract.PID_TAG: "1",
        contract.HOST_TAG: "h",
        contract.HEARTBEAT_TAG: "1.0",
        contract.RETRY_OF_TAG: "r",
        contract.ATTEMPT_TAG: "1",
    }
    assert contract.carried_run_tags(tags) == {
        "team": "finance",
        "dagster-k8s/config": '{"container_config": {}}',
        "dagster/partition": "2026-12-01",
        "dagster/asset_partition_range_start": "a",
        "dagster/asset_partition_range_end": "b",
        "dagster/concurrency_key": "warehouse",
        "dagster/priority": "5",
        ".dagster/pool/dbt": "1",
    }
