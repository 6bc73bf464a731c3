"""Automations as code: ``retail-etl automations install``.

One automation, :data:`FAILURE_AUTOMATION`: when a flow run of ``retail-sales-etl`` or
``retail-sales-backfill`` enters Failed or Crashed, the Prefect server sends a notification
through the Slack block (``settings.slack_block``). It fires even when the flow process dies
and cannot send its own alert (Crashed), which the ``alert`` subflow cannot cover.

Installing is idempotent: an automation of the same name is updated in place (duplicates of
that name are deleted), so running the command after a change replaces the old definition.
The Slack block is resolved by name to its id here, so nothing has to hard-code a UUID.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from retail_etl.settings import Settings

if TYPE_CHECKING:
    from prefect.automations import Automation

FAILURE_AUTOMATION = "retail-etl-flow-run-failed"
WATCHED_FLOWS: tuple[str, ...] = ("retail-sales-etl", "retail-sales-backfill")
FAILURE_STATES: tuple[str, ...] = ("Failed", "Crashed")

# Jinja, rendered by the server with the flow run, its flow and deployment. Parameters are
# dates and region names only; the state message is the run's own (already clean) summary.
FAILURE_SUBJECT = (
    "*{{ flow.name }} flow run `{{ flow_run.name }}` entered {{ flow_run.state.name }}* "
    "(Prefect automation)"
)
FAILURE_BODY = """\
Flow run: {{ flow_run.id }}{% if flow_run|ui_url %} <{{ flow_run|ui_url }}|open in Prefect>{% endif %}
Deployment: {{ deployment.name if deployment else 'none (run outside a deployment)' }}
Parameters: `{{ flow_run.parameters | tojson }}`
State message: {{ flow_run.state.message or '(none)' }}
{% if flow.name == 'retail-sales-etl' and flow_run.parameters.get('run_date') %}\
Rerun: `prefect deployment run 'retail-sales-etl/daily' -p \
run_date={{ flow_run.parameters.get('run_date') }}` \
or `retail-etl run --date {{ flow_run.parameters.get('run_date') }}`
{% endif %}\
"""


@dataclass(frozen=True)
class InstallResult:
    name: str
    automation_id: str
    action: Literal["created", "updated"]
    block_name: str


def failure_automation(block_document_id: Any, name: str = FAILURE_AUTOMATION) -> Automation:
    """The automation object (not yet saved) that notifies ``block_document_id``."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification

    return Automation(
        name=name,
        description=(
            "Slack notification when a "
            + " or ".join(WATCHED_FLOWS)
            + " flow run enters "
            + " or ".join(FAILURE_STATES)
            + " (installed by `retail-etl automations install`)."
        ),
        enabled=True,
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in FAILURE_STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": list(WATCHED_FLOWS),
            },
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject=FAILURE_SUBJECT,
                body=FAILURE_BODY,
            )
        ],
    )


def install_failure_automation(settings: Settings) -> InstallResult:
    """Create or replace the failure automation; ``ValueError`` if the Slack block is missing."""
    from prefect.automations import AutomationCore
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from blocks.notifications import slack_block_id

    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "automations run on a Prefect server: set PREFECT_API_URL (the ephemeral local API "
            "would store the automation in a throw-away database)"
        )
    wanted = failure_automation(slack_block_id(settings))
    core = AutomationCore(**wanted.model_dump(exclude={"id"}))
    # The update endpoint refuses ``owner_resource`` (as prefect's own Automation.update does).
    core_for_update = AutomationCore(**wanted.model_dump(exclude={"id", "owner_resource"}))
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(FAILURE_AUTOMATION)
        if not existing:
            automation_id = client.create_automation(core)
            return InstallResult(
                FAILURE_AUTOMATION, str(automation_id), "created", settings.slack_block
            )
        keep, *duplicates = existing
        client.update_automation(keep.id, core_for_update)
        for duplicate in duplicates:
            client.delete_automation(duplicate.id)
        return InstallResult(FAILURE_AUTOMATION, str(keep.id), "updated", settings.slack_block)
