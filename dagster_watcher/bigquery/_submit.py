"""Submitting one statement's BigQuery job: its labels and its ``jobs.insert``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_watcher.bigquery._state import _NodeJob
from dagster_watcher.bigquery.config import BigQueryEngineConfig
from dagster_watcher.bigquery.job_ids import LABEL_INVOCATION, LABEL_PLAN, LABEL_RUN, LABEL_STEP, _label_value
from dagster_watcher.bigquery.sql import Statement, _schema_field

if TYPE_CHECKING:
    from google.cloud.bigquery import Client


def job_labels(config: BigQueryEngineConfig, node_job: _NodeJob, run_id: str, invocation_id: str) -> dict[str, str]:
    """The labels of the job of ``node_job``'s current statement (the config's, then this engine's)."""
    labels = {_label_value(k): _label_value(v) for k, v in config.labels.items()}
    labels.update(
        {
            LABEL_RUN: _label_value(run_id),
            LABEL_PLAN: _label_value(node_job.plan or ""),
            LABEL_STEP: str(node_job.index),
            LABEL_INVOCATION: invocation_id,
            "dbt-node": _label_value(node_job.spec.unique_id.split(".")[-1]),
        }
    )
    return labels


def submit_statement(
    client: Client, config: BigQueryEngineConfig, statement: Statement, job_id: str, labels: dict[str, str]
) -> Any:
    """Insert the job of one statement (a query, or a CSV load for a seed) under ``job_id``.

    Raises whatever ``jobs.insert`` raises; ``google.api_core.exceptions.Conflict`` when the id exists."""
    from google.cloud import bigquery

    timeout_ms = int(config.job_timeout * 1000) if config.job_timeout else None
    if statement.kind == "load_seed":
        load_config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.CSV,
            skip_leading_rows=1,
            field_delimiter=statement.delimiter,
            allow_quoted_newlines=True,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            schema=[_schema_field(n, t) for n, t in statement.load_schema],
            labels=labels,
        )
        if timeout_ms:
            load_config.job_timeout_ms = timeout_ms
        data = Path(statement.load_path or "").read_bytes()
        # Seeds are small (dbt's own advice): the upload is one request, the load runs async.
        return client.load_table_from_file(
            io.BytesIO(data),
            str(statement.load_destination),
            job_id=job_id,
            job_config=load_config,
            size=len(data),
            project=config.project,
            location=config.location,
            timeout=config.api_timeout,
        )
    query_config = bigquery.QueryJobConfig(labels=labels, use_legacy_sql=False)
    if config.dataset:
        query_config.default_dataset = config.dataset if "." in config.dataset else f"{config.project}.{config.dataset}"
    if timeout_ms:
        query_config.job_timeout_ms = timeout_ms
    # job_retry=None: with our own job id, a retried query must not get a new id; a transient
    # failure of the insert call itself is retried by `retry` and ends in 409 -> re-attach.
    return client.query(
        str(statement.sql),
        job_config=query_config,
        job_id=job_id,
        job_retry=None,
        project=config.project,
        location=config.location,
        timeout=config.api_timeout,
    )
