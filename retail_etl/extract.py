"""Streaming extraction of one region's business day from PostgreSQL into parquet.

The fast path: PostgreSQL ``COPY (SELECT ...) TO STDOUT`` (CSV) is written by psycopg2
into an OS pipe on one thread while pyarrow's streaming CSV reader parses the other
end into typed record batches, which are appended to parquet part files. Memory is
bounded by the reader's block size and one parquet row group, whatever the size of
the day.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg2 import sql

from retail_etl import pg
from retail_etl.contract import EXTRAS_COLUMN, MONEY_COLUMNS, NAN_COLUMN, SOURCE_TABLE
from retail_etl.fingerprint import SourceDayStats, day_stats, fetch_stats
from retail_etl.schema import ExtractionPlan, plan_extraction
from retail_etl.source import ExtractionError, inspect_source, pg_message

CSV_BLOCK_BYTES = 8 << 20  # pyarrow reads the COPY stream in blocks of this size
#: Wanted capacity of the COPY pipe. Linux's default 64 KiB makes writer and reader take turns
#: every 64 KiB; 1 MiB (the usual unprivileged maximum) cut a 4-region extraction from 3.3 s
#: to 2.1 s and its CPU by half on 2 cores.
PIPE_BYTES = 1 << 20


@dataclass
class RegionExtract:
    """What one region's extraction produced (also the per-region artifact row)."""

    region: str
    business_date: date
    files: list[Path]
    rows: int
    bytes: int
    seconds: float
    source_columns: dict[str, str]
    schema_fingerprint: str
    schema_changes: str
    cast_columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    started_at: float = 0.0  # time.time() bounds, to show regions ran concurrently
    finished_at: float = 0.0
    #: the source's stats of every date of ``stats_window`` (the run's day and its lookback),
    #: read in the COPY's snapshot: the fingerprint of exactly the rows extracted
    day_stats: dict[date, SourceDayStats] | None = None


def split_predicate(plan: ExtractionPlan, split: int, splits: int) -> sql.Composable:
    """SQL that is TRUE for the rows of extraction split ``split`` of ``splits`` (0-based).

    Rows are assigned by ``sale_id`` (its value modulo ``splits``, or a hash of its text when
    the source column is not an integer), so every version of a sale lands in the same split;
    a NULL ``sale_id`` goes to split 0. The splits partition the day: each row is in exactly one.
    """
    if not 1 <= splits <= 64 or not 0 <= split < splits:
        raise ValueError(f"extraction split {split} of {splits} is out of range")
    if splits == 1:
        return sql.SQL("TRUE")
    column = plan.column("sale_id")
    source = sql.Identifier(column.source_name)
    if not column.cast_in_transform and column.source_type in ("smallint", "integer", "bigint"):
        key: sql.Composable = source
    else:
        key = sql.SQL("hashtext({}::text)").format(source)
    n = sql.Literal(splits)
    return sql.SQL("coalesce((({key} % {n}) + {n}) % {n}, 0) = {k}").format(
        key=key, n=n, k=sql.Literal(split)
    )


#: What the COPY writes for SQL NULL and the CSV reader reads as NULL (and nothing else): with
#: pyarrow's default null tokens, text ``NA``, ``N/A``, ``nan``, ``NaN`` or ``null`` would become
#: NULL. A text value that happens to be ``\\N`` is quoted by PostgreSQL and stays text.
CSV_NULL = "\\N"


def build_copy_query(
    plan: ExtractionPlan,
    business_date: date,
    *,
    schema: str = "public",
    split: int = 0,
    splits: int = 1,
) -> sql.Composed:
    """``COPY (SELECT <explicit columns> ...) TO STDOUT`` for one business date (and, with
    ``splits`` > 1, only the rows of one split: :func:`split_predicate`).

    Every row of the date is read, whatever its status or deleted flag: the transform keeps the
    latest version of each sale and retracts it when that version is not a completed sale.
    Timestamps leave PostgreSQL already converted to UTC; columns whose source type
    drifted from the contract are sent as text for the transform to cast. A money column read
    in its contract type sends ``NaN`` as NULL and names the column in
    :data:`~retail_etl.contract.NAN_COLUMN`, so the transform can reject the row.
    """
    selects: list[sql.Composable] = []
    nan_flags: list[sql.Composable] = []
    nan_tests: list[sql.Composable] = []
    for column in plan.columns:
        source = sql.Identifier(column.source_name)
        target = sql.Identifier(column.contract.name)
        if column.cast_in_transform:
            expr = sql.SQL("{}::text").format(source)
            if column.source_type.startswith("timestamp"):
                expr = sql.SQL("to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')").format(
                    source
                )
        elif column.contract.pg_type == "timestamp with time zone":
            expr = sql.SQL("({} AT TIME ZONE 'UTC')").format(source)
        elif column.contract.name in MONEY_COLUMNS:
            nan = sql.SQL("{} = 'NaN'::numeric").format(source)
            expr = sql.SQL("NULLIF({}, 'NaN'::numeric)").format(source)
            nan_tests.append(nan)
            nan_flags.append(
                sql.SQL("CASE WHEN {} THEN {} END").format(nan, sql.Literal(column.contract.name))
            )
        else:
            expr = source
        selects.append(sql.SQL("{} AS {}").format(expr, target))
    if plan.extra_columns:
        pairs = sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(name), sql.Identifier(name))
            for name in plan.extra_columns
        )
        selects.append(
            sql.SQL("jsonb_build_object({})::text AS {}").format(
                pairs, sql.Identifier(EXTRAS_COLUMN)
            )
        )
    else:
        selects.append(sql.SQL("NULL::text AS {}").format(sql.Identifier(EXTRAS_COLUMN)))
    nan_expr: sql.Composable = sql.SQL("NULL::text")
    if nan_flags:
        # ",discount,tax," (delimited on both sides, so a name never matches inside another)
        # The names are built only for a row that holds a NaN: the string work per row cost
        # PostgreSQL ~10 % of the COPY.
        nan_expr = sql.SQL("CASE WHEN {} THEN ',' || concat_ws(',', {}) || ',' END").format(
            sql.SQL(" OR ").join(nan_tests), sql.SQL(", ").join(nan_flags)
        )
    selects.append(sql.SQL("{} AS {}").format(nan_expr, sql.Identifier(NAN_COLUMN)))

    sale_date = sql.Identifier(plan.column("sale_date").source_name)
    return sql.SQL(
        "COPY (SELECT {columns} FROM {schema}.{table} "
        "WHERE {sale_date} = {business_date}"
        "{split}) TO STDOUT WITH (FORMAT csv, NULL {null})"
    ).format(
        split=sql.SQL("")
        if splits == 1
        else sql.SQL(" AND ") + split_predicate(plan, split, splits),
        columns=sql.SQL(", ").join(selects),
        schema=sql.Identifier(schema),
        table=sql.Identifier(plan.table),
        sale_date=sale_date,
        business_date=sql.Literal(business_date.isoformat()) + sql.SQL("::date"),
        null=sql.Literal(CSV_NULL),
    )


def csv_read_types(plan: ExtractionPlan) -> tuple[pa.Schema, pa.Schema]:
    """(types pyarrow parses the CSV with, types written to parquet)."""
    read_fields: list[pa.Field] = []
    out_fields: list[pa.Field] = []
    for column in plan.columns:
        arrow_type = column.contract.arrow_type
        if column.cast_in_transform:
            arrow_type = pa.string()
        out_fields.append(pa.field(column.contract.name, arrow_type))
        if pa.types.is_timestamp(arrow_type):
            arrow_type = pa.timestamp("us")  # naive UTC text; tz attached after parsing
        read_fields.append(pa.field(column.contract.name, arrow_type))
    for name in (EXTRAS_COLUMN, NAN_COLUMN):
        read_fields.append(pa.field(name, pa.string()))
        out_fields.append(pa.field(name, pa.string()))
    return pa.schema(read_fields), pa.schema(out_fields)


@dataclass(frozen=True)
class SnapshotQuery:
    """Reads run in the COPY's own snapshot, before it (their rows describe exactly the rows
    the COPY sends): the day's fingerprints. ``read(cursor)`` returns the rows."""

    read: Callable[[Any], list[tuple[object, ...]]]


class _CopyProducer(threading.Thread):
    """Runs ``COPY ... TO STDOUT`` into the write end of a pipe, in one read-only REPEATABLE
    READ transaction, after ``before`` (if any) in the same snapshot."""

    def __init__(
        self,
        source_url: str,
        query: sql.Composed,
        write_fd: int,
        before: SnapshotQuery | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self._source_url = source_url
        self._query = query
        self._write_fd = write_fd
        self._before = before
        self.before_rows: list[tuple[object, ...]] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with os.fdopen(self._write_fd, "wb", buffering=1 << 20) as sink:
                with pg.connect(self._source_url) as conn, conn.cursor() as cur:
                    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
                    if self._before is not None:
                        self.before_rows = self._before.read(cur)
                    cur.copy_expert(self._query, sink, size=1 << 20)
                    conn.rollback()  # read only: nothing to keep
        except BaseException as exc:  # surfaced by the consumer
            self.error = exc


def _open_pipe() -> tuple[int, int]:
    """An OS pipe, enlarged to :data:`PIPE_BYTES` where the platform allows it."""
    read_fd, write_fd = os.pipe()
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is not None:
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the default
            fcntl.fcntl(write_fd, set_size, PIPE_BYTES)
    return read_fd, write_fd


def _stream_batches(
    source_url: str,
    query: sql.Composed,
    read_schema: pa.Schema,
    before: SnapshotQuery | None = None,
) -> tuple[Iterable[pa.RecordBatch], _CopyProducer, object]:
    read_fd, write_fd = _open_pipe()
    producer = _CopyProducer(source_url, query, write_fd, before)
    producer.start()
    source = os.fdopen(read_fd, "rb", buffering=0)
    try:
        reader = _open_reader(source, read_schema)
    except (pa.ArrowInvalid, OSError) as exc:
        source.close()
        producer.join(timeout=30)
        if producer.error is not None:
            raise producer.error from exc
        if "Empty CSV" in str(exc):  # the day has no rows
            return iter(()), producer, source
        raise
    return reader, producer, source


def _open_reader(source: object, read_schema: pa.Schema) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=read_schema.names, block_size=CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=read_schema,
            null_values=[CSV_NULL],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )


def extract_region(
    source_url: str,
    region: str,
    business_date: date,
    out_dir: Path,
    *,
    chunk_rows: int = 250_000,
    aliases: Mapping[str, Sequence[str]] | None = None,
    table: str = SOURCE_TABLE,
    split: int = 0,
    splits: int = 1,
    on_rows: Callable[[int], None] | None = None,
    stats_window: tuple[date, date] | None = None,
    deadline_seconds: float | None = None,
) -> RegionExtract:
    """Stream every row of the region's ``business_date`` (any status) to parquet.

    Files go to ``out_dir/region=<region>/part-NNNNN.parquet`` (the folder is emptied
    first, so a retry never mixes attempts). With ``splits`` > 1 only the rows of split
    ``split`` are read (:func:`split_predicate`), into ``out_dir/region=<region>/split=<k>/``;
    :func:`combine_splits` makes the region's extract of all of them. ``on_rows(n)`` is
    called with the rows written so far after each block (live progress). With
    ``stats_window`` (start, end), the source's stats of those dates
    (:func:`retail_etl.fingerprint.fetch_stats`) are read first in the COPY's own snapshot
    and returned as ``day_stats``: the fingerprint describes exactly the rows extracted. An
    extraction still streaming after ``deadline_seconds`` fails (checked after each block; the
    source's own bounds, e.g. ``statement_timeout``, cover a stream that stops). Raises
    :class:`ExtractionError` naming the region, date and table, chained to the driver's error.
    """
    started = time.perf_counter()
    started_at = time.time()
    where = f"region {region}, {business_date.isoformat()}, table {table}"
    if splits > 1:
        where += f", split {split + 1}/{splits}"
    try:
        source_columns = inspect_source(source_url, table=table)
    except psycopg2.Error as exc:
        raise ExtractionError(
            f"{where}: cannot reach the source database: {pg_message(exc)}"
        ) from exc
    if not source_columns:
        raise ExtractionError(f"{where}: table {table} does not exist in the source database")
    plan = plan_extraction(region, source_columns, aliases=aliases, table=table)

    region_dir = out_dir / f"region={region}"
    if splits > 1:
        region_dir = region_dir / f"split={split}"
    if region_dir.exists():
        shutil.rmtree(region_dir)
    region_dir.mkdir(parents=True)

    read_schema, out_schema = csv_read_types(plan)
    query = build_copy_query(plan, business_date, split=split, splits=splits)
    before = None
    if stats_window is not None:
        if stats_window[1] < stats_window[0]:
            raise ValueError(f"{where}: stats window {stats_window} ends before it starts")
        start, end = stats_window
        before = SnapshotQuery(lambda cur: fetch_stats(cur, plan, start, end))
    files: list[Path] = []
    rows = 0
    writer: pq.ParquetWriter | None = None
    rows_in_file = 0
    try:
        reader, producer, source = _stream_batches(source_url, query, read_schema, before)
    except psycopg2.Error as exc:
        raise ExtractionError(f"{where}: COPY failed: {pg_message(exc)}") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise ExtractionError(f"{where}: could not start the COPY stream: {exc}") from exc
    try:
        for batch in _iter_reader(reader, producer, where):
            batch = _to_output(batch, out_schema)
            offset = 0
            while offset < batch.num_rows:
                if writer is None:
                    path = region_dir / f"part-{len(files):05d}.parquet"
                    # Run-local scratch, read once by the transform: uncompressed and without
                    # dictionaries costs ~30 % less CPU than snappy + dictionaries (460K rows:
                    # 0.36 s vs 0.49 s) for ~50 % more disk.
                    writer = pq.ParquetWriter(
                        path, out_schema, compression="none", use_dictionary=False
                    )
                    files.append(path)
                    rows_in_file = 0
                take = min(chunk_rows - rows_in_file, batch.num_rows - offset)
                writer.write_batch(batch.slice(offset, take), row_group_size=chunk_rows)
                rows_in_file += take
                rows += take
                offset += take
                if rows_in_file >= chunk_rows:
                    writer.close()
                    writer = None
            if on_rows is not None:
                on_rows(rows)
            if deadline_seconds is not None and time.perf_counter() - started > deadline_seconds:
                raise ExtractionError(
                    f"{where}: extraction exceeded its {deadline_seconds:g} s limit after "
                    f"{rows} rows (RETAIL_ETL_EXTRACT_TIMEOUT_SECONDS)"
                )
    finally:
        if writer is not None:
            writer.close()
        source.close()  # type: ignore[attr-defined]
        producer.join(timeout=30)
    if producer.error is not None:
        raise ExtractionError(
            f"{where}: COPY failed: {pg_message(producer.error)}"
        ) from producer.error
    if not files:  # an empty day still yields one (empty) file with the schema
        path = region_dir / "part-00000.parquet"
        pq.write_table(out_schema.empty_table(), path)
        files.append(path)
    return RegionExtract(
        region=region,
        business_date=business_date,
        files=files,
        rows=rows,
        bytes=sum(f.stat().st_size for f in files),
        seconds=time.perf_counter() - started,
        source_columns=plan.source_columns,
        schema_fingerprint=plan.fingerprint,
        schema_changes=plan.diff.describe(),
        cast_columns=[c.contract.name for c in plan.columns if c.cast_in_transform],
        extra_columns=list(plan.extra_columns),
        started_at=started_at,
        finished_at=time.time(),
        day_stats=None
        if stats_window is None or producer.before_rows is None
        else day_stats(producer.before_rows, *stats_window),
    )


def combine_splits(parts: Sequence[RegionExtract]) -> RegionExtract:
    """One region's extract from the extracts of its splits (given in split order).

    Files keep the split order, so the transform sees the rows of split 0 first; rows, bytes
    add up; ``seconds`` is the wall time from the first split's start to the last one's end.
    Raises :class:`ExtractionError` if the splits saw different source schemas.
    """
    if not parts:
        raise ValueError("combine_splits needs at least one split")
    first = parts[0]
    if len(parts) == 1:
        return first
    fingerprints = {p.schema_fingerprint for p in parts}
    if len(fingerprints) > 1 or any(p.region != first.region for p in parts):
        raise ExtractionError(
            f"region {first.region}, {first.business_date.isoformat()}: the source table "
            f"changed while its {len(parts)} splits were extracted (schema fingerprints "
            f"{', '.join(sorted(fingerprints))}); extract the region again"
        )
    started = min(p.started_at for p in parts)
    finished = max(p.finished_at for p in parts)
    return RegionExtract(
        region=first.region,
        business_date=first.business_date,
        files=[f for p in parts for f in p.files],
        rows=sum(p.rows for p in parts),
        bytes=sum(p.bytes for p in parts),
        seconds=max(finished - started, max(p.seconds for p in parts)),
        source_columns=first.source_columns,
        schema_fingerprint=first.schema_fingerprint,
        schema_changes=first.schema_changes,
        cast_columns=first.cast_columns,
        extra_columns=first.extra_columns,
        started_at=started,
        finished_at=finished,
        day_stats=None,  # splits are separate snapshots: their fingerprints are read ahead
    )


def _iter_reader(
    reader: Iterable[pa.RecordBatch], producer: _CopyProducer, where: str
) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (pa.ArrowInvalid, OSError) as exc:
        producer.join(timeout=30)
        if producer.error is not None:
            raise ExtractionError(
                f"{where}: COPY failed: {pg_message(producer.error)}"
            ) from producer.error
        raise ExtractionError(f"{where}: could not parse the COPY stream: {exc}") from exc


def _to_output(batch: pa.RecordBatch, out_schema: pa.Schema) -> pa.RecordBatch:
    arrays = [
        column.cast(field.type) if column.type != field.type else column
        for column, field in zip(batch.columns, out_schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=out_schema)
