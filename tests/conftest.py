"""Shared fixtures: real PostgreSQL databases with unique names, isolated Prefect home."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retail_etl import pg
from retail_etl.settings import DEFAULT_SERVER_URL, database_url

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
