"""One artifact folder per run (issue 14 item 4): each build writes dbt's artifacts under
``<target_path>/runs/<run_id>/<step>-<attempt>``, old run folders are pruned by ``keep_runs``, and the
manifest the definitions load is never written. Real dbt on DuckDB, a real SQLite instance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dagster import AssetKey, AssetsDefinition, DagsterInstance
from dagster_dbt import DbtProject

from dagster_watcher.artifacts import RUNS_DIR, build_dirs_of_run
from dagster_watcher.timeline import TIMELINE_FILE

from ..support import run_watcher

#: A small part of the project per build (the seeds): the test is about folders, not about dbt.
SEEDS = [AssetKey("raw_customers"), AssetKey("raw_orders")]


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_each_run_writes_its_own_folder_and_the_oldest_is_pruned(
    shop_assets: AssetsDefinition, shop_project: DbtProject, tmp_path: Path
) -> None:
    manifest = Path(shop_project.manifest_path)
    before = _fingerprint(manifest)
    (tmp_path / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "dagster_home"))

    def build(**config: object):  # type: ignore[no-untyped-def]
        run = run_watcher(shop_assets, tmp_path, instance=instance, selection=SEEDS, keep_runs=2, **config)
        assert run.result.success
        return run

    first, second = build(), build(mode="subprocess")
    runs = tmp_path / "dbt_target" / RUNS_DIR
    assert sorted(p.name for p in runs.iterdir()) == sorted([first.run_id, second.run_id])
    for run in (first, second):
        (folder,) = build_dirs_of_run(run.target_path, run.run_id)
        assert folder == runs / run.run_id / "shop-1", "named by run, step and attempt"
        results = json.loads((folder / "run_results.json").read_text())["results"]
        assert {r["unique_id"] for r in results} == {"seed.shop.raw_customers", "seed.shop.raw_orders"}
        assert (folder / TIMELINE_FILE).is_file(), "the timeline beside its run_results.json"
        assert (folder / "compiled").is_dir() or (folder / "run").is_dir()
    # The parse cache a subprocess build wrote is kept for the next build that must parse.
    assert (tmp_path / "dbt_target" / "partial_parse.msgpack").is_file()

    third = build()
    assert sorted(p.name for p in runs.iterdir()) == sorted([second.run_id, third.run_id]), (
        "keep_runs=2: the oldest run's folder is removed when the third build starts"
    )
    assert build_dirs_of_run(first.target_path, first.run_id) == []
    assert _fingerprint(manifest) == before, "the definitions' manifest is never written by a build"
