"""dagster-watcher: run a whole dbt project as ONE `dbt build` in Dagster while every dbt node keeps its
own asset, status, checks, retries and consumers.

Example::

    @dbt_watcher_assets(manifest=project.manifest_path, project=project)
    def my_dbt(context: AssetExecutionContext, dbt_watcher: DbtWatcherResource):
        yield from dbt_watcher.build(context)
"""

from importlib.metadata import PackageNotFoundError, version

from .asset_decorator import dbt_watcher_assets
from .bigquery.resource import BigQueryWatcherResource
from .component import DbtWatcherProjectComponent
from .consumers import build_watcher_schedule, build_watcher_sensors
from .contract import PRODUCER_TAG
from .errors import (
    BigQueryCompileError,
    BigQueryWatcherError,
    DagsterWatcherError,
    DbtDidNotComplete,
    DbtSelectionError,
    ManifestPreparationError,
    NodesDidNotSucceed,
    UnsupportedNodeError,
    WatcherConfigError,
)
from .project import prepare_manifest
from .resource import DbtWatcherResource, InvocationMode
from .retry import WatcherRetryPolicy
from .status import NodeResult, NodeStatus

#: Op tag that marks a dagster-watcher producer (kept under its first name).
WATCHER_PRODUCER_TAG = PRODUCER_TAG

try:
    __version__ = version("dagster-watcher")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "WATCHER_PRODUCER_TAG",
    "BigQueryCompileError",
    "BigQueryWatcherError",
    "BigQueryWatcherResource",
    "DagsterWatcherError",
    "DbtDidNotComplete",
    "DbtSelectionError",
    "DbtWatcherProjectComponent",
    "DbtWatcherResource",
    "InvocationMode",
    "ManifestPreparationError",
    "NodeResult",
    "NodeStatus",
    "NodesDidNotSucceed",
    "UnsupportedNodeError",
    "WatcherConfigError",
    "WatcherRetryPolicy",
    "__version__",
    "build_watcher_schedule",
    "build_watcher_sensors",
    "dbt_watcher_assets",
    "prepare_manifest",
]
