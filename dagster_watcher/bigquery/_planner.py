"""Which statements a node runs: the plan of one node job, chosen when the node is about to run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_watcher.bigquery._state import _NodeJob
from dagster_watcher.bigquery.config import BigQueryEngineConfig
from dagster_watcher.bigquery.job_ids import _label_value
from dagster_watcher.bigquery.sql import (
    Statement,
    _hook_statements,
    _insert_sql,
    _merge_sql,
    _options_clause,
    _seed_schema,
    _table_ddl,
    _table_id,
    _test_sql,
    _unique_keys,
    relation_of,
)

if TYPE_CHECKING:
    from google.cloud.bigquery import Client


class _StatementPlanner:
    """Chooses each node job's statement sequence (its plan), asking BigQuery what exists.

    Keeps dbt's relation cache: one ``tables.list`` per dataset, on first use."""

    def __init__(self, client: Callable[[], Client], config: BigQueryEngineConfig, *, full_refresh: bool) -> None:
        self.client = client
        self.config = config
        self.full_refresh = full_refresh
        self.relations: dict[tuple[str, str], dict[str, str]] = {}

    def choose(self, node_job: _NodeJob, plan: str | None = None) -> None:
        """Pick the statement sequence. For incremental models it depends on whether the target
        exists *now* (and on its columns), so it is decided when the node is about to run.

        Rendered pre-hooks come first and post-hooks after the node's work (before an incremental
        model's temp table is dropped, as in dbt-bigquery's materialization). They do not change
        from one attempt to the next, so statement indices (and job ids) stay stable."""
        self._plan_statements(node_job, plan)
        pre, post = _hook_statements(node_job.spec.node, "pre"), _hook_statements(node_job.spec.node, "post")
        if pre or post:
            body = list(node_job.statements)
            tail = [body.pop()] if body and body[-1].kind == "drop_tmp" else []
            node_job.statements = [*pre, *body, *post, *tail]

    def _plan_statements(self, node_job: _NodeJob, plan: str | None = None) -> None:
        spec, node = node_job.spec, node_job.spec.node
        config = node.get("config") or {}
        if spec.resource_type == "seed":
            node_job.plan, node_job.statements = "seed", [self._seed_statement(node)]
            return
        if spec.resource_type == "test":
            node_job.plan, node_job.statements = "test", [Statement("test", _test_sql(node))]
            return
        target, sql = relation_of(node), node["compiled_code"]
        # BigQuery cannot CREATE OR REPLACE a table over a view (or the reverse): like dbt, drop
        # the relation of the other type first. Those are separate plans ("...-replace") so a
        # re-attaching run can tell from the job label which sequence the job ids belong to.
        existing = self._relation_type(node) if plan is None else None
        if spec.materialized == "view":
            options = _options_clause(node)
            head = f"create or replace view {target}" + (f" {options}" if options else "")
            create = Statement("create_view", f"{head}\nas (\n{sql}\n)")
            if plan == "view-replace" or (plan is None and existing not in (None, "VIEW")):
                drop = Statement("drop_table", f"drop table if exists {target}")
                node_job.plan, node_job.statements = "view-replace", [drop, create]
            else:
                node_job.plan, node_job.statements = "view", [create]
            return
        if spec.materialized == "table" or plan in ("create", "create-replace"):
            create = Statement("create_table", _table_ddl(node, target, sql))
            if plan is None and spec.materialized == "table":
                plan = "table-replace" if existing == "VIEW" else "table"
            if plan in ("table-replace", "create-replace"):
                drop = Statement("drop_view", f"drop view if exists {target}")
                node_job.plan, node_job.statements = plan, [drop, create]
            else:
                node_job.plan, node_job.statements = plan or "table", [create]
            return
        # incremental
        strategy = (config.get("incremental_strategy") or "merge").lower()
        if strategy == "merge" and not _unique_keys(config):
            strategy = "append"  # dbt-bigquery's merge without unique_key only inserts
        columns: list[str] | None = None
        if plan is None:
            refresh = config.get("full_refresh")
            refresh = self.full_refresh if refresh is None else bool(refresh)
            if existing == "VIEW":
                plan = "create-replace"
            elif refresh or existing is None:
                plan = "create"  # CREATE OR REPLACE TABLE: a full refresh is a rebuild
            else:
                columns = self._existing_columns(node)
                plan = "create" if columns is None else f"incremental-{strategy}"
            if plan.startswith("create"):
                self._plan_statements(node_job, plan=plan)
                return
        if plan != f"incremental-{strategy}":
            raise ValueError(f"unknown plan {plan!r} for {spec.unique_id}")
        if columns is None:
            columns = self._existing_columns(node)
            if columns is None:
                raise RuntimeError(f"{relation_of(node)} vanished while re-attaching its run")
        tmp = relation_of(node, "__dbt_tmp")
        step = (
            Statement("merge", _merge_sql(node, target, tmp, columns))
            if strategy == "merge"
            else Statement("insert", _insert_sql(target, tmp, columns))
        )
        node_job.plan, node_job.statements = (
            plan,
            [
                Statement("create_tmp", _table_ddl(node, tmp, sql, tmp=True)),
                step,
                Statement("drop_tmp", f"drop table if exists {tmp}"),
            ],
        )

    def _existing_columns(self, node: Mapping[str, Any]) -> list[str] | None:
        """Columns of the incremental target (dbt merges/inserts the target's columns)."""
        from google.api_core.exceptions import NotFound

        try:
            table = self.client().get_table(_table_id(node), timeout=self.config.api_timeout)
        except NotFound:
            return None
        if table.table_type == "VIEW":
            return None
        return [f.name for f in table.schema]

    def _relation_type(self, node: Mapping[str, Any]) -> str | None:
        """``TABLE``/``VIEW``/... of the relation a node writes, or None if it does not exist.

        Like dbt's relation cache: one ``tables.list`` per dataset, on first use. Only this run
        changes the relations of its own nodes, and each node is planned once before it writes.
        """
        from google.api_core.exceptions import NotFound

        key = (str(node["database"]), str(node["schema"]))
        if key not in self.relations:
            found: dict[str, str] = {}
            try:
                for item in self.client().list_tables(f"{key[0]}.{key[1]}", timeout=self.config.api_timeout):
                    found[item.table_id] = item.table_type or "TABLE"
            except NotFound:
                pass
            self.relations[key] = found
        return self.relations[key].get(str(node.get("alias") or node["name"]))

    def _seed_statement(self, node: Mapping[str, Any]) -> Statement:
        root = Path(node.get("root_path") or ".")
        path = root / node["original_file_path"]
        config = node.get("config") or {}
        return Statement(
            "load_seed",
            load_path=str(path),
            load_destination=_table_id(node),
            load_schema=_seed_schema(node, path),
            delimiter=config.get("delimiter") or ",",
        )


def _plan_from_label(node_job: _NodeJob, label: str) -> str:
    """The plan an earlier attempt's job label names, if it is still valid for this node (a model
    whose materialization changed since then gets a new attempt instead)."""
    spec = node_job.spec
    strategy = ((spec.node.get("config") or {}).get("incremental_strategy") or "merge").lower()
    if strategy == "merge" and not _unique_keys(spec.node.get("config") or {}):
        strategy = "append"
    valid = {
        "view": ("view", "view-replace"),
        "table": ("table", "table-replace"),
        "incremental": ("create", "create-replace", f"incremental-{strategy}"),
    }.get(spec.materialized, (spec.resource_type,))
    for plan in valid:
        if _label_value(plan) == label:
            return plan
    raise ValueError(f"plan label {label!r} does not fit {spec.unique_id} ({spec.materialized})")
