"""Text that dagster-watcher stores: secrets masked, exceptions described one way."""

from __future__ import annotations

import os

_SECRET_ENV_PREFIX = "DBT_ENV_SECRET"
MASK = "*****"


def scrub_secrets(text: str) -> str:
    """Mask the values of ``DBT_ENV_SECRET*`` environment variables, as dbt does in its own logs.

    dbt scrubs its log lines, but not the exception text an in-process invocation raises nor every
    message it puts in events; everything dbt says passes through here before Dagster stores it."""
    for name, value in os.environ.items():
        if name.startswith(_SECRET_ENV_PREFIX) and value:
            text = text.replace(value, MASK)
    return text


def describe_exception(error: BaseException) -> str:
    """``TypeName: message`` with secrets masked (``message`` is the API's own text where the
    exception carries one, as google-api-core errors do)."""
    message = getattr(error, "message", None)
    text = scrub_secrets((message if isinstance(message, str) and message else str(error)).strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
