"""The alert a person reads at 7 AM: what failed, why, what was loaded and how to rerun.

Plain code, no Prefect: :func:`build_alert_message` turns a :class:`~retail_etl.run.RunSummary`
(and the quality report, if the gate ran) into an :class:`AlertMessage` with Slack ``mrkdwn``
text and the same content as Markdown for the Prefect artifact. ``blocks.notifications`` sends
it; ``flows.alert`` wires both.

Nothing secret and no customer data goes into a message: only region names, counts, check
results, ids and error texts, and error texts are scrubbed of URL credentials
(``scheme://user:pass@`` -> ``scheme://user:***@``) and ``password=...`` pairs defensively.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Protocol

from retail_etl import humanize
from retail_etl.backfill import (
    BackfillResult,
    backfill_outcome,
    date_spans,
    group_problems,
    pair_problem,
    range_label,
)
from retail_etl.contract import BATCH_REGION
from retail_etl.records import RegionRecord
from retail_etl.redact import scrub_secrets
from retail_etl.run import RunSummary

if TYPE_CHECKING:
    from retail_etl.quality import QualityReport

__all__ = [
    "ALERTED_MARK",
    "AlertMessage",
    "alert_note",
    "build_alert_message",
    "build_backfill_alert",
    "rerun_commands",
    "resume_commands",
]

#: In the final state message of a failed run whose problem a person has already been told
#: about (its own alert, or the summary alert of the backfill it belongs to). The failure
#: automation (``cli.automations``) does not fire for state messages holding it, so
#: every problem gives one Slack message; a run that could not alert (crashed, killed,
#: invalid parameters, Slack down) lacks it and the automation speaks for it.
ALERTED_MARK = "; alerted "


def alert_note(*, sent: bool, by_backfill: bool = False) -> str:
    """The end of a failed run's state message: whether (and where) it was reported."""
    if by_backfill:
        return ALERTED_MARK + "in the backfill's summary"
    if sent:
        return ALERTED_MARK + "on Slack"
    return "; the alert could not be sent (see the run's logs)"


FLOW_NAME = "retail-sales-etl"
DAILY_DEPLOYMENT = f"{FLOW_NAME}/daily"
RESUME_DEPLOYMENT = "retail-sales-resume/resume"
MAX_ERROR_CHARS = 400
MAX_CHECKS_SHOWN = 12
MAX_REGION_ERRORS_SHOWN = 5
_NOT_LOADED_REASON = {
    "pending": "not processed",
    "extracted": "stopped before load",
    "transformed": "stopped before load",
    "extract_failed": "extraction failed",
    "transform_failed": "transform failed",
    "gate_failed": "quality gate failed",
    "load_failed": "load failed",
    "deferred": "business day not closed yet; a later run's lookback loads it",
}


@dataclass(frozen=True)
class AlertMessage:
    """``text`` is Slack mrkdwn (without the title); ``markdown`` the same for an artifact."""

    title: str
    text: str
    markdown: str = ""

    def slack_text(self) -> str:
        """Title and body as one Slack message."""
        return f"*{_slack_escape(self.title)}*\n{self.text}"


class _Check(Protocol):
    """What the message needs of a ``retail_etl.quality.CheckResult``."""

    @property
    def name(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def measured(self) -> float: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def measured_text(self) -> str: ...
    @property
    def threshold_text(self) -> str: ...


def _deployment(env_prefix: str, flow_and_name: str) -> str:
    """``flow/name`` of an environment (``prod-`` etc. in front of the name, as in
    ``prefect.yaml``)."""
    flow, name = flow_and_name.split("/")
    return f"{flow}/{env_prefix}{name}"


def rerun_commands(summary: RunSummary) -> list[str]:
    """Commands that rerun the regions that were not loaded cleanly (loads are idempotent)."""
    day = summary.run_date.isoformat()
    regions = _rerun_regions(summary)
    cli = f"retail-etl run --date {day}"
    daily = _deployment(summary.artifact_prefix, DAILY_DEPLOYMENT)
    deployment = f"prefect deployment run '{daily}' -p run_date={day}"
    if regions:
        cli += f" --regions {','.join(regions)}"
        if len(regions) < len(summary.regions):
            listed = ",".join(f'"{r}"' for r in regions)
            deployment += f" -p 'regions=[{listed}]'"
    return [cli, deployment]


def resume_commands(summary: RunSummary) -> list[str]:
    """When a region's load failed after staging: the commands that load the staged batch
    without extracting again (``retail-etl resume``), offered before a rerun."""
    if not any(o.status == "load_failed" for o in summary.regions.values()):
        return []
    return [
        f"retail-etl resume --batch {summary.batch_id}",
        f"prefect deployment run '{_deployment(summary.artifact_prefix, RESUME_DEPLOYMENT)}' "
        f"-p batch_id={summary.batch_id}",
    ]


def build_alert_message(
    summary: RunSummary,
    report: QualityReport | None = None,
    *,
    flow_run_url: str | None = None,
) -> AlertMessage:
    """The alert for one run: Slack mrkdwn in ``text``, Markdown in ``markdown``."""
    title = _title(summary)
    return AlertMessage(
        title=title,
        text=_render(summary, report, flow_run_url, _SLACK),
        markdown=f"# {_MARKDOWN.escape(title)}\n\n"
        + _render(summary, report, flow_run_url, _MARKDOWN),
    )


# --- content ------------------------------------------------------------------------------------


def _rerun_regions(summary: RunSummary) -> list[str]:
    return [o.region for o in summary.regions.values() if o.status not in ("loaded", "deferred")]


def _title(summary: RunSummary) -> str:
    day = summary.run_date.isoformat()
    total = len(summary.regions)
    not_loaded = [
        o for o in summary.regions.values() if o.status not in ("loaded", "verify_failed")
    ]
    causes = []
    if any(o.status == "extract_failed" for o in summary.regions.values()):
        causes.append("extraction failed")
    if any(o.status == "transform_failed" for o in summary.regions.values()):
        causes.append("transform failed")
    if summary.gate_verdict == "fail" or any(
        o.status == "gate_failed" for o in summary.regions.values()
    ):
        causes.append("quality gate failed")
    if any(o.status == "load_failed" for o in summary.regions.values()):
        causes.append("load failed")
    if summary.verification_failures or any(
        o.status == "verify_failed" for o in summary.regions.values()
    ):
        causes.append("verification failed")
    if summary.ledger_errors:
        causes.append("ledger not written")
    if _lookback_failures(summary):
        causes.append("lookback reprocessing failed")
    if not causes:
        schema = (
            f", {len(summary.schema_warnings)} source schema change(s)"
            if summary.schema_warnings
            else ""
        )
        return f"{FLOW_NAME} {day}: OK, {total - len(not_loaded)}/{total} region(s) loaded{schema}"
    return (
        f"{FLOW_NAME} {day} FAILED ({', '.join(causes)}): "
        f"{total - len(not_loaded)}/{total} region(s) loaded"
    )


@dataclass(frozen=True)
class _Format:
    bold: Callable[[str], str]
    code: Callable[[str], str]
    link: Callable[[str, str], str]
    escape: Callable[[str], str]
    pre_open: str
    pre_close: str
    bullet: str
    sub: str


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _inline_code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _md_escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", text)


_SLACK = _Format(
    bold=lambda s: f"*{s}*",
    code=_inline_code,
    link=lambda url, label: f"<{url}|{_slack_escape(label)}>",
    escape=_slack_escape,
    pre_open="```",
    pre_close="```",
    bullet="• ",
    sub="    – ",
)
_MARKDOWN = _Format(
    bold=lambda s: f"**{s}**",
    code=_inline_code,
    link=lambda url, label: f"[{_md_escape(label)}]({url})",
    escape=_md_escape,
    pre_open="```text",
    pre_close="```",
    bullet="- ",
    sub="    - ",
)


def _clean_error(error: str | None) -> str:
    text = scrub_secrets(" ".join((error or "unknown error").split()))
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def _check_line(check: _Check, f: _Format) -> str:
    where = "batch" if check.region == BATCH_REGION else check.region
    line = (
        f"{f.code(check.name)} ({f.escape(where)}): measured {check.measured_text}"
        f" vs threshold {check.threshold_text}"
    )
    if check.detail:
        line += f" ({f.escape(_clean_error(check.detail))})"
    return line


def _failing_checks(report: QualityReport | None) -> list[_Check]:
    return list(report.failing) if report is not None else []


_STAGE_FAILURES = {
    "extract_failed": "Extraction failed",
    "transform_failed": "Transform failed",
    "load_failed": "Load failed",
}


def _lookback_failures(summary: RunSummary) -> dict[str, str]:
    """ "<date> <region>" -> status of the lookback pairs that did not load."""
    return {k: v for k, v in summary.lookback.items() if v not in ("loaded", "deferred")}


def _region_lines(summary: RunSummary, f: _Format) -> list[str]:
    """One line per region that failed in a stage of its own (gate and verify come apart).
    More than :data:`MAX_REGION_ERRORS_SHOWN` regions failing in one stage read as one line
    naming them all, with the first regions' errors as examples (at 50 regions, 50 lines of
    the same error buried the rest of the message); every error is in the summary artifact."""
    lines: list[str] = []
    for status, label in _STAGE_FAILURES.items():
        failed = [o for o in summary.regions.values() if o.status == status]
        if len(failed) <= MAX_REGION_ERRORS_SHOWN:
            lines.extend(
                f"{f.bullet}{f.bold(label)} for {f.code(o.region)}: "
                f"{f.escape(_clean_error(o.error))}"
                for o in failed
            )
            continue
        lines.append(
            f"{f.bullet}{f.bold(label)} for {len(failed)} regions: "
            + ", ".join(f.code(o.region) for o in failed)
        )
        shown = failed[:MAX_REGION_ERRORS_SHOWN]
        lines.extend(f"{f.sub}{f.code(o.region)}: {f.escape(_clean_error(o.error))}" for o in shown)
        lines.append(
            f"{f.sub}… and {len(failed) - len(shown)} more (each region's error is in the "
            "run's summary artifact)"
        )
    return lines


def _render(
    summary: RunSummary, report: QualityReport | None, flow_run_url: str | None, f: _Format
) -> str:
    day = summary.run_date.isoformat()
    run_ref = (
        f.link(flow_run_url, summary.flow_run_id) if flow_run_url else f.code(summary.flow_run_id)
    )
    lines = [
        f"Business date {f.bold(day)} · flow run {run_ref} · batch {f.code(summary.batch_id)}"
        + (f" · warehouse {f.escape(summary.warehouse)}" if summary.warehouse else ""),
        "",
    ]

    problems = _region_lines(summary, f)
    failing = _failing_checks(report)
    if summary.gate_verdict == "fail" or failing:
        shown = failing[:MAX_CHECKS_SHOWN]
        problems.append(
            f"{f.bullet}{f.bold('Quality gate failed')}"
            + (f" ({len(failing)} failing check(s)):" if failing else ":")
        )
        problems.extend(f"{f.sub}{_check_line(c, f)}" for c in shown)
        if len(failing) > len(shown):
            problems.append(f"{f.sub}… and {len(failing) - len(shown)} more (see the artifact)")
        if not failing:
            names = summary.failing_checks or ["(no details)"]
            problems.extend(f"{f.sub}{f.code(n)}" for n in names[:MAX_CHECKS_SHOWN])
        gated = [o.region for o in summary.regions.values() if o.status == "gate_failed"]
        if gated:
            problems.append(f"{f.sub}regions held back: {', '.join(f.code(r) for r in gated)}")
    verify_failed = [o for o in summary.regions.values() if o.status == "verify_failed"]
    if summary.verification_failures or verify_failed:
        problems.append(f"{f.bullet}{f.bold('Post-load verification failed')}:")
        problems.extend(
            f"{f.sub}{f.escape(_clean_error(v))}" for v in summary.verification_failures
        )
        problems.extend(
            f"{f.sub}{f.code(o.region)}: {f.escape(_clean_error(o.error))}"
            for o in verify_failed
            if o.error
        )
    lookback = _lookback_failures(summary)
    if lookback:
        problems.append(
            f"{f.bullet}{f.bold('Lookback reprocessing failed')} (earlier days whose source "
            "changed or that were not loaded; each has its own alert):"
        )
        problems.extend(
            f"{f.sub}{f.code(key)}: {f.escape(status)} "
            f"({f.escape(summary.lookback_reasons.get(key, ''))})"
            for key, status in lookback.items()
        )
        dates = sorted(key.split(" ", 1)[0] for key in lookback)
        problems.append(
            f"{f.sub}after fixing the cause: "
            + f.code(f"retail-etl backfill --start {dates[0]} --end {dates[-1]} --changed-only")
        )
    if summary.ledger_errors:
        problems.append(
            f"{f.bullet}{f.bold('Load ledger not written')} (backfills cannot see this run):"
        )
        problems.extend(f"{f.sub}{f.escape(_clean_error(e))}" for e in summary.ledger_errors)
    if problems:
        lines.append(f.bold("What failed"))
        lines.extend(problems)
        lines.append("")

    if summary.schema_warnings:
        lines.append(
            f.bold("Schema changes")
            + " (reported once per change; contract columns still loaded, new columns kept "
            "in `extras`):"
        )
        lines.extend(f"{f.bullet}{f.escape(_clean_error(w))}" for w in summary.schema_warnings)
        lines.append("")

    lines.append(f.bold("Rows per region"))
    lines.append(f.pre_open)
    lines.extend(_rows_table(summary.regions.values()))
    lines.append(f.pre_close)

    loaded = [o for o in summary.regions.values() if o.status in ("loaded", "verify_failed")]
    not_loaded = [
        o for o in summary.regions.values() if o.status not in ("loaded", "verify_failed")
    ]
    if loaded:
        lines.append(
            f"{f.bullet}{f.bold('Loaded')}: "
            + ", ".join(
                f"{o.region} ({o.rows_inserted:,} new, {o.rows_updated:,} updated"
                + (f", {o.rows_deleted:,} retracted" if o.rows_deleted else "")
                + (", verification failed" if o.status == "verify_failed" else "")
                + ")"
                for o in loaded
            )
        )
    else:
        lines.append(f"{f.bullet}{f.bold('Loaded')}: nothing")
    if not_loaded:
        lines.append(
            f"{f.bullet}{f.bold('Not loaded')}: "
            + ", ".join(
                f"{o.region} ({_NOT_LOADED_REASON.get(o.status, o.status)})" for o in not_loaded
            )
        )
    else:
        lines.append(f"{f.bullet}{f.bold('Not loaded')}: nothing")

    resume = resume_commands(summary)
    if resume:
        lines.append("")
        lines.append(
            f"{f.bold('Resume')} the load from the staged, validated batch (no extraction):"
        )
        lines.extend(f"{f.bullet}{f.code(command)}" for command in resume)
    if _rerun_regions(summary):
        cli, deployment = rerun_commands(summary)
        lines.append("")
        lines.append(f"{f.bold('Rerun')} after fixing the cause (loads are idempotent):")
        lines.append(f"{f.bullet}{f.code(cli)}")
        lines.append(f"{f.bullet}{f.code(deployment)}")
    return "\n".join(lines)


def _rows_table(outcomes: Iterable[RegionRecord]) -> list[str]:
    header = (
        f"{'region':<12} {'status':<15} {'extracted':>10} {'accepted':>10} "
        f"{'rejected':>9} {'retracted':>9} {'loaded':>10} {'removed':>8}"
    )
    rows = [header]
    for o in outcomes:
        loaded = o.rows_inserted + o.rows_updated
        rows.append(
            f"{o.region:<12} {o.status:<15} {o.rows_extracted:>10,} {o.rows_accepted:>10,} "
            f"{o.rows_rejected:>9,} {o.rows_retracted:>9,} {loaded:>10,} {o.rows_deleted:>8,}"
        )
    return rows


# --- a backfill: one message for the whole range -----------------------------------------------

BACKFILL_DEPLOYMENT = "retail-sales-backfill/backfill"


def build_backfill_alert(
    start: date,
    end: date,
    results: Sequence[BackfillResult],
    *,
    flow_run_url: str | None = None,
    env_prefix: str = "",
) -> AlertMessage:
    """One message for a backfill: the pairs not loaded grouped by problem (an empty source
    day named as such), each with its regions and date ranges, and the one command that
    reruns exactly what is missing (the deployment of the environment ``env_prefix``:
    ``Settings.env_prefix``)."""
    ok, _ = backfill_outcome(start, end, results)
    label = range_label(start, end)
    ran = sum(len(r.regions) for r in results)
    failed = sum(1 for r in results for s in r.statuses.values() if s != "loaded")
    title = (
        f"retail-sales-backfill {label}: OK, {ran:,} (region, date) pair(s) loaded"
        if ok
        else f"retail-sales-backfill {label} FAILED: {failed:,} of {ran:,} (region, date) "
        "pair(s) not loaded"
    )
    return AlertMessage(
        title=title,
        text=_render_backfill(start, end, results, flow_run_url, env_prefix, _SLACK),
        markdown=f"# {_MARKDOWN.escape(title)}\n\n"
        + _render_backfill(start, end, results, flow_run_url, env_prefix, _MARKDOWN),
    )


def _render_backfill(
    start: date,
    end: date,
    results: Sequence[BackfillResult],
    flow_run_url: str | None,
    env_prefix: str,
    f: _Format,
) -> str:
    run_ref = f.link(flow_run_url, "flow run") if flow_run_url else "flow run"
    days = len(results)
    lines = [f"Business dates {f.bold(range_label(start, end))} ({days:,} day(s)) · {run_ref}", ""]
    groups = group_problems(results)
    if groups:
        lines.append(f.bold("Not loaded"))
        for problem, by_region in groups.items():
            pairs = sum(len(d) for d in by_region.values())
            lines.append(f"{f.bullet}{f.bold(f.escape(problem))} ({pairs:,} pair(s)):")
            # regions with the same dates on one line
            by_dates: dict[str, list[str]] = {}
            for region, region_days in by_region.items():
                by_dates.setdefault(date_spans(region_days), []).append(region)
            for spans, regions in by_dates.items():
                lines.append(f"{f.sub}{', '.join(f.code(r) for r in regions)}: {spans}")
            example = _example_error(results, problem)
            if example:
                lines.append(f"{f.sub}e.g. {f.escape(_clean_error(example))}")
        lines.append("")
    loaded = sum(1 for r in results for s in r.statuses.values() if s == "loaded")
    skipped = sum(len(r.skipped) for r in results)
    rows = sum(
        o.rows_accepted
        for r in results
        if r.summary is not None
        for o in r.summary.regions.values()
        if o.status == "loaded"
    )
    lines.append(
        f"{f.bullet}{f.bold('Loaded')}: {loaded:,} pair(s), {humanize.count(rows)} accepted rows"
        + (f"; {skipped:,} already loaded, skipped" if skipped else "")
    )
    if groups:
        lines += [
            "",
            f"{f.bold('Rerun what is missing')} after fixing the cause (loads are idempotent):",
            f"{f.bullet}"
            + f.code(
                f"retail-etl backfill --start {start.isoformat()} --end {end.isoformat()} "
                "--missing-only"
            ),
            f"{f.bullet}"
            + f.code(
                f"prefect deployment run '{_deployment(env_prefix, BACKFILL_DEPLOYMENT)}' "
                f"-p start_date={start.isoformat()}"
                f" -p end_date={end.isoformat()} -p missing_only=true"
            ),
        ]
    return "\n".join(lines)


def _example_error(results: Sequence[BackfillResult], problem: str) -> str | None:
    """The first region error behind ``problem`` (errors differ per pair; one shows the kind)."""
    for result in results:
        if result.summary is None:
            continue
        for region in result.regions:
            outcome = result.summary.regions.get(region)
            if outcome is not None and outcome.error and pair_problem(result, region) == problem:
                return f"{result.run_date} {region}: {outcome.error}"
    return None
