"""Where a build writes its dbt artifacts: one folder per run and step attempt under the configured
target path, so two builds at once (a retry beside a partial build, two code locations, a resumed
run) never overwrite each other's ``run_results.json``, compiled SQL or timeline.

Layout under the resource's ``target_path`` (the manifest the definitions load lives elsewhere and is
never written)::

    <target_path>/
        partial_parse.msgpack          # dbt's parse cache, shared between builds (replaced atomically)
        runs/<run_id>/<step>-<attempt>/
            run_results.json, manifest.json, compiled/, run/, dagster_watcher_timeline.svg,
            selection/ (dbt ls), freshness/ (dbt source freshness)

Retention keeps the ``keep_runs`` newest run folders (by modification time, the current run's
included) and never removes the folder of a run that is still in progress.

Example::

    from dagster_watcher.artifacts import build_dirs_of_run

    latest = build_dirs_of_run(Path("target/dagster_watcher"), run_id)[-1]
    results = json.loads((latest / "run_results.json").read_text())
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

#: The folder under the target path that holds one folder per run.
RUNS_DIR = "runs"
#: dbt's parse cache file (dbt's own name for it).
PARTIAL_PARSE_FILE = "partial_parse.msgpack"


def safe_name(value: str) -> str:
    """``value`` as one path component: letters, digits and ``-_.``, everything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)[:200] or "_"


def build_dir(root: Path, run_id: str, step_key: str, attempt: int) -> Path:
    """The folder of one step attempt of one run: ``<root>/runs/<run_id>/<step_key>-<attempt>``.

    Args:
        root: the resource's resolved target path.
        run_id: the Dagster run id.
        step_key: the producer step (its op's name).
        attempt: 1 for the step's first attempt, 2 for its first in-step retry, ...
    """
    return root / RUNS_DIR / safe_name(run_id) / f"{safe_name(step_key)}-{attempt}"


def build_dirs_of_run(root: Path, run_id: str) -> list[Path]:
    """Every build folder of ``run_id`` under ``root``, oldest attempt first (empty when none is left).

    Args:
        root: the resource's resolved target path.
        run_id: the Dagster run id.
    """
    run_dir = root / RUNS_DIR / safe_name(run_id)
    if not run_dir.is_dir():
        return []

    def attempt(path: Path) -> tuple[int, str]:
        head, _, tail = path.name.rpartition("-")
        return (int(tail), head) if tail.isdigit() else (0, path.name)

    return sorted((p for p in run_dir.iterdir() if p.is_dir()), key=attempt)


def prune_runs(root: Path, keep: int, *, in_progress: Callable[[str], bool], current: str | None = None) -> list[Path]:
    """Remove the run folders under ``root/runs`` beyond the ``keep`` newest (by modification time).

    Never removes ``current`` (the run that is pruning) nor a run for which ``in_progress(run_id)`` is
    true. Folders that cannot be removed are left for the next build.

    Args:
        root: the resource's resolved target path.
        keep: how many run folders to keep (at least 1).
        in_progress: whether the run named by a folder is still queued or running.
        current: the folder name of the run that is pruning.

    Returns:
        The folders removed.
    """
    runs_root = root / RUNS_DIR
    if not runs_root.is_dir():
        return []
    found: list[tuple[float, Path]] = []
    for folder in runs_root.iterdir():
        with contextlib.suppress(OSError):
            if folder.is_dir():
                found.append((folder.stat().st_mtime, folder))
    found.sort(key=lambda item: item[0], reverse=True)
    removed = []
    for _, folder in found[max(keep, 1) :]:
        if folder.name == current or in_progress(folder.name):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def partial_parse_args(root: Path, user_flags: Sequence[str]) -> list[str]:
    """``--partial-parse-file-path`` to the parse cache shared by every build under ``root``, when one
    exists and the user did not choose a cache (or turn partial parsing off) in their own flags.

    dbt reads its parse cache from the target path by default; with a folder per build that would be a
    full parse every time a build has to parse (subprocess mode, or runner mode with a stale manifest).
    dbt checks the cache against the project, profile and vars itself, and re-parses if it does not fit.
    """
    shared = root / PARTIAL_PARSE_FILE
    if not shared.is_file() or any(f in user_flags for f in ("--partial-parse-file-path", "--no-partial-parse")):
        return []
    return ["--partial-parse-file-path", os.fspath(shared)]


def keep_partial_parse(build: Path, root: Path) -> None:
    """Make the parse cache a build wrote the shared one (an atomic replace: a build starting at the
    same time reads the old file or the new one, never half of one)."""
    written = build / PARTIAL_PARSE_FILE
    if not written.is_file():
        return
    fd, temporary = tempfile.mkstemp(dir=root, prefix=f".{PARTIAL_PARSE_FILE}.")
    os.close(fd)
    try:
        shutil.copyfile(written, temporary)
        os.replace(temporary, root / PARTIAL_PARSE_FILE)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
