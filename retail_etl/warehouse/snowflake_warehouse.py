"""Snowflake warehouse: external stage over the staging bucket, COPY, MERGE.

Connections come from a factory (production: the prefect-snowflake ``SnowflakeConnector``
block's credentials; tests: fakesnow), one per operation, with ``autocommit`` off so that a
load's MERGE and its ledger row are one transaction committed together.

A region load::

    CREATE OR REPLACE TRANSIENT TABLE stg_sales_<batch>_<region>     -- DDL: auto-commits, so
                                                                    --   it runs before the txn
    COPY INTO it FROM @stage FILES = (<explicit keys>) ... MATCH_BY_COLUMN_NAME, FORCE; commit
    the same for stg_rejects_... and stg_retract_...
    checks: rows loaded == staged file rows, every row of this region, duplicate keys counted
    classify by a join, MERGE (source: the stage deduplicated with QUALIFY ROW_NUMBER() = 1),
        MERGE's (inserted, updated) must equal the classification
    INSERT INTO sales_retractions the stored rows the source retracts or no longer has;
        DELETE them from sales_fact (the counts must agree)
    DELETE + INSERT the day's rejects of the region
    INSERT the 'loaded' ledger row
    COMMIT                                  -- any error: ROLLBACK, WarehouseLoadError
    DROP TABLE stg_...                      -- always

The stage table name contains the batch id (date + random) and the region, so runs of
different dates (or two runs of one date) never share one.

Secrets: no AWS key ever goes into a statement (the connector binds values client-side, into
the SQL text that reaches query history). The stage reaches S3 through a STORAGE INTEGRATION
(``RETAIL_ETL_SNOWFLAKE_STORAGE_INTEGRATION``), or is one an administrator created once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from retail_etl.settings import validate_identifier
from retail_etl.staging import S3StagingStore, StagedFile, StagingStore, validate_batch_id
from retail_etl.warehouse import sql
from retail_etl.warehouse.base import (
    REJECTS_STAGE_COLUMNS,
    RETRACTIONS_STAGE_COLUMNS,
    SALES_FACT,
    SALES_STAGE_COLUMNS,
    TABLES,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    StepTimer,
    WarehouseError,
    describe_error,
    load_error,
    loaded_ledger_entry,
    merge_result,
    normalize_dq_record,
    schema_history_row,
    utc_now,
)

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "retail_etl"
DEFAULT_STAGE = "retail_etl_staging"
DEFAULT_FILE_FORMAT = "retail_etl_parquet"
COPY_MAX_FILES = 1000  # Snowflake's limit for FILES = (...)
CLUSTER_BY = ("sale_date", "region")

Connection = Any  # a DB-API connection of snowflake-connector-python (or fakesnow)


def _result_row(cur: Any) -> dict[str, Any]:
    """The one-row result of a DML statement (MERGE, DELETE) by lower-cased column name."""
    names = [d[0].lower() for d in cur.description or []]
    return dict(zip(names, cur.fetchone() or (), strict=False))


def stage_url(store: StagingStore) -> str:
    """The URL the external stage points at: the staging root, ``s3://bucket/prefix/`` in
    production (a ``file://`` root only works with fakesnow, in tests)."""
    url = store.root_uri
    if not url.endswith("/"):
        url += "/"
    return url


class SnowflakeWarehouse(sql.QueryMixin):
    """The warehouse in one Snowflake schema."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        store: StagingStore,
        *,
        database: str | None = None,
        schema: str = DEFAULT_SCHEMA,
        stage_name: str = DEFAULT_STAGE,
        file_format_name: str = DEFAULT_FILE_FORMAT,
        url: str | None = None,
        storage_integration: str | None = None,
    ) -> None:
        self._connect = connect
        self._session: Connection | None = None
        self.store = store
        self._t = sql.SqlTarget("snowflake", database=database, schema=schema)
        self.stage_name = validate_identifier(stage_name.lower(), "stage")
        self.file_format_name = validate_identifier(file_format_name.lower(), "file format")
        self.url = url or stage_url(store)
        self.storage_integration = (
            validate_identifier(storage_integration.lower(), "storage integration")
            if storage_integration
            else None
        )

    def __repr__(self) -> str:  # no credentials
        return f"SnowflakeWarehouse(schema={self._t.schema!r}, stage_url={self.url!r})"

    @classmethod
    def from_blocks(
        cls,
        connector: Any,
        store: StagingStore,
        *,
        schema: str | None = None,
        storage_integration: str | None = None,
        login_timeout_s: int = 60,
        statement_timeout_s: int = 3600,
    ) -> SnowflakeWarehouse:
        """From a prefect-snowflake ``SnowflakeConnector`` and the S3 staging store (the stage
        points at its root). Each operation opens its own connection with the connector's
        credentials, database, warehouse and schema (the block's cached connection is not
        shared, so autocommit can be switched off safely)."""
        if not isinstance(store, S3StagingStore):
            raise ValueError(
                "Snowflake loads from the S3 staging store (RETAIL_ETL_STAGING_STORE=s3)"
            )

        def connect() -> Connection:
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

        return cls(
            connect,
            store,
            database=connector.database,
            schema=schema or connector.schema_,
            storage_integration=storage_integration,
        )

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
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
    def session(self) -> Iterator[SnowflakeWarehouse]:
        """Run several operations (a batch's loads) on one connection, so a load of N regions
        logs in once instead of N times. Every operation still commits or rolls back its own
        transaction. Not for concurrent use from several threads."""
        if self._session is not None:  # nested: the outer session owns the connection
            yield self
            return
        with self._connection() as conn:
            self._session = conn
            try:
                yield self
            finally:
                self._session = None

    def _fetch(self, sql_text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            cur = conn.cursor()
            cur.execute(sql_text, list(params) if params else None)
            rows = [tuple(r) for r in cur.fetchall()]
            conn.rollback()  # read only; end the implicit transaction
            return rows

    @staticmethod
    def _one(cur: Any, sql_text: str, params: Sequence[Any] | None = None) -> tuple[Any, ...]:
        cur.execute(sql_text, list(params) if params else None)
        row = cur.fetchone()
        if row is None:
            raise WarehouseError("query returned no row")
        return tuple(row)

    # ------------------------------------------------------------------ schema

    def ensure_schema(self) -> list[str]:
        """Schema, parquet file format, external stage, tables (``sales_fact`` clustered by
        (sale_date, region)); add missing columns NULLABLE (metadata only)."""
        t = self._t
        added: list[str] = []
        with self._connection() as conn:
            cur = conn.cursor()
            cur.execute(sql.create_schema_sql(t))
            cur.execute(sql.create_file_format_sql(t, self.file_format_name))
            self._create_stage(cur)
            for table, columns in TABLES.items():
                cluster = CLUSTER_BY if table == SALES_FACT else ()
                cur.execute(sql.create_table_sql(t, table, columns, cluster_by=cluster))
                cur.execute(
                    sql.existing_columns_sql(t),
                    [t.schema.upper() if t.schema else "", table.upper()],
                )
                existing = {str(r[0]).lower() for r in cur.fetchall()}
                for column in columns:
                    if column.name not in existing:
                        cur.execute(sql.add_column_sql(t, table, column))
                        added.append(f"{table}.{column.name}")
            conn.commit()
        if added:
            log.info("added column(s) to the Snowflake warehouse: %s", ", ".join(added))
        return added

    def drop_stale_stage_tables(self, older_than_hours: float) -> list[str]:
        """Transient ``stg_*`` tables survive a killed load; the next run drops them."""
        t = self._t
        cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
        with self._connection() as conn:
            cur = conn.cursor()
            cur.execute(
                sql.stale_stage_tables_sql(t), [t.schema.upper() if t.schema else "", cutoff]
            )
            names = [str(row[0]).lower() for row in cur.fetchall()]
            for name in names:
                cur.execute(sql.drop_table_sql(t, validate_identifier(name, "stage table")))
            conn.commit()
        if names:
            log.warning("dropped %d stale stage table(s): %s", len(names), ", ".join(names))
        return names

    def _create_stage(self, cur: Any) -> None:
        """The external stage over the staging root. AWS keys never go into a statement (the
        connector binds values into the SQL text, which reaches query history): S3 is reached
        through a storage integration, or through a stage an administrator created once."""
        if self.storage_integration is None and self.url.startswith("s3://"):
            cur.execute(sql.show_stage_sql(self._t), [self.stage_name.upper()])
            if not cur.fetchall():
                raise WarehouseError(
                    f"the external stage {self.stage_name} over {self.url} does not exist: set "
                    "RETAIL_ETL_SNOWFLAKE_STORAGE_INTEGRATION to a storage integration allowed on "
                    "the bucket (the pipeline then creates the stage), or have an administrator "
                    "create the stage once (README, 'Snowflake and S3 in production'); the "
                    "pipeline never sends AWS keys to Snowflake"
                )
            return
        text = sql.create_stage_sql(
            self._t, self.stage_name, storage_integration=self.storage_integration
        )
        try:
            cur.execute(text, [self.url])
        except Exception as e:
            raise WarehouseError(
                f"creating the external stage {self.stage_name} over {self.url} failed: "
                f"{describe_error(e)}"
            ) from e

    # ------------------------------------------------------------------ loads

    def _copy(self, cur: Any, stage_table: str, files: Sequence[StagedFile]) -> int:
        """COPY exactly ``files`` into the stage table; returns rows loaded."""
        keys = [f.key for f in files]
        loaded = 0
        for start in range(0, len(keys), COPY_MAX_FILES):
            chunk = keys[start : start + COPY_MAX_FILES]
            text = sql.copy_into_sql(
                self._t, stage_table, self.stage_name, self.file_format_name, len(chunk)
            )
            cur.execute(text, chunk)
            names = [d[0].lower() for d in cur.description or []]
            for row in cur.fetchall():
                record = dict(zip(names, row, strict=False))
                if "file" not in record:  # "Copy executed with 0 files processed."
                    continue
                status = str(record.get("status", "")).upper()
                if status != "LOADED":
                    raise WarehouseError(
                        f"COPY of {record.get('file')} into {stage_table}: status {status}"
                        f" ({record.get('first_error')})"
                    )
                loaded += int(record.get("rows_loaded") or 0)
        return loaded

    def _stage_side_table(
        self, cur: Any, kind: Literal["rejects", "retractions"], stage: str, batch: RegionLoad
    ) -> int:
        """Create (DDL: auto-commits) and COPY a region's rejects or retractions stage; returns
        the rows loaded. The caller drops the table."""
        columns = REJECTS_STAGE_COLUMNS if kind == "rejects" else RETRACTIONS_STAGE_COLUMNS
        files = batch.reject_files if kind == "rejects" else batch.retraction_files
        cur.execute(sql.create_table_sql(self._t, stage, columns, replace=True, transient=True))
        return self._copy(cur, stage, files)

    def _check_side_table(
        self,
        cur: Any,
        kind: Literal["rejects", "retractions"],
        stage: str,
        loaded: int,
        batch: RegionLoad,
    ) -> int:
        files = batch.reject_files if kind == "rejects" else batch.retraction_files
        staged, foreign, _ = (
            int(v) for v in self._one(cur, sql.stage_stats_sql(self._t, stage), [batch.region])
        )
        if foreign:
            raise WarehouseError(f"{foreign} {kind} row(s) are not of region {batch.region!r}")
        expected = sum(f.rows for f in files)
        if not staged == loaded == expected:
            raise WarehouseError(
                f"COPY loaded {loaded} {kind} row(s), stage holds {staged}, staged files "
                f"have {expected}"
            )
        return staged

    def load_region(self, batch: RegionLoad) -> MergeResult:
        """COPY the three stages, then in one transaction: MERGE, retractions, the day's
        rejects replaced and the 'loaded' ledger row."""
        region = validate_identifier(batch.region, "region")
        validate_batch_id(batch.batch_id)
        t = self._t
        stage = sql.stage_table_name("sales", batch.batch_id, region)
        rejects_stage = sql.stage_table_name("rejects", batch.batch_id, region)
        retractions_stage = sql.stage_table_name("retractions", batch.batch_id, region)
        started = time.perf_counter()
        started_at = batch.started_at or utc_now()
        step = StepTimer()
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                step.start("create stage table")
                cur.execute(
                    sql.create_table_sql(
                        t, stage, SALES_STAGE_COLUMNS, replace=True, transient=True
                    )
                )
                step.start("copy")
                loaded = self._copy(cur, stage, batch.files)
                step.start("copy rejects and retractions")
                rejects_copied = self._stage_side_table(cur, "rejects", rejects_stage, batch)
                retractions_copied = self._stage_side_table(
                    cur, "retractions", retractions_stage, batch
                )
                conn.commit()
                step.start("check stage")
                staged, foreign, duplicates = (
                    int(v) for v in self._one(cur, sql.stage_stats_sql(t, stage), [region])
                )
                if staged != batch.staged_rows or loaded != batch.staged_rows:
                    raise WarehouseError(
                        f"COPY loaded {loaded} row(s), stage holds {staged}, staged files "
                        f"have {batch.staged_rows}"
                    )
                if foreign:
                    raise WarehouseError(f"{foreign} staged row(s) are not of region {region!r}")
                rejects = self._check_side_table(
                    cur, "rejects", rejects_stage, rejects_copied, batch
                )
                self._check_side_table(
                    cur, "retractions", retractions_stage, retractions_copied, batch
                )
                if duplicates:
                    log.warning(
                        "region %s %s batch %s: %d staged row(s) repeat a key; keeping the "
                        "latest updated_at",
                        region,
                        batch.business_date,
                        batch.batch_id,
                        duplicates,
                    )
                source = sql.dedup_source_sql(t, stage)
                step.start("classify")
                (stored_before,) = self._one(
                    cur, sql.day_keys_sql(t), [region, batch.business_date]
                )
                inserted, updated, unchanged = (
                    int(v) for v in self._one(cur, sql.classify_sql(t, source))
                )
                step.start("merge")
                cur.execute(sql.merge_sql(t, source))
                merged = _result_row(cur)
                m_inserted = int(merged.get("number of rows inserted") or 0)
                m_updated = int(merged.get("number of rows updated") or 0)
                if (m_inserted, m_updated) != (inserted, updated):
                    raise WarehouseError(
                        f"MERGE reported {m_inserted} inserted / {m_updated} updated, expected "
                        f"{inserted} / {updated}"
                    )
                step.start("retract")
                lineage = [batch.batch_id, batch.flow_run_id]
                statements: list[tuple[str, list[Any]]] = []
                if retractions_copied:
                    statements.append((sql.retract_listed_sql(t, retractions_stage), lineage))
                if int(stored_before):  # nothing stored for the day before: nothing missing
                    statements.append(
                        (
                            sql.retract_missing_sql(t, stage, rejects_stage, retractions_stage),
                            [*lineage, region, batch.business_date],
                        )
                    )
                recorded = deleted = 0
                for text, params in statements:
                    cur.execute(text, params)
                    recorded += int(_result_row(cur).get("number of rows inserted") or 0)
                if recorded:
                    cur.execute(sql.delete_retracted_sql(t), [region, batch.batch_id, region])
                    deleted = int(_result_row(cur).get("number of rows deleted") or 0)
                if deleted != int(recorded):
                    raise WarehouseError(
                        f"removed {deleted} row(s) from sales_fact but recorded {recorded} in "
                        "sales_retractions"
                    )
                step.start("replace rejects")
                cur.execute(sql.delete_rejects_sql(t), [region, batch.business_date])
                cur.execute(sql.insert_rejects_sql(t, rejects_stage))
                step.start("ledger")
                seconds = time.perf_counter() - started
                entry = loaded_ledger_entry(
                    batch, inserted, updated, unchanged, seconds, started_at, deleted
                )
                cur.execute(sql.insert_ledger_sql(t), list(entry.validated().row()))
                step.start("commit")
                conn.commit()
            except Exception as e:
                with suppress(Exception):
                    conn.rollback()
                raise load_error(batch, step.current, e) from e
            finally:
                for table in (stage, rejects_stage, retractions_stage):
                    self._drop(cur, table)
        step.start("done")
        log.debug("load of %s %s, seconds per step: %s", region, batch.business_date, step.seconds)
        return merge_result(
            batch,
            staged,
            inserted,
            updated,
            unchanged,
            duplicates,
            started,
            deleted=deleted,
            rejects=rejects,
        )

    def _drop(self, cur: Any, table: str) -> None:
        try:
            cur.execute(sql.drop_table_sql(self._t, table))
        except Exception:
            log.warning("could not drop stage table %s", table, exc_info=True)

    def load_dq_results(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Replace the quality results of the records' batch ids (one transaction)."""
        rows = [normalize_dq_record(r) for r in records]
        if not rows:
            return 0
        batch_ids = sorted({str(r["batch_id"]) for r in records})
        t = self._t
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql.delete_dq_sql(t, len(batch_ids)), batch_ids)
                cur.executemany(sql.insert_dq_sql(t), [list(r) for r in rows])
                conn.commit()
            except Exception as e:
                with suppress(Exception):
                    conn.rollback()
                raise WarehouseError(
                    f"writing {len(rows)} dq_results row(s) of batch(es) {', '.join(batch_ids)} "
                    f"failed: {describe_error(e)}"
                ) from e
        return len(rows)

    def record_ledger(self, entry: LedgerEntry) -> None:
        """Append one ledger row in its own transaction."""
        entry = entry.validated()
        with self._connection() as conn:
            try:
                conn.cursor().execute(sql.insert_ledger_sql(self._t), list(entry.row()))
                conn.commit()
            except Exception as e:
                with suppress(Exception):
                    conn.rollback()
                raise WarehouseError(
                    f"recording ledger status {entry.status!r} for region {entry.region!r} "
                    f"{entry.business_date} (batch {entry.batch_id}) failed: {describe_error(e)}"
                ) from e

    def record_schema(
        self,
        region: str,
        fingerprint: str,
        columns: Mapping[str, str],
        differences: str,
        batch_id: str,
        flow_run_id: str | None,
    ) -> bool:
        """Append a ``source_schema_history`` row unless ``fingerprint`` is already the
        region's latest (one transaction); True if it was new."""
        row = schema_history_row(region, fingerprint, columns, differences, batch_id, flow_run_id)
        t = self._t
        with self._connection() as conn:
            cur = conn.cursor()
            try:
                cur.execute(sql.latest_schema_sql(t), [region])
                latest = cur.fetchone()
                new = latest is None or latest[0] != fingerprint
                if new:
                    cur.execute(sql.insert_schema_sql(t), list(row))
                conn.commit()
            except Exception as e:
                with suppress(Exception):
                    conn.rollback()
                raise WarehouseError(
                    f"recording schema fingerprint {fingerprint} of region {region!r} "
                    f"(batch {batch_id}) in source_schema_history failed: {describe_error(e)}"
                ) from e
        return new
