"""Benchmark: one daily run of retail-etl against dlt, on the same seeded PostgreSQL sources.

    .venv/bin/python bench/bench.py                      # 2M rows (4 regions x 500K), both tools
    .venv/bin/python bench/bench.py --rows 20000000      # the 10x day
    .venv/bin/python bench/bench.py --skip-dlt --profile /tmp/prof   # ours only, with pyinstrument
    .venv/bin/python bench/bench.py --skip-dlt --task-runners threads,dask --repeat 3  # Dask vs threads
    .venv/bin/python bench/bench.py --skip-dlt --regions 50   # the same total rows over 50 regions

What it does, in one invocation:

1. Seeds a day of ``--rows`` rows (all rows, dirt included) over ``--regions`` (names, or a
   count N: the four default regions, then ``region_05`` .. ``region_<N>``) into databases
   ``retail_bench_<random>_<region>`` on the local PostgreSQL (127.0.0.1 only).
2. Starts a persistent ``prefect server`` on 127.0.0.1:<free port> with a temporary
   PREFECT_HOME (as deployments run: the flow talks to a long-lived API) and measures, apart,
   what the ephemeral API would have cost (a trivial flow with and without the server) and the
   per-flow-run orchestration overhead (a no-op flow of the same shape: parent, 3 subflows,
   18 task runs, 4 artifacts), with the heartbeat off (as ``retail-etl run`` does) and on.
3. Runs ``retail-sales-etl`` for the day into a fresh DuckDB file in a child process and prints
   the wall time per stage (extract, transform, validate, stage, copy+merge, verify), the total,
   rows/s, the peak RSS of the child's whole process tree (sampled every 20 ms) and its CPU
   per stage.
4. Runs dlt on the same data in another child process: ``sql_table`` per region with the
   connectorx backend (arrow stream), the same WHERE (business date, completed, not deleted),
   ``region`` added, merged into DuckDB on (region, sale_id). Prints its wall and peak RSS,
   and the ratio ours / dlt.
5. Drops the databases it created, stops the server, removes its temporary files.

dlt and connectorx are in the optional ``bench`` dependency group (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
DAY = date(2024, 1, 15)
REGIONS = ("us_east", "us_west", "europe", "apac")
SAMPLE_SECONDS = 0.02
CHILDREN_REFRESH_SECONDS = 0.5


# ------------------------------------------------------------------------------ measuring


@dataclass
class Measured:
    """A child process: its exit code, JSON report, wall seconds and peak tree RSS."""

    returncode: int
    report: dict[str, Any]
    wall: float
    peak_rss: int
    stderr: str = ""
    #: (epoch seconds, tree RSS, tree CPU seconds so far) samples
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    cpu_seconds: float = 0.0  # user + system of the child's process tree
    postgres_cpu_seconds: float = 0.0  # of the PostgreSQL server meanwhile (any client)
    server_cpu_seconds: float = 0.0  # of the Prefect server's process tree meanwhile

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss, _ in self.timeline if start <= t <= end), default=0)

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the tree used between two epoch times (from the nearest samples)."""
        inside = [cpu for t, _, cpu in self.timeline if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


class _TreeSampler:
    """RSS and CPU seconds of a process tree. The list of descendants is refreshed every
    :data:`CHILDREN_REFRESH_SECONDS` only: finding children scans every process on the machine,
    which at every 20 ms sample cost ~10 % of a core, taken from the tool being measured."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.procs: list[Any] = [root]
        self.refreshed = 0.0

    def sample(self) -> tuple[int, float]:
        import psutil

        now = time.monotonic()
        if now - self.refreshed > CHILDREN_REFRESH_SECONDS:
            try:
                self.procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                self.procs = []
            self.refreshed = now
        rss, cpu = 0, 0.0
        for p in self.procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu += times.user + times.system
            except psutil.Error:
                pass
        return rss, cpu


def _postgres_cpu() -> float:
    """CPU seconds used so far by the local PostgreSQL server processes."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name", "ppid"]):
        if not (proc.info.get("name") or "").startswith("postgres"):
            continue
        try:
            times = proc.cpu_times()
            total += times.user + times.system
            if proc.parent() is None or proc.parent().name() != "postgres":
                # the postmaster: backends that exited (one per connection) are counted here
                total += times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def _tree_cpu(pid: int | None) -> float:
    """CPU seconds used so far by process ``pid`` and its descendants (0 without one)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        return _TreeSampler(psutil.Process(pid)).sample()[1]
    except psutil.Error:
        return 0.0


def run_child(
    args: list[str], env: dict[str, str], timeout: float = 3600, server_pid: int | None = None
) -> Measured:
    """Run ``python bench/bench.py <args>`` and sample its process tree's RSS until it exits;
    with ``server_pid``, also the CPU the Prefect server used meanwhile."""
    import resource

    import psutil

    with tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False) as out:
        report_path = Path(out.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--report", str(report_path)]
    started = time.perf_counter()
    pg_cpu = _postgres_cpu()
    server_cpu = _tree_cpu(server_pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    timeline: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            tree = _TreeSampler(psutil.Process(child.pid))
        except psutil.Error:
            return
        while not stop.is_set():
            rss, cpu = tree.sample()
            timeline.append((time.time(), rss, cpu))
            peak = max(peak, rss)
            stop.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        _, stderr = child.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    pg_cpu = _postgres_cpu() - pg_cpu
    server_cpu = _tree_cpu(server_pid) - server_cpu
    stop.set()
    sampler.join()
    try:
        report = json.loads(report_path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        report = {}
    finally:
        report_path.unlink(missing_ok=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(
        child.returncode, report, wall, peak, stderr or "", timeline, cpu, pg_cpu, server_cpu
    )


# ------------------------------------------------------------------------------ infrastructure


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    proc: subprocess.Popen[bytes]
    startup_seconds: float

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def start_prefect_server(
    home: Path, database_url: str | None = None, timeout: float = 120
) -> PrefectServer:
    """``prefect server start`` on loopback; its database is PostgreSQL at ``database_url``
    (as production servers run) or, without one, SQLite under ``home``."""
    import httpx

    port = _free_port()
    api_url = f"http://{LOOPBACK}:{port}/api"
    env = _clean_env()
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = (home / "server.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops its children
    )
    server = PrefectServer(api_url, home, proc, 0.0)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.perf_counter() - started > timeout:
            server.stop()
            raise RuntimeError(f"prefect server not healthy after {timeout} s")
        time.sleep(0.25)
    server.startup_seconds = time.perf_counter() - started
    return server


def _clean_env() -> dict[str, str]:
    """This environment without PREFECT_* and RETAIL_ETL_* locations (set per child)."""
    keep_retail = {
        # tuning knobs a user may want to benchmark; everything else is set by the bench
        "RETAIL_ETL_CHUNK_ROWS",
        "RETAIL_ETL_DUCKDB_MEMORY_LIMIT",
        "RETAIL_ETL_DUCKDB_THREADS",
        "RETAIL_ETL_TARGET_FILE_ROWS",
        "RETAIL_ETL_MAX_CONCURRENT_REGIONS",
        "RETAIL_ETL_MAX_CONCURRENT_EXTRACTS",
        "RETAIL_ETL_EXTRACT_SPLITS",
        "RETAIL_ETL_TASK_RUNNER",
        "RETAIL_ETL_DASK_ADDRESS",
        "RETAIL_ETL_DASK_WORKERS",
    }
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "RETAIL_ETL_")) or k in keep_retail
    }


def server_url(port: int) -> str:
    return f"postgresql+psycopg2://postgres@{LOOPBACK}:{port}/postgres"


def seed(
    url: str, prefix: str, regions: list[str], rows: int, day: date, history_days: int = 0
) -> float:
    """Seed ``rows`` over ``regions`` for ``day`` and as many for each of the
    ``history_days`` days before it (the run's lookback fingerprints read those)."""
    from retail_etl.seed import seed_regions

    started = time.perf_counter()
    seed_regions(
        url,
        regions,
        day - timedelta(days=history_days),
        1 + history_days,
        rows // len(regions),
        database_for_region=lambda region: f"{prefix}{region}",
    )
    return time.perf_counter() - started


def drop_databases(url: str, prefix: str) -> list[str]:
    from retail_etl import pg

    with pg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = [row[0] for row in cur.fetchall() if row[0].startswith(prefix)]
    for name in names:
        pg.drop_database(url, name)
    return names


# ------------------------------------------------------------------------------ children


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    """One daily run of retail-sales-etl in this process (as a process worker runs it)."""
    started = time.perf_counter()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.etl import retail_sales_etl
    from retail_etl.run import summary_from_result

    imported = time.perf_counter()
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        flow_started = time.perf_counter()
        flow_started_epoch = time.time()
        state = retail_sales_etl(run_date=date.fromisoformat(args.date), return_state=True)
        flow_seconds = time.perf_counter() - flow_started
    if profiler is not None:
        profiler.stop()
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        (Path(args.profile) / "ours.txt").write_text(profiler.output_text(show_all=False))
        (Path(args.profile) / "ours.html").write_text(profiler.output_html())
    summary = summary_from_result(state.result(raise_on_failure=False))
    if summary is None:
        return {"ok": False, "error": f"{state.name}: {state.message}"}
    spans = task_spans(state.state_details.flow_run_id)
    import duckdb

    from retail_etl.settings import get_settings

    con = duckdb.connect(str(get_settings(fresh=True).duckdb_path), read_only=True)
    fact_rows = con.execute(
        "SELECT count(*) FROM sales_fact WHERE sale_date = ?", [date.fromisoformat(args.date)]
    ).fetchall()[0][0]
    con.close()
    return {
        "ok": bool(state.is_completed() and summary.succeeded),
        "message": state.message,
        "import_seconds": imported - started,
        "flow_seconds": flow_seconds,
        "flow_started_epoch": flow_started_epoch,
        "stage_seconds": summary.stage_seconds,
        "rows_extracted": sum(o.rows_extracted for o in summary.regions.values()),
        "rows_accepted": sum(o.rows_accepted for o in summary.regions.values()),
        "rows_rejected": sum(o.rows_rejected for o in summary.regions.values()),
        "rows_inserted": sum(o.rows_inserted for o in summary.regions.values()),
        "fact_rows": int(fact_rows),
        "region_load_seconds": {r: o.load_seconds for r, o in summary.regions.items()},
        "region_extract_seconds": {r: o.extract_seconds for r, o in summary.regions.items()},
        "region_transform_seconds": {r: o.transform_seconds for r, o in summary.regions.items()},
        "task_spans": spans,
    }


def task_spans(flow_run_id: Any) -> list[tuple[str, float, float]]:
    """(name, start epoch, end epoch) of every task run of the flow run and of its subflows,
    read back from the Prefect API, in start order (the gaps between them: orchestration)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    spans: list[tuple[str, float, float]] = []
    with get_client(sync_client=True) as client:
        runs, frontier = [flow_run_id], [flow_run_id]
        while frontier:  # subflows, then theirs
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)
                )
            )
            frontier = [c.id for c in children]
            runs += frontier
        offset, page = 0, 200  # the API's largest page
        while True:
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)),
                limit=page,
                offset=offset,
            )
            spans += [
                (t.name, t.start_time.timestamp(), t.end_time.timestamp())
                for t in tasks
                if t.start_time and t.end_time
            ]
            if len(tasks) < page:
                break
            offset += page
    return sorted(spans, key=lambda s: s[1])


def idle_gaps(
    spans: list[tuple[str, float, float]], start: float, end: float, *, at_least: float = 0.05
) -> list[tuple[float, float, str, str]]:
    """Intervals of [start, end] in which no task run ran, of ``at_least`` seconds or more:
    (offset from start, seconds, the task that ended before, the one that started after)."""
    gaps: list[tuple[float, float, str, str]] = []
    busy_until, last = start, "flow start"
    for name, t0, t1 in spans:
        if t0 - busy_until >= at_least:
            gaps.append((busy_until - start, t0 - busy_until, last, name))
        if t1 > busy_until:
            busy_until, last = t1, name
    if end - busy_until >= at_least:
        gaps.append((busy_until - start, end - busy_until, last, "flow end"))
    return gaps


def child_dlt(args: argparse.Namespace) -> dict[str, Any]:
    """dlt: sql_table per region (connectorx, arrow stream) merged into DuckDB on (region, sale_id)."""
    started = time.perf_counter()
    import dlt
    import pyarrow as pa
    from dlt.sources.sql_database import sql_table

    imported = time.perf_counter()
    day = date.fromisoformat(args.date)
    workdir = Path(args.workdir)

    def region_resource(region: str) -> Any:
        def only_the_day(query: Any, table: Any) -> Any:
            return query.where(
                table.c.sale_date == day,
                table.c.status == "completed",
                table.c.is_deleted.isnot(True),
            )

        def add_region(item: pa.Table) -> pa.Table:
            return item.append_column("region", pa.array([region] * item.num_rows, pa.string()))

        resource = sql_table(
            credentials=f"postgresql+psycopg2://postgres@{LOOPBACK}:{args.pg_port}/"
            f"{args.prefix}{region}",
            table="sales",
            backend="connectorx",
            backend_kwargs={"return_type": "arrow_stream", "batch_size": 100_000},
            chunk_size=100_000,
            reflection_level="full_with_precision",
            query_adapter_callback=only_the_day,
        ).with_name(f"sales_{region}")
        resource.add_map(add_region)
        resource.apply_hints(
            table_name="sales",
            primary_key=["region", "sale_id"],
            write_disposition={"disposition": "merge", "strategy": "delete-insert"},
        )
        return resource

    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{uuid.uuid4().hex[:8]}",
        destination=dlt.destinations.duckdb(str(workdir / "dlt.duckdb")),
        dataset_name="retail",
        pipelines_dir=str(workdir / "dlt-pipelines"),
    )
    run_started = time.perf_counter()
    info = pipeline.run([region_resource(r) for r in args.regions.split(",")])
    run_seconds = time.perf_counter() - run_started
    import duckdb

    con = duckdb.connect(str(workdir / "dlt.duckdb"), read_only=True)
    rows = con.execute("SELECT count(*) FROM retail.sales").fetchall()[0][0]
    con.close()
    return {
        "ok": not info.has_failed_jobs,
        "import_seconds": imported - started,
        "run_seconds": run_seconds,
        "fact_rows": int(rows),
    }


def child_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Orchestration cost: a trivial flow (ephemeral vs server), then a no-op flow shaped like
    the pipeline (parent + 3 subflows, 18 task runs, 4 artifacts) with the heartbeat off / on."""
    from prefect import flow, task
    from prefect.artifacts import create_table_artifact
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @flow(name="bench-trivial")
    def trivial() -> int:
        return 1

    @task
    def noop(x: object = None) -> object:
        return x

    @flow(name="bench-sub")
    def sub(mapped: int, single: int) -> None:
        for f in noop.map(list(range(mapped))):
            f.result()
        for _ in range(single):
            noop()
        create_table_artifact(table=[{"n": mapped}], key="bench-sub")

    @flow(name="bench-shape")
    def shape(regions: int) -> None:
        noop()  # prepare-warehouse
        for f in noop.map(list(range(regions))):  # extract
            f.result()
        create_table_artifact(table=[{"n": regions}], key="bench-extract")
        sub(regions, 0)  # transform
        noop()  # schema history
        sub(0, 1)  # validate: read-gate-inputs
        sub(regions, 3)  # load: stage per region; merge-regions, verify, quality results

    out: dict[str, Any] = {"ok": True}
    started = time.perf_counter()
    trivial()
    out["first_flow_seconds"] = time.perf_counter() - started
    if args.shape:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            started = time.perf_counter()
            shape(4)
            out["shape_no_heartbeat_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        shape(4)
        out["shape_heartbeat_seconds"] = time.perf_counter() - started
    return out


# ------------------------------------------------------------------------------ driver


@dataclass
class Results:
    ours: list[Measured] = field(default_factory=list)
    dlt: list[Measured] = field(default_factory=list)
    #: task runner -> runs (``--task-runners``; ``ours`` holds them all, in run order)
    by_runner: dict[str, list[Measured]] = field(default_factory=dict)


def region_names(spec: str) -> list[str]:
    """``--regions``: comma-separated names, or a count N (the default four, then
    ``region_05`` ..), so 4, 9 and 50 regions share the same total rows."""
    if spec.strip().isdigit():
        count = int(spec)
        if count < 1:
            raise SystemExit("--regions: at least one region")
        extra = [f"region_{i:02d}" for i in range(len(REGIONS) + 1, count + 1)]
        return [*REGIONS, *extra][:count]
    return [r.strip() for r in spec.split(",") if r.strip()]


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _print_ours(m: Measured, rows: int) -> None:
    r = m.report
    stages = r.get("stage_seconds", {})
    names = [
        "task_runner",
        "fingerprint",
        "extract",
        "transform",
        "validate",
        "stage",
        "merge",
        "verify",
    ]
    labels = {"merge": "copy+merge", "task_runner": "runner start"}
    parts = [f"{labels.get(n, n)} {stages[n]:.2f}" for n in names if n in stages]
    flow = r.get("flow_seconds", float("nan"))
    print(f"  stages (s): {', '.join(parts)}")
    for key, what in (
        ("region_extract_seconds", "extract"),
        ("region_transform_seconds", "transform"),
    ):
        per_region = r.get(key, {})
        if per_region:
            print(
                f"  {what} per region (s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in per_region.items())
            )
    loads = r.get("region_load_seconds", {})
    if loads and "merge" in stages:
        # regions loaded in one transaction share its seconds: count each transaction once
        transactions = sorted(set(loads.values()))
        where = (
            f"one transaction for all {len(loads)} regions"
            if len(transactions) == 1
            else f"{len(transactions)} transactions ("
            + ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
            + ")"
        )
        print(
            f"  copy+merge: {sum(transactions):.2f} s in {where}, the rest (stage tables "
            f"dropped, checkpoint, task) {stages['merge'] - sum(transactions):.2f} s"
        )
    # peak RSS per stage (stages run one after another; boundaries approximate)
    at = r.get("flow_started_epoch", 0.0)
    peaks, busy, cpus = [], [], []
    cores = os.cpu_count() or 1
    for n in names:
        if n in stages:
            peaks.append(f"{labels.get(n, n)} {m.peak_between(at, at + stages[n]) / 1e6:,.0f}")
            cpu = m.cpu_between(at, at + stages[n])
            busy.append(f"{labels.get(n, n)} {cpu / max(stages[n], 1e-9):.2f}")
            cpus.append(f"{labels.get(n, n)} {cpu:.2f}")
            at += stages[n]
    print(f"  peak RSS by stage (MB): {', '.join(peaks)}")
    start = r.get("flow_started_epoch", 0.0)
    gaps = idle_gaps([tuple(s) for s in r.get("task_spans", [])], start, start + flow)
    if gaps:
        top = sorted(gaps, key=lambda g: -g[1])[:6]
        print(
            f"  idle gaps (no task run running; >= 0.05 s): {len(gaps)}, "
            f"{sum(g[1] for g in gaps):.2f} s in all; largest: "
            + "; ".join(
                f"{secs:.2f} s at +{at:.1f} s ({before} -> {after})"
                for at, secs, before, after in top
            )
        )
    print(f"  CPU-s by stage (ours, not PostgreSQL): {', '.join(cpus)}")
    print(f"  cores busy by stage (ours, not PostgreSQL; {cores} = all): {', '.join(busy)}")
    print(
        f"  flow run (extract..verify): {flow:.2f} s, {rows / flow:,.0f} rows/s; "
        f"process: {m.wall:.2f} s (imports {r.get('import_seconds', 0):.2f} s); "
        f"peak RSS {_mb(m.peak_rss)}"
    )
    # PostgreSQL's share includes the Prefect server's own database when it runs on PostgreSQL
    used = m.cpu_seconds + m.postgres_cpu_seconds + m.server_cpu_seconds
    print(
        f"  CPU: {m.cpu_seconds:.1f} s ours + {m.postgres_cpu_seconds:.1f} s PostgreSQL + "
        f"{m.server_cpu_seconds:.1f} s Prefect server in {m.wall:.1f} s on {cores} cores = "
        f"{used / (m.wall * cores):.0%} of the machine"
    )
    print(
        f"  rows: extracted {r.get('rows_extracted', 0):,}, accepted {r.get('rows_accepted', 0):,},"
        f" rejected {r.get('rows_rejected', 0):,}, in sales_fact {r.get('fact_rows', 0):,}"
    )


def _print_dlt(m: Measured, rows: int) -> None:
    r = m.report
    run = r.get("run_seconds", float("nan"))
    print(
        f"  pipeline.run (extract+normalize+merge): {run:.2f} s, {rows / run:,.0f} rows/s; "
        f"process: {m.wall:.2f} s (imports {r.get('import_seconds', 0):.2f} s); "
        f"peak RSS {_mb(m.peak_rss)}; rows in destination {r.get('fact_rows', 0):,}"
    )
    cores = os.cpu_count() or 1
    print(
        f"  CPU: {m.cpu_seconds:.1f} s dlt + {m.postgres_cpu_seconds:.1f} s PostgreSQL in "
        f"{m.wall:.1f} s on {cores} cores = "
        f"{(m.cpu_seconds + m.postgres_cpu_seconds) / (m.wall * cores):.0%} of the machine"
    )


def _check(m: Measured, what: str) -> None:
    if m.returncode != 0 or not m.report.get("ok"):
        tail = "\n".join(m.stderr.strip().splitlines()[-25:])
        raise SystemExit(f"{what} failed (exit {m.returncode}): {m.report}\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the day, all regions")
    parser.add_argument(
        "--regions",
        default=",".join(REGIONS),
        help="comma-separated region names, or a count N (same total --rows over N regions)",
    )
    parser.add_argument("--date", default=DAY.isoformat())
    parser.add_argument("--pg-port", type=int, default=5432, help="local PostgreSQL port")
    parser.add_argument(
        "--history-days",
        type=int,
        default=0,
        help="also seed this many days before --date, as many rows each (never loaded: the "
        "run only reads their fingerprints in its lookback, as in production; default 0)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each tool (median shown)")
    parser.add_argument("--skip-dlt", action="store_true")
    parser.add_argument("--skip-probe", action="store_true", help="skip the orchestration probes")
    parser.add_argument("--profile", help="write a pyinstrument profile of our run to this dir")
    parser.add_argument(
        "--source-prefix",
        help="use already seeded databases <prefix><region> (not seeded, not dropped)",
    )
    parser.add_argument("--keep-sources", action="store_true", help="do not drop the sources")
    parser.add_argument(
        "--server-db",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="database of the Prefect server (default postgres: SQLite answers 503 'database "
        "locked' under concurrent writes, and each retry costs the client ~2 s)",
    )
    parser.add_argument("--workdir", help="scratch directory (default: a temporary one)")
    parser.add_argument(
        "--task-runners",
        default="",
        help="comma-separated RETAIL_ETL_TASK_RUNNER values (threads,dask) run back to back in "
        "each repeat, to compare them under the same machine load (default: the environment's)",
    )
    sub = parser.add_subparsers(dest="child")
    for name in ("ours", "dlt", "probe"):
        c = sub.add_parser(name, help=argparse.SUPPRESS)
        c.add_argument("--report", required=True)
        c.add_argument("--date", default=DAY.isoformat())
        c.add_argument("--regions", default=",".join(REGIONS))
        c.add_argument("--prefix", default="")
        c.add_argument("--pg-port", type=int, default=5432)
        c.add_argument("--workdir", default=".")
        c.add_argument("--profile")
        c.add_argument("--shape", action="store_true")
    args = parser.parse_args(argv)

    if args.child:
        children: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
            "ours": child_ours,
            "dlt": child_dlt,
            "probe": child_probe,
        }
        report = children[args.child](args)
        Path(args.report).write_text(json.dumps(report, default=str))
        return 0 if report.get("ok", True) else 1

    regions = region_names(args.regions)
    url = server_url(args.pg_port)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="retail-etl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    own_sources = args.source_prefix is None
    run_prefix = f"retail_bench_{uuid.uuid4().hex[:8]}_"  # every database this run creates
    prefix = args.source_prefix or run_prefix
    server: PrefectServer | None = None
    results = Results()
    print(
        f"retail-etl bench: {args.rows:,} rows on {args.date} over {len(regions)} regions, "
        f"{os.cpu_count()} CPU(s), workdir {workdir}",
        flush=True,
    )
    try:
        if own_sources:
            seconds = seed(
                url, prefix, regions, args.rows, date.fromisoformat(args.date), args.history_days
            )
            print(f"seeded {prefix}<region> in {seconds:.1f} s", flush=True)
        home = workdir / "prefect-home"
        home.mkdir(exist_ok=True)
        server_db = None
        if args.server_db == "postgres":
            from retail_etl import pg

            pg.create_database(url, f"{run_prefix}prefect")
            server_db = (
                f"postgresql+asyncpg://postgres@{LOOPBACK}:{args.pg_port}/{run_prefix}prefect"
            )
        server = start_prefect_server(home, server_db)
        print(
            f"prefect server {server.api_url} ({args.server_db}) healthy after "
            f"{server.startup_seconds:.1f} s",
            flush=True,
        )
        base = _clean_env()
        base.update(
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
            PREFECT_HOME=str(home),
        )
        with_server = {**base, "PREFECT_API_URL": server.api_url}
        common = [
            "--date",
            args.date,
            "--regions",
            ",".join(regions),
            "--pg-port",
            str(args.pg_port),
        ]

        if not args.skip_probe:
            eph_home = workdir / "prefect-ephemeral-home"
            eph_home.mkdir(exist_ok=True)
            eph = run_child(["probe", *common], {**base, "PREFECT_HOME": str(eph_home)})
            srv = run_child(["probe", "--shape", *common], with_server)
            _check(eph, "ephemeral probe")
            _check(srv, "server probe")
            print("orchestration:")
            print(
                f"  ephemeral API start-up (not in the figures below): "
                f"{eph.report['first_flow_seconds'] - srv.report['first_flow_seconds']:.2f} s "
                f"(first trivial flow {eph.report['first_flow_seconds']:.2f} s ephemeral vs "
                f"{srv.report['first_flow_seconds']:.2f} s on the server), "
                f"peak RSS {_mb(eph.peak_rss)} vs {_mb(srv.peak_rss)}"
            )
            print(
                "  no-op flow of the pipeline's shape (parent + 3 subflows, 18 task runs, "
                "4 artifacts): "
                f"{srv.report['shape_no_heartbeat_seconds']:.2f} s heartbeat off, "
                f"{srv.report['shape_heartbeat_seconds']:.2f} s heartbeat on"
            )

        runners = [r.strip() for r in args.task_runners.split(",") if r.strip()] or [""]
        for i, runner in ((i, r) for i in range(args.repeat) for r in runners):
            run_dir = workdir / f"ours-{i}"
            env = {
                **with_server,
                **({"RETAIL_ETL_TASK_RUNNER": runner} if runner else {}),
                "RETAIL_ETL_REGIONS": ",".join(regions),
                "RETAIL_ETL_SOURCE_SERVER_URL": url,
                "RETAIL_ETL_SOURCE_DATABASE_PREFIX": prefix,
                # the bench's own databases, not blocks (with a server, 'auto' means blocks)
                "RETAIL_ETL_CREDENTIALS": "env",
                "RETAIL_ETL_STAGING_DIR": str(run_dir / "staging"),
                "RETAIL_ETL_DUCKDB_PATH": str(run_dir / "warehouse.duckdb"),
                "RETAIL_ETL_RETRY_BASE_SECONDS": "0",
            }
            extra = ["--profile", args.profile] if args.profile and i == 0 else []
            m = run_child(
                ["ours", *common, *extra],
                env,
                server_pid=None if server is None else server.proc.pid,
            )
            _check(m, "retail-etl run")
            results.ours.append(m)
            results.by_runner.setdefault(runner, []).append(m)
            print(f"retail-etl run {i + 1}/{args.repeat}{f' ({runner})' if runner else ''}:")
            _print_ours(m, m.report["rows_extracted"])
            shutil.rmtree(run_dir, ignore_errors=True)

        if not args.skip_dlt:
            for i in range(args.repeat):
                dlt_dir = workdir / f"dlt-{i}"
                dlt_dir.mkdir(exist_ok=True)
                m = run_child(
                    ["dlt", *common, "--prefix", prefix, "--workdir", str(dlt_dir)],
                    {**base, "RUNTIME__LOG_LEVEL": "WARNING"},
                )
                _check(m, "dlt run")
                results.dlt.append(m)
                print(f"dlt run {i + 1}/{args.repeat}:")
                rows = results.ours[0].report["rows_extracted"] if results.ours else 0
                _print_dlt(m, rows or m.report["fact_rows"])
                shutil.rmtree(dlt_dir, ignore_errors=True)

        ours_flow = _median([m.report["flow_seconds"] for m in results.ours])
        ours_rss = max(m.peak_rss for m in results.ours)
        rows = results.ours[0].report["rows_extracted"]
        print("summary:")
        print(
            f"  retail-etl: {ours_flow:.2f} s (extract..verify), {rows / ours_flow:,.0f} rows/s, "
            f"peak RSS {_mb(ours_rss)}"
        )
        if len(results.by_runner) > 1:
            for runner, runs in results.by_runner.items():
                extract = [m.report["stage_seconds"].get("extract", 0.0) for m in runs]
                start = [m.report["stage_seconds"].get("task_runner", 0.0) for m in runs]
                flows = [m.report["flow_seconds"] for m in runs]
                print(
                    f"  {runner}: runner start {_median(start):.2f} s (runs {_spread(start)}), "
                    f"extract {_median(extract):.2f} s (runs {_spread(extract)}), "
                    f"flow {_median(flows):.2f} s (runs {_spread(flows)}), "
                    f"CPU {_median([m.cpu_seconds for m in runs]):.1f} s, "
                    f"peak RSS {_mb(max(m.peak_rss for m in runs))}"
                )
        if results.dlt:
            dlt_run = _median([m.report["run_seconds"] for m in results.dlt])
            dlt_rss = max(m.peak_rss for m in results.dlt)
            print(
                f"  dlt:        {dlt_run:.2f} s (extract+merge), {rows / dlt_run:,.0f} rows/s, "
                f"peak RSS {_mb(dlt_rss)}"
            )
            print(
                f"  ratio ours / dlt: {ours_flow / dlt_run:.2f} (wall), "
                f"{ours_rss / dlt_rss:.2f} (peak RSS)"
            )
    finally:
        if server is not None:
            server.stop()
        if own_sources and args.keep_sources:
            print(f"kept the source databases {prefix}<region>")
            drop_databases(url, f"{run_prefix}prefect")
        else:
            dropped = drop_databases(url, run_prefix)
            print(f"dropped {len(dropped)} database(s) {run_prefix}*")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
