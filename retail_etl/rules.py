"""The business rules of a sale and the invariants of accepted rows, defined once.

The transform rejects the rows that break a rule (:data:`REJECT_RULES`) and, reading its
accepted output back, measures the invariants (:func:`measure_accepted`); the quality gate
judges those measures without reading the files again. Both import this module (the gate
imports the transform, so the definitions cannot live in either).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb

from retail_etl import contract

__all__ = [
    "REJECT_RULES",
    "AcceptedMeasures",
    "invalid_reason",
    "measure_accepted",
    "null_reason",
    "violation_terms",
]

# Business rules: reject reason -> SQL predicate that is TRUE for a violating row.
# Predicates read the typed contract columns plus ``gross_amount`` (quantity x unit_price) and
# the bound parameter ``$business_date``. A predicate that is NULL (an operand is NULL or
# invalid; those rows carry null_/invalid_ reasons) does not fire. The same predicates are
# measured on the accepted parquet for the quality gate, so they must hold on accepted rows.
REJECT_RULES: dict[str, str] = {
    "quantity_not_positive": "quantity <= 0",
    "unit_price_not_positive": "unit_price <= 0",
    # 0.5 x gross <= total <= 2 x gross, inclusive, in exact decimals (no 0.5 factor).
    "total_amount_out_of_range": (
        "quantity > 0 AND unit_price > 0 "
        "AND (total_amount * 2 < gross_amount OR total_amount > gross_amount * 2)"
    ),
    "sale_date_mismatch": "sale_date <> $business_date",
    # effective_discount_rate is DECIMAL(9,6): |rate| must round below 1000. Not in the issue's
    # vocabulary; without it one absurd discount would abort the region with an overflow.
    "effective_discount_rate_out_of_range": (
        "quantity > 0 AND unit_price > 0 "
        "AND abs(coalesce(discount, 0)) >= gross_amount * 999.9999995"
    ),
}


def null_reason(column: str) -> str:
    return f"null_{column}"


def invalid_reason(column: str) -> str:
    return f"invalid_{column}"


def violation_terms(owner: str) -> dict[str, str]:
    """Name -> SQL predicate of an accepted row that should not exist (sale_date is measured
    apart). ``owner`` is the SQL expression of the region whose output the row is in."""
    terms = {null_reason(c): f"{c} IS NULL" for c in contract.CRITICAL_COLUMNS}
    terms.update(
        {
            name: f"coalesce(({pred}), false)"
            for name, pred in REJECT_RULES.items()
            if name != "sale_date_mismatch"
        }
    )
    terms["derived_metrics_mismatch"] = (
        "gross_amount IS DISTINCT FROM CAST(quantity AS DECIMAL(38,0)) * unit_price "
        "OR net_amount IS DISTINCT FROM gross_amount - discount "
        "OR discount IS NULL OR tax IS NULL OR effective_discount_rate IS NULL"
    )
    terms["region_mismatch"] = f"region IS DISTINCT FROM {owner}"
    return terms


@dataclass(frozen=True)
class AcceptedMeasures:
    """What one scan of a region's accepted files measured (the gate's invariants: each count
    but ``rows`` must be 0). A region that wrote nothing measures all zeros."""

    rows: int = 0
    total_amount: Decimal = Decimal(0)
    #: rows that repeat a sale_id (``count(sale_id) - count(DISTINCT sale_id)``)
    duplicate_keys: int = 0
    #: rows whose sale_date is not the business date (or is NULL)
    foreign_sale_dates: int = 0
    #: rows that break at least one :func:`violation_terms` term
    violating_rows: int = 0
    #: rows per term, only the terms that fired
    violations: dict[str, int] = field(default_factory=dict)


def measure_accepted(
    con: duckdb.DuckDBPyConnection,
    files_by_region: Mapping[str, Sequence[Path]],
    *,
    business_date: date,
) -> dict[str, AcceptedMeasures]:
    """Count and sum the accepted files of each region and measure the invariants, in one
    scan of all the files; a region without files measures all zeros. Raises
    ``duckdb.Error`` when the files cannot be read."""
    measures = dict.fromkeys(files_by_region, AcceptedMeasures())
    regions = [r for r, files in files_by_region.items() if files]
    if not regions:
        return measures
    files = [str(f) for r in regions for f in files_by_region[r]]
    params: dict[str, object] = {"files": files, "business_date": business_date}
    if len(regions) == 1:
        params["owner"] = regions[0]
        source = (
            "SELECT *, CAST($owner AS VARCHAR) AS __owner "
            "FROM read_parquet($files, hive_partitioning = false)"
        )
    else:  # each file's rows belong to the region whose output the file is
        params["owners"] = [r for r in regions for _ in files_by_region[r]]
        source = (
            "SELECT p.*, m.__owner FROM read_parquet($files, filename = true, "
            "hive_partitioning = false) p JOIN (SELECT unnest($files) AS __file, "
            "unnest($owners) AS __owner) m ON p.filename = m.__file"
        )
    terms = violation_terms("__owner")
    # Each term is evaluated once per row, into a column the counts then read (counting the
    # "any term" rows over the predicates again cost twice the CPU).
    flags = [f"__term_{i}" for i in range(len(terms))]
    flagged = ", ".join(
        f"({pred}) AS {flag}" for flag, pred in zip(flags, terms.values(), strict=True)
    )
    per_term = ", ".join(f"count(*) FILTER (WHERE {flag})" for flag in flags)
    # Predicates are package constants; values are bound parameters.
    sql = (
        "SELECT __owner, count(*), coalesce(sum(total_amount), 0), "  # noqa: S608
        "count(sale_id) - count(DISTINCT sale_id), "
        "count(*) FILTER (WHERE sale_date IS DISTINCT FROM $business_date), "
        f"count(*) FILTER (WHERE {' OR '.join(flags)}), {per_term} "
        f"FROM (SELECT __owner, sale_id, sale_date, total_amount, {flagged} FROM ({source})) "
        "GROUP BY 1"
    )
    for owner, rows, total, dupes, foreign, violating, *counts in con.execute(
        sql, params
    ).fetchall():
        measures[str(owner)] = AcceptedMeasures(
            rows=int(rows),
            total_amount=Decimal(total),
            duplicate_keys=int(dupes),
            foreign_sale_dates=int(foreign),
            violating_rows=int(violating),
            violations={n: int(c) for n, c in zip(terms, counts, strict=True) if c},
        )
    return measures
