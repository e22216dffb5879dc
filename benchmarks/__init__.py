"""Benchmark tooling for dagster-watcher (project generators, harness)."""
