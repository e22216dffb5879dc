"""The warehouse-like benchmark's pure analysis: dbt's completion times, the first downstream run per
asset, and the delays derived from them (benchmarks/bench_warehouse.py)."""

from __future__ import annotations

import datetime as dt

from benchmarks import bench_warehouse as bw


def _result(unique_id: str, completed: str | None) -> dict[str, object]:
    timing = [{"name": "compile", "completed_at": "2026-01-01T00:00:00.000000Z"}]
    if completed:
        timing.append({"name": "execute", "completed_at": completed})
    return {"unique_id": unique_id, "timing": timing}


def test_completed_at_takes_the_execute_timing_as_epoch_seconds() -> None:
    results = {
        "results": [
            _result("model.p.a", "2026-01-01T00:00:05.500000Z"),
            _result("model.p.skipped", None),
        ]
    }
    out = bw.completed_at(results)
    expected = dt.datetime(2026, 1, 1, 0, 0, 5, 500000, tzinfo=dt.UTC).timestamp()
    assert out == {"model.p.a": expected}


def test_first_run_per_asset_is_the_earliest_created_that_targets_it() -> None:
    runs = [
        {"run_id": "late", "assets": ["after_a", "after_b"], "created": 20.0},
        {"run_id": "early", "assets": ["after_a"], "created": 10.0},
        {"run_id": "other", "assets": ["unrelated"], "created": 1.0},
    ]
    first = bw.first_runs_per_asset(runs, ["after_a", "after_b", "after_c"])
    assert {k: v["run_id"] for k, v in first.items()} == {"after_a": "early", "after_b": "late"}


def test_downstream_delays_are_relative_to_dbt_finishing_the_model() -> None:
    d = bw.DownstreamStart("a", done_at=100.0, requested_at=103.0, started_at=104.5)
    assert (d.to_request, d.to_start) == (3.0, 4.5)
    never = bw.DownstreamStart("b", done_at=100.0, requested_at=None, started_at=None)
    assert (never.to_request, never.to_start) == (None, None)


def test_percentile_is_nearest_rank() -> None:
    assert bw.percentile([], 0.5) is None
    values = [float(x) for x in range(1, 21)]
    assert bw.percentile(values, 0.5) == 11.0
    assert bw.percentile(values, 0.95) == 19.0
