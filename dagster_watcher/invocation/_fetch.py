"""Runtime metadata fetched in the dbt process: a node's row count and columns, and its parents'
columns, read through dbt's own adapter right after dbt reported the node finished.

This is the dbt side of dagster-dbt's ``fetch_row_counts()`` / ``fetch_column_metadata()``. It runs
where dbt runs (the forked runner-mode child, the runner thread's process, or the subprocess-mode
entry point ``_dbt_entry``), on one thread of its own: dbt's worker threads only put a node on a
queue. It opens no connection of its own to the warehouse, only a named one of dbt's adapter (so a
single-writer DuckDB file is never opened twice). What it reads goes back to the producer as plain
JSON "facts" beside dbt's node events (:data:`RUNTIME_METADATA_EVENT`); the producer turns them into
dagster-dbt's metadata (``dagster_watcher.runtime_metadata``). Nothing here imports Dagster.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._compat import dbt_adapter
from .._text import describe_exception
from ..dbt_normalizer import status_of

#: The name of the raw event carrying one node's fetched facts (never a dbt event name).
RUNTIME_METADATA_EVENT = "DagsterWatcherRuntimeMetadata"
#: Subprocess mode: the environment variable naming the fetch plan's JSON file for ``_dbt_entry``,
#: and the start of the dbt ``Note`` message that carries one node's facts there (JSON follows).
PLAN_ENV = "DAGSTER_WATCHER_FETCH_PLAN"
FACTS_PREFIX = "dagster_watcher.runtime_metadata "

#: (database, schema, identifier) of a relation, as dbt's ``Relation.create`` takes them.
RelationKey = tuple[str | None, str | None, str]


@dataclass(frozen=True)
class NodeFetch:
    """What to read for one node once dbt built it."""

    relation: RelationKey
    row_count: bool = False
    columns: bool = False
    parents: tuple[RelationKey, ...] = ()
    """The relations of its parents whose columns column lineage needs (empty: no lineage)."""


@dataclass(frozen=True)
class FetchPlan:
    """Which nodes get which metadata, decided by the producer from the definition's manifest and
    sent to the dbt process (as JSON to the subprocess-mode entry point)."""

    adapter_type: str
    nodes: Mapping[str, NodeFetch] = field(default_factory=dict)

    def wants(self, unique_id: str, dbt_status: str) -> bool:
        """Whether metadata is fetched (and so will arrive) for a node dbt reported with this status:
        the producer and the dbt process decide with this one rule."""
        return unique_id in self.nodes and status_of(dbt_status).materializes

    def to_json(self) -> str:
        return json.dumps(
            {
                "adapter_type": self.adapter_type,
                "nodes": {
                    uid: {"relation": n.relation, "row_count": n.row_count, "columns": n.columns, "parents": n.parents}
                    for uid, n in self.nodes.items()
                },
            }
        )

    @classmethod
    def from_json(cls, text: str) -> FetchPlan:
        data = json.loads(text)
        return cls(
            adapter_type=data["adapter_type"],
            nodes={
                uid: NodeFetch(
                    relation=_relation(n["relation"]),
                    row_count=bool(n.get("row_count")),
                    columns=bool(n.get("columns")),
                    parents=tuple(_relation(p) for p in n.get("parents") or ()),
                )
                for uid, n in (data.get("nodes") or {}).items()
            },
        )


def _relation(value: Any) -> RelationKey:
    database, schema, identifier = value
    return (database, schema, str(identifier))


class MetadataFetcher:
    """Reads each planned node's metadata on its own thread, in the order dbt finished them, and hands
    every node's facts to ``emit`` (exactly once per node it accepted, with ``errors`` when a read
    failed, so the producer never waits for facts that will not come).

    Example::

        fetcher = MetadataFetcher(plan, emit=send_to_producer)
        dbtRunner(callbacks=[fetcher.observe]).invoke(args)   # observe: cheap, on dbt's threads
        fetcher.finish()                                       # reads what is still queued
    """

    def __init__(self, plan: FetchPlan, emit: Callable[[dict[str, Any]], None]) -> None:
        self.plan = plan
        self._emit = emit
        self._queue: queue.SimpleQueue[tuple[str, RelationKey] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = False
        # Columns per relation for this invocation: a parent is read once, and a node built earlier
        # in the build is its children's parent (dagster-dbt caches the same way).
        self._columns: dict[RelationKey, tuple[str, list[tuple[str, str]]]] = {}

    def observe(self, msg: Any) -> None:
        """dbt's event callback (on dbt's worker threads): queue a planned node that was built."""
        if msg.info.name != "NodeFinished":
            return
        try:
            node_info = msg.data.node_info
            unique_id = node_info.unique_id
            if not self.plan.wants(unique_id, msg.data.run_result.status):
                return
            relation = self.plan.nodes[unique_id].relation
            built = node_info.node_relation
            if built.alias:  # the relation dbt just wrote (it may have re-parsed for another target)
                relation = (built.database or None, built.schema or None, built.alias)
        except Exception:  # noqa: BLE001 - never break dbt's callback; the producer stops waiting at exit
            return
        self._queue.put((unique_id, relation))
        self._ensure_thread()

    def finish(self) -> None:
        """dbt has returned: read what is still queued, then stop the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """dbt was stopped: report the queued nodes without reading them."""
        self._stopped = True
        self.finish()

    # -- the fetch thread ---------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._work, name="dagster-watcher-metadata", daemon=True)
                thread.start()
                self._thread = thread

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            unique_id, relation = item
            facts: dict[str, Any] = {"unique_id": unique_id}
            if self._stopped:
                facts["errors"] = ["dbt was stopped before the metadata was read"]
            else:
                self._fetch(unique_id, relation, facts)
            try:
                self._emit(facts)
            except Exception:  # noqa: BLE001 - the pipe to the producer is gone; nothing to tell
                return

    def _fetch(self, unique_id: str, relation_key: RelationKey, facts: dict[str, Any]) -> None:
        wanted = self.plan.nodes[unique_id]
        errors: list[str] = []
        adapter = dbt_adapter(self.plan.adapter_type)
        if adapter is None:
            facts["errors"] = [f"no dbt adapter of type {self.plan.adapter_type!r} is registered in the dbt process"]
            return
        try:
            # One of dbt's own named connections (a cursor on dbt-duckdb's one database handle).
            with adapter.connection_named(f"dagster_watcher_metadata_{unique_id}"):
                relation = _create_relation(adapter, relation_key)
                if wanted.row_count:
                    try:
                        _, table = adapter.execute(f"select count(*) as row_count from {relation}", fetch=True)
                        facts["row_count"] = int(table[0][0])  # by position: some adapters name no column
                    except Exception as error:  # noqa: BLE001 - reported, the rest is still read
                        errors.append(f"row count: {describe_exception(error)}")
                if wanted.columns:
                    try:
                        facts["columns"] = self._columns_of(adapter, relation_key, relation)[1]
                    except Exception as error:  # noqa: BLE001
                        errors.append(f"columns: {describe_exception(error)}")
                    else:
                        try:
                            parents: dict[str, list[tuple[str, str]]] = {}
                            for parent_key in wanted.parents:
                                name, columns = self._columns_of(adapter, parent_key, None)
                                parents[name] = columns
                            facts["parents"] = parents
                        except Exception as error:  # noqa: BLE001 - no lineage, as in dagster-dbt
                            errors.append(f"parents' columns: {describe_exception(error)}")
        except Exception as error:  # noqa: BLE001 - a connection that could not be opened
            errors.append(describe_exception(error))
        if errors:
            facts["errors"] = errors

    def _columns_of(self, adapter: Any, key: RelationKey, relation: Any) -> tuple[str, list[tuple[str, str]]]:
        cached = self._columns.get(key)
        if cached is not None:
            return cached
        relation = relation if relation is not None else _create_relation(adapter, key)
        columns = [(str(c.name), str(c.data_type)) for c in adapter.get_columns_in_relation(relation)]
        return self._columns.setdefault(key, (str(relation), columns))


def _create_relation(adapter: Any, key: RelationKey) -> Any:
    database, schema, identifier = key
    return adapter.Relation.create(database=database, schema=schema, identifier=identifier)
