"""Text that dagster-watcher stores: secrets masked, exceptions described one way."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .status import NodeResult

_SECRET_ENV_PREFIX = "DBT_ENV_SECRET"
#: Environment variable names whose values are credentials by convention (a profile reading
#: ``env_var('..._TOKEN')`` or ``..._PASSWORD``), masked like dbt's ``DBT_ENV_SECRET_*``.
_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|PRIVATE_KEY|CREDENTIAL|API_KEY", re.IGNORECASE)
#: Shorter values are not masked: replacing "1" or "dev" everywhere would garble the text, not hide a secret.
_MIN_SECRET_LENGTH = 6
MASK = "*****"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment that must never be stored: ``DBT_ENV_SECRET*`` and variables named
    like a credential, longest first (a secret containing another is masked whole)."""
    env = os.environ if environ is None else environ
    values = {
        value
        for name, value in env.items()
        if value
        and len(value) >= _MIN_SECRET_LENGTH
        and (name.startswith(_SECRET_ENV_PREFIX) or _SECRET_NAME.search(name))
    }
    return sorted(values, key=len, reverse=True)


def scrub_secrets(text: str) -> str:
    """Mask the values of secret environment variables (``DBT_ENV_SECRET*``, as dbt does in its own
    logs, and variables named like a token or password).

    dbt scrubs its log lines, but not the exception text an in-process invocation raises nor every
    message it puts in events, and an engine's API errors are not scrubbed at all: the producer's
    writer passes every text it stores through here (``producer.stream_build``)."""
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_secrets(value)
    if isinstance(value, Mapping):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value


def scrub_result(result: NodeResult) -> NodeResult:
    """``result`` with every text it carries scrubbed (message, compiled code, adapter response)."""
    return dataclasses.replace(
        result,
        message=scrub_secrets(result.message) if result.message else result.message,
        compiled_code=scrub_secrets(result.compiled_code) if result.compiled_code else result.compiled_code,
        adapter_response=_scrub_value(dict(result.adapter_response)),
    )


def describe_exception(error: BaseException) -> str:
    """``TypeName: message`` with secrets masked (``message`` is the API's own text where the
    exception carries one, as google-api-core errors do)."""
    message = getattr(error, "message", None)
    text = scrub_secrets((message if isinstance(message, str) and message else str(error)).strip())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
