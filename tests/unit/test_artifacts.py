"""The artifact folders of builds: naming, finding a run's attempts, retention, the shared parse cache."""

from __future__ import annotations

import os
from pathlib import Path

from dagster_watcher.artifacts import (
    PARTIAL_PARSE_FILE,
    build_dir,
    build_dirs_of_run,
    keep_partial_parse,
    partial_parse_args,
    prune_runs,
)


def _run_folder(root: Path, run_id: str, mtime: float) -> Path:
    folder = build_dir(root, run_id, "shop", 1)
    folder.mkdir(parents=True)
    os.utime(folder.parent, (mtime, mtime))
    return folder.parent


def test_a_run_s_attempts_are_listed_oldest_first(tmp_path: Path) -> None:
    for attempt in (10, 2, 1):
        build_dir(tmp_path, "r1", "shop", attempt).mkdir(parents=True)
    assert [p.name for p in build_dirs_of_run(tmp_path, "r1")] == ["shop-1", "shop-2", "shop-10"]
    assert build_dirs_of_run(tmp_path, "other") == []


def test_names_are_single_path_components(tmp_path: Path) -> None:
    folder = build_dir(tmp_path, "../evil", "op[a/b]", 1)
    assert folder.parent.parent == tmp_path / "runs"
    assert folder.name == "op_a_b_-1"


def test_retention_keeps_the_newest_and_never_a_run_in_progress(tmp_path: Path) -> None:
    for i, run_id in enumerate(["a", "b", "c", "d", "e"]):
        _run_folder(tmp_path, run_id, 1_000_000 + i)
    removed = prune_runs(tmp_path, 2, in_progress=lambda run_id: run_id == "a", current="e")
    assert sorted(p.name for p in removed) == ["b", "c"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a", "d", "e"]
    assert prune_runs(tmp_path / "nothing", 2, in_progress=lambda _: False) == []


def test_the_shared_parse_cache_is_offered_unless_the_user_chose(tmp_path: Path) -> None:
    assert partial_parse_args(tmp_path, []) == [], "no cache yet: nothing to point dbt at"
    build = build_dir(tmp_path, "r1", "shop", 1)
    build.mkdir(parents=True)
    (build / PARTIAL_PARSE_FILE).write_bytes(b"cache")
    keep_partial_parse(build, tmp_path)
    assert (tmp_path / PARTIAL_PARSE_FILE).read_bytes() == b"cache"
    assert partial_parse_args(tmp_path, []) == ["--partial-parse-file-path", str(tmp_path / PARTIAL_PARSE_FILE)]
    assert partial_parse_args(tmp_path, ["--no-partial-parse"]) == []
    assert partial_parse_args(tmp_path, ["--partial-parse-file-path", "x"]) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"
