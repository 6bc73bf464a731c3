"""Source schema inspection and comparison with the data contract.

Every run compares each region's ``sales`` table with the contract before extracting
(see README, "Schema changes"). The outcome is an :class:`ExtractionPlan`: which source
column feeds each contract column, which need a cast, and which source columns are
outside the contract and travel in the ``extras`` JSON envelope.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from retail_etl.contract import SALES_COLUMNS, SOURCE_TABLE, ContractColumn

if TYPE_CHECKING:
    from retail_etl.warehouse import Warehouse


class SchemaContractError(RuntimeError):
    """A region's source table cannot honour the contract (missing column, lossy type)."""

    def __init__(self, region: str, message: str) -> None:
        super().__init__(f"region {region}: {message}")
        self.region = region


#: :meth:`SchemaDiff.describe` of a source that matches the contract.
MATCHES_CONTRACT = "matches the contract"

_NUMERIC = re.compile(r"^numeric\((\d+),(\d+)\)$")
_INTEGER_TYPES = {"smallint": 16, "integer": 32, "bigint": 64}
_FLOAT_TYPES = {"real", "double precision"}
_TEXT_TYPES = {"text"}


def _is_text(pg_type: str) -> bool:
    return pg_type in _TEXT_TYPES or pg_type.startswith("character")


@dataclass(frozen=True)
class ColumnPlan:
    """How one contract column is read from a region's source."""

    contract: ContractColumn
    source_name: str
    source_type: str
    cast_in_transform: bool  # extracted as text; the transform casts and rejects failures


@dataclass(frozen=True)
class SchemaDiff:
    """What differs between a source table and the contract (empty when it matches)."""

    new_columns: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # contract name -> source name
    retyped: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (contract, source)

    @property
    def is_empty(self) -> bool:
        return not (self.new_columns or self.renamed or self.retyped)

    def describe(self) -> str:
        parts = [f"new column {n} ({t})" for n, t in self.new_columns.items()]
        parts += [f"{c} read from {s}" for c, s in self.renamed.items()]
        parts += [f"{n} is {s} (contract {c})" for n, (c, s) in self.retyped.items()]
        return "; ".join(parts) if parts else MATCHES_CONTRACT


@dataclass(frozen=True)
class ExtractionPlan:
    region: str
    table: str
    columns: tuple[ColumnPlan, ...]
    extra_columns: tuple[str, ...]
    source_columns: dict[str, str]  # every source column -> type, as inspected
    diff: SchemaDiff

    @property
    def fingerprint(self) -> str:
        """Stable hash of the source column set and types (order-independent)."""
        canonical = json.dumps(sorted(self.source_columns.items()))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def column(self, name: str) -> ColumnPlan:
        return next(c for c in self.columns if c.contract.name == name)


def inspect_columns_sql() -> str:
    """Column names and exact types (``numeric(10,2)``) of a table, in column order."""
    return (
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum"
    )


def _type_change(column: ContractColumn, source_type: str) -> str:
    """Classify a source type against the contract: 'same', 'cast' or 'lossy'."""
    contract_type = column.pg_type
    if source_type == contract_type:
        return "same"
    if _is_text(source_type):
        return "cast"  # value by value; bad values reject their rows
    contract_numeric = _NUMERIC.match(contract_type)
    if contract_numeric:
        scale = int(contract_numeric.group(2))
        source_numeric = _NUMERIC.match(source_type)
        if source_numeric:
            # More fractional digits than the contract would be rounded away: refuse.
            return "lossy" if int(source_numeric.group(2)) > scale else "cast"
        if source_type == "numeric":  # unconstrained scale
            return "lossy"
        if source_type in _INTEGER_TYPES:
            return "cast"
        if source_type in _FLOAT_TYPES:
            return "lossy"  # binary floats cannot hold cents exactly
        return "cast"
    if contract_type in _INTEGER_TYPES:
        if source_type in _INTEGER_TYPES:
            return "cast"  # out-of-range values reject their rows
        source_numeric = _NUMERIC.match(source_type)
        if source_numeric and int(source_numeric.group(2)) > 0:
            return "lossy"
        if source_type in _FLOAT_TYPES or source_type == "numeric":
            return "lossy"
        return "cast"
    if contract_type == "timestamp with time zone" and source_type.startswith("timestamp"):
        return "cast"  # naive timestamps are read as UTC (README, "Schema changes")
    return "cast"


def plan_extraction(
    region: str,
    source_columns: Mapping[str, str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    table: str = SOURCE_TABLE,
) -> ExtractionPlan:
    """Match a source table's columns to the contract.

    Raises :class:`SchemaContractError` naming the column when a contract column is
    missing (and no configured alias is present) or its type change would lose precision.
    """
    aliases = aliases or {}
    columns: list[ColumnPlan] = []
    renamed: dict[str, str] = {}
    retyped: dict[str, tuple[str, str]] = {}
    used: set[str] = set()
    for contract_column in SALES_COLUMNS:
        candidates = [contract_column.name, *aliases.get(contract_column.name, ())]
        source_name = next((name for name in candidates if name in source_columns), None)
        if source_name is None:
            alias_note = (
                f" (nor its aliases {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
            )
            raise SchemaContractError(
                region,
                f"required column {contract_column.name}{alias_note} is missing from table {table}",
            )
        source_type = source_columns[source_name]
        change = _type_change(contract_column, source_type)
        if change == "lossy":
            raise SchemaContractError(
                region,
                f"column {source_name} of table {table} changed type to {source_type}; casting it to "
                f"the contract's {contract_column.pg_type} could lose precision, so the region is "
                "stopped. Update the contract (a pipeline release) or revert the source column.",
            )
        if source_name != contract_column.name:
            renamed[contract_column.name] = source_name
        if change != "same":
            retyped[contract_column.name] = (contract_column.pg_type, source_type)
        used.add(source_name)
        columns.append(ColumnPlan(contract_column, source_name, source_type, change == "cast"))
    # Alias names of contract columns that were not chosen are not "new" columns either.
    alias_names = {alias for names in aliases.values() for alias in names}
    extra = tuple(name for name in source_columns if name not in used and name not in alias_names)
    diff = SchemaDiff(
        new_columns={name: source_columns[name] for name in extra},
        renamed=renamed,
        retyped=retyped,
    )
    return ExtractionPlan(
        region=region,
        table=table,
        columns=tuple(columns),
        extra_columns=extra,
        source_columns=dict(source_columns),
        diff=diff,
    )


class ObservedSchema(Protocol):
    """What a run saw of one region's source (``retail_etl.extract.RegionExtract``)."""

    @property
    def source_columns(self) -> dict[str, str]: ...
    @property
    def schema_fingerprint(self) -> str: ...
    @property
    def schema_changes(self) -> str: ...


def record_schema_changes(
    history: Warehouse,
    observed: Mapping[str, ObservedSchema],
    *,
    batch_id: str,
    flow_run_id: str | None,
) -> list[str]:
    """Record each region's source schema fingerprint; return the warnings to send.

    A warning is due once per change: when a region's fingerprint is new (differs from the
    latest one recorded for the region) and the source differs from the contract. The next
    run with the same fingerprint records nothing and warns about nothing; a source that
    changes back to the contract is recorded without a warning.
    """
    warnings: list[str] = []
    for region in sorted(observed):
        seen = observed[region]
        new = history.record_schema(
            region,
            seen.schema_fingerprint,
            seen.source_columns,
            seen.schema_changes,
            batch_id,
            flow_run_id,
        )
        if new and seen.schema_changes != MATCHES_CONTRACT:
            warnings.append(
                f"{region}: source schema changed (fingerprint {seen.schema_fingerprint}): "
                f"{seen.schema_changes}"
            )
    return warnings


__all__ = [
    "MATCHES_CONTRACT",
    "ColumnPlan",
    "ExtractionPlan",
    "ObservedSchema",
    "SchemaContractError",
    "SchemaDiff",
    "inspect_columns_sql",
    "plan_extraction",
    "record_schema_changes",
]
