"""A staged batch's manifest: what a load of one region's batch needs, written when the batch
was staged (after its quality gate passed), kept in the store next to the batch's files::

    manifests/year=2024/month=01/day=15/region=us_east/<batch_id>.json

It names every staged file (accepted rows, rejects, retractions) with its rows, bytes and
SHA-256, and holds the region's record (the counts its 'loaded' ledger row carries), so
``retail-etl resume --batch`` loads exactly what was staged, or refuses. Manifests expire with
the batch's files (``RETAIL_ETL_STAGING_RETENTION_DAYS``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from retail_etl.records import RegionLoad, RegionRecord
from retail_etl.staging import (
    STAGED_TABLES,
    StagedFile,
    StagingError,
    StagingStore,
    validate_batch_id,
)

MANIFEST_ROOT = "manifests"
MANIFEST_VERSION = 1


class ManifestError(StagingError):
    """A batch cannot be resumed from its staged files (message names region, date, batch)."""


def day_prefix(business_date: date) -> str:
    return (
        f"{MANIFEST_ROOT}/year={business_date:%Y}/month={business_date:%m}/day={business_date:%d}/"
    )


def manifest_key(business_date: date, region: str, batch_id: str) -> str:
    return f"{day_prefix(business_date)}region={region}/{validate_batch_id(batch_id)}.json"


@dataclass(frozen=True)
class ManifestFile:
    key: str
    rows: int
    bytes: int
    sha256: str

    def staged(self) -> StagedFile:
        return StagedFile(key=self.key, rows=self.rows, bytes=self.bytes)


@dataclass(frozen=True)
class BatchManifest:
    """One region's staged batch."""

    batch_id: str
    region: str
    business_date: date
    staged_at: datetime
    flow_run_id: str | None
    record: RegionRecord
    files: Mapping[str, tuple[ManifestFile, ...]]

    @property
    def where(self) -> str:
        return f"region {self.region} {self.business_date} (batch {self.batch_id})"

    def to_json(self) -> bytes:
        body = {
            "version": MANIFEST_VERSION,
            "batch_id": self.batch_id,
            "region": self.region,
            "business_date": self.business_date.isoformat(),
            "staged_at": self.staged_at.isoformat(),
            "flow_run_id": self.flow_run_id,
            "record": dataclasses.asdict(self.record),
            "files": {t: [dataclasses.asdict(f) for f in fs] for t, fs in self.files.items()},
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> BatchManifest:
        try:
            body: dict[str, Any] = json.loads(data)
            return cls(
                batch_id=str(body["batch_id"]),
                region=str(body["region"]),
                business_date=date.fromisoformat(body["business_date"]),
                staged_at=datetime.fromisoformat(body["staged_at"]),
                flow_run_id=body.get("flow_run_id"),
                record=RegionRecord(**body["record"]),
                files={
                    t: tuple(ManifestFile(**f) for f in body["files"].get(t, []))
                    for t in STAGED_TABLES
                },
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ManifestError(f"manifest {key} cannot be read: {type(e).__name__}: {e}") from e

    def to_load(self, flow_run_id: str | None) -> RegionLoad:
        """The load of exactly the manifest's files (the 'loaded' row gets ``flow_run_id``)."""
        return RegionLoad(
            region=self.region,
            business_date=self.business_date,
            batch_id=self.batch_id,
            files=tuple(f.staged() for f in self.files["sales"]),
            flow_run_id=flow_run_id,
            reject_files=tuple(f.staged() for f in self.files["rejects"]),
            retraction_files=tuple(f.staged() for f in self.files["retractions"]),
            record=self.record,
        )


def write_manifest(
    store: StagingStore,
    *,
    batch_id: str,
    business_date: date,
    record: RegionRecord,
    flow_run_id: str | None,
    staged: Mapping[str, Sequence[StagedFile]],
) -> BatchManifest:
    """Checksum the batch's staged files and write its manifest (replacing one of a rerun)."""
    manifest = BatchManifest(
        batch_id=batch_id,
        region=record.region,
        business_date=business_date,
        staged_at=datetime.now(UTC),
        flow_run_id=flow_run_id,
        record=record,
        files={
            table: tuple(
                ManifestFile(f.key, f.rows, f.bytes, store.checksum(f.key)) for f in staged[table]
            )
            for table in STAGED_TABLES
        },
    )
    store.write_bytes(manifest_key(business_date, record.region, batch_id), manifest.to_json())
    return manifest


def read_manifests(store: StagingStore, batch_id: str, business_date: date) -> list[BatchManifest]:
    """Every region's manifest of ``batch_id`` (none: the batch was never staged, or expired)."""
    suffix = f"/{validate_batch_id(batch_id)}.json"
    found = []
    for key, _ in store.list_modified(day_prefix(business_date)):
        if key.endswith(suffix):
            data = store.read_bytes(key)
            if data is not None:
                found.append(BatchManifest.from_json(data, key))
    return sorted(found, key=lambda m: m.region)


def check_staged_files(store: StagingStore, manifest: BatchManifest) -> None:
    """Every file the manifest names is in the store with its rows and checksum; raises
    :class:`ManifestError` naming the region, date, batch and file otherwise."""
    for table in STAGED_TABLES:
        for f in manifest.files[table]:
            try:
                checksum = store.checksum(f.key)
            except FileNotFoundError as e:
                raise ManifestError(
                    f"{manifest.where}: staged {table} file {f.key} is missing; the batch cannot "
                    "be resumed (rerun the day instead)"
                ) from e
            if checksum != f.sha256:
                raise ManifestError(
                    f"{manifest.where}: staged {table} file {f.key} changed since it was staged "
                    f"(checksum {checksum[:12]} != {f.sha256[:12]}); refusing to resume"
                )
            rows = store.open_dataset([f.key]).count_rows()
            if rows != f.rows:
                raise ManifestError(
                    f"{manifest.where}: staged {table} file {f.key} holds {rows} row(s), the "
                    f"manifest {f.rows}; refusing to resume"
                )
