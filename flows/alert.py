"""The ``alert`` subflow: log the alert, publish it as an artifact, post it to Slack.

Called by ``retail-sales-etl`` when a region fails extraction, the quality gate fails, a load
fails or post-load verification fails. It returns whether Slack accepted the message and never
fails because of Slack: the parent's own outcome stays what the run decided.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.notifications import send_alert
from retail_etl.alerts import build_alert_message
from retail_etl.quality import QualityReport
from retail_etl.run import RunSummary
from retail_etl.settings import get_settings
from tasks.artifacts import flush_if_outermost, publish_markdown


def flow_run_ui_url(flow_run_id: str) -> str | None:
    """The UI address of a flow run, when the API has a UI (a server); else None."""
    from prefect.utilities.urls import url_for

    try:
        return url_for("flow-run", obj_id=flow_run_id)
    except Exception:  # an id that is not a UUID ('local'), or no UI configured
        return None


@flow(name="alert", flow_run_name="alert {summary.run_date}", validate_parameters=False)
def alert(summary: RunSummary, report: QualityReport | None = None) -> bool:
    """Alert about one run (``report`` is the ``QualityReport`` if the gate ran)."""
    logger = get_run_logger()
    message = build_alert_message(
        summary, report, flow_run_url=flow_run_ui_url(summary.flow_run_id)
    )
    logger.warning("%s\n%s", message.title, message.text)
    markdown = message.markdown
    if report is not None:
        markdown += "\n\n" + report.to_markdown()
    settings = get_settings(fresh=True)
    publish_markdown(
        settings.artifact_key(f"alert-{summary.run_date.isoformat()}"),
        markdown,
        description=message.title,
    )
    sent = send_alert(message, settings, logger=logger)
    flush_if_outermost()
    if sent:
        logger.info("Alert posted to Slack")
    return sent
