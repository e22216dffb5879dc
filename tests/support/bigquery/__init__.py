"""The local BigQuery-API server, the dbt project and the Dagster definitions of the BigQuery tests."""
