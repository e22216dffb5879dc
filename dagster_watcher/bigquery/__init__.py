"""BigQuery: run dbt nodes as asynchronous BigQuery jobs from one process and one polling loop.

``dbt build`` on BigQuery holds one dbt thread per running model, and each thread blocks on its job.
BigQuery itself is asynchronous: a job is submitted, runs server-side, and can be polled, cancelled
and re-attached by its id. :class:`BigQueryEngine` takes the SQL that ``dbt compile`` produced
(:func:`compile_project`), generates the statements each materialization needs itself, and keeps
many jobs in flight, polled by one loop. :class:`BigQueryWatcherResource` is the Dagster side.

What it does that a "submit the compiled SELECT as one job" approach does not:

- every statement a materialization needs, in order, one job each: an incremental model runs the
  ``__dbt_tmp`` table, then ``MERGE`` (unique_key) or ``INSERT`` (append), then drops the temp table;
- relation names come from the manifest (``relation_name`` / database.schema.alias), so alias,
  schema and database configs are honoured;
- deterministic job ids ``f(run_id, unique_id, attempt, statement index)``: re-running a run id
  re-attaches to the jobs already submitted (BigQuery answers 409 ``Conflict``) and never runs a
  statement again whose job succeeded; a failed or cancelled job is retried under the next attempt;
- ``cancel()`` stops submitting and cancels every in-flight job;
- a node whose parent failed (or whose parent's test failed, like ``dbt build``) is never submitted
  and is reported SKIPPED with ``skipped_because``; every selected node gets exactly one terminal
  :class:`~dagster_watcher.status.NodeResult`, nothing is silently dropped.

Modules: :mod:`.config`, :mod:`.sql` (statement builders), :mod:`.job_ids`, :mod:`.graph`,
:mod:`.engine` (the engine and its job registry; one invocation's state machine is private),
:mod:`.compile` (``dbt compile`` in a subprocess running :mod:`._compile_child`), :mod:`.resource`.
Only :mod:`.resource` knows Dagster.
"""

from dagster_watcher.bigquery.compile import COMPILED_IDS_KEY, compile_project
from dagster_watcher.bigquery.config import BigQueryEngineConfig
from dagster_watcher.bigquery.engine import BigQueryEngine, JobRegistry
from dagster_watcher.bigquery.job_ids import (
    JOB_ID_MAX_LENGTH,
    LABEL_INVOCATION,
    LABEL_PLAN,
    LABEL_RUN,
    LABEL_STEP,
    console_link,
    make_job_id,
)
from dagster_watcher.bigquery.resource import (
    BigQueryResultSource,
    BigQueryWatcherResource,
    ReattachMode,
    job_run_key,
)
from dagster_watcher.bigquery.sql import COMPILE_ERROR_KEY, RENDERED_HOOKS_KEY, Statement, quote, relation_of
from dagster_watcher.errors import UnsupportedNodeError

__all__ = [
    "COMPILED_IDS_KEY",
    "COMPILE_ERROR_KEY",
    "JOB_ID_MAX_LENGTH",
    "LABEL_INVOCATION",
    "LABEL_PLAN",
    "LABEL_RUN",
    "LABEL_STEP",
    "RENDERED_HOOKS_KEY",
    "BigQueryEngine",
    "BigQueryEngineConfig",
    "BigQueryResultSource",
    "BigQueryWatcherResource",
    "JobRegistry",
    "ReattachMode",
    "Statement",
    "UnsupportedNodeError",
    "compile_project",
    "console_link",
    "job_run_key",
    "make_job_id",
    "quote",
    "relation_of",
]
