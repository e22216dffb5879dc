"""Deployment tests (issue 6, part A): the example project in a real ``dagster dev`` (webserver, daemon,
code server, run workers), driven only through GraphQL and a headless browser, on SQLite and on
PostgreSQL instance storage.

Each instance type gets one ``dagster dev`` for the whole module. It serves a copy of the repo's
``workspace.yaml`` and ``example_project`` (see :func:`staged_workspace`), with the consumer sensors
stopped so that no sensor-launched run changes what these tests read (part B tests the sensors).

Needs Debian's ``postgresql`` and ``chromium`` (.ci/run installs them) and the ``dagster-postgres``
package. Screenshots (and the DOM they were taken with) are kept in tests/artifacts/.

Run config note: a run config for ``dbt_watcher`` *replaces* the resource config set in code (Dagster
makes the code values the default of the whole config dict), so every run config here repeats
``project_dir``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dagster_watcher.artifacts import build_dirs_of_run

from ..support.deployment import (
    ARTIFACTS,
    REPO,
    DagsterDev,
    PostgresServer,
    chromium_capture,
    is_test_verdict,
    key_str,
    metadata_dict,
    running_dagster_dev,
    running_postgres,
)

pytestmark = pytest.mark.slow

#: Every asset of the dbt project (models, seeds, snapshot), by name.
DBT_ASSETS = {
    "raw_customers", "raw_orders", "raw_payments",
    "stg_customers", "stg_orders", "stg_payments",
    "customers", "orders", "daily_revenue", "order_updates", "customers_snapshot",
}  # fmt: skip
N_CHECKS = 10
#: dbt nodes that are no asset check but whose verdict is recorded (observed on their parent assets):
#: the singular test over two models and the unit test.
TESTS_WITHOUT_CHECK = {
    "test.shop.assert_revenue_matches_orders",
    "unit_test.shop.stg_payments.stg_payments_converts_cents_to_dollars",
}
WARN_CHECK = "not_null_stg_customers_email"
FAILING = "stg_payments"
FAIL_TEXT = "stg_payments failed on purpose"
SKIPPED_BY_FAILURE = {"orders", "daily_revenue"}
#: One DBT_ENV_SECRET_ variable per secrets test, each with its own random value, so that a leak in
#: one test (they share a DAGSTER_HOME) can not make another fail.
SECRET_ENVS = ("PROFILE", "ERROR_RUNNER", "ERROR_SUBPROCESS", "VAR")


# ------------------------------------------------------------------------------------ helpers


def staged_workspace(dest: Path) -> Path:
    """A verbatim copy of the repo's workspace.yaml beside a copy of example_project (sources only).

    Why a copy: ``example_project/target`` is shared, mutable state. The definitions reuse the
    manifest.json found there whenever it is newer than the sources, and that manifest has the DuckDB
    catalog (the file's stem) of whoever parsed last baked in: after e.g. a benchmark parsed the
    example with ``bench.duckdb``, every runner-mode build against ``shop.duckdb`` fails with
    ``Catalog Error: "bench" is not a catalog or schema``. A copy parses on load, with this
    deployment's environment.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "workspace.yaml", dest / "workspace.yaml")
    shutil.copytree(
        REPO / "example_project",
        dest / "example_project",
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "*.duckdb", "*.duckdb.wal", "__pycache__"),
    )
    return dest / "workspace.yaml"


def watcher_config(project_dir: Path, **config: Any) -> dict[str, Any]:
    return {"resources": {"dbt_watcher": {"config": {"project_dir": str(project_dir), **config}}}}


@dataclass
class LaunchedRun:
    run_id: str
    run: dict[str, Any]
    events: list[dict[str, Any]]
    target_path: Path
    assets_after: list[dict[str, Any]]
    """``assetNodes`` as GraphQL shows them right after this run finished."""

    @property
    def status(self) -> str:
        return str(self.run["status"])

    def of_type(self, *event_types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("eventType") in event_types]

    def materialized(self) -> list[str]:
        return [key_str(e["assetKey"]) for e in self.of_type("ASSET_MATERIALIZATION")]  # type: ignore[misc]

    def observations(self) -> dict[str, dict[str, Any]]:
        """Each asset's own outcome observation (not the verdicts of tests observed on it)."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.of_type("ASSET_OBSERVATION"):
            if is_test_verdict(e):
                continue
            name = key_str(e["assetKey"])
            assert name not in out, f"two observations of {name} in one run"
            out[name] = metadata_dict(e["metadataEntries"])  # type: ignore[index]
        return out

    def check_evaluations(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for e in self.of_type("ASSET_CHECK_EVALUATION"):
            name = e["evaluation"]["checkName"]
            assert name not in out, f"two results for check {name} in one run"
            out[name] = e["evaluation"]
        return out

    def step_failure_messages(self) -> list[str]:
        return [e["error"]["message"] for e in self.of_type("STEP_FAILURE") if e.get("error")]

    def run_results(self) -> list[dict[str, Any]]:
        """dbt's run_results.json of this run's build, in dbt's order."""
        (build,) = build_dirs_of_run(self.target_path, self.run_id)
        return json.loads((build / "run_results.json").read_text())["results"]


def launch_and_wait(dev: DagsterDev, project_dir: Path, target_path: Path, **config: Any) -> LaunchedRun:
    client = dev.graphql
    client.wait_until_idle()
    run_id = client.launch_run(run_config=watcher_config(project_dir, target_path=str(target_path), **config))
    run = client.wait_for_run(run_id, timeout=600)
    return LaunchedRun(run_id, run, client.run_events(run_id), target_path, client.asset_nodes())


def dbt_nodes(assets: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The dbt project's assets (not the consumer assets the definitions may add), by name."""
    return {key_str(a["assetKey"]): a for a in assets if "shop_dbt_assets" in a["opNames"]}  # type: ignore[misc]


def latest_materialization(node: Mapping[str, Any]) -> dict[str, Any] | None:
    found = node["assetMaterializations"]
    return found[0] if found else None


def latest_observation(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The asset's latest own-outcome observation (tests' verdicts observed on it are skipped)."""
    found = [o for o in node["assetObservations"] if not is_test_verdict(o)]
    return found[0] if found else None


def execution_in(run: LaunchedRun, executions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The one check execution of ``run`` among a check's execution history."""
    found = [e for e in executions if e["runId"] == run.run_id]
    assert len(found) == 1, f"{len(found)} executions of the check in run {run.run_id}: {executions}"
    return dict(found[0])


def checks_of(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(node["assetChecksOrError"].get("checks") or [])


@dataclass
class Deployment:
    dev: DagsterDev
    project_dir: Path
    ok: LaunchedRun
    failed: LaunchedRun
    postgres: PostgresServer | None = None


def _deploy(dev: DagsterDev, project_dir: Path, tmp: Path, postgres: PostgresServer | None = None) -> Deployment:
    dev.graphql.stop_all_sensors()
    dev.graphql.dismiss_welcome_dialog()
    ok = launch_and_wait(dev, project_dir, tmp / "target_ok")
    failed = launch_and_wait(dev, project_dir, tmp / "target_fail", dbt_vars={"fail_model": FAILING})
    return Deployment(dev, project_dir, ok, failed, postgres)


@pytest.fixture(scope="module")
def secret_env() -> dict[str, str]:
    """The secret variables (name -> value) the SQLite deployment runs with."""
    return {f"DBT_ENV_SECRET_{name}": f"dwsecret-{secrets.token_hex(16)}" for name in SECRET_ENVS}


@pytest.fixture(scope="module")
def sqlite_deployment(tmp_path_factory: pytest.TempPathFactory, secret_env: dict[str, str]) -> Iterator[Deployment]:
    """dagster dev on SQLite storage with a full run and a run where stg_payments fails."""
    tmp = tmp_path_factory.mktemp("deploy_sqlite")
    workspace = staged_workspace(tmp / "repo")
    with running_dagster_dev(tmp / "dagster_home", workspace=workspace, env=secret_env) as dev:
        yield _deploy(dev, workspace.parent / "example_project", tmp)


@pytest.fixture(scope="module")
def postgres_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """dagster dev on PostgreSQL storage (dagster-postgres), same two runs."""
    tmp = tmp_path_factory.mktemp("deploy_postgres")
    workspace = staged_workspace(tmp / "repo")
    with running_postgres() as pg:
        with running_dagster_dev(tmp / "dagster_home", workspace=workspace, postgres=pg) as dev:
            yield _deploy(dev, workspace.parent / "example_project", tmp, pg)


# ------------------------------------------------------------------------------------ shared checks


def assert_full_build(dep: Deployment) -> None:
    run = dep.ok
    assert run.status == "SUCCESS", run.step_failure_messages()

    # The run's event log: one materialization per asset, one result per dbt test, nothing else.
    assert sorted(run.materialized()) == sorted(DBT_ASSETS)
    assert run.observations() == {}
    evaluations = run.check_evaluations()
    assert len(evaluations) == N_CHECKS
    assert {n for n, e in evaluations.items() if not e["success"]} == {WARN_CHECK}
    assert evaluations[WARN_CHECK]["severity"] == "WARN"

    # What the asset catalog shows: every model's latest materialization is this run's.
    nodes = dbt_nodes(run.assets_after)
    assert set(nodes) == DBT_ASSETS
    for name, node in nodes.items():
        latest = latest_materialization(node)
        assert latest is not None and latest["runId"] == run.run_id, name
        md = metadata_dict(latest["metadataEntries"])
        assert md["dagster_watcher/status"] == "success"
        assert md["unique_id"].split(".")[-1] == name
    assert metadata_dict(latest_materialization(nodes["customers"])["metadataEntries"])["dagster_watcher/relation_name"]  # type: ignore[index]

    # Checks as the catalog shows them, and the warning through the check-execution history.
    executions = {c["name"]: c["executionForLatestMaterialization"] for n in nodes.values() for c in checks_of(n)}
    assert len(executions) == N_CHECKS
    assert all(e is not None and e["runId"] == run.run_id for e in executions.values()), executions
    assert {n for n, e in executions.items() if e["status"] == "SUCCEEDED"} == set(executions) - {WARN_CHECK}
    warn = execution_in(run, dep.dev.graphql.check_executions(["stg_customers"], WARN_CHECK, limit=20))
    assert warn["status"] == "FAILED"
    assert warn["evaluation"]["severity"] == "WARN" and not warn["evaluation"]["success"]
    assert metadata_dict(warn["evaluation"]["metadataEntries"])["dagster_watcher/failure_count"] == "2"


def assert_failing_model_visible(dep: Deployment) -> None:
    run = dep.failed
    assert run.status == "FAILURE"

    observed = run.observations()
    assert set(observed) == {FAILING, *SKIPPED_BY_FAILURE}
    assert observed[FAILING]["dagster_watcher/status"] == "error"
    assert FAIL_TEXT in observed[FAILING]["dagster_watcher/error"]
    for name in SKIPPED_BY_FAILURE:
        assert observed[name]["dagster_watcher/status"] == "skipped"
        assert FAILING in observed[name]["dagster_watcher/error"]
    assert set(run.materialized()) == DBT_ASSETS - set(observed), "the unaffected branches still build"

    failures = run.step_failure_messages()
    assert failures and FAIL_TEXT in failures[0], failures

    # The catalog: the failed model keeps its last good materialization, and its latest observation
    # carries dbt's error text.
    nodes = dbt_nodes(run.assets_after)
    failing = nodes[FAILING]
    assert latest_materialization(failing)["runId"] == dep.ok.run_id  # type: ignore[index]
    obs = latest_observation(failing)
    assert obs is not None and obs["runId"] == run.run_id
    assert FAIL_TEXT in metadata_dict(obs["metadataEntries"])["dagster_watcher/error"]
    assert latest_materialization(nodes["customers"])["runId"] == run.run_id  # type: ignore[index]

    # A dbt test that never ran (its model failed) is not shown as passed.
    history = dep.dev.graphql.check_executions([FAILING], "unique_stg_payments_payment_id", limit=20)
    skipped_check = execution_in(run, history)
    assert skipped_check["status"] != "SUCCEEDED", skipped_check


# ------------------------------------------------------------------------------------ SQLite


def test_sqlite_full_build_through_graphql(sqlite_deployment: Deployment) -> None:
    assert_full_build(sqlite_deployment)


def test_sqlite_failing_model_error_text_through_graphql(sqlite_deployment: Deployment) -> None:
    assert_failing_model_visible(sqlite_deployment)


def test_ui_shows_models_and_their_states(sqlite_deployment: Deployment) -> None:
    """Headless Chromium renders the asset lineage and the failed run's page; screenshots are kept
    in tests/artifacts/."""
    dev = sqlite_deployment.dev
    lineage_url = f"{dev.url}/locations/__repository__@shop/asset-groups/default/lineage"
    dom = capture_until(
        lineage_url,
        ARTIFACTS / "deployment_asset_lineage.png",
        # The cards render first with "Loading..." in place of the state; wait for every state.
        missing=lambda dom: sorted(DBT_ASSETS - set(asset_card_states(dom))),
    )
    # Each asset's card ends with its state: the failed model and what dbt skipped after it are
    # "Failed" (latest run), everything else "Materialized".
    states = asset_card_states(dom)
    expected_failed = {FAILING, *SKIPPED_BY_FAILURE}
    assert {n: states[n] for n in DBT_ASSETS} == {
        n: "Failed" if n in expected_failed else "Materialized" for n in DBT_ASSETS
    }, states

    run_url = f"{dev.url}/runs/{sqlite_deployment.failed.run_id}"
    wanted = [FAIL_TEXT, "ASSET_OBSERVATION", "STEP_FAILURE", "Failure"]
    capture_until(
        run_url,
        ARTIFACTS / "deployment_failed_run.png",
        missing=lambda dom: [w for w in wanted if w not in text_of(dom)],
    )


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def asset_card_states(dom: str) -> dict[str, str]:
    """{asset name: state} from the asset lineage page's cards ("<name> Latest event ... <state> <date>")."""
    cards = re.finditer(
        r"\b([A-Za-z0-9_]+) Latest event (?:(?!Latest event).)*?\b(Materialized|Failed|Never materialized)\b",
        text_of(dom),
    )
    return {m.group(1): m.group(2) for m in cards}


def capture_until(url: str, screenshot: Path, missing: Callable[[str], list[str]], attempts: int = 4) -> str:
    """Render ``url`` until ``missing(dom)`` is empty (the app fetches its data after the first render,
    and a busy machine may need a longer virtual-time budget); keep the DOM next to the screenshot."""
    absent: list[str] = []
    for attempt in range(attempts):
        dom = chromium_capture(url, screenshot, budget_ms=15000 * (attempt + 1))
        screenshot.with_suffix(".html").write_text(dom)
        absent = missing(dom)
        if not absent:
            return dom
    raise AssertionError(f"{url} never showed {absent} after {attempts} renders (see {screenshot})")


# ------------------------------------------------------------------------------------ PostgreSQL


def test_postgres_full_build_through_graphql(postgres_deployment: Deployment) -> None:
    assert_full_build(postgres_deployment)


def test_postgres_failing_model_error_text_through_graphql(postgres_deployment: Deployment) -> None:
    assert_failing_model_visible(postgres_deployment)


def test_postgres_stores_the_event_log(postgres_deployment: Deployment) -> None:
    """The runs' events are rows in PostgreSQL, not in a SQLite file under DAGSTER_HOME."""
    pg = postgres_deployment.postgres
    assert pg is not None
    dump = pg.dump_text()
    assert postgres_deployment.failed.run_id in dump and FAIL_TEXT in dump
    history = postgres_deployment.dev.home / "history"
    assert not list(history.rglob("*.db")), "SQLite storage was used"


def node_event_ids(run: LaunchedRun) -> list[str]:
    """The dbt unique_id of every node event (materialization, check evaluation, and the first
    observation of a test's verdict: a test with no check is observed once per parent), in event-log
    order."""
    out = []
    for e in run.of_type("ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION", "ASSET_OBSERVATION"):
        entries = (
            e["evaluation"]["metadataEntries"] if e["eventType"] == "ASSET_CHECK_EVALUATION" else e["metadataEntries"]
        )
        metadata = metadata_dict(entries)
        if e["eventType"] == "ASSET_OBSERVATION" and "dagster_watcher/test" not in metadata:
            continue
        if metadata["unique_id"] not in out:
            out.append(metadata["unique_id"])
    return out


def test_postgres_node_events_complete_and_in_dependency_order(postgres_deployment: Deployment) -> None:
    """A 4-thread build: one event per dbt node that ran, none missing or doubled, and no event before
    the events of the nodes it depends on (dbt starts a node only after its parents finished)."""
    run = postgres_deployment.ok
    events = node_event_ids(run)
    assert len(events) == len(set(events)) == len(DBT_ASSETS) + N_CHECKS + len(TESTS_WITHOUT_CHECK)
    assert set(events) == {r["unique_id"] for r in run.run_results()}

    manifest = json.loads((postgres_deployment.project_dir / "target" / "manifest.json").read_text())
    parents: dict[str, list[str]] = manifest["parent_map"]
    position = {uid: i for i, uid in enumerate(events)}

    def ancestors(uid: str) -> set[str]:
        seen: set[str] = set()
        stack = list(parents.get(uid, ()))
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(parents.get(parent, ()))
        return seen

    for uid, i in position.items():
        if uid.startswith("unit_test."):
            continue  # dbt runs a model's unit tests before the model they test
        early = [a for a in ancestors(uid) if a in position and position[a] > i]
        assert not early, f"{uid} was recorded before its upstream {early}"

    stamps = [float(e["timestamp"]) for e in run.of_type("ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION")]
    assert stamps == sorted(stamps), "event-log order and event timestamps agree"


@pytest.fixture(scope="module")
def postgres_single_thread_run(
    postgres_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> LaunchedRun:
    tmp = tmp_path_factory.mktemp("pg_threads1")
    return launch_and_wait(postgres_deployment.dev, postgres_deployment.project_dir, tmp / "target", threads=1)


def test_postgres_node_events_in_dbt_finish_order(postgres_single_thread_run: LaunchedRun) -> None:
    """The event log lists the node events exactly in the order dbt finished the nodes, as dbt's
    run_results.json records it.

    One dbt thread: with several, run_results.json is not an exact record of the finish order (dbt
    fires a node's NodeFinished on the worker thread but appends its result on the pool's callback
    thread, so two nodes finishing together may be listed the other way round); the 4-thread run is
    checked against the dependency order above."""
    run = postgres_single_thread_run
    assert run.status == "SUCCESS", run.step_failure_messages()
    assert node_event_ids(run) == [r["unique_id"] for r in run.run_results()]


# ------------------------------------------------------------------------------------ secrets


def secret_profile(dest: Path, duckdb_path: Path, settings: Mapping[str, str]) -> Path:
    """A profiles dir for the shop project whose DuckDB ``settings`` read the secret env var (dbt
    scrubs values of ``DBT_ENV_SECRET_*`` variables from its logs)."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = ["shop:", "  target: dev", "  outputs:", "    dev:", "      type: duckdb",
             f"      path: {json.dumps(str(duckdb_path))}", "      threads: 4", "      settings:"]  # fmt: skip
    lines += [f"        {key}: {json.dumps(value)}" for key, value in settings.items()]
    (dest / "profiles.yml").write_text("\n".join(lines) + "\n")
    return dest


def from_env(name: str) -> str:
    return "{{ env_var('" + name + "') }}"


def places_holding(dep: Deployment, run: LaunchedRun, secret: str, *, include_run_config: bool = True) -> list[str]:
    """Where ``secret`` can be read back: the run's events, compute logs, asset metadata (GraphQL),
    and every file under DAGSTER_HOME (SQLite storage, compute logs, dagster dev's own log)."""
    client = dep.dev.graphql
    found = []
    surfaces = {
        "event log": json.dumps(client.run_events(run.run_id)),
        "compute logs": json.dumps(client.captured_logs(run.run_id)),
        "asset metadata": json.dumps(client.asset_nodes()),
        "run tags": json.dumps(client.run(run.run_id)["tags"]),
    }
    if include_run_config:
        surfaces["run config"] = client.run(run.run_id)["runConfigYaml"]
    found += [name for name, text in surfaces.items() if secret in text]
    needle = secret.encode()
    for path in sorted(dep.dev.home.rglob("*")):
        if not path.is_file() or path.suffix == ".duckdb":
            continue
        if not include_run_config and path.name in ("runs.db", "runs.db-wal"):
            continue  # the run storage holds run configs
        if needle in path.read_bytes():
            found.append(str(path.relative_to(dep.dev.home)))
    if dep.postgres is not None and secret in dep.postgres.dump_text():
        found.append("postgres tables")
    return found


def test_profile_secret_stays_out_of_dagster(
    sqlite_deployment: Deployment, secret_env: dict[str, str], tmp_path: Path
) -> None:
    """A secret the profile reads from a DBT_ENV_SECRET_ variable, in a build where a model fails
    (error paths included): it is in no event, log, metadata or stored file."""
    duckdb_path = tmp_path / "shop.duckdb"  # same file stem: the manifest names the catalog after it
    name = "DBT_ENV_SECRET_PROFILE"
    profiles = secret_profile(tmp_path / "profiles", duckdb_path, {"home_directory": from_env(name)})
    run = launch_and_wait(
        sqlite_deployment.dev, sqlite_deployment.project_dir, tmp_path / "target",
        profiles_dir=str(profiles), dbt_vars={"fail_model": FAILING},
    )  # fmt: skip
    assert run.status == "FAILURE"
    assert FAIL_TEXT in run.observations()[FAILING]["dagster_watcher/error"]
    assert duckdb_path.is_file(), "the build used the profile that reads the secret"
    assert places_holding(sqlite_deployment, run, secret_env[name]) == []


@pytest.mark.parametrize("mode", ["runner", "subprocess"])
def test_profile_secret_in_a_dbt_error_is_scrubbed(
    mode: str, sqlite_deployment: Deployment, secret_env: dict[str, str], tmp_path: Path
) -> None:
    """The secret ends up inside dbt's own error text (a DuckDB setting that can not take it), so dbt
    fails before any node runs: the error must reach Dagster with the secret scrubbed."""
    name = f"DBT_ENV_SECRET_ERROR_{mode.upper()}"
    profiles = secret_profile(tmp_path / "profiles", tmp_path / "shop.duckdb", {"threads": from_env(name)})
    run = launch_and_wait(
        sqlite_deployment.dev, sqlite_deployment.project_dir, tmp_path / "target",
        profiles_dir=str(profiles), invocation_mode=mode,
    )  # fmt: skip
    assert run.status == "FAILURE"
    failures = run.step_failure_messages()
    assert failures and "dbt did not complete" in failures[0], failures
    assert "Could not convert string" in failures[0], "dbt's error is visible in Dagster"
    assert places_holding(sqlite_deployment, run, secret_env[name]) == []


@pytest.fixture(scope="module")
def secret_var_run(
    sqlite_deployment: Deployment, secret_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> LaunchedRun:
    """A build given the secret as a dbt var in run config (the value is also a DBT_ENV_SECRET_
    variable's, so dbt scrubs it from its own output)."""
    tmp = tmp_path_factory.mktemp("secret_var")
    return launch_and_wait(
        sqlite_deployment.dev, sqlite_deployment.project_dir, tmp / "target",
        dbt_vars={"fail_model": FAILING, "api_token": secret_env["DBT_ENV_SECRET_VAR"]},
    )  # fmt: skip


def test_secret_dbt_var_stays_out_of_events_logs_and_metadata(
    sqlite_deployment: Deployment, secret_var_run: LaunchedRun, secret_env: dict[str, str]
) -> None:
    secret = secret_env["DBT_ENV_SECRET_VAR"]
    assert secret_var_run.status == "FAILURE"
    assert FAIL_TEXT in secret_var_run.observations()[FAILING]["dagster_watcher/error"]
    assert places_holding(sqlite_deployment, secret_var_run, secret, include_run_config=False) == []


def test_postgres_password_stays_out_of_dagster(postgres_deployment: Deployment) -> None:
    """The instance's PostgreSQL password (dagster.yaml reads it from an env var) is in no run's
    events, logs or metadata, nor in any file under DAGSTER_HOME."""
    pg = postgres_deployment.postgres
    assert pg is not None
    assert pg.password not in (postgres_deployment.dev.home / "dagster.yaml").read_text()
    for run in (postgres_deployment.ok, postgres_deployment.failed):
        assert places_holding(postgres_deployment, run, pg.password) == []
