"""Deployments and automations against a real ``prefect server`` on 127.0.0.1 (slow).

One server per session (start-up ~10-20 s), with its own PREFECT_HOME. Everything that talks
to it runs as the operator would: ``prefect`` and ``retail-etl`` commands in subprocesses
whose environment points PREFECT_API_URL at it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest

from retail_etl import pg
from retail_etl.seed import seed_regions
from retail_etl.settings import DEFAULT_REGIONS, database_url
from tests.pipeline import EXPECTED_ACCEPTED_SQL

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAY = date(2024, 1, 15)
POOL = "retail-etl-pool"
STARTUP_TIMEOUT_S = 90
COMMAND_TIMEOUT_S = 180


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a client process talking to this server."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "RETAIL_ETL_")) or k == "RETAIL_ETL_TEST_PG_URL"
        }
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_TO_API_ENABLED="true",
        )
        env.update(extra)
        return env

    def get(self, path: str) -> httpx.Response:
        response = httpx.get(f"{self.api_url}{path}", timeout=10)
        response.raise_for_status()
        return response

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        response = httpx.post(f"{self.api_url}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1:<free port>; stopped (whole group) at the end."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    log = home / "server.log"
    port = _free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home, log=log)
    env = server.env(PREFECT_UI_URL=f"http://127.0.0.1:{port}")  # links in notifications
    env.pop("PREFECT_API_URL")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so the uvicorn children stop too
        )
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                pytest.fail(
                    f"prefect server not healthy after {STARTUP_TIMEOUT_S} s:\n{_tail(log)}"
                )
            time.sleep(0.25)
        print(f"prefect server healthy after {time.monotonic() - started:.1f} s")
        yield server
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _run(
    args: list[str], env: dict[str, str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The work pool and the deployments of prefect.yaml, deployed from the repo root."""
    env = prefect_server.env()
    _run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env)
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
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

    regions = list(DEFAULT_REGIONS)
    drop_prefixed_databases(unique_prefix)
    seed_regions(
        pg_server_url, regions, DAY, 1, 300, database_for_region=lambda r: f"{unique_prefix}{r}"
    )
    # The operator's step 1, with the default configuration: one block per default region.
    registered = _run(
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

    triggered = _run(
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
    worker = _run(
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
    registered = _run([retail_etl, "blocks", "register"], env)
    assert "saved SlackWebhook retail-etl-slack" in registered.stdout

    first = _run([retail_etl, "automations", "install"], env)
    assert "created automation retail-etl-flow-run-failed" in first.stdout
    again = _run([retail_etl, "automations", "install"], env)
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

    started = time.monotonic()
    failed = _run([retail_etl, "run", "--date", DAY.isoformat()], env, check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr

    text = slack_receiver.wait_for(lambda t: "(Prefect automation)" in t, timeout=30)
    print(f"automation message {time.monotonic() - started:.1f} s after the run started")
    assert text is not None, f"no automation message; received: {slack_receiver.texts}"
    assert "*retail-sales-etl flow run `" in text and "entered Failed*" in text
    flow_run_id = re.search(r"Flow run: ([0-9a-f-]{36})", text)
    assert flow_run_id, text
    assert f"<{server.api_url[: -len('/api')]}/runs/flow-run/{flow_run_id.group(1)}|" in text
    assert "extraction failed for europe" in text
    assert '"run_date": "2024-01-15"' in text
    assert "prefect deployment run 'retail-sales-etl/daily' -p run_date=2024-01-15" in text
    for body in slack_receiver.texts:
        assert "n0t-a-real-s3cret" not in body and "webhook-secret" not in body
