"""Automations as code: ``retail-etl automations install``.

:data:`ZOMBIE_AUTOMATION`: a flow run of ours whose heartbeats stop (its host died, the process
was killed: it can neither finish nor alert) is marked Crashed by the server once no heartbeat
came for ``zombie_after_seconds``; deployments send one every 60 s (prefect.yaml).

The other, :data:`FAILURE_AUTOMATION`: when a flow run of ``retail-sales-etl`` or
``retail-sales-backfill`` enters Failed or Crashed **without having alerted** (its state
message lacks :data:`~retail_etl.alerts.ALERTED_MARK`), the Prefect server sends a
notification through the Slack block (``settings.slack_block``). That covers what the flow's
own ``alert`` cannot: a process that died or was killed (Crashed; zombie runs the server marks
Crashed), invalid parameters, a failure before the alert, Slack down at alert time. A run that
alerted, and each day of a backfill (the backfill sends one summary), gets no second message.

Installing is idempotent: an automation of the same name is updated in place (duplicates of
that name are deleted), so running the command after a change replaces the old definition.
The Slack block is resolved by name to its id here, so nothing has to hard-code a UUID.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from retail_etl.alerts import ALERTED_MARK
from retail_etl.settings import Settings

if TYPE_CHECKING:
    from prefect.automations import Automation

FAILURE_AUTOMATION = "retail-etl-flow-run-failed"
WATCHED_FLOWS: tuple[str, ...] = ("retail-sales-etl", "retail-sales-backfill")
FAILURE_STATES: tuple[str, ...] = ("Failed", "Crashed")

# Jinja, rendered by the server with the flow run, its flow and deployment. It only speaks for
# runs that could not alert themselves (the trigger skips ALERTED_MARK): crashed or killed runs
# (a rerun is suggested: nothing was decided), and runs that failed before their own alert,
# e.g. on invalid parameters (no rerun suggested: the same parameters would fail again).
FAILURE_SUBJECT = (
    "*{{ flow_run.name }} {{ flow_run.state.name }}*: the run could not send its own alert "
    "(Prefect automation)"
)
FAILURE_BODY = """\
Flow run: {{ flow_run.id }}{% if flow_run|ui_url %} <{{ flow_run|ui_url }}|open in Prefect>{% endif %}
Deployment: {{ deployment.name if deployment else 'none (run outside a deployment)' }}
Parameters: `{{ flow_run.parameters | tojson }}`
State message: {{ flow_run.state.message or '(none)' }}
{% if flow_run.state.type.value == 'CRASHED' %}\
The process stopped before the run finished (crashed or killed): what was merged before is \
committed per region, the rest was not loaded. After checking the worker, run the same \
deployment again with the same parameters{% if flow.name == 'retail-sales-etl' %} \
(`retail-etl run` with the date in the run name){% endif %}; loads are idempotent.
{% elif 'flow parameters failed' in (flow_run.state.message or '') or 'unknown region' in (flow_run.state.message or '') %}\
The run was given invalid parameters and did nothing: correct them before running again.
{% else %}\
The run ended without its own alert reaching Slack (it failed before alerting, or Slack was \
unreachable then): see its state message and logs.
{% endif %}\
"""


ZOMBIE_AUTOMATION = "retail-etl-zombie-runs"
ZOMBIE_MESSAGE = (
    "Marked Crashed by the retail-etl-zombie-runs automation: no heartbeat from the flow run's "
    "process (host down or process killed); its regions were not loaded by this run"
)
TERMINAL_EVENTS: tuple[str, ...] = tuple(
    f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")
)


def zombie_automation(after_seconds: float, name: str = ZOMBIE_AUTOMATION) -> Automation:
    """Heartbeat seen, then neither another heartbeat nor an end within ``after_seconds``:
    the run is a zombie; the server moves it to Crashed (which the failure automation reports)."""
    from prefect.automations import Automation, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState

    return Automation(
        name=name,
        description=(
            "Crashed when a " + " or ".join(WATCHED_FLOWS) + f" flow run sends no heartbeat for "
            f"{after_seconds:.0f} s (installed by `retail-etl automations install`)."
        ),
        enabled=True,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *TERMINAL_EVENTS},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": list(WATCHED_FLOWS),
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed", state=StateType.CRASHED, message=ZOMBIE_MESSAGE, force=False
            )
        ],
    )


@dataclass(frozen=True)
class InstallResult:
    name: str
    automation_id: str
    action: Literal["created", "updated", "skipped"]
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
            + " without having sent its own alert (installed by `retail-etl automations "
            "install`)."
        ),
        enabled=True,
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in FAILURE_STATES},
            # Every label must match; "!" negates: only runs that did not alert themselves.
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.state-message": f"!*{ALERTED_MARK}*",
            },
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


def install_failure_automation(settings: Settings) -> list[InstallResult]:
    """Create or replace the zombie and failure automations (the latter skipped while the
    Slack block does not exist)."""
    from prefect.settings import PREFECT_API_URL

    from blocks.notifications import slack_block_id

    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "automations run on a Prefect server: set PREFECT_API_URL (the ephemeral local API "
            "would store the automation in a throw-away database)"
        )
    results = [_install(zombie_automation(settings.zombie_after_seconds), settings.slack_block)]
    try:
        block_id = slack_block_id(settings)
    except ValueError:  # no Slack configured yet: the zombie automation still stands
        return [*results, InstallResult(FAILURE_AUTOMATION, "", "skipped", settings.slack_block)]
    return [*results, _install(failure_automation(block_id), settings.slack_block)]


def _install(wanted: Automation, block_name: str) -> InstallResult:
    """Create ``wanted``, or update the automation of its name in place (dropping duplicates)."""
    from prefect.automations import AutomationCore
    from prefect.client.orchestration import get_client

    core = AutomationCore(**wanted.model_dump(exclude={"id"}))
    # The update endpoint refuses ``owner_resource`` (as prefect's own Automation.update does).
    core_for_update = AutomationCore(**wanted.model_dump(exclude={"id", "owner_resource"}))
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(wanted.name)
        if not existing:
            automation_id = client.create_automation(core)
            return InstallResult(wanted.name, str(automation_id), "created", block_name)
        keep, *duplicates = existing
        client.update_automation(keep.id, core_for_update)
        for duplicate in duplicates:
            client.delete_automation(duplicate.id)
        return InstallResult(wanted.name, str(keep.id), "updated", block_name)
