"""Consumers: per-model sensors that launch downstream work as soon as a model materializes and
request one batched re-materialization of what did not succeed; and a schedule that never overlaps."""

from .schedule import build_watcher_schedule
from .sensors import build_watcher_sensors

__all__ = ["build_watcher_schedule", "build_watcher_sensors"]
