"""Staging store: hive layout, file sizing, stale files, S3 through a real moto endpoint."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks.targets import s3_staging_store
from retail_etl import contract
from retail_etl.settings import InvalidIdentifierError
from retail_etl.staging import (
    LocalStagingStore,
    StagingError,
    partition_prefix,
    staged_file_key,
)
from tests.plumbing import s3_bucket_block

DAY = dt.date(2024, 1, 15)
BATCH = "20240115_3f9a2c1b7d4e"
NOON = dt.datetime(2024, 1, 15, 12, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- shared helpers
# (imported by the warehouse tests)


def accepted_table(
    region: str,
    business_date: dt.date,
    sale_ids: Sequence[int],
    *,
    batch_id: str = BATCH,
    updated_at: dt.datetime | None = None,
    price: str = "10.00",
    flow_run_id: str = "flow-1",
) -> pa.Table:
    """Accepted rows in the contract's accepted schema; odd ids carry an ``extras`` JSON."""
    n = len(sale_ids)
    upd = updated_at or dt.datetime.combine(business_date, dt.time(12), tzinfo=dt.UTC)
    p = Decimal(price)
    gross = p * 2
    columns: dict[str, list[Any]] = {
        "region": [region] * n,
        "sale_id": list(sale_ids),
        "customer_id": [i * 10 for i in sale_ids],
        "store_id": [1 + i % 3 for i in sale_ids],
        "product_id": [100 + i % 7 for i in sale_ids],
        "quantity": [2] * n,
        "unit_price": [p] * n,
        "discount": [Decimal("1.00")] * n,
        "tax": [Decimal("0.50")] * n,
        "total_amount": [gross - 1 + Decimal("0.50")] * n,
        "sale_date": [business_date] * n,
        "status": ["completed"] * n,
        "created_at": [dt.datetime.combine(business_date, dt.time(1), tzinfo=dt.UTC)] * n,
        "updated_at": [upd] * n,
        "gross_amount": [gross] * n,
        "net_amount": [gross - 1] * n,
        "effective_discount_rate": [(Decimal(1) / gross).quantize(Decimal("0.000001"))] * n,
        "extras": [f'{{"loyalty_tier": "gold{i}"}}' if i % 2 else None for i in sale_ids],
        "batch_id": [batch_id] * n,
        "flow_run_id": [flow_run_id] * n,
    }
    return pa.table(columns, schema=contract.accepted_arrow_schema())


def reject_table(
    region: str, business_date: dt.date, sale_ids: Sequence[int | None], *, batch_id: str = BATCH
) -> pa.Table:
    n = len(sale_ids)
    return pa.table(
        {
            "region": [region] * n,
            "sale_id": list(sale_ids),
            "sale_date": [business_date] * n,
            "reasons": ["null_customer_id"] * n,
            "raw_values": ['{"customer_id": null}'] * n,
            "batch_id": [batch_id] * n,
            "flow_run_id": ["flow-1"] * n,
        },
        schema=contract.reject_arrow_schema(),
    )


def retraction_table(
    region: str,
    business_date: dt.date,
    sale_ids: Sequence[int],
    *,
    reason: str = "status_refunded",
    batch_id: str = BATCH,
) -> pa.Table:
    """The transform's retractions: the source's latest version of each key is not a sale."""
    n = len(sale_ids)
    return pa.table(
        {
            "region": [region] * n,
            "sale_id": list(sale_ids),
            "sale_date": [business_date] * n,
            "reason": [reason] * n,
            "raw_values": [f'{{"sale_id": "{i}", "status": "refunded"}}' for i in sale_ids],
            "batch_id": [batch_id] * n,
            "flow_run_id": ["flow-1"] * n,
        },
        schema=contract.retraction_arrow_schema(),
    )


def write_parquet(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r["region"], r["sale_id"]))


# --------------------------------------------------------------------------- local store


def test_layout_and_file_sizing(tmp_path: Path, store: LocalStagingStore) -> None:
    sources = [
        write_parquet(
            tmp_path / "in" / "part-0.parquet", accepted_table("us_east", DAY, range(1, 7))
        ),
        write_parquet(
            tmp_path / "in" / "part-1.parquet", accepted_table("us_east", DAY, range(7, 11))
        ),
    ]
    files = store.stage_dataset("sales", DAY, "us_east", BATCH, sources, target_file_rows=4)

    prefix = "sales/year=2024/month=01/day=15/region=us_east/"
    assert [f.key for f in files] == [f"{prefix}{BATCH}-{n}.parquet" for n in range(3)]
    assert [f.rows for f in files] == [4, 4, 2]
    for f in files:
        path = store.root / f.key
        assert path.stat().st_size == f.bytes
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == f.rows
        assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 4
        assert pq.read_schema(path) == contract.accepted_arrow_schema()
    expected = sorted_rows(pa.concat_tables([pq.read_table(p) for p in sources]))
    assert sorted_rows(store.read_table([f.key for f in files])) == expected
    # nothing else in the partition, scratch cleaned up
    assert store.list_keys(prefix) == [f.key for f in files]
    assert list((store.root / "_tmp").iterdir()) == []


def test_large_input_is_not_split_into_tiny_files(tmp_path: Path, store: LocalStagingStore) -> None:
    # 20 small source files (as a chunked extract/transform may produce) -> one staged file
    sources = [
        write_parquet(
            tmp_path / "in" / f"part-{i}.parquet",
            accepted_table("europe", DAY, range(i * 50, i * 50 + 50)),
        )
        for i in range(20)
    ]
    files = store.stage_dataset("sales", DAY, "europe", BATCH, sources, target_file_rows=10_000)
    assert [f.rows for f in files] == [1000]


def test_rerun_leaves_no_stale_files(tmp_path: Path, store: LocalStagingStore) -> None:
    src = write_parquet(tmp_path / "a.parquet", accepted_table("us_east", DAY, range(1, 11)))
    first = store.stage_dataset("sales", DAY, "us_east", BATCH, [src], target_file_rows=3)
    assert len(first) == 4
    # neighbours that must survive: other region, other date
    other_region = store.stage_dataset(
        "sales",
        DAY,
        "us_west",
        BATCH,
        [write_parquet(tmp_path / "b.parquet", accepted_table("us_west", DAY, [1]))],
    )
    other_day = store.stage_dataset(
        "sales",
        DAY + dt.timedelta(days=1),
        "us_east",
        BATCH,
        [
            write_parquet(
                tmp_path / "c.parquet", accepted_table("us_east", DAY + dt.timedelta(days=1), [1])
            )
        ],
    )

    # same batch again, bigger files: -1.. -3 must go
    again = store.stage_dataset("sales", DAY, "us_east", BATCH, [src], target_file_rows=100)
    prefix = partition_prefix("sales", DAY, "us_east")
    assert store.list_keys(prefix) == [f.key for f in again] == [f"{prefix}{BATCH}-0.parquet"]

    # a newer batch of the same day is staged next to the older one, which stays (resume)
    newer = "20240115_000000000bbb"
    latest = store.stage_dataset("sales", DAY, "us_east", newer, [src], target_file_rows=6)
    assert store.list_keys(prefix) == sorted([f.key for f in again] + [f.key for f in latest])
    assert store.read_table([f.key for f in latest]).num_rows == 10
    assert store.read_table([f.key for f in again]).num_rows == 10

    assert store.list_keys(partition_prefix("sales", DAY, "us_west")) == [
        f.key for f in other_region
    ]
    assert store.list_keys(partition_prefix("sales", DAY + dt.timedelta(days=1), "us_east")) == [
        f.key for f in other_day
    ]


def test_zero_rows_stage_one_empty_file(tmp_path: Path, store: LocalStagingStore) -> None:
    src = write_parquet(tmp_path / "empty.parquet", accepted_table("apac", DAY, []))
    files = store.stage_dataset("sales", DAY, "apac", BATCH, [src])
    assert [f.rows for f in files] == [0]
    assert pq.read_schema(store.root / files[0].key) == contract.accepted_arrow_schema()


def test_schema_is_enforced_and_failures_leave_no_partial_set(
    tmp_path: Path, store: LocalStagingStore
) -> None:
    good = write_parquet(tmp_path / "good.parquet", accepted_table("us_east", DAY, range(1, 5)))
    wrong_region = write_parquet(tmp_path / "bad.parquet", accepted_table("europe", DAY, [9]))
    with pytest.raises(StagingError, match="do not belong to region 'us_east'"):
        store.stage_dataset(
            "sales", DAY, "us_east", BATCH, [good, wrong_region], target_file_rows=2
        )
    assert store.list_keys(partition_prefix("sales", DAY, "us_east")) == []

    missing = write_parquet(
        tmp_path / "missing.parquet",
        accepted_table("us_east", DAY, [1]).drop_columns(["net_amount"]),
    )
    with pytest.raises(StagingError, match=r"missing column.*net_amount"):
        store.stage_dataset("sales", DAY, "us_east", BATCH, [missing])

    # columns in another order / extra columns are conformed to the staged schema
    shuffled = accepted_table("us_east", DAY, [1, 2])
    shuffled = shuffled.select(list(reversed(shuffled.column_names))).append_column(
        "debug", pa.array([1, 2])
    )
    files = store.stage_dataset(
        "sales", DAY, "us_east", BATCH, [write_parquet(tmp_path / "s.parquet", shuffled)]
    )
    assert pq.read_schema(store.root / files[0].key) == contract.accepted_arrow_schema()


def test_rejects_are_staged_like_sales(tmp_path: Path, store: LocalStagingStore) -> None:
    src = write_parquet(tmp_path / "r.parquet", reject_table("us_east", DAY, [1, None, 3]))
    rejects = store.stage_dataset("rejects", DAY, "us_east", BATCH, [src])
    assert rejects[0].key == (f"rejects/year=2024/month=01/day=15/region=us_east/{BATCH}-0.parquet")
    assert store.read_table([rejects[0].key]).column("sale_id").to_pylist() == [1, None, 3]


def test_names_are_validated(tmp_path: Path, store: LocalStagingStore) -> None:
    with pytest.raises(StagingError, match="batch id"):
        staged_file_key("sales", DAY, "us_east", "../../etc", 0)
    with pytest.raises(InvalidIdentifierError):
        partition_prefix("sales", DAY, "us-east; drop")
    with pytest.raises(StagingError, match="unknown staged table"):
        partition_prefix("orders", DAY, "us_east")  # type: ignore[arg-type]
    with pytest.raises(StagingError, match="outside the staging root"):
        store.local_path("../escape.parquet")


# --------------------------------------------------------------------------- S3 (moto server)


@pytest.mark.integration
def test_s3_store_through_the_s3bucket_block(tmp_path: Path, moto_endpoint: str) -> None:
    block = s3_bucket_block(moto_endpoint, "retail-staging-a")
    store = s3_staging_store(block, scratch_dir=tmp_path / "scratch")
    assert store.root_uri == "s3://retail-staging-a/staging/"

    src = write_parquet(tmp_path / "a.parquet", accepted_table("us_east", DAY, range(1, 11)))
    files = store.stage_dataset("sales", DAY, "us_east", BATCH, [src], target_file_rows=4)

    client = block.credentials.get_s3_client()
    listed = client.list_objects_v2(Bucket="retail-staging-a", Prefix="staging/")
    prefix = "staging/sales/year=2024/month=01/day=15/region=us_east/"
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"{prefix}{BATCH}-{n}.parquet" for n in range(3)
    ]
    assert {o["Size"] for o in listed["Contents"]} == {f.bytes for f in files}
    assert store.uri(files[0].key) == f"s3://retail-staging-a/{prefix}{BATCH}-0.parquet"
    # rows readable back through pyarrow's S3 filesystem (what DuckDB loads from)
    assert sorted_rows(store.read_table([f.key for f in files])) == sorted_rows(pq.read_table(src))

    # a newer batch: the older one stays until retention (resume); a rerun of the same batch
    # with fewer files removes its own stale ones
    other = store.stage_dataset(
        "sales",
        DAY,
        "europe",
        BATCH,
        [write_parquet(tmp_path / "e.parquet", accepted_table("europe", DAY, [1]))],
    )
    newer = "20240115_000000000bbb"
    latest = store.stage_dataset("sales", DAY, "us_east", newer, [src])
    again = store.stage_dataset("sales", DAY, "us_east", BATCH, [src])
    keys = sorted(
        o["Key"]
        for o in client.list_objects_v2(Bucket="retail-staging-a", Prefix="staging/")["Contents"]
    )
    staged = [*latest, *other, *again]
    assert keys == sorted(f"staging/{f.key}" for f in staged)
    # the checksum of the object's bytes as S3 holds them (read past the store)
    stored = client.get_object(Bucket="retail-staging-a", Key=f"staging/{files[0].key}")
    assert store.checksum(files[0].key) == hashlib.sha256(stored["Body"].read()).hexdigest()
    with pytest.raises(FileNotFoundError):
        store.checksum("sales/missing.parquet")
    # small objects (manifests) round-trip; a missing key reads as None
    store.write_bytes("manifests/x.json", b'{"a": 1}')
    assert store.read_bytes("manifests/x.json") == b'{"a": 1}'
    assert store.read_bytes("manifests/missing.json") is None
    assert list((tmp_path / "scratch").iterdir()) == []
