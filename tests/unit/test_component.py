"""DbtWatcherProjectComponent's YAML attributes reach what it builds: the resource the asset body
builds with, the consumer sensors, the schedule and the jobs. Definitions only (the example project's
manifest, parsed once per session); no dbt build, no `dg` process (tests/integration/test_component.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherProjectComponent, WatcherConfigError, WatcherRetryPolicy
from dagster_watcher import component as component_module
from dagster_watcher.component import watcher_build_args

from ..support import EXAMPLE


def _component(project: DbtProject, attributes: str) -> DbtWatcherProjectComponent:
    return DbtWatcherProjectComponent.resolve_from_yaml(
        f"project: {{project_dir: '{EXAMPLE}', target_path: '{project.target_path}'}}\n{attributes}"
    )


def _defs(component: DbtWatcherProjectComponent, *others: Any) -> dg.Definitions:
    built = component.build_defs_from_state(dg.ComponentTree.for_test().load_context, state_path=None)
    # A job named in `downstream` lives elsewhere in the code location (here: beside the component).
    return dg.Definitions.merge(built, dg.Definitions(jobs=list(others)))


@dg.op
def _noop() -> None:
    pass


@dg.job
def crm_sync_job() -> None:
    _noop()


ATTRIBUTES = """
invocation_mode: subprocess
threads: 3
retry_policy: {max_retries: 4, delay_seconds: 30, backoff: 2, non_retryable: ["permission denied"]}
sensors: {minimum_interval_seconds: 45, default_status: stopped, heartbeat_timeout: 300, idle_status: running}
downstream:
  customers: [crm_sync_job, "key:orders"]
schedule: {cron_schedule: "0 5 * * *", execution_timezone: "Europe/Berlin", default_status: running}
"""


def test_yaml_attributes_reach_the_sensors_schedule_and_resource(shop_project: DbtProject, monkeypatch):
    seen: dict[str, Any] = {}
    real = component_module.build_watcher_sensors

    def spy(assets: dg.AssetsDefinition, **kwargs: Any) -> list[dg.SensorDefinition]:
        seen.update(kwargs)
        return real(assets, **kwargs)

    monkeypatch.setattr(component_module, "build_watcher_sensors", spy)
    component = _component(shop_project, ATTRIBUTES)
    defs = _defs(component, crm_sync_job)

    assert seen["retry_policy"] == WatcherRetryPolicy(
        max_retries=4, delay_seconds=30, backoff=2, non_retryable=("permission denied",)
    )
    assert (
        seen["minimum_interval_seconds"],
        seen["default_status"],
        seen["heartbeat_timeout"],
        seen["idle_status"],
    ) == (45, dg.DefaultSensorStatus.STOPPED, 300, dg.DefaultSensorStatus.RUNNING)
    watch = defs.get_sensor_def("watch_customers")
    assert watch.minimum_interval_seconds == 45 and watch.default_status == dg.DefaultSensorStatus.STOPPED
    assert {t.job_name for t in watch.targets} == {"shop__watcher_retry", "crm_sync_job", "customers__downstream"}
    assert defs.get_sensor_def("watcher_retries_shop")  # the retry coordinator
    schedule = defs.get_schedule_def("shop_watcher_job_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone, schedule.job_name) == (
        "0 5 * * *",
        "Europe/Berlin",
        "shop_watcher_job",
    )
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    repo = defs.get_repository_def()
    assert {"shop_watcher_job", "shop__watcher_retry", "crm_sync_job"} <= set(repo.job_names)

    resource = component.watcher_resource(component.dbt_project)
    assert (resource.threads, resource.invocation_mode) == (3, "subprocess")
    assert Path(resource.project_dir) == EXAMPLE.resolve()


def test_defaults_match_the_python_functions(shop_project: DbtProject):
    component = _component(shop_project, "job_name: nightly")
    assert component.watcher_retry_policy == WatcherRetryPolicy()
    defs = _defs(component)
    watch = defs.get_sensor_def("watch_orders")
    # No downstream job: declared stopped, like build_watcher_sensors' idle_status default.
    assert watch.minimum_interval_seconds == 15 and watch.default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.get_sensor_def("watcher_retries_shop").default_status == dg.DefaultSensorStatus.RUNNING
    assert "nightly" in defs.get_repository_def().job_names
    assert not list(defs.schedules or [])


def test_only_sensors_that_launch_something_run_by_default(shop_project: DbtProject):
    """The daemon ticks the coordinator and the sensors of models with downstream jobs; the other
    models' sensors exist (one per model) but are declared stopped, unless asked for."""

    def statuses(attributes: str) -> dict[str, dg.DefaultSensorStatus]:
        defs = _defs(_component(shop_project, f"downstream: {{customers: crm_sync_job}}\n{attributes}"), crm_sync_job)
        return {s.name: s.default_status for s in defs.sensors or []}

    running, stopped = dg.DefaultSensorStatus.RUNNING, dg.DefaultSensorStatus.STOPPED
    default = statuses("")
    assert {n for n, s in default.items() if s == running} == {"watch_customers", "watcher_retries_shop"}
    assert len([n for n, s in default.items() if s == stopped]) >= 5 and "watch_orders" in default
    assert set(statuses("sensors: {idle_status: running}").values()) == {running}
    # No retry policy, no coordinator: each model's sensor ends its own dead runs, so all run.
    assert set(statuses("retry_policy: null").values()) == {running}
    assert set(statuses("sensors: {default_status: stopped, idle_status: running}").values()) == {stopped}


def test_null_retry_policy_means_no_coordinator_and_null_sensors_no_sensors(shop_project: DbtProject):
    no_retries = _defs(_component(shop_project, "retry_policy: null"))
    names = {s.name for s in no_retries.sensors or []}
    assert "watch_customers" in names and "watcher_retries_shop" not in names
    assert not list(_defs(_component(shop_project, "sensors: null")).sensors or [])
    with pytest.raises(WatcherConfigError, match="`downstream` needs the consumer sensors"):
        _defs(_component(shop_project, "sensors: null\ndownstream: {customers: crm_sync_job}"))


def test_bad_attributes_are_refused_by_name(shop_project: DbtProject):
    with pytest.raises(WatcherConfigError, match="not an asset"):
        _defs(_component(shop_project, "downstream: {int_order_payments: crm_sync_job}"))  # ephemeral
    with pytest.raises(WatcherConfigError, match="include_metadata"):
        _defs(_component(shop_project, "include_metadata: [row_count]"))


def test_cli_args_become_build_flags_and_vars():
    assert watcher_build_args(["build", "--fail-fast", "--vars", '{"day": "2024-01-01"}']) == (
        ["--fail-fast"],
        {"day": "2024-01-01"},
    )
    assert watcher_build_args(["--full-refresh", "--vars={a: 1}", "--vars", "b: 2"]) == (
        ["--full-refresh"],
        {"a": 1, "b": 2},
    )
    assert watcher_build_args([]) == ([], {})
    with pytest.raises(WatcherConfigError, match="runs `dbt build`, but cli_args start with 'run'"):
        watcher_build_args(["run", "--select", "orders"])
    with pytest.raises(WatcherConfigError, match="not a mapping"):
        watcher_build_args(["build", "--vars", "[1, 2]"])
