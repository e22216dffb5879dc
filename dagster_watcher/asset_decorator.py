"""``@dbt_watcher_assets``: dagster-dbt's ``@dbt_assets`` definition (same asset keys, groups, checks,
dependencies, subsetting) for a producer that streams one ``dbt build`` through ``DbtWatcherResource``."""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dagster import AssetsDefinition, BackfillPolicy, PartitionsDefinition, RetryPolicy
from dagster_dbt import DagsterDbtTranslator, DbtProject, dbt_assets

from . import contract
from ._compat import current_manifest
from ._gc import paused_gc
from .errors import WatcherConfigError
from .retry import WatcherRetryPolicy

#: dagster-dbt's op tags (``dagster_dbt/select``, ``/exclude``, ``/selector``) that it derives from its
#: arguments and reads back when it builds selections and schedules.
_DAGSTER_DBT_TAG_PREFIX = "dagster_dbt/"


def dbt_watcher_assets(
    *,
    manifest: Mapping[str, Any] | str | Path,
    project: DbtProject | None = None,
    select: str = "fqn:*",
    exclude: str | None = None,
    selector: str | None = None,
    name: str | None = None,
    dagster_dbt_translator: DagsterDbtTranslator | None = None,
    partitions_def: PartitionsDefinition | None = None,
    backfill_policy: BackfillPolicy | None = None,
    op_tags: Mapping[str, Any] | None = None,
    retry_policy: RetryPolicy | WatcherRetryPolicy | None = None,
    pool: str | None = None,
    io_manager_key: str | None = None,
    required_resource_keys: set[str] | None = None,
) -> Callable[[Callable[..., Any]], AssetsDefinition]:
    """Define one asset per dbt model/seed/snapshot and one asset check per dbt test, computed by a
    single ``dbt build`` whose node outcomes are written to Dagster as they finish.

    Takes the same arguments as dagster-dbt's ``@dbt_assets`` and produces the same asset keys, so
    switching is one import. The decorated function is the step's body; it runs the build with
    :meth:`DbtWatcherResource.build` (or ``BigQueryWatcherResource.build`` for BigQuery jobs).

    Args:
        manifest: the dbt manifest, as a path to ``manifest.json`` (read as it is on disk when the
            definitions load) or the parsed mapping.
        project: the ``DbtProject`` the manifest belongs to, as in ``@dbt_assets``.
        select: dbt selection of the nodes these assets cover (default: every node).
        exclude: dbt exclusion applied to ``select``.
        selector: a named selector of the project, instead of ``select``/``exclude``.
        name: the op's name (default: the decorated function's name).
        dagster_dbt_translator: maps dbt nodes to asset keys, groups, metadata, as in dagster-dbt.
        partitions_def: partitions of the assets, as in ``@dbt_assets``.
        backfill_policy: as in ``@dbt_assets``.
        op_tags: extra tags on the op; the producer's own tag is always added.
        retry_policy: a Dagster ``RetryPolicy``, or a :class:`WatcherRetryPolicy`: a retried step then
            re-runs only the nodes that did not succeed, in one dbt invocation, and errors the policy
            calls non-retryable fail the step for good.
        pool: the Dagster concurrency pool of the step.
        io_manager_key: the IO manager of the assets' outputs, as in ``@dbt_assets``.
        required_resource_keys: more resources the body uses, as in ``@dbt_assets``.

    Returns:
        A decorator turning the body into an ``AssetsDefinition``.

    Raises:
        dagster.DagsterInvalidDefinitionError: from dagster-dbt, for arguments it rejects (e.g. both
            ``selector`` and ``select``, or a body without a ``context`` parameter).
        OSError: the manifest path cannot be read.
        ValueError: the file at the manifest path is not JSON.
        WatcherConfigError: an ``op_tags`` key uses the ``dagster_watcher/`` prefix reserved for the
            watcher's own tags, or dagster-dbt's reserved ``dagster_dbt/`` prefix (its selection tags:
            use ``select``/``exclude``/``selector``).

    Example::

        @dbt_watcher_assets(manifest=my_project.manifest_path, project=my_project)
        def my_dbt(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
            yield from dbt_watcher.build(context)
    """
    reserved = sorted(t for t in op_tags or {} if t.startswith(contract.RESERVED_TAG_PREFIX))
    if reserved:
        raise WatcherConfigError(
            f"op_tags {reserved} use the {contract.RESERVED_TAG_PREFIX!r} prefix, which dagster-watcher reserves for "
            "its own producer/retry tags (they would be overwritten or break consumers): rename them."
        )
    dbt_reserved = sorted(t for t in op_tags or {} if t.startswith(_DAGSTER_DBT_TAG_PREFIX))
    if dbt_reserved:
        raise WatcherConfigError(
            f"op_tags {dbt_reserved} use the {_DAGSTER_DBT_TAG_PREFIX!r} prefix, where dagster-dbt records the "
            "definition's dbt selection (they would overwrite it): use the select=, exclude= or selector= "
            "arguments, or rename the tags."
        )
    tags: dict[str, Any] = {contract.PRODUCER_TAG: "true", **(op_tags or {})}
    if isinstance(retry_policy, WatcherRetryPolicy):
        # In-step retries: Dagster re-runs the op, and the producer then builds only what has not
        # succeeded in this run. Errors the policy calls non-retryable fail the step for good.
        tags[contract.NON_RETRYABLE_TAG] = contract.encode_non_retryable(retry_policy.non_retryable)
        retry_policy = retry_policy.to_dagster()

    def decorator(fn: Callable[..., Any]) -> AssetsDefinition:
        _resolve_string_annotations(fn)
        with paused_gc():
            return _build(fn)

    def _build(fn: Callable[..., Any]) -> AssetsDefinition:
        return dbt_assets(
            # The manifest as it is on disk now (dagster-dbt would serve a path's first parse forever).
            manifest=current_manifest(manifest) if isinstance(manifest, str | Path) else manifest,
            project=project,
            select=select,
            exclude=exclude,
            selector=selector,
            name=name,
            dagster_dbt_translator=dagster_dbt_translator,
            partitions_def=partitions_def,
            backfill_policy=backfill_policy,
            op_tags=tags,
            retry_policy=retry_policy,
            pool=pool,
            io_manager_key=io_manager_key,
            required_resource_keys=required_resource_keys,
        )(fn)

    return decorator


def _resolve_string_annotations(fn: Callable[..., Any]) -> None:
    """Dagster checks `context: AssetExecutionContext` by identity, which fails in modules using
    `from __future__ import annotations` (every annotation is a string). Resolve them here."""
    if not any(isinstance(a, str) for a in getattr(fn, "__annotations__", {}).values()):
        return
    try:
        fn.__annotations__.update(typing.get_type_hints(fn))
    except Exception:  # noqa: BLE001 - unresolvable names: leave them, Dagster will say what is wrong
        pass
