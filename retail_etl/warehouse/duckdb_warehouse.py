"""DuckDB, the embedded default warehouse: one file at ``RETAIL_ETL_DUCKDB_PATH``.

A connection is opened per operation and closed after it (a DuckDB file has one writer process;
other processes can use the file between operations), except inside :meth:`DuckDBWarehouse.session`,
where the operations share one connection and the file is checkpointed once, when the session
ends (a load of 4 x 450K rows: 2.0 s instead of 2.45 s, see :meth:`session`). Inside this process,
operations on one file are serialized by a lock: DuckDB's optimistic concurrency would otherwise
abort one of two concurrent MERGEs into ``sales_fact``, so regions loaded from concurrent tasks
simply queue.

A region load is one transaction::

    BEGIN
    CREATE TEMP TABLE stg_sales_<batch>_<region>      -- connection-local, never collides
    INSERT INTO it SELECT ... FROM read_parquet([explicit staged files])   (or a pyarrow
        dataset over S3: DuckDB has no httpfs offline; pyarrow's S3 filesystem needs none)
    checks: staged rows == staged file rows, every row of this region, duplicate keys counted
    (duplicates: the stage is deduplicated, latest updated_at wins)
    classify (inserted / updated / unchanged) by a join, then MERGE; the MERGE's row count
        must equal inserted + updated
    stage the region's rejects and retractions (temp tables, same checks)
    INSERT INTO sales_retractions the stored rows the source retracts or no longer has;
        DELETE them from sales_fact (the two counts must agree)
    replace the day's rejects of the region
    INSERT the 'loaded' ledger row (with rows_retracted and rows_deleted)
    DROP the stage tables (a session's connection outlives the load)
    COMMIT                                             -- or ROLLBACK and WarehouseLoadError
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import duckdb

from retail_etl.settings import Settings, validate_identifier
from retail_etl.staging import StagedFile, StagingStore, validate_batch_id
from retail_etl.warehouse import sql
from retail_etl.warehouse.base import (
    REJECTS_STAGE_COLUMNS,
    RETRACTIONS_STAGE_COLUMNS,
    SALES_STAGE_COLUMNS,
    TABLES,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    StepTimer,
    WarehouseBusyError,
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

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


_LOCK_CONFLICT = re.compile(r"Conflicting lock is held in (?P<holder>.*?)(?:\. See|$)", re.S)


def _lock_holder(message: str) -> str | None:
    """Who holds the file, from DuckDB's lock-conflict error; None for any other error."""
    if "Could not set lock on file" not in message:
        return None
    found = _LOCK_CONFLICT.search(message)
    return f"held by {found.group('holder').strip()}" if found else "locked by another process"


def _lock_for(path: Path) -> threading.RLock:
    key = str(path.resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


class DuckDBWarehouse(sql.QueryMixin):
    """The warehouse in one DuckDB file."""

    def __init__(
        self,
        path: Path,
        store: StagingStore,
        *,
        memory_limit: str = "1GB",
        threads: int = 2,
        lock_timeout_s: float = 1800.0,
    ) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.store = store
        self.memory_limit = memory_limit
        self.threads = threads
        self._t = sql.SqlTarget("duckdb")
        self._lock = _lock_for(self.path)
        self._session: duckdb.DuckDBPyConnection | None = None

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    @classmethod
    def from_settings(cls, settings: Settings, store: StagingStore) -> DuckDBWarehouse:
        return cls(
            settings.duckdb_path,
            store,
            memory_limit=settings.duckdb_memory_limit,
            threads=settings.duckdb_threads,
            lock_timeout_s=settings.warehouse_lock_timeout_seconds,
        )

    def _open(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """Open the file (for writing unless ``read_only``); while another process holds it
        (a run, or a reader's read-only connection), wait our turn, bounded by
        ``lock_timeout_s``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        pause = 0.2
        warned = False
        while True:
            try:
                return duckdb.connect(
                    str(self.path),
                    read_only=read_only,
                    config={"memory_limit": self.memory_limit, "threads": self.threads},
                )
            except duckdb.Error as e:
                holder = _lock_holder(str(e))
                if holder is None:
                    raise WarehouseError(
                        f"cannot open the DuckDB warehouse {self.path}: {e}"
                    ) from e
                if time.monotonic() + pause > deadline:
                    raise WarehouseBusyError(
                        f"the DuckDB warehouse {self.path} stayed busy ({holder}) for "
                        f"{self.lock_timeout_s:.0f} s (RETAIL_ETL_WAREHOUSE_LOCK_TIMEOUT_SECONDS); "
                        "readers should use `retail-etl query` or close their connection"
                    ) from e
                if not warned:
                    log.warning(
                        "the DuckDB warehouse %s is busy (%s): waiting up to %.0f s for our turn",
                        self.path,
                        holder,
                        self.lock_timeout_s,
                    )
                    warned = True
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def query_read_only(self, statement: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a reader's statement on a read-only connection held only while it runs, so a
        load waits seconds, not for as long as an analyst keeps a session open."""
        con = self._open(read_only=True)
        try:
            cursor = con.execute(statement)
            columns = [d[0] for d in cursor.description or []]
            return columns, cursor.fetchall()
        finally:
            con.close()

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if self._session is not None:
                yield self._session
                return
            con = self._open()
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def session(self) -> Iterator[DuckDBWarehouse]:
        """Run several operations (a batch's loads) on one connection.

        Each operation keeps its own transaction; what changes is that the file is checkpointed
        once, when the session ends, instead of after every region (every commit over
        ``checkpoint_threshold`` and every close checkpoints). A crash inside the session loses
        nothing committed: the write-ahead log is replayed on the next open. Other threads of
        this process wait for the session to end; other processes cannot open the file during it.
        """
        with self._lock:
            if self._session is not None:  # nested: the outer session owns the connection
                yield self
                return
            con = self._open()
            self._session = con
            try:
                con.execute("SET checkpoint_threshold = '64GB'")
                yield self
            finally:
                self._session = None
                try:
                    con.execute("CHECKPOINT")
                except duckdb.Error:  # the close below checkpoints too, or replays the WAL later
                    log.warning("checkpoint of %s failed at the end of a session", self.path)
                finally:
                    con.close()

    def _fetch(self, sql_text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as con:
            return con.execute(sql_text, list(params)).fetchall()

    # ------------------------------------------------------------------ schema

    def drop_stale_stage_tables(self, older_than_hours: float) -> list[str]:
        """Nothing to drop: DuckDB stage tables are TEMP, gone with the connection."""
        return []

    def ensure_schema(self) -> list[str]:
        """Create missing tables; add columns missing from existing tables (NULLABLE, via
        ``ALTER TABLE ADD COLUMN``: metadata only, no rewrite). Returns ``table.column`` added."""
        added: list[str] = []
        t = self._t
        with self._connect() as con:
            for table, columns in TABLES.items():
                con.execute(sql.create_table_sql(t, table, columns))
                existing = {
                    r[0].lower()
                    for r in con.execute(sql.existing_columns_sql(t), ["main", table]).fetchall()
                }
                for column in columns:
                    if column.name not in existing:
                        con.execute(sql.add_column_sql(t, table, column))
                        added.append(f"{table}.{column.name}")
        if added:
            log.info("added column(s) to the DuckDB warehouse: %s", ", ".join(added))
        return added

    # ------------------------------------------------------------------ loads

    def _fill_stage(
        self,
        con: duckdb.DuckDBPyConnection,
        stage: str,
        columns: Sequence[str],
        files: Sequence[StagedFile],
    ) -> None:
        """INSERT the staged files into the stage table (nothing for an empty list)."""
        keys = [f.key for f in files]
        if not keys:
            return
        paths = [self.store.local_path(k) for k in keys]
        if all(p is not None for p in paths):
            source = "read_parquet(?, union_by_name = true)"
            con.execute(
                sql.insert_select_sql(self._t, stage, columns, source), [[str(p) for p in paths]]
            )
            return
        view = f"src_{uuid.uuid4().hex[:12]}"
        con.register(view, self.store.open_dataset(keys))
        try:
            con.execute(sql.insert_select_sql(self._t, stage, columns, self._t.ident(view)))
        finally:
            con.unregister(view)

    def _stage_side_table(
        self,
        con: duckdb.DuckDBPyConnection,
        kind: Literal["rejects", "retractions"],
        batch: RegionLoad,
    ) -> tuple[str, int]:
        """Stage a region's rejects or retractions in a temp table; (table, rows)."""
        columns = REJECTS_STAGE_COLUMNS if kind == "rejects" else RETRACTIONS_STAGE_COLUMNS
        files = batch.reject_files if kind == "rejects" else batch.retraction_files
        stage = sql.stage_table_name(kind, batch.batch_id, batch.region)
        con.execute(sql.create_table_sql(self._t, stage, columns, temporary=True))
        self._fill_stage(con, stage, [c.name for c in columns], files)
        row = con.execute(sql.stage_stats_sql(self._t, stage), [batch.region]).fetchone()
        staged, foreign, _ = (int(v) for v in row or (0, 0, 0))
        if foreign:
            raise WarehouseError(f"{foreign} {kind} row(s) are not of region {batch.region!r}")
        expected = sum(f.rows for f in files)
        if staged != expected:
            raise WarehouseError(f"read {staged} {kind} row(s), staged files have {expected}")
        return stage, staged

    def load_region(self, batch: RegionLoad) -> MergeResult:
        """Merge one region's staged batch, retract, replace its rejects and write its
        'loaded' ledger row, atomically."""
        region = validate_identifier(batch.region, "region")
        validate_batch_id(batch.batch_id)
        t = self._t
        stage = sql.stage_table_name("sales", batch.batch_id, region)
        started = time.perf_counter()
        started_at = batch.started_at or utc_now()
        step = StepTimer()
        with self._connect() as con:
            try:
                step.start("begin")
                con.execute("BEGIN TRANSACTION")
                step.start("create stage table")
                con.execute(sql.create_table_sql(t, stage, SALES_STAGE_COLUMNS, temporary=True))
                step.start("read staged files")
                self._fill_stage(con, stage, sql.ACCEPTED, batch.files)
                step.start("check stage")
                row = con.execute(sql.stage_stats_sql(t, stage), [region]).fetchone()
                staged, foreign, duplicates = (int(v) for v in row or (0, 0, 0))
                if staged != batch.staged_rows:
                    raise WarehouseError(
                        f"stage holds {staged} row(s) but the staged files have {batch.staged_rows}"
                    )
                if foreign:
                    raise WarehouseError(f"{foreign} staged row(s) are not of region {region!r}")
                source = sql.plain_source_sql(t, stage)
                if duplicates:
                    log.warning(
                        "region %s %s batch %s: %d staged row(s) repeat a key; keeping the "
                        "latest updated_at",
                        region,
                        batch.business_date,
                        batch.batch_id,
                        duplicates,
                    )
                    dedup = f"{stage}_dedup"
                    con.execute(
                        sql.create_temp_table_as_sql(t, dedup, sql.dedup_source_sql(t, stage))
                    )
                    source = sql.plain_source_sql(t, dedup)
                step.start("classify")
                ((stored_before,),) = con.execute(
                    sql.day_keys_sql(t), [region, batch.business_date]
                ).fetchall()
                counts = con.execute(sql.classify_sql(t, source)).fetchone()
                inserted, updated, unchanged = (int(v) for v in counts or (0, 0, 0))
                step.start("merge")
                merged = con.execute(sql.merge_sql(t, source)).fetchone()
                affected = int(merged[0]) if merged else 0
                if affected != inserted + updated:
                    raise WarehouseError(
                        f"MERGE changed {affected} row(s), expected {inserted} inserted + "
                        f"{updated} updated"
                    )
                step.start("stage rejects and retractions")
                rejects_stage, rejects = self._stage_side_table(con, "rejects", batch)
                retractions_stage, retracted = self._stage_side_table(con, "retractions", batch)
                step.start("retract")
                statements: list[tuple[str, list[Any]]] = []
                if retracted:
                    statements.append(
                        (sql.retract_listed_sql(t, retractions_stage), list(_lineage(batch)))
                    )
                if stored_before:  # nothing stored for the day before: nothing can be missing
                    statements.append(
                        (
                            sql.retract_missing_sql(t, stage, rejects_stage, retractions_stage),
                            [*_lineage(batch), region, batch.business_date],
                        )
                    )
                recorded = deleted = 0
                for text, params in statements:
                    row = con.execute(text, params).fetchone()
                    recorded += int(row[0]) if row else 0
                if recorded:
                    removed = con.execute(
                        sql.delete_retracted_sql(t), [region, batch.batch_id, region]
                    ).fetchone()
                    deleted = int(removed[0]) if removed else 0
                if deleted != int(recorded):
                    raise WarehouseError(
                        f"removed {deleted} row(s) from sales_fact but recorded {recorded} in "
                        "sales_retractions"
                    )
                step.start("replace rejects")
                con.execute(sql.delete_rejects_sql(t), [region, batch.business_date])
                con.execute(sql.insert_rejects_sql(t, rejects_stage))
                step.start("ledger")
                seconds = time.perf_counter() - started
                entry = loaded_ledger_entry(
                    batch, inserted, updated, unchanged, seconds, started_at, deleted
                )
                con.execute(sql.insert_ledger_sql(t), list(entry.validated().row()))
                step.start("commit")
                # a session's connection outlives the stage tables
                _drop_temp(con, t, stage, f"{stage}_dedup", rejects_stage, retractions_stage)
                con.execute("COMMIT")
            except Exception as e:
                _rollback(con)
                raise load_error(batch, step.current, e) from e
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

    def load_dq_results(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Replace the quality results of the records' batch ids (a rerun of a batch replaces
        its own results; other batches' results stay as history)."""
        rows = [normalize_dq_record(r) for r in records]
        if not rows:
            return 0
        batch_ids = sorted({str(r["batch_id"]) for r in records})
        t = self._t
        with self._connect() as con:
            try:
                con.execute("BEGIN TRANSACTION")
                con.execute(sql.delete_dq_sql(t, len(batch_ids)), batch_ids)
                con.executemany(sql.insert_dq_sql(t), [list(r) for r in rows])
                con.execute("COMMIT")
            except Exception as e:
                _rollback(con)
                raise WarehouseError(
                    f"writing {len(rows)} dq_results row(s) of batch(es) {', '.join(batch_ids)} "
                    f"failed: {describe_error(e)}"
                ) from e
        return len(rows)

    def record_ledger(self, entry: LedgerEntry) -> None:
        """Append one ledger row in its own transaction (e.g. 'load_failed' after a rollback)."""
        entry = entry.validated()
        try:
            with self._connect() as con:
                con.execute(sql.insert_ledger_sql(self._t), list(entry.row()))
        except duckdb.Error as e:
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
        region's latest (checked and written in one transaction); True if it was new."""
        row = schema_history_row(region, fingerprint, columns, differences, batch_id, flow_run_id)
        t = self._t
        with self._connect() as con:
            try:
                con.execute("BEGIN TRANSACTION")
                latest = con.execute(sql.latest_schema_sql(t), [region]).fetchone()
                new = latest is None or latest[0] != fingerprint
                if new:
                    con.execute(sql.insert_schema_sql(t), list(row))
                con.execute("COMMIT")
            except Exception as e:
                _rollback(con)
                raise WarehouseError(
                    f"recording schema fingerprint {fingerprint} of region {region!r} "
                    f"(batch {batch_id}) in source_schema_history failed: {describe_error(e)}"
                ) from e
        return new


def _lineage(batch: RegionLoad) -> tuple[str, str | None]:
    return batch.batch_id, batch.flow_run_id


def _drop_temp(con: duckdb.DuckDBPyConnection, t: sql.SqlTarget, *tables: str) -> None:
    for table in tables:
        con.execute(f"DROP TABLE IF EXISTS temp.main.{t.ident(table)}")


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:  # no transaction active (failed before BEGIN) or already aborted
        log.debug("rollback had no transaction to undo", exc_info=True)
