"""Helpers for end-to-end tests: a seeded, isolated pipeline environment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest

from retail_etl import pg
from retail_etl.settings import database_url

# The expected accepted rows, computed in the source independently of the pipeline: the
# latest version per sale_id among every row of the day, which must be a completed (trimmed,
# any case), not deleted sale with no NULL or NaN critical value, rules satisfied.
EXPECTED_ACCEPTED_SQL = """
WITH latest AS (
    SELECT DISTINCT ON (sale_id) * FROM sales WHERE sale_date = %(day)s AND sale_id IS NOT NULL
    ORDER BY sale_id, updated_at DESC NULLS LAST, created_at DESC NULLS LAST
), src AS (
    SELECT * FROM latest
    WHERE lower(trim(status)) = 'completed' AND is_deleted IS NOT TRUE
      AND 'NaN' NOT IN (unit_price, total_amount, coalesce(discount, 0), coalesce(tax, 0))
)
SELECT sale_id, customer_id, store_id, product_id, quantity, unit_price,
       coalesce(discount, 0) AS discount, coalesce(tax, 0) AS tax, total_amount, sale_date,
       updated_at
FROM src
WHERE customer_id IS NOT NULL AND store_id IS NOT NULL AND product_id IS NOT NULL
  AND quantity IS NOT NULL AND unit_price IS NOT NULL AND total_amount IS NOT NULL
  AND quantity > 0 AND unit_price > 0
  AND total_amount * 2 >= quantity * unit_price AND total_amount <= 2 * quantity * unit_price
ORDER BY sale_id
"""

FACT_COLUMNS = (
    "sale_id, customer_id, store_id, product_id, quantity, unit_price, discount, tax, "
    "total_amount, sale_date, updated_at"
)


@dataclass
class PipelineEnv:
    server_url: str
    prefix: str
    regions: list[str]
    tmp: Path
    monkeypatch: pytest.MonkeyPatch

    def point_source(self, region: str, url: str | None) -> None:
        """Point ``region``'s source block at ``url`` (None: back to its seeded database),
        as an operator would: set RETAIL_ETL_SOURCE_URL_<REGION>, run `blocks register`."""
        from blocks.sources import register_source_blocks
        from retail_etl.settings import get_settings

        variable = f"RETAIL_ETL_SOURCE_URL_{region.upper()}"
        if url is None:
            self.monkeypatch.delenv(variable, raising=False)
        else:
            self.monkeypatch.setenv(variable, url)
        register_source_blocks(get_settings(fresh=True))

    @property
    def duckdb_path(self) -> Path:
        return self.tmp / "warehouse.duckdb"

    def seed(self, *, days: int = 1, rows: int = 1_000, start: date = date(2024, 1, 15)) -> None:
        from retail_etl.seed import seed_regions

        seed_regions(
            self.server_url,
            self.regions,
            start,
            days,
            rows,
            database_for_region=lambda r: f"{self.prefix}{r}",
            seed=7,
        )

    def source_url(self, region: str) -> str:
        return database_url(self.server_url, f"{self.prefix}{region}")

    def source(self, region: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with pg.connect(self.source_url(region)) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows

    def expected_accepted(self, region: str, day: date) -> list[tuple[Any, ...]]:
        return self.source(region, EXPECTED_ACCEPTED_SQL, {"day": day})

    def warehouse(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(self.duckdb_path), read_only=True) as con:
            return con.execute(statement, params or []).fetchall()

    def fact(self, region: str, day: date) -> list[tuple[Any, ...]]:
        return self.warehouse(
            f"SELECT {FACT_COLUMNS} FROM sales_fact WHERE region = ? AND sale_date = ? ORDER BY sale_id",
            [region, day],
        )


def run_day(day: date, regions: list[str] | None = None) -> tuple[Any, Any]:
    from flows.etl import retail_sales_etl
    from retail_etl.run import summary_from_result

    state = retail_sales_etl(run_date=day, regions=regions, return_state=True)
    result = state.result(raise_on_failure=False)
    return state, summary_from_result(result) or result


def flow_run_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The artifacts a flow run created, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in artifacts}
