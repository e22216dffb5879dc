"""dagster-dbt's opt-in runtime metadata on the watcher's materializations: ``dagster/row_count``
(with ``dagster/storage_kind``), ``dagster/column_schema`` and ``dagster/column_lineage``, as
``dbt.cli(["build"]).stream().fetch_row_counts().fetch_column_metadata()`` writes them.

The producer decides what to read (:func:`fetch_plan`); the dbt process reads it through dbt's own
adapter once a node is built (``invocation._fetch``) and sends the facts back beside dbt's events;
:class:`FetchedMetadata` holds each built node's result until its facts arrive and turns them into
dagster-dbt's metadata with dagster-dbt's own helpers (its column schema builder and its
sqlglot-based column lineage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dagster import get_dagster_logger
from dagster_dbt.asset_utils import default_metadata_from_dbt_resource_props
from dagster_dbt.dagster_dbt_translator import DagsterDbtTranslator
from dagster_dbt.dbt_project import DbtProject

from . import contract
from ._compat import column_lineage_metadata
from .invocation._fetch import FetchPlan, NodeFetch, RelationKey
from .status import NodeResult

logger = get_dagster_logger()

_REFABLE = ("model", "seed", "snapshot")


def fetch_plan(
    manifest: Mapping[str, Any], unique_ids: Iterable[str], *, row_counts: bool, columns: bool
) -> FetchPlan | None:
    """What to read for the given nodes, as dagster-dbt reads it: a row count for every built table
    (not for views: counting runs the view's query), the columns of every built relation, and for
    lineage the columns of each node's parents. None when nothing is to be read.

    Example::

        plan = fetch_plan(manifest, ["model.shop.customers"], row_counts=True, columns=True)
    """
    if not (row_counts or columns):
        return None
    nodes = manifest.get("nodes") or {}
    parent_map = manifest.get("parent_map") or {}
    wanted: dict[str, NodeFetch] = {}
    for unique_id in sorted(unique_ids):
        node = nodes.get(unique_id) or {}
        materialized = (node.get("config") or {}).get("materialized")
        if node.get("resource_type") not in _REFABLE or materialized == "ephemeral":
            continue
        parents: tuple[RelationKey, ...] = ()
        if columns and node.get("resource_type") != "seed":  # a seed has no SQL to trace
            parents = tuple(
                key for key in (_relation_key(manifest, p) for p in parent_map.get(unique_id) or ()) if key is not None
            )
        relation = _relation_key(manifest, unique_id)
        if relation is None:
            continue
        wanted[unique_id] = NodeFetch(
            relation=relation, row_count=row_counts and materialized != "view", columns=columns, parents=parents
        )
    if not wanted:
        return None
    adapter_type = str((manifest.get("metadata") or {}).get("adapter_type") or "")
    return FetchPlan(adapter_type=adapter_type, nodes=wanted)


def _relation_key(manifest: Mapping[str, Any], unique_id: str) -> RelationKey | None:
    """(database, schema, identifier) as dagster-dbt queries it: a source's identifier, a node's alias."""
    is_source = unique_id.startswith("source.")
    props = ((manifest.get("sources") if is_source else manifest.get("nodes")) or {}).get(unique_id) or {}
    identifier = props.get("identifier") if is_source else props.get("alias")
    if not identifier:
        return None
    return (props.get("database"), props.get("schema"), str(identifier))


class FetchedMetadata:
    """Joins each built node's result with the facts the dbt process read for it: a result the plan
    fetches for waits (off dbt's threads, in the producer's writer) until its facts arrive, then goes
    on with dagster-dbt's metadata in :attr:`NodeResult.runtime_metadata`.

    Facts may arrive before or after the node's result; whatever is still waiting when dbt has
    exited goes on without metadata (:meth:`release`).
    """

    def __init__(
        self,
        plan: FetchPlan,
        manifest: Mapping[str, Any],
        *,
        translator: DagsterDbtTranslator,
        project: DbtProject | None,
        target_path: Path | None,
    ) -> None:
        self.plan = plan
        self._manifest = manifest
        self._translator = translator
        self._project = project
        self._target_path = target_path
        self._waiting: dict[str, NodeResult] = {}
        self._early: dict[str, Mapping[str, Any]] = {}

    def accept(self, result: NodeResult) -> list[NodeResult]:
        """A node's result from dbt: passed on now, or held until its facts arrive."""
        if not self.plan.wants(result.unique_id, result.dbt_status):
            return [result]
        facts = self._early.pop(result.unique_id, None)
        if facts is not None:
            return [self._with_metadata(result, facts)]
        self._waiting[result.unique_id] = result
        return []

    def arrived(self, facts: Mapping[str, Any]) -> list[NodeResult]:
        """A node's facts from the dbt process: the held result they complete, if it is here yet."""
        unique_id = str(facts.get("unique_id") or "")
        result = self._waiting.pop(unique_id, None)
        if result is None:
            self._early[unique_id] = facts
            return []
        return [self._with_metadata(result, facts)]

    def release(self) -> list[NodeResult]:
        """dbt has exited or is stopped: every result still waiting, without metadata."""
        out = list(self._waiting.values())
        self._waiting.clear()
        return out

    def _with_metadata(self, result: NodeResult, facts: Mapping[str, Any]) -> NodeResult:
        for error in facts.get("errors") or ():
            logger.warning(
                f"dagster-watcher: runtime metadata of {result.unique_id} is incomplete: {error}. "
                "The metadata that could not be read is not included in the event."
            )
        node = (self._manifest.get("nodes") or {}).get(result.unique_id) or {}
        metadata = metadata_from_facts(
            facts,
            node,
            self._manifest,
            translator=self._translator,
            project=self._project,
            target_path=self._target_path,
            adapter_type=self.plan.adapter_type,
        )
        return dataclasses.replace(result, runtime_metadata=metadata) if metadata else result


def metadata_from_facts(
    facts: Mapping[str, Any],
    node: Mapping[str, Any],
    manifest: Mapping[str, Any],
    *,
    translator: DagsterDbtTranslator,
    project: DbtProject | None,
    target_path: Path | None,
    adapter_type: str,
) -> dict[str, Any]:
    """dagster-dbt's metadata for what the dbt process read about one node: ``dagster/row_count``
    and ``dagster/storage_kind`` for a row count; ``dagster/column_schema`` for its columns; and
    ``dagster/column_lineage`` when its parents' columns were read and sqlglot can trace its SQL
    (otherwise left out with a warning, as dagster-dbt does).

    Example::

        metadata_from_facts({"unique_id": uid, "row_count": 30}, node, manifest, translator=t,
                            project=None, target_path=None, adapter_type="duckdb")
        # {"dagster/row_count": 30, "dagster/storage_kind": "duckdb"}
    """
    metadata: dict[str, Any] = {}
    row_count = facts.get("row_count")
    if isinstance(row_count, int) and not isinstance(row_count, bool):
        metadata[contract.ROW_COUNT_KEY] = row_count
        if adapter_type:
            metadata[contract.STORAGE_KIND_KEY] = adapter_type
    columns = facts.get("columns")
    if columns is None:
        return metadata
    column_types = {str(name): {"data_type": str(data_type)} for name, data_type in columns}
    metadata.update(default_metadata_from_dbt_resource_props({"columns": column_types}))
    parents = facts.get("parents")
    if parents is None or not node:
        return metadata
    parent_types = {
        str(relation): {str(name): {"data_type": str(data_type)} for name, data_type in parent_columns}
        for relation, parent_columns in parents.items()
    }
    try:
        metadata.update(
            column_lineage_metadata(column_types, parent_types, node, manifest, translator, target_path, project)
        )
    except Exception as error:  # noqa: BLE001 - no lineage for this node, the event still goes
        logger.warning(
            f"dagster-watcher: column lineage of {node.get('original_file_path', node.get('unique_id'))} could not be "
            f"built ({type(error).__name__}: {error}); the event has no column lineage."
        )
    return metadata
