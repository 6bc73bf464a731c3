"""Thin tasks over the regions' sources outside extraction: per-day fingerprints."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from prefect import task

from blocks.sources import load_source_url
from retail_etl import pg
from retail_etl.fingerprint import SourceDayStats, read_source_stats
from retail_etl.settings import Settings
from tasks.results import collect


@task(name="source-fingerprints", task_run_name="fingerprint-{region}-{start}-{end}")
def source_stats_task(
    region: str, start: date, end: date, settings: Settings, live: bool = False
) -> dict[date, SourceDayStats]:
    """One query over the region's [start, end]: every date's counts, sums and fingerprint
    (``live``: also the completed, not deleted rows, for the audit)."""
    source_url, _origin = load_source_url(region, settings)
    bounded_url = pg.with_session_bounds(  # a hung source fails this region in bounded time
        source_url.get_secret_value(),
        connect_timeout_s=settings.source_connect_timeout_seconds,
        statement_timeout_s=settings.source_statement_timeout_seconds,
        keepalive_idle_s=settings.source_keepalive_idle_seconds,
    )
    return read_source_stats(
        bounded_url,
        region,
        start,
        end,
        aliases=settings.column_aliases_for(region),
        live=live,
    )


def read_fingerprints(
    regions: Sequence[str], start: date, end: date, settings: Settings, *, live: bool = False
) -> tuple[dict[str, dict[date, SourceDayStats]], dict[str, str]]:
    """Every region at once (I/O: one quick retry); (stats by region, errors by region).

    A region whose source cannot be read is reported, not raised: its extraction (with its own
    retries) says what is wrong, and the lookback judges that region on the ledger alone.
    """
    configured = source_stats_task.with_options(
        retries=1, retry_delay_seconds=min(settings.retry_base_seconds, 10.0)
    )
    futures = [configured.submit(region, start, end, settings, live) for region in regions]
    stats, failures = collect(list(regions), futures)
    return stats, {region: failure.error for region, failure in failures.items()}
