"""Helpers to build small, hand-written source tables in a real PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from psycopg2 import sql
from psycopg2.extras import execute_values

from retail_etl import pg
from retail_etl.contract import create_table_ddl


def sale(sale_id: int, **overrides: Any) -> dict[str, Any]:
    """A clean, completed sale of 2024-01-15; override any column."""
    row: dict[str, Any] = {
        "sale_id": sale_id,
        "customer_id": 1000 + sale_id,
        "store_id": 7,
        "product_id": 42,
        "quantity": 2,
        "unit_price": Decimal("10.00"),
        "discount": Decimal("1.00"),
        "tax": Decimal("1.71"),
        "total_amount": Decimal("20.71"),
        "sale_date": date(2024, 1, 15),
        "status": "completed",
        "is_deleted": False,
        "created_at": datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
        "updated_at": datetime(2024, 1, 15, 9, 30, tzinfo=UTC),
    }
    row.update(overrides)
    return row


def create_sales(url: str, rows: Iterable[Mapping[str, Any]] = (), *, table: str = "sales") -> None:
    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(create_table_ddl(table))
        insert_sales(cur, rows, table=table)
        conn.commit()


def insert_sales(cur: Any, rows: Iterable[Mapping[str, Any]], *, table: str = "sales") -> None:
    rows = list(rows)
    if not rows:
        return
    columns = list(rows[0].keys())
    query = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    execute_values(cur, query.as_string(cur), [tuple(r[c] for c in columns) for r in rows])


def execute(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    with pg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        conn.commit()
