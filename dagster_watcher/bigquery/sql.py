"""The statements each materialization needs, as BigQuery SQL (pure functions of a manifest node)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_watcher.errors import UnsupportedNodeError

__all__ = ["COMPILE_ERROR_KEY", "RENDERED_HOOKS_KEY", "Statement", "quote", "relation_of"]

#: Node key (added by :func:`compile_project`) holding the node's pre-/post-hooks rendered by dbt at
#: compile time: ``{"pre": [{"sql": ..., "transaction": bool}], "post": [...]}``. The manifest itself
#: only stores hooks as unrendered Jinja; a node with hooks but without this key is not run.
RENDERED_HOOKS_KEY = "dagster_watcher_rendered_hooks"
#: Node key (added by :func:`compile_project`) holding dbt's error when the node failed to compile.
COMPILE_ERROR_KEY = "dagster_watcher_compile_error"

#: Statement kinds that do a node's actual work (the others are hooks and temp-table housekeeping).
_MAIN_KINDS = ("create_view", "create_table", "merge", "insert", "load_seed", "test")


@dataclass(frozen=True)
class Statement:
    """One job of a node: a query (``sql``) or, for seeds, a CSV load (``load_path``).

    Example::

        Statement("create_view", "create or replace view `p`.`d`.`v` as (select 1)")
    """

    kind: str
    """``create_view``, ``create_table``, ``create_tmp``, ``merge``, ``insert``, ``drop_tmp``,
    ``drop_table``, ``drop_view``, ``test``, ``load_seed``, ``pre_hook``, ``post_hook``."""
    sql: str | None = None
    load_path: str | None = None
    load_destination: str | None = None
    """``project.dataset.table`` for a load job."""
    load_schema: tuple[tuple[str, str], ...] = ()
    """(column, BigQuery type) pairs for a load job."""
    delimiter: str = ","


def quote(identifier: str) -> str:
    """Backtick-quote one BigQuery identifier part.

    Args:
        identifier: one part (project, dataset, table or column), unquoted.

    Example::

        quote("my-project")  # '`my-project`'
    """
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def relation_of(node: Mapping[str, Any], suffix: str = "") -> str:
    """The quoted ``project.dataset.table`` a node writes (``suffix`` for the ``__dbt_tmp`` table).

    ``relation_name`` from the manifest is used as is when there is no suffix: dbt already applied
    alias, schema and database configs (and custom ``generate_*_name`` macros) to it.

    Args:
        node: the node as in ``manifest.json``.
        suffix: appended to the identifier (``__dbt_tmp``).

    Raises:
        KeyError: the node has neither ``relation_name`` nor ``database``/``schema``/``name``.

    Example::

        relation_of(manifest["nodes"]["model.shop.orders"])  # '`proj`.`shop`.`orders`'
    """
    if not suffix and node.get("relation_name"):
        return str(node["relation_name"])
    identifier = (node.get("alias") or node["name"]) + suffix
    return ".".join(quote(part) for part in (node["database"], node["schema"], identifier))


def _table_id(node: Mapping[str, Any], suffix: str = "") -> str:
    """Unquoted ``project.dataset.table`` for API calls (``get_table``, load destinations)."""
    return f"{node['database']}.{node['schema']}.{(node.get('alias') or node['name'])}{suffix}"


def _sql_string(value: str) -> str:
    return "'''" + value.replace("\\", "\\\\").replace("'''", "\\'\\'\\'") + "'''"


def _partition_clause(config: Mapping[str, Any]) -> str:
    """``PARTITION BY`` as dbt-bigquery renders ``partition_by`` (PartitionConfig.render)."""
    partition = config.get("partition_by")
    if not partition:
        return ""
    if isinstance(partition, str):  # legacy form: a raw expression
        return f"partition by {partition}"
    column = partition["field"]
    data_type = str(partition.get("data_type") or "date").lower()
    granularity = str(partition.get("granularity") or "day")
    if partition.get("time_ingestion_partitioning"):
        raise UnsupportedNodeError("partition_by.time_ingestion_partitioning is not supported")
    if data_type == "int64":
        rng = partition["range"]
        return (
            f"partition by range_bucket({column}, generate_array("
            f"{rng['start']}, {rng['end']}, {rng.get('interval', 1)}))"
        )
    if data_type in ("timestamp", "datetime"):
        return f"partition by {data_type}_trunc({column}, {granularity})"
    if data_type == "date" and granularity.lower() != "day":
        return f"partition by date_trunc({column}, {granularity})"
    return f"partition by {column}"


def _cluster_clause(config: Mapping[str, Any]) -> str:
    cluster = config.get("cluster_by")
    if not cluster:
        return ""
    columns = [cluster] if isinstance(cluster, str) else list(cluster)
    return "cluster by " + ", ".join(columns)


def _options_clause(node: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> str:
    """``OPTIONS(...)`` for labels and, with ``persist_docs.relation``, the description."""
    config = node.get("config") or {}
    options: dict[str, str] = dict(extra or {})
    labels = config.get("labels") or {}
    if labels:
        pairs = ", ".join(f"({_sql_string(str(k))}, {_sql_string(str(v))})" for k, v in labels.items())
        options["labels"] = f"[{pairs}]"
    if (config.get("persist_docs") or {}).get("relation") and node.get("description"):
        options["description"] = _sql_string(node["description"])
    if not options:
        return ""
    return "options(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"


def _table_ddl(node: Mapping[str, Any], target: str, sql: str, *, tmp: bool = False) -> str:
    config = node.get("config") or {}
    extra = None
    if tmp:
        # Same as dbt-bigquery: the temp relation expires by itself if the drop never runs.
        extra = {"expiration_timestamp": "TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 12 hour)"}
    clauses = [_partition_clause(config), _cluster_clause(config), _options_clause(node, extra)]
    head = " ".join(c for c in (f"create or replace table {target}", *clauses) if c)
    return f"{head}\nas (\n{sql}\n)"


def _unique_keys(config: Mapping[str, Any]) -> list[str]:
    key = config.get("unique_key")
    if not key:
        return []
    return [key] if isinstance(key, str) else [str(k) for k in key]


def _merge_sql(node: Mapping[str, Any], target: str, source: str, columns: Sequence[str]) -> str:
    """dbt's ``get_merge_sql`` for BigQuery, with the temp relation as source."""
    config = node.get("config") or {}
    keys = _unique_keys(config)
    on = [f"(DBT_INTERNAL_SOURCE.{k} = DBT_INTERNAL_DEST.{k})" for k in keys]
    on += [f"({p})" for p in (config.get("incremental_predicates") or [])]
    quoted = [quote(c) for c in columns]
    update_columns: Sequence[str] = columns
    if config.get("merge_update_columns"):
        update_columns = list(config["merge_update_columns"])
    elif config.get("merge_exclude_columns"):
        excluded = {c.lower() for c in config["merge_exclude_columns"]}
        update_columns = [c for c in columns if c.lower() not in excluded]
    updates = ", ".join(f"{quote(c)} = DBT_INTERNAL_SOURCE.{quote(c)}" for c in update_columns)
    lines = [
        f"merge into {target} as DBT_INTERNAL_DEST",
        f"using {source} as DBT_INTERNAL_SOURCE",
        f"on {' and '.join(on) if on else 'FALSE'}",
    ]
    if keys and updates:
        lines.append(f"when matched then update set {updates}")
    lines.append(f"when not matched then insert ({', '.join(quoted)}) values ({', '.join(quoted)})")
    return "\n".join(lines)


def _insert_sql(target: str, source: str, columns: Sequence[str]) -> str:
    cols = ", ".join(quote(c) for c in columns)
    return f"insert into {target} ({cols})\nselect {cols} from {source}"


def _hook_statements(node: Mapping[str, Any], which: str) -> list[Statement]:
    """The node's non-empty rendered ``pre``/``post`` hooks as statements, in dbt's order: pre-hooks
    outside the transaction first, post-hooks outside the transaction last (BigQuery has no
    transaction here; the order is what is kept). A hook rendering to nothing is not run, as in dbt."""
    hooks = list((node.get(RENDERED_HOOKS_KEY) or {}).get(which) or [])
    outside = [h for h in hooks if not h.get("transaction", True)]
    inside = [h for h in hooks if h.get("transaction", True)]
    ordered = [*outside, *inside] if which == "pre" else [*inside, *outside]
    return [Statement(f"{which}_hook", str(h["sql"]).strip()) for h in ordered if str(h.get("sql") or "").strip()]


def _test_sql(node: Mapping[str, Any]) -> str:
    """dbt's ``get_test_sql``: failures plus the warn/error decisions, computed by BigQuery."""
    config = node.get("config") or {}
    fail_calc = config.get("fail_calc") or "count(*)"
    warn_if = config.get("warn_if") or "!= 0"
    error_if = config.get("error_if") or "!= 0"
    main_sql = node["compiled_code"]
    if config.get("limit") is not None:
        main_sql = f"{main_sql}\nlimit {int(config['limit'])}"
    return (
        f"select\n  {fail_calc} as failures,\n"
        f"  {fail_calc} {warn_if} as should_warn,\n"
        f"  {fail_calc} {error_if} as should_error\n"
        f"from (\n{main_sql}\n) dbt_internal_test"
    )


def _seed_schema(node: Mapping[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    """Column types for a seed's load job, inferred like ``dbt seed`` does (agate), with
    ``column_types`` overrides. An explicit schema (not BigQuery autodetect) keeps the types the
    same as dbt-bigquery's seeds."""
    from dbt_common.clients.agate_helper import from_csv  # lazy: dbt is only needed for seeds

    config = node.get("config") or {}
    overrides = {str(k).lower(): str(v) for k, v in (config.get("column_types") or {}).items()}
    table = from_csv(
        str(path), text_columns=list(config.get("column_types") or {}), delimiter=config.get("delimiter") or ","
    )
    schema = []
    for index, (name, column_type) in enumerate(zip(table.column_names, table.column_types, strict=True)):
        if name.lower() in overrides:
            bq_type = overrides[name.lower()]
        else:
            kind = type(column_type).__name__
            if kind == "Number":
                import agate

                precision = table.aggregate(agate.MaxPrecision(index))
                bq_type = "FLOAT64" if precision and precision > 0 else "INT64"
            else:
                bq_type = {
                    "Integer": "INT64",
                    "Boolean": "BOOL",
                    "Date": "DATE",
                    "DateTime": "DATETIME",
                    "ISODateTime": "DATETIME",
                    "TimeDelta": "TIME",
                }.get(kind, "STRING")
        schema.append((name, bq_type))
    return tuple(schema)


def _schema_field(name: str, type_text: str) -> Any:
    from google.cloud import bigquery

    match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*", type_text)
    if not match:  # STRUCT<...>, ARRAY<...>: let BigQuery judge the type name
        return bigquery.SchemaField(name, type_text.upper())
    base, precision, scale = match.groups()
    kwargs: dict[str, Any] = {}
    if precision is not None:
        if base.upper() in ("STRING", "BYTES"):
            kwargs["max_length"] = int(precision)
        else:
            kwargs["precision"] = int(precision)
            if scale is not None:
                kwargs["scale"] = int(scale)
    return bigquery.SchemaField(name, base.upper(), **kwargs)
