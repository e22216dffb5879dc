"""The code location ``bench_daemon.py`` serves to a real ``dagster-daemon``: the watcher assets of
``bench_defs`` (env-configured project) plus its consumer sensors, shaped by environment variables.

- ``DW_BENCH_SENSOR_INTERVAL``: ``minimum_interval_seconds`` of every sensor (0: evaluated on every
  daemon iteration, so one iteration is one round of all sensors).
- ``DW_BENCH_PER_MODEL``: ``1`` (default) one sensor per model; ``0`` ``per_model=False`` (one sensor
  per producer). Only passed when ``0``, so an older dagster-watcher (the "before" code) loads too.
- ``DW_BENCH_DOWNSTREAM_EVERY``: a no-op downstream job is attached to every n-th model (sorted by
  key); 0 attaches none.
- ``DW_BENCH_IDLE``: ``running`` runs the sensors of models without a downstream job too
  (``idle_status=RUNNING``; only passed when set, so an older dagster-watcher loads too).
- ``DW_BENCH_INFO``: a JSON file to write the loaded ``dagster_watcher``'s path, those models and the
  number of sensors declared running to.
"""

import os
import sys
from pathlib import Path
from typing import Any

from dagster import DefaultSensorStatus, Definitions, job, op

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_defs  # noqa: E402

from dagster_watcher import build_watcher_sensors  # noqa: E402
from dagster_watcher.contract import unique_ids_by_asset_key  # noqa: E402

INTERVAL = int(os.environ.get("DW_BENCH_SENSOR_INTERVAL", "15"))
PER_MODEL = os.environ.get("DW_BENCH_PER_MODEL", "1") != "0"
EVERY = int(os.environ.get("DW_BENCH_DOWNSTREAM_EVERY", "10"))


@op
def bench_noop() -> None:
    """Stands for a consumer job (an export, a sync)."""


@job
def bench_downstream_job() -> None:
    bench_noop()


assets = bench_defs.bench_dbt_assets
models = sorted(
    (k for k, u in unique_ids_by_asset_key(assets).items() if u.startswith("model.")), key=lambda k: k.to_user_string()
)
#: The models with a downstream job (bench_daemon.py materializes one of them to time the launch).
DOWNSTREAM_MODELS = models[::EVERY] if EVERY > 0 else []
shape: dict[str, Any] = {} if PER_MODEL else {"per_model": False}
if os.environ.get("DW_BENCH_IDLE") == "running":
    shape["idle_status"] = DefaultSensorStatus.RUNNING
sensors = build_watcher_sensors(
    assets,
    downstream={k: bench_downstream_job for k in DOWNSTREAM_MODELS},
    minimum_interval_seconds=INTERVAL,
    **shape,
)

if os.environ.get("DW_BENCH_INFO"):
    # What the harness needs to know: which code was loaded, which models have a downstream job.
    import json

    import dagster_watcher

    Path(os.environ["DW_BENCH_INFO"]).write_text(
        json.dumps(
            {
                "dagster_watcher": dagster_watcher.__file__,
                "downstream": [k.path for k in DOWNSTREAM_MODELS],
                # The daemon ticks these only (the rest are declared stopped: idle_status).
                "running_sensors": sum(1 for s in sensors if s.default_status == DefaultSensorStatus.RUNNING),
            }
        )
    )

defs = Definitions(assets=[assets], resources=bench_defs.resources, sensors=sensors, jobs=[bench_downstream_job])
