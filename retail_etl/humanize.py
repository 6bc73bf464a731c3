"""Numbers as people read them, in one place: artifacts, alerts, the CLI and state messages.

``count(1234567)`` -> ``1,234,567``; ``seconds(2.345)`` -> ``2.35 s``; ``size(72_000_000)`` ->
``68.7 MiB``; ``share(0.0512)`` -> ``5.12%``. Check values and thresholds go through
:func:`retail_etl.quality.format_measure`, which uses these.
"""

from __future__ import annotations

__all__ = ["count", "seconds", "share", "size"]


def count(value: float | None) -> str:
    """A row count with thousands separators (``-`` for unknown)."""
    if value is None:
        return "-"
    return f"{int(value):,}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f} s"


def share(value: float | None) -> str:
    """A ratio (0.05) as a percentage (5.00%)."""
    if value is None:
        return "-"
    return f"{value:.2%}"


def size(value: float | None) -> str:
    """Bytes in binary units (``68.7 MiB``)."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(amount) < 1024 or unit == "GiB":
            return f"{int(amount):,} B" if unit == "B" else f"{amount:,.1f} {unit}"
        amount /= 1024
    return f"{amount:,.1f} GiB"  # pragma: no cover - the loop returns
