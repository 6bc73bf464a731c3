"""Small PostgreSQL administration helpers (database lifecycle), psycopg2-based."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from sqlalchemy.engine import make_url

from retail_etl.settings import validate_identifier


def psycopg2_dsn(sqlalchemy_url: str) -> dict[str, object]:
    """Connection keywords for psycopg2 from a SQLAlchemy URL (any postgresql driver)."""
    url = make_url(sqlalchemy_url)
    if not url.drivername.startswith("postgresql"):
        raise ValueError(f"not a PostgreSQL URL (driver {url.drivername!r})")
    params: dict[str, object] = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "dbname": url.database or "postgres",
    }
    if url.password:
        params["password"] = url.password
    params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    return params


def with_session_bounds(
    sqlalchemy_url: str,
    *,
    connect_timeout_s: int,
    statement_timeout_s: int,
    keepalive_idle_s: int,
) -> str:
    """``sqlalchemy_url`` with libpq time bounds added as query parameters (values the URL
    already sets win): connect_timeout bounds the TCP connect and the start-up handshake (a
    server that accepts and never answers), keepalives find a dead peer mid-COPY, and the
    server cancels a statement (or an idle open transaction) running past the bound."""
    url = make_url(sqlalchemy_url)
    milliseconds = statement_timeout_s * 1000
    bounds = {
        "connect_timeout": str(connect_timeout_s),
        "keepalives": "1",
        "keepalives_idle": str(keepalive_idle_s),
        "keepalives_interval": "10",
        "keepalives_count": "3",
        "options": (
            f"-c statement_timeout={milliseconds} "
            f"-c idle_in_transaction_session_timeout={milliseconds}"
        ),
    }
    query = {**bounds, **dict(url.query)}
    return url.set(query=query).render_as_string(hide_password=False)


@contextmanager
def connect(sqlalchemy_url: str, *, autocommit: bool = False) -> Iterator[PgConnection]:
    conn = psycopg2.connect(**psycopg2_dsn(sqlalchemy_url))  # type: ignore[arg-type]
    conn.autocommit = autocommit
    try:
        yield conn
    finally:
        conn.close()


def database_exists(server_url: str, database: str) -> bool:
    with connect(server_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        return cur.fetchone() is not None


def create_database(server_url: str, database: str, *, replace: bool = False) -> None:
    validate_identifier(database, "database")
    with connect(server_url, autocommit=True) as conn, conn.cursor() as cur:
        if replace:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def drop_database(server_url: str, database: str) -> None:
    validate_identifier(database, "database")
    with connect(server_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
