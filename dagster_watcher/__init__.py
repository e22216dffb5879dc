"""dagster-watcher: run a whole dbt project as ONE `dbt build` in Dagster while every dbt node keeps its
own asset, status, checks, retries and consumers."""

from .asset_decorator import WATCHER_PRODUCER_TAG, dbt_watcher_assets
from .events import NodeResult, NodeStatus
from .resource import DbtWatcherResource, InvocationMode

__all__ = [
    "WATCHER_PRODUCER_TAG",
    "DbtWatcherResource",
    "InvocationMode",
    "NodeResult",
    "NodeStatus",
    "dbt_watcher_assets",
]
