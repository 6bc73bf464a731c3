"""Scale-out: regions split into several extraction tasks, tasks on a Dask cluster, and the
staging fast path (transform output published without a rewrite)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retail_etl import contract
from retail_etl.extract import combine_splits, extract_region
from retail_etl.seed import seed_region
from retail_etl.staging import LocalStagingStore, StagingError, partition_prefix
from retail_etl.transform import transform_region
from tests.pipeline import run_day
from tests.sources import execute

DAY = date(2024, 1, 15)
BATCH = "20240115_00000000aaaa"


def _rows(files: list[Path]) -> list[dict]:
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return sorted(table.to_pylist(), key=lambda r: tuple(str(v) for v in r.values()))


@pytest.fixture
def seeded_region(pg_server_url: str, unique_prefix: str, drop_prefixed_databases) -> str:
    """A seeded region (2,000 rows of DAY) plus rows with a NULL and a negative sale_id."""
    from retail_etl.settings import database_url

    drop_prefixed_databases(unique_prefix)
    database = f"{unique_prefix}europe"
    seed_region(pg_server_url, database, "europe", DAY, 1, 2_000, seed=11)
    url = database_url(pg_server_url, database)
    for sale_id in ("NULL", "-7", "-8"):
        execute(
            url,
            "INSERT INTO sales SELECT " + sale_id + ", customer_id, store_id, product_id, "
            "quantity, unit_price, discount, tax, total_amount, sale_date, status, is_deleted, "
            "created_at, updated_at FROM sales WHERE status = 'completed' "
            "AND NOT is_deleted AND sale_date = %s LIMIT 1",
            (DAY,),
        )
    return url


def test_splits_partition_the_day_and_transform_identically(seeded_region: str, tmp_path: Path):
    whole = extract_region(seeded_region, "europe", DAY, tmp_path / "one" / "extract")
    parts = [
        extract_region(
            seeded_region, "europe", DAY, tmp_path / "three" / "extract", split=k, splits=3
        )
        for k in range(3)
    ]
    combined = combine_splits(parts)

    assert all(p.rows > 0 for p in parts)  # every split got work
    assert combined.rows == whole.rows == sum(p.rows for p in parts)
    assert combined.schema_fingerprint == whole.schema_fingerprint
    assert _rows(combined.files) == _rows(whole.files)  # each row once, NULL/negative ids too
    ids = [{r["sale_id"] for r in _rows(p.files)} for p in parts]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert None in ids[0]  # NULL sale_id goes to split 0

    results = [
        transform_region(
            files,
            region="europe",
            business_date=DAY,
            batch_id=BATCH,
            flow_run_id="f",
            out_dir=tmp_path / name,
        )
        for name, files in (("one", whole.files), ("three", combined.files))
    ]
    one, three = results
    assert (one.rows_accepted, one.rows_rejected, one.reasons) == (
        three.rows_accepted,
        three.rows_rejected,
        three.reasons,
    )
    assert _rows(one.accepted_files) == _rows(three.accepted_files)
    assert _rows(one.reject_files) == _rows(three.reject_files)


def test_splits_of_a_drifted_text_sale_id_use_a_hash(seeded_region: str, tmp_path: Path):
    execute(seeded_region, "ALTER TABLE sales ALTER COLUMN sale_id TYPE text")
    whole = extract_region(seeded_region, "europe", DAY, tmp_path / "one")
    parts = [
        extract_region(seeded_region, "europe", DAY, tmp_path / "two", split=k, splits=2)
        for k in range(2)
    ]
    assert "sale_id" in whole.cast_columns
    assert _rows(combine_splits(parts).files) == _rows(whole.files)


def test_split_settings_are_validated(monkeypatch):
    from retail_etl.settings import get_settings

    monkeypatch.setenv("RETAIL_ETL_EXTRACT_SPLITS", "2")
    monkeypatch.setenv("RETAIL_ETL_EXTRACT_SPLITS_BY_REGION", '{"us_east": 4}')
    settings = get_settings(fresh=True)
    assert settings.extract_splits_for("us_east") == 4
    assert settings.extract_splits_for("apac") == 2
    monkeypatch.setenv("RETAIL_ETL_EXTRACT_SPLITS_BY_REGION", '{"us_east": 0}')
    with pytest.raises(ValueError, match="us_east"):
        get_settings(fresh=True).extract_splits_for("us_east")


# --------------------------------------------------------------------------- staging fast path


def _accepted(region: str, ids: range) -> pa.Table:
    schema = contract.accepted_arrow_schema()
    columns = {f.name: pa.nulls(len(ids), f.type) for f in schema}
    columns["region"] = pa.array([region] * len(ids), pa.string())
    columns["sale_id"] = pa.array(list(ids), pa.int64())
    return pa.table(columns, schema=schema)


def test_conforming_transform_output_is_published_without_a_rewrite(tmp_path: Path):
    store = LocalStagingStore(tmp_path / "store")
    source = tmp_path / "part-0.parquet"
    pq.write_table(_accepted("us_east", range(10)), source)

    (staged,) = store.stage_dataset("sales", DAY, "us_east", BATCH, [source], target_file_rows=100)

    target = store.root / staged.key
    assert target.stat().st_ino == source.stat().st_ino  # a hard link: no bytes rewritten
    assert staged.rows == 10 and source.exists()
    assert store.list_keys(partition_prefix("sales", DAY, "us_east")) == [staged.key]


def test_files_that_do_not_conform_take_the_checked_rewrite(tmp_path: Path):
    store = LocalStagingStore(tmp_path / "store")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(_accepted("europe", range(3)), foreign)
    with pytest.raises(StagingError, match="do not belong to region 'us_east'"):
        store.stage_dataset("sales", DAY, "us_east", BATCH, [foreign])

    big = tmp_path / "big.parquet"
    pq.write_table(_accepted("us_east", range(10)), big)
    files = store.stage_dataset("sales", DAY, "us_east", BATCH, [big], target_file_rows=4)
    assert [f.rows for f in files] == [4, 4, 2]
    assert all((store.root / f.key).stat().st_ino != big.stat().st_ino for f in files)


# --------------------------------------------------------------------------- flows


@pytest.fixture
def small_env(etl_env, monkeypatch):
    monkeypatch.setenv("RETAIL_ETL_REGIONS", "us_east,europe")
    etl_env.regions = ["us_east", "europe"]
    etl_env.seed(rows=1_500)
    return etl_env


def _assert_loaded_exactly(env) -> None:
    for region in env.regions:
        expected = env.expected_accepted(region, DAY)
        assert env.fact(region, DAY) == [tuple(r) for r in expected]


@pytest.mark.integration
def test_flow_with_split_regions_loads_what_one_task_per_region_loads(small_env, monkeypatch):
    monkeypatch.setenv("RETAIL_ETL_EXTRACT_SPLITS", "3")
    monkeypatch.setenv("RETAIL_ETL_EXTRACT_SPLITS_BY_REGION", '{"europe": 2}')
    monkeypatch.setenv("RETAIL_ETL_MAX_CONCURRENT_EXTRACTS", "2")  # 5 tasks, 2 at a time
    monkeypatch.setenv("RETAIL_ETL_KEEP_RUN_DIR", "true")  # to look at the extract parts
    state, _summary = run_day(DAY)
    assert state.is_completed(), state.message
    _assert_loaded_exactly(small_env)
    extract_dir = next((small_env.tmp / "staging" / "runs").glob("*/*/extract"))
    assert sorted(p.name for p in (extract_dir / "region=us_east").iterdir()) == [
        "split=0",
        "split=1",
        "split=2",
    ]
    assert len(list((extract_dir / "region=europe").iterdir())) == 2


@pytest.fixture
def dask_cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = Client(cluster)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()


@pytest.mark.integration
def test_flow_on_a_multi_process_dask_cluster_with_s3_staging(small_env, dask_cluster, monkeypatch):
    from tests.test_staging import s3_bucket_block, start_moto

    cluster, client = dask_cluster
    server, endpoint = start_moto()
    try:
        block_name = f"{small_env.prefix.replace('_', '-')}staging"
        s3_bucket_block(endpoint, "retail-dask").save(block_name, overwrite=True)
        monkeypatch.setenv("RETAIL_ETL_STAGING_STORE", "s3")
        monkeypatch.setenv("RETAIL_ETL_S3_BUCKET_BLOCK", block_name)
        monkeypatch.setenv("RETAIL_ETL_TASK_RUNNER", "dask")
        monkeypatch.setenv("RETAIL_ETL_DASK_ADDRESS", cluster.scheduler_address)
        monkeypatch.setenv("RETAIL_ETL_EXTRACT_SPLITS", "2")

        state, _summary = run_day(DAY)

        assert state.is_completed(), state.message
        _assert_loaded_exactly(small_env)
        # the tasks ran in the worker processes, not in this one
        processed = client.run(lambda dask_worker: dask_worker.state.transition_counter)
        assert len(processed) == 2 and sum(processed.values()) > 0
        keys = s3_bucket_block(endpoint, "retail-dask").list_objects("sales")
        assert {k["Key"].split("region=")[1].split("/")[0] for k in keys} == {"us_east", "europe"}
    finally:
        server.stop()
