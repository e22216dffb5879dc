"""Selection planning: which dbt nodes this producer step asks dbt to run, and which outcomes it must
account for.

:func:`plan_for_context` reads the Dagster side (the step's selected assets and checks, the
definition's own dbt selection); :func:`resolve_plan` asks dbt's own selector (``selection.py``) what
the invocation will run once the user's flags are applied, and records what it leaves out as
``not_selected``. Nothing here writes events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetExecutionContext, AssetKey
from dagster_dbt import DbtProject
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets
from dagster_dbt.dagster_dbt_translator import DagsterDbtTranslator

from . import contract
from .dagster_mapping import NodeTarget
from .partitions import StepPartitions, step_partitions
from .retry import WatcherRetryPolicy, policy_from_tags, read_run_outcomes
from .selection import DbtSelectionFlags, SelectionQuery, SelectionResolver
from .status import is_test, node_name


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
    definition_flags: DbtSelectionFlags = field(default_factory=DbtSelectionFlags)
    """The definition's own dbt selection (``select``/``exclude``/``selector`` of the decorator)."""
    is_full: bool = False
    """The step runs the whole definition (no Dagster subset, no retry of part of it)."""
    selected: frozenset[str] | None = None
    """What dbt will run, as dbt's selector resolved it (None until :func:`resolve_plan`)."""
    not_selected: dict[str, str] = field(default_factory=dict)
    """Planned nodes dbt's selection leaves out, with the reason."""
    checks_with_built_parents: frozenset[str] = frozenset()
    """Selected checks of a subset whose parents are all built (in this run or before it)."""
    deselected_checks: frozenset[str] = frozenset()
    """Tests of this definition's checks that the Dagster selection left out."""
    test_targets: dict[str, NodeTarget] = field(default_factory=dict)
    """Tests dbt will run that are no asset check (and unit tests): their verdict is observed on
    their parent assets."""
    partitions: StepPartitions | None = None
    """The partitions this step builds (None: unpartitioned); each node's outcome is recorded per
    partition."""

    @property
    def expected(self) -> frozenset[str]:
        """Every node whose outcome this step must record: lost when dbt never reports it."""
        planned = frozenset(self.targets) | frozenset(self.test_targets)
        if self.selected is not None:
            planned &= self.selected
        return planned - self.already_done - frozenset(self.not_selected)

    def target_of(self, unique_id: str) -> NodeTarget | None:
        return self.targets.get(unique_id) or self.test_targets.get(unique_id)

    def fqn_of(self, unique_id: str) -> str | None:
        node = _node(self.manifest, unique_id)
        return ".".join(node["fqn"]) if node.get("fqn") else None

    @property
    def is_empty(self) -> bool:
        return not self.expected

    def name_of(self, unique_id: str) -> str:
        return str(_node(self.manifest, unique_id).get("name") or unique_id)

    def batch_size_of(self, unique_id: str) -> str | None:
        """A microbatch model's ``batch_size`` (hour, day, month, year), None for any other node."""
        size = (_node(self.manifest, unique_id).get("config") or {}).get("batch_size")
        return str(size) if size else None


def _table_name(spec_metadata: Mapping[str, Any]) -> str | None:
    """The table an asset's definition names (dagster-dbt's translator writes it; a custom translator
    may name it under the legacy key, or not at all)."""
    value = spec_metadata.get(contract.TABLE_NAME_KEY) or spec_metadata.get(contract.LEGACY_TABLE_NAME_KEY)
    value = getattr(value, "value", value)  # a TextMetadataValue or the plain text
    return str(value) if value else None


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
        spec_metadata = assets_def.get_asset_spec(key).metadata
        unique_id = str(spec_metadata[contract.SPEC_UNIQUE_ID_KEY])
        targets[unique_id] = NodeTarget(
            unique_id=unique_id,
            asset_key=key,
            output_name=assets_def.get_output_name_for_asset_key(key),
            table_name=_table_name(spec_metadata),
        )
    for check_key in selected_checks:
        test_id = contract.unique_id_of_check(assets_def, check_key)
        if not test_id:
            continue
        severity = str(((nodes.get(test_id) or {}).get("config") or {}).get("severity", "error")).lower()
        targets[test_id] = NodeTarget(unique_id=test_id, check_key=check_key, check_severity=severity)

    tags = context.op_execution_context.op.tags
    plan = BuildPlan(
        manifest=manifest,
        translator=translator,
        targets=targets,
        partitions=step_partitions(context),
        already_done=already_done,
        retry_policy=policy_from_tags(tags),
        project=project,
        definition_flags=DbtSelectionFlags(
            select=tuple(str(tags[contract.SELECT_TAG]).split()) if tags.get(contract.SELECT_TAG) else (),
            exclude=tuple(str(tags[contract.EXCLUDE_TAG]).split()) if tags.get(contract.EXCLUDE_TAG) else (),
            selector=str(tags[contract.SELECTOR_TAG]) if tags.get(contract.SELECTOR_TAG) else None,
        ),
        is_full=(
            not already_done
            and assets_def.keys_by_output_name == assets_def.node_keys_by_output_name
            and assets_def.check_specs_by_output_name == assets_def.node_check_specs_by_output_name
        ),
        deselected_checks=frozenset(
            u
            for check_key in set(assets_def.check_keys) - set(selected_checks)
            if (u := contract.unique_id_of_check(assets_def, check_key))
        ),
    )
    if plan.is_full:
        # The definition's own selection: readable, and dbt also runs tests that are not checks.
        plan.selection_args += plan.definition_flags.args()
    else:
        # Exactly the nodes asked for, by fully qualified name, and no test dbt would add on its own
        # (eager indirect selection can pull in a test whose other parent is not being built). The
        # list goes to dbt as arguments, never into a copy of the project; in-process it has no
        # length limit at all.
        fqns = sorted(".".join(nodes[u]["fqn"]) for u in plan.expected if u in nodes)
        if fqns:
            plan.selection_args += ["--select", *fqns, "--indirect-selection", "empty"]
        plan.checks_with_built_parents = _checks_with_built_parents(context, plan)
    return plan


def _checks_with_built_parents(context: AssetExecutionContext, plan: BuildPlan) -> frozenset[str]:
    """The selected checks of a subset whose parents are all built: in this run, or before it (they
    have a materialization). dbt runs these for the subset; a check with a parent that was never built
    is left to dbt's buildable selection (which runs it only when that parent is upstream)."""
    in_run = {t.asset_key for u, t in plan.targets.items() if t.asset_key is not None and u not in plan.already_done}
    parents_of: dict[str, set[AssetKey]] = {}
    for unique_id, target in plan.targets.items():
        if target.check_key is None or unique_id in plan.already_done:
            continue
        parents = (_node(plan.manifest, unique_id).get("depends_on") or {}).get("nodes") or []
        parents_of[unique_id] = {k for p in parents if p.split(".", 1)[0] != "source" and (k := _asset_key_of(plan, p))}
    outside = sorted({k for keys in parents_of.values() for k in keys} - in_run, key=lambda k: k.to_user_string())
    built = (
        {
            r.asset_entry.asset_key
            for r in context.instance.get_asset_records(outside)
            if r.asset_entry.last_materialization_record
        }
        if outside
        else set()
    )
    return frozenset(u for u, keys in parents_of.items() if keys <= in_run | built)


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


def _node(manifest: Mapping[str, Any], unique_id: str) -> Mapping[str, Any]:
    return (manifest.get("nodes") or {}).get(unique_id) or (manifest.get("unit_tests") or {}).get(unique_id) or {}


_DEFAULT_SELECT = ("fqn:*",)
_BUILDABLE_REASON = (
    "dbt's indirect selection (buildable) leaves this test out: one of its parents was never built and "
    "is not built in this run"
)


def resolve_plan(
    plan: BuildPlan,
    user: DbtSelectionFlags,
    resolver: SelectionResolver,
    common_args: list[str],
    *,
    stale_sources: Mapping[str, str] | None = None,
) -> None:
    """Decide, with dbt's own selector, exactly what this invocation runs; set ``plan.selection_args``
    to the dbt arguments that run exactly that, ``plan.selected``, ``plan.not_selected`` (with the
    reason) and ``plan.test_targets``.

    - The whole definition without user selection flags runs the definition's selection as is.
    - The whole definition with user flags, when the definition selects everything: the user's flags.
    - Anything else (a Dagster subset, a retry, user flags over a narrowed definition, stale sources)
      is the intersection of each selection, passed to dbt as the explicit node list: a subset's
      models with dbt's ``buildable`` tests and their unit tests, never a test whose other parent is
      not built.

    Args:
        plan: the step's plan (from :func:`plan_for_context`).
        user: selection flags from the resource's ``extra_flags`` and the call's ``extra_args``.
        resolver: dbt's selector for this invocation's environment.
        common_args: the ``dbt`` arguments every command of this build gets (project, profile, vars).
        stale_sources: source unique_id -> why it is stale; nodes downstream of one are left out.

    Raises:
        WatcherConfigError: dbt rejected a selection (its message says what to fix).
    """

    def resolve(flags: DbtSelectionFlags) -> frozenset[str]:
        merged = dataclasses.replace(flags, state_args=user.state_args)
        return resolver.resolve(SelectionQuery(merged, common_args))

    definition = plan.definition_flags
    definition_is_all = (
        definition.select in ((), _DEFAULT_SELECT) and not definition.exclude and not definition.selector
    )
    reasons: dict[str, str] = {}
    if plan.is_full and not user.selects_nodes and not stale_sources:
        selected = resolve(definition)
        readable = definition.args()
    elif plan.is_full and definition_is_all and not stale_sources:
        selected = resolve(user)
        readable = user.args()
        reasons = dict.fromkeys(frozenset(plan.targets) - selected, f"excluded by {user.describe()}")
    else:
        base = resolve(_subset_flags(plan)) if not plan.is_full else resolve(definition)
        selected = base
        if not plan.is_full and not definition_is_all:
            selected &= resolve(definition)
        if user.selects_nodes:
            narrowed = selected & resolve(user)
            reasons.update(dict.fromkeys(selected - narrowed, f"excluded by {user.describe()}"))
            selected = narrowed
        for source_id, why in sorted((stale_sources or {}).items()):
            downstream = resolve(DbtSelectionFlags(select=(f"{_source_selector(plan.manifest, source_id)}+",)))
            for unique_id in sorted(selected & downstream):
                reasons.setdefault(unique_id, f"source {node_name(source_id)} is stale: {why}")
            selected -= downstream
        for unique_id in frozenset(plan.targets) - base:
            reasons.setdefault(
                unique_id, _BUILDABLE_REASON if is_test(unique_id) else "excluded by the definition's selection"
            )
        readable = None
    plan.selected = selected
    plan.not_selected = {
        u: reasons.get(u, "not selected by dbt") for u in frozenset(plan.targets) - selected - plan.already_done
    }
    plan.test_targets = _test_targets(plan, selected)
    plan.selection_args = readable if readable is not None else _explicit_selection(plan, resolve, selected)


def _subset_flags(plan: BuildPlan) -> DbtSelectionFlags:
    """A Dagster subset as dbt would build it: the selected models, seeds and snapshots with dbt's
    ``buildable`` tests (and their unit tests); selected checks whose parents are all built (in this
    run or before), and checks selected without their asset, by name; the checks the Dagster
    selection left out, excluded."""
    assets = {u for u, t in plan.targets.items() if t.asset_key is not None} - plan.already_done
    asset_keys = {t.asset_key for t in plan.targets.values() if t.asset_key is not None}
    orphan_checks = {
        u
        for u, t in plan.targets.items()
        if t.check_key is not None and t.check_key.asset_key not in asset_keys and u not in plan.already_done
    }
    select = sorted(f for u in assets | orphan_checks | plan.checks_with_built_parents if (f := plan.fqn_of(u)))
    exclude = sorted(
        f for u in plan.deselected_checks | (plan.already_done & set(plan.targets)) if (f := plan.fqn_of(u))
    )
    # An empty selection would mean "everything" to dbt: select nothing instead.
    return DbtSelectionFlags(
        select=tuple(select) or ("fqn:__dagster_watcher_nothing__",),
        exclude=tuple(exclude),
        indirect_selection="buildable",
    )


def _source_selector(manifest: Mapping[str, Any], source_id: str) -> str:
    source = (manifest.get("sources") or {}).get(source_id) or {}
    return f"source:{source.get('source_name')}.{source.get('name')}" if source else f"source:{source_id}"


def _explicit_selection(plan: BuildPlan, resolve: Any, selected: frozenset[str]) -> list[str]:
    """dbt arguments that select exactly ``selected``: each node by its fully qualified name, with no
    indirect selection; verified with dbt's selector (a name also matches the nodes below it, e.g. a
    model's unit tests), and whatever else it matches excluded by name."""
    select = sorted(f for u in selected if (f := plan.fqn_of(u)))
    if not select:
        return ["--select", "fqn:__dagster_watcher_nothing__", "--indirect-selection", "empty"]
    flags = DbtSelectionFlags(select=tuple(select), indirect_selection="empty")
    extra = resolve(flags) - selected
    if extra:
        flags = DbtSelectionFlags(
            select=flags.select,
            exclude=tuple(sorted(f for u in extra if (f := plan.fqn_of(u)))),
            indirect_selection="empty",
        )
    return flags.args()


def _test_targets(plan: BuildPlan, selected: frozenset[str]) -> dict[str, NodeTarget]:
    """Tests dbt runs that are no asset check of this step, with the assets their verdict goes on:
    every parent (a singular test over two models, a test on a source), or a unit test's model."""
    key_of = {t.unique_id: t.asset_key for t in plan.targets.values() if t.asset_key is not None}
    out: dict[str, NodeTarget] = {}
    for unique_id in sorted(selected):
        if not is_test(unique_id) or unique_id in plan.targets:
            continue
        node = _node(plan.manifest, unique_id)
        parents = list((node.get("depends_on") or {}).get("nodes") or [])
        if unique_id.startswith("unit_test."):
            parents = parents[:1]
        keys = tuple(dict.fromkeys(k for p in parents if (k := key_of.get(p) or _asset_key_of(plan, p)) is not None))
        if keys:
            out[unique_id] = NodeTarget(
                unique_id=unique_id, observe_keys=keys, test_name=str(node.get("name") or unique_id)
            )
    return out


def _asset_key_of(plan: BuildPlan, unique_id: str) -> AssetKey | None:
    """The asset key dagster-dbt's translator gives a node outside this step's targets (a source, a
    model of another step)."""
    props = (plan.manifest.get("nodes") or {}).get(unique_id) or (plan.manifest.get("sources") or {}).get(unique_id)
    if not props:
        return None
    try:
        return plan.translator.get_asset_key(props)
    except Exception:  # noqa: BLE001 - a translator that cannot name it: the verdict has no home
        return None
