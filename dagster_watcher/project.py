"""Manifest preparation on top of dagster-dbt's ``DbtProject``: make sure ``manifest.json`` exists and
matches the project's files before the definitions are built, parsing with dbt in this process (no
extra process start) only when it is missing or stale."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from dagster_dbt import DbtProject

from .errors import WatcherConfigError
from .invocation import parse_in_process

# What dbt reads when it parses; a change to any of them makes manifest.json stale.
_PARSE_INPUT_SUFFIXES = {".sql", ".yml", ".yaml", ".csv", ".py", ".md"}
_SKIP_DIRS = {"target", "logs", "dbt_packages", ".venv", "__pycache__", ".git"}


def _newest_input_mtime(project_dir: Path) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in files:
            # splitext, not Path(name).suffix: this runs once per project file on every load.
            if os.path.splitext(name)[1] in _PARSE_INPUT_SUFFIXES:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


_ENV_VAR_CALL = re.compile(r"""env_var\(\s*['"]([^'"]+)['"]""")


def profile_fingerprint(profiles_dir: str | os.PathLike[str], target: str | None) -> dict[str, Any]:
    """What the parsed manifest depends on in the profile: profiles.yml itself, the target, and the values
    of the environment variables profiles.yml reads (e.g. a DuckDB path: its file name becomes the
    database name baked into every relation of the manifest)."""
    path = Path(profiles_dir) / "profiles.yml"
    text = path.read_text() if path.is_file() else ""
    names = sorted(set(_ENV_VAR_CALL.findall(text)))
    return {
        "profiles_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "target": target,
        # Hashes, never values: profiles read passwords and tokens through env_var(), and this file lands
        # in images and artifacts.
        "env": {name: _digest(os.environ.get(name)) for name in names},
    }


def _digest(value: str | None) -> str | None:
    return None if value is None else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _fingerprint_path(manifest_path: Path) -> Path:
    return manifest_path.with_name("dagster_watcher_profile.json")


_GENERATED_AT = re.compile(rb'^\{\s*"metadata":\s*\{[^{}]*?"generated_at":\s*"([^"]+)"')


def manifest_generated_at(manifest_path: Path) -> str:
    """Which parse wrote manifest.json. dbt writes ``metadata`` first, so it is read from the file's
    head, so a code location's load does not parse the whole manifest (benchmarks/README: load times)."""
    with open(manifest_path, "rb") as f:
        found = _GENERATED_AT.match(f.read(4096))
    if found:
        return found.group(1).decode()
    return json.loads(manifest_path.read_bytes())["metadata"]["generated_at"]


def recorded_fingerprint(manifest_path: Path) -> dict[str, Any] | None:
    """The fingerprint written when this manifest was parsed by :func:`prepare_manifest` (None when the
    manifest came from elsewhere, or was re-parsed since)."""
    try:
        data = json.loads(_fingerprint_path(manifest_path).read_text())
        generated_at = manifest_generated_at(manifest_path)
    except (OSError, ValueError, KeyError):
        return None
    return data["fingerprint"] if data.get("generated_at") == generated_at else None


def manifest_is_stale(project: DbtProject) -> bool:
    """True when manifest.json is missing, older than a file dbt parses, or not known to have been parsed
    against the current profile/target/environment."""
    manifest = Path(project.manifest_path)
    if not manifest.is_file():
        return True
    if manifest.stat().st_mtime < _newest_input_mtime(Path(project.project_dir)):
        return True
    # A manifest this module did not parse (or that was re-parsed since) may come from another
    # environment: parse once more so the fingerprint vouches for it.
    return recorded_fingerprint(manifest) != profile_fingerprint(project.profiles_dir, project.target)


def prepare_manifest(project: DbtProject, *, force: bool = False, dbt_vars: Mapping[str, Any] | None = None) -> Path:
    """Return ``project.manifest_path``, running ``dbt parse`` in this process first if the manifest
    is missing or stale (or ``force``).

    Use it where dagster-dbt users call ``project.prepare_if_dev()``; unlike that, it also works
    outside ``dagster dev`` (a fresh clone, a test, a deployment that did not ship the manifest).

    Args:
        project: the dagster-dbt project.
        force: parse even when the manifest looks current.
        dbt_vars: vars to parse with, when a var decides what dbt parses (e.g. ``enabled`` configs);
            builds must then pass the same values (a build with other values of such a var is refused).

    Raises:
        ManifestPreparationError: dbt could not parse the project.

    Example::

        project = DbtProject(project_dir="my_dbt_project")
        prepare_manifest(project)
    """
    parse_vars = dict(dbt_vars or {})
    if force or manifest_is_stale(project) or _recorded_vars(Path(project.manifest_path)) != parse_vars:
        project_dir = Path(project.project_dir).absolute()
        args = [
            "parse",
            "--quiet",
            "--project-dir",
            os.fspath(project_dir),
            "--profiles-dir",
            os.fspath(Path(project.profiles_dir).absolute()),
            "--target-path",
            # Relative to the project, as dbt and DbtProject.manifest_path read it.
            os.fspath(project_dir / project.target_path),
        ]
        if project.target:
            args += ["--target", project.target]
        if parse_vars:
            args += ["--vars", json.dumps(parse_vars)]
        parse_in_process(args, cwd=project_dir)
        manifest = Path(project.manifest_path)
        _fingerprint_path(manifest).write_text(
            json.dumps(
                {
                    "generated_at": manifest_generated_at(manifest),
                    "fingerprint": profile_fingerprint(project.profiles_dir, project.target),
                    "vars": parse_vars,
                },
                indent=1,
            )
        )
    return Path(project.manifest_path)


def _recorded_vars(manifest_path: Path) -> dict[str, Any]:
    """The vars the manifest was parsed with by :func:`prepare_manifest` (none for any other parse)."""
    try:
        data = json.loads(_fingerprint_path(manifest_path).read_text())
        if data.get("generated_at") != manifest_generated_at(manifest_path):
            return {}
    except (OSError, ValueError, KeyError):
        return {}
    return dict(data.get("vars") or {})


# A var read here is read while dbt parses: its value decides which nodes exist and how they are
# configured (enabled, materialized, tags), so a build with another value runs another graph.
_VAR_CALL = re.compile(r"""\bvar\(\s*['"]([^'"]+)['"]""")
_CONFIG_BLOCK = re.compile(r"\{\{\s*config\((.*?)\)\s*\}\}", re.DOTALL)


def parse_time_vars(project_dir: Path) -> dict[str, str]:
    """Vars dbt reads while parsing, by name -> the first file that reads one: ``dbt_project.yml``,
    properties files (.yml) and ``config()`` blocks of models. Vars read only in SQL bodies, hooks or
    macros are read at run time and do not count."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in sorted(files):
            ext = os.path.splitext(name)[1]
            if ext not in (".yml", ".yaml", ".sql"):
                continue
            path = os.path.join(root, name)
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            chunks = _CONFIG_BLOCK.findall(text) if ext == ".sql" else [text]
            for chunk in chunks:
                for var in _VAR_CALL.findall(chunk):
                    found.setdefault(var, os.path.relpath(path, project_dir))
    return found


def check_parse_time_vars(project: DbtProject | None, project_dir: str, build_vars: Mapping[str, Any]) -> None:
    """Refuse a build whose vars would make dbt parse a different graph than the definitions show.

    Raises:
        WatcherConfigError: naming the var, the file that reads it at parse time, and the fix.
    """
    if not build_vars:
        return
    parsed_with = _recorded_vars(Path(project.manifest_path)) if project is not None else {}
    readers = parse_time_vars(Path(project_dir))
    for var, value in sorted(build_vars.items()):
        if var in readers and parsed_with.get(var) != value:
            raise WatcherConfigError(
                f"dbt var {var!r} is read while dbt parses the project ({readers[var]}), so its value "
                "decides which nodes exist; the definitions were made from a parse "
                f"{'with ' + var + '=' + json.dumps(parsed_with[var]) if var in parsed_with else 'without it'}. "
                f"Parse with the same value (prepare_manifest(project, dbt_vars={{{var!r}: ...}})) and give "
                "builds that value, or read the var only at run time (in SQL, hooks or macros)."
            )


def manifest_older_than_project(manifest: Mapping[str, Any], project_dir: Path) -> bool:
    """True when a file dbt parses changed after ``manifest`` was generated."""
    generated = (manifest.get("metadata") or {}).get("generated_at")
    if not generated:
        return False
    try:
        parsed_at = datetime.fromisoformat(str(generated).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    # dbt stamps generated_at when the parse starts; a file saved during the parse is not in it either.
    return _newest_input_mtime(project_dir) > parsed_at + 1.0


def project_kwargs(project_dir: str | os.PathLike[str] | DbtProject, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of a resource given a path or a dagster-dbt ``DbtProject`` (whose profiles
    dir and target apply unless set explicitly), with paths as strings."""
    if isinstance(project_dir, DbtProject):
        kwargs.setdefault("profiles_dir", os.fspath(project_dir.profiles_dir))
        if project_dir.target:
            kwargs.setdefault("target", project_dir.target)
        project_dir = project_dir.project_dir
    if kwargs.get("profiles_dir") is not None:
        kwargs["profiles_dir"] = os.fspath(kwargs["profiles_dir"])
    return {"project_dir": os.fspath(project_dir), **kwargs}


def profiles_dir_for(project_dir: str, profiles_dir: str | None) -> str | None:
    """The profiles dir dbt should get: the one configured, else the project's own when it holds a
    profiles.yml, else None (dbt then looks in ~/.dbt)."""
    if profiles_dir is None and (Path(project_dir) / "profiles.yml").is_file():
        return project_dir
    return profiles_dir


def checked_project_dir(value: str, resource: str) -> str:
    """The absolute project dir, or a WatcherConfigError (a ValueError) that says what to set."""
    path = Path(value).absolute()
    if not (path / "dbt_project.yml").is_file():
        raise WatcherConfigError(
            f"project_dir {value!r} ({path}) is not a dbt project: it has no dbt_project.yml. "
            f"Set {resource}(project_dir=...) to the folder that holds dbt_project.yml."
        )
    return os.fspath(path.resolve())
