"""Run dbt nodes as asynchronous BigQuery jobs from one process and one polling loop.

Why this exists: ``dbt build`` on BigQuery holds one dbt thread per running model, and each thread
blocks on its job. BigQuery itself is asynchronous: a job is submitted, runs server-side, and can be
polled, cancelled and re-attached by its id. This engine takes the SQL that ``dbt compile`` produced
(``compiled_code`` in ``target/manifest.json``), generates the statements each materialization
needs itself, and keeps many jobs in flight, polled by one loop. No thread or worker per model.

What it does that a "submit the compiled SELECT as one job" approach does not:

- every statement a materialization needs, in order, one job each: an incremental model runs the
  ``__dbt_tmp`` table, then ``MERGE`` (unique_key) or ``INSERT`` (append), then drops the temp table;
- relation names come from the manifest (``relation_name`` / database.schema.alias), so alias,
  schema and database configs are honoured;
- deterministic job ids ``f(run_id, unique_id, attempt, statement index)``: re-running a run id
  re-attaches to the jobs already submitted (BigQuery answers 409 ``Conflict``) and never runs a
  statement again whose job succeeded; a failed or cancelled job is retried under the next attempt;
- ``cancel()`` stops submitting and cancels every in-flight job;
- a node whose parent failed (or whose parent's test failed, like ``dbt build``) is never submitted
  and is reported SKIPPED with ``skipped_because``; every selected node gets exactly one terminal
  :class:`~dagster_watcher.events.NodeResult`, nothing is silently dropped.

This module knows dbt manifests and BigQuery, not Dagster.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_watcher import contract
from dagster_watcher.errors import BigQueryCompileError, UnsupportedNodeError
from dagster_watcher.status import NodeResult, NodeStatus

if TYPE_CHECKING:  # imported lazily at run time: google-cloud-bigquery is an optional dependency
    from google.auth.credentials import Credentials
    from google.cloud.bigquery import Client

logger = logging.getLogger(__name__)

__all__ = [
    "COMPILED_IDS_KEY",
    "COMPILE_ERROR_KEY",
    "RENDERED_HOOKS_KEY",
    "BigQueryEngine",
    "BigQueryEngineConfig",
    "Statement",
    "UnsupportedNodeError",
    "compile_project",
    "console_link",
    "make_job_id",
]

#: BigQuery job ids: letters, digits, underscores and dashes, at most 1024 characters.
JOB_ID_MAX_LENGTH = 1024
_JOB_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")

# Labels this engine puts on its own jobs. ``dw-plan`` lets a re-attaching run know which statement
# sequence a previous attempt chose (an incremental model's first run creates the table, later runs
# merge: the same job id must keep meaning the same statement). ``dw-invocation`` tells our own jobs
# from a previous invocation's when a submit answers 409.
LABEL_PLAN = contract.LABEL_PLAN
LABEL_STEP = contract.LABEL_STEP
LABEL_INVOCATION = contract.LABEL_INVOCATION
LABEL_RUN = contract.LABEL_RUN

_TERMINAL_RESOURCE_TYPES = ("model", "seed", "test")

#: Node key (added by :func:`compile_project`) holding the node's pre-/post-hooks rendered by dbt at
#: compile time: ``{"pre": [{"sql": ..., "transaction": bool}], "post": [...]}``. The manifest itself
#: only stores hooks as unrendered Jinja; a node with hooks but without this key is not run.
RENDERED_HOOKS_KEY = "dagster_watcher_rendered_hooks"
#: Node key (added by :func:`compile_project`) holding dbt's error when the node failed to compile.
COMPILE_ERROR_KEY = "dagster_watcher_compile_error"

#: Statement kinds that do a node's actual work (the others are hooks and temp-table housekeeping).
_MAIN_KINDS = ("create_view", "create_table", "merge", "insert", "load_seed", "test")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BigQueryEngineConfig:
    """How to reach BigQuery and how hard to drive it.

    ``project`` is the project jobs run (and are billed) in; the relations each node writes come
    from the manifest and may live in other projects.
    """

    project: str
    location: str | None = None
    """Job location (``US``, ``EU``, ``europe-west1``...). Also used for datasets this engine creates."""
    dataset: str | None = None
    """Default dataset for unqualified names in the SQL (compiled dbt SQL is fully qualified anyway)."""
    api_endpoint: str | None = None
    """Override the BigQuery API URL, e.g. ``http://127.0.0.1:9050`` for a local server."""
    credentials: Credentials | None = None
    """Explicit credentials; ``None`` uses Application Default Credentials (or anonymous, below)."""
    anonymous: bool = False
    """Use ``AnonymousCredentials`` (local servers). Implied when ``api_endpoint`` is a plain-http URL
    and no ``credentials`` are given."""
    max_concurrent_jobs: int = 8
    """At most this many jobs in flight at once (one per node; statements of a node run in order)."""
    poll_interval: float = 1.0
    """Seconds between polls of the in-flight jobs. One ``jobs.get`` per in-flight job per poll."""
    job_timeout: float | None = None
    """Seconds one job may run (from submission) before it is cancelled and its node fails. Also
    sent to BigQuery as ``jobTimeoutMs`` so the server enforces it if this process dies."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every job (keys/values are lower-cased and sanitised to BigQuery's rules)."""
    job_id_prefix: str = "dw"
    create_datasets: bool = True
    """Create the datasets the selected models/seeds write to (``dbt build`` does the same)."""
    cancel_on_close: bool = True
    """If the result iterator is closed early (consumer stopped, step interrupted), cancel the
    in-flight jobs instead of leaving them running unobserved."""
    api_timeout: float = 60.0
    """Timeout in seconds of one HTTP call to the API (not of a job)."""
    max_poll_errors: int = 30
    """Consecutive failed polls of one job (network, 5xx) before its node is failed."""
    cancel_grace: float = 120.0
    """After :meth:`BigQueryEngine.cancel`, seconds to wait for in-flight jobs to report DONE before
    their nodes are given up as ERROR (BigQuery cancellation is best effort)."""

    def make_client(self) -> Client:
        """A ``google.cloud.bigquery.Client`` for this configuration."""
        from google.cloud import bigquery

        credentials = self.credentials
        if credentials is None and (self.anonymous or (self.api_endpoint or "").startswith("http://")):
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        client_options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
        return bigquery.Client(
            project=self.project,
            credentials=credentials,
            location=self.location,
            client_options=client_options,
        )


# --------------------------------------------------------------------------------------------------
# Statements each materialization needs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One job of a node: a query (``sql``) or, for seeds, a CSV load (``load_path``)."""

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
    """Backtick-quote one BigQuery identifier part."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def relation_of(node: Mapping[str, Any], suffix: str = "") -> str:
    """The quoted ``project.dataset.table`` a node writes (``suffix`` for the ``__dbt_tmp`` table).

    ``relation_name`` from the manifest is used as is when there is no suffix: dbt already applied
    alias, schema and database configs (and custom ``generate_*_name`` macros) to it.
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


def _label_value(value: str) -> str:
    return _LABEL_BAD.sub("_", str(value).lower())[:63]


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


# --------------------------------------------------------------------------------------------------
# Job ids and links
# --------------------------------------------------------------------------------------------------


def make_job_id(prefix: str, run_id: str, unique_id: str, attempt: int, index: int) -> str:
    """Deterministic job id for (run_id, unique_id, attempt, statement index).

    Readable parts are sanitised to ``[A-Za-z0-9_-]``; a short hash of the raw run id and unique id
    keeps two ids apart that sanitise alike (``a.b`` vs ``a_b``). Always <= 1024 characters.
    """
    digest = hashlib.sha1(f"{run_id}\0{unique_id}".encode()).hexdigest()[:10]
    run = _JOB_ID_BAD.sub("_", run_id)[:200]
    node = _JOB_ID_BAD.sub("_", unique_id)
    tail = f"_{digest}_a{attempt}_s{index}"
    head = f"{_JOB_ID_BAD.sub('_', prefix)}_{run}_" if prefix else f"{run}_"
    node = node[: JOB_ID_MAX_LENGTH - len(head) - len(tail)]
    return head + node + tail


def console_link(project: str, location: str | None, job_id: str) -> str:
    """The BigQuery console URL of a job (as dbt-bigquery logs it)."""
    return (
        f"https://console.cloud.google.com/bigquery?project={project}"
        f"&j=bq:{location or 'US'}:{job_id}&page=queryresults"
    )


# --------------------------------------------------------------------------------------------------
# The run graph
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Per-node run state
# --------------------------------------------------------------------------------------------------


@dataclass
class _NodeRun:
    spec: _Node
    attempt: int = 0
    plan: str | None = None
    statements: list[Statement] = field(default_factory=list)
    index: int = 0
    job: Any = None
    """The in-flight job (QueryJob / LoadJob) or None."""
    done_jobs: list[Any] = field(default_factory=list)
    submitted_at: float = 0.0
    poll_errors: int = 0
    reattached: bool = False


class BigQueryEngine:
    """Runs a set of dbt nodes as asynchronous BigQuery jobs; see the module docstring.

    One engine runs one :meth:`run` at a time. :meth:`cancel` may be called from any thread.
    """

    def __init__(self, config: BigQueryEngineConfig, client: Client | None = None) -> None:
        self.config = config
        self._client = client
        self._lock = threading.Lock()
        self._cancel_event = threading.Event()
        self._inflight: dict[str, Any] = {}
        """job_id -> job, for cancel() from another thread."""
        self._cancelled_jobs: set[str] = set()
        self._submitting: set[str] = set()
        """Job ids whose jobs.insert (or re-attach) has started but whose job is not tracked yet."""

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.config.make_client()
        return self._client

    # ------------------------------------------------------------------------------------- API

    def cancel(self) -> list[str]:
        """Stop submitting and cancel every in-flight job. Thread-safe; idempotent.

        Returns the ids of the jobs a cancel was requested for. The running :meth:`run` keeps
        polling them until BigQuery reports them DONE and yields their nodes as ERROR; nodes not
        submitted yet are yielded as LOST (``dbt_status`` ``cancelled``).
        """
        self._cancel_event.set()
        with self._lock:
            jobs = [
                (job_id, job.project, job.location)
                for job_id, job in self._inflight.items()
                if job_id not in self._cancelled_jobs
            ]
            self._cancelled_jobs.update(job_id for job_id, _, _ in jobs)
            # A submission in progress (or interrupted mid-request): the server may have created the
            # job already. Not marked cancelled: if its insert still returns, _track cancels again.
            jobs += [
                (job_id, self.config.project, self.config.location)
                for job_id in sorted(self._submitting)
                if job_id not in self._inflight
            ]
        cancelled = []
        for job_id, project, location in jobs:
            try:
                self.client.cancel_job(job_id, project=project, location=location, timeout=self.config.api_timeout)
                cancelled.append(job_id)
            except Exception as error:  # noqa: BLE001 - a job that just finished cannot be cancelled
                logger.warning("could not cancel BigQuery job %s: %s", job_id, error)
        return cancelled

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called (reset by the next :meth:`run`)."""
        return self._cancel_event.is_set()

    def inflight_job_ids(self) -> list[str]:
        """Ids of the jobs the current run is polling. Thread-safe."""
        with self._lock:
            return sorted(self._inflight)

    def plan(
        self, manifest: Mapping[str, Any], unique_ids: Iterable[str], *, build_semantics: bool = True
    ) -> dict[str, set[str]]:
        """The nodes :meth:`run` would run, each with its parents within the run set (for inspection)."""
        graph = _build_graph(manifest, unique_ids, build_semantics=build_semantics)
        return {uid: set(n.parents) for uid, n in graph.items()}

    def run(
        self,
        manifest: Mapping[str, Any],
        unique_ids: Iterable[str],
        run_id: str,
        *,
        full_refresh: bool = False,
        build_semantics: bool = True,
    ) -> Generator[NodeResult, None, None]:
        """Run the nodes; yield each node's terminal :class:`NodeResult` as soon as it is known.

        ``manifest``: a parsed ``manifest.json`` compiled for this BigQuery target.
        ``unique_ids``: nodes to run (models, seeds, tests). Ephemeral models are ignored (inlined).
        Parents outside the set are assumed built.
        ``run_id``: part of every job id. Running the same ``run_id`` again re-attaches: statements
        whose job succeeded are not run again, running jobs are polled, failed ones are retried.
        ``full_refresh``: incremental models are rebuilt (``config.full_refresh`` on a node wins).
        ``build_semantics``: like ``dbt build``, a failing test skips the models downstream of what
        it tests.
        """
        self._cancel_event.clear()
        with self._lock:
            self._inflight.clear()
            self._cancelled_jobs.clear()
            self._submitting.clear()
        runner = _Run(self, manifest, unique_ids, run_id, full_refresh=full_refresh, build_semantics=build_semantics)
        return runner.iterate()

    # --------------------------------------------------------------------------------- helpers

    def _track(self, job: Any) -> None:
        with self._lock:
            self._inflight[job.job_id] = job
            cancel_now = self._cancel_event.is_set() and job.job_id not in self._cancelled_jobs
            if cancel_now:
                self._cancelled_jobs.add(job.job_id)
        if cancel_now:  # cancel() ran while this job was being submitted
            try:
                self.client.cancel_job(
                    job.job_id, project=job.project, location=job.location, timeout=self.config.api_timeout
                )
            except Exception as error:  # noqa: BLE001
                logger.warning("could not cancel BigQuery job %s: %s", job.job_id, error)

    def _begin_submit(self, job_id: str) -> None:
        with self._lock:
            self._submitting.add(job_id)

    def _end_submit(self, job_id: str) -> None:
        with self._lock:
            self._submitting.discard(job_id)

    def _untrack(self, job: Any) -> None:
        with self._lock:
            self._inflight.pop(job.job_id, None)


class _Run:
    """State of one :meth:`BigQueryEngine.run`; the generator :meth:`iterate` is the polling loop."""

    def __init__(
        self,
        engine: BigQueryEngine,
        manifest: Mapping[str, Any],
        unique_ids: Iterable[str],
        run_id: str,
        *,
        full_refresh: bool,
        build_semantics: bool,
    ) -> None:
        self.engine = engine
        self.config = engine.config
        self.run_id = run_id
        self.full_refresh = full_refresh
        self.graph = _build_graph(manifest, list(unique_ids), build_semantics=build_semantics)
        self.invocation = uuid.uuid4().hex[:16]
        self.runs = {uid: _NodeRun(spec) for uid, spec in self.graph.items()}
        self.remaining_parents = {uid: len(n.parents) for uid, n in self.graph.items()}
        self.finished: set[str] = set()
        self.ready: list[tuple[int, str]] = []
        self.inflight: dict[str, _NodeRun] = {}
        self.results: list[NodeResult] = []
        self.skipped_because: dict[str, tuple[str, ...]] = {}
        self.relations: dict[tuple[str, str], dict[str, str]] = {}
        self.cancel_seen_at: float | None = None

    # ---------------------------------------------------------------------------- main loop

    def iterate(self) -> Generator[NodeResult, None, None]:
        from google.api_core import retry as retries

        # Polls retry transient errors briefly; a longer outage is counted per job (max_poll_errors).
        self.poll_retry = retries.Retry(deadline=min(30.0, self.config.api_timeout))
        try:
            if self.config.create_datasets:
                self._create_datasets()
            for uid, count in self.remaining_parents.items():
                if count == 0:
                    heapq.heappush(self.ready, (-self.graph[uid].priority, uid))
            next_poll = time.monotonic()
            while len(self.finished) < len(self.graph):
                progressed = False
                if self.engine.cancelled:
                    progressed |= self._drop_unsubmitted()
                    progressed |= self._give_up_after_grace()
                else:
                    progressed |= self._submit_ready()
                # At most one jobs.get per in-flight job per poll_interval, however many jobs
                # finish in between; jobs that jobs.insert already answered DONE need no poll.
                now = time.monotonic()
                reload = now >= next_poll
                if reload:
                    next_poll = now + self.config.poll_interval
                progressed |= self._poll(reload=reload)
                if not (progressed or self.inflight or self.ready or self.engine.cancelled):
                    self._fail_stuck()  # never expected; guarantees termination and a result each
                yield from self._drain()
                if len(self.finished) >= len(self.graph):
                    break
                if not progressed:
                    pause = max(0.0, next_poll - time.monotonic())
                    if self.engine.cancelled:
                        time.sleep(pause)
                    else:  # cancel() wakes the loop up at once
                        self.engine._cancel_event.wait(pause)
            yield from self._drain()
        finally:
            leftover = [r.job for r in self.inflight.values() if r.job is not None]
            with self.engine._lock:
                leftover += sorted(self.engine._submitting)
            if leftover and self.config.cancel_on_close:
                logger.warning("result iterator closed with %d jobs in flight: cancelling them", len(leftover))
                self.engine.cancel()

    def _drain(self) -> Iterator[NodeResult]:
        while self.results:
            yield self.results.pop(0)

    def _create_datasets(self) -> None:
        from google.cloud import bigquery

        datasets = sorted(
            {
                (r.spec.node["database"], r.spec.node["schema"])
                for r in self.runs.values()
                if r.spec.resource_type in ("model", "seed") and not r.spec.unsupported
            }
        )
        for project, dataset_id in datasets:
            dataset = bigquery.Dataset(f"{project}.{dataset_id}")
            if self.config.location:
                dataset.location = self.config.location
            self.engine.client.create_dataset(dataset, exists_ok=True, timeout=self.config.api_timeout)

    # --------------------------------------------------------------------------- submission

    def _submit_ready(self) -> bool:
        progressed = False
        while self.ready and len(self.inflight) < self.config.max_concurrent_jobs:
            if self.engine.cancelled:
                break
            _, uid = heapq.heappop(self.ready)
            run = self.runs[uid]
            progressed = True
            if run.spec.unsupported:
                self._fail(run, run.spec.unsupported)
                continue
            try:
                self._choose_plan(run)
                self._advance(run)
            except Exception as error:
                logger.exception("submitting %s failed", uid)
                self._fail(run, f"{type(error).__name__}: {_error_text(error)}")
        return progressed

    def _choose_plan(self, run: _NodeRun, plan: str | None = None) -> None:
        """Pick the statement sequence. For incremental models it depends on whether the target
        exists *now* (and on its columns), so it is decided when the node is about to run.

        Rendered pre-hooks come first and post-hooks after the node's work (before an incremental
        model's temp table is dropped, as in dbt-bigquery's materialization). They do not change
        from one attempt to the next, so statement indices (and job ids) stay stable."""
        self._plan_statements(run, plan)
        pre, post = _hook_statements(run.spec.node, "pre"), _hook_statements(run.spec.node, "post")
        if pre or post:
            body = list(run.statements)
            tail = [body.pop()] if body and body[-1].kind == "drop_tmp" else []
            run.statements = [*pre, *body, *post, *tail]

    def _plan_statements(self, run: _NodeRun, plan: str | None = None) -> None:
        spec, node = run.spec, run.spec.node
        config = node.get("config") or {}
        if spec.resource_type == "seed":
            run.plan, run.statements = "seed", [self._seed_statement(node)]
            return
        if spec.resource_type == "test":
            run.plan, run.statements = "test", [Statement("test", _test_sql(node))]
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
                run.plan, run.statements = "view-replace", [drop, create]
            else:
                run.plan, run.statements = "view", [create]
            return
        if spec.materialized == "table" or plan in ("create", "create-replace"):
            create = Statement("create_table", _table_ddl(node, target, sql))
            if plan is None and spec.materialized == "table":
                plan = "table-replace" if existing == "VIEW" else "table"
            if plan in ("table-replace", "create-replace"):
                drop = Statement("drop_view", f"drop view if exists {target}")
                run.plan, run.statements = plan, [drop, create]
            else:
                run.plan, run.statements = plan or "table", [create]
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
                self._plan_statements(run, plan=plan)
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
        run.plan, run.statements = (
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
            table = self.engine.client.get_table(_table_id(node), timeout=self.config.api_timeout)
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
                for item in self.engine.client.list_tables(f"{key[0]}.{key[1]}", timeout=self.config.api_timeout):
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

    def _job_labels(self, run: _NodeRun) -> dict[str, str]:
        labels = {_label_value(k): _label_value(v) for k, v in self.config.labels.items()}
        labels.update(
            {
                LABEL_RUN: _label_value(self.run_id),
                LABEL_PLAN: _label_value(run.plan or ""),
                LABEL_STEP: str(run.index),
                LABEL_INVOCATION: self.invocation,
                "dbt-node": _label_value(run.spec.unique_id.split(".")[-1]),
            }
        )
        return labels

    def _advance(self, run: _NodeRun) -> None:
        """Submit the node's current statement; on 409 re-attach and walk forward.

        A loop, not recursion: a re-attaching run may find several finished statements in a row.
        """
        from google.api_core.exceptions import Conflict

        guard = 0
        while True:
            guard += 1
            if guard > 1000:
                raise RuntimeError("too many re-attach steps")
            if run.index >= len(run.statements):
                self._complete(run)
                return
            job_id = make_job_id(self.config.job_id_prefix, self.run_id, run.spec.unique_id, run.attempt, run.index)
            # Until the job is tracked (or known to be finished), its id is "being submitted": an
            # interrupt that lands inside jobs.insert (the server may already run the job) or
            # inside the re-attach still cancels it. Only a clean outcome clears the mark.
            self.engine._begin_submit(job_id)
            try:
                job = self._submit(run, run.statements[run.index], job_id)
            except Conflict:
                job = self.engine.client.get_job(
                    job_id, project=self.config.project, location=self.config.location, timeout=self.config.api_timeout
                )
                action = self._adopt(run, job)
                self.engine._end_submit(job_id)
                if action == "failed":
                    self._fail_job(run, job)
                    return
                if action == "poll":
                    return
                continue  # "next" (index advanced) or "retry" (attempt bumped)
            except Exception:
                self.engine._end_submit(job_id)  # the insert failed: reported as the node's error
                raise
            self._start_polling(run, job)
            self.engine._end_submit(job_id)
            return

    def _adopt(self, run: _NodeRun, job: Any) -> str:
        """Decide what an existing job with our id means: ``poll`` (still running), ``next``
        (succeeded: go on with the next statement), ``retry`` (failed in an earlier invocation: new
        attempt) or ``failed`` (failed in this invocation)."""
        labels = dict(job.labels or {})
        if run.index == 0 and labels.get(LABEL_PLAN) not in (None, _label_value(run.plan or "")):
            # A previous attempt chose another statement sequence (an incremental model's first
            # run creates the table; now that it exists we would merge). Follow the earlier choice:
            # the job ids of this attempt belong to it.
            try:
                self._choose_plan(run, plan=_plan_from_label(run, labels[LABEL_PLAN]))
            except Exception:  # noqa: BLE001 - cannot rebuild that sequence: start a new attempt
                run.attempt += 1
                self._choose_plan(run)
                return "retry"
        if job.state != "DONE":
            run.reattached = True
            self._start_polling(run, job)
            return "poll"
        if job.error_result:
            if labels.get(LABEL_INVOCATION) == self.invocation:
                # Our own job (a client-side retry of the insert hit our first request): its failure
                # is this run's failure, not a previous attempt's.
                return "failed"
            # A previous invocation's failed (or cancelled) job: retry the node under the next
            # attempt, from its first statement, with a freshly chosen plan.
            logger.info(
                "%s: job %s failed earlier (%s); retrying as attempt %d",
                run.spec.unique_id,
                job.job_id,
                job.error_result.get("message"),
                run.attempt + 1,
            )
            run.attempt += 1
            run.index = 0
            run.done_jobs.clear()
            self._choose_plan(run)
            return "retry"
        run.reattached = True
        run.done_jobs.append(job)
        run.index += 1
        return "next"

    def _submit(self, run: _NodeRun, statement: Statement, job_id: str) -> Any:
        from google.cloud import bigquery

        client, config = self.engine.client, self.config
        labels = self._job_labels(run)
        timeout_ms = int(config.job_timeout * 1000) if config.job_timeout else None
        if statement.kind == "load_seed":
            load_config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.CSV,
                skip_leading_rows=1,
                field_delimiter=statement.delimiter,
                allow_quoted_newlines=True,
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                schema=[_schema_field(n, t) for n, t in statement.load_schema],
                labels=labels,
            )
            if timeout_ms:
                load_config.job_timeout_ms = timeout_ms
            data = Path(statement.load_path or "").read_bytes()
            # Seeds are small (dbt's own advice): the upload is one request, the load runs async.
            return client.load_table_from_file(
                io.BytesIO(data),
                str(statement.load_destination),
                job_id=job_id,
                job_config=load_config,
                size=len(data),
                project=config.project,
                location=config.location,
                timeout=config.api_timeout,
            )
        query_config = bigquery.QueryJobConfig(labels=labels, use_legacy_sql=False)
        if config.dataset:
            query_config.default_dataset = (
                config.dataset if "." in config.dataset else f"{config.project}.{config.dataset}"
            )
        if timeout_ms:
            query_config.job_timeout_ms = timeout_ms
        # job_retry=None: with our own job id, a retried query must not get a new id; a transient
        # failure of the insert call itself is retried by `retry` and ends in 409 -> re-attach.
        return client.query(
            str(statement.sql),
            job_config=query_config,
            job_id=job_id,
            job_retry=None,
            project=config.project,
            location=config.location,
            timeout=config.api_timeout,
        )

    def _start_polling(self, run: _NodeRun, job: Any) -> None:
        run.job = job
        run.submitted_at = time.monotonic()
        run.poll_errors = 0
        self.inflight[run.spec.unique_id] = run
        self.engine._track(job)

    # --------------------------------------------------------------------------------- polling

    def _poll(self, *, reload: bool = True) -> bool:
        progressed = False
        for uid, run in list(self.inflight.items()):
            job = run.job
            if job.state != "DONE" and reload:  # jobs.insert may already have answered DONE
                try:
                    job.reload(retry=self.poll_retry, timeout=self.config.api_timeout)
                    run.poll_errors = 0
                except Exception as error:  # noqa: BLE001 - transient: try again next poll
                    run.poll_errors += 1
                    logger.warning("polling %s failed (%d): %s", job.job_id, run.poll_errors, error)
                    if run.poll_errors >= self.config.max_poll_errors:
                        self._finish_job(run)
                        self._fail(run, f"lost contact with BigQuery job {job.job_id}: {error}")
                        progressed = True
                    continue
            if job.state == "DONE":
                progressed = True
                self._finish_job(run)
                if job.error_result:
                    self._fail_job(run, job)
                    continue
                run.done_jobs.append(job)
                run.index += 1
                if self.engine.cancelled and run.index < len(run.statements):
                    self._fail(
                        run,
                        f"run cancelled after statement {run.index} of "
                        f"{len(run.statements)} ({run.statements[run.index - 1].kind})",
                        dbt_status="cancelled",
                    )
                    continue
                try:
                    self._advance(run)
                except Exception as error:
                    logger.exception("submitting the next statement of %s failed", uid)
                    self._fail(run, f"{type(error).__name__}: {_error_text(error)}")
            elif self.config.job_timeout and time.monotonic() - run.submitted_at > self.config.job_timeout:
                progressed = True
                try:
                    self.engine.client.cancel_job(
                        job.job_id, project=job.project, location=job.location, timeout=self.config.api_timeout
                    )
                except Exception as error:  # noqa: BLE001
                    logger.warning("could not cancel timed-out job %s: %s", job.job_id, error)
                self._finish_job(run)
                run.done_jobs.append(job)
                self._fail(
                    run,
                    f"BigQuery job {job.job_id} ({run.statements[run.index].kind}) "
                    f"exceeded job_timeout={self.config.job_timeout:g}s and was cancelled",
                )
        return progressed

    def _finish_job(self, run: _NodeRun) -> None:
        self.inflight.pop(run.spec.unique_id, None)
        if run.job is not None:
            self.engine._untrack(run.job)

    def _fail_job(self, run: _NodeRun, job: Any) -> None:
        run.done_jobs.append(job)
        reason = (job.error_result or {}).get("reason")
        message = _job_error_message(job)
        if reason == "stopped":
            self._fail(run, f"BigQuery job {job.job_id} was cancelled: {message}", dbt_status="cancelled")
        else:
            self._fail(run, message)

    # ------------------------------------------------------------------------------- outcomes

    def _complete(self, run: _NodeRun) -> None:
        """All statements succeeded: build the SUCCESS (or test) result and release children."""
        spec = run.spec
        status, dbt_status, failures, message = NodeStatus.SUCCESS, "success", None, None
        if spec.resource_type == "test":
            status, dbt_status, failures, message = self._test_outcome(run)
        else:
            message = _success_message(_main_job(run))
        self._emit(run, status, dbt_status, message=message, failures=failures)
        if status.succeeded:
            for child in spec.children:
                if child in self.finished or child in self.skipped_because:
                    continue
                self.remaining_parents[child] -= 1
                if self.remaining_parents[child] == 0:
                    heapq.heappush(self.ready, (-self.graph[child].priority, child))
        else:
            self._skip_descendants(spec.unique_id)

    def _test_outcome(self, run: _NodeRun) -> tuple[NodeStatus, str, int | None, str | None]:
        job = run.done_jobs[-1]
        rows = list(job.result(timeout=self.config.api_timeout, max_results=10))
        if len(rows) != 1:
            return NodeStatus.ERROR, "error", None, f"test query returned {len(rows)} rows, expected 1"
        row = rows[0]
        failures = int(row["failures"] or 0)
        config = run.spec.node.get("config") or {}
        severity = str(config.get("severity") or "error").lower()
        noun = "result" if failures == 1 else "results"
        if severity == "error" and row["should_error"]:
            return (
                NodeStatus.FAIL,
                "fail",
                failures,
                f"Got {failures} {noun}, configured to fail if {config.get('error_if') or '!= 0'}",
            )
        if row["should_warn"]:
            return (
                NodeStatus.WARN,
                "warn",
                failures,
                f"Got {failures} {noun}, configured to warn if {config.get('warn_if') or '!= 0'}",
            )
        return NodeStatus.SUCCESS, "pass", failures, None

    def _fail(self, run: _NodeRun, message: str, *, dbt_status: str = "error") -> None:
        self._emit(run, NodeStatus.ERROR, dbt_status, message=message)
        self._skip_descendants(run.spec.unique_id)

    def _skip_descendants(self, failed: str) -> None:
        stack = list(self.graph[failed].children)
        while stack:
            uid = stack.pop()
            if uid in self.finished or uid in self.skipped_because:
                continue
            self.skipped_because[uid] = (failed,)
            run = self.runs[uid]
            self._emit(
                run,
                NodeStatus.SKIPPED,
                "skipped",
                skipped_because=(failed,),
                message=f"skipped: upstream {failed} did not succeed",
            )
            stack.extend(self.graph[uid].children)

    def _fail_stuck(self) -> None:
        for uid, run in self.runs.items():
            if uid not in self.finished:
                waiting = sorted(p for p in run.spec.parents if p not in self.finished)
                self._emit(
                    run,
                    NodeStatus.ERROR,
                    "error",
                    message=f"internal error: node never became ready (waiting for {waiting})",
                )

    def _give_up_after_grace(self) -> bool:
        """Cancellation is best effort: do not wait forever for jobs that ignore it."""
        now = time.monotonic()
        if self.cancel_seen_at is None:
            self.cancel_seen_at = now
            return False
        if now - self.cancel_seen_at < self.config.cancel_grace or not self.inflight:
            return False
        for run in list(self.inflight.values()):
            job = run.job
            self._finish_job(run)
            run.done_jobs.append(job)
            self._fail(
                run,
                f"run cancelled; BigQuery job {job.job_id} still reported {job.state} "
                f"after {self.config.cancel_grace:g}s",
                dbt_status="cancelled",
            )
        return True

    def _drop_unsubmitted(self) -> bool:
        """After cancel(): nodes never submitted end as LOST (they did not run; no upstream failed)."""
        progressed = False
        for uid, run in self.runs.items():
            if uid in self.finished or uid in self.inflight:
                continue
            self._emit(run, NodeStatus.LOST, "cancelled", message="not submitted: the run was cancelled")
            progressed = True
        self.ready.clear()
        return progressed

    def _emit(
        self,
        run: _NodeRun,
        status: NodeStatus,
        dbt_status: str,
        *,
        message: str | None = None,
        failures: int | None = None,
        skipped_because: tuple[str, ...] = (),
    ) -> None:
        if run.spec.unique_id in self.finished:
            return
        self.finished.add(run.spec.unique_id)
        node = run.spec.node
        jobs = run.done_jobs
        started = min((j.started for j in jobs if j.started), default=None)
        ended = max((j.ended for j in jobs if j.ended), default=None)
        self.results.append(
            NodeResult(
                unique_id=run.spec.unique_id,
                resource_type=run.spec.resource_type,
                status=status,
                dbt_status=dbt_status,
                message=message,
                execution_time=(ended - started).total_seconds() if started and ended else None,
                adapter_response=self._adapter_response(run) if jobs else {},
                failures=failures,
                compiled_code=node.get("compiled_code"),
                relation_name=node.get("relation_name") if run.spec.resource_type != "test" else None,
                started_at=started,
                completed_at=ended,
                thread="bigquery-async",
                invocation_id=self.run_id,
                skipped_because=skipped_because,
            )
        )

    def _adapter_response(self, run: _NodeRun) -> dict[str, Any]:
        jobs = run.done_jobs
        last = jobs[-1]
        main = _main_job(run) or last
        location = last.location or self.config.location or "US"
        bytes_processed = sum(int(getattr(j, "total_bytes_processed", None) or 0) for j in jobs)
        bytes_billed = sum(int(getattr(j, "total_bytes_billed", None) or 0) for j in jobs)
        slot_ms = sum(int(getattr(j, "slot_millis", None) or 0) for j in jobs)
        rows = getattr(main, "num_dml_affected_rows", None)
        if rows is None and getattr(main, "output_rows", None) is not None:
            rows = main.output_rows
        return {
            "_message": _success_message(main),
            "code": _statement_type(main),
            "statement_type": _statement_type(main),
            "rows_affected": rows,
            "bytes_processed": bytes_processed,
            "bytes_billed": bytes_billed,
            "slot_ms": slot_ms,
            "location": location,
            "project_id": last.project,
            "job_id": last.job_id,
            "job_ids": [j.job_id for j in jobs],
            "job_link": console_link(last.project, location, last.job_id),
            "plan": run.plan,
            "statements": [s.kind for s in run.statements[: len(jobs)]],
            "attempt": run.attempt,
            "reattached": run.reattached,
        }


def _plan_from_label(run: _NodeRun, label: str) -> str:
    """The plan an earlier attempt's job label names, if it is still valid for this node (a model
    whose materialization changed since then gets a new attempt instead)."""
    spec = run.spec
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


def _main_job(run: _NodeRun) -> Any:
    """The job that did the node's work: the MERGE/INSERT of an incremental, the CREATE of a table
    or view, the load of a seed (not a hook, not the temp table). Else the last job."""
    jobs = run.done_jobs
    if not jobs:
        return None
    main = [job for statement, job in zip(run.statements, jobs, strict=False) if statement.kind in _MAIN_KINDS]
    return main[-1] if main else jobs[-1]


def _statement_type(job: Any) -> str | None:
    if getattr(job, "job_type", None) == "load":
        return "LOAD"
    return getattr(job, "statement_type", None)


def _success_message(job: Any) -> str | None:
    if job is None:
        return None
    kind = _statement_type(job) or "OK"
    rows = getattr(job, "num_dml_affected_rows", None)
    if rows is None:
        rows = getattr(job, "output_rows", None)
    processed = int(getattr(job, "total_bytes_processed", None) or 0)
    return f"{kind} ({rows if rows is not None else '-'} rows, {processed} bytes processed)"


def _job_error_message(job: Any) -> str:
    """The job's own error text: errorResult first, then any further distinct errors."""
    result = job.error_result or {}
    parts = [result.get("message") or result.get("reason") or "BigQuery job failed"]
    for error in job.errors or []:
        text = error.get("message")
        if text and text not in parts:
            parts.append(text)
    reason = result.get("reason")
    return "; ".join(parts) + (f" (reason: {reason}, job {job.job_id})" if reason else f" (job {job.job_id})")


def _error_text(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    return str(message).strip()


# --------------------------------------------------------------------------------------------------
# Getting compiled SQL
# --------------------------------------------------------------------------------------------------


#: Top-level manifest key (added by :func:`compile_project`): unique_ids this compile selected.
COMPILED_IDS_KEY = "dagster_watcher_compiled"

# Runs in the dbt subprocess (``python -c``): ``dbt compile`` through dbtRunner, plus two things the
# CLI does not do. (1) Every node's pre-/post-hooks are rendered with the same context dbt gives the
# materialization at run time (where ``run_hooks()`` renders them), and written to a side file: the
# manifest only stores them as Jinja. (2) Optionally, compile errors do not stop the compile (dbt
# compile stops at the first error; dbt build does not): each failing node is reported in
# run_results.json and the others are still compiled.
_COMPILE_SCRIPT = r"""
import json, sys
args, hooks_path, fail_fast = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
from dbt.cli.main import dbtRunner
from dbt.clients import jinja
from dbt.compilation import Compiler
from dbt.task.compile import CompileTask

rendered = {}
original = Compiler.compile_node


def compile_node(self, node, manifest, *args, **kwargs):
    node = original(self, node, manifest, *args, **kwargs)
    config = getattr(node, "config", None)
    hooks = {"pre": list(getattr(config, "pre_hook", None) or []),
             "post": list(getattr(config, "post_hook", None) or [])}
    if hooks["pre"] or hooks["post"]:
        extra = args[0] if args else kwargs.get("extra_context")
        context = self._create_node_context(node, manifest, dict(extra or {}))
        rendered[node.unique_id] = {
            which: [{"sql": jinja.get_rendered(h.sql, context, node), "transaction": bool(h.transaction),
                     "index": h.index} for h in items]
            for which, items in hooks.items()
        }
    return node


Compiler.compile_node = compile_node
if not fail_fast:
    CompileTask.raise_on_first_error = lambda self: False
result = dbtRunner().invoke(args)
with open(hooks_path, "w") as handle:
    json.dump(rendered, handle)
if result.exception is not None:
    print(f"dbt compile raised {type(result.exception).__name__}: {result.exception}", file=sys.stderr)
    sys.exit(2)
sys.exit(0 if result.success else 1)
"""


def compile_project(
    project_dir: str | os.PathLike[str],
    *,
    profiles_dir: str | os.PathLike[str] | None = None,
    target: str | None = None,
    target_path: str | os.PathLike[str] | None = None,
    vars: Mapping[str, Any] | None = None,
    select: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    dbt_executable: str | None = None,
    extra_args: Sequence[str] = (),
    fail_fast: bool = True,
    parse_cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run ``dbt compile`` for a BigQuery target (in a subprocess) and return the manifest.

    ``dbt compile`` needs the warehouse: ``is_incremental()`` and the relation cache ask BigQuery
    what exists. Compile right before a run so incremental models see the current state.

    Without ``dbt_executable`` dbt runs from this interpreter (``python -c``, dbtRunner) and two
    things are added to the returned manifest: each node's pre-/post-hooks rendered by dbt
    (:data:`RENDERED_HOOKS_KEY`; the engine runs the non-empty ones) and, with ``fail_fast=False``,
    each node that failed to compile carries dbt's error under :data:`COMPILE_ERROR_KEY` (the engine
    fails it and skips its descendants, like ``dbt build``) instead of the whole compile raising.
    With ``dbt_executable`` (dbt in another environment) the plain ``dbt compile`` CLI runs: hooks
    stay unrendered (nodes with hooks are then reported unsupported) and compile errors raise.

    ``extra_args``: more ``dbt compile`` arguments (``--select``/``--exclude``/``--selector``,
    ``--indirect-selection``, ``--full-refresh``). ``parse_cache``: a file where dbt's
    ``partial_parse.msgpack`` is kept between compiles into different ``target_path`` folders, so
    later compiles parse only what changed (dbt itself discards it when project, profile or vars differ).

    The manifest also lists the unique_ids the compile selected under :data:`COMPILED_IDS_KEY`.
    """
    project_dir = Path(project_dir).resolve()
    args = ["compile", "--project-dir", str(project_dir), "--quiet"]
    if profiles_dir is not None:
        args += ["--profiles-dir", str(Path(profiles_dir).resolve())]
    if target:
        args += ["--target", target]
    if target_path is not None:
        target_path = Path(target_path).resolve()
        target_path.mkdir(parents=True, exist_ok=True)
        # Logs beside the artifacts, not in the project tree.
        args += ["--target-path", str(target_path), "--log-path", str(target_path / "logs")]
    if vars:
        args += ["--vars", json.dumps(dict(vars))]
    if select:
        args += ["--select", *select]
    args += list(extra_args)
    manifest_dir = Path(target_path) if target_path is not None else project_dir / "target"
    if parse_cache is not None and target_path is not None:
        cached = Path(parse_cache)
        if cached.is_file() and not (manifest_dir / "partial_parse.msgpack").exists():
            shutil.copyfile(cached, manifest_dir / "partial_parse.msgpack")

    with contextlib.suppress(OSError):  # never read a previous compile's results
        (manifest_dir / "run_results.json").unlink()
    hooks_file = None
    if dbt_executable:
        cmd = [dbt_executable, *args]
    else:
        handle, hooks_file = tempfile.mkstemp(prefix="dw-hooks-", suffix=".json")
        os.close(handle)
        cmd = [sys.executable, "-c", _COMPILE_SCRIPT, json.dumps(args), hooks_file, "1" if fail_fast else "0"]
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=str(project_dir)
        )
        rendered: dict[str, Any] = {}
        if hooks_file is not None:
            with contextlib.suppress(OSError, ValueError), open(hooks_file) as hooks_handle:
                rendered = json.load(hooks_handle)
    finally:
        if hooks_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(hooks_file)
    results = _read_run_results(manifest_dir / "run_results.json")
    node_errors = {uid: r for uid, r in results.items() if r.get("status") in ("error", "skipped")}
    # Exit code 1 is "some node failed"; 2 is dbt itself failing (profile, project, connection).
    tolerated = proc.returncode == 1 and not fail_fast and not dbt_executable and bool(node_errors)
    if proc.returncode != 0 and not tolerated:
        raise BigQueryCompileError(
            f"dbt compile failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    with open(manifest_dir / "manifest.json") as manifest_handle:
        manifest: dict[str, Any] = json.load(manifest_handle)
    nodes = manifest.get("nodes") or {}
    for uid, hooks in rendered.items():
        if uid in nodes:
            nodes[uid][RENDERED_HOOKS_KEY] = hooks
    for uid, result in node_errors.items():
        if uid in nodes:
            if result.get("status") == "error":
                nodes[uid][COMPILE_ERROR_KEY] = f"dbt compile failed: {result.get('message') or 'error'}"
            else:
                nodes[uid][COMPILE_ERROR_KEY] = "not compiled: an upstream node failed to compile"
    manifest[COMPILED_IDS_KEY] = sorted(results)
    if parse_cache is not None and (manifest_dir / "partial_parse.msgpack").is_file():
        cached = Path(parse_cache)
        cached.parent.mkdir(parents=True, exist_ok=True)
        scratch = cached.with_name(f".{cached.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(manifest_dir / "partial_parse.msgpack", scratch)
        os.replace(scratch, cached)  # atomic: a concurrent compile reads the old or the new file
    return manifest


def _read_run_results(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {r["unique_id"]: r for r in data.get("results") or [] if r.get("unique_id")}
