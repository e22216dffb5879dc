"""One way for a test to wait on something another process does: poll a condition until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float = 120, what: str = "condition", interval: float = 0.2) -> Any:
    """Return ``condition()``'s first truthy value; fail the test naming ``what`` after ``timeout`` seconds.

    The condition is evaluated once more after the deadline, so a slow poll never fails a test whose
    condition came true while it slept."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
