"""What differs between warehouses: the :class:`Dialect` protocol, and :class:`SqlDialect`,
the rendering every dialect shares (placeholders, quoting, qualified names).

The load algorithms live once in :mod:`retail_etl.warehouse.engine`; the SQL text once in
:mod:`retail_etl.warehouse.sql`. A dialect supplies only what an engine does its own way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pyarrow as pa

from retail_etl.settings import validate_identifier
from retail_etl.warehouse.base import RegionLoad, WarehouseColumn

if TYPE_CHECKING:
    from retail_etl.staging import StagedFile

#: What a statement does; :meth:`Dialect.execute` gets it with every statement, so a test can
#: fail "the Nth statement of kind merge" without touching SQL text.
StatementKind = Literal[
    "ddl",  # schema objects and permanent tables
    "read",  # queries of the read API (ledger, history, verify)
    "create_stage",
    "fill_stage",
    "check_stage",
    "dedup",
    "classify",
    "merge",  # the write of the source into sales_fact: MERGE, or INSERT on the insert path
    "retract",
    "replace_rejects",
    "ledger",
    "dq_results",
    "schema_history",
    "drop_stage",
    "session",  # session settings of a load: timeouts, query tag, its warehouse and size
]


@dataclass(frozen=True)
class Result:
    """A statement's result: lower-cased column names and the rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def one(self) -> tuple[Any, ...]:
        if not self.rows:
            raise RuntimeError("the statement returned no row")
        return self.rows[0]


class Dialect(Protocol):
    """One warehouse engine. Adding a warehouse is one module implementing exactly this
    (subclass :class:`SqlDialect` for the rendering defaults):

    Rendering (read by the builders of :mod:`retail_etl.warehouse.sql`):

    - ``name``; ``param``: the placeholder of a bound value (``?``, ``%s``);
    - ``ident(name)``: a validated, quoted identifier; ``table(name)``: qualified by the
      dialect's database / schema; ``params(n)``, ``cols(names)`` (:class:`SqlDialect` gives
      these four);
    - ``now``: the current timestamp; ``type_name(column)``: the engine type of a neutral
      (Arrow) column; ``json_object(pairs)``: a row as JSON text; ``from_json_text(column)``:
      staged JSON text as the type ``type_name`` gives a ``json`` column;
    - ``table_options(table)``: DDL after the column list (e.g. ``CLUSTER BY``).

    Connections and transactions:

    - ``connect(read_only=False)``: a context yielding a connection for one operation (the
      session's connection inside :meth:`session`);
    - ``session()``: a context in which operations share one connection;
    - ``execute(con, kind, sql, params)`` -> :class:`Result`;
    - ``begin(con)`` (a fresh transaction: what ran before it is committed or was
      autocommitted), ``commit(con)``, ``rollback(con)`` (never raises), ``end_read(con)``
      (ends what reads and DDL left open).

    Schema:

    - ``prepare_schema(con)``: what must exist besides the tables (schema, file format, stage);
    - ``existing_columns(con, table)``: lower-cased column names of a permanent table;
    - ``stale_stage_tables(con, created_before)``: stage tables a killed load left behind.

    Staging a load's batch (one region, or several of one batch in one transaction):

    - ``fill_steps``: the step names of filling the sales stage and the side stages (they name
      the step in :class:`~retail_etl.warehouse.base.WarehouseLoadError` messages);
    - ``create_stage_table(con, name, columns)``, ``fill_stage(con, name, columns, files,
      load_region=None)`` -> rows loaded (``load_region``: also set the stage's ``load_region``
      column of these rows to it), ``fill_load_stage(con, name, columns, files_by_region)`` ->
      rows loaded: a load's stage with every region's files, each row tagged with its region
      (as few statements as the engine allows), ``drop_stage_table(con, name)``;
    - ``merge_source(con, stage, duplicates)`` -> (MERGE source SQL, tables it created);
    - ``merge_counts(result)`` -> (inserted, updated), ``None`` for one the engine does not
      report, and the total of rows the MERGE (or the insert path's INSERT) changed.

    Loads under contention:

    - ``load_scope(con)``: a context around a batch's region loads (Snowflake: the load's
      timeouts, its warehouse and size, restored after);
    - ``region_scope(con, loads)``: a context around one attempt of a load of one or more
      regions of a batch (Snowflake: the query tag naming batch and regions);
    - ``retryable(error)``: whether a failed load attempt may simply be run again (a lock
      timeout, a busy file, a transient error; the load is one transaction, so this is safe).
    """

    name: str
    param: str
    now: str
    fill_steps: tuple[str, str]

    def ident(self, name: str) -> str: ...
    def table(self, name: str) -> str: ...
    def params(self, n: int) -> str: ...
    def cols(self, names: Sequence[str], prefix: str = "") -> str: ...
    def type_name(self, column: WarehouseColumn) -> str: ...
    def json_object(self, pairs: str) -> str: ...
    def from_json_text(self, column: str) -> str: ...
    def table_options(self, table: str) -> str: ...

    def connect(self, *, read_only: bool = False) -> AbstractContextManager[Any]: ...
    def session(self) -> AbstractContextManager[Any]: ...
    def execute(
        self, con: Any, kind: StatementKind, sql_text: str, params: Sequence[Any] = ()
    ) -> Result: ...
    def begin(self, con: Any) -> None: ...
    def commit(self, con: Any) -> None: ...
    def rollback(self, con: Any) -> None: ...
    def end_read(self, con: Any) -> None: ...

    def prepare_schema(self, con: Any) -> None: ...
    def existing_columns(self, con: Any, table: str) -> set[str]: ...
    def stale_stage_tables(self, con: Any, created_before: datetime) -> list[str]: ...

    def create_stage_table(
        self, con: Any, name: str, columns: Sequence[WarehouseColumn]
    ) -> None: ...
    def fill_stage(
        self,
        con: Any,
        name: str,
        columns: Sequence[str],
        files: Sequence[StagedFile],
        load_region: str | None = None,
    ) -> int: ...
    def fill_load_stage(
        self,
        con: Any,
        name: str,
        columns: Sequence[str],
        files_by_region: Mapping[str, Sequence[StagedFile]],
    ) -> int: ...
    def drop_stage_table(self, con: Any, name: str) -> None: ...
    def merge_source(self, con: Any, stage: str, duplicates: int) -> tuple[str, list[str]]: ...
    def merge_counts(self, result: Result) -> tuple[int | None, int | None, int]: ...

    def load_scope(self, con: Any) -> AbstractContextManager[None]: ...
    def region_scope(
        self, con: Any, loads: Sequence[RegionLoad]
    ) -> AbstractContextManager[None]: ...
    def retryable(self, error: BaseException) -> bool: ...


class SqlDialect:
    """Rendering shared by the dialects: validated identifiers quoted in the engine's case,
    names qualified by an optional database and schema, ``param`` placeholders."""

    name = "sql"
    param = "?"
    now = "current_timestamp"
    #: identifiers are stored (and quoted) lower case, or upper case (Snowflake)
    upper_case = False

    def __init__(self, *, database: str | None = None, schema: str | None = None) -> None:
        self.database = (
            None if database is None else validate_identifier(database.lower(), "database")
        )
        self.schema = None if schema is None else validate_identifier(schema.lower(), "schema")

    def ident(self, name: str) -> str:
        """Validated, quoted identifier."""
        validate_identifier(name.lower(), "identifier")
        return f'"{name.upper()}"' if self.upper_case else f'"{name.lower()}"'

    def catalog_name(self, name: str) -> str:
        """An identifier as the catalog (information_schema) stores it."""
        return name.upper() if self.upper_case else name.lower()

    def table(self, name: str) -> str:
        """Qualified table (or stage / file format) name."""
        parts = [p for p in (self.database, self.schema) if p is not None]
        return ".".join([*(self.ident(p) for p in parts), self.ident(name)])

    def params(self, n: int) -> str:
        return ", ".join([self.param] * n)

    def cols(self, names: Sequence[str], prefix: str = "") -> str:
        return ", ".join(f"{prefix}{self.ident(n)}" for n in names)

    def table_options(self, table: str) -> str:
        return ""

    def load_scope(self, con: Any) -> AbstractContextManager[None]:
        return nullcontext()

    def region_scope(self, con: Any, loads: Sequence[RegionLoad]) -> AbstractContextManager[None]:
        return nullcontext()


def arrow_type_name(
    arrow_type: pa.DataType, names: dict[str, str], decimal: str = "DECIMAL({p},{s})"
) -> str:
    """The engine name of an Arrow type: ``names`` maps string, int64, int32, date, bool,
    float64 and timestamp; ``decimal`` is a template of precision and scale."""
    checks = (
        ("string", pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)),
        ("int64", pa.types.is_int64(arrow_type)),
        ("int32", pa.types.is_int32(arrow_type)),
        ("date", pa.types.is_date32(arrow_type)),
        ("bool", pa.types.is_boolean(arrow_type)),
        ("float64", pa.types.is_float64(arrow_type)),
        ("timestamp", pa.types.is_timestamp(arrow_type)),
    )
    for key, matches in checks:
        if matches:
            return names[key]
    if pa.types.is_decimal(arrow_type):
        return decimal.format(p=arrow_type.precision, s=arrow_type.scale)
    raise TypeError(f"no warehouse type for arrow type {arrow_type}")
