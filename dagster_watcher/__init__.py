"""dagster-watcher: run a whole dbt project as ONE `dbt build` in Dagster while every dbt node keeps its
own asset, status, checks, retries and consumers."""

from .asset_decorator import WATCHER_PRODUCER_TAG, dbt_watcher_assets
from .bigquery_resource import BigQueryWatcherResource
from .consumers import build_watcher_schedule, build_watcher_sensors
from .events import NodeResult, NodeStatus
from .project import prepare_manifest
from .resource import DbtWatcherResource, InvocationMode
from .retry import WatcherRetryPolicy

__all__ = [
    "WATCHER_PRODUCER_TAG",
    "BigQueryWatcherResource",
    "DbtWatcherResource",
    "InvocationMode",
    "NodeResult",
    "NodeStatus",
    "WatcherRetryPolicy",
    "build_watcher_schedule",
    "build_watcher_sensors",
    "dbt_watcher_assets",
    "prepare_manifest",
]
