"""Faults with real parts: sources that refuse or hang. Each run must end with the failed
region named (region and date), the others loaded exactly, and nothing stray left behind.

Marked ``faults`` so they can run alone: ``.venv/bin/pytest -m faults``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from retail_etl import pg
from retail_etl.settings import DEFAULT_REGIONS
from tests.pipeline import PipelineEnv, run_day
from tests.plumbing import s3_bucket_block

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
    from retail_etl.warehouse import Warehouse
    from retail_etl.warehouse.base import WarehouseBusyError
    from retail_etl.warehouse.dialects.duckdb import DuckDBDialect

    path = tmp_path / "warehouse.duckdb"
    store = LocalStagingStore(tmp_path / "store")

    def duckdb_warehouse(lock_timeout_s: float = 1800.0) -> Warehouse:
        return Warehouse(DuckDBDialect(path, store, lock_timeout_s=lock_timeout_s), store)

    duckdb_warehouse().ensure_schema()

    reader = _hold_file_read_only(path, 1.5)
    try:
        patient = duckdb_warehouse(lock_timeout_s=60)
        with caplog.at_level("WARNING"):
            assert patient.ensure_schema() == []  # waited for the reader, then wrote
        assert f"the DuckDB warehouse {path} is busy (held by" in caplog.text
        assert f"(PID {reader.pid})" in caplog.text
    finally:
        reader.wait(timeout=30)

    reader = _hold_file_read_only(path, 30)
    try:
        with pytest.raises(WarehouseBusyError) as raised:
            duckdb_warehouse(lock_timeout_s=0.5).ensure_schema()
        assert str(path) in str(raised.value) and f"PID {reader.pid}" in str(raised.value)
    finally:
        reader.kill()
        reader.wait(timeout=10)


# --------------------------------------------------------------------------- whole runs


def _cli(*args: str) -> subprocess.Popen[str]:
    """``retail-etl ARGS`` in its own process, on this session's Prefect API and settings."""
    from prefect.settings import get_current_settings

    env = dict(os.environ, PREFECT_API_URL=str(get_current_settings().api.url))
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "retail-etl"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _leftover_run_dirs(env: PipelineEnv) -> list[Path]:
    runs = env.tmp / "staging" / "runs"
    return sorted(p for p in runs.glob("*/*") if p.is_dir()) if runs.exists() else []


def _assert_day_exact(env: PipelineEnv) -> None:
    """sales_fact and sales_rejects hold the day exactly once; the latest ledger row of every
    region is 'loaded'; no run folder is left."""
    for region in DEFAULT_REGIONS:
        assert env.fact(region, DAY) == env.expected_accepted(region, DAY), region
    (latest,) = env.warehouse(
        "SELECT count(*) FILTER (status = 'loaded'), count(*) FROM ("
        "SELECT region, arg_max(status, finished_at) AS status FROM etl_load_ledger "
        "WHERE business_date = ? GROUP BY region)",
        [DAY],
    )
    assert latest == (4, 4)
    (rejects,) = env.warehouse(
        "SELECT count(*) = count(DISTINCT (region, sale_id, reasons)) FROM sales_rejects "
        "WHERE sale_date = ?",
        [DAY],
    )
    assert rejects == (True,)
    # every batch that loaded kept its quality measures
    (without_dq,) = env.warehouse(
        "SELECT count(*) FROM (SELECT DISTINCT batch_id FROM etl_load_ledger "
        "WHERE status = 'loaded' AND business_date = ?) AS l WHERE NOT EXISTS "
        "(SELECT 1 FROM dq_results AS d WHERE d.batch_id = l.batch_id)",
        [DAY],
    )
    assert without_dq == (0,)
    assert _leftover_run_dirs(env) == []


def test_a_run_killed_while_extracting_leaves_nothing_a_rerun_does_not_sweep(etl_env):
    etl_env.seed(rows=300)
    url = etl_env.source_url("apac")
    with pg.connect(url) as conn, conn.cursor() as cur:  # apac answers after 60 s
        cur.execute("ALTER TABLE sales RENAME TO sales_data")
        cur.execute(
            "CREATE VIEW sales AS WITH pause AS MATERIALIZED (SELECT pg_sleep(60)) "
            "SELECT s.* FROM sales_data s, pause"
        )
        conn.commit()

    def reading() -> bool:  # the extraction's first read (its snapshot's stats, then COPY)
        rows = etl_env.source(
            "apac",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND pid <> pg_backend_pid() AND query ILIKE '%%sales%%'",
        )
        return rows[0][0] > 0

    run = _cli("run", "--date", DAY.isoformat())
    try:
        _wait_for(reading, 120, "the apac extraction to start")
        _wait_for(lambda: bool(_leftover_run_dirs(etl_env)), 30, "the run folder")
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    assert _leftover_run_dirs(etl_env), "the killed run should have left its folder"

    with pg.connect(url) as conn, conn.cursor() as cur:  # the source recovers
        # The killed run's query would hold the view until its pg_sleep ends (PostgreSQL
        # notices a vanished client only when it next writes to it): end it as that would.
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        cur.execute("DROP VIEW sales")
        cur.execute("ALTER TABLE sales_data RENAME TO sales")
        conn.commit()
    state, _summary = run_day(DAY)
    assert state.is_completed(), state.message
    _assert_day_exact(etl_env)


def test_a_run_killed_while_waiting_to_load_then_runs_and_a_backfill_at_once(etl_env):
    from retail_etl.locks import FileLock
    from retail_etl.settings import get_settings

    etl_env.seed(rows=300)
    state, _ = run_day(DAY)  # the day is loaded once
    assert state.is_completed(), state.message

    # Another writer holds the warehouse: the run waits for its turn, saying so; killed there.
    writer = FileLock(get_settings(fresh=True).writer_lock_path)
    assert writer.try_acquire()
    try:
        run = _cli("run", "--date", DAY.isoformat())
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(run.stdout or []), daemon=True)
        reader.start()
        _wait_for(
            lambda: any(
                "is writing to the warehouse: waiting for our turn" in line for line in output
            ),
            180,
            "the run to wait for the warehouse",
        )
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        writer.release()
    assert _leftover_run_dirs(etl_env)

    # Two runs of the same date and a backfill over it, all at once: they take turns at the
    # warehouse and all complete.
    day = DAY.isoformat()
    runs = [
        _cli("run", "--date", day),
        _cli("run", "--date", day),
        _cli("backfill", "--start", day, "--end", day),
    ]
    outputs = [p.communicate(timeout=400)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0, 0], outputs
    _assert_day_exact(etl_env)
    loaded = etl_env.warehouse(
        "SELECT count(DISTINCT batch_id) FROM etl_load_ledger WHERE status = 'loaded'"
    )
    assert loaded == [(4,)]
    # Each rerun of an unchanged day inserts nothing and updates nothing.
    changed = etl_env.warehouse(
        "SELECT sum(rows_inserted + rows_updated) FROM etl_load_ledger WHERE status = 'loaded' "
        "AND batch_id <> (SELECT arg_min(batch_id, finished_at) FROM etl_load_ledger)"
    )
    assert changed == [(0,)]


def test_a_busy_warehouse_fails_the_run_with_a_clear_message_and_a_rerun_loads(etl_env, etl_slack):
    from retail_etl.settings import get_settings

    etl_env.seed(rows=300)
    settings = get_settings(fresh=True)
    from retail_etl.staging import LocalStagingStore
    from retail_etl.warehouse import open_warehouse

    open_warehouse(settings, LocalStagingStore(etl_env.tmp / "s")).ensure_schema()
    etl_env.monkeypatch.setenv("RETAIL_ETL_WAREHOUSE_LOCK_TIMEOUT_SECONDS", "1")
    reader = _hold_file_read_only(settings.duckdb_path, 60)
    try:
        state, summary = run_day(DAY)
    finally:
        reader.kill()
        reader.wait(timeout=10)

    assert state.is_failed()
    assert "the warehouse could not be prepared" in state.message
    assert f"PID {reader.pid}" in state.message
    assert all(o.status == "load_failed" for o in summary.regions.values())
    assert len(etl_slack.texts) == 1 and "could not be prepared" in etl_slack.texts[0]

    state, _ = run_day(DAY)
    assert state.is_completed(), state.message
    _assert_day_exact(etl_env)


class FailingS3Proxy:
    """An S3 endpoint on 127.0.0.1 in front of a moto server that answers 500 to every upload
    whose key contains ``fail_when`` (boto3 retries, then gives up: the upload fails)."""

    def __init__(self, upstream: str, fail_when: str) -> None:
        import http.client
        import http.server
        from urllib.parse import unquote, urlparse

        target = urlparse(upstream)
        proxy = self
        self.failed = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and fail_when in unquote(self.path):
                    proxy.failed += 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = conn.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_an_s3_endpoint_failing_mid_upload_fails_that_region_only(etl_env, moto_endpoint):
    etl_env.seed(rows=300)
    proxy = FailingS3Proxy(moto_endpoint, fail_when="region=us_west")
    try:
        block_name = f"{etl_env.prefix.replace('_', '-')}staging"
        direct = s3_bucket_block(moto_endpoint, "retail-faults")  # creates the bucket
        s3_bucket_block(proxy.url, "retail-faults", create=False).save(block_name, overwrite=True)
        etl_env.monkeypatch.setenv("RETAIL_ETL_STAGING_STORE", "s3")
        etl_env.monkeypatch.setenv("RETAIL_ETL_S3_BUCKET_BLOCK", block_name)

        state, summary = run_day(DAY)

        assert state.is_failed() and proxy.failed > 0
        us_west = summary.regions["us_west"]
        assert us_west.status == "load_failed"
        assert "staging sales for 2024-01-15 region us_west" in us_west.error
        for region in ("us_east", "europe", "apac"):
            assert summary.regions[region].status == "loaded", region
            assert etl_env.fact(region, DAY) == etl_env.expected_accepted(region, DAY)
        assert etl_env.warehouse("SELECT count(*) FROM sales_fact WHERE region = 'us_west'") == [
            (0,)
        ]
        # no partial set of the failed region is left in the bucket
        keys = direct.list_objects("sales")
        assert not [k for k in keys if "region=us_west" in k["Key"]]

        # The endpoint recovers: the region is reprocessed alone and the day is exact.
        direct.save(block_name, overwrite=True)
        state, _ = run_day(DAY, ["us_west"])
        assert state.is_completed(), state.message
        _assert_day_exact(etl_env)
    finally:
        proxy.close()
