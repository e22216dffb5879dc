"""How to reach BigQuery and how hard to drive it: :class:`BigQueryEngineConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: google-cloud-bigquery is an optional dependency
    from google.auth.credentials import Credentials
    from google.cloud.bigquery import Client

__all__ = ["BigQueryEngineConfig"]


@dataclass(frozen=True)
class BigQueryEngineConfig:
    """How to reach BigQuery and how hard to drive it.

    ``project`` is the project jobs run (and are billed) in; the relations each node writes come
    from the manifest and may live in other projects. Each field is documented below it.

    Example::

        BigQueryEngineConfig(project="my-project", location="EU", max_concurrent_jobs=50, job_timeout=3600)
        BigQueryEngineConfig(project="test-proj", api_endpoint="http://127.0.0.1:9050")  # a local server
    """

    project: str
    location: str | None = None
    """Job location (``US``, ``EU``, ``europe-west1``...). Also used for datasets this engine creates."""
    dataset: str | None = None
    """Default dataset for unqualified names in the SQL (compiled dbt SQL is fully qualified anyway)."""
    api_endpoint: str | None = None
    """Override the BigQuery API URL, e.g. ``http://127.0.0.1:9050`` for a local server."""
    credentials: Credentials | None = None
    """Explicit credentials; ``None`` uses Application Default Credentials (or anonymous, below)."""
    anonymous: bool = False
    """Use ``AnonymousCredentials`` (local servers). Implied when ``api_endpoint`` is a plain-http URL
    and no ``credentials`` are given."""
    max_concurrent_jobs: int = 8
    """At most this many jobs in flight at once (one per node; statements of a node run in order)."""
    poll_interval: float = 1.0
    """Seconds between polls of the in-flight jobs. One ``jobs.get`` per in-flight job per poll."""
    job_timeout: float | None = None
    """Seconds one job may run (from submission) before it is cancelled and its node fails. Also
    sent to BigQuery as ``jobTimeoutMs`` so the server enforces it if this process dies."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every job (keys/values are lower-cased and sanitised to BigQuery's rules)."""
    job_id_prefix: str = "dw"
    create_datasets: bool = True
    """Create the datasets the selected models/seeds write to (``dbt build`` does the same)."""
    cancel_on_close: bool = True
    """If the result iterator is closed early (consumer stopped, step interrupted), cancel the
    in-flight jobs instead of leaving them running unobserved."""
    api_timeout: float = 60.0
    """Timeout in seconds of one HTTP call to the API (not of a job)."""
    max_poll_errors: int = 30
    """Consecutive failed polls of one job (network, 5xx) before its node is failed."""
    cancel_grace: float = 120.0
    """After :meth:`BigQueryEngine.cancel`, seconds to wait for in-flight jobs to report DONE before
    their nodes are given up as ERROR (BigQuery cancellation is best effort)."""

    def make_client(self) -> Client:
        """A ``google.cloud.bigquery.Client`` for this configuration.

        Raises:
            google.auth.exceptions.DefaultCredentialsError: no credentials given and none found.

        Example::

            client = BigQueryEngineConfig(project="my-project").make_client()
        """
        from google.cloud import bigquery

        credentials = self.credentials
        if credentials is None and (self.anonymous or (self.api_endpoint or "").startswith("http://")):
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        client_options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
        return bigquery.Client(
            project=self.project,
            credentials=credentials,
            location=self.location,
            client_options=client_options,
        )
