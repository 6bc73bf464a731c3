"""Weekly quality report flow ``retail-sales-quality-report`` (deployment ``quality-report``)."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, runtime, task
from prefect.states import Completed, State

from blocks.notifications import send_alert
from blocks.targets import open_targets
from retail_etl import closing
from retail_etl.charts import svg_data_url
from retail_etl.report import (
    QualityReport,
    collect_configured_report,
    default_window,
    render_markdown,
    report_key,
    summary_message,
    volume_chart,
)
from retail_etl.settings import Settings, get_settings
from tasks.artifacts import flush_if_outermost, publish_markdown


@task(name="collect-quality-report", retries=2, retry_delay_seconds=5)
def collect_report_task(
    start: date, end: date, regions: list[str] | None, settings: Settings
) -> QualityReport:
    _, warehouse = open_targets(settings)
    warehouse.ensure_schema()  # a fresh warehouse reports every day missing, not an error
    with warehouse.session():
        return collect_configured_report(warehouse.query, settings, start, end, regions)


@flow(name="retail-sales-quality-report", validate_parameters=True)
def retail_sales_quality_report(
    start_date: date | None = None,
    end_date: date | None = None,
    regions: list[str] | None = None,
    notify: bool = True,
) -> State:
    """The weekly data quality report of [start_date, end_date] (default: the 7 business days
    before the run's scheduled start, in RETAIL_ETL_TIMEZONE) as the markdown artifact
    ``quality-report-<start>-<end>`` with the daily volume chart, and a short Slack summary
    (``notify``; skipped with a warning when the Slack block does not exist)."""
    logger = get_run_logger()
    settings = get_settings(fresh=True)
    default_start, default_end = default_window(
        runtime.flow_run.scheduled_start_time or closing.now_utc(), settings.timezone
    )
    start, end = start_date or default_start, end_date or default_end
    report = collect_report_task(start, end, regions, settings)
    message = summary_message(report)
    publish_markdown(
        settings.artifact_key(report_key(start, end)),
        render_markdown(report, chart=svg_data_url(volume_chart(report))),
        description=message.title,
    )
    sent = send_alert(message, settings, logger=logger) if notify else False
    flush_if_outermost()
    missing = len(report.missing)
    return Completed(
        message=f"quality report {start}..{end}: {missing} region-day(s) missing, "
        f"{len(report.gate_issues)} gate warning(s)/failure(s)"
        + ("; summary posted to Slack" if sent else ""),
        data=report,
    )
