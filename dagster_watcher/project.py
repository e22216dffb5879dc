"""Manifest preparation on top of dagster-dbt's ``DbtProject``: make sure the project's packages are
installed and ``manifest.json`` exists and matches the project's files and this environment before the
definitions are built, running ``dbt deps``/``dbt parse`` in this process (no extra process start) only
when needed, one process at a time."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dagster_dbt import DbtProject
from dagster_shared.yaml_utils import safe_load_yaml

from ._compat import dbt_target
from .errors import ManifestPreparationError, WatcherConfigError
from .invocation import parse_in_process
from .invocation.runner_mode import run_in_process

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: preparation is not guarded between processes
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("dagster_watcher")

# What dbt reads when it parses; a change to any of them makes manifest.json stale.
_PARSE_INPUT_SUFFIXES = {".sql", ".yml", ".yaml", ".csv", ".py", ".md"}
_SKIP_DIRS = {"target", "logs", "dbt_packages", ".venv", "__pycache__", ".git"}
#: Written by `dbt deps` (which prepare_manifest may run just before it decides), never parsed.
_SKIP_FILES = {"package-lock.yml"}
#: dbt reads the package list from the first of these that exists.
_PACKAGE_FILES = ("packages.yml", "dependencies.yml")
#: Beside manifest.json; held (fcntl.flock) by the process that installs packages or parses.
_LOCK_FILE = "dagster_watcher_prepare.lock"


def _newest_input(project_dir: Path) -> tuple[float, str | None]:
    """The newest modification time of a file dbt parses, and that file."""
    newest, newest_path = 0.0, None
    for root, dirs, files in os.walk(project_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in files:
            # splitext, not Path(name).suffix: this runs once per project file on every load.
            if os.path.splitext(name)[1] in _PARSE_INPUT_SUFFIXES and name not in _SKIP_FILES:
                path = os.path.join(root, name)
                mtime = os.stat(path).st_mtime
                if mtime > newest:
                    newest, newest_path = mtime, path
    return newest, newest_path


def _newest_input_mtime(project_dir: Path) -> float:
    return _newest_input(project_dir)[0]


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


_METADATA_START = re.compile(rb'^\{\s*"metadata":\s*')


def manifest_metadata(manifest_path: Path) -> dict[str, Any]:
    """manifest.json's ``metadata`` (which parse wrote it, dbt's version, the adapter). dbt writes
    ``metadata`` first, so it is read from the file's head, so a code location's load does not parse
    the whole manifest (benchmarks/README: load times)."""
    with open(manifest_path, "rb") as f:
        head = f.read(65536)
    found = _METADATA_START.match(head)
    if found:
        with contextlib.suppress(ValueError):
            metadata, _ = json.JSONDecoder().raw_decode(head.decode("utf-8", errors="replace"), found.end())
            if isinstance(metadata, dict):
                return metadata
    return dict(json.loads(manifest_path.read_bytes())["metadata"])


def manifest_generated_at(manifest_path: Path) -> str:
    """Which parse wrote manifest.json (its ``metadata.generated_at``)."""
    return str(manifest_metadata(manifest_path)["generated_at"])


def _sidecar(manifest_path: Path) -> dict[str, Any] | None:
    """What :func:`prepare_manifest` recorded when it parsed this manifest (None when the manifest came
    from elsewhere, or was re-parsed since)."""
    try:
        data = json.loads(_fingerprint_path(manifest_path).read_text())
        generated_at = manifest_generated_at(manifest_path)
    except (OSError, ValueError, KeyError):
        return None
    return data if isinstance(data, dict) and data.get("generated_at") == generated_at else None


def recorded_fingerprint(manifest_path: Path) -> dict[str, Any] | None:
    """The fingerprint written when this manifest was parsed by :func:`prepare_manifest` (None when the
    manifest came from elsewhere, or was re-parsed since)."""
    data = _sidecar(manifest_path)
    return data["fingerprint"] if data is not None else None


@dataclass(frozen=True)
class _Paths:
    """A project's folders, absolute and normalised: dbt stores the project dir it was given in the
    manifest and partial_parse.msgpack (a seed's root_path), and a path relative to whoever called
    would later be read relative to dbt's own directory."""

    project_dir: Path
    profiles_dir: Path
    target_dir: Path

    @property
    def manifest(self) -> Path:
        return self.target_dir / "manifest.json"

    @classmethod
    def of(cls, project: DbtProject) -> _Paths:
        project_dir = Path(project.project_dir).resolve()
        # Relative to the project, as dbt and DbtProject.manifest_path read it.
        return cls(project_dir, Path(project.profiles_dir).resolve(), (project_dir / project.target_path).resolve())


def uninstalled_packages(project_dir: Path) -> tuple[str, int, int] | None:
    """(the package file, packages it lists, packages installed) when dbt would refuse to run for want of
    ``dbt deps``, else None. dbt's own rule (``RuntimeConfig.load_dependencies``): fewer folders in
    ``packages-install-path`` than packages listed.

    Raises:
        ManifestPreparationError: the package file (or dbt_project.yml) is not valid YAML.
    """
    for name in _PACKAGE_FILES:
        path = project_dir / name
        if not path.is_file():
            continue
        listed = len(_yaml(path).get("packages") or [])
        if listed == 0:
            return None
        install_dir = project_dir / str(
            _yaml(project_dir / "dbt_project.yml").get("packages-install-path") or "dbt_packages"
        )
        installed = (
            sum(1 for p in install_dir.iterdir() if p.is_dir() and not p.name.startswith("__"))
            if install_dir.is_dir()
            else 0
        )
        return (name, listed, installed) if listed > installed else None
    return None


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = safe_load_yaml(path.read_text())
    except Exception as error:  # noqa: BLE001 - unreadable or not YAML: the same answer
        raise ManifestPreparationError(f"could not read {path}: {error}") from error
    return data if isinstance(data, dict) else {}


def why_stale(project: DbtProject, *, dbt_vars: Mapping[str, Any] | None = None) -> str | None:
    """Why ``manifest.json`` must be parsed again before definitions are made from it, or None when it can
    be used as it is.

    A manifest :func:`prepare_manifest` parsed (it recorded a fingerprint beside it) is current while no
    file dbt parses is newer, the project is in the same directory, and the profile, target, the
    environment variables profiles.yml reads, the parse-time vars and dbt's version are the same.

    A manifest made elsewhere (``dagster-dbt project prepare-and-package``, ``dbt parse`` in an image
    build) is current when no file dbt parses is newer, it was made by this dbt version, in this
    directory (seeds are read from the root_path it records), for this target (same adapter, and its
    relations are in the database and schema this environment's target names), and no var given here
    is one dbt reads while parsing (such a manifest records no vars).
    """
    paths = _Paths.of(project)
    manifest = paths.manifest
    parse_vars = dict(dbt_vars or {})
    if not manifest.is_file():
        return f"there is no manifest.json at {manifest}"
    newest, newest_path = _newest_input(paths.project_dir)
    if manifest.stat().st_mtime < newest:
        return f"{os.path.relpath(newest_path or '', paths.project_dir)} changed after manifest.json was written"
    try:
        metadata = manifest_metadata(manifest)
    except (OSError, ValueError, KeyError) as error:
        return f"manifest.json could not be read ({error})"
    installed = _dbt_version()
    if metadata.get("dbt_version") != installed:
        return f"manifest.json was made by dbt {metadata.get('dbt_version')}, this environment has dbt {installed}"
    recorded = _sidecar(manifest)
    if recorded is not None:
        if recorded.get("project_dir") != os.fspath(paths.project_dir):
            return (
                f"manifest.json was parsed in {recorded.get('project_dir')}, the project is now in {paths.project_dir}"
            )
        if recorded["fingerprint"] != profile_fingerprint(paths.profiles_dir, project.target):
            return "manifest.json was parsed for another profile, target or environment"
        if dict(recorded.get("vars") or {}) != parse_vars:
            return f"manifest.json was parsed with vars {recorded.get('vars') or {}}, not {parse_vars}"
        return None
    return _why_foreign_manifest_is_stale(project, paths, metadata, parse_vars)


def _why_foreign_manifest_is_stale(
    project: DbtProject, paths: _Paths, metadata: Mapping[str, Any], parse_vars: Mapping[str, Any]
) -> str | None:
    """The rules of :func:`why_stale` for a manifest this module did not parse."""
    readers = parse_time_vars(paths.project_dir) if parse_vars else {}
    for var in sorted(parse_vars):
        if var in readers:
            return f"dbt var {var!r} is read while dbt parses ({readers[var]}), and manifest.json records no vars"
    profile = project.profile or _yaml(paths.project_dir / "dbt_project.yml").get("profile")
    if not profile:
        return "dbt_project.yml names no profile"
    target = dbt_target(paths.profiles_dir, str(profile), project.target)
    if target is None:
        return f"the target of profile {profile!r} in {paths.profiles_dir / 'profiles.yml'} could not be read"
    if metadata.get("adapter_type") != target["type"]:
        return f"manifest.json was made for a {metadata.get('adapter_type')} target, target {target['name']!r} is {target['type']}"
    manifest = json.loads(paths.manifest.read_bytes())
    own = metadata.get("project_name")
    roots = set()
    for node in (manifest.get("nodes") or {}).values():
        if node.get("package_name") != own or node.get("resource_type") not in ("model", "seed", "snapshot"):
            continue
        if node.get("root_path"):
            roots.add(node["root_path"])
        config = node.get("config") or {}
        for part in ("database", "schema"):
            # A node with its own database/schema config is where that puts it; every other one is in the
            # target's (dbt's default generate_*_name macros).
            if config.get(part) is None and target[part] is not None and node.get(part) != target[part]:
                return (
                    f"manifest.json puts {node.get('unique_id')} in {part} {node.get(part)!r}, target "
                    f"{target['name']!r} names {target[part]!r} here"
                )
    if roots and os.fspath(paths.project_dir) not in roots:
        return f"manifest.json was parsed in {sorted(roots)[0]}, the project is now in {paths.project_dir}"
    return None


def _dbt_version() -> str | None:
    try:
        return importlib.metadata.version("dbt-core")
    except importlib.metadata.PackageNotFoundError:
        return None


def prepare_manifest(project: DbtProject, *, force: bool = False, dbt_vars: Mapping[str, Any] | None = None) -> Path:
    """Make ``project``'s packages and ``manifest.json`` ready for definitions and builds, and return the
    manifest's (absolute) path.

    - ``dbt deps`` runs first when ``packages.yml``/``dependencies.yml`` lists more packages than are
      installed (dbt's own rule), so a fresh clone needs no manual ``dbt deps``.
    - ``dbt parse`` runs when the manifest is missing or stale (see :func:`why_stale`; ``force``
      always). A manifest made by ``dagster-dbt project prepare-and-package`` or shipped in an image is
      used as it is when it matches this environment.
    - Both run in this process, under a file lock beside the manifest (``dagster_watcher_prepare.lock``),
      so processes preparing at once (a code server, run workers) take turns: a process that waited
      uses the manifest the first one wrote. A current manifest is used without the lock (a read-only
      image works).
    - dbt gets absolute paths, so manifest.json and partial_parse.msgpack never hold a path relative to
      the caller's directory (a seed's root_path): ``dbt seed`` from the project dir works afterwards.

    Use it where dagster-dbt users call ``project.prepare_if_dev()``; unlike that, it also works
    outside ``dagster dev`` (a fresh clone, a test, a deployment that did not ship the manifest).

    Args:
        project: the dagster-dbt project.
        force: parse even when the manifest looks current.
        dbt_vars: vars to parse with, when a var decides what dbt parses (e.g. ``enabled`` configs);
            builds must then pass the same values (a build with other values of such a var is refused).

    Returns:
        The absolute path of manifest.json.

    Raises:
        ManifestPreparationError: ``dbt deps`` or ``dbt parse`` failed (the message names the package
            file or dbt's error), or the target folder cannot be written.

    Example::

        project = DbtProject(project_dir="my_dbt_project")
        prepare_manifest(project)
    """
    paths = _Paths.of(project)
    parse_vars = dict(dbt_vars or {})
    if (
        not force
        and uninstalled_packages(paths.project_dir) is None
        and why_stale(project, dbt_vars=parse_vars) is None
    ):
        return paths.manifest
    before = _generated_at_or_none(paths.manifest)
    with _prepare_lock(paths.target_dir) as waited:
        missing = uninstalled_packages(paths.project_dir)
        if missing is not None:
            _install_packages(paths, *missing)
        reparsed_meanwhile = waited and _generated_at_or_none(paths.manifest) not in (None, before)
        reason = "force=True" if force and not reparsed_meanwhile else why_stale(project, dbt_vars=parse_vars)
        if reason is None:
            if waited:
                logger.info(f"dagster-watcher: using the manifest another process prepared at {paths.manifest}")
            return paths.manifest
        logger.info(f"dagster-watcher: dbt parse of {paths.project_dir}: {reason}")
        _parse(project, paths, parse_vars)
    return paths.manifest


def _generated_at_or_none(manifest: Path) -> str | None:
    try:
        return manifest_generated_at(manifest)
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _prepare_lock(target_dir: Path) -> Iterator[bool]:
    """Hold the preparation lock of ``target_dir``; yields whether another process held it first."""
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        # Opened for appending and never removed: another process may be waiting on this very file.
        handle = open(target_dir / _LOCK_FILE, "ab")  # noqa: SIM115 - closed below
    except OSError as error:
        raise ManifestPreparationError(
            f"cannot prepare the dbt manifest: the target folder {target_dir} is not writable ({error}). "
            "Ship a current manifest.json there (dagster-dbt project prepare-and-package), or make it writable."
        ) from error
    with handle:
        if fcntl is None:  # pragma: no cover
            yield False
            return
        waited = False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(f"dagster-watcher: waiting for another process preparing {target_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install_packages(paths: _Paths, package_file: str, listed: int, installed: int) -> None:
    logger.info(
        f"dagster-watcher: dbt deps in {paths.project_dir}: {package_file} lists {listed} package(s), "
        f"{installed} installed"
    )
    args = ["deps", "--quiet", "--project-dir", os.fspath(paths.project_dir)]
    _, error = run_in_process(args, cwd=paths.project_dir)
    if error is not None:
        raise ManifestPreparationError(
            f"`dbt deps` failed for the packages listed in {paths.project_dir / package_file}: {error}. "
            f"Fix {package_file} (or install the packages with `dbt deps` before the definitions load)."
        )


def _parse(project: DbtProject, paths: _Paths, parse_vars: Mapping[str, Any]) -> None:
    args = [
        "parse",
        "--quiet",
        "--project-dir",
        os.fspath(paths.project_dir),
        "--profiles-dir",
        os.fspath(paths.profiles_dir),
        "--target-path",
        os.fspath(paths.target_dir),
    ]
    if project.target:
        args += ["--target", project.target]
    if project.profile:
        args += ["--profile", project.profile]
    if parse_vars:
        args += ["--vars", json.dumps(parse_vars)]
    parse_in_process(args, cwd=paths.project_dir)
    _fingerprint_path(paths.manifest).write_text(
        json.dumps(
            {
                "generated_at": manifest_generated_at(paths.manifest),
                "fingerprint": profile_fingerprint(paths.profiles_dir, project.target),
                "vars": dict(parse_vars),
                "project_dir": os.fspath(paths.project_dir),
            },
            indent=1,
        )
    )


def _recorded_vars(manifest_path: Path) -> dict[str, Any]:
    """The vars the manifest was parsed with by :func:`prepare_manifest` (none for any other parse)."""
    data = _sidecar(manifest_path)
    return dict(data.get("vars") or {}) if data is not None else {}


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
