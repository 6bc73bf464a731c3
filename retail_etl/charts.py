"""The volume chart of the quality report: accepted rows per region over the history window
against the band the ``history_volume`` check accepts. Plain code: an SVG string, embedded in
the report's markdown as a ``data:`` image (the Prefect UI renders it; no file to host). Also the
weekly quality report's daily volume per region (:func:`daily_volume_svg`).

It draws what the quality gate computed (each region's baseline, the thresholds) and never
computes it again, so the quality module can call it without an import cycle.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from html import escape
from typing import Protocol

from retail_etl import humanize

__all__ = ["daily_volume_svg", "svg_data_url", "volume_chart_markdown", "volume_chart_svg"]

_WIDTH, _PANEL, _LEFT, _RIGHT, _TOP = 720, 96, 92, 16, 22
_WARN_FILL, _FAIL_FILL, _LINE, _TODAY = "#facc1540", "#ef444426", "#60a5fa", "#f472b6"


class BandLimits(Protocol):
    """The thresholds the chart draws (``retail_etl.quality.QualityThresholds`` has them)."""

    @property
    def history_days(self) -> int: ...
    @property
    def history_warn_deviation(self) -> float: ...
    @property
    def history_fail_deviation(self) -> float: ...


def volume_chart_svg(
    history: Mapping[str, Sequence[tuple[date, int]]],
    today: Mapping[str, int],
    business_date: date,
    thresholds: BandLimits,
    baselines: Mapping[str, float],
) -> str:
    """One panel per region of ``today``: the accepted rows of each loaded day in the last
    ``history_days`` (line), the business date's (pink dot), the baseline's warn band (yellow)
    and fail band (red), when the region has a baseline in ``baselines``."""
    start = business_date - timedelta(days=thresholds.history_days)
    span = max(1, (business_date - start).days)
    plot_w = _WIDTH - _LEFT - _RIGHT
    parts = _svg_start(
        len(today),
        f"accepted rows per day, {start.isoformat()} to {business_date.isoformat()}; band: "
        f"warn &#177;{thresholds.history_warn_deviation:.0%}, "
        f"fail &#177;{thresholds.history_fail_deviation:.0%} around the baseline",
    )
    for index, (region, rows_today) in enumerate(today.items()):
        top = _TOP + index * _PANEL
        points = sorted((d, n) for d, n in history.get(region, ()) if start <= d < business_date)
        baseline = baselines.get(region)
        values = [n for _, n in points] + [rows_today]
        if baseline is not None:
            values += [int(baseline * (1 + thresholds.history_fail_deviation))]
        top_value = max(max(values), 1) * 1.1
        inner = _PANEL - 22

        def y(
            value: float, top: int = top, inner: int = inner, top_value: float = top_value
        ) -> float:
            return top + 4 + inner * (1 - value / top_value)

        def x(day: date) -> float:
            return _x(day, start, span, plot_w)

        parts.append(
            f'<text x="6" y="{top + 14}" fill="#e5e7eb" font-weight="bold">{escape(region)}</text>'
        )
        parts.append(
            f'<line x1="{_LEFT}" y1="{y(0):.1f}" x2="{_WIDTH - _RIGHT}" y2="{y(0):.1f}" '
            'stroke="#4b5563"/>'
        )
        if baseline is not None:
            for deviation, fill in (
                (thresholds.history_fail_deviation, _FAIL_FILL),
                (thresholds.history_warn_deviation, _WARN_FILL),
            ):
                high, low = y(baseline * (1 + deviation)), y(max(0.0, baseline * (1 - deviation)))
                parts.append(
                    f'<rect x="{_LEFT}" y="{high:.1f}" width="{plot_w}" height="{low - high:.1f}" '
                    f'fill="{fill}"/>'
                )
            parts.append(
                f'<text x="6" y="{top + 30}" fill="#9ca3af">baseline {humanize.count(baseline)}</text>'
            )
        else:
            parts.append(f'<text x="6" y="{top + 30}" fill="#9ca3af">no baseline yet</text>')
        if len(points) > 1:
            path = " ".join(f"{x(d):.1f},{y(n):.1f}" for d, n in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{_LINE}" stroke-width="2"/>'
            )
        parts.extend(
            f'<circle cx="{x(d):.1f}" cy="{y(n):.1f}" r="2.5" fill="{_LINE}"/>' for d, n in points
        )
        parts.append(
            f'<circle cx="{x(business_date):.1f}" cy="{y(rows_today):.1f}" r="4.5" fill="{_TODAY}"/>'
        )
        parts.append(
            f'<text x="6" y="{top + 46}" fill="{_TODAY}">today {humanize.count(rows_today)}</text>'
        )
    bottom = _TOP + _PANEL * len(today) + 14
    for day, anchor in (
        (start, "start"),
        (start + timedelta(days=span // 2), "middle"),
        (business_date, "end"),
    ):
        parts.append(
            f'<text x="{_x(day, start, span, plot_w):.1f}" y="{bottom}" fill="#9ca3af" '
            f'text-anchor="{anchor}">{day.isoformat()}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_start(panels: int, title: str) -> list[str]:
    """The opening of a chart of ``panels`` region panels: the svg element, its background
    and the title line."""
    height = _TOP + _PANEL * panels + 24
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#1f2937"/>',
        f'<text x="{_LEFT}" y="14" fill="#e5e7eb">{title}</text>',
    ]


def _x(day: date, start: date, span: int, plot_w: int) -> float:
    return _LEFT + plot_w * (day - start).days / span


def volume_chart_markdown(
    history: Mapping[str, Sequence[tuple[date, int]]],
    today: Mapping[str, int],
    business_date: date,
    thresholds: BandLimits,
    baselines: Mapping[str, float],
) -> str:
    """The chart as a markdown image (a base64 ``data:`` URL)."""
    svg = volume_chart_svg(history, today, business_date, thresholds, baselines)
    return f"![accepted rows per region vs history]({svg_data_url(svg)})"


def daily_volume_svg(
    series: Mapping[str, Sequence[tuple[date, int]]],
    start: date,
    end: date,
    *,
    medians: Mapping[str, Sequence[tuple[date, float]]] | None = None,
) -> str:
    """A self-contained SVG, one panel per region of ``series``: accepted rows of each loaded
    day in [start, end] (line and dots; a day without a point was not loaded) and, dashed, the
    trailing median each day is compared with (the weekly quality report)."""
    span = max(1, (end - start).days)
    plot_w = _WIDTH - _LEFT - _RIGHT
    parts = _svg_start(
        len(series),
        f"accepted rows per day, {start.isoformat()} to {end.isoformat()}; dashed: trailing median",
    )
    for index, (region, raw_points) in enumerate(series.items()):
        top = _TOP + index * _PANEL
        points = sorted((d, n) for d, n in raw_points if start <= d <= end)
        median = sorted((d, m) for d, m in (medians or {}).get(region, ()) if start <= d <= end)
        top_value = max([1, *(n for _, n in points), *(m for _, m in median)]) * 1.1

        def y(value: float, top: int = top, top_value: float = top_value) -> float:
            return top + 4 + (_PANEL - 22) * (1 - value / top_value)

        def x(day: date) -> float:
            return _x(day, start, span, plot_w)

        parts.append(
            f'<text x="6" y="{top + 14}" fill="#e5e7eb" font-weight="bold">{escape(region)}</text>'
        )
        parts.append(
            f'<text x="6" y="{top + 30}" fill="#9ca3af">{len(points)} day(s) loaded</text>'
        )
        parts.append(
            f'<line x1="{_LEFT}" y1="{y(0):.1f}" x2="{_WIDTH - _RIGHT}" y2="{y(0):.1f}" '
            'stroke="#4b5563"/>'
        )
        if len(median) > 1:
            path = " ".join(f"{x(d):.1f},{y(m):.1f}" for d, m in median)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="#9ca3af" stroke-dasharray="4 3"/>'
            )
        if len(points) > 1:
            path = " ".join(f"{x(d):.1f},{y(n):.1f}" for d, n in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{_LINE}" stroke-width="2"/>'
            )
        parts.extend(
            f'<circle cx="{x(d):.1f}" cy="{y(n):.1f}" r="3" fill="{_LINE}">'
            f"<title>{d.isoformat()}: {humanize.count(n)}</title></circle>"
            for d, n in points
        )
    bottom = _TOP + _PANEL * len(series) + 14
    for day, anchor in ((start, "start"), (end, "end")):
        parts.append(
            f'<text x="{_x(day, start, span, plot_w):.1f}" y="{bottom}" fill="#9ca3af" '
            f'text-anchor="{anchor}">{day.isoformat()}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_data_url(svg: str) -> str:
    """``svg`` as a ``data:`` URL, for a markdown image the Prefect UI renders."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
