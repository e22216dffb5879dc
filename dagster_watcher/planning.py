"""Selection planning: which dbt nodes this producer step asks dbt to run, and which outcomes it must
account for. Pure reads of the definition and the event log; nothing here runs dbt or writes events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetExecutionContext
from dagster_dbt import DbtProject
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets
from dagster_dbt.dagster_dbt_translator import DagsterDbtTranslator

from . import contract
from .dagster_mapping import NodeTarget
from .retry import WatcherRetryPolicy, policy_from_tags, read_run_outcomes


@dataclass
class BuildPlan:
    """What this step asks dbt to do, and which node outcomes it must account for."""

    manifest: Mapping[str, Any]
    translator: DagsterDbtTranslator
    targets: dict[str, NodeTarget]
    """Every node of this step's selection that has a Dagster home, by unique_id."""
    selection_args: list[str] = field(default_factory=list)
    retry_policy: WatcherRetryPolicy = field(default_factory=WatcherRetryPolicy)
    """The policy the definition was made with (decides whether a failure may be retried in-step)."""
    already_done: frozenset[str] = frozenset()
    """Nodes that succeeded in an earlier attempt of this step (retries run only the rest)."""
    project: DbtProject | None = None
    """The dagster-dbt project the definition was made with (None for a bare manifest)."""

    @property
    def expected(self) -> frozenset[str]:
        return frozenset(self.targets) - self.already_done

    @property
    def is_empty(self) -> bool:
        return not self.expected

    def name_of(self, unique_id: str) -> str:
        node = (self.manifest.get("nodes") or {}).get(unique_id) or {}
        return str(node.get("name") or unique_id)


def plan_for_context(context: AssetExecutionContext, already_done: frozenset[str] = frozenset()) -> BuildPlan:
    """Work out this step's dbt selection from the Dagster selection (a subset in the UI, a job's asset
    selection, or a retry's remaining nodes)."""
    assets_def = context.assets_def
    manifest, translator, project = get_manifest_and_translator_from_dbt_assets([assets_def])
    selected_keys = context.selected_asset_keys
    selected_checks = context.selected_asset_check_keys
    nodes = manifest.get("nodes") or {}

    targets: dict[str, NodeTarget] = {}
    for key in selected_keys:
        unique_id = contract.unique_id_of_asset(assets_def, key)
        targets[unique_id] = NodeTarget(
            unique_id=unique_id, asset_key=key, output_name=assets_def.get_output_name_for_asset_key(key)
        )
    for check_key in selected_checks:
        test_id = contract.unique_id_of_check(assets_def, check_key)
        if not test_id:
            continue
        severity = str(((nodes.get(test_id) or {}).get("config") or {}).get("severity", "error")).lower()
        targets[test_id] = NodeTarget(unique_id=test_id, check_key=check_key, check_severity=severity)

    plan = BuildPlan(
        manifest=manifest,
        translator=translator,
        targets=targets,
        already_done=already_done,
        retry_policy=policy_from_tags(context.op_execution_context.op.tags),
        project=project,
    )
    is_full = (
        not already_done
        and assets_def.keys_by_output_name == assets_def.node_keys_by_output_name
        and assets_def.check_specs_by_output_name == assets_def.node_check_specs_by_output_name
    )
    if is_full:
        # The definition's own selection: readable, and dbt also runs tests that are not checks.
        tags = context.op_execution_context.op.tags
        for flag, tag in (
            ("--select", contract.SELECT_TAG),
            ("--exclude", contract.EXCLUDE_TAG),
            ("--selector", contract.SELECTOR_TAG),
        ):
            if tags.get(tag):
                plan.selection_args += [flag, tags[tag]]
    else:
        # Exactly the nodes asked for, by fully qualified name, and no test dbt would add on its own
        # (eager indirect selection can pull in a test whose other parent is not being built). The
        # list goes to dbt as arguments, never into a copy of the project; in-process it has no
        # length limit at all.
        fqns = sorted(".".join(nodes[u]["fqn"]) for u in plan.expected if u in nodes)
        if fqns:
            plan.selection_args += ["--select", *fqns, "--indirect-selection", "empty"]
    return plan


def succeeded_in_run(context: AssetExecutionContext) -> frozenset[str]:
    """unique_ids of this step's nodes that already have a success recorded in this run."""
    outcomes = read_run_outcomes(context.instance, context.run.run_id)
    assets_def = context.assets_def
    done: set[str] = set()
    for key in outcomes.materialized & set(assets_def.keys):
        done.add(contract.unique_id_of_asset(assets_def, key))
    for check_key in outcomes.checks_done & set(assets_def.check_keys):
        unique_id = contract.unique_id_of_check(assets_def, check_key)
        if unique_id:
            done.add(unique_id)
    return frozenset(done)
