"""The example shop dbt project as a `dg` project (see ../pyproject.toml)."""
