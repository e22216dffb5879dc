"""A local PostgreSQL server for the example's ``postgres`` target (a real multi-client warehouse).

``./dev demo --target postgres`` and the warehouse tests and benchmark use it. When
``DAGSTER_WATCHER_PG_HOST`` is already set, that server is used as it is (the profile reads
``DAGSTER_WATCHER_PG_HOST``, ``_PORT``, ``_USER``, ``_PASSWORD``, ``_DBNAME``, ``_SCHEMA``); otherwise a
throwaway cluster is started on a free loopback port with its own data dir (initdb + postgres from
Debian's ``postgresql`` package, which ``./dev`` installs), and removed on exit. It is the same server
the test suite runs for the Dagster instance (tests/support/deployment.py: ``running_postgres``).

    with local_postgres():
        ...  # dbt --target postgres, and connect() for readers
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENV_KEYS = ("HOST", "PORT", "USER", "PASSWORD", "DBNAME")


@contextlib.contextmanager
def local_postgres(database: str = "shop") -> Iterator[dict[str, str]]:
    """Yield the ``DAGSTER_WATCHER_PG_*`` settings of a running server, set in ``os.environ`` for
    dbt and every process started meanwhile; start a throwaway server unless one is configured."""
    if os.environ.get("DAGSTER_WATCHER_PG_HOST"):
        yield {k: os.environ[f"DAGSTER_WATCHER_PG_{k}"] for k in ENV_KEYS if f"DAGSTER_WATCHER_PG_{k}" in os.environ}
        return
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.deployment import running_postgres

    with running_postgres(user="shop", database=database) as server:
        env = {
            "HOST": server.host,
            "PORT": str(server.port),
            "USER": server.user,
            "PASSWORD": server.password,
            "DBNAME": database,
        }
        previous = {k: os.environ.get(f"DAGSTER_WATCHER_PG_{k}") for k in env}
        os.environ.update({f"DAGSTER_WATCHER_PG_{k}": v for k, v in env.items()})
        try:
            yield env
        finally:
            for k, v in previous.items():
                if v is None:
                    os.environ.pop(f"DAGSTER_WATCHER_PG_{k}", None)
                else:
                    os.environ[f"DAGSTER_WATCHER_PG_{k}"] = v


def connect() -> Any:
    """A psycopg2 connection to the server the profile's ``postgres`` target points at (same env)."""
    import psycopg2

    return psycopg2.connect(
        host=os.environ.get("DAGSTER_WATCHER_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("DAGSTER_WATCHER_PG_PORT", "5432")),
        user=os.environ.get("DAGSTER_WATCHER_PG_USER", "postgres"),
        password=os.environ.get("DAGSTER_WATCHER_PG_PASSWORD", ""),
        dbname=os.environ.get("DAGSTER_WATCHER_PG_DBNAME", "shop"),
        connect_timeout=10,
    )
