"""The Slack notification block (``retail-etl-slack``) and sending an alert through it.

``register_slack_block`` stores ``RETAIL_ETL_SLACK_WEBHOOK_URL`` in a ``prefect_slack``
``SlackWebhook`` block (the URL is a ``SecretStr``: encrypted at rest, masked when printed).
``send_alert`` posts an :class:`~retail_etl.alerts.AlertMessage` through that block and reports
success as a bool: a missing block or an unreachable Slack is logged as a warning and never
raises, so an alert can not change the outcome of the run it reports on.

Email is not provided (no ``prefect-email`` block); the failure automation and the flow's own
alert go to Slack only.
"""

from __future__ import annotations

import logging
from typing import Any

from retail_etl.alerts import AlertMessage
from retail_etl.redact import scrub_secrets
from retail_etl.settings import RegistrationSettings, Settings

SLACK_TIMEOUT_SECONDS = 10

_log = logging.getLogger(__name__)


def register_slack_block(settings: Settings, stored: RegistrationSettings) -> str | None:
    """Create or update the Slack webhook block, if a webhook URL is configured."""
    if stored.slack_webhook_url is None:
        return None
    from prefect_slack import SlackWebhook

    SlackWebhook(url=stored.slack_webhook_url).save(settings.slack_block, overwrite=True)
    return settings.slack_block


def register_slack_line(settings: Settings, stored: RegistrationSettings) -> str:
    """Register the Slack block; a human line for ``retail-etl blocks register`` (no values)."""
    name = register_slack_block(settings, stored)
    if name:
        return f"saved SlackWebhook {name}"
    return "Slack not configured (RETAIL_ETL_SLACK_WEBHOOK_URL): alerts are only logged"


def slack_block_id(settings: Settings) -> Any:
    """The UUID of the Slack block document (for automations); ``ValueError`` if missing."""
    from prefect_slack import SlackWebhook

    try:
        block = SlackWebhook.load(settings.slack_block)
    except ValueError as exc:
        raise ValueError(
            f"Slack block {settings.slack_block!r} does not exist: set "
            "RETAIL_ETL_SLACK_WEBHOOK_URL and run `retail-etl blocks register`"
        ) from exc
    if block._block_document_id is None:  # pragma: no cover - a loaded block always has one
        raise ValueError(f"Slack block {settings.slack_block!r} has no document id")
    return block._block_document_id


def send_alert(
    message: AlertMessage,
    settings: Settings,
    *,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> bool:
    """Post ``message`` through the Slack block; True if Slack accepted it. Never raises."""
    log = logger or _log
    try:
        from prefect_slack import SlackWebhook

        block = SlackWebhook.load(settings.slack_block)
        url = block.url.get_secret_value()
    except ValueError:
        log.warning(
            "Alert not sent: Slack block %r does not exist (set RETAIL_ETL_SLACK_WEBHOOK_URL and "
            "run `retail-etl blocks register`). Alert was: %s",
            settings.slack_block,
            message.title,
        )
        return False
    except Exception as exc:
        log.warning(
            "Alert not sent: could not load Slack block %r (%s). Alert was: %s",
            settings.slack_block,
            type(exc).__name__,
            message.title,
        )
        return False
    try:
        from slack_sdk.webhook import WebhookClient

        response = WebhookClient(url=url, timeout=SLACK_TIMEOUT_SECONDS).send(
            text=message.slack_text()
        )
    except Exception as exc:
        log.warning(
            "Alert not sent: Slack webhook of block %r unreachable (%s: %s). Alert was: %s",
            settings.slack_block,
            type(exc).__name__,
            _without(url, str(exc)),
            message.title,
        )
        return False
    if response.status_code >= 400:
        log.warning(
            "Alert not sent: Slack webhook of block %r answered HTTP %s (%s). Alert was: %s",
            settings.slack_block,
            response.status_code,
            _without(url, str(response.body))[:200],
            message.title,
        )
        return False
    return True


def _without(secret_url: str, text: str) -> str:
    """``text`` with the webhook URL (its path is the secret) and credentials masked."""
    return scrub_secrets(text.replace(secret_url, "<webhook url>"))
