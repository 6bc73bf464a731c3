"""Scale-out: regions split into several extraction tasks, tasks on a Dask cluster, and the
staging fast path (transform output published without a rewrite)."""

from __future__ import annotations

from collections.abc import Iterator
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
from tests.plumbing import free_port, s3_bucket_block
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
    assert one.rows_retracted == three.rows_retracted > 0  # the seed's refunds, deletes, ...
    assert _rows(one.retraction_files) == _rows(three.retraction_files)


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


def _runner_copy_on_a_worker() -> tuple[bool, object, int]:
    """Run on a Dask worker: what Prefect does there with a flow's declared runner."""
    import tasks.runners as runners

    copy = runners.ConfiguredTaskRunner(max_workers=4).duplicate()
    with copy:
        inner = copy.inner
    try:
        runners.local_dask_address(1)
    except runners.TaskRunnerUnavailable as exc:
        refused = "only be started in the flow process" in str(exc)
    else:
        refused = False
    return refused, inner, len(runners._LOCAL_CLUSTERS)


@pytest.mark.integration
def test_nothing_on_a_worker_creates_a_runner_or_a_cluster(dask_cluster):
    import pickle

    from tasks.runners import ConfiguredTaskRunner

    _cluster, client = dask_cluster
    refused, inner, clusters = client.submit(_runner_copy_on_a_worker, pure=False).result()
    assert refused  # a local cluster cannot be started on a worker (daemonic process)
    assert inner is None and clusters == 0  # the entered copy resolved nothing
    # the flow's runner travels to workers unresolved, whatever it resolved here
    shipped = pickle.loads(pickle.dumps(ConfiguredTaskRunner(max_workers=3)))
    assert shipped.max_workers == 3 and shipped.inner is None


@pytest.mark.integration
def test_flow_on_a_multi_process_dask_cluster_with_s3_staging(
    small_env, dask_cluster, monkeypatch, moto_endpoint
):
    cluster, client = dask_cluster
    bucket = s3_bucket_block(moto_endpoint, "retail-dask")
    block_name = f"{small_env.prefix.replace('_', '-')}staging"
    bucket.save(block_name, overwrite=True)
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
    keys = bucket.list_objects("sales")
    assert {k["Key"].split("region=")[1].split("/")[0] for k in keys} == {"us_east", "europe"}


# --------------------------------------------------------------------------- Dask preflight


def test_dask_mode_without_a_prefect_api_url_says_what_to_set():
    from retail_etl.scaleout import prefect_api_problem

    problem = prefect_api_problem(None, 1.0)
    assert problem is not None
    assert "PREFECT_API_URL is not set" in problem
    assert "prefect server start" in problem and "RETAIL_ETL_TASK_RUNNER=threads" in problem


def test_a_prefect_api_that_does_not_answer_is_named():
    from retail_etl.scaleout import prefect_api_problem, worker_api_problem

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    problem = prefect_api_problem(url, 1.0)
    assert problem is not None and f"does not answer {url}/health" in problem
    on_worker = worker_api_problem(url, 1.0)
    assert on_worker is not None and f"cannot reach the run's Prefect API at {url}" in on_worker


def test_workers_problem_groups_workers_by_cause():
    from retail_etl.scaleout import workers_problem

    address = "tcp://127.0.0.1:8786"
    assert "has no workers" in (workers_problem(address, {}) or "")
    assert workers_problem(address, {"tcp://a": None, "tcp://b": None}) is None
    assert workers_problem(address, {"tcp://a": "down", "tcp://b": "down", "tcp://c": None}) == (
        "Dask worker(s) tcp://a, tcp://b: down"
    )


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment for ``retail-etl``: this session's, minus any Prefect API."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        RETAIL_ETL_STAGING_DIR=str(tmp_path / "staging"),
        RETAIL_ETL_DUCKDB_PATH=str(tmp_path / "warehouse.duckdb"),
    )
    env.update(extra)
    return env


def test_cli_refuses_dask_mode_without_a_prefect_api(tmp_path: Path):
    import subprocess

    from tests.prefect_server import BIN, REPO

    result = subprocess.run(
        [str(BIN / "retail-etl"), "run", "--date", DAY.isoformat()],
        cwd=REPO,
        env=_cli_env(tmp_path, RETAIL_ETL_TASK_RUNNER="dask", RETAIL_ETL_DASK_WORKERS="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "retail-etl: error: RETAIL_ETL_TASK_RUNNER=dask needs a Prefect API" in result.stderr
    assert "PREFECT_API_URL is not set" in result.stderr
    # refused before anything ran: no run directory, no warehouse
    assert not (tmp_path / "staging").exists() and not (tmp_path / "warehouse.duckdb").exists()


# --------------------------------------------------------------------------- runner failures


def _ledger(env) -> dict[str, tuple[str, str]]:
    return {
        region: (status, error)
        for region, status, error in env.warehouse(
            "SELECT region, status, error FROM etl_load_ledger WHERE business_date = ?", [DAY]
        )
    }


@pytest.mark.integration
def test_an_unreachable_scheduler_fails_the_run_with_ledger_rows_and_an_alert(
    small_env, etl_slack, monkeypatch
):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("RETAIL_ETL_TASK_RUNNER", "dask")
    monkeypatch.setenv("RETAIL_ETL_DASK_ADDRESS", address)
    monkeypatch.setenv("RETAIL_ETL_DASK_CONNECT_TIMEOUT_SECONDS", "2")

    state, summary = run_day(DAY)

    assert state.is_failed()
    cause = f"task runner unavailable: the Dask scheduler at {address} cannot be used"
    assert cause in state.message and "nothing loaded" in state.message
    assert {r: o.status for r, o in summary.regions.items()} == {
        "us_east": "extract_failed",
        "europe": "extract_failed",
    }
    ledger = _ledger(small_env)
    assert sorted(ledger) == ["europe", "us_east"]
    assert all(status == "extract_failed" and cause in error for status, error in ledger.values())
    assert not small_env.warehouse("SELECT * FROM sales_fact")
    text = etl_slack.wait_for(lambda t: cause in t, timeout=10)
    assert text is not None, etl_slack.texts


class _KillFirstExtract:
    """A Dask worker plugin (the seam): the worker that starts the first extraction task of
    the run dies on the spot, as a worker lost to the OOM killer or a machine would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def setup(self, worker) -> None:  # type: ignore[no-untyped-def]
        pass

    def teardown(self, worker) -> None:  # type: ignore[no-untyped-def]
        pass

    def transition(self, key, start, finish, **kwargs) -> None:  # type: ignore[no-untyped-def]
        import os

        if finish == "executing" and "extract_region_task" in str(key):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return  # only the first one
            os._exit(1)


@pytest.mark.integration
def test_a_lost_worker_fails_its_region_with_ledger_row_and_alert(
    small_env, etl_slack, monkeypatch, tmp_path
):
    import dask
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    plugin = type("KillFirstExtract", (_KillFirstExtract, WorkerPlugin), {})(tmp_path / "killed")
    # a task whose worker died fails at once instead of being retried on another worker
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster, set_as_default=False)
        try:
            client.register_plugin(plugin)
            monkeypatch.setenv("RETAIL_ETL_TASK_RUNNER", "dask")
            monkeypatch.setenv("RETAIL_ETL_DASK_ADDRESS", cluster.scheduler_address)

            state, summary = run_day(DAY)
        finally:
            client.close()
            cluster.close()

    assert (tmp_path / "killed").exists()  # the seam fired
    assert state.is_failed()
    lost = [r for r, o in summary.regions.items() if o.status == "extract_failed"]
    assert len(lost) == 1, {r: o.status for r, o in summary.regions.items()}
    (region,) = lost
    (other,) = {"us_east", "europe"} - {region}
    assert summary.regions[other].status == "loaded"
    assert "KilledWorker" in state.message and f"extraction failed for {region}" in state.message
    ledger = _ledger(small_env)
    assert ledger[region][0] == "extract_failed" and "KilledWorker" in ledger[region][1]
    assert ledger[other][0] == "loaded"
    assert small_env.fact(other, DAY) == [tuple(r) for r in small_env.expected_accepted(other, DAY)]
    text = etl_slack.wait_for(lambda t: "KilledWorker" in t, timeout=10)
    assert text is not None, etl_slack.texts


# --------------------------------------------------------------------------- through the CLI

DEMO_REGIONS = ["us_east", "us_west", "europe", "apac"]


def _warehouse_rows(path: Path) -> dict[str, list[tuple]]:
    """What a run leaves in the warehouse, minus what differs by run (batch, times)."""
    import duckdb

    from tests.pipeline import FACT_COLUMNS

    with duckdb.connect(str(path), read_only=True) as con:
        return {
            "fact": con.execute(
                f"SELECT region, {FACT_COLUMNS}, gross_amount, net_amount, "
                "effective_discount_rate FROM sales_fact ORDER BY region, sale_id"
            ).fetchall(),
            "rejects": con.execute(
                "SELECT region, sale_id, reasons, raw_values FROM sales_rejects ORDER BY ALL"
            ).fetchall(),
            "ledger": con.execute(
                "SELECT region, business_date, status, rows_extracted, rows_accepted, "
                "rows_rejected, rows_inserted, rows_updated FROM etl_load_ledger ORDER BY ALL"
            ).fetchall(),
        }


@pytest.fixture
def external_dask_cluster(prefect_server, tmp_path: Path) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers 2`` processes on 127.0.0.1, started as
    the README says; yields the scheduler address once both workers joined."""
    import subprocess

    from distributed import Client

    from tests.prefect_server import BIN, stop_group, tail

    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    env = prefect_server.env()
    commands = {
        "scheduler": [
            *(str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port),
            "--no-dashboard",
        ],
        "worker": [
            *(str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1"),
            *("--host", "127.0.0.1", "--no-dashboard", "--preload", "tasks.dask_preload"),
        ],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, command in commands.items():
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        try:
            with Client(address, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(2, timeout=90)
        except Exception:
            pytest.fail(
                f"the external Dask cluster did not come up:\n{tail(tmp_path / 'scheduler.log')}"
                f"\n{tail(tmp_path / 'worker.log')}"
            )
        yield address
    finally:
        for proc in reversed(procs):
            stop_group(proc)


@pytest.mark.server
@pytest.mark.xdist_group("prefect-server")  # the same worker as tests/test_server.py
def test_cli_runs_the_demo_day_on_both_dask_modes_to_the_same_rows_as_threads(
    prefect_server,
    external_dask_cluster,
    pg_server_url,
    unique_prefix,
    drop_prefixed_databases,
    tmp_path,
):
    """`retail-etl run` as a user runs it (default regions and settings, a real Prefect
    server): threads, the local cluster (no address) and an external cluster load the same."""
    import subprocess

    from retail_etl.seed import seed_regions
    from tests.prefect_server import BIN, REPO

    drop_prefixed_databases(unique_prefix)
    seed_regions(
        pg_server_url,
        DEMO_REGIONS,
        DAY,
        1,
        2_000,
        database_for_region=lambda r: f"{unique_prefix}{r}",
    )
    modes = {
        "threads": {},
        "dask-local": {"RETAIL_ETL_TASK_RUNNER": "dask", "RETAIL_ETL_DASK_WORKERS": "2"},
        "dask-external": {
            "RETAIL_ETL_TASK_RUNNER": "dask",
            "RETAIL_ETL_DASK_ADDRESS": external_dask_cluster,
        },
    }
    user = {  # the operator's configuration (unique names, so tests do not share blocks)
        "RETAIL_ETL_SOURCE_SERVER_URL": pg_server_url,
        "RETAIL_ETL_SOURCE_DATABASE_PREFIX": unique_prefix,
        "RETAIL_ETL_SOURCE_BLOCK_PREFIX": f"test-{unique_prefix.replace('_', '-')}",
        "RETAIL_ETL_SLACK_BLOCK": f"test-absent-{unique_prefix.replace('_', '-')}",
    }

    def retail_etl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "retail-etl"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    registered = retail_etl(["blocks", "register"], prefect_server.env(**user))
    assert registered.returncode == 0, registered.stdout + registered.stderr
    rows = {}
    for mode, extra in modes.items():
        run_dir = tmp_path / mode
        env = prefect_server.env(
            **user,
            RETAIL_ETL_STAGING_DIR=str(run_dir / "staging"),
            RETAIL_ETL_DUCKDB_PATH=str(run_dir / "warehouse.duckdb"),
            **extra,
        )
        result = retail_etl(["run", "--date", DAY.isoformat()], env)
        assert result.returncode == 0, f"{mode}:\n{result.stdout}\n{result.stderr[-4000:]}"
        assert "OK  2024-01-15: loaded 4 region(s)" in result.stdout, result.stdout
        rows[mode] = _warehouse_rows(run_dir / "warehouse.duckdb")

    baseline = rows["threads"]
    assert {r[0] for r in baseline["fact"]} == set(DEMO_REGIONS)
    assert baseline["rejects"] and len(baseline["ledger"]) == 4
    assert rows["dask-local"] == baseline
    assert rows["dask-external"] == baseline
