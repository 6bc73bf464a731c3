"""Transform + quality gate without Prefect: one big region, then many small ones in turn.

    .venv/bin/python bench/transform_gate.py --extract DIR --big big --small small --copies 50

``DIR`` holds ``region=<name>/part-*.parquet`` as :func:`retail_etl.extract.extract_region`
writes them. The big region is transformed once; the small region's extract is transformed as
``--copies`` regions (``<small>_01`` ..) in turn, as ``tasks.transform.transform_regions_task``
does (on one :func:`~retail_etl.transform.transform_connection` where the code has it, unless
``--own-connections``), then the gate (:func:`~retail_etl.quality.evaluate_batch`) judges them.
Prints one JSON line per repeat: wall and CPU seconds (the process, all threads) of each part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from retail_etl import transform  # noqa: E402
from retail_etl.quality import QualityThresholds, evaluate_batch  # noqa: E402

DAY = date(2024, 1, 15)


@contextlib.contextmanager
def timed(label: str, out: dict[str, Any]) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out[label] = {
        "wall": round(time.perf_counter() - wall, 3),
        "cpu": round(time.process_time() - cpu, 3),
    }


def transform_in_turn(
    regions: Sequence[str], files: Sequence[Path], out_dir: Path, *, shared: bool
) -> dict[str, transform.RegionTransformResult]:
    kwargs: dict[str, Any] = {
        "business_date": DAY,
        "batch_id": "B",
        "flow_run_id": "F",
        "out_dir": out_dir,
        "max_file_rows": 1_000_000,
    }
    settings = {"memory_limit": "1GB", "threads": 2}
    connect = getattr(transform, "transform_connection", None)
    if not shared or connect is None:
        return {
            r: transform.transform_region(files, region=r, **kwargs, **settings) for r in regions
        }
    with connect(out_dir, **settings) as connection:
        return {
            r: transform.transform_region(files, region=r, connection=connection, **kwargs)
            for r in regions
        }


def gate(results: dict[str, transform.RegionTransformResult]) -> str:
    report = evaluate_batch(
        results, business_date=DAY, batch_id="B", thresholds=QualityThresholds(), history={}
    )
    return report.verdict


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--extract", type=Path, required=True)
    p.add_argument("--big", default="big")
    p.add_argument("--small", default="small")
    p.add_argument("--copies", type=int, default=50)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--own-connections", action="store_true")
    a = p.parse_args()
    big = sorted((a.extract / f"region={a.big}").glob("part-*.parquet"))
    small = sorted((a.extract / f"region={a.small}").glob("part-*.parquet"))
    shared = not a.own_connections
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory(prefix="transform-gate-") as tmp:
            out: dict[str, Any] = {"code": str(Path(transform.__file__).parents[1])}
            with timed("big_transform", out):
                results = transform_in_turn([a.big], big, Path(tmp) / "big", shared=shared)
            with timed("big_gate", out):
                verdicts = [gate(results)]
            out["big_rows"] = results[a.big].rows_extracted
            names = [f"{a.small}_{i:02d}" for i in range(1, a.copies + 1)]
            with timed("small_transform", out):
                results = transform_in_turn(names, small, Path(tmp) / "small", shared=shared)
            with timed("small_gate", out):
                verdicts.append(gate(results))
            out["small_rows_each"] = results[names[0]].rows_extracted
            out["verdicts"] = verdicts
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
