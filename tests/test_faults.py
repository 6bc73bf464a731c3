"""Faults with real parts: sources that refuse or hang. Each run must end with the failed
region named (region and date), the others loaded exactly, and nothing stray left behind.

Marked ``faults`` so they can run alone: ``.venv/bin/pytest -m faults``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from retail_etl import pg
from retail_etl.settings import DEFAULT_REGIONS
from tests.pipeline import PipelineEnv, run_day

pytestmark = pytest.mark.faults

DAY = date(2024, 1, 15)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def _assert_others_loaded(env: PipelineEnv, summary, failed: str) -> None:  # type: ignore[no-untyped-def]
    for region in DEFAULT_REGIONS:
        if region == failed:
            continue
        assert summary.regions[region].status == "loaded", region
        assert env.fact(region, DAY) == env.expected_accepted(region, DAY), region
    assert env.warehouse("SELECT count(*) FROM sales_fact WHERE region = ?", [failed]) == [(0,)]
    (status,) = env.warehouse(
        "SELECT status FROM etl_load_ledger WHERE region = ? AND business_date = ? "
        "ORDER BY finished_at DESC LIMIT 1",
        [failed, DAY],
    )
    assert status == ("extract_failed",)


def test_with_session_bounds_adds_libpq_bounds_and_keeps_the_urls_own():
    url = pg.with_session_bounds(
        "postgresql+psycopg2://u:pw@h:5/db?connect_timeout=3",
        connect_timeout_s=10,
        statement_timeout_s=2,
        keepalive_idle_s=30,
    )
    dsn = pg.psycopg2_dsn(url)
    assert dsn["connect_timeout"] == "3"  # the URL's own value wins
    assert dsn["keepalives"] == "1" and dsn["keepalives_idle"] == "30"
    assert dsn["options"] == (
        "-c statement_timeout=2000 -c idle_in_transaction_session_timeout=2000"
    )
    assert dsn["password"] == "pw" and dsn["dbname"] == "db"


def test_a_source_that_refuses_connections_fails_only_its_region(etl_env):
    etl_env.seed(rows=300)
    etl_env.point_source("apac", "postgresql+psycopg2://postgres@127.0.0.1:1/refusing")

    state, summary = run_day(DAY)

    assert state.is_failed()
    assert "region apac, 2024-01-15" in summary.regions["apac"].error
    assert "extraction failed for apac" in state.message
    _assert_others_loaded(etl_env, summary, "apac")


def test_a_source_that_accepts_and_never_answers_fails_within_the_connect_bound(
    etl_env, silent_server
):
    etl_env.seed(rows=300)
    etl_env.monkeypatch.setenv("RETAIL_ETL_SOURCE_CONNECT_TIMEOUT_SECONDS", "2")
    etl_env.point_source("europe", f"postgresql+psycopg2://postgres@127.0.0.1:{silent_server}/x")

    state, summary = run_day(DAY)

    assert state.is_failed()
    europe = summary.regions["europe"]
    assert "region europe, 2024-01-15" in europe.error and "timeout" in europe.error.lower()
    _assert_others_loaded(etl_env, summary, "europe")


def test_a_source_statement_that_hangs_is_cancelled_by_the_statement_bound(etl_env):
    etl_env.seed(rows=300)
    # us_west's sales now answer only after an hour: the server must cancel the COPY.
    url = etl_env.source_url("us_west")
    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE sales RENAME TO sales_data")
        cur.execute(
            "CREATE VIEW sales AS WITH pause AS MATERIALIZED (SELECT pg_sleep(3600)) "
            "SELECT s.* FROM sales_data s, pause"
        )
        conn.commit()
    etl_env.monkeypatch.setenv("RETAIL_ETL_SOURCE_STATEMENT_TIMEOUT_SECONDS", "2")

    state, summary = run_day(DAY)

    assert state.is_failed()
    us_west = summary.regions["us_west"]
    assert "region us_west, 2024-01-15" in us_west.error
    assert "statement timeout" in us_west.error
    _assert_others_loaded(etl_env, summary, "us_west")


def _hold_file_read_only(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process (an analyst) holding the DuckDB file open read-only for ``seconds``."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); time.sleep(float(sys.argv[2]))",
            str(path),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
    return holder


def test_a_writer_waits_for_a_reader_and_gives_up_after_the_bound(tmp_path, caplog):
    from retail_etl.staging import LocalStagingStore
    from retail_etl.warehouse.base import WarehouseBusyError
    from retail_etl.warehouse.duckdb_warehouse import DuckDBWarehouse

    path = tmp_path / "warehouse.duckdb"
    store = LocalStagingStore(tmp_path / "store")
    DuckDBWarehouse(path, store).ensure_schema()

    reader = _hold_file_read_only(path, 1.5)
    try:
        patient = DuckDBWarehouse(path, store, lock_timeout_s=60)
        with caplog.at_level("WARNING"):
            assert patient.ensure_schema() == []  # waited for the reader, then wrote
        assert f"the DuckDB warehouse {path} is busy (held by" in caplog.text
        assert f"(PID {reader.pid})" in caplog.text
    finally:
        reader.wait(timeout=30)

    reader = _hold_file_read_only(path, 30)
    try:
        with pytest.raises(WarehouseBusyError) as raised:
            DuckDBWarehouse(path, store, lock_timeout_s=0.5).ensure_schema()
        assert str(path) in str(raised.value) and f"PID {reader.pid}" in str(raised.value)
    finally:
        reader.kill()
        reader.wait(timeout=10)
