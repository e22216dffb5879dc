"""``python .../dagster_watcher/invocation/_dbt_entry.py <dbt args>``: the `dbt` command of subprocess
mode when the build fetches runtime metadata.

It runs dbt's own ``dbtRunner`` over the arguments exactly as the `dbt` CLI would (same JSON log on
stdout, same exit codes: 0 all good, 1 some nodes failed, 2 dbt itself failed), plus dagster-watcher's
metadata fetcher (``_fetch``), which reads each built node's row count and columns through dbt's own
adapter, in this process, and logs the facts as one dbt ``Note`` event per node: a JSON log line
like any other, written by dbt's logger (so it is never interleaved with dbt's lines), which the
producer recognises by ``FACTS_PREFIX``. The fetch plan is the JSON file named by ``PLAN_ENV``.

It runs as a script, importing only the dbt-side modules of dagster-watcher (not the package, whose
``__init__`` imports Dagster: seconds of start-up a dbt process has no use for). Only the dbt
installed beside dagster-watcher can run this way; a ``dbt_executable`` in another environment runs
without fetching (the resource says so in the step log).
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _log_facts(facts: dict[str, Any]) -> None:
    from dbt_common.events.functions import fire_event
    from dbt_common.events.types import Note

    from dagster_watcher.invocation._fetch import FACTS_PREFIX

    fire_event(Note(msg=FACTS_PREFIX + json.dumps(facts, default=str)))


def main(argv: Sequence[str]) -> int:
    """Run dbt with ``argv`` (as ``dbt <argv>``) and the fetcher; return dbt's exit code."""
    from dbt.cli.main import dbtRunner

    from dagster_watcher.invocation._fetch import PLAN_ENV, FetchPlan, MetadataFetcher

    plan_file = os.environ.get(PLAN_ENV)
    fetcher = MetadataFetcher(FetchPlan.from_json(Path(plan_file).read_text()), _log_facts) if plan_file else None
    result: Any = None
    try:
        result = dbtRunner(callbacks=[fetcher.observe] if fetcher is not None else []).invoke(list(argv))
    finally:
        if fetcher is not None:
            if result is None or result.exception is not None:
                fetcher.stop()
            else:
                fetcher.finish()
    if result.exception is not None:
        # dbt logged what it could; a usage error it did not log still reaches the producer's tail.
        print(f"dbt failed: {type(result.exception).__name__}: {result.exception}", file=sys.stderr, flush=True)
        return 2
    return 0 if result.success else 1


def _bare_packages() -> None:
    """Make ``dagster_watcher.invocation._fetch`` importable without running the packages' ``__init__``."""
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        del sys.path[0]  # a script's folder comes first on sys.path: never shadow a module by `base`...
    for name, folder in (("dagster_watcher", here.parent), ("dagster_watcher.invocation", here)):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [os.fspath(folder)]
            sys.modules[name] = package


if __name__ == "__main__":
    _bare_packages()
    sys.exit(main(sys.argv[1:]))
