"""Manifest preparation on top of dagster-dbt's ``DbtProject``: make sure ``manifest.json`` exists and
matches the project's files before the definitions are built, parsing with dbt in this process (no
extra process start) only when it is missing or stale."""

from __future__ import annotations

import os
from pathlib import Path

from dagster_dbt import DbtProject

from .invocation import parse_in_process

# What dbt reads when it parses; a change to any of them makes manifest.json stale.
_PARSE_INPUT_SUFFIXES = {".sql", ".yml", ".yaml", ".csv", ".py", ".md"}
_SKIP_DIRS = {"target", "logs", "dbt_packages", ".venv", "__pycache__", ".git"}


def _newest_input_mtime(project_dir: Path) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in files:
            if Path(name).suffix in _PARSE_INPUT_SUFFIXES:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def manifest_is_stale(project: DbtProject) -> bool:
    """True when manifest.json is missing or older than a file dbt parses."""
    manifest = Path(project.manifest_path)
    if not manifest.is_file():
        return True
    return manifest.stat().st_mtime < _newest_input_mtime(Path(project.project_dir))


def prepare_manifest(project: DbtProject, *, force: bool = False) -> Path:
    """Return ``project.manifest_path``, running ``dbt parse`` in this process first if the manifest
    is missing or stale (or ``force``).

    Use it where dagster-dbt users call ``project.prepare_if_dev()``; unlike that, it also works
    outside ``dagster dev`` (a fresh clone, a test, a deployment that did not ship the manifest).
    """
    if force or manifest_is_stale(project):
        args = [
            "parse",
            "--quiet",
            "--project-dir",
            os.fspath(project.project_dir),
            "--profiles-dir",
            os.fspath(project.profiles_dir),
            "--target-path",
            os.fspath(project.target_path),
        ]
        if project.target:
            args += ["--target", project.target]
        parse_in_process(args)
    return Path(project.manifest_path)
