"""The warehouse: one implementation (:class:`Warehouse`) over a dialect per engine (DuckDB,
the embedded default, and Snowflake): same tables and MERGE semantics.

Importing this package loads no engine driver; :func:`open_warehouse` imports the dialect it
needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retail_etl.warehouse.base import (
    LEDGER_STATUSES,
    CheckResult,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    WarehouseError,
    WarehouseLoadError,
    merge_checks,
)
from retail_etl.warehouse.dialect import Dialect, SqlDialect
from retail_etl.warehouse.engine import LoadRetry, Warehouse

if TYPE_CHECKING:
    from retail_etl.settings import Settings
    from retail_etl.staging import StagingStore
    from retail_etl.warehouse.dialects.snowflake import SnowflakeConnection

__all__ = [
    "LEDGER_STATUSES",
    "CheckResult",
    "Dialect",
    "LedgerEntry",
    "LoadRetry",
    "MergeResult",
    "RegionLoad",
    "Warehouse",
    "WarehouseError",
    "WarehouseLoadError",
    "configured_dialect",
    "merge_checks",
    "open_warehouse",
    "sql_renderer",
]


def sql_renderer(warehouse: str) -> SqlDialect:
    """The SQL rendering of a warehouse engine with unqualified names (they resolve in the
    connection's current schema): for queries written outside the engine, e.g. the report."""
    if warehouse == "duckdb":
        from retail_etl.warehouse.dialects.duckdb import DuckDBSql

        return DuckDBSql()
    from retail_etl.warehouse.dialects.snowflake import SnowflakeSql

    return SnowflakeSql()


def configured_dialect(
    settings: Settings, store: StagingStore, *, snowflake: SnowflakeConnection | None = None
) -> Dialect:
    """The dialect of ``settings.warehouse``. DuckDB needs nothing else; Snowflake needs how
    to connect (``blocks.targets`` builds it from the SnowflakeConnector block) and the S3
    staging store (the stage points at its root)."""
    if settings.warehouse == "duckdb":
        from retail_etl.warehouse.dialects.duckdb import DuckDBDialect

        return DuckDBDialect.from_settings(settings, store)
    from retail_etl.staging import S3StagingStore
    from retail_etl.warehouse.dialects.snowflake import SnowflakeDialect, SnowflakeLoadOptions

    if snowflake is None:
        raise ValueError(
            f"the Snowflake warehouse needs the SnowflakeConnector block ({settings.snowflake_block!r})"
        )
    if not isinstance(store, S3StagingStore):
        raise ValueError("Snowflake loads from the S3 staging store (RETAIL_ETL_STAGING_STORE=s3)")
    load = SnowflakeLoadOptions(
        lock_timeout_s=settings.snowflake_load_lock_timeout_seconds,
        statement_timeout_s=settings.snowflake_statement_timeout_seconds,
        warehouse=settings.snowflake_load_warehouse,
        warehouse_size=settings.snowflake_load_warehouse_size,
    )
    return SnowflakeDialect(
        snowflake, store, storage_integration=settings.snowflake_storage_integration, load=load
    )


def open_warehouse(
    settings: Settings, store: StagingStore, *, snowflake: SnowflakeConnection | None = None
) -> Warehouse:
    """The configured warehouse (``settings.warehouse``); see :func:`configured_dialect`."""
    retry = LoadRetry(attempts=settings.load_attempts, delay_s=settings.load_retry_delay_seconds)
    return Warehouse(configured_dialect(settings, store, snowflake=snowflake), store, retry=retry)
