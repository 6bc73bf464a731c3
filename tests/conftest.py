"""Shared fixtures: real PostgreSQL databases with unique names, isolated Prefect home,
staging stores (local, S3 on a moto endpoint), a Slack receiver; the helpers behind them are in
``tests/plumbing.py``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retail_etl import pg
from retail_etl.settings import DEFAULT_SERVER_URL, database_url
from retail_etl.staging import LocalStagingStore, S3StagingStore
from tests.plumbing import SlackReceiver, s3_bucket_block, start_moto
from tests.prefect_server import prefect_server  # noqa: F401  (a session fixture)

PG_SERVER_URL = os.environ.get("RETAIL_ETL_TEST_PG_URL", DEFAULT_SERVER_URL)


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return PG_SERVER_URL


@pytest.fixture
def make_database(pg_server_url: str) -> Iterator[Callable[[str], str]]:
    """Factory: create a uniquely named database, return its SQLAlchemy URL; dropped after."""
    created: list[str] = []

    def _make(suffix: str = "db") -> str:
        name = f"retail_t{uuid.uuid4().hex[:10]}_{suffix}"
        pg.create_database(pg_server_url, name)
        created.append(name)
        return database_url(pg_server_url, name)

    yield _make
    for name in created:
        pg.drop_database(pg_server_url, name)


@pytest.fixture
def unique_prefix() -> str:
    """A database-name prefix unique to one test (``<prefix><region>``)."""
    return f"retail_t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
def drop_prefixed_databases(pg_server_url: str) -> Iterator[Callable[[str], None]]:
    """Register a prefix; every database whose name starts with it is dropped after the test."""
    prefixes: list[str] = []
    yield prefixes.append
    if not prefixes:
        return
    with pg.connect(pg_server_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = [row[0] for row in cur.fetchall()]
    for name in names:
        if any(name.startswith(p) for p in prefixes):
            pg.drop_database(pg_server_url, name)


@pytest.fixture(scope="session", autouse=True)
def _isolated_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test session gets its own PREFECT_HOME, offline, no analytics."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    yield home


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One ephemeral Prefect API for the session (start-up ~10 s, paid once)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@pytest.fixture
def store(tmp_path: Path) -> LocalStagingStore:
    """A local staging store under the test's temp folder."""
    return LocalStagingStore(tmp_path / "staging")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One S3 endpoint (moto server on 127.0.0.1) for the session; tests use their own buckets."""
    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture
def s3_store(moto_endpoint: str, tmp_path: Path) -> S3StagingStore:
    """An S3 staging store on a fresh bucket of the moto endpoint, opened as a run opens it
    (from its ``S3Bucket`` block, prefix ``staging``)."""
    from blocks.targets import s3_staging_store

    block = s3_bucket_block(moto_endpoint, f"retail-{uuid.uuid4().hex[:12]}")
    return s3_staging_store(block, scratch_dir=tmp_path / "scratch")


@pytest.fixture
def slack_receiver() -> Iterator[SlackReceiver]:
    """A Slack webhook receiver on 127.0.0.1 (random port); ``.url``, ``.texts``, ``.wait_for``."""
    receiver = SlackReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def etl_env(
    prefect_api, pg_server_url, unique_prefix, drop_prefixed_databases, tmp_path, monkeypatch
):
    """An isolated pipeline: the default 4 regions on uniquely named databases (seed them with
    ``etl_env.seed``), read through their source blocks under the default names
    (``sales-source-us-east``, ...), a temp staging dir and DuckDB file, fast retries, a
    unique Slack block name."""
    from blocks.sources import register_source_blocks
    from retail_etl.settings import DEFAULT_REGIONS, get_settings
    from tests.pipeline import PipelineEnv

    regions = list(DEFAULT_REGIONS)
    drop_prefixed_databases(unique_prefix)
    monkeypatch.delenv("RETAIL_ETL_SOURCE_BLOCK_PREFIX", raising=False)
    monkeypatch.delenv("RETAIL_ETL_CREDENTIALS", raising=False)
    monkeypatch.setenv("RETAIL_ETL_REGIONS", ",".join(regions))
    monkeypatch.setenv("RETAIL_ETL_SOURCE_DATABASE_PREFIX", unique_prefix)
    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", f"test-{unique_prefix.replace('_', '-')}slack")
    monkeypatch.setenv("RETAIL_ETL_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("RETAIL_ETL_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("RETAIL_ETL_RETRIES", "1")
    monkeypatch.setenv("RETAIL_ETL_RETRY_BASE_SECONDS", "0")
    register_source_blocks(get_settings(fresh=True))
    return PipelineEnv(pg_server_url, unique_prefix, regions, tmp_path, monkeypatch)


@pytest.fixture
def etl_slack(etl_env, monkeypatch, slack_receiver):  # type: ignore[no-untyped-def]
    """The run's Slack block (unique name from ``etl_env``) pointing at the loopback receiver."""
    from blocks.notifications import register_slack_block
    from retail_etl.settings import get_settings, load_registration_settings

    monkeypatch.setenv("RETAIL_ETL_SLACK_WEBHOOK_URL", slack_receiver.url)
    settings = get_settings(fresh=True)
    if register_slack_block(settings, load_registration_settings()) != settings.slack_block:
        raise RuntimeError("the Slack block was not registered")
    return slack_receiver
