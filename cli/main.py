"""``retail-etl``: the command line (seed, blocks, run, demo, backfill, audit, report, automations,
cleanup, query).

Arguments are checked before any flow starts (unknown regions, a reversed range, settings
that do not parse): a usage error exits 2 with a one-line message and creates no flow run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

DEMO_DATE = date(2024, 1, 15)
DESCRIPTION = (
    "retail-etl: seed demo sources, register Prefect blocks and automations, and run the "
    "retail-sales-etl pipeline for a day or a range of days."
)


class UsageError(ValueError):
    """Arguments or settings a command cannot run with (exit 2, no flow run)."""


def load_env_file(path: str) -> list[str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional quotes) into the
    environment; variables already set win. Returns the names it set (never values)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read env file {path}: {exc.strerror}") from exc
    names = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise UsageError(f"env file {path}, line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key not in os.environ:
            os.environ[key] = value
            names.append(key)
    return names


def check_settings(regions: Sequence[str] | None = None) -> list[str]:
    """Load and check every setting a run reads, and ``regions`` against the configured ones;
    the regions to run. ``UsageError`` naming the problem."""
    from retail_etl.quality import QualityThresholds
    from retail_etl.settings import get_settings

    try:
        settings = get_settings(fresh=True)
        configured = settings.regions
        for region in configured:
            settings.column_aliases_for(region)
            settings.extract_splits_for(region)
        QualityThresholds.from_settings(settings)
    except ValueError as exc:  # SettingsError and the checks of derived settings
        raise UsageError(f"RETAIL_ETL_* settings: {exc}") from exc
    chosen = list(regions) if regions else configured
    unknown = [r for r in chosen if r not in configured]
    if unknown:
        raise UsageError(
            f"unknown region(s) {', '.join(unknown)}; configured regions are "
            f"{', '.join(configured)} (RETAIL_ETL_REGIONS)"
        )
    return chosen


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from exc
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _regions(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from exc


def _quiet_offline_prefect() -> None:
    """Defaults that make a local run quiet and fast; explicit environment values win."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask mode's scheduler


def _without_heartbeat():  # type: ignore[no-untyped-def]
    # The flow-run heartbeat thread costs ~1 s per flow and subflow run.
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def cmd_seed(args: argparse.Namespace) -> int:
    from retail_etl.seed import seed_regions
    from retail_etl.settings import get_settings

    settings = get_settings(fresh=True)
    regions = _regions(args.regions) or settings.regions
    server_url = args.server_url or settings.source_server_url.get_secret_value()
    started = time.perf_counter()
    summaries = seed_regions(
        server_url,
        regions,
        args.start_date,
        args.days,
        args.rows_per_region,
        database_for_region=settings.source_database,
        seed=args.seed,
        progress=lambda line: print(line, flush=True),
    )
    total = sum(s.rows for s in summaries)
    print(
        f"seeded {total:,} rows in {len(summaries)} region database(s) "
        f"({', '.join(s.database for s in summaries)}) in {time.perf_counter() - started:.1f} s"
    )
    return 0


def cmd_blocks_register(args: argparse.Namespace) -> int:
    _quiet_offline_prefect()
    if args.env:  # the environment whose block names to write (over RETAIL_ETL_ENV)
        os.environ["RETAIL_ETL_ENV"] = args.env
    from blocks.register import register_all
    from retail_etl.settings import get_settings, load_registration_settings

    for line in register_all(get_settings(fresh=True), load_registration_settings()):
        print(line)
    return 0


def cmd_automations_install(args: argparse.Namespace) -> int:
    _quiet_offline_prefect()
    from cli.automations import ZOMBIE_AUTOMATION, install_failure_automation
    from retail_etl.settings import get_settings

    for result in install_failure_automation(get_settings(fresh=True)):
        if result.action == "skipped":
            print(
                f"skipped automation {result.name}: Slack block {result.block_name} does not "
                "exist (set RETAIL_ETL_SLACK_WEBHOOK_URL, run `retail-etl blocks register`, then "
                "this command again)"
            )
            continue
        effect = (
            "marks runs without heartbeats Crashed"
            if result.name == ZOMBIE_AUTOMATION
            else f"notifies Slack block {result.block_name}"
        )
        print(f"{result.action} automation {result.name} ({result.automation_id}): {effect}")
    return 0


def _check_task_runner() -> None:
    """Dask mode without a Prefect API the workers can reach is a usage error: refused
    (exit 2) before any flow run starts. The flow checks again, and the cluster, itself."""
    from blocks.prefect_api import require_prefect_api
    from retail_etl.settings import get_settings

    settings = get_settings(fresh=True)
    if settings.task_runner == "dask":
        require_prefect_api(settings)


def run_pipeline(
    run_date: date | None, regions: list[str] | None, lookback_days: int | None = None
) -> tuple[bool, str]:
    """Run the flow in this process, showing live progress; (every requested region loaded,
    summary text)."""
    _quiet_offline_prefect()
    _check_task_runner()
    from flows.etl import retail_sales_etl
    from retail_etl.progress import ProgressDisplay
    from retail_etl.run import summary_from_result

    display = ProgressDisplay(sys.stdout)
    with _without_heartbeat(), display.running():
        state = retail_sales_etl(
            run_date=run_date, regions=regions, lookback_days=lookback_days, return_state=True
        )
    summary = summary_from_result(state.result(raise_on_failure=False))
    if summary is None:
        return False, f"{state.name}: {state.message}"
    return bool(state.is_completed() and summary.succeeded), summary.render_text()


def check_run(args: argparse.Namespace) -> None:
    check_settings(_regions(args.regions))


def cmd_run(args: argparse.Namespace) -> int:
    day = args.date or _default_date()
    print(f"running retail-sales-etl for {day} ...", flush=True)
    ok, text = run_pipeline(day, _regions(args.regions), args.lookback_days)
    print(text)
    return 0 if ok else 1


def cmd_resume(args: argparse.Namespace) -> int:
    """Load a staged batch whose load failed, without extracting; exit 0 if it ends loaded."""
    _quiet_offline_prefect()
    from flows.resume import retail_sales_resume

    print(f"resuming batch {args.batch} ...", flush=True)
    with _without_heartbeat():
        state = retail_sales_resume(batch_id=args.batch, return_state=True)
    print(state.message or state.name)
    return 0 if state.is_completed() else 1


def _default_date() -> date:
    """The run's own default: the day before now in RETAIL_ETL_TIMEZONE."""
    from retail_etl.closing import business_date_for, now_utc
    from retail_etl.settings import get_settings

    return business_date_for(now_utc(), get_settings(fresh=True).timezone)


def check_backfill(args: argparse.Namespace) -> None:
    if args.end < args.start:
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    check_settings(_regions(args.regions))


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run the daily pipeline over a date range; exit 0 only if every pair ends loaded."""
    _quiet_offline_prefect()
    from flows.backfill import retail_sales_backfill
    from retail_etl.backfill import BackfillFailed, summary_rows

    _check_task_runner()
    with _without_heartbeat():
        state = retail_sales_backfill(
            start_date=args.start,
            end_date=args.end,
            regions=_regions(args.regions),
            missing_only=args.missing_only,
            max_concurrent_days=args.max_concurrent_days,
            changed_only=args.changed_only,
            return_state=True,
        )
    outcome = state.result(raise_on_failure=False)
    results = outcome.results if isinstance(outcome, BackfillFailed) else outcome
    if not isinstance(results, list):
        print(f"{state.name}: {state.message}")
        return 1
    for row in summary_rows(results):
        print(f"{row['date']}  {row['region']:<10} {row['action']:<26} {row['status']}")
    print(("OK  " if state.is_completed() else "FAIL ") + (state.message or state.name or ""))
    return 0 if state.is_completed() else 1


def cmd_audit(args: argparse.Namespace) -> int:
    """Print source vs warehouse per region and day; exit 1 when a pair needs reprocessing."""
    _quiet_offline_prefect()
    from flows.audit import retail_sales_audit
    from retail_etl.audit import AuditReport

    with _without_heartbeat():
        state = retail_sales_audit(
            start_date=args.start,
            end_date=args.end,
            regions=_regions(args.regions),
            return_state=True,
        )
    report = state.result(raise_on_failure=False)
    if not isinstance(report, AuditReport):
        print(f"{state.name}: {state.message}")
        return 2
    print(report.render())
    return 1 if report.drifted else 0


def cmd_report(args: argparse.Namespace) -> int:
    """The weekly quality report of a range, offline: markdown to stdout, or to --out FILE with
    the volume chart next to it (``<FILE stem>-volume.svg``)."""
    from blocks.targets import open_targets
    from retail_etl.report import collect_configured_report, render_markdown, volume_chart
    from retail_etl.settings import get_settings

    settings = get_settings(fresh=True)
    _, warehouse = open_targets(settings)
    warehouse.ensure_schema()
    with warehouse.session():
        report = collect_configured_report(
            warehouse.query, settings, args.start, args.end, _regions(args.regions)
        )
    if args.out is None:
        print(render_markdown(report), end="")
        return 0
    out = Path(args.out)
    chart = out.with_name(f"{out.stem}-volume.svg")
    chart.write_text(volume_chart(report), encoding="utf-8")
    out.write_text(render_markdown(report, chart=chart.name), encoding="utf-8")
    print(f"wrote {out} and {chart}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Seed the local sources if needed, then run one day end to end on the embedded default."""
    # The demo's sources are the local databases it seeds, whatever blocks a server holds.
    os.environ["RETAIL_ETL_CREDENTIALS"] = "env"
    from retail_etl.seed import is_seeded, seed_regions
    from retail_etl.settings import get_settings

    settings = get_settings(fresh=True)
    started = time.perf_counter()
    missing = [
        region
        for region in settings.regions
        if not is_seeded(settings.source_url(region).get_secret_value(), args.date, 1)
    ]
    if missing or args.reseed:
        regions = settings.regions if args.reseed else missing
        print(
            f"seeding {len(regions)} region(s) x {args.rows_per_region:,} rows for {args.date} ...",
            flush=True,
        )
        seed_regions(
            settings.source_server_url.get_secret_value(),
            regions,
            args.date,
            1,
            args.rows_per_region,
            database_for_region=settings.source_database,
            progress=lambda line: print("  " + line, flush=True),
        )
    print(f"running retail-sales-etl for {args.date} ...", flush=True)
    ok, text = run_pipeline(args.date, None)
    print(text)
    print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0 if ok else 1


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove killed runs' leftovers, staged batches past retention and stale stage tables."""
    _quiet_offline_prefect()
    from blocks.targets import open_targets
    from retail_etl.housekeeping import sweep_leftovers
    from retail_etl.settings import get_settings

    settings = get_settings(fresh=True)
    retention = (
        settings.staging_retention_days if args.retention_days is None else args.retention_days
    )
    store, warehouse = open_targets(settings)
    report = sweep_leftovers(settings.runs_dir, store, retention, dry_run=args.dry_run)
    if not args.dry_run:
        report.stage_tables = warehouse.drop_stale_stage_tables(settings.stale_stage_table_hours)
    print(report.describe(dry_run=args.dry_run))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Read the DuckDB warehouse without blocking loads for longer than the statement."""
    from retail_etl.settings import get_settings
    from retail_etl.staging import LocalStagingStore
    from retail_etl.warehouse import open_warehouse

    settings = get_settings(fresh=True)
    if settings.warehouse != "duckdb":
        print(
            "retail-etl: error: `query` reads the DuckDB warehouse; query Snowflake with its own tools",
            file=sys.stderr,
        )
        return 2
    warehouse = open_warehouse(settings, LocalStagingStore(settings.staging_dir / "store"))
    columns, rows = warehouse.query_read_only(args.sql)
    cells = [columns] + [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        )
        if n == 0:
            print("  ".join("-" * width for width in widths))
    print(f"({len(rows):,} row(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retail-etl", description=DESCRIPTION)
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="read KEY=VALUE settings (RETAIL_ETL_*, PREFECT_*) from this file first; "
        "variables already set in the environment win",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="create and fill synthetic regional source databases")
    seed.add_argument("--start-date", type=_date, default=DEMO_DATE)
    seed.add_argument("--days", type=_positive, default=7)
    seed.add_argument(
        "--rows-per-region", type=_positive, default=500_000, help="rows per region per day"
    )
    seed.add_argument("--regions", help="comma-separated (default: configured regions)")
    seed.add_argument(
        "--server-url", help="SQLAlchemy URL of the PostgreSQL server (default: local)"
    )
    seed.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
    seed.set_defaults(func=cmd_seed)

    blocks = sub.add_parser("blocks", help="Prefect blocks")
    blocks_sub = blocks.add_subparsers(dest="blocks_command", required=True)
    register = blocks_sub.add_parser(
        "register", help="create or update every block from the environment"
    )
    register.add_argument(
        "--env",
        metavar="ENV",
        help="dev, staging or prod (default RETAIL_ETL_ENV, else dev): prod writes "
        "prod-sales-source-<region>, prod-retail-etl-slack, ...; dev the plain names",
    )
    register.set_defaults(func=cmd_blocks_register)

    automations = sub.add_parser("automations", help="Prefect automations")
    automations_sub = automations.add_subparsers(dest="automations_command", required=True)
    install = automations_sub.add_parser(
        "install", help="create or update the failure automation (Slack block must exist)"
    )
    install.set_defaults(func=cmd_automations_install)

    run = sub.add_parser("run", help="run the pipeline for one business date")
    run.add_argument(
        "--date",
        type=_date,
        default=None,
        help="business date (default: yesterday in RETAIL_ETL_TIMEZONE)",
    )
    run.add_argument("--regions", help="comma-separated subset of the configured regions")
    run.add_argument(
        "--lookback-days",
        type=int,
        default=None,
        help="days before --date re-checked for late changes (default RETAIL_ETL_LOOKBACK_DAYS)",
    )
    run.set_defaults(usage=run.format_usage, func=cmd_run, check=check_run)

    resume = sub.add_parser(
        "resume", help="load a staged batch whose load failed, without extracting again"
    )
    resume.add_argument("--batch", required=True, help="the batch id (in the failure alert)")
    resume.set_defaults(usage=resume.format_usage, func=cmd_resume)

    backfill = sub.add_parser("backfill", help="run the pipeline for every date of a range")
    backfill.add_argument("--start", type=_date, required=True)
    backfill.add_argument("--end", type=_date, required=True)
    backfill.add_argument("--regions", help="comma-separated subset of the configured regions")
    backfill.add_argument(
        "--missing-only",
        action="store_true",
        help="only (region, date) pairs whose latest ledger row is not 'loaded'",
    )
    backfill.add_argument(
        "--changed-only",
        action="store_true",
        help="only (region, date) pairs whose source changed since their load, or left "
        "deferred or failed (with --missing-only: either)",
    )
    backfill.add_argument(
        "--max-concurrent-days", type=_positive, default=1, help="dates run at once (1 for DuckDB)"
    )
    backfill.set_defaults(usage=backfill.format_usage, func=cmd_backfill, check=check_backfill)

    audit = sub.add_parser(
        "audit", help="source vs warehouse per region and day (counts, sums, ledger, drift)"
    )
    audit.add_argument("--start", type=_date, required=True)
    audit.add_argument("--end", type=_date, required=True)
    audit.add_argument("--regions", help="comma-separated subset of the configured regions")
    audit.set_defaults(func=cmd_audit)

    report = sub.add_parser(
        "report", help="weekly data quality report of a range of business dates (markdown)"
    )
    report.add_argument("--start", type=_date, required=True)
    report.add_argument("--end", type=_date, required=True)
    report.add_argument("--regions", help="comma-separated subset of the configured regions")
    report.add_argument("--out", metavar="FILE", help="write here (chart next to it), not stdout")
    report.set_defaults(usage=report.format_usage, func=cmd_report, check=check_backfill)

    demo = sub.add_parser("demo", help="seed (if needed) and run one day end to end locally")
    demo.add_argument("--date", type=_date, default=DEMO_DATE)
    demo.add_argument("--rows-per-region", type=_positive, default=500_000)
    demo.add_argument("--reseed", action="store_true", help="re-create the source databases")
    demo.set_defaults(usage=demo.format_usage, func=cmd_demo, check=lambda args: check_settings())

    cleanup = sub.add_parser(
        "cleanup",
        help="remove killed runs' leftovers, staged batches past retention, stale stage tables",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only say what would go")
    cleanup.add_argument(
        "--retention-days", type=int, help="override RETAIL_ETL_STAGING_RETENTION_DAYS"
    )
    cleanup.set_defaults(func=cmd_cleanup)

    query = sub.add_parser(
        "query",
        help="run a read-only SQL statement on the DuckDB warehouse (never blocks a load long)",
    )
    query.add_argument("sql", help='e.g. "select region, count(*) from sales_fact group by 1"')
    query.set_defaults(func=cmd_query)
    return parser


#: Prefect's ephemeral API gets 20 s to start by default; a fresh install's first start (byte
#: compiling, database migrations) on a small machine takes longer and failed ``make demo``.
EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "120"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.env_file:
            load_env_file(args.env_file)
        os.environ.setdefault(
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_SECONDS
        )
        check = getattr(args, "check", None)
        if check is not None:
            check(args)
    except UsageError as exc:
        print(getattr(args, "usage", parser.format_usage)().rstrip(), file=sys.stderr)
        print(f"retail-etl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"retail-etl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
