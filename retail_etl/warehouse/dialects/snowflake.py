"""Snowflake: an external stage over the staging bucket, COPY into transient stage tables.

Connections come from a factory (production: the prefect-snowflake ``SnowflakeConnector``
block's credentials, see ``blocks/targets.py``; tests: fakesnow), one per operation, with
``autocommit`` off so that a load's MERGE and its ledger row are one transaction committed
together. Stage tables are ``TRANSIENT`` (DDL: auto-commits, so they are created and COPYed
before the load's transaction) and survive a killed load, so the next run drops stale ones.
``COPY`` names exactly the staged files (``FILES = (...)``, ``FORCE``); the MERGE source is
always the stage deduplicated (ERROR_ON_NONDETERMINISTIC_MERGE).

Secrets: no AWS key ever goes into a statement (the connector binds values client-side, into
the SQL text that reaches query history). The stage reaches S3 through a STORAGE INTEGRATION
(``RETAIL_ETL_SNOWFLAKE_STORAGE_INTEGRATION``), or is one an administrator created once.
"""
# ruff: noqa: S608 - SQL text from validated, quoted identifiers only; values are bound.

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from retail_etl.settings import validate_identifier
from retail_etl.warehouse import sql
from retail_etl.warehouse.base import SALES_FACT, WarehouseColumn, WarehouseError, describe_error
from retail_etl.warehouse.dialect import Result, SqlDialect, StatementKind, arrow_type_name

if TYPE_CHECKING:
    from retail_etl.staging import StagedFile, StagingStore
    from retail_etl.warehouse.base import RegionLoad

log = logging.getLogger("retail_etl.warehouse.snowflake")

DEFAULT_SCHEMA = "retail_etl"
DEFAULT_STAGE = "retail_etl_staging"
DEFAULT_FILE_FORMAT = "retail_etl_parquet"
COPY_MAX_FILES = 1000  # Snowflake's limit for FILES = (...)
CLUSTER_BY = ("sale_date", "region")

Connection = Any  # a DB-API connection of snowflake-connector-python (or fakesnow)

_TYPES = {
    "string": "VARCHAR",
    "int64": "NUMBER(19,0)",
    "int32": "NUMBER(10,0)",
    "date": "DATE",
    "bool": "BOOLEAN",
    "float64": "DOUBLE",
    "timestamp": "TIMESTAMP_TZ",
}


#: Errors after which a region's load transaction is simply run again: 000625 a lock wait
#: timed out (LOCK_TIMEOUT), 000603 an internal error Snowflake asks to retry, 250001 / 250003
#: the connection or a request failed on the network.
RETRYABLE_ERRNOS = frozenset({625, 603, 250001, 250003})


@dataclass(frozen=True)
class SnowflakeLoadOptions:
    """Session settings of a load: its lock and statement bounds, optionally its own
    warehouse and a size for the load (``RETAIL_ETL_SNOWFLAKE_LOAD_*``)."""

    lock_timeout_s: int = 600
    statement_timeout_s: int = 3600
    warehouse: str | None = None
    warehouse_size: str | None = None


@dataclass(frozen=True)
class SnowflakeConnection:
    """How to reach Snowflake: a connection factory (``autocommit`` off) and where the tables
    live. ``blocks.targets`` builds it from the SnowflakeConnector block."""

    connect: Callable[[], Connection]
    database: str | None = None
    schema: str = DEFAULT_SCHEMA
    #: the connection's own warehouse (the block's), if named
    warehouse: str | None = None


def stage_url(store: StagingStore) -> str:
    """The URL the external stage points at: the staging root, ``s3://bucket/prefix/`` in
    production (a ``file://`` root only works with fakesnow, in tests)."""
    url = store.root_uri
    return url if url.endswith("/") else url + "/"


class SnowflakeSql(SqlDialect):
    """Snowflake's SQL rendering: pyformat placeholders, names stored upper case."""

    name = "snowflake"
    param = "%s"
    now = "CURRENT_TIMESTAMP()"
    upper_case = True


class SnowflakeDialect(SnowflakeSql):
    """The warehouse in one Snowflake schema."""

    fill_steps = ("copy", "copy rejects and retractions")

    def __init__(
        self,
        connection: SnowflakeConnection,
        store: StagingStore,
        *,
        stage_name: str = DEFAULT_STAGE,
        file_format_name: str = DEFAULT_FILE_FORMAT,
        url: str | None = None,
        storage_integration: str | None = None,
        load: SnowflakeLoadOptions | None = None,
    ) -> None:
        super().__init__(database=connection.database, schema=connection.schema)
        self.load = load or SnowflakeLoadOptions()
        #: the warehouse a load runs on and resizes: the dedicated one, else the connection's
        named = self.load.warehouse or connection.warehouse
        self.load_warehouse = validate_identifier(named.lower(), "warehouse") if named else ""
        if self.load.warehouse_size is not None and not self.load_warehouse:
            raise ValueError(
                "RETAIL_ETL_SNOWFLAKE_LOAD_WAREHOUSE_SIZE needs a warehouse to resize: set "
                "RETAIL_ETL_SNOWFLAKE_LOAD_WAREHOUSE or the connector block's warehouse"
            )
        self._connect = connection.connect
        self._session: Connection | None = None
        self.stage_name = validate_identifier(stage_name.lower(), "stage")
        self.file_format_name = validate_identifier(file_format_name.lower(), "file format")
        self.url = url or stage_url(store)
        self.storage_integration = (
            validate_identifier(storage_integration.lower(), "storage integration")
            if storage_integration
            else None
        )

    def __repr__(self) -> str:  # no credentials
        return f"SnowflakeDialect(schema={self.schema!r}, stage_url={self.url!r})"

    # ------------------------------------------------------------------ rendering

    def type_name(self, column: WarehouseColumn) -> str:
        if column.json:
            return "VARIANT"
        return arrow_type_name(column.arrow_type, _TYPES, decimal="NUMBER({p},{s})")

    def json_object(self, pairs: str) -> str:
        return f"TO_JSON(OBJECT_CONSTRUCT_KEEP_NULL({pairs}))"

    def from_json_text(self, column: str) -> str:
        return f"PARSE_JSON({column})"

    def table_options(self, table: str) -> str:
        return f" CLUSTER BY ({self.cols(CLUSTER_BY)})" if table == SALES_FACT else ""

    # ------------------------------------------------------------------ connections

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[Connection]:
        if self._session is not None:
            yield self._session
            return
        conn = self._connect()
        try:
            conn.autocommit(False)
            yield conn
        finally:
            with suppress(Exception):
                conn.close()

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """One connection for several operations, so a load of N regions logs in once instead
        of N times. Not for concurrent use from several threads."""
        if self._session is not None:  # nested: the outer session owns the connection
            yield self._session
            return
        with self.connect() as conn:
            self._session = conn
            try:
                yield conn
            finally:
                self._session = None

    def execute(
        self, con: Connection, kind: StatementKind, sql_text: str, params: Sequence[Any] = ()
    ) -> Result:
        cur = con.cursor()
        cur.execute(sql_text, list(params) if params else None)
        if cur.description is None:
            return Result([], [])
        return Result(
            [str(d[0]).lower() for d in cur.description], [tuple(r) for r in cur.fetchall()]
        )

    def begin(self, con: Connection) -> None:
        """Commit what ran before (COPY into the stages): the next statement opens the
        transaction (autocommit is off)."""
        con.commit()

    def commit(self, con: Connection) -> None:
        con.commit()

    def rollback(self, con: Connection) -> None:
        with suppress(Exception):
            con.rollback()

    def end_read(self, con: Connection) -> None:
        self.rollback(con)  # changed nothing; end the implicit transaction

    # ------------------------------------------------------------------ schema

    def _catalog_prefix(self) -> str:
        return f"{self.ident(self.database)}." if self.database else ""

    def _schema_path(self) -> str:
        parts = [p for p in (self.database, self.schema) if p is not None]
        return ".".join(self.ident(p) for p in parts)

    def prepare_schema(self, con: Connection) -> None:
        """Schema, parquet file format and the external stage over the staging root."""
        self.execute(con, "ddl", f"CREATE SCHEMA IF NOT EXISTS {self._schema_path()}")
        self.execute(
            con,
            "ddl",
            f"CREATE FILE FORMAT IF NOT EXISTS {self.table(self.file_format_name)} TYPE = PARQUET",
        )
        self._create_stage(con)

    def _create_stage(self, con: Connection) -> None:
        """AWS keys never go into a statement (the connector binds values into the SQL text,
        which reaches query history): S3 is reached through a storage integration, or through
        a stage an administrator created once.

        ``CREATE OR REPLACE`` so a changed bucket or prefix takes effect; the stage holds no
        data and COPY names its file format explicitly, so replacing it loses nothing."""
        if self.storage_integration is None and self.url.startswith("s3://"):
            shown = self.execute(
                con,
                "ddl",
                f"SHOW STAGES LIKE %s IN SCHEMA {self._schema_path()}",
                [self.catalog_name(self.stage_name)],
            )
            if not shown.rows:
                raise WarehouseError(
                    f"the external stage {self.stage_name} over {self.url} does not exist: set "
                    "RETAIL_ETL_SNOWFLAKE_STORAGE_INTEGRATION to a storage integration allowed on "
                    "the bucket (the pipeline then creates the stage), or have an administrator "
                    "create the stage once (README, 'Snowflake and S3 in production'); the "
                    "pipeline never sends AWS keys to Snowflake"
                )
            return
        text = f"CREATE OR REPLACE STAGE {self.table(self.stage_name)} URL = %s"
        if self.storage_integration is not None:
            text += f" STORAGE_INTEGRATION = {self.ident(self.storage_integration)}"
        try:
            self.execute(con, "ddl", text, [self.url])
        except Exception as e:
            raise WarehouseError(
                f"creating the external stage {self.stage_name} over {self.url} failed: "
                f"{describe_error(e)}"
            ) from e

    def existing_columns(self, con: Connection, table: str) -> set[str]:
        rows = self.execute(
            con,
            "ddl",
            f"SELECT column_name FROM {self._catalog_prefix()}information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            [self.catalog_name(self.schema or ""), self.catalog_name(table)],
        ).rows
        return {str(r[0]).lower() for r in rows}

    def stale_stage_tables(self, con: Connection, created_before: datetime) -> list[str]:
        """Transient ``stg_*`` tables created before the cutoff (a killed load's)."""
        rows = self.execute(
            con,
            "ddl",
            f"SELECT table_name FROM {self._catalog_prefix()}information_schema.tables "
            "WHERE table_schema = %s AND left(table_name, 4) = 'STG_' AND created < %s",
            [self.catalog_name(self.schema or ""), created_before],
        ).rows
        return [str(row[0]).lower() for row in rows]

    # ------------------------------------------------------------------ stage tables

    def create_stage_table(
        self, con: Connection, name: str, columns: Sequence[WarehouseColumn]
    ) -> None:
        text = sql.create_table_sql(self, name, columns, kind="TRANSIENT TABLE", replace=True)
        self.execute(con, "create_stage", text)

    def copy_into_sql(self, table: str, n_files: int) -> str:
        """COPY exactly the listed files (params: the keys, relative to the stage URL).

        ``FORCE = TRUE``: the stage table is new for every load and the file list is explicit,
        so Snowflake's load history must not skip a file re-staged under the same name by a
        rerun of the same batch.
        """
        if n_files < 1:
            raise ValueError("copy_into_sql needs at least one file")
        return (
            f"COPY INTO {self.table(table)} FROM @{self.table(self.stage_name)} "
            f"FILES = ({self.params(n_files)}) "
            f"FILE_FORMAT = (FORMAT_NAME = '{self.table(self.file_format_name)}') "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE FORCE = TRUE"
        )

    def fill_stage(
        self,
        con: Connection,
        name: str,
        columns: Sequence[str],
        files: Sequence[StagedFile],
        load_region: str | None = None,
    ) -> int:
        """COPY exactly ``files`` into the stage table (the ``load_region`` column, absent from
        the files, stays NULL), then tag the new rows with ``load_region``; the rows loaded."""
        keys = [f.key for f in files]
        loaded = 0
        for start in range(0, len(keys), COPY_MAX_FILES):
            chunk = keys[start : start + COPY_MAX_FILES]
            result = self.execute(con, "fill_stage", self.copy_into_sql(name, len(chunk)), chunk)
            for row in result.rows:
                record = dict(zip(result.columns, row, strict=False))
                if "file" not in record:  # "Copy executed with 0 files processed."
                    continue
                status = str(record.get("status", "")).upper()
                if status != "LOADED":
                    raise WarehouseError(
                        f"COPY of {record.get('file')} into {name}: status {status}"
                        f" ({record.get('first_error')})"
                    )
                loaded += int(record.get("rows_loaded") or 0)
        if load_region is not None and loaded:
            self.execute(con, "fill_stage", sql.tag_stage_sql(self, name), [load_region])
        return loaded

    def fill_load_stage(
        self,
        con: Connection,
        name: str,
        columns: Sequence[str],
        files_by_region: Mapping[str, Sequence[StagedFile]],
    ) -> int:
        """A COPY (and the tagging UPDATE) per region: COPY cannot tag rows with a value."""
        return sum(
            self.fill_stage(con, name, columns, files, region)
            for region, files in files_by_region.items()
        )

    def drop_stage_table(self, con: Connection, name: str) -> None:
        try:
            self.execute(con, "drop_stage", sql.drop_table_sql(self, name))
        except Exception:
            log.warning("could not drop stage table %s", name, exc_info=True)

    def merge_source(self, con: Connection, stage: str, duplicates: int) -> tuple[str, list[str]]:
        """Always the deduplicated stage (a temp table would be DDL, committing the load)."""
        return sql.dedup_source_sql(self, stage), []

    def merge_counts(self, result: Result) -> tuple[int | None, int | None, int]:
        row = dict(zip(result.columns, result.rows[0] if result.rows else (), strict=False))
        inserted = int(row.get("number of rows inserted") or 0)
        updated = int(row.get("number of rows updated") or 0)
        return inserted, updated, inserted + updated

    # ------------------------------------------------------------------ loads under contention

    @contextmanager
    def load_scope(self, con: Connection) -> Iterator[None]:
        """The load's bounds (a MERGE waiting ``lock_timeout_s`` for a lock fails and is
        retried), its warehouse, and its size: the previous size is restored after the load,
        also when it failed."""
        self.execute(
            con,
            "session",
            "ALTER SESSION SET LOCK_TIMEOUT = %s STATEMENT_TIMEOUT_IN_SECONDS = %s",
            [self.load.lock_timeout_s, self.load.statement_timeout_s],
        )
        if self.load.warehouse is not None:
            self.execute(con, "session", f"USE WAREHOUSE {self.ident(self.load_warehouse)}")
        size = self.load.warehouse_size
        if size is None:
            yield
            return
        name = self.load_warehouse
        previous = self._warehouse_size(con, name)
        if previous is None:
            raise WarehouseError(
                f"warehouse {name} to resize for the load (RETAIL_ETL_SNOWFLAKE_LOAD_WAREHOUSE_SIZE) "
                "is not visible to this role (SHOW WAREHOUSES)"
            )
        if previous.replace("-", "") == size:
            yield
            return
        self._resize(con, name, size)
        log.info("warehouse %s resized %s -> %s for the load", name, previous, size)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self._restore(con, name, previous, size, load_failed=failed)

    def _restore(
        self, con: Connection, name: str, previous: str, size: str, *, load_failed: bool
    ) -> None:
        """Back to the size before the load; a failed restore after a failed load is logged
        (the load's error is the one raised), after a good load it raises."""
        try:
            self._resize(con, name, previous)
        except Exception as e:
            message = (
                f"warehouse {name} could not be restored to size {previous} after the load "
                f"(it is {size}; resize it by hand): {describe_error(e)}"
            )
            if load_failed:
                log.error("%s", message)
                return
            raise WarehouseError(message) from e
        log.info("warehouse %s restored to %s", name, previous)

    def _warehouse_size(self, con: Connection, name: str) -> str | None:
        """The size of warehouse ``name`` as ``SHOW WAREHOUSES`` reports it (upper case, e.g.
        ``X-SMALL``, which ``WAREHOUSE_SIZE`` accepts back); None if it is not shown."""
        shown = self.execute(con, "session", "SHOW WAREHOUSES LIKE %s", [self.catalog_name(name)])
        for row in shown.rows:
            record = dict(zip(shown.columns, row, strict=False))
            if str(record.get("name", "")).lower() == name:
                return str(record["size"]).upper()
        return None

    def _resize(self, con: Connection, name: str, size: str) -> None:
        self.execute(
            con, "session", f"ALTER WAREHOUSE {self.ident(name)} SET WAREHOUSE_SIZE = %s", [size]
        )

    @contextmanager
    def region_scope(self, con: Connection, loads: Sequence[RegionLoad]) -> Iterator[None]:
        """Every statement of a load carries a query tag naming the batch and the region (the
        regions, for a load of several), so query history finds them (``QUERY_TAG`` is not a
        secret)."""
        first = loads[0]
        regions: dict[str, Any] = (
            {"region": first.region} if len(loads) == 1 else {"regions": [b.region for b in loads]}
        )
        tag = json.dumps(
            {
                "app": "retail-etl",
                "batch_id": first.batch_id,
                **regions,
                "business_date": first.business_date.isoformat(),
            },
            sort_keys=True,
        )
        self.execute(con, "session", "ALTER SESSION SET QUERY_TAG = %s", [tag])
        try:
            yield
        finally:
            try:
                self.execute(con, "session", "ALTER SESSION UNSET QUERY_TAG")
            except Exception:
                log.warning("could not clear the query tag of %s", first.region, exc_info=True)

    def retryable(self, error: BaseException) -> bool:
        """A lock timeout or a transient error (:data:`RETRYABLE_ERRNOS`)."""
        return getattr(error, "errno", None) in RETRYABLE_ERRNOS
