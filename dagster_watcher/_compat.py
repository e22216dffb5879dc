"""Every use of a private Dagster, dbt or dbt-adapter API, in one place.

Each function here reaches into something a minor release of Dagster, dbt-core or an adapter may
change. Each has a fallback that keeps behaviour (slower, never wrong) when the internals are not
what it expects, and ``tests/unit/test_compat.py`` exercises every fallback. Nothing else in the
package imports ``dagster._core``, ``dbt.contracts`` or an adapter's internals.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("dagster_watcher")

# --------------------------------------------------------------------------------------------------
# Dagster


def asset_job_types() -> tuple[type, ...]:
    """The classes a job attached downstream may be: a resolved job, and what ``define_asset_job``
    returns before resolution (not exported by ``dagster``).

    Fallback: only ``JobDefinition`` plus duck typing by the caller."""
    from dagster import JobDefinition

    try:
        from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
    except ImportError:  # pragma: no cover - exercised by the fallback test
        return (JobDefinition,)
    return (JobDefinition, UnresolvedAssetJobDefinition)


def is_job_like(value: object) -> bool:
    """A job definition or an unresolved asset job (anything with a name Dagster can launch)."""
    if isinstance(value, asset_job_types()):
        return True
    # Fallback when the private class moved: what define_asset_job returns has these.
    return hasattr(value, "name") and hasattr(value, "selection") and callable(getattr(value, "resolve", None))


def add_job_name_targets(sensor: Any, job_names: Sequence[str]) -> bool:
    """Let ``sensor`` request runs of jobs it knows by name only: jobs defined elsewhere in the code
    location (another component or a Python module of a ``dg`` project). Dagster resolves a job named
    by a string when the run is requested, but ``SensorDefinition`` takes a name only as its single
    ``job_name`` target, never beside job definitions (and a string in ``jobs=`` is read as an asset
    key). Appends one name target per job to the sensor's targets.

    Fallback (the targets' class or list moved): returns False and changes nothing; the caller then
    asks for the job definition or an asset selection instead of a name."""
    try:
        from dagster._core.definitions.target import AutomationTarget
    except ImportError:
        return False
    targets = getattr(sensor, "_targets", None)
    if not isinstance(targets, list):
        return False
    known = {t.job_name for t in targets}
    for name in job_names:
        if name not in known:
            targets.append(AutomationTarget(resolvable_to_job=name))
            known.add(name)
    return True


def memoize_output_asset_keys(context: Any) -> bool:
    """Make a producer step compute its output asset keys once instead of once per ``Output``.

    Dagster 1.13's ``StepExecutionContext.get_output_asset_keys()`` loops over every output and
    rebuilds the node's key set on each call, and it is called for every ``Output`` the step yields:
    O(n^3) for a step with n assets. Its answer is fixed for the step, so this step's context object
    (only this one; nothing global is patched) remembers it.

    Fallback: when the step context is not where it is expected, nothing is changed (the step is
    as correct, only slower). Returns whether the memo is in place."""
    try:
        step_context = context.op_execution_context._step_execution_context
        keys = step_context.get_output_asset_keys()
        step_context.get_output_asset_keys = lambda: keys
    except Exception:  # noqa: BLE001 - an optimisation only
        return False
    return True


_INSTANCES: OrderedDict[str, Any] = OrderedDict()
_INSTANCES_LOCK = threading.Lock()
#: Instances kept per process (one per Dagster instance configuration the code server is asked about).
_INSTANCES_KEPT = 4


def sensor_instance(context: Any) -> Any:
    """The ``DagsterInstance`` a sensor evaluation reads, built once per process and instance config.

    A code server receives an ``InstanceRef`` with every sensor evaluation, and ``context.instance``
    builds a new ``DagsterInstance`` from it each time: every storage creates its engine and checks
    its schema (SQLite: ~100 ms on a busy 2-core box; PostgreSQL: a connection and a table listing per
    storage), some 300 times the watcher's own work in a quiet tick. Keyed by the serialized ref, so a
    changed configuration gets its own instance; shared by the code server's threads (Dagster's
    storages are, as in the webserver and the daemon).

    Private: ``SensorEvaluationContext.instance_ref`` is not public API. Fallback (no ref, as under
    ``build_sensor_context(instance=...)``, or a ref that cannot be serialized): ``context.instance``."""
    from dagster import DagsterInstance, serialize_value

    ref = getattr(context, "instance_ref", None)
    if ref is None:
        return context.instance
    try:
        key = serialize_value(ref)
    except Exception:  # noqa: BLE001 - fall back to Dagster's own per-evaluation instance
        return context.instance
    with _INSTANCES_LOCK:
        found = _INSTANCES.get(key)
        if found is not None:
            _INSTANCES.move_to_end(key)
            return found
    built = DagsterInstance.from_ref(ref)
    with _INSTANCES_LOCK:
        found = _INSTANCES.setdefault(key, built)
        # An evicted instance is left to the garbage collector, not disposed: another thread may be
        # evaluating a sensor with it.
        while len(_INSTANCES) > _INSTANCES_KEPT:
            _INSTANCES.popitem(last=False)
    if found is not built:
        built.dispose()  # another thread built it first
    return found


class EventLogVersion:
    """The event log's newest row id, as cheaply as the storage allows.

    The default SQLite storage opens a new SQLAlchemy engine per query; a private read-only SQLite
    connection to its index shard answers ``max(id)`` in microseconds. Fallback (any other storage, a
    moved module, a missing file, a SQL error): the public ``get_maximum_record_id()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sqlite: tuple[str, Any] | None = None

    def read(self, instance: Any) -> tuple[object, object]:
        """(which storage, its newest row id). The storage is named by its location or config, not the
        object: without :func:`sensor_instance`, a code server builds a new instance for every sensor
        evaluation."""
        storage = instance.event_log_storage
        path = _sqlite_index_path(storage)
        if path is not None:
            with self._lock:
                found = self._read_sqlite(path)
            if found is not None:
                return path, found
        inst_data = getattr(storage, "inst_data", None)
        which = (type(storage).__name__, inst_data) if inst_data is not None else id(storage)
        return which, storage.get_maximum_record_id()

    def _read_sqlite(self, path: str) -> object | None:
        import os
        import sqlite3

        if self._sqlite is not None and self._sqlite[0] != path:
            self.close()
        if self._sqlite is None:
            if not os.path.exists(path):
                return None
            self._sqlite = path, sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            return self._sqlite[1].execute("select max(id) from event_logs").fetchone()[0]
        except sqlite3.Error:
            self.close()
            return None

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite[1].close()
            self._sqlite = None


def _sqlite_index_path(storage: Any) -> str | None:
    """The SQLite index shard of Dagster's default event log storage, or None for any other storage."""
    try:
        from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    except ImportError:
        return None
    if not isinstance(storage, SqliteEventLogStorage):
        return None
    try:
        return str(storage.path_for_shard("index"))
    except Exception:  # noqa: BLE001 - fall back to the public read
        return None


# --------------------------------------------------------------------------------------------------
# dbt

_WRITABLE_CACHE: dict[tuple[str, str, int], Any] = {}
_WRITABLE_CACHE_LOCK = threading.Lock()


def dbt_manifest_from_json(manifest_json: Mapping[str, Any]) -> Any | None:
    """dbt's in-memory ``Manifest`` for a manifest.json dict, without parsing the project.

    dbtRunner accepts a pre-parsed manifest and then skips parsing entirely. Building it from the
    manifest.json the Dagster definitions were made from lets the in-process mode start executing
    nodes without a second parse, and guarantees dbt runs exactly the graph Dagster shows.

    The deserialised artifact is cached per process; the ``Manifest`` itself is rebuilt for every
    invocation because dbt mutates it while it runs (compiled SQL, injected ephemeral CTEs), and a
    reused one makes the next build skip work it must redo.

    Fallback: None when dbt's manifest classes are not what this expects; the caller then lets dbt
    parse the project itself (slower, same result)."""
    try:
        from dbt.contracts.graph.manifest import Manifest, WritableManifest

        meta = manifest_json.get("metadata") or {}
        key = (str(meta.get("invocation_id")), str(meta.get("generated_at")), len(manifest_json.get("nodes") or {}))
        with _WRITABLE_CACHE_LOCK:
            writable = _WRITABLE_CACHE.get(key)
            if writable is None:
                # Upgrade paths may mutate what they are given: hand them a copy.
                writable = WritableManifest.upgrade_schema_version(json.loads(json.dumps(manifest_json)))
                _WRITABLE_CACHE.clear()  # keep one version: an edited project must not pin old ones
                _WRITABLE_CACHE[key] = writable
        manifest = Manifest.from_writable_manifest(writable)
        _retype_nodes(manifest, manifest_json)
    except Exception as error:  # noqa: BLE001 - dbt parses instead
        logger.warning(f"dagster-watcher: could not load manifest.json into dbt ({error!r}); dbt will parse.")
        return None
    return manifest


def _retype_nodes(manifest: Any, manifest_json: Mapping[str, Any]) -> None:
    """manifest.json's node union deserialises every test as a singular test; a generic test then
    fails to compile (`'_dbt_generic_test_kwargs' is undefined`). Rebuild each node with the class its
    resource_type (and, for tests, test_metadata) calls for."""
    from dbt.artifacts.resources import GenericTest
    from dbt.contracts.graph.nodes import GenericTestNode

    for unique_id, node in (manifest_json.get("nodes") or {}).items():
        if node.get("resource_type") == "test" and node.get("test_metadata"):
            current = manifest.nodes.get(unique_id)
            if current is not None and not isinstance(current, GenericTestNode):
                manifest.nodes[unique_id] = GenericTestNode.from_resource(GenericTest.from_dict(node))


def release_adapter_handles() -> None:
    """Give back what an in-process dbt invocation holds once it is over, as the end of a `dbt`
    process would: dbt's adapter connections, and dbt-duckdb's process-wide DuckDB instance, which
    otherwise keeps the warehouse file open (a DuckDB file admits one process at a time).

    Fallback: whatever cannot be released this way stays open until the process ends (never turns a
    finished build into a failure)."""
    try:
        from dbt.adapters.factory import reset_adapters

        reset_adapters()
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    except ImportError:
        return
    lock = getattr(DuckDBConnectionManager, "_LOCK", None)
    if lock is None or not hasattr(DuckDBConnectionManager, "_ENV"):
        return
    with lock:
        env = DuckDBConnectionManager._ENV
        DuckDBConnectionManager._ENV = None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass


def dbt_adapter(adapter_type: str) -> Any | None:
    """The adapter dbt registered in this process for its current invocation (the one whose
    connections its build uses), for queries made beside the build in the dbt process.

    Fallback: None when dbt's adapter factory is not where it is expected or holds no such adapter;
    the caller then reads nothing (the build is unaffected)."""
    try:
        from dbt.adapters.factory import get_adapter_by_type

        return get_adapter_by_type(adapter_type)
    except Exception:  # noqa: BLE001 - no adapter, no metadata
        return None


def run_own_finalizers() -> None:
    """In a forked child about to ``os._exit``: run the finalizers this process registered.

    dbt's adapter creates multiprocessing locks, registered with the resource tracker the parent
    shares; ``os._exit`` skips their cleanup, and the parent then warns of "leaked semaphore objects"
    when it exits (multiprocessing skips finalizers inherited from the parent: they record the pid
    that made them). Fallback: nothing runs (a warning at the parent's exit, nothing worse)."""
    try:
        from multiprocessing import util as mp_util

        mp_util._run_finalizers()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------------------------------
# dagster-dbt


def current_manifest(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """manifest.json as it is on disk now, through dagster-dbt's per-path cache.

    dagster-dbt caches a parsed manifest per path for the life of the process, so a definition made
    again after a re-parse (``prepare_manifest`` in the same process) would get the old graph and
    the old SQL. The cached entry is used only while its ``generated_at`` is the file's; otherwise
    the cache is cleared and the file read again. Fallback (dagster-dbt's reader moved): the file is
    read here, uncached."""
    from pathlib import Path

    from .project import manifest_generated_at

    resolved = Path(path).resolve()
    try:
        from dagster_dbt.dbt_manifest import read_manifest_path
    except ImportError:
        return json.loads(resolved.read_bytes())
    cached = read_manifest_path(resolved)
    on_disk = manifest_generated_at(resolved)
    if (cached.get("metadata") or {}).get("generated_at") != on_disk:
        cache_clear = getattr(read_manifest_path, "cache_clear", None)
        if cache_clear is None:
            return json.loads(resolved.read_bytes())
        cache_clear()
        cached = read_manifest_path(resolved)
    return cached


def column_lineage_metadata(
    columns: Mapping[str, Mapping[str, Any]],
    parents: Mapping[str, Mapping[str, Mapping[str, Any]]],
    node: Mapping[str, Any],
    manifest: Mapping[str, Any],
    translator: Any,
    target_path: Any,
    project: Any,
) -> dict[str, Any]:
    """``dagster/column_lineage`` as dagster-dbt's ``fetch_column_metadata()`` computes it: its
    sqlglot-based lineage over the node's compiled SQL and the columns of the node and its parents
    (``{relation name: {column: {"data_type": type}}}``), parents named as the translator keys them.

    Raises whatever the lineage raises (sqlglot cannot resolve a column...), as dagster-dbt's
    callers catch it. Fallback: {} (no lineage) when dagster-dbt's private builder moved."""
    try:
        from dagster_dbt.core.dbt_cli_event import EventHistoryMetadata, _build_column_lineage_metadata
    except ImportError:
        return {}
    return dict(
        _build_column_lineage_metadata(
            event_history_metadata=EventHistoryMetadata(
                columns={name: dict(info) for name, info in columns.items()},
                parents={
                    relation: {name: dict(info) for name, info in cols.items()} for relation, cols in parents.items()
                },
            ),
            dbt_resource_props=dict(node),
            manifest=manifest,
            dagster_dbt_translator=translator,
            target_path=target_path,
            project=project,
        )
    )


def dbt_target(profiles_dir: str | os.PathLike[str], profile_name: str, target: str | None) -> dict[str, Any] | None:
    """The dbt target a parse would use, rendered as dbt renders it (``env_var()`` read from this
    process's environment): ``{"name", "type", "database", "schema"}``, without parsing the project.

    ``prepare_manifest`` compares it with a manifest.json it did not parse itself (one made by
    ``dagster-dbt project prepare-and-package``): the relations baked into the manifest must be the
    ones this environment's target names (a DuckDB file's name is its database).

    Fallback: None when dbt's profile classes are not what this expects, or the profile cannot be
    rendered here; the caller then parses (slower, same result)."""
    import contextvars

    def render() -> dict[str, Any]:
        from dbt.config.profile import Profile, read_profile
        from dbt.config.renderer import ProfileRenderer
        from dbt_common.context import set_invocation_context

        # env_var() reads the invocation context dbt sets per command; this copy of the context
        # keeps it from leaking into the caller's.
        set_invocation_context(dict(os.environ))
        raw = read_profile(os.fspath(profiles_dir))
        if profile_name not in raw:
            raise KeyError(profile_name)
        name, data = Profile.render_profile(raw[profile_name], profile_name, target, ProfileRenderer({}))
        credentials = Profile._credentials_from_profile(data, profile_name, name)
        return {
            "name": name,
            "type": credentials.type,
            "database": credentials.database,
            "schema": credentials.schema,
        }

    try:
        return contextvars.copy_context().run(render)
    except Exception as error:  # noqa: BLE001 - dbt parses instead
        logger.info(f"dagster-watcher: could not render dbt target {target!r} of profile {profile_name!r}: {error!r}")
        return None


@contextmanager
def dbt_component_scope(resolution_context: Any) -> Iterator[None]:
    """Around a ``DbtProjectComponent`` build: dagster-dbt's ``get_cli_args`` renders the ``cli_args``
    templates (``{{ partition_key }}``, ...) with the component's resolution context, which it reads
    from a context variable its own asset body sets (``_set_resolution_context``).

    Fallback (the helper moved): nothing is set, and dagster-dbt resolves ``cli_args`` however its
    release does."""
    try:
        from dagster_dbt.components.dbt_component_utils import _set_resolution_context
    except ImportError:
        yield
        return
    with _set_resolution_context(resolution_context):
        yield
