"""The staging store: a batch's parquet in a hive layout, on a local folder or S3.

Layout (keys are relative to the store root)::

    sales/year=2024/month=01/day=15/region=us_east/<batch_id>-<n>.parquet
    rejects/year=2024/month=01/day=15/region=us_east/<batch_id>-<n>.parquet
    retractions/year=2024/month=01/day=15/region=us_east/<batch_id>-<n>.parquet

Sizing: :meth:`StagingStore.stage_dataset` streams the transform's parquet (any number of
files, any sizes) into files of at most ``target_file_rows`` rows (default
``RETAIL_ETL_TARGET_FILE_ROWS`` = 2M rows, about 40 MB snappy for synthetic sales rows; raise
it towards 5-6M rows for Snowflake's 100-250 MB advice) with row groups of at most
:data:`ROW_GROUP_ROWS`: a day of one region is one to a few files, never thousands of tiny ones,
and memory holds one row group, not the day (the file size costs no memory). At least one file
is written, possibly with zero rows, so loaders never special-case a missing file.

Fast path: source files that already are what staging would write are published as they are,
not rewritten (a hard link on the local store, a plain upload on S3). A file qualifies when its
footer says so, without reading data: exactly the staged schema, at most ``target_file_rows``
rows, row groups of at most :data:`ROW_GROUP_ROWS`, and (for a region partition) row-group
statistics proving every row is of the region (min = max = region, no NULL); and the set is not
a heap of small files (every file but the last holds at least half of ``target_file_rows``).
The transform writes its output that way, so a day is staged without touching its rows; any
other input takes the rewrite, which checks and conforms every row.

Reruns and kept batches: a partition (table, date, region) keeps every batch's files until
they pass retention (``RETAIL_ETL_STAGING_RETENTION_DAYS``, see ``retail_etl.housekeeping``),
so a batch whose load failed can be resumed from its own files (``retail-etl resume``) even
after a newer batch of that day was staged. A batch's files are named ``<batch_id>-<n>``;
staging a batch writes its new files first (each appears atomically: local write + rename, or
one S3 upload), then deletes only that batch's other files in the partition (a rerun of the
same batch with fewer files). Readers never glob: COPY / ``read_parquet`` get the explicit keys
of one batch (returned here, or listed in the batch's manifest, ``retail_etl.manifest``), so
another batch's files are never loaded; a glob over a partition (``read_parquet('sales/**')``,
an external table) sees every kept batch and must filter on ``batch_id``. Two runs staging
the same batch id at the same moment are not supported. If staging fails half way, the files
it already wrote are removed again; a rerun of the *same* batch id overwrites same-named files
in place, so after such a failure that partition must be staged again before it is loaded
(the load only ever runs after a successful ``stage_dataset``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from retail_etl import contract
from retail_etl.settings import get_settings, validate_identifier

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

log = logging.getLogger(__name__)

StagedTable = Literal["sales", "rejects", "retractions"]
STAGED_TABLES: tuple[str, ...] = ("sales", "rejects", "retractions")
#: Batch ids are ``YYYYMMDD_<hex>``; they end up in file names and stage table names.
BATCH_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,47}$")
ROW_GROUP_ROWS = 262_144
READ_BATCH_ROWS = 65_536
COMPRESSION = "snappy"  # read by DuckDB and Snowflake alike
CHECKSUM_CHUNK_BYTES = 8 * 1024 * 1024


class StagingError(RuntimeError):
    """Staging a dataset failed (message names table, date, region and file or key)."""


def validate_batch_id(batch_id: str) -> str:
    if not BATCH_ID_PATTERN.fullmatch(batch_id):
        raise StagingError(
            f"batch id {batch_id!r} is not valid: lower-case letters, digits and underscores, "
            "starting with a letter or digit, at most 48 characters"
        )
    return batch_id


def staged_schema(table: StagedTable) -> pa.Schema:
    if table == "sales":
        return contract.accepted_arrow_schema()
    if table == "rejects":
        return contract.reject_arrow_schema()
    if table == "retractions":
        return contract.retraction_arrow_schema()
    raise StagingError(f"unknown staged table {table!r}; expected one of {STAGED_TABLES}")


def partition_prefix(table: StagedTable, business_date: date, region: str | None) -> str:
    """``<table>/year=YYYY/month=MM/day=DD[/region=<region>]/`` (always ends with ``/``)."""
    staged_schema(table)  # validates the table name
    prefix = f"{table}/year={business_date:%Y}/month={business_date:%m}/day={business_date:%d}/"
    if region is not None:
        prefix += f"region={validate_identifier(region, 'region')}/"
    return prefix


def staged_file_key(
    table: StagedTable, business_date: date, region: str | None, batch_id: str, n: int
) -> str:
    return (
        f"{partition_prefix(table, business_date, region)}{validate_batch_id(batch_id)}-{n}.parquet"
    )


@dataclass(frozen=True)
class StagedFile:
    """One staged parquet file: key relative to the store root, rows, bytes."""

    key: str
    rows: int
    bytes: int


class StagingStore(Protocol):
    """Where staged parquet lives (local folder or S3 bucket + prefix)."""

    @property
    def root_uri(self) -> str:
        """``file:///abs/root/`` or ``s3://bucket/prefix/`` (ends with ``/``)."""
        ...

    def stage_dataset(
        self,
        table: StagedTable,
        business_date: date,
        region: str | None,
        batch_id: str,
        source_files: Sequence[Path],
        *,
        target_file_rows: int | None = None,
    ) -> list[StagedFile]: ...

    def stage_table(
        self,
        table: StagedTable,
        business_date: date,
        region: str | None,
        batch_id: str,
        data: pa.Table,
        *,
        target_file_rows: int | None = None,
    ) -> list[StagedFile]: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        """Every staged key under ``prefix`` (all levels below), with when it was written (UTC)."""
        ...

    @property
    def scratch_root(self) -> Path:
        """The local folder where staging calls keep their ``stage-*`` scratch folders."""
        ...

    def delete_keys(self, keys: Sequence[str]) -> None: ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a small object (a manifest) atomically."""
        ...

    def read_bytes(self, key: str) -> bytes | None:
        """A whole object's content, or None if there is no such key."""
        ...

    def checksum(self, key: str) -> str:
        """SHA-256 (hex) of an object's content, streamed; FileNotFoundError if missing."""
        ...

    def uri(self, key: str) -> str: ...

    def local_path(self, key: str) -> Path | None:
        """A local path to read ``key`` from, or None for a remote store."""
        ...

    def open_dataset(self, keys: Sequence[str]) -> ds.Dataset:
        """A lazily read pyarrow dataset over exactly ``keys``."""
        ...

    def read_table(self, keys: Sequence[str]) -> pa.Table: ...


# --------------------------------------------------------------------------- writing


def _conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Columns of ``schema`` in its order and types (extra input columns are dropped)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise StagingError(f"{where}: missing column(s) {', '.join(missing)}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StagingError(f"{where}: cannot convert to the staged schema: {e}") from e


def _check_region(table: pa.Table, region: str | None, where: str) -> None:
    if region is None or "region" not in table.column_names or table.num_rows == 0:
        return
    matches = pc.fill_null(pc.equal(table["region"], region), False)
    bad = table.num_rows - pc.sum(pc.cast(matches, pa.int64())).as_py()
    if bad:
        raise StagingError(f"{where}: {bad} row(s) do not belong to region {region!r}")


def _iter_files(paths: Sequence[Path]) -> Iterator[tuple[pa.Table, str]]:
    for path in paths:
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise StagingError(f"cannot read source parquet {path}: {e}") from e
        with parquet:
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS):
                yield pa.Table.from_batches([batch]), str(path)


class _PartWriter:
    """Rolls parquet files of at most ``target_file_rows`` rows, buffering one row group."""

    def __init__(self, schema: pa.Schema, target_file_rows: int, scratch: Path) -> None:
        self.schema = schema
        self.target = target_file_rows
        self.row_group_rows = min(target_file_rows, ROW_GROUP_ROWS)
        self.scratch = scratch
        self.opened = 0
        self._writer: pq.ParquetWriter | None = None
        self._path = scratch / "unused"
        self._rows = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def _flush(self) -> None:
        if self._buffer and self._writer is not None:
            self._writer.write_table(pa.concat_tables(self._buffer), self.row_group_rows)
        self._buffer, self._buffered = [], 0

    def _open(self) -> pq.ParquetWriter:
        self._path = self.scratch / f"part-{self.opened}.parquet"
        self.opened += 1
        self._rows = 0
        self._writer = pq.ParquetWriter(self._path, self.schema, compression=COMPRESSION)
        return self._writer

    def close(self) -> tuple[Path, int] | None:
        """Close the current file (opening an empty one if none was written at all)."""
        writer = self._writer
        if writer is None:
            if self.opened:
                return None
            writer = self._open()
        self._flush()
        writer.close()
        self._writer = None
        return self._path, self._rows

    def add(self, table: pa.Table) -> Iterator[tuple[Path, int]]:
        """Append rows; yields each file that became full."""
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                self._open()
            take = min(table.num_rows - offset, self.target - self._rows)
            self._buffer.append(table.slice(offset, take))
            self._buffered += take
            self._rows += take
            offset += take
            if self._buffered >= self.row_group_rows:
                self._flush()
            if self._rows >= self.target:
                done = self.close()
                if done is not None:
                    yield done


def _publishable_as_is(
    paths: Sequence[Path], schema: pa.Schema, region: str | None, target_file_rows: int
) -> list[tuple[Path, int]] | None:
    """(path, rows) of every file if the set can be published unchanged, else None.

    Reads footers only. See the module docstring, "Fast path".
    """
    if not paths:
        return None
    ready: list[tuple[Path, int]] = []
    for path in paths:
        try:
            meta = pq.read_metadata(path)
            file_schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowInvalid):
            return None  # the rewrite reports the error with its context
        if meta.num_rows > target_file_rows or not file_schema.equals(schema, check_metadata=False):
            return None
        column = file_schema.get_field_index("region") if region is not None else -1
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if group.num_rows > ROW_GROUP_ROWS:
                return None
            if column < 0 or group.num_rows == 0:
                continue
            stats = group.column(column).statistics
            if (
                stats is None
                or not stats.has_min_max
                or stats.null_count != 0
                or stats.min != region
                or stats.max != region
            ):
                return None
        ready.append((Path(path), meta.num_rows))
    if any(rows < target_file_rows // 2 for _, rows in ready[:-1]):
        return None  # many small files: the rewrite merges them
    return ready


def _write_parts(
    pieces: Iterable[tuple[pa.Table, str]],
    schema: pa.Schema,
    region: str | None,
    target_file_rows: int,
    scratch: Path,
) -> Iterator[tuple[Path, int]]:
    """Stream ``pieces`` into parquet files of at most ``target_file_rows`` rows each.

    Yields (closed file, rows) one file at a time; at least one file (maybe empty).
    """
    writer = _PartWriter(schema, target_file_rows, scratch)
    for table, where in pieces:
        conformed = _conform(table, schema, where)
        _check_region(conformed, region, where)
        yield from writer.add(conformed)
    last = writer.close()
    if last is not None:
        yield last


class _StoreBase:
    """Shared staging logic; subclasses publish, list, delete and locate files."""

    def __init__(self, target_file_rows: int | None = None) -> None:
        self._target_file_rows = target_file_rows

    # subclass hooks
    def _scratch_dir(self) -> Path:
        raise NotImplementedError

    def _publish(self, local: Path, key: str) -> None:
        """Make ``local`` (a file in the scratch folder, consumed) the object ``key``."""
        raise NotImplementedError

    def _scratch_copy(self, source: Path, scratch: Path, n: int) -> Path:
        """A file :meth:`_publish` may consume that has the content of ``source`` (which stays)."""
        target = scratch / f"ready-{n}.parquet"
        try:
            os.link(source, target)  # no copy when scratch and source share a filesystem
        except OSError:
            shutil.copyfile(source, target)
        return target

    def list_keys(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        raise NotImplementedError

    def delete_keys(self, keys: Sequence[str]) -> None:
        raise NotImplementedError

    # shared
    @property
    def scratch_root(self) -> Path:
        return self._scratch_dir()

    def _discard(self, keys: Sequence[str]) -> None:
        try:
            self.delete_keys(keys)
        except Exception:  # the original error matters more
            log.warning("could not remove %d partially staged file(s)", len(keys), exc_info=True)

    def _target(self, target_file_rows: int | None) -> int:
        rows = target_file_rows or self._target_file_rows or get_settings().target_file_rows
        if rows <= 0:
            raise StagingError(f"target_file_rows must be positive, got {rows}")
        return rows

    def _stage(
        self,
        table: StagedTable,
        business_date: date,
        region: str | None,
        batch_id: str,
        pieces: Iterable[tuple[pa.Table, str]],
        target_file_rows: int | None,
        ready: Sequence[tuple[Path, int]] | None = None,
    ) -> list[StagedFile]:
        """Write ``pieces`` into staged files, or publish the ``ready`` files unchanged."""
        validate_batch_id(batch_id)
        prefix = partition_prefix(table, business_date, region)
        schema = staged_schema(table)
        target = self._target(target_file_rows)
        staged: list[StagedFile] = []
        scratch_root = self._scratch_dir()
        scratch_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="stage-", dir=scratch_root) as tmp:
            try:
                if ready is None:
                    parts = _write_parts(pieces, schema, region, target, Path(tmp))
                else:
                    parts = (
                        (self._scratch_copy(path, Path(tmp), n), rows)
                        for n, (path, rows) in enumerate(ready)
                    )
                for n, (path, rows) in enumerate(parts):
                    key = f"{prefix}{batch_id}-{n}.parquet"
                    size = path.stat().st_size
                    try:
                        self._publish(path, key)
                    except Exception as e:
                        raise StagingError(
                            f"staging {table} for {business_date} region {region}: "
                            f"writing {key} failed: {type(e).__name__}: {e}"
                        ) from e
                    staged.append(StagedFile(key=key, rows=rows, bytes=size))
            except Exception:
                # leave no partial set of this batch behind (best effort)
                self._discard([f.key for f in staged])
                raise
        new_keys = {f.key for f in staged}
        own = f"{prefix}{batch_id}-"  # other batches' files stay until retention
        stale = [k for k in self.list_keys(prefix) if k.startswith(own) and k not in new_keys]
        if stale:
            log.info("removing %d stale file(s) of batch %s under %s", len(stale), batch_id, prefix)
            self.delete_keys(stale)
        log.info(
            "staged %s %s region %s: %d row(s) in %d file(s)",
            table,
            business_date,
            region,
            sum(f.rows for f in staged),
            len(staged),
        )
        return staged

    def stage_dataset(
        self,
        table: StagedTable,
        business_date: date,
        region: str | None,
        batch_id: str,
        source_files: Sequence[Path],
        *,
        target_file_rows: int | None = None,
    ) -> list[StagedFile]:
        """Stage ``source_files`` (parquet) into the partition of (table, date, region):
        published as they are when they already conform (module docstring, "Fast path"),
        otherwise rewritten."""
        ready = _publishable_as_is(
            source_files, staged_schema(table), region, self._target(target_file_rows)
        )
        return self._stage(
            table,
            business_date,
            region,
            batch_id,
            _iter_files(source_files),
            target_file_rows,
            ready=ready,
        )

    def stage_table(
        self,
        table: StagedTable,
        business_date: date,
        region: str | None,
        batch_id: str,
        data: pa.Table,
        *,
        target_file_rows: int | None = None,
    ) -> list[StagedFile]:
        """Stage an in-memory table (quality results are small)."""
        pieces = ((b, "in-memory table") for b in [data])
        return self._stage(table, business_date, region, batch_id, pieces, target_file_rows)


class LocalStagingStore(_StoreBase):
    """Staging on a local folder (the default)."""

    def __init__(self, root: Path, *, target_file_rows: int | None = None) -> None:
        super().__init__(target_file_rows)
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStagingStore({str(self.root)!r})"

    @property
    def root_uri(self) -> str:
        return self.root.as_uri() + "/"

    def _scratch_dir(self) -> Path:
        # same filesystem as the files, so publishing is an atomic rename
        return self.root / "_tmp"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StagingError(f"key {key!r} is outside the staging root")
        return path

    def _publish(self, local: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(
            f"{prefix}{p.name}"
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".")
        )

    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        folder = self._path(prefix.rstrip("/")) if prefix else self.root
        if not folder.is_dir():
            return []
        scratch = self._scratch_dir()
        return sorted(
            (
                path.relative_to(self.root).as_posix(),
                datetime.fromtimestamp(path.stat().st_mtime, UTC),
            )
            for path in folder.rglob("*")
            if path.is_file() and not path.name.startswith(".") and scratch not in path.parents
        )

    def delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> None:
        scratch = self._scratch_dir()
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=scratch, delete=False) as tmp:
            tmp.write(data)
        self._publish(Path(tmp.name), key)

    def read_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def checksum(self, key: str) -> str:
        digest = hashlib.sha256()
        with self._path(key).open("rb") as f:
            while chunk := f.read(CHECKSUM_CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def open_dataset(self, keys: Sequence[str]) -> ds.Dataset:
        return ds.dataset([str(self._path(k)) for k in keys], format="parquet")

    def read_table(self, keys: Sequence[str]) -> pa.Table:
        return self.open_dataset(keys).to_table()


def _split_endpoint(endpoint_url: str | None) -> tuple[str | None, str]:
    """(host[:port], scheme) for pyarrow's S3FileSystem from a boto3 endpoint URL."""
    if not endpoint_url:
        return None, "https"
    parsed = urlparse(endpoint_url)
    if not parsed.scheme:
        return endpoint_url, "https"
    return parsed.netloc, parsed.scheme


def arrow_s3_filesystem(session: Any, endpoint_url: str | None = None) -> S3FileSystem:
    """A pyarrow S3 filesystem with the credentials and region of a boto3 ``session`` and a
    custom ``endpoint_url`` (MinIO, moto), if any."""
    from pyarrow.fs import S3FileSystem

    frozen = session.get_credentials()
    endpoint, scheme = _split_endpoint(endpoint_url)
    kwargs: dict[str, Any] = {
        "region": session.region_name or "us-east-1",
        "scheme": scheme,
    }
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    if frozen is not None:
        f = frozen.get_frozen_credentials()
        kwargs.update(access_key=f.access_key, secret_key=f.secret_key, session_token=f.token)
    return S3FileSystem(**kwargs)


class S3StagingStore(_StoreBase):
    """Staging on S3 (or any S3-compatible endpoint).

    Writes: each file is written to a local scratch folder, then uploaded with boto3's managed
    transfer (multipart from disk: the object appears only when complete, memory stays small).
    Reads: a pyarrow ``S3FileSystem`` (no DuckDB httpfs needed, see :func:`arrow_s3_filesystem`).
    The client and the filesystem are passed in; ``blocks.targets.s3_staging_store`` builds
    them from the S3Bucket block.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any,
        fs: S3FileSystem | None = None,
        scratch_dir: Path | None = None,
        target_file_rows: int | None = None,
    ) -> None:
        super().__init__(target_file_rows)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._fs = fs
        self._scratch = Path(scratch_dir) if scratch_dir else Path(tempfile.gettempdir())

    def __repr__(self) -> str:
        return f"S3StagingStore({self.root_uri!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"

    def _object_key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StagingError(f"key {key!r} is not a relative staging key")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    def _scratch_dir(self) -> Path:
        return self._scratch

    def _publish(self, local: Path, key: str) -> None:
        self._client.upload_file(str(local), self.bucket, self._object_key(key))

    def list_keys(self, prefix: str) -> list[str]:
        full = self._object_key(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/"):
            keys.extend(self._relative(o["Key"]) for o in page.get("Contents", []))
        return sorted(keys)

    def list_modified(self, prefix: str) -> list[tuple[str, datetime]]:
        full = self._object_key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        paginator = self._client.get_paginator("list_objects_v2")
        found: list[tuple[str, datetime]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            found.extend(
                (self._relative(o["Key"]), o["LastModified"].astimezone(UTC))
                for o in page.get("Contents", [])
            )
        return sorted(found)

    def delete_keys(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._object_key(k)} for k in chunk], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StagingError(
                    f"deleting {len(errors)} stale staged object(s) from s3://{self.bucket} "
                    f"failed, e.g. {first.get('Key')}: {first.get('Code')}"
                )

    def write_bytes(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return bytes(response["Body"].read())

    def checksum(self, key: str) -> str:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.uri(key)) from e
            raise
        digest = hashlib.sha256()
        for chunk in response["Body"].iter_chunks(CHECKSUM_CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest()

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    def _filesystem(self) -> S3FileSystem:
        if self._fs is None:
            raise StagingError(
                f"{self!r} has no pyarrow S3 filesystem to read with: pass fs=arrow_s3_filesystem(...)"
            )
        return self._fs

    def open_dataset(self, keys: Sequence[str]) -> ds.Dataset:
        paths = [f"{self.bucket}/{self._object_key(k)}" for k in keys]
        return ds.dataset(paths, filesystem=self._filesystem(), format="parquet")

    def read_table(self, keys: Sequence[str]) -> pa.Table:
        return self.open_dataset(keys).to_table()
