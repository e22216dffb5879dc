"""The public surface: what ``dagster_watcher`` exports, that each export is documented, that the
package ships its type marker, the error hierarchy, and NodeStatus's groups and predicates."""

from __future__ import annotations

import importlib.resources
import inspect
import re
import tomllib
from pathlib import Path

import dagster
import pytest

import dagster_watcher
from dagster_watcher import (
    BigQueryCompileError,
    BigQueryWatcherError,
    DagsterWatcherError,
    DbtDidNotComplete,
    ManifestPreparationError,
    NodesDidNotSucceed,
    NodeStatus,
    UnsupportedNodeError,
    WatcherConfigError,
)

PACKAGE = Path(dagster_watcher.__file__).parent
PUBLIC = [
    "BigQueryCompileError",
    "BigQueryWatcherError",
    "BigQueryWatcherResource",
    "DagsterWatcherError",
    "DbtDidNotComplete",
    "DbtSelectionError",
    "DbtWatcherProjectComponent",
    "DbtWatcherResource",
    "InvocationMode",
    "ManifestPreparationError",
    "NodeResult",
    "NodeStatus",
    "NodesDidNotSucceed",
    "UnsupportedNodeError",
    "WATCHER_PRODUCER_TAG",
    "WatcherConfigError",
    "WatcherRetryPolicy",
    "__version__",
    "build_watcher_schedule",
    "build_watcher_sensors",
    "dbt_watcher_assets",
    "prepare_manifest",
]


def test_all_is_exactly_the_public_surface():
    assert PUBLIC == sorted(PUBLIC)
    assert sorted(dagster_watcher.__all__) == PUBLIC
    assert len(set(dagster_watcher.__all__)) == len(dagster_watcher.__all__)
    for name in PUBLIC:
        assert hasattr(dagster_watcher, name), name


def _has_doc_comment(name: str) -> bool:
    """A module-level value (constant, type alias) documented the Sphinx way: ``#:`` right above it."""
    assignment = re.compile(rf"^{re.escape(name)}\s*(:[^=]*)?=")
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if assignment.match(line) and i > 0 and lines[i - 1].startswith("#:"):
                return True
    return False


DOCUMENTED = [name for name in PUBLIC if name != "__version__"]  # __version__: standard package metadata


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_public_name_is_documented(name: str):
    value = getattr(dagster_watcher, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        doc = value.__doc__  # a class's own docstring: not inherited from Failure or Exception
        assert doc and doc.strip(), f"{name} has no docstring"
    else:
        assert _has_doc_comment(name), f"{name} has no `#:` doc comment"


def test_version_is_a_string():
    assert isinstance(dagster_watcher.__version__, str) and dagster_watcher.__version__


def test_py_typed_ships():
    assert importlib.resources.files("dagster_watcher").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["dagster_watcher"]


# -- the BigQuery package ---------------------------------------------------------------------------

BIGQUERY_MODULES = [
    "__init__",
    "_compile_child",
    "_invocation",
    "_ledger",
    "_outcomes",
    "_planner",
    "_state",
    "_submit",
    "compile",
    "config",
    "engine",
    "graph",
    "job_ids",
    "resource",
    "sql",
]


def test_bigquery_is_a_package_of_these_modules_none_over_600_lines():
    folder = PACKAGE / "bigquery"
    assert sorted(p.stem for p in folder.glob("*.py")) == BIGQUERY_MODULES
    assert not (PACKAGE / "bigquery.py").exists() and not (PACKAGE / "bigquery_resource.py").exists()
    for path in folder.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path.name


@pytest.mark.parametrize("name", sorted(__import__("dagster_watcher.bigquery").bigquery.__all__))
def test_every_public_bigquery_name_is_importable_and_documented(name: str):
    import dagster_watcher.bigquery as bigquery

    value = getattr(bigquery, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__doc__ and value.__doc__.strip(), f"{name} has no docstring"
    else:
        assert _has_doc_comment(name), f"{name} has no `#:` doc comment"


def test_the_resource_is_the_same_object_from_both_homes():
    import dagster_watcher.bigquery as bigquery

    assert dagster_watcher.BigQueryWatcherResource is bigquery.BigQueryWatcherResource


# -- errors ----------------------------------------------------------------------------------------


def test_every_error_derives_from_the_root_under_dagster_failure():
    assert issubclass(DagsterWatcherError, dagster.Failure)
    for error in (
        NodesDidNotSucceed,
        DbtDidNotComplete,
        WatcherConfigError,
        ManifestPreparationError,
        BigQueryWatcherError,
        UnsupportedNodeError,
        BigQueryCompileError,
    ):
        assert issubclass(error, DagsterWatcherError), error


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (WatcherConfigError, ValueError),
        (UnsupportedNodeError, ValueError),
        (ManifestPreparationError, RuntimeError),
        (BigQueryCompileError, RuntimeError),
    ],
)
def test_errors_about_bad_input_are_also_builtin_types(error: type, builtin: type):
    assert issubclass(error, builtin)
    with pytest.raises(builtin):
        raise error("bad input")


def test_bigquery_errors_share_their_root():
    assert issubclass(UnsupportedNodeError, BigQueryWatcherError)
    assert issubclass(BigQueryCompileError, BigQueryWatcherError)
    assert not issubclass(NodesDidNotSucceed, BigQueryWatcherError)


def test_nodes_did_not_succeed_carries_the_failed_nodes():
    error = NodesDidNotSucceed("2 nodes failed", failed_nodes=["model.a", "model.b"], allow_retries=False)
    assert error.failed_nodes == ("model.a", "model.b")
    assert error.description == "2 nodes failed" and error.allow_retries is False
    assert DbtDidNotComplete("crashed", mode="runner").mode == "runner"


# -- NodeStatus ------------------------------------------------------------------------------------

S = NodeStatus


def test_node_status_values_are_the_stored_strings():
    assert [s.value for s in S] == [
        "success",
        "warn",
        "fail",
        "error",
        "skipped",
        "lost",
        "not_selected",
        "partial_success",
    ]
    assert S.ERROR == "error"  # a StrEnum: stored and compared as its value


@pytest.mark.parametrize(
    ("status", "succeeded", "blocks", "ran"),
    [
        (S.SUCCESS, True, False, True),
        (S.WARN, True, False, True),
        (S.FAIL, False, True, True),
        (S.ERROR, False, True, True),
        (S.SKIPPED, False, False, False),
        (S.LOST, False, True, False),
        (S.NOT_SELECTED, False, False, False),
        (S.PARTIAL_SUCCESS, False, True, True),
    ],
    ids=[s.value for s in S],
)
def test_node_status_predicates(status: NodeStatus, succeeded: bool, blocks: bool, ran: bool):
    assert status.succeeded is succeeded
    assert status.blocks_descendants is blocks
    assert status.ran is ran
    assert (status in S.succeeded_statuses()) is succeeded
    assert (status in S.blocking()) is blocks


def test_node_status_groups():
    assert S.succeeded_statuses() == {S.SUCCESS, S.WARN}
    assert S.blocking() == {S.ERROR, S.FAIL, S.LOST, S.PARTIAL_SUCCESS}
    assert S.SKIPPED not in S.blocking()  # a skip is a consequence, never a cause


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("success", S.SUCCESS),
        ("lost", S.LOST),
        (S.WARN, S.WARN),
        ("pass", None),
        ("ERROR", None),
        (None, None),
        (3, None),
    ],
)
def test_node_status_parse(value: object, parsed: NodeStatus | None):
    assert S.parse(value) is parsed


def test_op_tags_may_not_overwrite_the_watchers_own_tags() -> None:
    from dagster_watcher import dbt_watcher_assets

    with pytest.raises(WatcherConfigError, match=r"dagster_watcher/producer.*rename them"):
        dbt_watcher_assets(manifest={}, op_tags={"dagster_watcher/producer": "x", "team": "finance"})


def test_dbt_watcher_assets_takes_every_dbt_assets_argument() -> None:
    import inspect

    from dagster_dbt import build_schedule_from_dbt_selection, dbt_assets

    from dagster_watcher import build_watcher_schedule, dbt_watcher_assets

    ours = inspect.signature(dbt_watcher_assets).parameters
    assert set(inspect.signature(dbt_assets).parameters) <= set(ours), "switching is one import"
    schedule = set(inspect.signature(build_watcher_schedule).parameters)
    theirs = set(inspect.signature(build_schedule_from_dbt_selection).parameters) - {"dbt_assets"}
    assert theirs <= schedule, "a build_schedule_from_dbt_selection call works after renaming it"


def test_op_tags_may_not_overwrite_dagster_dbts_selection_tags() -> None:
    from dagster_watcher import dbt_watcher_assets

    with pytest.raises(WatcherConfigError, match=r"dagster_dbt/select.*select=, exclude= or selector="):
        dbt_watcher_assets(manifest={}, op_tags={"dagster_dbt/select": "tag:x", "team": "finance"})


def test_build_watcher_schedule_with_dagster_dbts_arguments(shop_assets) -> None:
    from dagster import build_schedule_context, instance_for_test

    from dagster_watcher import build_watcher_schedule

    schedule = build_watcher_schedule(
        [shop_assets],
        "marts_daily",  # dagster-dbt's positional job_name
        "0 6 * * *",
        dbt_select="customers",
        schedule_name="marts",
        tags={"team": "finance"},
    )
    assert schedule.name == "marts" and schedule.job_name == "marts_daily"
    selected = schedule.job.selection.resolve([shop_assets])  # type: ignore[union-attr]
    assert {k.to_user_string() for k in selected} == {"customers"}, "the job is the dbt selection"
    with instance_for_test() as instance:
        [request] = schedule.evaluate_tick(build_schedule_context(instance=instance)).run_requests or []
    assert request.tags["team"] == "finance"
    with pytest.raises(WatcherConfigError, match="job_name"):
        build_watcher_schedule(shop_assets, cron_schedule="0 6 * * *")
