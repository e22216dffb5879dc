"""The dependency graph of one engine invocation: which nodes run, in which order, and why some
cannot run here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster_watcher.bigquery.sql import COMPILE_ERROR_KEY, RENDERED_HOOKS_KEY

_TERMINAL_RESOURCE_TYPES = ("model", "seed", "test")


@dataclass
class _Node:
    unique_id: str
    node: Mapping[str, Any]
    resource_type: str
    materialized: str
    parents: set[str] = field(default_factory=set)
    children: set[str] = field(default_factory=set)
    priority: int = 0
    """Longest chain of descendants: the critical path is submitted first."""
    unsupported: str | None = None


def _build_graph(manifest: Mapping[str, Any], unique_ids: Iterable[str], *, build_semantics: bool) -> dict[str, _Node]:
    """Nodes to run and their edges within the run set.

    Ephemeral models are not run (dbt inlined them as CTEs) but edges pass through them, so a model
    reading an ephemeral that reads a table still waits for that table. With ``build_semantics``
    a node also waits for the tests of its ancestors when all of a test's parents are ancestors of
    the node (dbt's ``add_test_edges``), so a failing test stops the models built on what it tests.
    """
    # unit tests live beside the nodes; they are reported (as unsupported), never silently dropped.
    all_nodes: Mapping[str, Any] = {**(manifest.get("unit_tests") or {}), **(manifest.get("nodes") or {})}
    selected: dict[str, _Node] = {}
    for uid in unique_ids:
        raw = all_nodes.get(uid)
        if raw is None:
            raise KeyError(f"{uid} is not a node of the manifest")
        rtype = raw.get("resource_type") or uid.split(".", 1)[0]
        config = raw.get("config") or {}
        materialized = str(config.get("materialized") or rtype)
        if materialized == "ephemeral":
            continue
        item = _Node(uid, raw, rtype, materialized)
        item.unsupported = _unsupported_reason(raw, rtype, materialized)
        selected[uid] = item

    def real_parents(uid: str, seen: set[str]) -> set[str]:
        result: set[str] = set()
        for parent in ((all_nodes.get(uid) or {}).get("depends_on") or {}).get("nodes") or []:
            if parent in seen:
                continue
            seen.add(parent)
            if parent in selected:
                result.add(parent)
            elif ((all_nodes.get(parent) or {}).get("config") or {}).get("materialized") == "ephemeral":
                result |= real_parents(parent, seen)
        return result

    for uid, item in selected.items():
        item.parents = real_parents(uid, set()) - {uid}

    if build_semantics:
        ancestors: dict[str, set[str]] = {}

        def ancestors_of(uid: str) -> set[str]:
            if uid not in ancestors:
                ancestors[uid] = set()  # cycle guard; manifests are DAGs
                acc: set[str] = set()
                for p in selected[uid].parents:
                    if selected[p].resource_type != "test":
                        acc.add(p)
                        acc |= ancestors_of(p)
                ancestors[uid] = acc
            return ancestors[uid]

        model_children: dict[str, set[str]] = {uid: set() for uid in selected}
        for uid, item in selected.items():
            for p in item.parents:
                model_children[p].add(uid)
        for test_id, test in selected.items():
            if test.resource_type != "test" or not test.parents:
                continue
            # Candidates: descendants of any tested parent; keep those having all tested parents upstream.
            frontier = [c for p in test.parents for c in model_children[p]]
            seen: set[str] = set()
            while frontier:
                candidate = frontier.pop()
                if candidate in seen:
                    continue
                seen.add(candidate)
                frontier.extend(model_children[candidate])
                if selected[candidate].resource_type == "test":
                    continue
                if test.parents <= ancestors_of(candidate):
                    selected[candidate].parents.add(test_id)

    for uid, item in selected.items():
        for p in item.parents:
            selected[p].children.add(uid)

    # Priority = length of the longest path below a node (computed bottom-up, iteratively).
    order = _topological(selected)
    for uid in reversed(order):
        item = selected[uid]
        item.priority = 1 + max((selected[c].priority for c in item.children), default=0)
    return selected


def _topological(nodes: Mapping[str, _Node]) -> list[str]:
    indegree = {uid: len(n.parents) for uid, n in nodes.items()}
    queue = sorted(uid for uid, d in indegree.items() if d == 0)
    order: list[str] = []
    while queue:
        uid = queue.pop()
        order.append(uid)
        for child in nodes[uid].children:
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    if len(order) != len(nodes):
        raise ValueError("the selected nodes contain a dependency cycle")
    return order


def _unsupported_reason(node: Mapping[str, Any], rtype: str, materialized: str) -> str | None:
    config = node.get("config") or {}
    if node.get(COMPILE_ERROR_KEY):
        return str(node[COMPILE_ERROR_KEY])
    if rtype not in _TERMINAL_RESOURCE_TYPES:
        return f"resource type {rtype!r} is not supported by the BigQuery async engine"
    if rtype == "model" and materialized not in ("view", "table", "incremental"):
        return f"materialization {materialized!r} is not supported by the BigQuery async engine"
    if rtype == "model" and node.get("language", "sql") != "sql":
        return "python models are not supported by the BigQuery async engine"
    if (config.get("pre-hook") or config.get("post-hook")) and RENDERED_HOOKS_KEY not in node:
        # Hooks are stored unrendered (Jinja) in the manifest; compile_project() renders them with
        # dbt at compile time. Without that, running them would need dbt.
        return (
            "pre-/post-hooks are not supported by the BigQuery async engine unless rendered at "
            "compile time (compile with compile_project(), which renders them with dbt)"
        )
    if config.get("sql_header"):
        return "sql_header is not supported by the BigQuery async engine"
    # Configs dbt-bigquery would apply after (or while) building the relation. Not generated here:
    # fail loudly rather than build a relation without its grants, contract or table options.
    if config.get("grants"):
        return "grants are not supported by the BigQuery async engine (dbt would apply them after the build)"
    if (config.get("contract") or {}).get("enforced"):
        return "enforced model contracts are not supported by the BigQuery async engine"
    if rtype == "test" and config.get("store_failures"):
        return "store_failures is not supported by the BigQuery async engine"
    for option in ("hours_to_expiration", "kms_key_name", "require_partition_filter", "partition_expiration_days"):
        if config.get(option) not in (None, False):
            return f"{option} is not supported by the BigQuery async engine"
    if materialized == "incremental":
        strategy = (config.get("incremental_strategy") or "merge").lower()
        if strategy not in ("merge", "append"):
            return f"incremental_strategy {strategy!r} is not supported (merge, append are)"
        if (config.get("on_schema_change") or "ignore") != "ignore":
            return f"on_schema_change {config.get('on_schema_change')!r} is not supported (ignore is)"
    if rtype in ("model", "test") and not node.get("compiled_code"):
        return "no compiled_code in the manifest: run `dbt compile` for this target first"
    return None
