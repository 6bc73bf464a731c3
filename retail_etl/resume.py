"""Resume: load an already validated, staged batch without extracting (``retail-etl resume
--batch <id>``, the ``retail-sales-resume`` flow).

Per region of the batch (its manifests, :mod:`retail_etl.manifest`):

- the staged files must match the manifest (names, rows, checksums), else the region is refused;
- if the (region, date)'s latest 'loaded' ledger row is this batch's, it is loaded already:
  nothing to do (resuming twice is a no-op);
- if another batch of that (region, date) loaded after this one was staged, it is refused:
  its MERGE would be a no-op (older ``updated_at``) but its retractions might not be;
- otherwise it is loaded (COPY/MERGE, retractions, rejects, ledger row: one transaction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from retail_etl.manifest import (
    BatchManifest,
    ManifestError,
    check_staged_files,
    read_manifests,
)
from retail_etl.records import RegionLoad
from retail_etl.run import batch_run_date
from retail_etl.staging import StagingStore, validate_batch_id


class ResumeRefused(ManifestError):
    """The batch cannot be resumed at all (unknown batch id, no manifest)."""


@dataclass
class ResumePlan:
    batch_id: str
    business_date: date
    loads: list[RegionLoad] = field(default_factory=list)
    #: region -> why nothing is done (loaded already)
    done: dict[str, str] = field(default_factory=dict)
    #: region -> why it is refused (files changed or missing, a newer batch loaded)
    refused: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"batch {self.batch_id} ({self.business_date}):"]
        if self.loads:
            parts.append("loading " + ", ".join(load.region for load in self.loads) + ";")
        parts += [f"{r}: {why};" for r, why in sorted(self.done.items())]
        parts += [f"{r} refused: {why};" for r, why in sorted(self.refused.items())]
        return " ".join(parts).rstrip(";")


def batch_date(batch_id: str) -> date:
    day = batch_run_date(validate_batch_id(batch_id))
    if day is None:
        raise ResumeRefused(f"batch id {batch_id!r} does not start with its date (YYYYMMDD_)")
    return day


def _as_utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def newer_loaded(manifest: BatchManifest, ledger: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the region is done or refused from its ledger rows, or None to load it:
    ``"loaded"`` when its latest 'loaded' row is this batch's; a refusal message naming the
    newer batch when another batch loaded after this one was staged."""
    loaded = [
        row
        for row in ledger
        if row["region"] == manifest.region
        and row["business_date"] == manifest.business_date
        and row["status"] == "loaded"
    ]
    loaded.sort(key=lambda r: _as_utc(r.get("finished_at")) or datetime.min.replace(tzinfo=UTC))
    if not loaded:
        return None
    latest = loaded[-1]
    if latest["batch_id"] == manifest.batch_id:
        return "loaded"
    finished = _as_utc(latest.get("finished_at"))
    if finished is not None and finished > manifest.staged_at:
        return (
            f"{manifest.where}: batch {latest['batch_id']} of that day loaded at "
            f"{finished:%Y-%m-%d %H:%M:%S} UTC, after this batch was staged; resuming it could "
            "retract rows the newer batch loaded (rerun the day instead)"
        )
    return None


def plan_resume(
    store: StagingStore,
    batch_id: str,
    ledger: Sequence[Mapping[str, Any]],
    flow_run_id: str | None,
) -> ResumePlan:
    """What resuming ``batch_id`` does; ``ledger``: the ledger rows of the batch's date."""
    day = batch_date(batch_id)
    manifests = read_manifests(store, batch_id, day)
    if not manifests:
        raise ResumeRefused(
            f"batch {batch_id} ({day}) has no staged manifest: it never passed its quality "
            "gate to staging, or it expired (RETAIL_ETL_STAGING_RETENTION_DAYS); rerun the day"
        )
    plan = ResumePlan(batch_id, day)
    for manifest in manifests:
        why = newer_loaded(manifest, ledger)
        if why == "loaded":
            plan.done[manifest.region] = "loaded already by this batch"
            continue
        if why is not None:
            plan.refused[manifest.region] = why
            continue
        try:
            check_staged_files(store, manifest)
        except ManifestError as e:
            plan.refused[manifest.region] = str(e)
            continue
        plan.loads.append(manifest.to_load(flow_run_id))
    return plan
