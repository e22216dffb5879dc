"""The producer/consumer contract: every tag, metadata key, run key, name and label dagster-watcher
writes, and the functions that encode what the producer writes and decode what the consumers read.

Both sides import from here and nowhere else, so they cannot disagree. Keys dagster-dbt already
defines are dagster-dbt's own constants.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster import AssetCheckKey, AssetKey, AssetsDefinition, MetadataValue
from dagster_dbt.asset_utils import (
    DAGSTER_DBT_EXCLUDE_METADATA_KEY,
    DAGSTER_DBT_SELECT_METADATA_KEY,
    DAGSTER_DBT_SELECTOR_METADATA_KEY,
    DAGSTER_DBT_UNIQUE_ID_METADATA_KEY,
)

from .status import NodeStatus, is_test

# -- definition metadata and op tags -----------------------------------------------------------------

#: Asset/check spec metadata naming the dbt node (dagster-dbt writes it on every spec).
SPEC_UNIQUE_ID_KEY = DAGSTER_DBT_UNIQUE_ID_METADATA_KEY
#: Op tags dagster-dbt puts on a ``@dbt_assets`` op: the definition's own dbt selection.
SELECT_TAG = DAGSTER_DBT_SELECT_METADATA_KEY
EXCLUDE_TAG = DAGSTER_DBT_EXCLUDE_METADATA_KEY
SELECTOR_TAG = DAGSTER_DBT_SELECTOR_METADATA_KEY

#: Every tag and key of the watcher's own starts with this; users' op tags may not.
RESERVED_TAG_PREFIX = "dagster_watcher/"
#: Op tag that marks a dagster-watcher producer (consumer sensors and retries look for it).
PRODUCER_TAG = "dagster_watcher/producer"
#: Op tag carrying the WatcherRetryPolicy's non-retryable patterns (JSON), read by the producer.
NON_RETRYABLE_TAG = "dagster_watcher/non_retryable"

# -- run tags --------------------------------------------------------------------------------------

#: Written by the producer once per step: where its process lives (consumers check liveness).
PID_TAG = "dagster_watcher/pid"
HOST_TAG = "dagster_watcher/host"
#: Refreshed by the producer's writer while it builds (unix seconds): a run whose heartbeat is older
#: than the consumers' timeout is dead, whatever host it runs on.
HEARTBEAT_TAG = "dagster_watcher/heartbeat"
#: Written on retry runs launched by consumer sensors.
RETRY_OF_TAG = "dagster_watcher/retry_of"
ATTEMPT_TAG = "dagster_watcher/attempt"
#: Written on downstream runs launched by consumer sensors.
UPSTREAM_TAG = "dagster_watcher/upstream"
UPSTREAM_RUN_TAG = "dagster_watcher/upstream_run"

# -- event metadata ---------------------------------------------------------------------------------

#: The node's normalised :class:`NodeStatus` (on every node event).
STATUS_KEY = "dagster_watcher/status"
#: dbt's error text, or the sentence saying why the node did not succeed.
ERROR_KEY = "dagster_watcher/error"
#: unique_ids of the failed upstream nodes that made dbt skip the node.
SKIPPED_BECAUSE_KEY = "dagster_watcher/skipped_because"
#: Why dbt's selection left the node out (the flag, selector or stale source), on ``not_selected``.
REASON_KEY = "dagster_watcher/reason"
#: On observations about a *test's* verdict (a test without an asset check, a unit test, a check that
#: was not selected): the test's name. Such an observation says nothing about its asset's own outcome.
TEST_KEY = "dagster_watcher/test"
#: A microbatch model's failed batches, on a partial success.
FAILED_BATCHES_KEY = "dagster_watcher/failed_batches"
#: The dbt unique_id (on every node event).
UNIQUE_ID_KEY = "unique_id"
DBT_STATUS_KEY = "dagster_watcher/dbt_status"
INVOCATION_ID_KEY = "invocation_id"
EXECUTION_DURATION_KEY = "dagster_watcher/execution_duration"
STARTED_AT_KEY = "dagster_watcher/started_at"
COMPLETED_AT_KEY = "dagster_watcher/completed_at"
FAILURE_COUNT_KEY = "dagster_watcher/failure_count"
ADAPTER_RESPONSE_KEY = "dagster_watcher/adapter_response"
ROWS_AFFECTED_KEY = "dagster_watcher/rows_affected"
RELATION_NAME_KEY = "dagster_watcher/relation_name"
COMPILED_SQL_KEY = "dagster_watcher/compiled_sql"

#: dagster-dbt's own event metadata keys (``DbtCliEventMessage``), written under its names on the
#: events dagster-dbt would emit (materializations, check results, test observations) so code written
#: against dagster-dbt's events reads them unchanged. ``unique_id``/``invocation_id`` are shared above;
#: ours (``execution_duration``, ``dbt_status``, ``failure_count``) stay beside them.
DBT_EXECUTION_DURATION_KEY = "Execution Duration"
DBT_NODE_STATUS_KEY = "status"
DBT_FAILED_ROW_COUNT_KEY = "dagster_dbt/failed_row_count"
#: Dagster's table metadata keys (``TableMetadataSet``) dagster-dbt writes: the relation (also on
#: the asset's definition; ``dagster/relation_identifier`` is its legacy name), and with
#: ``fetch_row_counts`` the row count and the storage kind (the dbt adapter type).
TABLE_NAME_KEY = "dagster/table_name"
LEGACY_TABLE_NAME_KEY = "dagster/relation_identifier"
ROW_COUNT_KEY = "dagster/row_count"
STORAGE_KIND_KEY = "dagster/storage_kind"

# -- labels on BigQuery jobs ------------------------------------------------------------------------

#: Which statement sequence a node's attempt chose (re-attaching keeps a job id's meaning).
LABEL_PLAN = "dw-plan"
#: The statement's index in that sequence.
LABEL_STEP = "dw-step"
#: Which invocation submitted the job (tells our own jobs from a previous invocation's on a 409).
LABEL_INVOCATION = "dw-invocation"
#: The Dagster run the job belongs to.
LABEL_RUN = "dw-run"

# -- names and run keys -----------------------------------------------------------------------------


_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_]")


def dagster_name(text: str) -> str:
    """A valid Dagster name (letters, digits, underscores) for any text, stable and unique: text that
    is already valid stays as it is; otherwise the invalid characters become ``_`` and a short hash of
    the original keeps ``staging.customers`` and ``staging_customers`` apart."""
    cleaned = _INVALID_NAME_CHARS.sub("_", text)
    if cleaned == text:
        return text
    return f"{cleaned}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def key_slug(key: AssetKey) -> str:
    """A Dagster-valid, stable name fragment for an asset key (any name dbt allows: dots, dashes)."""
    return dagster_name("__".join(key.path))


def sensor_name(key: AssetKey) -> str:
    """The consumer sensor of one asset: ``watch_<asset key>``."""
    return "watch_" + key_slug(key)


def retry_job_name(assets: AssetsDefinition) -> str:
    """Name of the job consumer sensors launch re-materializations with."""
    return f"{assets.node_def.name}__watcher_retry"


def downstream_job_name(key: AssetKey) -> str:
    """Name of the job made for an asset selection attached downstream of ``key``."""
    return f"{key_slug(key)}__downstream"


def retry_run_key(run_id: str, partitions: tuple[str, str] | None = None) -> str:
    """One retry per failed run (per range of its failed partitions, for a partitioned run): a sensor
    tick evaluated twice launches nothing twice."""
    if partitions is None:
        return f"dagster_watcher_retry:{run_id}"
    first, last = partitions
    return f"dagster_watcher_retry:{run_id}:{first if first == last else f'{first}...{last}'}"


def downstream_run_key(key: AssetKey, materialization_storage_id: int, job_name: str) -> str:
    """One downstream run per job per materialization (per upstream run's newest materialization, for
    the materializations of a partitioned run)."""
    return f"{sensor_name(key)}:{materialization_storage_id}:{job_name}"


def downstream_run_tags(key: AssetKey, upstream_run_id: str) -> dict[str, str]:
    return {UPSTREAM_TAG: key.to_user_string(), UPSTREAM_RUN_TAG: upstream_run_id}


def retry_run_tags(failed_run_id: str, attempt: int) -> dict[str, str]:
    return {RETRY_OF_TAG: failed_run_id, ATTEMPT_TAG: str(attempt)}


def attempt_of(tags: Mapping[str, str]) -> int:
    """How many consumer retries led to the run with these tags (0 for a run nobody retried)."""
    try:
        return int(tags.get(ATTEMPT_TAG, "0"))
    except ValueError:
        return 0


# -- encode / decode --------------------------------------------------------------------------------


def encode_non_retryable(patterns: tuple[str, ...]) -> str:
    return json.dumps(list(patterns))


def decode_non_retryable(tags: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The non-retryable patterns an op was defined with, or None when it was given no policy."""
    raw = tags.get(NON_RETRYABLE_TAG)
    return tuple(json.loads(raw)) if raw else None


def liveness_tags(pid: int, host: str) -> dict[str, str]:
    return {PID_TAG: str(pid), HOST_TAG: host}


def liveness_from_tags(tags: Mapping[str, str]) -> tuple[int, str] | None:
    """(pid, host) the producer recorded, or None when it recorded none (or a malformed one)."""
    pid, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if not pid or not host:
        return None
    try:
        return int(pid), host
    except ValueError:
        return None


def heartbeat_tags(now: float) -> dict[str, str]:
    return {HEARTBEAT_TAG: f"{now:.3f}"}


def heartbeat_from_tags(tags: Mapping[str, str]) -> float | None:
    """Unix time of the producer's last heartbeat, or None when it wrote none (or a malformed one)."""
    raw = tags.get(HEARTBEAT_TAG)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def unwrap_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Stored metadata (``MetadataValue``s) as plain values."""
    return {k: v.value if isinstance(v, MetadataValue) else v for k, v in metadata.items()}


@dataclass(frozen=True)
class RecordedOutcome:
    """What the producer recorded for one node that did not materialize, as the consumers read it."""

    status: NodeStatus
    error: str | None = None
    skipped_because: tuple[str, ...] = ()
    reason: str | None = None
    """Why dbt's selection left the node out (``not_selected`` only)."""
    test: str | None = None
    """Set when the record is a test's verdict observed on this asset, not the asset's own outcome."""

    @property
    def skipped_by_test(self) -> bool:
        """dbt skipped the node because a data or unit *test* failed (re-running it would build on data
        a test rejected, or with logic a unit test rejected)."""
        return self.status is NodeStatus.SKIPPED and any(is_test(u) for u in self.skipped_because)


def recorded_outcome(metadata: Mapping[str, Any] | None, *, include_tests: bool = False) -> RecordedOutcome | None:
    """Decode the watcher's metadata on an event; None when the event is not the watcher's, or (unless
    ``include_tests``) when it is a test's verdict rather than the asset's own outcome."""
    if not metadata or STATUS_KEY not in metadata:
        return None
    if TEST_KEY in metadata and not include_tests:
        return None
    values = unwrap_metadata(metadata)
    status = NodeStatus.parse(values[STATUS_KEY])
    if status is None:
        return None
    error = values.get(ERROR_KEY)
    causes = values.get(SKIPPED_BECAUSE_KEY)
    return RecordedOutcome(
        status=status,
        error=str(error) if error is not None else None,
        skipped_because=tuple(str(c) for c in causes) if isinstance(causes, list | tuple) else (),
        reason=str(values[REASON_KEY]) if values.get(REASON_KEY) is not None else None,
        test=str(values[TEST_KEY]) if values.get(TEST_KEY) is not None else None,
    )


# -- asset <-> dbt node ----------------------------------------------------------------------------


def unique_id_of_asset(assets: AssetsDefinition, key: AssetKey) -> str:
    return str(assets.get_asset_spec(key).metadata[SPEC_UNIQUE_ID_KEY])


def unique_id_of_check(assets: AssetsDefinition, check_key: AssetCheckKey) -> str | None:
    value = (assets.get_spec_for_check_key(check_key).metadata or {}).get(SPEC_UNIQUE_ID_KEY)
    return str(value) if value else None


def unique_ids_by_asset_key(assets: AssetsDefinition) -> dict[AssetKey, str]:
    return {key: unique_id_of_asset(assets, key) for key in assets.keys}


# -- producer process and interruption ------------------------------------------------------------

#: Written by the producer when dbt starts: the process that actually runs dbt (a forked child or a
#: `dbt` process; the step's own pid when dbt runs in a thread of it). It dies with the step process.
DBT_PID_TAG = "dagster_watcher/dbt_pid"

#: The error text on every planned node without an outcome when the run was terminated (consumers
#: tell a user's stop from a failure by it).
RUN_TERMINATED = "run terminated"


def dbt_process_tags(pid: int) -> dict[str, str]:
    return {DBT_PID_TAG: str(pid)}


# -- the producer's retry coordinator --------------------------------------------------------------


def retry_sensor_name(assets: AssetsDefinition) -> str:
    """The one sensor per producer that decides each failed run's retry batch."""
    return "watcher_retries_" + dagster_name(assets.node_def.name)


#: Dagster system tags a retry or downstream run keeps from the run it follows (its partition, where
#: and how it runs); every other ``dagster/`` tag is about the original run itself (its run key,
#: sensor, backfill, failure reason) and the watcher's own tags describe that run's process.
_CARRIED_SYSTEM_TAGS = frozenset(
    {
        "dagster/partition",
        "dagster/partition_set",
        "dagster/asset_partition_range_start",
        "dagster/asset_partition_range_end",
        "dagster/priority",
        "dagster/max_runtime",
        "dagster/isolation",
        "dagster/concurrency_key",
    }
)
_CARRIED_PREFIXES = ("dagster/partition/", ".dagster/pool/")


def carried_run_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags of a run that the runs it leads to (retries, downstream jobs) carry: user tags
    (``dagster-k8s/config``, team labels...), partition key or range, priority, pools and concurrency
    keys; never the watcher's own liveness/heartbeat/retry tags nor Dagster's per-run bookkeeping."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        if key.startswith("dagster_watcher/"):
            continue
        if key.startswith(("dagster/", ".dagster/")):
            if key not in _CARRIED_SYSTEM_TAGS and not key.startswith(_CARRIED_PREFIXES):
                continue
        out[key] = value
    return out


# -- partitions of runs ---------------------------------------------------------------------------

#: Dagster's run tags for a run's partition, or its range of partitions (a single-run backfill).
PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
_PARTITION_TAGS = frozenset({PARTITION_TAG, PARTITION_RANGE_START_TAG, PARTITION_RANGE_END_TAG})


def partition_span(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(first, last) partition key of a run (the same key twice for one partition), None when it
    is not partitioned."""
    start, end = tags.get(PARTITION_RANGE_START_TAG), tags.get(PARTITION_RANGE_END_TAG)
    if start and end:
        return start, end
    key = tags.get(PARTITION_TAG)
    return (key, key) if key else None


def without_partition_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` for a run that gets its own partition (a retry of some partitions, a downstream run)."""
    return {k: v for k, v in tags.items() if k not in _PARTITION_TAGS and not k.startswith(f"{PARTITION_TAG}/")}


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """The tags of a run over the partitions ``first``...``last`` (a single partition is a RunRequest's
    ``partition_key`` instead)."""
    return {PARTITION_RANGE_START_TAG: first, PARTITION_RANGE_END_TAG: last}
