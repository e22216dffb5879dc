"""BigQuery async resource vs running the models one by one, against a local BigQuery-API server.

Not a test. A generated dbt project of N independent slow models (CPU-bound CTAS queries on the
local server), compiled once, then built two ways on the same server:

- ``async``: ``@dbt_watcher_assets`` + ``BigQueryWatcherResource`` through Dagster ``materialize()``:
  every model's job submitted as soon as a slot is free, all polled from the op's thread.
- ``sequential``: what one task per model does: for each model, submit its job with the official
  client and wait for it (``job.result()``) before the next one.

Reported per variant: wall time of the job phase (first job created to last job ended, from the
server's own timestamps), the client's wall time, the sum of the jobs' run times and the overlap
(sum / job phase). The async variant's end-to-end time also includes its ``dbt compile`` (paid once
per run), shown separately. The ratio is sequential / async over the job phase and end to end.

    .venv/bin/python benchmarks/bench_bigquery.py                      # 50 models, slow_n 700
    .venv/bin/python benchmarks/bench_bigquery.py --models 50 --slow-n 60 --max-jobs 50   # latency-bound

The local server runs at most 8 jobs at once (the 9th waits PENDING) and every query competes for
this machine's CPUs: CPU-bound jobs cannot run faster than ``cores`` at a time, whatever the client
does. On BigQuery itself a job runs on Google's slots, and the client's concurrency is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dagster import AssetExecutionContext, DagsterInstance, materialize  # noqa: E402
from dagster_dbt import DbtProject  # noqa: E402

from dagster_watcher import BigQueryWatcherResource, dbt_watcher_assets  # noqa: E402
from dagster_watcher.bigquery import compile_project  # noqa: E402
from dagster_watcher.project import prepare_manifest  # noqa: E402
from tests.support.bigquery import server as bigquery_server  # noqa: E402


def generate_project(root: Path, models: int, slow_n: int) -> Path:
    """A dbt project with ``models`` independent table models, each one slow CPU-bound query."""
    project = root / "bq_slow"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: bq_slow\nversion: '1.0'\nconfig-version: 2\nprofile: bq_slow\nmodel-paths: ['models']\n"
        "models:\n  bq_slow:\n    +materialized: table\n"
    )
    (project / "profiles.yml").write_text(
        "bq_slow:\n  target: local\n  outputs:\n    local:\n      type: bigquery\n      method: oauth-secrets\n"
        "      token: dummy\n      project: \"{{ env_var('BQ_PROJECT') }}\"\n"
        "      dataset: \"{{ env_var('BQ_DATASET') }}\"\n      location: US\n"
        "      api_endpoint: \"{{ env_var('BQ_API_ENDPOINT') }}\"\n      job_retries: 0\n      threads: 8\n"
    )
    tenth = max(1, slow_n // 10)
    for i in range(models):
        (project / "models" / f"slow_{i:03d}.sql").write_text(
            f"select {i} as k, sum(mod(a * b + c, 7)) as s\n"
            f"from unnest(generate_array(1, {slow_n})) a\n"
            f"cross join unnest(generate_array(1, {slow_n})) b\n"
            f"cross join unnest(generate_array(1, {tenth})) c\n"
        )
    return project


def job_phase(jobs: list[Any]) -> dict[str, float]:
    created = min(j.created for j in jobs)
    ended = max(j.ended for j in jobs)
    busy = sum((j.ended - j.started).total_seconds() for j in jobs)
    phase = (ended - created).total_seconds()
    return {"job_phase_s": phase, "sum_job_s": busy, "overlap": busy / phase if phase else 0.0}


def run_async(project: DbtProject, server: Any, dataset: str, max_jobs: int, target: Path) -> dict[str, Any]:
    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def bq_slow(context: AssetExecutionContext, bigquery_watcher: BigQueryWatcherResource) -> Iterator[Any]:
        yield from bigquery_watcher.build(context)

    resource = BigQueryWatcherResource(
        project_dir=project,
        project=server.project,
        location="US",
        api_endpoint=server.url,
        max_concurrent_jobs=max_jobs,
        poll_interval=0.5,
        dbt_env={"BQ_DATASET": dataset},
        target_path=str(target / "compile"),
        progress=False,
    )
    began = time.monotonic()
    with DagsterInstance.ephemeral() as instance:
        result = materialize([bq_slow], resources={"bigquery_watcher": resource}, instance=instance)
        wall = time.monotonic() - began
        assert result.success
        compile_s = None
        job_ids = []
        for record in instance.all_logs(result.run_id):
            message = record.user_message or ""
            if "dbt compile of" in message:
                compile_s = float(message.rsplit(" in ", 1)[1].rstrip("s"))
            event = record.dagster_event
            if event is not None and event.event_type_value == "ASSET_MATERIALIZATION":
                job_ids.append(event.event_specific_data.materialization.metadata["job_id"].value)  # type: ignore[union-attr]
    client = server.client()
    jobs = [client.get_job(j) for j in job_ids]
    return {"end_to_end_s": wall, "compile_s": compile_s, "jobs": len(jobs), **job_phase(jobs)}


def run_sequential(manifest: dict[str, Any], server: Any, dataset: str) -> dict[str, Any]:
    """One model at a time: submit its CTAS, wait for it, then the next (one task per model)."""
    client = server.client()
    client.create_dataset(f"{server.project}.{dataset}", exists_ok=True)
    nodes = sorted((u, n) for u, n in manifest["nodes"].items() if n["resource_type"] == "model")
    run = uuid.uuid4().hex[:8]
    jobs = []
    began = time.monotonic()
    for _unique_id, node in nodes:
        target = f"`{server.project}`.`{dataset}`.`{node['alias']}`"
        sql = f"create or replace table {target}\nas (\n{node['compiled_code']}\n)"
        job = client.query(sql, job_id=f"seq_{run}_{node['name']}", job_retry=None)
        job.result()
        jobs.append(job)
    wall = time.monotonic() - began
    return {"end_to_end_s": wall, "jobs": len(jobs), **job_phase(jobs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--slow-n", type=int, default=700, help="size of each model's CPU-bound query")
    parser.add_argument("--max-jobs", type=int, default=8, help="max_concurrent_jobs of the async resource")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="bench-bq-") as tmp, bigquery_server.running_server() as server:
        root = Path(tmp)
        os.environ.update({"BQ_PROJECT": server.project, "BQ_DATASET": "bench_parse", "BQ_API_ENDPOINT": server.url})
        project_dir = generate_project(root, args.models, args.slow_n)
        project = DbtProject(project_dir=project_dir, profiles_dir=project_dir, target_path=root / "parse")
        prepare_manifest(project)
        print(f"server {server.url}; {args.models} models, slow_n={args.slow_n}; cores={os.cpu_count()}", flush=True)

        # One job alone, for scale.
        client = server.client()
        probe = client.query(
            (project_dir / "models" / "slow_000.sql").read_text(),
            job_id=f"probe_{uuid.uuid4().hex[:8]}",
            job_retry=None,
        )
        probe.result()
        single = (probe.ended - probe.started).total_seconds()
        print(f"one model alone: {single:.2f}s", flush=True)

        asynchronous = run_async(project, server, "bench_async", args.max_jobs, root)
        print(f"async      : {json.dumps(asynchronous)}", flush=True)

        manifest = compile_project(
            project_dir, profiles_dir=project_dir, target_path=root / "seq_compile", env={"BQ_DATASET": "bench_seq"}
        )
        sequential = run_sequential(manifest, server, "bench_seq")
        print(f"sequential : {json.dumps(sequential)}", flush=True)

    ratio_jobs = sequential["job_phase_s"] / asynchronous["job_phase_s"]
    ratio_total = sequential["end_to_end_s"] / asynchronous["end_to_end_s"]
    print()
    print("| variant | end to end (s) | job phase (s) | sum of job run times (s) | overlap |")
    print("|---|---|---|---|---|")
    print(
        f"| async resource (max_concurrent_jobs={args.max_jobs}) | {asynchronous['end_to_end_s']:.1f} "
        f"(compile {asynchronous['compile_s']:.1f}) | {asynchronous['job_phase_s']:.1f} | "
        f"{asynchronous['sum_job_s']:.1f} | {asynchronous['overlap']:.2f} |"
    )
    print(
        f"| one by one (submit, wait) | {sequential['end_to_end_s']:.1f} | {sequential['job_phase_s']:.1f} | "
        f"{sequential['sum_job_s']:.1f} | {sequential['overlap']:.2f} |"
    )
    print(
        f"\nratio sequential/async: job phase {ratio_jobs:.2f}x, end to end {ratio_total:.2f}x "
        f"(one model alone {single:.2f}s, {os.cpu_count()} cores)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "single_s": single,
                    "async": asynchronous,
                    "sequential": sequential,
                    "ratio_job_phase": ratio_jobs,
                    "ratio_end_to_end": ratio_total,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
