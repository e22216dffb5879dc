"""What a node job's finished BigQuery jobs say: test verdicts, messages, the adapter response."""

from __future__ import annotations

from typing import Any

from dagster_watcher._text import scrub_secrets
from dagster_watcher.bigquery._state import _NodeJob
from dagster_watcher.bigquery.job_ids import console_link
from dagster_watcher.bigquery.sql import _MAIN_KINDS
from dagster_watcher.status import NodeResult, NodeStatus


def _test_outcome(node_job: _NodeJob, api_timeout: float) -> tuple[NodeStatus, str, int | None, str | None]:
    job = node_job.done_jobs[-1]
    rows = list(job.result(timeout=api_timeout, max_results=10))
    if len(rows) != 1:
        return NodeStatus.ERROR, "error", None, f"test query returned {len(rows)} rows, expected 1"
    row = rows[0]
    failures = int(row["failures"] or 0)
    config = node_job.spec.node.get("config") or {}
    severity = str(config.get("severity") or "error").lower()
    noun = "result" if failures == 1 else "results"
    if severity == "error" and row["should_error"]:
        return (
            NodeStatus.FAIL,
            "fail",
            failures,
            f"Got {failures} {noun}, configured to fail if {config.get('error_if') or '!= 0'}",
        )
    if row["should_warn"]:
        return (
            NodeStatus.WARN,
            "warn",
            failures,
            f"Got {failures} {noun}, configured to warn if {config.get('warn_if') or '!= 0'}",
        )
    return NodeStatus.SUCCESS, "pass", failures, None


def _adapter_response(node_job: _NodeJob, default_location: str | None) -> dict[str, Any]:
    jobs = node_job.done_jobs
    last = jobs[-1]
    main = _main_job(node_job) or last
    location = last.location or default_location or "US"
    bytes_processed = sum(int(getattr(j, "total_bytes_processed", None) or 0) for j in jobs)
    bytes_billed = sum(int(getattr(j, "total_bytes_billed", None) or 0) for j in jobs)
    slot_ms = sum(int(getattr(j, "slot_millis", None) or 0) for j in jobs)
    rows = getattr(main, "num_dml_affected_rows", None)
    if rows is None and getattr(main, "output_rows", None) is not None:
        rows = main.output_rows
    return {
        "_message": _success_message(main),
        "code": _statement_type(main),
        "statement_type": _statement_type(main),
        "rows_affected": rows,
        "bytes_processed": bytes_processed,
        "bytes_billed": bytes_billed,
        "slot_ms": slot_ms,
        "location": location,
        "project_id": last.project,
        "job_id": last.job_id,
        "job_ids": [j.job_id for j in jobs],
        "job_link": console_link(last.project, location, last.job_id),
        "plan": node_job.plan,
        "statements": [s.kind for s in node_job.statements[: len(jobs)]],
        "attempt": node_job.attempt,
        "reattached": node_job.reattached,
    }


def _main_job(node_job: _NodeJob) -> Any:
    """The job that did the node's work: the MERGE/INSERT of an incremental, the CREATE of a table
    or view, the load of a seed (not a hook, not the temp table). Else the last job."""
    jobs = node_job.done_jobs
    if not jobs:
        return None
    main = [job for statement, job in zip(node_job.statements, jobs, strict=False) if statement.kind in _MAIN_KINDS]
    return main[-1] if main else jobs[-1]


def _statement_type(job: Any) -> str | None:
    if getattr(job, "job_type", None) == "load":
        return "LOAD"
    return getattr(job, "statement_type", None)


def _success_message(job: Any) -> str | None:
    if job is None:
        return None
    kind = _statement_type(job) or "OK"
    rows = getattr(job, "num_dml_affected_rows", None)
    if rows is None:
        rows = getattr(job, "output_rows", None)
    processed = int(getattr(job, "total_bytes_processed", None) or 0)
    return f"{kind} ({rows if rows is not None else '-'} rows, {processed} bytes processed)"


def _job_error_message(job: Any) -> str:
    """The job's own error text: errorResult first, then any further distinct errors."""
    result = job.error_result or {}
    parts = [result.get("message") or result.get("reason") or "BigQuery job failed"]
    for error in job.errors or []:
        text = error.get("message")
        if text and text not in parts:
            parts.append(text)
    reason = result.get("reason")
    return "; ".join(parts) + (f" (reason: {reason}, job {job.job_id})" if reason else f" (job {job.job_id})")


def _node_result(
    node_job: _NodeJob,
    status: NodeStatus,
    dbt_status: str,
    *,
    message: str | None,
    failures: int | None,
    skipped_because: tuple[str, ...],
    run_id: str,
    default_location: str | None,
) -> NodeResult:
    """The terminal result of a node job, from its finished jobs."""
    node = node_job.spec.node
    jobs = node_job.done_jobs
    started = min((j.started for j in jobs if j.started), default=None)
    ended = max((j.ended for j in jobs if j.ended), default=None)
    return NodeResult(
        unique_id=node_job.spec.unique_id,
        resource_type=node_job.spec.resource_type,
        status=status,
        dbt_status=dbt_status,
        # BigQuery echoes SQL and values in its errors: masked like dbt's text.
        message=scrub_secrets(message) if message else message,
        execution_time=(ended - started).total_seconds() if started and ended else None,
        adapter_response=_adapter_response(node_job, default_location) if jobs else {},
        failures=failures,
        compiled_code=node.get("compiled_code"),
        relation_name=node.get("relation_name") if node_job.spec.resource_type != "test" else None,
        started_at=started,
        completed_at=ended,
        thread="bigquery-async",
        invocation_id=run_id,
        skipped_because=skipped_because,
    )
