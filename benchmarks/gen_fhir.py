"""Generate a DuckDB dbt project with the exact DAG of google/fhir-dbt-analytics.

Input is ``fhir_graph.json`` (the dependency graph of the original project: models with their
refs, sources, materialization, enabled flag, package and path; seeds; sources; tests; stats).
Output is a self-contained dbt project that:

* has exactly the same nodes (model names, packages, paths -> same unique_ids and fqns), the
  same ``ref`` edges, the same sources, the same seeds, the same materializations, the same
  disabled models and the same 8 tests (with their original names);
* uses its OWN small DuckDB SQL (the original is BigQuery-only and none of it is reused): every
  enabled model joins/aggregates a few thousand rows, so no relation ends up empty;
* needs nothing but ``dbt build`` on a fresh DuckDB file: an ``on-run-start`` hook creates the
  source tables from ``range()`` (see ``_write_source_hook`` for why a hook and not seeds);
* needs no ``dbt deps``: the second package of the graph (``fhir_dbt_utils``) is written straight
  into the project's ``packages-install-path``.

Usage::

    python benchmarks/gen_fhir.py                       # -> benchmarks/projects/fhir
    python benchmarks/gen_fhir.py --out /tmp/fhir --graph ../shared/bench/fhir_graph.json
    cd benchmarks/projects/fhir && DAGSTER_WATCHER_DUCKDB_PATH=/tmp/fhir.duckdb \\
        dbt build --profiles-dir . --threads 8
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # imported as part of the ``benchmarks`` package
    from ._common import PROFILE_NAME, PROFILES_YML, reset_dir, sql_str, write
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import PROFILE_NAME, PROFILES_YML, reset_dir, sql_str, write  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a git worktree (e.g. /work/wt/NAME) finds it further up.
DEFAULT_GRAPH = next(
    (
        p / "shared" / "bench" / "fhir_graph.json"
        for p in REPO_ROOT.parents
        if (p / "shared" / "bench" / "fhir_graph.json").is_file()
    ),
    REPO_ROOT.parent / "shared" / "bench" / "fhir_graph.json",
)
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "projects" / "fhir"

#: Where non-root packages of the graph are written. dbt loads every project found in
#: ``packages-install-path`` without consulting packages.yml, so no ``dbt deps`` (and no network)
#: is needed. A non-default name makes clear that the directory is generated, not fetched.
VENDOR_DIR = "vendored_packages"

#: Rows of the smallest source table; each further physical table gets ``SOURCE_ROW_STEP`` more,
#: so tables differ in size (2,000 .. ~4,000 rows): "a few thousand rows", cheap for DuckDB.
SOURCE_BASE_ROWS = 2000
SOURCE_ROW_STEP = 50

#: Days of history generated per metric in ``metric_copy`` (x2 dimension values per day).
METRIC_HISTORY_DAYS = 30

CALCULATIONS = ("COUNT", "PROPORTION", "RATIO", "DISTRIBUTION")

#: SQL dialects the project can be written in: DuckDB (embedded, the default) or PostgreSQL (a real
#: multi-client server: the warehouse-like benchmark, benchmarks/bench_warehouse.py).
DIALECTS = ("duckdb", "postgres")

#: The PostgreSQL profile: the same DAGSTER_WATCHER_PG_* variables as example_project's postgres
#: target (example_project/local_postgres.py sets them for a throwaway server).
POSTGRES_PROFILES_YML = f"""\
{PROFILE_NAME}:
  target: dev
  outputs:
    dev:
      type: postgres
      host: "{{{{ env_var('DAGSTER_WATCHER_PG_HOST', '127.0.0.1') }}}}"
      port: "{{{{ env_var('DAGSTER_WATCHER_PG_PORT', '5432') | as_number }}}}"
      user: "{{{{ env_var('DAGSTER_WATCHER_PG_USER', 'postgres') }}}}"
      password: "{{{{ env_var('DAGSTER_WATCHER_PG_PASSWORD', '') }}}}"
      dbname: "{{{{ env_var('DAGSTER_WATCHER_PG_DBNAME', 'fhir') }}}}"
      schema: fhir_bench
      threads: "{{{{ env_var('DBT_THREADS', '8') | int }}}}"
      connect_timeout: 10
"""

# The few DuckDB-only spellings of the templates, rewritten for PostgreSQL (the templates stay
# DuckDB-first so the DuckDB project is unchanged). Every rewrite is checked to have matched.
_POSTGRES_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\brange\(([^()]+)\) as (\w+)\((\w+)\)"), r"generate_series(0, \1 - 1) as \2(\3)"),
    (re.compile(r"\bto_hours\("), "make_interval(hours => "),
    (re.compile(r"\bto_minutes\("), "make_interval(mins => "),
    (re.compile(r" as double\)"), " as double precision)"),
    (re.compile(r"\byear\(([\w.]+)\)"), r"extract(year from \1)"),
    (re.compile(r"(?<![\w)])\[('active'[^\]]*)\]\["), r"(array[\1])["),
    (re.compile(r"-- Own DuckDB SQL"), "-- Own SQL, in PostgreSQL's dialect"),
    # PostgreSQL 15 wants an alias on every subquery in FROM.
    (re.compile(r"from \((\{\{ [\w.]*fhir_rows\([^)]*\) \}\})\)"), r"from (\1) as generated"),
)


def to_postgres(sql: str) -> str:
    """``sql`` (a template's DuckDB SQL) in PostgreSQL's dialect."""
    for pattern, replacement in _POSTGRES_REWRITES:
        sql = pattern.sub(replacement, sql)
    return sql


def draw_latencies(names: Iterable[str], low: float, high: float, seed: int) -> dict[str, float]:
    """Seconds each model waits on the server (``pg_sleep`` in a pre-hook), uniform in [low, high],
    drawn once per name in sorted order with ``seed``: the same project, so the same waits, for every
    variant of a benchmark."""
    import random

    rng = random.Random(seed)
    return {name: round(rng.uniform(low, high), 2) for name in sorted(names)}


def physical_schema(source_name: str) -> str:
    """DuckDB schema holding the tables of source ``source_name``.

    Not the bare source name: if the DuckDB file is called like the schema (``fhir.duckdb``),
    DuckDB refuses to create views over ``"fhir"."fhir"."x"`` ("Ambiguous reference to catalog
    or schema"). The source name (and so the source unique_ids) stays as in the graph.
    """
    return f"{source_name}_src"


# --------------------------------------------------------------------------------------------
# Graph model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphModel:
    """One model entry of ``fhir_graph.json``."""

    name: str
    refs: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]
    materialized: str
    enabled: bool
    package: str
    path: str

    @property
    def folder(self) -> str:
        """Second path component (``models/<folder>/...``), used to pick a SQL template."""
        parts = self.path.split("/")
        return parts[1] if len(parts) > 2 else ""


@dataclass(frozen=True)
class GraphTest:
    """One test entry of ``fhir_graph.json``."""

    name: str
    test: str
    column: str | None
    depends_on: tuple[str, ...]


@dataclass
class FhirGraph:
    """Parsed ``fhir_graph.json``."""

    models: dict[str, GraphModel]
    seeds: list[str]
    sources: list[tuple[str, str]]  # (source_name, table_name)
    tests: list[GraphTest]
    stats: dict[str, Any]


def load_graph(path: Path) -> FhirGraph:
    """Read and validate ``fhir_graph.json``.

    Fails loudly on shapes the generator does not understand (rather than silently producing a
    different DAG), e.g. an enabled model that refs a disabled or unknown node.
    """
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    models = {
        name: GraphModel(
            name=name,
            refs=tuple(m["refs"]),
            sources=tuple((s[0], s[1]) for s in m["sources"]),
            materialized=m["materialized"],
            enabled=bool(m["enabled"]),
            package=m["package"],
            path=m["path"],
        )
        for name, m in sorted(raw["models"].items())
    }
    sources = [tuple(s.split(".", 1)) for s in raw["sources"]]
    tests = [
        GraphTest(name=t["name"], test=t["test"], column=t.get("column"), depends_on=tuple(t["depends_on"]))
        for t in raw.get("tests", [])
    ]
    graph = FhirGraph(models=models, seeds=list(raw["seeds"]), sources=sources, tests=tests, stats=raw.get("stats", {}))

    enabled = {n for n, m in models.items() if m.enabled}
    for m in models.values():
        if m.materialized not in ("view", "table", "incremental", "ephemeral"):
            raise ValueError(f"{m.name}: unsupported materialization {m.materialized!r}")
        if m.enabled:
            bad = [r for r in m.refs if r not in enabled and r not in graph.seeds]
            if bad:
                raise ValueError(f"enabled model {m.name} refs disabled/unknown nodes {bad}")
        for s in m.sources:
            if s not in graph.sources:
                raise ValueError(f"{m.name}: source {s} not in the graph's source list")
    lowered = defaultdict(list)
    for n in list(enabled) + graph.seeds:
        lowered[n.lower()].append(n)
    clashes = {k: v for k, v in lowered.items() if len(v) > 1}
    if clashes:  # DuckDB identifiers are case-insensitive: these would overwrite each other
        raise ValueError(f"relation names clash case-insensitively on DuckDB: {clashes}")
    return graph


def snake(name: str) -> str:
    """``MedicationRequest`` -> ``medication_request`` (the original's table naming)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


# --------------------------------------------------------------------------------------------
# SQL templates (Jinja braces inside f-strings are doubled: {{{{ -> {{)
# --------------------------------------------------------------------------------------------


def _config(m: GraphModel, **extra: str) -> str:
    """``{{ config(...) }}`` line with the graph's materialization and enabled flag."""
    args = [f"materialized={sql_str(m.materialized)}"]
    args += [f"{k}={v}" for k, v in extra.items()]
    if not m.enabled:
        args.append("enabled=false")
    return "{{ config(" + ", ".join(args) + ") }}"


def _header(m: GraphModel, what: str) -> str:
    return f"-- Generated by benchmarks/gen_fhir.py for {m.package}/{m.path}: {what}.\n-- Own DuckDB SQL (not the original BigQuery SQL).\n"


def _ref(name: str) -> str:
    return "{{ ref(" + sql_str(name) + ") }}"


def _source(src: tuple[str, str], runtime: bool) -> str:
    """``source()`` call; in runtime mode only inside ``{% if execute %}`` like the original.

    The original fhir_dbt_utils views call source() inside ``{% if execute %}``, so the parsed
    manifest has no source->model edges. ``runtime`` reproduces that; the default (parse-time
    call) makes the edges explicit in the manifest.
    """
    call = "source(" + sql_str(src[0]) + ", " + sql_str(src[1]) + ")"
    if not runtime:
        return "{{ " + call + " }}"
    # At parse time the relation is a placeholder that is never executed.
    return "{% if execute %}{{ " + call + " }}{% else %}" + f"{src[0]}.{src[1]}" + "{% endif %}"


def _fhir_rows_call(util_pkg: str, n_rows: int, salt: int) -> str:
    return "{{ " + f"{util_pkg}.fhir_rows({n_rows}, {salt})" + " }}"


RESOURCE_COLUMNS = "id, patient_id, encounter_id, practitioner_id, ref_id, code, status, amount, recorded_at, has_text"


def sql_resource_view(m: GraphModel, util_pkg: str, salt: int, runtime_sources: bool) -> str:
    """A FHIR resource view: the source table(s), gated on ``fhir_table_list`` like the original.

    Resources without a source table in the graph (MedicationStatement, Person, ServiceRequest)
    synthesize rows with the same generator the source hook uses, so they are not empty.
    """
    if m.sources:
        parts = [f"select {RESOURCE_COLUMNS} from {_source(s, runtime_sources)}" for s in m.sources]
    else:
        parts = [f"select {RESOURCE_COLUMNS} from ({_fhir_rows_call(util_pkg, SOURCE_BASE_ROWS, salt)})"]
    # Like the original, a resource only yields rows if fhir_table_list lists it.
    gate_sql = "\n".join(
        f"  and exists (select 1 from {_ref(r)} as g where g.resource_name = {sql_str(m.name)})"
        if r == "fhir_table_list"
        else f"  and exists (select 1 from {_ref(r)})"
        for r in m.refs
    )
    union = "\n  union all\n  ".join(parts)
    return (
        _header(m, "FHIR resource view")
        + _config(m)
        + f"\n\nwith src_rows as (\n  {union}\n)\n\nselect\n  src_rows.*,\n  {sql_str(m.name)} as resource_type\nfrom src_rows\nwhere true\n{gate_sql}\n"
    )


def sql_table_list(m: GraphModel, resources: list[tuple[str, str]], source_schema: str, dialect: str = "duckdb") -> str:
    """``fhir_table_list``: which FHIR resources exist, checked against the database's catalog."""
    values = ",\n    ".join(f"({sql_str(r)}, {sql_str(t)})" for r, t in resources)
    if dialect == "postgres":
        catalog = f"""left join (
  select c.relname as table_name, c.reltuples as estimated_size
  from pg_catalog.pg_class as c
  join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
  where n.nspname = {sql_str(source_schema)} and c.relkind = 'r'
) as t
  on lower(t.table_name) = r.table_name"""
    else:
        catalog = f"""left join duckdb_tables() as t
  on t.database_name = current_database()
  and t.schema_name = {sql_str(source_schema)}
  and lower(t.table_name) = r.table_name"""
    return (
        _header(m, "list of FHIR resources and whether their source table exists")
        + _config(m)
        + f"""

with resources(resource_name, table_name) as (
  values
    {values}
)

select
  r.resource_name,
  r.table_name,
  t.table_name is not null as table_exists,
  coalesce(t.estimated_size, 0) as estimated_rows
from resources as r
{catalog}
"""
    )


def sql_dq_metric(m: GraphModel, resource_models: set[str], calculation: str) -> str:
    """A data-quality metric: per day and status, share of driver rows satisfying a check.

    The driver is the resource named by the metric (``careteam_*`` -> CareTeam); every other
    resource ref is aggregated per patient and left-joined (the "reference resolved" checks of
    the original); non-resource refs (fhir_table_list) contribute a scalar cross join.
    """
    res_refs = [r for r in m.refs if r in resource_models]
    ctx_refs = [r for r in m.refs if r not in resource_models]
    driver = next((r for r in res_refs if m.name.startswith(r.lower())), res_refs[0])
    others = [r for r in res_refs if r != driver]

    ctes = [f"driver as (\n  select {RESOURCE_COLUMNS} from {_ref(driver)}\n)"]
    joins, checks = [], []
    for i, r in enumerate(others, 1):
        ctes.append(
            f"other_{i} as (\n  select patient_id, count(*) as n_rows, max(recorded_at) as last_seen\n"
            f"  from {_ref(r)}\n  group by patient_id\n)"
        )
        joins.append(f"left join other_{i} on other_{i}.patient_id = d.patient_id")
        checks.append(f"other_{i}.n_rows is not null")
    for i, r in enumerate(ctx_refs, 1):
        ctes.append(f"ctx_{i} as (\n  select count(*) as n_rows from {_ref(r)}\n)")
        joins.append(f"cross join ctx_{i}")
    if not checks:
        checks.append("d.has_text and d.status <> 'entered-in-error'")
    ctx_sum = " + ".join(f"max(ctx_{i}.n_rows)" for i in range(1, len(ctx_refs) + 1)) or "0"
    return (
        _header(m, f"data-quality metric ({calculation})")
        + _config(m)
        + "\n\nwith\n"
        + ",\n".join(ctes)
        + f"""

select
  {sql_str(m.name)} as metric_name,
  cast(d.recorded_at as date) as metric_date,
  d.status as dimension_a,
  count(*) filter (where {" and ".join(checks)}) as numerator,
  count(*) as denominator,
  round(count(*) filter (where {" and ".join(checks)}) / count(*), 6) as measure,
  {ctx_sum} as context_rows
from driver as d
{chr(10).join(joins)}
group by 1, 2, 3
"""
    )


def sql_generic(m: GraphModel, runtime_sources: bool) -> str:
    """Fallback for models without a dedicated template (here: the disabled patient_panel
    summaries). Only counts rows of its parents, so it works whatever their columns are."""
    ctes, joins, sums = [], [], []
    for i, r in enumerate(m.refs, 1):
        ctes.append(f"parent_{i} as (select count(*) as n_rows from {_ref(r)})")
        joins.append(f"cross join parent_{i}")
        sums.append(f"parent_{i}.n_rows")
    for i, s in enumerate(m.sources, 1):
        ctes.append(f"source_{i} as (select count(*) as n_rows from {_source(s, runtime_sources)})")
        joins.append(f"cross join source_{i}")
        sums.append(f"source_{i}.n_rows")
    extra: dict[str, str] = {}
    incremental = ""
    if m.materialized == "incremental":
        extra["unique_key"] = "'id'"
        incremental = "\n{% if is_incremental() %}\nwhere r.i not in (select id from {{ this }})\n{% endif %}"
    with_sql = ("with\n  " + ",\n  ".join(ctes) + "\n\n") if ctes else ""
    return (
        _header(m, "generic node")
        + _config(m, **extra)
        + f"""

{with_sql}select
  r.i as id,
  (r.i * 7) % 600 as patient_id,
  {" + ".join(sums) or "0"} as upstream_rows
from range(1000) as r(i)
{chr(10).join(joins)}{incremental}
"""
    )


# --- metadata / post_processing / metric_views: small bespoke templates -------------------------
# Each returns (refs it uses, sql). The caller only uses it when those refs equal the graph's refs,
# otherwise it falls back to sql_generic: the DAG always wins over realism.

CATALOG = "{{ metric_catalog() }}"


def _bespoke(m: GraphModel) -> tuple[set[str], str] | None:
    name = m.name
    if name == "metric_all_definitions":
        return (
            set(),
            _config(m)
            + f"""

select
  c.metric_name,
  c.calculation,
  c.category,
  c.metric_idx,
  'Data quality metric ' || replace(c.metric_name, '_', ' ') as description
from ({CATALOG}) as c
""",
        )
    if name == "project_variables":
        return (
            set(),
            _config(m)
            + """

select * from (values
  ('earliest_date', '2024-01-01'),
  ('latest_date', '2024-03-31'),
  ('timezone_default', 'UTC'),
  ('metric_history_days', '"""
            + str(METRIC_HISTORY_DAYS)
            + """'),
  ('invocation_id', '{{ invocation_id }}')
) as v(variable_name, variable_value)
""",
        )
    if name == "unioned_thresholds":
        return (
            set(),
            _config(m)
            + f"""

select
  c.metric_name,
  case when c.calculation = 'COUNT' then 1.0 else 0.0 end as lower_bound,
  case when c.calculation = 'COUNT' then 100000.0 else 0.9 + (c.metric_idx % 10) / 100.0 end as upper_bound
from ({CATALOG}) as c
""",
        )
    if name == "metric_copy":
        # Historic metric rows (the original copies a previous `metric` table): N metrics x days x 2.
        return (
            set(),
            _config(m)
            + f"""

with catalog as ({CATALOG}),
grid as (
  select c.metric_name, c.metric_idx, d.day, dim.dimension_a
  from catalog as c
  cross join range({METRIC_HISTORY_DAYS}) as d(day)
  cross join (values ('active'), ('inactive')) as dim(dimension_a)
)
select
  metric_name,
  date '2024-01-01' + cast(day as integer) as metric_date,
  dimension_a,
  10 + (metric_idx * 7 + day * 13) % 90 as denominator,
  (metric_idx * 11 + day * 3) % (11 + (metric_idx * 7 + day * 13) % 90) as numerator
from grid
""",
        )
    if name == "metric_latest_execution":
        return (
            {"metric_all_definitions"},
            _config(m)
            + """

select
  d.metric_name,
  d.calculation,
  '{{ invocation_id }}' as execution_id,
  timestamp '2024-04-01' + to_minutes(cast(d.metric_idx as integer)) as executed_at
from {{ ref('metric_all_definitions') }} as d
""",
        )
    if name in ("metric_execution_log", "metric_all_executions") and m.materialized == "incremental":
        # One row per (metric, dbt invocation): every build appends the new invocation's rows,
        # so the incremental path really inserts data instead of being a no-op.
        return (
            {"metric_latest_execution"},
            _config(m, unique_key="'log_id'")
            + """

select
  e.metric_name || '@' || e.execution_id as log_id,
  e.metric_name,
  e.execution_id,
  e.executed_at
from {{ ref('metric_latest_execution') }} as e
{% if is_incremental() %}
where e.execution_id not in (select distinct execution_id from {{ this }})
{% endif %}
""",
        )
    if name == "metric":
        return (
            {"metric_all_definitions", "metric_copy", "metric_latest_execution"},
            _config(m)
            + """

select
  h.metric_name,
  d.calculation,
  h.metric_date,
  h.dimension_a,
  case when d.calculation = 'COUNT' then null else h.numerator end as numerator,
  case when d.calculation = 'COUNT' then null else h.denominator end as denominator,
  case
    when d.calculation = 'COUNT' then cast(h.numerator as double)
    else round(h.numerator / nullif(h.denominator, 0), 6)
  end as measure,
  e.execution_id
from {{ ref('metric_copy') }} as h
join {{ ref('metric_all_definitions') }} as d using (metric_name)
left join {{ ref('metric_latest_execution') }} as e using (metric_name)
""",
        )
    if name == "metric_definition":
        return (
            {"metric", "metric_all_definitions"},
            _config(m)
            + """

select
  d.metric_name,
  d.calculation,
  d.category,
  d.description,
  count(m.metric_name) as n_points,
  min(m.metric_date) as first_date,
  max(m.metric_date) as last_date
from {{ ref('metric_all_definitions') }} as d
left join {{ ref('metric') }} as m using (metric_name)
group by 1, 2, 3, 4
""",
        )
    if name == "metric_thresholds":
        return (
            {"metric", "metric_definition", "unioned_thresholds"},
            _config(m)
            + """

with latest as (
  select metric_name, avg(measure) as avg_measure
  from {{ ref('metric') }}
  where metric_date = (select max(metric_date) from {{ ref('metric') }})
  group by metric_name
)
select
  d.metric_name,
  d.calculation,
  t.lower_bound,
  t.upper_bound,
  l.avg_measure,
  coalesce(l.avg_measure not between t.lower_bound and t.upper_bound, false) as out_of_range
from {{ ref('metric_definition') }} as d
join {{ ref('unioned_thresholds') }} as t using (metric_name)
left join latest as l using (metric_name)
""",
        )
    if m.folder == "metric_views":
        # metric_by_{day,year}[_dimensions] / metric_overall: re-aggregate `metric` at a grain.
        grain = "day" if "_by_day" in name else "year" if "_by_year" in name else "overall"
        keys = ["m.metric_name", "m.calculation", "d.description"]
        if grain == "day":
            keys.append("m.metric_date")
        elif grain == "year":
            keys.append("year(m.metric_date) as metric_year")
        if name.endswith("_dimensions"):
            keys.append("m.dimension_a")
        return (
            {"metric", "metric_definition"},
            _config(m)
            + f"""

select
  {("," + chr(10) + "  ").join(keys)},
  sum(m.numerator) as numerator,
  sum(m.denominator) as denominator,
  case
    when m.calculation = 'COUNT' then sum(m.measure)
    else round(sum(m.numerator) / nullif(sum(m.denominator), 0), 6)
  end as measure
from {{{{ ref('metric') }}}} as m
join {{{{ ref('metric_definition') }}}} as d using (metric_name)
group by {", ".join(str(i) for i in range(1, len(keys) + 1))}
""",
        )
    return None


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

_ROW_COND = re.compile(r"^([a-z][a-z0-9_]*?)_(IN_)?([A-Z][A-Z0-9_]*?)_$")


def _row_condition(suffix: str) -> str | None:
    """Decode dbt_expectations' row_condition from a test-name suffix.

    ``calculation_COUNT_`` -> ``calculation = 'COUNT'``;
    ``calculation_IN_PROPORTION_RATIO_`` -> ``calculation in ('PROPORTION', 'RATIO')``.
    """
    match = _ROW_COND.match(suffix)
    if not match:
        return None
    col, is_in, vals = match.groups()
    values = vals.split("_")
    if is_in:
        return f"{col} in (" + ", ".join(sql_str(v) for v in values) + ")"
    return f"{col} = {sql_str(vals)}"


def _test_spec(t: GraphTest) -> tuple[str, str | None, str, dict[str, Any]]:
    """Map a graph test to (attached model, column, generic test name, arguments).

    The original uses dbt_utils / dbt_expectations; those packages are not available offline,
    so the project ships minimal look-alike generic tests (tests/generic/) and keeps the
    original test names via the ``name:`` property. Arguments are decoded from the names.
    Unknown test types fall back to ``not_null`` on the column (or ``metric_name``).
    """
    model = t.depends_on[0]
    if t.test == "relationships":
        m = re.match(r"^relationships_(.+)_" + re.escape(t.column or "") + r"__(.+)__ref_(.+)_$", t.name)
        if m and m.group(1) in t.depends_on and m.group(3) in t.depends_on:
            model, field, to = m.group(1), m.group(2), m.group(3)
            return model, t.column, "relationships", {"to": "ref(" + sql_str(to) + ")", "field": field}
    prefix = f"{model}_{t.column}__" if t.column else f"{model}__"
    suffix = t.name.split(prefix, 1)[1] if prefix in t.name else ""
    if t.test == "accepted_values" and suffix:
        return model, t.column, "accepted_values", {"values": suffix.split("__")}
    if t.test in ("expect_column_values_to_be_null", "expect_column_values_to_not_be_null"):
        args: dict[str, Any] = {}
        cond = _row_condition(suffix)
        if cond:
            args["row_condition"] = cond
        return model, t.column, t.test, args
    if t.test == "expect_column_values_to_be_between":
        bits = suffix.split("__", 2)
        if len(bits) >= 2:
            args = {"max_value": float(bits[0]), "min_value": float(bits[1])}
            cond = _row_condition(bits[2]) if len(bits) == 3 else None
            if cond:
                args["row_condition"] = cond
            return model, t.column, t.test, args
    if t.test == "expression_is_true" and "safe_divide" in t.name:
        # Inline SQL of fhir_dbt_utils.safe_divide (jinja inside test arguments is not rendered).
        return (
            model,
            None,
            "expression_is_true",
            {"expression": "round(numerator / nullif(denominator, 0), 6) = measure"},
        )
    return model, t.column or "metric_name", "not_null", {}


GENERIC_TESTS_SQL = """\
-- Minimal look-alikes of the dbt_expectations / dbt_utils generic tests used by the original
-- project (those packages would need `dbt deps` + network). Same semantics for the arguments used.

{% test expect_column_values_to_be_null(model, column_name, row_condition=none) %}
select * from {{ model }}
where {{ column_name }} is not null
{% if row_condition %}and ({{ row_condition }}){% endif %}
{% endtest %}

{% test expect_column_values_to_not_be_null(model, column_name, row_condition=none) %}
select * from {{ model }}
where {{ column_name }} is null
{% if row_condition %}and ({{ row_condition }}){% endif %}
{% endtest %}

{% test expect_column_values_to_be_between(model, column_name, min_value=none, max_value=none, row_condition=none) %}
select * from {{ model }}
where not (
  true
  {% if min_value is not none %}and {{ column_name }} >= {{ min_value }}{% endif %}
  {% if max_value is not none %}and {{ column_name }} <= {{ max_value }}{% endif %}
)
{% if row_condition %}and ({{ row_condition }}){% endif %}
{% endtest %}

{% test expression_is_true(model, expression) %}
-- Like dbt_utils: rows where the expression is false fail; NULL (e.g. COUNT metrics) passes.
select * from {{ model }}
where not ({{ expression }})
{% endtest %}
"""


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # JSON strings are valid YAML double-quoted scalars
    return repr(v)


def _tests_yaml(specs: list[tuple[str, str | None, str, dict[str, Any], str]]) -> str:
    """Schema YAML for the tests attached to models of one directory."""
    by_model: dict[str, list] = defaultdict(list)
    for spec in specs:
        by_model[spec[0]].append(spec)
    lines = ["version: 2", "", "models:"]
    for model in sorted(by_model):
        lines.append(f"  - name: {model}")
        model_tests = [s for s in by_model[model] if s[1] is None]
        col_tests: dict[str, list] = defaultdict(list)
        for s in by_model[model]:
            if s[1] is not None:
                col_tests[s[1]].append(s)
        if model_tests:
            lines.append("    data_tests:")
            lines += _test_entries(model_tests, "      ")
        if col_tests:
            lines.append("    columns:")
            for col in sorted(col_tests):
                lines.append(f"      - name: {col}")
                lines.append("        data_tests:")
                lines += _test_entries(col_tests[col], "          ")
    return "\n".join(lines) + "\n"


def _test_entries(specs: Iterable[tuple], ind: str) -> list[str]:
    out = []
    for _model, _col, test, args, name in specs:
        out.append(f"{ind}- {test}:")
        out.append(f"{ind}    name: {name}")
        if args:
            out.append(f"{ind}    arguments:")
            for k, v in args.items():
                if isinstance(v, list):
                    out.append(f"{ind}      {k}: [" + ", ".join(_yaml_scalar(x) for x in v) + "]")
                else:
                    out.append(f"{ind}      {k}: {_yaml_scalar(v)}")
    return out


# --------------------------------------------------------------------------------------------
# Project writer
# --------------------------------------------------------------------------------------------


def _calculation(metric_name: str, idx: int) -> str:
    if "count" in metric_name:
        return "COUNT"
    if "distribution" in metric_name:
        return "DISTRIBUTION"
    return "PROPORTION" if idx % 2 == 0 else "RATIO"


def _package_dir(out: Path, package: str, root_package: str) -> Path:
    return out if package == root_package else out / VENDOR_DIR / package


def _check_refs(m: GraphModel, sql: str) -> None:
    """Guard: the rendered SQL must ref exactly the graph's refs (the DAG must be identical)."""
    used = set(re.findall(r"ref\('([^']+)'\)", sql))
    if used != set(m.refs):
        raise AssertionError(f"{m.name}: SQL refs {sorted(used)} != graph refs {sorted(m.refs)}")


def _seed_csv(name: str, metrics: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if name == "thresholds":
        w.writerow(["metric_name", "lower_bound", "upper_bound"])
        for i, metric in enumerate(metrics):
            w.writerow([metric, 0, round(0.9 + (i % 10) / 100, 2)])
    elif name == "clinical_code_groups":
        w.writerow(["group_name", "code_system", "code", "display"])
        groups = [
            "ckd",
            "copd",
            "diabetes",
            "heart_failure",
            "hypertension",
            "aki_med",
            "aki_lab",
            "aki_proc",
        ]
        for i in range(400):
            g = groups[i % len(groups)]
            w.writerow([g, "http://snomed.info/sct" if i % 3 else "http://loinc.org", f"C{i % 40}", f"{g} code {i}"])
    else:
        w.writerow(["id", "label"])
        for i in range(200):
            w.writerow([i, f"{name}_{i}"])
    return buf.getvalue()


def _write_source_hook(
    out: Path, util_pkg: str, sources: list[tuple[str, str]], dialect: str = "duckdb"
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Write ``macros/create_bench_sources.sql``, called from ``on-run-start``.

    Why a hook with ``range()`` and not seed CSVs: a CTAS from ``range()`` takes milliseconds in
    DuckDB, whereas dbt loads seeds row by row through agate (38 tables x thousands of rows would
    cost seconds on every build and turn sources into seed nodes, changing the DAG). ``create
    table if not exists`` makes it idempotent and cheap on repeated builds (also with
    ``--select``), and keeps incremental models' inputs stable across runs.

    DuckDB identifiers are case-insensitive, so sources ``fhir.Binary`` and ``fhir.binary`` (both
    declared by the graph) are the same physical table (``fhir_src.binary``); it is created once.
    """
    physical: dict[tuple[str, str], int] = {}
    for schema, table in sorted(sources, key=lambda s: (s[0], s[1].lower())):
        key = (schema, table.lower())
        physical.setdefault(key, len(physical))
    rows = {f"{s}.{t}": SOURCE_BASE_ROWS + SOURCE_ROW_STEP * i for (s, t), i in physical.items()}
    # Catalog-qualified so that a database named like a schema cannot make names ambiguous (DuckDB;
    # PostgreSQL refuses database-qualified schema names and has one database per connection).
    db = '"{{ target.database }}".' if dialect == "duckdb" else ""
    stmts = [f"create schema if not exists {db}{physical_schema(s)};" for s in sorted({s for s, _ in physical})]
    for (schema, table), i in physical.items():
        stmts.append(
            f"create table if not exists {db}{physical_schema(schema)}.{table} as\n"
            + _fhir_rows_call(util_pkg, rows[f"{schema}.{table}"], i)
            + ";"
        )
    write(
        out / "macros" / "create_bench_sources.sql",
        "-- on-run-start hook: creates the FHIR source tables ("
        + str(len(physical))
        + " physical tables for "
        + str(len(sources))
        + " declared sources;\n-- DuckDB is case-insensitive, so e.g. fhir.Binary and"
        " fhir.binary are one table).\n{% macro create_bench_sources() %}\n" + "\n".join(stmts) + "\n{% endmacro %}\n",
    )
    return physical, rows


def generate_fhir_project(
    out_dir: Path | str = DEFAULT_OUT,
    graph_path: Path | str = DEFAULT_GRAPH,
    *,
    root_package: str = "fhir_dbt_analytics",
    runtime_sources: bool = False,
    dialect: str = "duckdb",
    latency: tuple[float, float] | None = None,
    latency_seed: int = 13,
) -> Path:
    """Generate the FHIR benchmark project into ``out_dir`` (wiped first) and return its path.

    Args:
        out_dir: target directory (deleted and recreated).
        graph_path: ``fhir_graph.json``.
        root_package: graph package that becomes the root dbt project; every other package is
            written to ``<out_dir>/vendored_packages/<package>``.
        runtime_sources: call ``source()`` only under ``{% if execute %}`` like the original, so
            the manifest has no source->model edges. Default False: the edges are explicit.
        dialect: ``duckdb`` (default) or ``postgres`` (profile on the ``DAGSTER_WATCHER_PG_*``
            server, PostgreSQL spellings of the same SQL).
        latency: ``(low, high)`` seconds: every enabled model first waits on the server like a
            warehouse query (``pg_sleep`` pre-hook; postgres only), drawn once with ``latency_seed``.

    Raises:
        ValueError: an unknown dialect, or a latency on DuckDB (which has no server to wait on).
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")
    if latency is not None and dialect != "postgres":
        raise ValueError("latency needs dialect='postgres' (pg_sleep on the server)")

    def sql_text(text: str) -> str:
        return to_postgres(text) if dialect == "postgres" else text

    graph = load_graph(Path(graph_path))
    out = reset_dir(Path(out_dir))
    models = graph.models
    packages = sorted({m.package for m in models.values()} | {root_package})

    table_list = models.get("fhir_table_list")
    util_pkg = table_list.package if table_list else root_package
    resource_dir = table_list.path.rsplit("/", 1)[0] if table_list else None
    resource_models = {
        n
        for n, m in models.items()
        if resource_dir and m.path.rsplit("/", 1)[0] == resource_dir and n != "fhir_table_list"
    }
    metrics = sorted(n for n, m in models.items() if m.enabled and m.folder == "metrics")
    metric_calc = {name: _calculation(name, i) for i, name in enumerate(metrics)}

    # --- project files ------------------------------------------------------------------------
    write(out / "profiles.yml", POSTGRES_PROFILES_YML if dialect == "postgres" else PROFILES_YML)
    write(
        out / "dbt_project.yml",
        f"""\
# Generated by benchmarks/gen_fhir.py from fhir_graph.json: the DAG of google/fhir-dbt-analytics
# with own {"PostgreSQL" if dialect == "postgres" else "DuckDB"} SQL. Do not edit; regenerate.
name: {root_package}
version: "1.0.0"
config-version: 2
profile: {PROFILE_NAME}

model-paths: ["models"]
seed-paths: ["seeds"]
test-paths: ["tests"]
macro-paths: ["macros"]
target-path: target
# Non-root packages of the graph live here; dbt loads them without packages.yml / dbt deps.
packages-install-path: {VENDOR_DIR}
clean-targets: ["target", "logs"]

# Creates the source tables (range()-generated rows) before any node runs; idempotent.
on-run-start:
  - "{{{{ create_bench_sources() }}}}"

flags:
  send_anonymous_usage_stats: false
""",
    )
    for pkg in packages:
        if pkg == root_package:
            continue
        write(
            _package_dir(out, pkg, root_package) / "dbt_project.yml",
            f'name: {pkg}\nversion: "1.0.0"\nconfig-version: 2\n\nmodel-paths: ["models"]\nmacro-paths: ["macros"]\n',
        )

    latencies = draw_latencies((n for n, m in models.items() if m.enabled), *latency, latency_seed) if latency else {}

    # --- macros -------------------------------------------------------------------------------
    write(
        _package_dir(out, util_pkg, root_package) / "macros" / "fhir_rows.sql",
        sql_text(
            """\
-- Deterministic pseudo-FHIR rows: the column contract shared by all source tables and
-- resource views. Modular arithmetic instead of random() keeps every build identical.
{% macro fhir_rows(n_rows, salt) -%}
select
  r.i as id,
  (r.i * 7 + {{ salt }}) % 600 as patient_id,
  (r.i * 13 + {{ salt }}) % 1500 as encounter_id,
  (r.i + {{ salt }}) % 80 as practitioner_id,
  (r.i * 31 + {{ salt }}) % 2500 as ref_id,
  'C' || ((r.i + {{ salt }}) % 40) as code,
  ['active', 'inactive', 'entered-in-error', 'unknown'][((r.i + {{ salt }}) % 4) + 1] as status,
  round(((r.i * 17 + {{ salt }}) % 1000) / 10.0, 1) as amount,
  timestamp '2024-01-01' + to_hours(cast((r.i * 37 + {{ salt }}) % 2160 as integer)) as recorded_at,
  (r.i + {{ salt }}) % 5 <> 0 as has_text
from range({{ n_rows }}) as r(i)
{%- endmacro %}
"""
        ),
    )
    physical, _rows = _write_source_hook(out, util_pkg, graph.sources, dialect)
    catalog_values = ",\n    ".join(
        f"({sql_str(n)}, {sql_str(metric_calc[n])}, {sql_str(models[n].path.split('/')[2] if models[n].path.count('/') > 2 else 'metrics')}, {i})"
        for i, n in enumerate(metrics)
    )
    write(
        out / "macros" / "metric_catalog.sql",
        "-- The metric definitions (one per enabled models/metrics/* node), shared by the metadata models.\n"
        "{% macro metric_catalog() %}\nselect * from (\n  values\n    "
        + catalog_values
        + "\n) as c(metric_name, calculation, category, metric_idx)\n{% endmacro %}\n",
    )
    write(out / "tests" / "generic" / "bench_generic_tests.sql", GENERIC_TESTS_SQL)

    # --- sources ------------------------------------------------------------------------------
    # Declared in the package whose models read them (fhir_dbt_utils), schema = source name.
    by_source: dict[str, list[str]] = defaultdict(list)
    for src_name, table in graph.sources:
        by_source[src_name].append(table)
    src_users = [m.package for m in models.values() if m.sources]
    src_pkg = max(sorted(set(src_users)), key=src_users.count) if src_users else root_package
    lines = ["version: 2", "", "sources:"]
    for s in sorted(by_source):
        lines += [f"  - name: {s}", f"    schema: {physical_schema(s)}"]
        if dialect == "postgres":
            # The hook creates the physical tables unquoted (lower case); the graph's table names
            # are mixed case (fhir.Binary), which PostgreSQL would treat as a different name quoted.
            lines += ["    quoting:", "      identifier: false"]
        lines += ["    tables:"]
        lines += [f"      - name: {t}" for t in sorted(by_source[s])]
    write(_package_dir(out, src_pkg, root_package) / "models" / "sources.yml", "\n".join(lines))

    # --- seeds --------------------------------------------------------------------------------
    for seed in sorted(graph.seeds):
        write(out / "seeds" / f"{seed}.csv", _seed_csv(seed, metrics))

    # --- models -------------------------------------------------------------------------------
    resource_list = [
        (r, snake(models[r].sources[0][1]) if models[r].sources else snake(r)) for r in sorted(resource_models)
    ]
    source_schema = physical_schema(min(by_source) if by_source else "fhir")
    for idx, (name, m) in enumerate(models.items()):
        sql: str | None = None
        if name == "fhir_table_list" and not m.refs and not m.sources:
            sql = sql_table_list(m, resource_list, source_schema, dialect)
        elif name in resource_models and m.materialized != "incremental":
            sql = sql_resource_view(m, util_pkg, len(physical) + idx, runtime_sources)
        elif (
            m.folder == "metrics"
            and any(r in resource_models for r in m.refs)
            and not m.sources
            and m.materialized != "incremental"
        ):
            sql = sql_dq_metric(m, resource_models, metric_calc.get(name, "PROPORTION"))
        elif not m.sources:
            bespoke = _bespoke(m)
            if bespoke is not None and bespoke[0] == set(m.refs):
                sql = _header(m, "bespoke") + bespoke[1]
        if sql is None:
            sql = sql_generic(m, runtime_sources)
        _check_refs(m, sql)
        if name in latencies:
            # A second config() call merges with the template's: the wait runs on the server, inside
            # the model's own execution (dbt's execute timing), before its SQL.
            sql = sql.replace(
                "\n{{ config(", f'\n{{{{ config(pre_hook="select pg_sleep({latencies[name]})") }}}}\n{{{{ config(', 1
            )
        write(_package_dir(out, m.package, root_package) / m.path, sql_text(sql))

    # --- tests --------------------------------------------------------------------------------
    specs_by_file: dict[Path, list] = defaultdict(list)
    for t in graph.tests:
        model, col, test, args = _test_spec(t)
        gm = models[model]
        yml = (
            _package_dir(out, gm.package, root_package)
            / Path(gm.path).parent
            / f"_{Path(gm.path).parent.name}__tests.yml"
        )
        specs_by_file[yml].append((model, col, test, args, t.name))
    for yml, specs in sorted(specs_by_file.items()):
        write(yml, _tests_yaml(specs))

    write(
        out / "generator.json",
        json.dumps(
            {
                "generator": "benchmarks/gen_fhir.py",
                "graph": Path(graph_path).name,
                "root_package": root_package,
                "runtime_sources": runtime_sources,
                "dialect": dialect,
                "latency": (
                    {
                        "low": latency[0],
                        "high": latency[1],
                        "seed": latency_seed,
                        "total_seconds": round(sum(latencies.values()), 2),
                        "per_model": latencies,
                    }
                    if latency
                    else None
                ),
                "expected": {
                    "models_enabled": sum(m.enabled for m in models.values()),
                    "models_disabled": sum(not m.enabled for m in models.values()),
                    "seeds": len(graph.seeds),
                    "sources": len(graph.sources),
                    "tests": len(graph.tests),
                    "model_edges": sum(len(m.refs) for m in models.values() if m.enabled),
                },
            },
            indent=2,
            sort_keys=True,
        ),
    )
    return out


def compare_manifest_to_graph(
    manifest_path: Path | str, graph_path: Path | str = DEFAULT_GRAPH, *, runtime_sources: bool = False
) -> dict[str, Any]:
    """Check a parsed project's ``manifest.json`` against the graph; return counts + mismatches.

    Compares enabled/disabled models (name, package, path, materialization), every model's ref
    and source parents (``depends_on.nodes``), seeds, sources and tests (name + parents).
    ``mismatches`` is empty when the generated DAG is identical to the graph.
    """
    graph = load_graph(Path(graph_path))
    man = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    nodes = man["nodes"]
    names = {uid: n["name"] for uid, n in nodes.items()}
    problems: list[str] = []

    models = {n["name"]: n for n in nodes.values() if n["resource_type"] == "model"}
    want_enabled = {n for n, m in graph.models.items() if m.enabled}
    if set(models) != want_enabled:
        problems.append(
            f"enabled models differ: extra={sorted(set(models) - want_enabled)} missing={sorted(want_enabled - set(models))}"
        )
    disabled = {d["name"] for ds in man.get("disabled", {}).values() for d in ds if d["resource_type"] == "model"}
    want_disabled = set(graph.models) - want_enabled
    if disabled != want_disabled:
        problems.append(f"disabled models differ: {sorted(disabled ^ want_disabled)}")

    edges = source_edges = 0
    for name in sorted(want_enabled & set(models)):
        gm, n = graph.models[name], models[name]
        if (n["package_name"], n["original_file_path"], n["config"]["materialized"]) != (
            gm.package,
            gm.path,
            gm.materialized,
        ):
            problems.append(
                f"{name}: package/path/materialized {n['package_name']}, {n['original_file_path']}, {n['config']['materialized']}"
            )
        parents = n["depends_on"]["nodes"]
        ref_parents = sorted(names[p] for p in parents if p in names)
        src_parents = sorted(
            tuple(man["sources"][p][k] for k in ("source_name", "name")) for p in parents if p in man["sources"]
        )
        edges += len(ref_parents)
        source_edges += len(src_parents)
        if ref_parents != sorted(gm.refs):
            problems.append(f"{name}: refs {ref_parents} != {sorted(gm.refs)}")
        want_src = [] if runtime_sources else sorted(gm.sources)
        if src_parents != want_src:
            problems.append(f"{name}: sources {src_parents} != {want_src}")

    seeds = sorted(n["name"] for n in nodes.values() if n["resource_type"] == "seed")
    if seeds != sorted(graph.seeds):
        problems.append(f"seeds {seeds} != {sorted(graph.seeds)}")
    sources = sorted((s["source_name"], s["name"]) for s in man["sources"].values())
    if sources != sorted(graph.sources):
        problems.append("sources differ")
    tests = {
        n["name"]: sorted(names[p] for p in n["depends_on"]["nodes"])
        for n in nodes.values()
        if n["resource_type"] == "test"
    }
    want_tests = {t.name: sorted(t.depends_on) for t in graph.tests}
    if tests != want_tests:
        problems.append(f"tests differ: {sorted(set(tests) ^ set(want_tests))}")

    return {
        "manifest": {
            "models_enabled": len(models),
            "models_disabled": len(disabled),
            "model_edges": edges,
            "source_edges": source_edges,
            "seeds": len(seeds),
            "sources": len(sources),
            "tests": len(tests),
        },
        "graph": {
            "models_enabled": len(want_enabled),
            "models_disabled": len(want_disabled),
            "model_edges": sum(len(m.refs) for m in graph.models.values() if m.enabled),
            "source_edges": 0 if runtime_sources else sum(len(m.sources) for m in graph.models.values() if m.enabled),
            "seeds": len(graph.seeds),
            "sources": len(graph.sources),
            "tests": len(graph.tests),
        },
        "mismatches": problems,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", type=Path, default=DEFAULT_GRAPH, help="fhir_graph.json (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir, wiped first (default: %(default)s)")
    parser.add_argument("--root-package", default="fhir_dbt_analytics", help="graph package used as the root project")
    parser.add_argument(
        "--runtime-sources",
        action="store_true",
        help="call source() only under {%% if execute %%} like the original (no source edges in the manifest)",
    )
    parser.add_argument(
        "--check-manifest",
        type=Path,
        metavar="MANIFEST",
        help="do not generate; compare a parsed project's target/manifest.json with the graph (exit 1 on mismatch)",
    )
    parser.add_argument("--dialect", choices=DIALECTS, default="duckdb", help="SQL dialect (default: %(default)s)")
    parser.add_argument(
        "--latency",
        metavar="LOW,HIGH",
        help="postgres: every model first waits LOW..HIGH seconds on the server (pg_sleep), drawn once with --latency-seed",
    )
    parser.add_argument("--latency-seed", type=int, default=13)
    args = parser.parse_args(argv)
    latency = None
    if args.latency:
        low, _, high = args.latency.partition(",")
        latency = (float(low), float(high or low))
    if args.check_manifest:
        report = compare_manifest_to_graph(args.check_manifest, args.graph, runtime_sources=args.runtime_sources)
        print(json.dumps(report, indent=2))
        raise SystemExit(1 if report["mismatches"] else 0)
    out = generate_fhir_project(
        args.out,
        args.graph,
        root_package=args.root_package,
        runtime_sources=args.runtime_sources,
        dialect=args.dialect,
        latency=latency,
        latency_seed=args.latency_seed,
    )
    print(out)


if __name__ == "__main__":
    main()
