"""A region's PostgreSQL source as the extraction and the fingerprints read it: its table's
columns, and the error that names region, date and table when it cannot be read."""

from __future__ import annotations

from retail_etl import pg
from retail_etl.contract import SOURCE_TABLE
from retail_etl.schema import inspect_columns_sql


class ExtractionError(RuntimeError):
    """Extraction of a region failed; the message names region, date and table."""


def inspect_source(
    source_url: str, *, table: str = SOURCE_TABLE, schema: str = "public"
) -> dict[str, str]:
    """Column -> type of the region's table; empty when the table does not exist."""
    with pg.connect(source_url) as conn, conn.cursor() as cur:
        cur.execute(inspect_columns_sql(), (schema, table))
        return {name: pg_type for name, pg_type in cur.fetchall()}


def pg_message(exc: BaseException) -> str:
    """The driver's message without connection details (no DSN, no password)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
