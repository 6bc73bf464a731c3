"""The benchmark's own arithmetic (the bench itself runs outside the suite: bench/bench.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).resolve().parents[1] / "bench" / "bench.py"
)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench", bench)  # its dataclasses look their module up
_spec.loader.exec_module(bench)


def test_idle_gaps_are_the_times_no_task_run_ran():
    spans = [
        ("extract-a", 10.0, 12.0),
        ("extract-b", 10.1, 13.0),  # overlaps: no gap
        ("transform", 13.5, 14.0),  # 0.5 s after extract-b ended (it ended last)
        ("short", 13.6, 13.7),  # inside the transform
        ("load", 14.02, 15.0),  # 0.02 s: below the threshold
    ]
    gaps = bench.idle_gaps(spans, 9.0, 16.0)
    assert [(round(at, 2), round(s, 2), b, a) for at, s, b, a in gaps] == [
        (0.0, 1.0, "flow start", "extract-a"),
        (4.0, 0.5, "extract-b", "transform"),
        (6.0, 1.0, "load", "flow end"),
    ]
    assert bench.idle_gaps([], 0.0, 0.01) == []


def test_regions_by_count_keep_the_four_default_names_first():
    assert bench.region_names("6") == [
        "us_east",
        "us_west",
        "europe",
        "apac",
        "region_05",
        "region_06",
    ]
    assert bench.region_names("europe, apac") == ["europe", "apac"]
