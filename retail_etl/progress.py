"""Live progress of a run in this process: per region, its stage and the rows so far.

Tasks and flows call :func:`report` (cheap, never raises); nothing happens unless someone
listens in the same process: ``retail-etl run`` / ``demo`` / ``backfill`` do, through
:class:`ProgressDisplay` (a live ``rich`` table on a terminal, plain lines otherwise). In a
deployment (a worker process) nobody listens; the run's logs say the same things. Tasks that
run in other processes (``RETAIL_ETL_TASK_RUNNER=dask``) report nothing here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from retail_etl import humanize

__all__ = [
    "Event",
    "ProgressDisplay",
    "RegionProgress",
    "finished",
    "listening",
    "report",
]


@dataclass(frozen=True)
class Event:
    """``stage``: source, extracting, extracted, transforming, transformed, validating,
    loading, or the region's final status (loaded, extract_failed, ...)."""

    region: str
    stage: str
    rows: int | None = None  # rows extracted so far (of this split)
    split: int = 0
    detail: str = ""


_listeners: list[Callable[[Event], None]] = []
_lock = threading.Lock()


def report(
    region: str, stage: str, *, rows: int | None = None, split: int = 0, detail: str = ""
) -> None:
    """Tell whoever listens in this process; a failing listener never disturbs the run."""
    if not _listeners:
        return
    event = Event(region, stage, rows, split, detail)
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            pass


def finished(summary: Any) -> None:
    """Every region's final status, from a :class:`~retail_etl.run.RunSummary`."""
    for outcome in summary.regions.values():
        detail = (
            f"{humanize.count(outcome.rows_inserted)} inserted, "
            f"{humanize.count(outcome.rows_updated)} updated"
            if outcome.status == "loaded"
            else (outcome.error or "")[:120]
        )
        report(outcome.region, outcome.status, detail=detail)


@contextmanager
def listening(listener: Callable[[Event], None]) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


@dataclass
class _Region:
    stage: str = "waiting"
    rows_by_split: dict[int, int] = field(default_factory=dict)
    source: str = ""
    detail: str = ""

    @property
    def rows(self) -> int:
        return sum(self.rows_by_split.values())


class RegionProgress:
    """What the display shows, per region (plain state, fed with events)."""

    def __init__(self) -> None:
        self.regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def apply(self, event: Event) -> bool:
        """Take an event; True if the region's stage changed (worth a plain line)."""
        with self._lock:
            region = self.regions.setdefault(event.region, _Region())
            if event.rows is not None:
                region.rows_by_split[event.split] = event.rows
            if event.stage == "source":
                region.source = event.detail
                return True
            changed = event.stage != region.stage
            region.stage = event.stage
            if event.detail or changed:
                region.detail = event.detail
            return changed

    def line(self, name: str) -> str:
        region = self.regions[name]
        if region.stage == "source" or (region.source and region.stage == "waiting"):
            return f"{name:<10} source: {region.source}"
        rows = f"{humanize.count(region.rows)} rows extracted" if region.rows_by_split else ""
        parts = [p for p in (rows, region.detail) if p]
        return f"{name:<10} {region.stage:<14} " + ", ".join(parts)

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="retail-sales-etl", title_justify="left", expand=False)
        table.add_column("region")
        table.add_column("stage")
        table.add_column("rows extracted", justify="right")
        table.add_column("source")
        table.add_column("detail", overflow="fold", max_width=60)
        with self._lock:
            for name, region in self.regions.items():
                table.add_row(
                    name,
                    region.stage,
                    humanize.count(region.rows) if region.rows_by_split else "",
                    region.source,
                    region.detail,
                )
        return table


class ProgressDisplay:
    """Listens while a run goes on: a live table on a terminal, else one line per change."""

    def __init__(self, stream: IO[str], *, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.state = RegionProgress()
        self._live: Any = None

    def __call__(self, event: Event) -> None:
        changed = self.state.apply(event)
        if self._live is None and changed:
            if event.stage == "source":
                print(f"{event.region:<10} source: {event.detail}", file=self.stream, flush=True)
            else:
                print(self.state.line(event.region), file=self.stream, flush=True)

    @contextmanager
    def running(self) -> Iterator[None]:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            with Live(
                get_renderable=self.state.table, console=console, refresh_per_second=4
            ) as live:
                self._live = live
                try:
                    with listening(self):
                        yield
                finally:
                    self._live = None
        else:
            with listening(self):
                yield
