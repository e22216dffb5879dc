"""Run the example project's watcher job end to end on DuckDB with a local Dagster instance.

    ./dev demo                          # everything succeeds (one test warns)
    ./dev demo --fail-model stg_orders  # one model fails: see its error, its skipped downstream
    ./dev demo --mode subprocess        # dbt as a child process reading its JSON log
    ./dev demo --target postgres        # on a local PostgreSQL server started for the demo (local_postgres.py)

Each model's outcome is printed as dbt finishes it; the table at the end is read back from the Dagster
instance (DAGSTER_HOME, default ./.dagster_home), i.e. what the UI shows in `dagster dev`.
"""

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fail-model", help="make this model fail (dbt var fail_model)")
    parser.add_argument("--mode", choices=["auto", "runner", "subprocess"], default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--target", choices=["dev", "postgres"], default="dev", help="dbt target (profiles.yml)")
    args = parser.parse_args()
    if args.target == "postgres":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from local_postgres import local_postgres

        os.environ["DAGSTER_WATCHER_TARGET"] = "postgres"
        with local_postgres():
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_WATCHER_INVOCATION_MODE"] = args.mode
    if args.fail_model:
        os.environ["DAGSTER_WATCHER_DBT_VARS"] = json.dumps({"fail_model": args.fail_model})

    from dagster import DagsterEventType, DagsterInstance

    spec = importlib.util.spec_from_file_location("shop_definitions", Path(__file__).with_name("definitions.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defs = module.defs

    instance = DagsterInstance.get()
    job = defs.resolve_job_def("shop_watcher_job")
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    if args.threads:
        run_config["resources"] = {"dbt_watcher": {"config": {"threads": args.threads}}}
    print(f"dagster-watcher demo: running shop_watcher_job (DAGSTER_HOME={home})", flush=True)
    result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)

    # Read every asset's outcome in this run back from the instance's event log.
    rows = []
    for key in sorted(module.shop_dbt_assets.keys, key=lambda k: k.to_user_string()):
        outcome, detail = "not run", ""
        materialized = [r for r in instance.fetch_materializations(key, limit=5).records if r.run_id == result.run_id]
        observed = [r for r in instance.fetch_observations(key, limit=5).records if r.run_id == result.run_id]
        if materialized:
            md = materialized[0].asset_materialization.metadata  # type: ignore[union-attr]
            rows_affected = md.get("dagster_watcher/rows_affected")
            outcome, detail = "materialized", f"rows={rows_affected.value}" if rows_affected else ""
        elif observed:
            md = observed[0].asset_observation.metadata  # type: ignore[union-attr]
            outcome = md["dagster_watcher/status"].value
            detail = str(md["dagster_watcher/error"].value).splitlines()[0][:100]
        rows.append((key.to_user_string(), outcome, detail))
    checks = [
        e.event_specific_data for e in result.all_events if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
    ]

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'asset'.ljust(width)}  {'outcome':13} detail")
    for name, outcome, detail in rows:
        print(f"{name.ljust(width)}  {outcome:13} {detail}")
    passed = sum(1 for c in checks if c.passed)
    print(f"\nchecks: {passed} passed, {len(checks) - passed} failed or warned, of {len(checks)}")
    print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    return 0 if result.success or args.fail_model else 1


if __name__ == "__main__":
    sys.exit(main())
