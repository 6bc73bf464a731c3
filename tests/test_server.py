"""Deployments and automations against a real ``prefect server`` on 127.0.0.1 (slow).

The server is the session's ``prefect_server`` fixture (``tests/prefect_server.py``).
Everything that talks to it runs as the operator would: ``prefect`` and ``retail-etl`` commands in subprocesses
whose environment points PREFECT_API_URL at it.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import date
from pathlib import Path

import httpx
import pytest

from retail_etl import pg
from retail_etl.seed import seed_regions
from retail_etl.settings import DEFAULT_REGIONS, database_url
from tests.pipeline import EXPECTED_ACCEPTED_SQL
from tests.prefect_server import BIN, REPO, PrefectServer, run_command

# one worker starts the session's prefect server and runs every test that needs it
pytestmark = [pytest.mark.server, pytest.mark.xdist_group("prefect-server")]

DAY = date(2024, 1, 15)
POOL = "retail-etl-pool"


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The work pool and the deployments of prefect.yaml, deployed from the repo root."""
    env = prefect_server.env()
    for pool in (POOL, "retail-etl-staging-pool", "retail-etl-prod-pool"):  # one per environment
        run_command([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], env)
    run_command([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    return prefect_server


def test_daily_deployment_runs_on_a_process_worker(
    deployed: PrefectServer, tmp_path, unique_prefix, drop_prefixed_databases, pg_server_url
):
    server = deployed
    deployment = server.get("/deployments/name/retail-sales-etl/daily").json()
    assert deployment["entrypoint"] == "flows/etl.py:retail_sales_etl"
    assert deployment["work_pool_name"] == POOL
    assert deployment["parameters"] == {"run_date": None, "regions": None, "lookback_days": None}
    # Heartbeats on, so a run whose host dies is found by the zombie automation.
    assert deployment["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "60"
    (schedule,) = deployment["schedules"]
    # After every default region's business day has closed (us_west: 07:00/08:00 UTC + grace).
    assert schedule["schedule"]["cron"] == "0 11 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    (pull,) = deployment["pull_steps"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    backfill = server.get("/deployments/name/retail-sales-backfill/backfill").json()
    assert backfill["entrypoint"] == "flows/backfill.py:retail_sales_backfill"
    assert backfill["work_pool_name"] == POOL and backfill["schedules"] == []
    assert backfill["parameters"] == {"missing_only": False, "changed_only": False}
    audit = server.get("/deployments/name/retail-sales-audit/audit").json()
    assert audit["entrypoint"] == "flows/audit.py:retail_sales_audit"
    # Environments: dev's schedule is paused; prod's deployment runs on its own pool, as prod.
    assert schedule["active"] is False
    prod = server.get("/deployments/name/retail-sales-etl/prod-daily").json()
    assert prod["work_pool_name"] == "retail-etl-prod-pool"
    assert prod["job_variables"]["env"]["RETAIL_ETL_ENV"] == "prod"
    assert [s["active"] for s in prod["schedules"]] == [True]
    report = server.get("/deployments/name/retail-sales-quality-report/prod-quality-report").json()
    assert report["entrypoint"] == "flows/report.py:retail_sales_quality_report"
    assert report["schedules"][0]["schedule"] == {
        "cron": "30 11 * * 1",
        "timezone": "UTC",
        "day_or": True,
    }

    regions = list(DEFAULT_REGIONS)
    drop_prefixed_databases(unique_prefix)
    seed_regions(
        pg_server_url, regions, DAY, 1, 300, database_for_region=lambda r: f"{unique_prefix}{r}"
    )
    # The operator's step 1, with the default configuration: one block per default region.
    registered = run_command(
        [str(BIN / "retail-etl"), "blocks", "register"],
        server.env(
            RETAIL_ETL_SOURCE_SERVER_URL=pg_server_url,
            RETAIL_ETL_SOURCE_DATABASE_PREFIX=unique_prefix,
        ),
    )
    for name in ("us-east", "us-west", "europe", "apac"):
        assert f"saved SqlAlchemyConnector sales-source-{name}\n" in registered.stdout
    # The worker knows no source URL or database prefix: it must read the sources' blocks.
    worker_env = server.env(
        RETAIL_ETL_SLACK_BLOCK=f"test-absent-{uuid.uuid4().hex[:8]}",
        RETAIL_ETL_STAGING_DIR=str(tmp_path / "staging"),
        RETAIL_ETL_DUCKDB_PATH=str(tmp_path / "warehouse.duckdb"),
        RETAIL_ETL_RETRIES="0",
    )
    expected = {
        region: len(
            _source_rows(
                database_url(pg_server_url, f"{unique_prefix}{region}"),
                EXPECTED_ACCEPTED_SQL,
                {"day": DAY},
            )
        )
        for region in regions
    }

    triggered = run_command(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "retail-sales-etl/daily",
            "-p",
            f"run_date={DAY.isoformat()}",
        ],
        server.env(),
    )
    match = re.search(r"UUID: ([0-9a-f-]{36})", triggered.stdout)
    assert match, triggered.stdout
    flow_run_id = match.group(1)

    started = time.monotonic()
    worker = run_command(
        [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            POOL,
            "--type",
            "process",
            "--run-once",
        ],
        worker_env,
    )
    print(f"worker --run-once took {time.monotonic() - started:.1f} s")

    flow_run = server.get(f"/flow_runs/{flow_run_id}").json()
    state = flow_run["state"]
    assert flow_run["parameters"]["run_date"] == DAY.isoformat()
    # Small clean-enough sources for both regions: the run must succeed.
    assert state["type"] == "COMPLETED", (
        f"{state['name']}: {state['message']}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    )
    assert DAY.isoformat() in state["message"]
    _assert_warehouse_holds_day(tmp_path / "warehouse.duckdb", expected)


def _source_rows(url: str, statement: str, params: dict[str, object]) -> list[tuple[object, ...]]:
    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def _assert_warehouse_holds_day(duckdb_path: Path, expected: dict[str, int]) -> None:
    """sales_fact holds DAY for every region, the rows expected from the source and as many as
    the ledger says were accepted."""
    import duckdb

    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        facts = dict(
            con.execute(
                "SELECT region, count(*) FROM sales_fact WHERE sale_date = ? GROUP BY region",
                [DAY],
            ).fetchall()
        )
        ledger = dict(
            con.execute(
                "SELECT region, sum(rows_accepted) FROM etl_load_ledger "
                "WHERE business_date = ? AND status = 'loaded' GROUP BY region",
                [DAY],
            ).fetchall()
        )
    assert facts == expected
    assert all(count > 0 for count in facts.values())
    assert facts == {region: int(rows) for region, rows in ledger.items()}


def test_failure_automation_posts_to_slack_when_the_flow_fails(prefect_server, slack_receiver):
    server = prefect_server
    env = server.env(
        RETAIL_ETL_REGIONS="europe",
        RETAIL_ETL_SOURCE_URL_EUROPE=(
            "postgresql+psycopg2://etl:n0t-a-real-s3cret@127.0.0.1:1/sales_europe"
        ),
        RETAIL_ETL_SLACK_WEBHOOK_URL=slack_receiver.url,
        RETAIL_ETL_RETRIES="0",
        RETAIL_ETL_STAGING_DIR=str(server.home / "staging"),
        RETAIL_ETL_DUCKDB_PATH=str(server.home / "warehouse.duckdb"),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    retail_etl = str(BIN / "retail-etl")
    registered = run_command([retail_etl, "blocks", "register"], env)
    assert "saved SlackWebhook retail-etl-slack" in registered.stdout

    first = run_command([retail_etl, "automations", "install"], env)
    assert "created automation retail-etl-flow-run-failed" in first.stdout
    again = run_command([retail_etl, "automations", "install"], env)
    assert "updated automation retail-etl-flow-run-failed" in again.stdout
    assert "created automation retail-etl-zombie-runs" in first.stdout
    assert "updated automation retail-etl-zombie-runs" in again.stdout
    named = server.post(
        "/automations/filter",
        {"automations": {"name": {"any_": ["retail-etl-flow-run-failed"]}}},
    ).json()
    assert len(named) == 1 and named[0]["enabled"]
    (zombie,) = server.post(
        "/automations/filter",
        {"automations": {"name": {"any_": ["retail-etl-zombie-runs"]}}},
    ).json()
    trigger = zombie["trigger"]
    assert trigger["posture"] == "Proactive" and trigger["within"] == 200
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert "prefect.flow-run.Completed" in trigger["expect"]
    assert trigger["for_each"] == ["prefect.resource.id"]
    assert trigger["match_related"]["prefect.resource.name"] == [
        "retail-sales-etl",
        "retail-sales-backfill",
    ]
    assert zombie["actions"][0]["type"] == "change-flow-run-state"
    assert zombie["actions"][0]["state"] == "CRASHED"

    # A run that fails and alerts itself: one message (its own), no automation message.
    started = time.monotonic()
    failed = run_command([retail_etl, "run", "--date", DAY.isoformat()], env, check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    own = slack_receiver.wait_for(lambda t: "retail-sales-etl 2024-01-15 FAILED" in t, timeout=30)
    assert own is not None and "Extraction failed" in own, slack_receiver.texts
    print(f"own alert {time.monotonic() - started:.1f} s after the run started")

    # Runs that could not alert themselves: a crashed (killed) one and one refused for its
    # parameters, reported by the server (state set through the API as the engine would).
    flow_id = _post_retrying(server, "/flows/", {"name": "retail-sales-etl"}).json()["id"]
    crashed = _flow_run_ending(
        server,
        flow_id,
        "retail-sales-etl 2024-01-16",
        {"run_date": "2024-01-16", "regions": None},
        "CRASHED",
        "Flow run infrastructure exited with non-zero status code -9.",
    )
    invalid = _flow_run_ending(
        server,
        flow_id,
        "retail-sales-etl 2024-13-45",
        {"run_date": "2024-13-45"},
        "FAILED",
        "Validation of flow parameters failed with error: run_date: Input should be a valid date",
    )
    crash_text = slack_receiver.wait_for(lambda t: crashed in t, timeout=30)
    invalid_text = slack_receiver.wait_for(lambda t: invalid in t, timeout=30)
    assert crash_text is not None and invalid_text is not None, slack_receiver.texts

    automation_texts = [t for t in slack_receiver.texts if "(Prefect automation)" in t]
    assert len(automation_texts) == 2, automation_texts  # nothing for the run that alerted
    assert len(slack_receiver.texts) == 3

    assert crash_text.startswith("*retail-sales-etl 2024-01-16 Crashed*: the run could not send")
    assert f"<{server.api_url[: -len('/api')]}/runs/flow-run/{crashed}|" in crash_text
    assert "crashed or killed" in crash_text and "run the same deployment again" in crash_text
    assert '"run_date": "2024-01-16"' in crash_text

    assert invalid_text.startswith("*retail-sales-etl 2024-13-45 Failed*")
    assert "invalid parameters and did nothing" in invalid_text
    assert "run the same deployment again" not in invalid_text
    assert "retail-etl run --date 2024-13-45" not in invalid_text
    assert "-p run_date=2024-13-45" not in invalid_text
    for body in slack_receiver.texts:
        assert "n0t-a-real-s3cret" not in body and "webhook-secret" not in body


def _post_retrying(server: PrefectServer, path: str, body: dict[str, object]) -> httpx.Response:
    """POST, retrying while the SQLite-backed test server answers 503 (database is locked),
    as Prefect's own client does."""
    for _ in range(20):
        response = httpx.post(f"{server.api_url}{path}", json=body, timeout=10)
        if response.status_code != 503:
            break
        time.sleep(0.5)
    response.raise_for_status()
    return response


def _flow_run_ending(
    server: PrefectServer,
    flow_id: str,
    name: str,
    parameters: dict[str, object],
    state_type: str,
    message: str,
) -> str:
    """A flow run of ``flow_id`` that starts Running and ends in ``state_type``; its id."""
    run = _post_retrying(
        server,
        "/flow_runs/",
        {
            "flow_id": flow_id,
            "name": name,
            "parameters": parameters,
            "state": {"type": "RUNNING", "name": "Running"},
        },
    ).json()
    _post_retrying(
        server,
        f"/flow_runs/{run['id']}/set_state",
        {
            "state": {"type": state_type, "name": state_type.title(), "message": message},
            "force": True,
        },
    )
    return str(run["id"])
