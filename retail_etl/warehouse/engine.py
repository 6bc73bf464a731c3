"""The one warehouse implementation: every algorithm, for any :class:`~.dialect.Dialect`.

A load of one or more regions of a batch (:meth:`Warehouse.load_regions`; one region:
:meth:`Warehouse.load_region`, the same code)::

    create the stage tables stg_sales_ / stg_rejects_ / stg_retract_<batch>_<region, or a digest
        of the regions> and fill them with exactly the staged files, each row tagged with the
        region whose files it came from (``load_region``) (DuckDB: TEMP tables from one
        read_parquet; Snowflake: TRANSIENT tables by COPY from the external stage; DDL and COPY
        run before the load's transaction, because Snowflake's DDL commits)
    BEGIN
    checks, per region: stage rows == staged file rows, every row of the region, duplicate
        keys counted (duplicates: the MERGE source is deduplicated, latest updated_at wins);
        rows loaded == stage rows
    classify (inserted / updated / unchanged per region) by a join on the key, then one MERGE,
        or, when no key of the source is stored under any date, one INSERT (the insert path);
        its own counts must agree
    INSERT INTO sales_retractions the stored rows the source retracts or no longer has;
        DELETE them from sales_fact (the counts must agree; counted per region)
    replace the day's rejects of the regions
    INSERT the 'loaded' ledger rows, one per region (with rows_retracted and rows_deleted)
    COMMIT                                   -- or ROLLBACK and WarehouseLoadError
    DROP the stage tables                    -- always (a session's connection outlives them)

A load of several regions that fails is rolled back and run again region by region, so a bad
region fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa

from retail_etl import contract
from retail_etl.backfill import LedgerState
from retail_etl.settings import InvalidIdentifierError, validate_identifier
from retail_etl.staging import StagedFile, StagingStore, validate_batch_id
from retail_etl.warehouse import sql
from retail_etl.warehouse.base import (
    LEDGER_COLUMNS,
    REJECTS_STAGE_COLUMNS,
    RETRACTIONS_STAGE_COLUMNS,
    SALES_FACT,
    SALES_FACT_COLUMNS,
    SALES_RETRACTIONS,
    SALES_RETRACTIONS_COLUMNS,
    SALES_STAGE_COLUMNS,
    SCHEMA_HISTORY_COLUMNS,
    STAGE_REGION_COLUMN,
    TABLES,
    CheckResult,
    LedgerEntry,
    MergeResult,
    RegionLoad,
    RegionRecord,
    StepTimer,
    WarehouseColumn,
    WarehouseError,
    WarehouseLoadError,
    describe_error,
    load_error,
    loaded_ledger_entry,
    merge_checks,
    merge_result,
    normalize_dq_record,
    schema_history_row,
    utc_now,
)
from retail_etl.warehouse.dialect import Dialect, StatementKind

log = logging.getLogger("retail_etl.warehouse")
#: dq_results rows per INSERT statement (10 bound values each)
DQ_ROWS_PER_INSERT = 200

SideKind = Literal["rejects", "retractions"]


@dataclass(frozen=True)
class LoadRetry:
    """How often a region's load transaction is attempted when it fails on an error the
    dialect calls retryable (lock timeout, busy file, transient), and the pause before the
    second attempt (doubled each time). ``sleep`` is the seam tests replace."""

    attempts: int = 3
    delay_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def pause(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return self.delay_s * 2 ** (attempt - 1)


class Warehouse:
    """The warehouse tables in one engine; ``dialect`` says which and how to reach it."""

    def __init__(
        self, dialect: Dialect, store: StagingStore, *, retry: LoadRetry | None = None
    ) -> None:
        self.dialect = dialect
        self.store = store
        self.retry = retry or LoadRetry()

    def __repr__(self) -> str:  # the dialect's repr carries no credentials
        return f"Warehouse({self.dialect!r})"

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """Run several operations (a batch's loads) on one connection. Each operation keeps
        its own transaction; see the dialect's ``session`` for what else it saves."""
        with self.dialect.session():
            yield self

    @contextmanager
    def loading(self) -> Iterator[Warehouse]:
        """A :meth:`session` for a batch's region loads, in the dialect's load scope (Snowflake:
        the load's timeouts, warehouse and size, the size restored after)."""
        with self.dialect.session(), self.dialect.connect() as con, self.dialect.load_scope(con):
            yield self

    def _run(
        self, con: Any, kind: StatementKind, text: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        return self.dialect.execute(con, kind, text, params).rows

    def _count(self, con: Any, kind: StatementKind, text: str, params: Sequence[Any] = ()) -> int:
        """The one number a COUNT query or a DML statement (rows inserted / deleted) returns."""
        rows = self._run(con, kind, text, params)
        return int(rows[0][0] or 0) if rows else 0

    def _fetch(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.dialect.connect() as con:
            rows = self._run(con, "read", text, params)
            self.dialect.end_read(con)
            return rows

    @contextmanager
    def _transaction(self, con: Any) -> Iterator[None]:
        self.dialect.begin(con)
        try:
            yield
            self.dialect.commit(con)
        except BaseException:
            self.dialect.rollback(con)
            raise

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (tests and ad-hoc checks)."""
        return self._fetch(statement, params)

    def query_read_only(self, statement: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a reader's statement on a read-only connection held only while it runs, so a
        load waits seconds, not for as long as an analyst keeps a session open."""
        with self.dialect.connect(read_only=True) as con:
            result = self.dialect.execute(con, "read", statement)
            self.dialect.end_read(con)
            return result.columns, result.rows

    # ------------------------------------------------------------------ schema

    def ensure_schema(self) -> list[str]:
        """Create what is missing (the dialect's objects, then the tables); add columns
        missing from existing tables (NULLABLE, metadata only). Returns ``table.column`` added."""
        d = self.dialect
        added: list[str] = []
        with d.connect() as con:
            d.prepare_schema(con)
            for table, columns in TABLES.items():
                options = d.table_options(table)
                self._run(con, "ddl", sql.create_table_sql(d, table, columns, options=options))
                existing = d.existing_columns(con, table)
                for column in columns:
                    if column.name not in existing:
                        self._run(con, "ddl", sql.add_column_sql(d, table, column))
                        added.append(f"{table}.{column.name}")
            d.end_read(con)
        if added:
            log.info("added column(s) to the %s warehouse: %s", d.name, ", ".join(added))
        return added

    def drop_stale_stage_tables(self, older_than_hours: float) -> list[str]:
        """Drop ``stg_*`` tables a killed load left behind (created longer ago than the
        bound, so a load in progress keeps its own); the names dropped."""
        cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
        with self.dialect.connect() as con:
            names = self.dialect.stale_stage_tables(con, cutoff)
            for name in names:
                table = validate_identifier(name, "stage table")
                self._run(con, "drop_stage", sql.drop_table_sql(self.dialect, table))
            self.dialect.end_read(con)
        if names:
            log.warning("dropped %d stale stage table(s): %s", len(names), ", ".join(names))
        return names

    # ------------------------------------------------------------------ loads

    def load_region(self, batch: RegionLoad) -> MergeResult:
        """Stage tables, dedup guard, MERGE, retractions (removed rows kept in
        ``sales_retractions``), the day's rejects replaced and the 'loaded' ledger row, in one
        transaction. Raises :class:`WarehouseLoadError` (rolled back) on any failure.

        A failure the dialect calls retryable (a lock timeout, a busy file) runs the whole
        attempt again, up to ``retry.attempts`` times with backoff: it was rolled back, so
        nothing of it stays."""
        (result,) = self._load_with_retry([batch])
        return result

    def load_regions(
        self, loads: Sequence[RegionLoad]
    ) -> tuple[dict[str, MergeResult], dict[str, WarehouseError | InvalidIdentifierError]]:
        """Load several regions of one batch in ONE transaction (one set of stage tables, one
        MERGE, one commit; the checks and counts still per region), retried like
        :meth:`load_region`. If it fails (rolled back), each region is loaded on its own with
        :meth:`load_region`, so a bad region fails alone and the others load.

        Returns (merge results, errors) by region."""
        regions = [b.region for b in loads]
        if len(set(regions)) != len(regions):
            raise ValueError(f"a load names a region twice: {', '.join(regions)}")
        if len({(b.batch_id, b.business_date, b.flow_run_id) for b in loads}) > 1:
            raise ValueError("the regions of one load must share batch id, date and flow run")
        if len(loads) > 1:
            try:
                return {r.region: r for r in self._load_with_retry(loads)}, {}
            except (WarehouseError, InvalidIdentifierError) as e:
                # the cause, not the message listing every region: it names the bad one
                log.warning(
                    "load of %d regions of batch %s in one transaction failed (%s); loading "
                    "them one by one",
                    len(loads),
                    loads[0].batch_id,
                    describe_error(e.__cause__ or e),
                )
        merges: dict[str, MergeResult] = {}
        errors: dict[str, WarehouseError | InvalidIdentifierError] = {}
        for batch in loads:
            try:
                merges[batch.region] = self.load_region(batch)
            except (WarehouseError, InvalidIdentifierError) as e:  # only this region
                errors[batch.region] = e
        return merges, errors

    def _load_with_retry(self, loads: Sequence[RegionLoad]) -> list[MergeResult]:
        attempt = 1
        while True:
            try:
                return self._load_once(loads)
            except WarehouseLoadError as e:
                cause = e.__cause__
                if (
                    attempt >= self.retry.attempts
                    or cause is None
                    or not self.dialect.retryable(cause)
                ):
                    raise
                pause = self.retry.pause(attempt)
                log.warning(
                    "region %s %s batch %s: attempt %d of %d failed (%s); retrying in %.0f s",
                    ", ".join(b.region for b in loads),
                    loads[0].business_date,
                    loads[0].batch_id,
                    attempt,
                    self.retry.attempts,
                    describe_error(cause),
                    pause,
                )
                self.retry.sleep(pause)
                attempt += 1

    def _load_once(self, loads: Sequence[RegionLoad]) -> list[MergeResult]:
        """One attempt: the regions of ``loads`` (one batch) in one transaction."""
        d = self.dialect
        first = loads[0]
        regions = [validate_identifier(b.region, "region") for b in loads]
        validate_batch_id(first.batch_id)
        day = first.business_date
        stage = sql.stage_table_name("sales", first.batch_id, regions)
        sides: dict[SideKind, tuple[str, Sequence[WarehouseColumn]]] = {
            "rejects": (
                sql.stage_table_name("rejects", first.batch_id, regions),
                REJECTS_STAGE_COLUMNS,
            ),
            "retractions": (
                sql.stage_table_name("retractions", first.batch_id, regions),
                RETRACTIONS_STAGE_COLUMNS,
            ),
        }
        rejects_stage, retractions_stage = sides["rejects"][0], sides["retractions"][0]
        created = [stage, rejects_stage, retractions_stage]
        started = time.perf_counter()
        started_at = first.started_at or utc_now()
        step = StepTimer()
        fill_step, side_step = d.fill_steps
        with d.connect() as con, ExitStack() as scope:
            try:
                step.start("session")
                scope.enter_context(d.region_scope(con, loads))
                step.start("create stage table")
                d.create_stage_table(con, stage, (*SALES_STAGE_COLUMNS, STAGE_REGION_COLUMN))
                for name, columns in sides.values():
                    d.create_stage_table(con, name, (*columns, STAGE_REGION_COLUMN))
                step.start(fill_step)
                loaded = d.fill_load_stage(
                    con, stage, list(sql.ACCEPTED), {b.region: b.files for b in loads}
                )
                step.start(side_step)
                side_loaded = {
                    kind: d.fill_load_stage(
                        con,
                        name,
                        [c.name for c in columns],
                        {b.region: _side_files(b, kind) for b in loads},
                    )
                    for kind, (name, columns) in sides.items()
                }
                step.start("begin")
                d.begin(con)
                step.start("check stage")
                expected = {b.region: b.staged_rows for b in loads}
                staged, duplicates = self._check_stage(con, "staged", stage, day, loaded, expected)
                side_staged: dict[SideKind, dict[str, int]] = {}
                for kind, (name, _) in sides.items():
                    expected = {b.region: sum(f.rows for f in _side_files(b, kind)) for b in loads}
                    side_staged[kind], _ = self._check_stage(
                        con, kind, name, day, side_loaded[kind], expected
                    )
                for region in regions:
                    if duplicates[region]:
                        log.warning(
                            "region %s %s batch %s: %d staged row(s) repeat a key; keeping the "
                            "latest updated_at",
                            region,
                            day,
                            first.batch_id,
                            duplicates[region],
                        )
                source, extra_tables = d.merge_source(con, stage, sum(duplicates.values()))
                created += extra_tables
                step.start("classify")
                stored_before = self._per_region(
                    regions,
                    self._run(
                        con,
                        "classify",
                        sql.day_keys_per_region_sql(d, len(regions)),
                        [day, *regions],
                    ),
                )
                keys = self._per_region(
                    regions,
                    self._run(
                        con, "classify", sql.stored_keys_sql(d, source, len(regions)), regions
                    ),
                    width=2,
                )
                if any(stored_keys for _, stored_keys in keys.values()):
                    counts = self._per_region(
                        regions,
                        self._run(
                            con, "classify", sql.classify_sql(d, source, len(regions)), regions
                        ),
                        width=3,
                    )
                else:  # no key is stored: all inserts (the INSERT's own count must agree)
                    counts = {r: (rows, 0, 0) for r, (rows, _) in keys.items()}
                inserted, updated, unchanged = (
                    sum(c[i] for c in counts.values()) for i in range(3)
                )
                step.start("merge")
                # Insert path: no key of the source is stored (under any date), so the MERGE
                # would only insert; a plain INSERT does the same without the join.
                insert_only = updated == 0 and unchanged == 0
                write = sql.insert_new_sql(d, source) if insert_only else sql.merge_sql(d, source)
                m_inserted, m_updated, changed = d.merge_counts(d.execute(con, "merge", write))
                if (
                    changed != inserted + updated
                    or m_inserted not in (None, inserted)
                    or m_updated not in (None, updated)
                ):
                    raise WarehouseError(
                        f"{'INSERT' if insert_only else 'MERGE'} reported {changed} row(s) "
                        f"changed ({m_inserted} inserted / {m_updated} updated), expected "
                        f"{inserted} inserted + {updated} updated"
                    )
                step.start("retract")
                deleted = self._retract(
                    con,
                    loads,
                    stored_before,
                    side_staged["retractions"],
                    stage,
                    rejects_stage,
                    retractions_stage,
                )
                step.start("replace rejects")
                self._run(
                    con,
                    "replace_rejects",
                    sql.delete_rejects_sql(d, len(regions)),
                    [*regions, day],
                )
                self._run(con, "replace_rejects", sql.insert_rejects_sql(d, rejects_stage))
                step.start("ledger")
                seconds = time.perf_counter() - started
                entries = [
                    loaded_ledger_entry(
                        b, *_counts(counts[b.region]), seconds, started_at, deleted[b.region]
                    ).validated()
                    for b in loads
                ]
                self._run(
                    con,
                    "ledger",
                    sql.insert_ledger_sql(d, len(entries)),
                    [v for entry in entries for v in entry.row()],
                )
                step.start("commit")
                d.commit(con)
            except Exception as e:
                d.rollback(con)
                raise load_error(loads, step.current, e) from e
            finally:
                for table in created:
                    d.drop_stage_table(con, table)
        step.start("done")
        log.debug(
            "load of %s %s (%s), seconds per step: %s",
            ", ".join(regions),
            day,
            "insert path" if insert_only else "merge",
            step.seconds,
        )
        seconds = time.perf_counter() - started  # the transaction's, shared by its regions
        return [
            merge_result(
                b,
                staged[b.region],
                *_counts(counts[b.region]),
                duplicates[b.region],
                seconds,
                deleted=deleted[b.region],
                rejects=side_staged["rejects"][b.region],
            )
            for b in loads
        ]

    @staticmethod
    def _per_region(
        regions: Sequence[str], rows: Sequence[tuple[Any, ...]], width: int = 1
    ) -> dict[str, tuple[int, ...]]:
        """Rows of (region, n1 .. n_width) as region -> counts; zeros for a region without a row."""
        out = {region: (0,) * width for region in regions}
        for region, *values in rows:
            out[str(region)] = tuple(int(v or 0) for v in values)
        return out

    def _check_stage(
        self,
        con: Any,
        what: str,
        stage: str,
        day: date,
        loaded: int,
        expected: Mapping[str, int],
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Per region (staged rows, duplicate-key rows), after the checks: per region, the
        stage's rows read from its files equal its staged files' rows and are all of the
        region; the rows loaded (all regions, one count) equal the stage's rows."""
        stats = self._per_region(
            list(expected),
            self._run(con, "check_stage", sql.stage_stats_sql(self.dialect, stage)),
            3,
        )
        unknown = set(stats) - set(expected)
        if unknown:
            raise WarehouseError(f"the {what} stage holds rows of no region of the load: {unknown}")
        for region, (staged, foreign, _) in stats.items():
            if staged != expected[region]:
                raise WarehouseError(
                    f"region {region!r} {day}: the stage holds {staged} {what} row(s) read from "
                    f"its files, the staged files have {expected[region]}"
                )
            if foreign:
                raise WarehouseError(
                    f"region {region!r} {day}: {foreign} {what} row(s) are not of region {region!r}"
                )
        total = sum(s[0] for s in stats.values())
        if loaded != total:
            raise WarehouseError(f"loaded {loaded} {what} row(s) into the stage, it holds {total}")
        return {r: s[0] for r, s in stats.items()}, {r: s[2] for r, s in stats.items()}

    def _retract(
        self,
        con: Any,
        loads: Sequence[RegionLoad],
        stored_before: Mapping[str, tuple[int, ...]],
        retracted: Mapping[str, int],
        stage: str,
        rejects_stage: str,
        retractions_stage: str,
    ) -> dict[str, int]:
        """Move the stored rows the source retracts or no longer has to ``sales_retractions``;
        per region, the rows removed from ``sales_fact``."""
        d = self.dialect
        first = loads[0]
        regions = [b.region for b in loads]
        lineage = [first.batch_id, first.flow_run_id]
        statements: list[tuple[str, list[Any]]] = []
        if any(retracted.values()):
            statements.append((sql.retract_listed_sql(d, retractions_stage), lineage))
        # nothing stored for a region's day before: nothing of it can be missing
        stored = [r for r in regions if stored_before[r][0]]
        if stored:
            statements.append(
                (
                    sql.retract_missing_sql(
                        d, stage, rejects_stage, retractions_stage, len(stored)
                    ),
                    [*lineage, *stored, first.business_date],
                )
            )
        recorded = sum(self._count(con, "retract", text, params) for text, params in statements)
        deleted = dict.fromkeys(regions, 0)
        if not recorded:
            return deleted
        scope = [*regions, first.batch_id]
        found = self._run(con, "retract", sql.retracted_per_region_sql(d, len(regions)), scope)
        deleted.update({str(r): int(n) for r, n in found})
        removed = self._count(con, "retract", sql.delete_retracted_sql(d, len(regions)), scope)
        if not removed == sum(deleted.values()) == recorded:
            raise WarehouseError(
                f"removed {removed} row(s) from sales_fact ({deleted} by region) but recorded "
                f"{recorded} in sales_retractions"
            )
        return deleted

    def load_dq_results(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Replace the quality results of the records' batch ids (a rerun of a batch replaces
        its own results; other batches' results stay as history), in one transaction."""
        rows = [normalize_dq_record(r) for r in records]
        if not rows:
            return 0
        batch_ids = sorted({str(r["batch_id"]) for r in records})
        d = self.dialect
        try:
            with d.connect() as con, self._transaction(con):
                self._run(con, "dq_results", sql.delete_dq_sql(d, len(batch_ids)), batch_ids)
                # Multi-row INSERTs: DuckDB runs an executemany row by row (600 rows of a
                # 50-region day: 0.27 s).
                for start in range(0, len(rows), DQ_ROWS_PER_INSERT):
                    chunk = rows[start : start + DQ_ROWS_PER_INSERT]
                    self._run(
                        con,
                        "dq_results",
                        sql.insert_dq_sql(d, len(chunk)),
                        [v for row in chunk for v in row],
                    )
        except Exception as e:
            raise WarehouseError(
                f"writing {len(rows)} dq_results row(s) of batch(es) {', '.join(batch_ids)} "
                f"failed: {describe_error(e)}"
            ) from e
        return len(rows)

    def record_ledger(self, entry: LedgerEntry) -> None:
        """Append one ledger row in its own transaction (e.g. 'load_failed' after a rollback)."""
        entry = entry.validated()
        try:
            with self.dialect.connect() as con, self._transaction(con):
                self._run(con, "ledger", sql.insert_ledger_sql(self.dialect), list(entry.row()))
        except Exception as e:
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
        d = self.dialect
        try:
            with d.connect() as con, self._transaction(con):
                latest = self._run(con, "schema_history", sql.latest_schema_sql(d), [region])
                new = not latest or latest[0][0] != fingerprint
                if new:
                    self._run(con, "schema_history", sql.insert_schema_sql(d), list(row))
        except Exception as e:
            raise WarehouseError(
                f"recording schema fingerprint {fingerprint} of region {region!r} "
                f"(batch {batch_id}) in source_schema_history failed: {describe_error(e)}"
            ) from e
        return new

    # ------------------------------------------------------------------ reads

    def ledger(self, business_date: date | None = None) -> list[dict[str, Any]]:
        params: list[Any] = [business_date] if business_date is not None else []
        rows = self._fetch(sql.ledger_sql(self.dialect, by_date=business_date is not None), params)
        return [_normalize(LEDGER_COLUMNS, r) for r in rows]

    def fact_rows(
        self, region: str | None = None, business_date: date | None = None
    ) -> list[dict[str, Any]]:
        params: list[Any] = []
        if region is not None:
            params.append(validate_identifier(region, "region"))
        if business_date is not None:
            params.append(business_date)
        text = sql.fact_rows_sql(
            self.dialect, by_region=region is not None, by_date=business_date is not None
        )
        return [_normalize(SALES_FACT_COLUMNS, r) for r in self._fetch(text, params)]

    def accepted_history(self, region: str, before: date, days: int) -> list[tuple[date, int]]:
        """``rows_accepted`` of the latest 'loaded' ledger row per date in [before-days, before)."""
        validate_identifier(region, "region")
        if days <= 0:
            raise ValueError(f"history days must be positive, got {days}")
        start = before - timedelta(days=days)
        rows = self._fetch(
            sql.accepted_history_sql(self.dialect), [region, start, before, "loaded"]
        )
        return [(_as_date(d), int(n)) for d, n in rows if n is not None]

    def loaded_pairs(self, start: date, end: date) -> set[tuple[str, date]]:
        """(region, date) pairs in [start, end] whose latest ledger status is 'loaded'."""
        rows = self._fetch(sql.loaded_pairs_sql(self.dialect), [start, end, "loaded"])
        return {(str(region), _as_date(d)) for region, d in rows}

    def ledger_states(self, start: date, end: date) -> dict[tuple[str, date], LedgerState]:
        """Latest ledger row (status, source fingerprint) of every (region, date) in [start, end]."""
        rows = self._fetch(sql.ledger_states_sql(self.dialect), [start, end])
        return {
            (str(region), _as_date(d)): LedgerState(
                str(status), None if fingerprint is None else str(fingerprint)
            )
            for region, d, status, fingerprint in rows
        }

    def fact_day_stats(
        self, start: date, end: date
    ) -> dict[tuple[str, date], tuple[int, Decimal | None]]:
        """(region, sale_date) -> (rows, sum of total_amount) of ``sales_fact`` in [start, end]."""
        rows = self._fetch(sql.fact_day_stats_sql(self.dialect), [start, end])
        return {
            (str(region), _as_date(d)): (int(n), None if total is None else Decimal(str(total)))
            for region, d, n, total in rows
        }

    def day_keys(self, region: str, business_date: date) -> int:
        """Rows (keys) ``sales_fact`` holds for (region, business_date)."""
        rows = self._fetch(
            sql.day_keys_sql(self.dialect), [validate_identifier(region, "region"), business_date]
        )
        return int(rows[0][0]) if rows else 0

    def retractions(self, region: str | None = None) -> list[dict[str, Any]]:
        """``sales_retractions`` rows (of one region), by key then time."""
        params = [] if region is None else [validate_identifier(region, "region")]
        rows = self._fetch(sql.retractions_sql(self.dialect, by_region=region is not None), params)
        return [_normalize(SALES_RETRACTIONS_COLUMNS, r) for r in rows]

    def latest_schema(self, region: str) -> str | None:
        """The fingerprint most recently recorded for ``region`` in ``source_schema_history``."""
        rows = self._fetch(
            sql.latest_schema_sql(self.dialect), [validate_identifier(region, "region")]
        )
        return str(rows[0][0]) if rows else None

    def schema_history(self, region: str | None = None) -> list[dict[str, Any]]:
        """``source_schema_history`` rows (of one region), oldest first."""
        params = [] if region is None else [validate_identifier(region, "region")]
        text = sql.schema_history_sql(self.dialect, by_region=region is not None)
        names = [c.name for c in SCHEMA_HISTORY_COLUMNS]
        return [dict(zip(names, r, strict=True)) for r in self._fetch(text, params)]

    def verify(
        self,
        batch_id: str,
        business_date: date,
        merge_results: Sequence[MergeResult],
        *,
        records: Mapping[str, RegionRecord] | None = None,
    ) -> list[CheckResult]:
        """Post-load checks: :func:`merge_checks` plus, on the fact table,

        - ``fact_unique_keys``: no key of the day's rows stored twice in the batch's regions;
        - ``loaded_rows_in_batch_dates``: every row this batch wrote (``batch_id`` lineage) has
          ``sale_date`` = the business date;
        - ``ledger_recorded`` (per region): the batch's latest ledger row is 'loaded' with the
          MERGE's counts;
        - ``retracted_keys_absent`` (per region): no key the batch recorded in
          ``sales_retractions`` is still in ``sales_fact``.
        """
        d = self.dialect
        checks = merge_checks(merge_results, records)
        regions = sorted({r.region for r in merge_results})
        for region in regions:
            validate_identifier(region, "region")
        if not regions:
            return checks
        ((dups,),) = self._fetch(
            sql.fact_duplicate_keys_sql(d, len(regions)), [business_date, *regions, business_date]
        )
        checks.append(
            CheckResult.judged(
                "fact_unique_keys",
                contract.BATCH_REGION,
                int(dups),
                0,
                int(dups) == 0,
                f"{int(dups)} (region, sale_id) key(s) stored more than once in "
                f"{SALES_FACT} for region(s) {', '.join(regions)}",
            )
        )
        ((outside,),) = self._fetch(
            sql.rows_outside_dates_sql(d, len(regions), 1), [batch_id, *regions, business_date]
        )
        checks.append(
            CheckResult.judged(
                "loaded_rows_in_batch_dates",
                contract.BATCH_REGION,
                int(outside),
                0,
                int(outside) == 0,
                f"{int(outside)} row(s) written by batch {batch_id} have a sale_date other than "
                f"{business_date}",
            )
        )
        # One query each over the batch's regions (not two per region).
        latest: dict[str, tuple[Any, ...]] = {}
        for ledger_row in self._fetch(sql.ledger_for_batch_sql(d), [batch_id]):
            latest.setdefault(ledger_row[0], tuple(ledger_row[1:]))
        still_stored = {
            str(region): int(n)
            for region, n in self._fetch(sql.retracted_still_stored_sql(d), [batch_id])
        }
        for r in merge_results:
            row = latest.get(r.region)
            ok = (
                row is not None
                and row[0] == "loaded"
                and [None if v is None else int(v) for v in row[1:]]
                == [r.inserted, r.updated, r.unchanged, r.deleted]
            )
            checks.append(
                CheckResult.judged(
                    "ledger_recorded",
                    r.region,
                    1.0 if ok else 0.0,
                    1.0,
                    ok,
                    "latest ledger row is 'loaded' with the MERGE counts"
                    if ok
                    else f"latest ledger row of batch {batch_id}: {row!r}",
                )
            )
            left = still_stored.get(r.region, 0)
            checks.append(
                CheckResult.judged(
                    "retracted_keys_absent",
                    r.region,
                    left,
                    0,
                    left == 0,
                    f"{r.deleted} row(s) removed from {SALES_FACT} into {SALES_RETRACTIONS}; "
                    f"{left} key(s) batch {batch_id} retracted are still stored",
                )
            )
        return checks


def _counts(values: tuple[int, ...]) -> tuple[int, int, int]:
    """(inserted, updated, unchanged) of a region's classify row."""
    inserted, updated, unchanged = values
    return inserted, updated, unchanged


def _side_files(batch: RegionLoad, kind: SideKind) -> tuple[StagedFile, ...]:
    return batch.reject_files if kind == "rejects" else batch.retraction_files


def _normalize(columns: Sequence[WarehouseColumn], row: Sequence[Any]) -> dict[str, Any]:
    """Row as a dict; integers as int and doubles as float (Snowflake returns NUMBER as
    Decimal), everything else as the driver returned it."""
    out: dict[str, Any] = {}
    for col, value in zip(columns, row, strict=True):
        if value is not None and pa.types.is_integer(col.arrow_type):
            value = int(value)
        elif value is not None and pa.types.is_floating(col.arrow_type):
            value = float(value)
        out[col.name] = value
    return out


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))
