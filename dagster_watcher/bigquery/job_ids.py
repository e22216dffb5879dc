"""Deterministic job ids, console links and the labels this engine puts on its jobs."""

from __future__ import annotations

import hashlib
import re

from dagster_watcher import contract

__all__ = ["JOB_ID_MAX_LENGTH", "console_link", "make_job_id"]

#: BigQuery job ids: letters, digits, underscores and dashes, at most 1024 characters.
JOB_ID_MAX_LENGTH = 1024
_JOB_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_LABEL_BAD = re.compile(r"[^a-z0-9_-]+")

# Labels this engine puts on its own jobs. ``dw-plan`` lets a re-attaching run know which statement
# sequence a previous attempt chose (an incremental model's first run creates the table, later runs
# merge: the same job id must keep meaning the same statement). ``dw-invocation`` tells our own jobs
# from a previous invocation's when a submit answers 409.
#: Job label: the statement sequence (plan) the job belongs to.
LABEL_PLAN = contract.LABEL_PLAN
#: Job label: the index of the job's statement in its node's sequence.
LABEL_STEP = contract.LABEL_STEP
#: Job label: the engine invocation that submitted the job.
LABEL_INVOCATION = contract.LABEL_INVOCATION
#: Job label: the run id the job ids derive from.
LABEL_RUN = contract.LABEL_RUN


def _label_value(value: str) -> str:
    return _LABEL_BAD.sub("_", str(value).lower())[:63]


def make_job_id(prefix: str, run_id: str, unique_id: str, attempt: int, index: int) -> str:
    """Deterministic job id for (run_id, unique_id, attempt, statement index).

    Readable parts are sanitised to ``[A-Za-z0-9_-]``; a short hash of the raw run id and unique id
    keeps two ids apart that sanitise alike (``a.b`` vs ``a_b``). Always <= 1024 characters.

    Args:
        prefix: the engine's ``job_id_prefix`` (empty: none).
        run_id: the run the ids derive from (a resumed run passes the run it resumes).
        unique_id: the dbt node.
        attempt: the node's attempt within that run (a failed job is retried under the next one).
        index: the statement's index in the node's sequence.

    Example::

        make_job_id("dw", "run-1", "model.shop.orders", 0, 1)  # 'dw_run-1_model_shop_orders_<hash>_a0_s1'
    """
    digest = hashlib.sha1(f"{run_id}\0{unique_id}".encode()).hexdigest()[:10]
    run = _JOB_ID_BAD.sub("_", run_id)[:200]
    node = _JOB_ID_BAD.sub("_", unique_id)
    tail = f"_{digest}_a{attempt}_s{index}"
    head = f"{_JOB_ID_BAD.sub('_', prefix)}_{run}_" if prefix else f"{run}_"
    node = node[: JOB_ID_MAX_LENGTH - len(head) - len(tail)]
    return head + node + tail


def console_link(project: str, location: str | None, job_id: str) -> str:
    """The BigQuery console URL of a job (as dbt-bigquery logs it).

    Args:
        project: the project the job ran in.
        location: the job's location (``None``: ``US``).
        job_id: the job's id.

    Example::

        console_link("my-project", "EU", "dw_run-1_model_shop_orders_0123456789_a0_s0")
    """
    return (
        f"https://console.cloud.google.com/bigquery?project={project}"
        f"&j=bq:{location or 'US'}:{job_id}&page=queryresults"
    )
