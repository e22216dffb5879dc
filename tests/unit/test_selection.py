"""The user's dbt flags split into what selects nodes and the rest (dbt's MultiOption rules), and the
``dbt ls`` questions the planner asks dbt's selector."""

from __future__ import annotations

import pytest

from dagster_watcher.errors import WatcherConfigError
from dagster_watcher.selection import BUILD_RESOURCE_TYPES, DbtSelectionFlags, SelectionQuery


@pytest.mark.parametrize(
    ("args", "select", "exclude", "rest"),
    [
        (["--exclude", "stg_payments+"], (), ("stg_payments+",), []),
        (["--select", "a", "b", "--full-refresh"], ("a", "b"), (), ["--full-refresh"]),
        (["-s", "a b", "--exclude=c"], ("a", "b"), ("c",), []),
        (["--models", "a", "-m", "b"], ("a", "b"), (), []),
        (["--fail-fast", "--threads", "4"], (), (), ["--fail-fast", "--threads", "4"]),
    ],
    ids=["exclude", "select-several-values", "space-separated-and-inline", "models-alias", "no-selection"],
)
def test_split_takes_every_value_up_to_the_next_flag(args, select, exclude, rest):  # type: ignore[no-untyped-def]
    flags, others = DbtSelectionFlags.split(args)
    assert (flags.select, flags.exclude, others) == (select, exclude, rest)


def test_state_and_defer_flags_go_to_both_ls_and_build_and_select_nothing_alone():
    flags, rest = DbtSelectionFlags.split(["--defer", "--state", "prod", "--favor-state", "--empty"])
    assert flags.state_args == ("--defer", "--state", "prod", "--favor-state")
    assert rest == ["--empty"]
    assert not flags.selects_nodes
    with_select, _ = DbtSelectionFlags.split(["--select", "state:modified+", "--state", "prod"])
    assert with_select.selects_nodes
    assert with_select.describe() == "--select state:modified+ --state prod"


def test_resource_type_filters_and_selector_are_selection():
    flags, rest = DbtSelectionFlags.split(
        ["--resource-type", "model", "--exclude-resource-type", "unit_test", "--selector", "nightly"]
    )
    assert rest == []
    assert flags.args() == ["--selector", "nightly", "--resource-type", "model", "--exclude-resource-type", "unit_test"]


def test_a_selection_flag_without_its_value_names_the_flag():
    with pytest.raises(WatcherConfigError, match="--select needs a value"):
        DbtSelectionFlags.split(["--select", "--full-refresh"])
    with pytest.raises(WatcherConfigError, match="--selector needs a value"):
        DbtSelectionFlags.split(["--selector"])


def test_ls_asks_for_builds_resource_types_unless_the_user_restricted_them():
    query = SelectionQuery(DbtSelectionFlags(exclude=("x+",)), ["--project-dir", "p"])
    args = query.ls_args("/t")
    assert args[:5] == ["ls", "--project-dir", "p", "--target-path", "/t"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--resource-type"] == list(BUILD_RESOURCE_TYPES)
    assert args[-2:] == ["--exclude", "x+"]
    restricted = SelectionQuery(DbtSelectionFlags(resource_types=("model",)), []).ls_args("/t")
    assert [restricted[i + 1] for i, a in enumerate(restricted) if a == "--resource-type"] == ["model"]
