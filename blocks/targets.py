"""Open the configured staging store and warehouse, loading their blocks by name.

``RETAIL_ETL_STAGING_STORE`` (local | s3) and ``RETAIL_ETL_WAREHOUSE`` (duckdb | snowflake)
choose; the S3 bucket and Snowflake connection come from the blocks that
``retail-etl blocks register`` saved. Block attributes are read here only: the core store
and warehouse classes take plain values (a bucket name, a boto3 client, a filesystem).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retail_etl.settings import Settings
from retail_etl.staging import (
    LocalStagingStore,
    S3StagingStore,
    StagingStore,
    arrow_s3_filesystem,
)
from retail_etl.warehouse import Warehouse, open_warehouse
from retail_etl.warehouse.dialects.snowflake import SnowflakeConnection


class TargetConfigurationError(RuntimeError):
    """A block the configuration asks for is missing."""


def _load_block(block_type: Any, name: str, what: str, variable: str) -> Any:
    try:
        return block_type.load(name)
    except ValueError as exc:
        raise TargetConfigurationError(
            f"{what} block {name!r} not found: set {variable} and run `retail-etl blocks register`"
        ) from exc


def load_s3_bucket(settings: Settings) -> Any:
    from prefect_aws import S3Bucket

    return _load_block(S3Bucket, settings.s3_bucket_block, "S3Bucket", "RETAIL_ETL_S3_BUCKET_NAME")


def s3_staging_store(
    s3_bucket_block: Any, *, scratch_dir: Path | None = None, target_file_rows: int | None = None
) -> S3StagingStore:
    """The S3 store of a prefect-aws ``S3Bucket`` block: its bucket, ``bucket_folder`` prefix,
    credentials and ``aws_client_parameters.endpoint_url``."""
    credentials = s3_bucket_block.credentials
    params = getattr(credentials, "aws_client_parameters", None)
    return S3StagingStore(
        s3_bucket_block.bucket_name,
        s3_bucket_block.bucket_folder or "",
        client=credentials.get_s3_client(),
        fs=arrow_s3_filesystem(
            credentials.get_boto3_session(), getattr(params, "endpoint_url", None)
        ),
        scratch_dir=scratch_dir,
        target_file_rows=target_file_rows,
    )


def open_staging_store(settings: Settings) -> StagingStore:
    """The configured store."""
    scratch = settings.staging_dir / "scratch"
    if settings.staging_store == "s3":
        return s3_staging_store(
            load_s3_bucket(settings),
            scratch_dir=scratch,
            target_file_rows=settings.target_file_rows,
        )
    return LocalStagingStore(
        settings.staging_dir / "store", target_file_rows=settings.target_file_rows
    )


def snowflake_connection(connector: Any, settings: Settings) -> SnowflakeConnection:
    """How to reach Snowflake with a prefect-snowflake ``SnowflakeConnector``: each operation
    opens its own connection with the connector's credentials, database, warehouse and schema
    (the block's cached connection is not shared, so autocommit can be switched off safely)."""
    login_timeout_s = settings.snowflake_login_timeout_seconds
    statement_timeout_s = settings.snowflake_statement_timeout_seconds

    def connect() -> Any:
        return connector.credentials.get_client(
            database=connector.database,
            warehouse=connector.warehouse,
            schema=connector.schema_,
            autocommit=False,
            # Bounded time: login, each network round trip, each statement and each wait
            # for a lock end with an error instead of hanging the run.
            login_timeout=login_timeout_s,
            network_timeout=statement_timeout_s,
            session_parameters={
                "STATEMENT_TIMEOUT_IN_SECONDS": statement_timeout_s,
                "LOCK_TIMEOUT": statement_timeout_s,
            },
        )

    return SnowflakeConnection(
        connect,
        database=connector.database,
        schema=connector.schema_,
        warehouse=connector.warehouse,
    )


def open_configured_warehouse(settings: Settings, store: StagingStore) -> Warehouse:
    """The configured warehouse."""
    if settings.warehouse == "duckdb":
        return open_warehouse(settings, store)
    from prefect_snowflake import SnowflakeConnector

    connector = _load_block(
        SnowflakeConnector,
        settings.snowflake_block,
        "SnowflakeConnector",
        "RETAIL_ETL_SNOWFLAKE_ACCOUNT",
    )
    return open_warehouse(settings, store, snowflake=snowflake_connection(connector, settings))


def open_targets(settings: Settings) -> tuple[StagingStore, Warehouse]:
    """Staging store and warehouse."""
    store = open_staging_store(settings)
    return store, open_configured_warehouse(settings, store)


class Targets:
    """A run's staging store and warehouse, opened once and passed to its steps (a plain
    class, so a flow can take it as a parameter)."""

    def __init__(self, store: StagingStore, warehouse: Warehouse) -> None:
        self.store = store
        self.warehouse = warehouse

    @classmethod
    def open(cls, settings: Settings) -> Targets:
        return cls(*open_targets(settings))

    def __repr__(self) -> str:  # what a flow run's parameters show; no credentials
        return f"Targets({self.store!r}, {self.warehouse!r})"


def describe_warehouse(settings: Settings) -> str:
    if settings.warehouse == "duckdb":
        return f"DuckDB file {settings.duckdb_path.resolve()}"
    return f"Snowflake (block {settings.snowflake_block})"
