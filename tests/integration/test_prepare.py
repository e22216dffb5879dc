"""Deployment preparation (issue 12, item 6): ``prepare_manifest`` on real dbt, from a fresh copy of a
project that uses a local dbt package (tests/support/pkg_project + tests/support/local_pkg).

- packages listed but not installed are installed (``dbt deps``) before the parse, and the project
  builds through the watcher without a manual ``dbt deps``; a failing ``dbt deps`` names the file;
- a relative ``project_dir`` given from another directory leaves only absolute paths in manifest.json
  and partial_parse.msgpack, so plain ``dbt seed`` from the project dir works afterwards;
- two processes preparing at once parse once (the second uses the first's manifest);
- a manifest made by ``dagster-dbt project prepare-and-package`` is used without a parse, and parsed
  again once the environment names another database.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import pytest
from dagster import AssetCheckKey, AssetExecutionContext, AssetKey, AssetsDefinition, DagsterInstance, materialize
from dagster_dbt import DbtProject

from dagster_watcher import DbtWatcherResource, ManifestPreparationError, dbt_watcher_assets, prepare_manifest
from dagster_watcher.project import manifest_generated_at

from ..support import REPO

SUPPORT = REPO / "tests" / "support"
VENV_BIN = Path(sys.executable).parent
PARSED = "dagster-watcher: dbt parse of"
DEPS = "dagster-watcher: dbt deps in"


def fresh_copy(dest: Path) -> Path:
    """pkg_project and the local package it lists, side by side as in the repo, without dbt_packages/."""
    for name in ("local_pkg", "pkg_project"):
        shutil.copytree(SUPPORT / name, dest / name, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    return dest / "pkg_project"


def assets_of(project: DbtProject) -> AssetsDefinition:
    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def pkg(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):  # type: ignore[no-untyped-def]
        yield from dbt_watcher.build(context)

    return pkg


def build(project: DbtProject, tmp_path: Path) -> Any:
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    return materialize(
        [assets_of(project)],
        resources={
            "dbt_watcher": DbtWatcherResource(project_dir=project, target_path=str(tmp_path / "build"), progress=False)
        },
        instance=DagsterInstance.local_temp(str(tmp_path / "dagster_home")),
        raise_on_error=False,
    )


def parse_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(PARSED)]


def test_a_fresh_copy_with_a_local_package_builds_without_a_manual_dbt_deps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    project_dir = fresh_copy(tmp_path)
    assert not (project_dir / "dbt_packages").exists()
    caplog.set_level(logging.INFO, logger="dagster_watcher")
    project = DbtProject(project_dir=project_dir)
    prepare_manifest(project)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(DEPS)] == [
        f"{DEPS} {project_dir}: packages.yml lists 1 package(s), 0 installed"
    ]
    assert (project_dir / "dbt_packages" / "local_pkg" / "macros" / "doubled.sql").is_file()

    result = build(project, tmp_path)
    assert result.success
    materialized = {e.asset_key for e in result.get_asset_materialization_events() if e.asset_key}
    assert materialized == {AssetKey("amounts"), AssetKey("doubled_amounts")}
    (check,) = result.get_asset_check_evaluations()
    assert check.asset_check_key == AssetCheckKey(AssetKey("doubled_amounts"), "not_null_doubled_amounts_id")
    assert check.passed
    with duckdb.connect(str(project_dir / "pkg.duckdb"), read_only=True) as db:
        rows = db.execute("select id, doubled from doubled_amounts order by id").fetchall()
    assert rows == [(1, 20), (2, 40), (3, 60)], "the package's macro ran"

    caplog.clear()
    prepare_manifest(project)
    assert not [r for r in caplog.records if r.getMessage().startswith((DEPS, PARSED))], "installed and current"


def test_dbt_deps_failing_names_the_package_file(tmp_path: Path) -> None:
    project_dir = fresh_copy(tmp_path)
    (project_dir / "packages.yml").write_text("packages:\n  - local: ../no_such_package\n")
    with pytest.raises(ManifestPreparationError) as raised:
        prepare_manifest(DbtProject(project_dir=project_dir))
    message = str(raised.value)
    assert "`dbt deps` failed" in message and str(project_dir / "packages.yml") in message
    assert not (project_dir / "target" / "manifest.json").exists(), "no parse after a failed dbt deps"


def test_a_relative_project_dir_from_another_directory_leaves_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_dir = fresh_copy(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest_path = prepare_manifest(DbtProject(project_dir="../pkg_project"))
    assert manifest_path == project_dir / "target" / "manifest.json"

    manifest = json.loads(manifest_path.read_text())
    roots = {n["root_path"] for n in manifest["nodes"].values() if n.get("root_path")}
    assert roots == {str(project_dir)}, "the seed's root_path is absolute and normalised"
    with open(project_dir / "target" / "partial_parse.msgpack", "rb") as f:
        saved = msgpack.unpack(f, raw=False, strict_map_key=False)
    saved_roots = {n["root_path"] for n in saved["nodes"].values() if n.get("root_path")}
    assert saved_roots == {str(project_dir)}
    assert {f["path"]["project_root"] for f in saved["files"].values() if f["project_name"] == "pkg_project"} == {
        str(project_dir)
    }

    # Plain dbt from the project dir reuses that partial parse; a relative root_path would make it
    # look for the seed under the wrong directory ("No files found that match the pattern").
    seed = subprocess.run(
        [str(VENV_BIN / "dbt"), "seed"], cwd=project_dir, capture_output=True, text=True, env=_dbt_env()
    )
    assert seed.returncode == 0, seed.stdout + seed.stderr
    assert "PASS=1" in seed.stdout


CHILD = """
import json, logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
from dagster_dbt import DbtProject
from dagster_watcher import prepare_manifest
Path(sys.argv[2]).touch()  # imported: ready
while not Path(sys.argv[3]).exists():
    time.sleep(0.005)
path = prepare_manifest(DbtProject(project_dir=sys.argv[1]))
print(json.loads(path.read_text())["metadata"]["invocation_id"])
"""


def test_two_processes_preparing_at_once_install_and_parse_once(tmp_path: Path) -> None:
    project_dir = fresh_copy(tmp_path)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(project_dir), str(r), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_dbt_env(),
        )
        for r in ready
    ]
    try:
        while not all(r.exists() for r in ready):  # both have imported everything: start them together
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            time.sleep(0.01)
        go.touch()
        outputs = [c.communicate(timeout=600) for c in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [c.returncode for c in children] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert logs.count(PARSED) == 1, logs
    assert logs.count(DEPS) == 1, logs
    invocation_ids = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(invocation_ids) == 1, "both use the one parse's manifest"


def test_a_manifest_from_prepare_and_package_is_used_until_the_environment_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    project_dir = fresh_copy(tmp_path)
    profiles = project_dir / "profiles.yml"
    profiles.write_text(
        profiles.read_text().replace("path: pkg.duckdb", "path: \"{{ env_var('PKG_DB', 'pkg.duckdb') }}\"")
    )
    monkeypatch.delenv("PKG_DB", raising=False)
    defs = tmp_path / "project_defs.py"
    defs.write_text(f"from dagster_dbt import DbtProject\n\nproject = DbtProject(project_dir={str(project_dir)!r})\n")
    packaged = subprocess.run(
        [str(VENV_BIN / "dagster-dbt"), "project", "prepare-and-package", "--file", str(defs)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_dbt_env(),
    )
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    manifest = project_dir / "target" / "manifest.json"
    made_by_dagster_dbt = manifest_generated_at(manifest)
    assert not (manifest.parent / "dagster_watcher_profile.json").exists(), "no fingerprint of ours"

    caplog.set_level(logging.INFO, logger="dagster_watcher")
    project = DbtProject(project_dir=project_dir)
    assert prepare_manifest(project) == manifest
    assert parse_messages(caplog) == [], "same dbt, directory, target and database: used as it is"
    assert manifest_generated_at(manifest) == made_by_dagster_dbt
    assert build(project, tmp_path).success, "the watcher builds from dagster-dbt's manifest"

    # Another environment: the profile now names another DuckDB file, so every relation's database.
    monkeypatch.setenv("PKG_DB", str(tmp_path / "other.duckdb"))
    prepare_manifest(project)
    (message,) = parse_messages(caplog)
    assert "in database 'pkg'" in message and "'other'" in message
    assert manifest_generated_at(manifest) != made_by_dagster_dbt


def _dbt_env() -> dict[str, str]:
    import os

    # dagster-dbt's CLI starts `dbt` from PATH: this environment's.
    env = {
        **os.environ,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("PKG_DB", None)
    return env
