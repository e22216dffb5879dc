"""Generate a large, layered synthetic DuckDB dbt project for scaling/overhead benchmarks.

The point of these projects is the *number* of nodes (1,000-5,000+ models), not the SQL: every
model is a trivial join of 1-4 parents over ``--rows`` (default 100) rows, so a build measures
dbt's and dagster-watcher's per-node overhead rather than query time.

Shape (all random choices come from ``random.Random(--seed)``, so output is deterministic):

* bottom: ``--sources`` source tables (created by an ``on-run-start`` hook from ``range()``) and
  ``--seeds`` seed CSVs;
* ``--layers`` layers of models, ``--nodes`` models in total, spread evenly;
* layer 0 models read 1-4 bottom nodes; a model in layer k>0 reads one model of layer k-1 (so the
  DAG really is ``--layers`` deep) plus 0-3 random nodes from anything below it;
* mostly views; ``--table-share`` of the models are tables, and a view whose fully inlined query
  would scan more than ``--max-view-scans`` base relations is turned into a table, because
  stacked views with fan-in expand exponentially in DuckDB's planner;
* ``--test-share`` of the models get one generic test (``not_null`` or ``unique`` on ``id``).

Usage::

    python benchmarks/gen_synthetic.py --nodes 1000               # -> benchmarks/projects/synthetic_1000
    python benchmarks/gen_synthetic.py --nodes 5000 --layers 20 --out /tmp/syn5k
    cd benchmarks/projects/synthetic_1000 && DAGSTER_WATCHER_DUCKDB_PATH=/tmp/syn.duckdb \\
        dbt build --profiles-dir . --threads 8
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

try:  # imported as part of the ``benchmarks`` package
    from ._common import PROFILE_NAME, PROFILES_YML, reset_dir, write
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from _common import PROFILE_NAME, PROFILES_YML, reset_dir, write  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_NAME = "synthetic_bench"
SOURCE_NAME = "raw"
# Physical schema of the source tables: not "raw", because a DuckDB file named raw.duckdb would make
# views over "raw"."raw"."x" fail with "Ambiguous reference to catalog or schema".
SOURCE_SCHEMA = "raw_src"
MAX_FAN_IN = 4


@dataclass
class SynNode:
    """A node of the synthetic DAG (model, seed or source)."""

    name: str
    kind: str  # "model" | "seed" | "source"
    layer: int  # -1 for seeds/sources
    parents: list[str] = field(default_factory=list)
    materialized: str = "view"
    test: str | None = None
    # Base relations (tables/seeds/sources) scanned when this relation is queried with all
    # upstream views inlined; 1 for anything materialized.
    scans: int = 1


def build_dag(
    nodes: int,
    *,
    layers: int = 10,
    seed: int = 0,
    test_share: float = 0.2,
    table_share: float = 0.1,
    n_sources: int = 3,
    n_seeds: int = 2,
    max_view_scans: int = 16,
) -> list[SynNode]:
    """Build the synthetic DAG in memory (bottom nodes first, then models layer by layer)."""
    if nodes < 1 or layers < 1:
        raise ValueError("nodes and layers must be >= 1")
    if n_sources + n_seeds < 1:
        raise ValueError("need at least one source or seed at the bottom")
    layers = min(layers, nodes)
    rng = random.Random(seed)

    bottom = [SynNode(f"src_{i}", "source", -1) for i in range(n_sources)]
    bottom += [SynNode(f"seed_{i}", "seed", -1) for i in range(n_seeds)]
    by_name = {n.name: n for n in bottom}
    out = list(bottom)

    base, extra = divmod(nodes, layers)
    sizes = [base + (1 if i < extra else 0) for i in range(layers)]
    below: list[str] = [n.name for n in bottom]  # every node in a lower layer (incl. bottom)
    prev_layer: list[str] = []
    width = len(str(nodes - 1))
    idx = 0
    for layer, size in enumerate(sizes):
        this_layer: list[str] = []
        for _ in range(size):
            fan_in = rng.randint(1, MAX_FAN_IN)
            if layer == 0:
                parents = rng.sample(below, min(fan_in, len(below)))
            else:
                parents = [rng.choice(prev_layer)]
                while len(parents) < min(fan_in, len(below)):
                    p = rng.choice(below)
                    if p not in parents:
                        parents.append(p)
            node = SynNode(f"m{layer:02d}_{idx:0{width}d}", "model", layer, parents)
            node.scans = sum(by_name[p].scans for p in parents)
            if rng.random() < table_share or node.scans > max_view_scans:
                node.materialized, node.scans = "table", 1
            if rng.random() < test_share:
                node.test = rng.choice(("not_null", "unique"))
            by_name[node.name] = node
            out.append(node)
            this_layer.append(node.name)
            idx += 1
        below += this_layer
        prev_layer = this_layer
    return out


def _model_sql(node: SynNode, kinds: dict[str, str]) -> str:
    """Trivial SQL: inner join of all parents on ``id`` (all relations share ids 0..rows-1)."""

    def rel(name: str) -> str:
        if kinds[name] == "source":
            return "{{ source('" + SOURCE_NAME + "', '" + name + "') }}"
        return "{{ ref('" + name + "') }}"

    lines = ["{{ config(materialized='" + node.materialized + "') }}", "", "select", "  p1.id,"]
    lines.append("  (" + " + ".join(f"p{i}.v" for i in range(1, len(node.parents) + 1)) + ") % 1000 as v")
    lines.append(f"from {rel(node.parents[0])} as p1")
    for i, parent in enumerate(node.parents[1:], 2):
        lines.append(f"join {rel(parent)} as p{i} on p{i}.id = p1.id")
    return "\n".join(lines) + "\n"


def generate_synthetic_project(
    out_dir: Path | str,
    nodes: int,
    *,
    layers: int = 10,
    seed: int = 0,
    test_share: float = 0.2,
    table_share: float = 0.1,
    n_sources: int = 3,
    n_seeds: int = 2,
    rows: int = 100,
    max_view_scans: int = 16,
) -> Path:
    """Generate the synthetic project into ``out_dir`` (wiped first) and return its path.

    Args:
        out_dir: target directory (deleted and recreated).
        nodes: number of models (seeds, sources and tests come on top).
        layers: DAG depth in model layers.
        seed: RNG seed; same arguments -> byte-identical project.
        test_share: fraction of models with one generic test.
        table_share: fraction of models materialized as tables (plus forced ones, see module doc).
        n_sources: source tables at the bottom (created by the on-run-start hook).
        n_seeds: seed CSVs at the bottom.
        rows: rows in every source/seed (and so in every model: joins are 1:1 on id).
        max_view_scans: max base relations an inlined view may scan before it becomes a table.
    """
    dag = build_dag(
        nodes,
        layers=layers,
        seed=seed,
        test_share=test_share,
        table_share=table_share,
        n_sources=n_sources,
        n_seeds=n_seeds,
        max_view_scans=max_view_scans,
    )
    out = reset_dir(Path(out_dir))
    kinds = {n.name: n.kind for n in dag}

    write(out / "profiles.yml", PROFILES_YML)
    write(
        out / "dbt_project.yml",
        f"""\
# Generated by benchmarks/gen_synthetic.py (nodes={nodes}, layers={layers}, seed={seed}). Do not edit; regenerate.
name: {PROJECT_NAME}
version: "1.0.0"
config-version: 2
profile: {PROFILE_NAME}

model-paths: ["models"]
seed-paths: ["seeds"]
macro-paths: ["macros"]
target-path: target
clean-targets: ["target", "logs"]

# Creates the source tables before any node runs (a range() CTAS costs milliseconds; seeds would
# go through agate). Idempotent, so repeated or --select builds keep working.
on-run-start:
  - "{{{{ create_synthetic_sources() }}}}"

flags:
  send_anonymous_usage_stats: false
""",
    )

    sources = [n for n in dag if n.kind == "source"]
    db = '"{{ target.database }}".'  # catalog-qualified: robust whatever the file is called
    stmts = [f"create schema if not exists {db}{SOURCE_SCHEMA};"]
    for i, s in enumerate(sources):
        stmts.append(
            f"create table if not exists {db}{SOURCE_SCHEMA}.{s.name} as\n"
            f"select r.i as id, (r.i * 7 + {i}) % 1000 as v from range({rows}) as r(i);"
        )
    write(
        out / "macros" / "create_synthetic_sources.sql",
        "{% macro create_synthetic_sources() %}\n" + "\n".join(stmts) + "\n{% endmacro %}\n",
    )
    if sources:
        write(
            out / "models" / "sources.yml",
            "version: 2\n\nsources:\n"
            f"  - name: {SOURCE_NAME}\n    schema: {SOURCE_SCHEMA}\n    tables:\n"
            + "".join(f"      - name: {s.name}\n" for s in sources),
        )
    for i, s in enumerate(n for n in dag if n.kind == "seed"):
        write(
            out / "seeds" / f"{s.name}.csv",
            "id,v\n" + "".join(f"{r},{(r * 11 + i) % 1000}\n" for r in range(rows)),
        )

    tests_by_layer: dict[int, list[SynNode]] = defaultdict(list)
    for n in dag:
        if n.kind != "model":
            continue
        layer_dir = out / "models" / f"layer_{n.layer:02d}"
        write(layer_dir / f"{n.name}.sql", _model_sql(n, kinds))
        if n.test:
            tests_by_layer[n.layer].append(n)
    for layer, tested in sorted(tests_by_layer.items()):
        lines = ["version: 2", "", "models:"]
        for n in tested:
            lines += [
                f"  - name: {n.name}",
                "    columns:",
                "      - name: id",
                "        data_tests:",
                f"          - {n.test}",
            ]
        write(out / "models" / f"layer_{layer:02d}" / f"_layer_{layer:02d}__tests.yml", "\n".join(lines))

    models = [n for n in dag if n.kind == "model"]
    write(
        out / "generator.json",
        json.dumps(
            {
                "generator": "benchmarks/gen_synthetic.py",
                "params": {
                    "nodes": nodes,
                    "layers": layers,
                    "seed": seed,
                    "test_share": test_share,
                    "table_share": table_share,
                    "n_sources": n_sources,
                    "n_seeds": n_seeds,
                    "rows": rows,
                    "max_view_scans": max_view_scans,
                },
                "expected": {
                    "models": len(models),
                    "materialized": dict(sorted(Counter(n.materialized for n in models).items())),
                    "seeds": n_seeds,
                    "sources": n_sources,
                    "tests": sum(1 for n in models if n.test),
                    "edges": sum(len(n.parents) for n in models),
                    "layers": len({n.layer for n in models}),
                },
            },
            indent=2,
            sort_keys=True,
        ),
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="number of models (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=10, help="DAG depth in model layers (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default: %(default)s)")
    parser.add_argument(
        "--test-share", type=float, default=0.2, help="share of models with a test (default: %(default)s)"
    )
    parser.add_argument(
        "--table-share",
        type=float,
        default=0.1,
        help="share of models that are tables (default: %(default)s)",
    )
    parser.add_argument("--sources", type=int, default=3, help="source tables at the bottom (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=2, help="seed CSVs at the bottom (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=100, help="rows per source/seed (default: %(default)s)")
    parser.add_argument(
        "--max-view-scans",
        type=int,
        default=16,
        help="views whose inlined query scans more base relations become tables (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output dir, wiped first (default: benchmarks/projects/synthetic_<nodes>)",
    )
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "benchmarks" / "projects" / f"synthetic_{args.nodes}"
    path = generate_synthetic_project(
        out,
        args.nodes,
        layers=args.layers,
        seed=args.seed,
        test_share=args.test_share,
        table_share=args.table_share,
        n_sources=args.sources,
        n_seeds=args.seeds,
        rows=args.rows,
        max_view_scans=args.max_view_scans,
    )
    print(path)


if __name__ == "__main__":
    main()
