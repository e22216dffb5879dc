"""Getting compiled SQL: :func:`compile_project` runs ``dbt compile`` for a BigQuery target."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster_watcher.bigquery.sql import COMPILE_ERROR_KEY, RENDERED_HOOKS_KEY
from dagster_watcher.errors import BigQueryCompileError

__all__ = ["COMPILED_IDS_KEY", "compile_project"]

#: The program run in the dbt subprocess (see that module).
_CHILD_MODULE = "dagster_watcher.bigquery._compile_child"

#: Top-level manifest key (added by :func:`compile_project`): unique_ids this compile selected.
COMPILED_IDS_KEY = "dagster_watcher_compiled"


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

    Without ``dbt_executable`` dbt runs from this interpreter (dbtRunner, in a child running
    :mod:`dagster_watcher.bigquery._compile_child`) and two things are added to the returned manifest: each node's pre-/post-hooks rendered by dbt
    (:data:`RENDERED_HOOKS_KEY`; the engine runs the non-empty ones) and, with ``fail_fast=False``,
    each node that failed to compile carries dbt's error under :data:`COMPILE_ERROR_KEY` (the engine
    fails it and skips its descendants, like ``dbt build``) instead of the whole compile raising.
    With ``dbt_executable`` (dbt in another environment) the plain ``dbt compile`` CLI runs: hooks
    stay unrendered (nodes with hooks are then reported unsupported) and compile errors raise.

    The manifest also lists the unique_ids the compile selected under :data:`COMPILED_IDS_KEY`.

    Args:
        project_dir: the dbt project (the folder with ``dbt_project.yml``).
        profiles_dir: the folder with ``profiles.yml`` (default: dbt's own lookup).
        target: a BigQuery output of the profile.
        target_path: where dbt writes the manifest and logs (default: ``<project>/target``).
        vars: dbt ``--vars``.
        select: dbt ``--select`` arguments.
        env: extra environment variables for dbt (e.g. what ``profiles.yml`` reads).
        dbt_executable: dbt of another environment; the plain CLI then runs (see above).
        extra_args: more ``dbt compile`` arguments (``--exclude``/``--selector``,
            ``--indirect-selection``, ``--full-refresh``).
        fail_fast: raise on the first node that fails to compile (``False``: mark it, go on).
        parse_cache: a file where dbt's ``partial_parse.msgpack`` is kept between compiles into
            different ``target_path`` folders, so later compiles parse only what changed (dbt itself
            discards it when project, profile or vars differ).

    Returns:
        The parsed ``manifest.json`` with the additions above.

    Raises:
        BigQueryCompileError: dbt compile failed (profile, project, connection; or a node, unless
            ``fail_fast=False``), with dbt's output.

    Example::

        manifest = compile_project("path/to/dbt_project", target="prod", fail_fast=False)
        BigQueryEngine(BigQueryEngineConfig(project="my-project")).run(manifest, ids, run_id="r1")
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
        cmd = [sys.executable, "-m", _CHILD_MODULE, json.dumps(args), hooks_file, "1" if fail_fast else "0"]
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
