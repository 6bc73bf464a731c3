"""The parent flow's extraction stage under a real (ephemeral) Prefect API."""

from __future__ import annotations

import threading
from datetime import date

from retail_etl.settings import database_url
from tests.pipeline import run_day
from tests.sources import create_sales, sale

DAY = date(2024, 1, 15)
REGIONS = ["us_east", "us_west", "europe", "apac"]


def test_regions_extract_at_once_and_each_is_transformed_as_soon_as_it_lands(
    prefect_api, etl_env, make_database, monkeypatch
):
    """Told by events, not seconds: us_east's transform starts while the three other regions
    are still extracting, all three at once (each waits inside its extraction until then)."""
    import tasks.extract
    import tasks.transform

    for region in REGIONS:
        url = make_database(region)
        etl_env.point_source(region, url)
        create_sales(url, [sale(i) for i in range(1, 151)])  # over the gate's minimum
    slow = set(REGIONS) - {"us_east"}
    changed = threading.Condition()
    extracting: set[str] = set()  # slow regions inside their extraction, waiting
    transformed_first = threading.Event()
    seen: dict[str, set[str] | bool] = {}
    real_extract, real_transform = tasks.extract.extract_region, tasks.transform.transform_regions

    def extract_region(url, region, *args, **kwargs):  # type: ignore[no-untyped-def]
        if region in slow:
            with changed:
                extracting.add(region)
                changed.notify_all()
            # bounded: without the overlap, us_east's transform never comes first
            seen[region] = transformed_first.wait(timeout=60)
        return real_extract(url, region, *args, **kwargs)

    def transform_regions(extracts, **kwargs):  # type: ignore[no-untyped-def]
        if "us_east" in extracts:
            with changed:
                changed.wait_for(lambda: extracting == slow, timeout=60)
                seen["extracting"] = set(extracting)
            transformed_first.set()
        return real_transform(extracts, **kwargs)

    monkeypatch.setattr(tasks.extract, "extract_region", extract_region)
    monkeypatch.setattr(tasks.transform, "transform_regions", transform_regions)

    state, summary = run_day(DAY)

    assert state.is_completed(), state.message
    assert seen == {"extracting": slow, **dict.fromkeys(slow, True)}
    assert {r: o.rows_extracted for r, o in summary.regions.items()} == dict.fromkeys(REGIONS, 150)
    assert {r: o.status for r, o in summary.regions.items()} == dict.fromkeys(REGIONS, "loaded")


def test_failed_regions_are_named_retried_and_do_not_stop_the_others(
    prefect_api, etl_env, make_database, monkeypatch, pg_server_url
):
    monkeypatch.setenv("RETAIL_ETL_RETRIES", "2")  # three attempts
    healthy = ["us_east", "us_west"]
    for region in healthy:
        url = make_database(region)
        etl_env.point_source(region, url)
        create_sales(url, [sale(i) for i in range(1, 4)])
    etl_env.point_source(
        "europe", "postgresql+psycopg2://postgres:not-a-real-secret@127.0.0.1:1/gone"
    )
    empty = make_database("apac")  # reachable, but the sales table is missing
    etl_env.point_source("apac", empty)

    state, summary = run_day(DAY)

    assert state.is_failed()
    assert "europe" in state.message and "apac" in state.message
    assert "not-a-real-secret" not in state.message
    europe, apac = summary.regions["europe"], summary.regions["apac"]
    assert europe.status == apac.status == "extract_failed"
    assert "region europe, 2024-01-15" in europe.error and "(after 3 attempt(s))" in europe.error
    assert "table sales does not exist" in apac.error and "(after 3 attempt(s))" in apac.error
    for region in healthy:
        assert summary.regions[region].rows_extracted == 3
        assert summary.regions[region].status != "extract_failed"


def test_unknown_region_parameter_is_refused(prefect_api, etl_env):
    state, result = run_day(DAY, ["mars"])
    assert state.is_failed()
    assert "unknown region(s) mars" in str(result)


def test_blocks_register_the_default_regions_and_load_without_printing_secrets(
    prefect_api, etl_env, monkeypatch, capsys
):
    from prefect_sqlalchemy import SqlAlchemyConnector

    from blocks.sources import load_source_url
    from cli.main import main
    from retail_etl.settings import get_settings

    urls = {
        region: database_url(
            "postgresql+psycopg2://etl:s3cr3t-pw@db.internal:6543/postgres", f"sales_{region}"
        )
        for region in REGIONS
    }
    for region, url in urls.items():
        monkeypatch.setenv(f"RETAIL_ETL_SOURCE_URL_{region.upper()}", url)

    assert main(["blocks", "register"]) == 0
    out = capsys.readouterr().out
    for name in ("us-east", "us-west", "europe", "apac"):
        assert f"saved SqlAlchemyConnector sales-source-{name}\n" in out
    assert "s3cr3t-pw" not in out

    for region in REGIONS:
        monkeypatch.delenv(f"RETAIL_ETL_SOURCE_URL_{region.upper()}")
    loaded, origin = load_source_url("us_east", get_settings(fresh=True))
    assert origin == "block sales-source-us-east"
    assert loaded.get_secret_value() == urls["us_east"]
    assert "s3cr3t-pw" not in repr(loaded) and "s3cr3t-pw" not in str(loaded)
    assert "s3cr3t-pw" not in repr(SqlAlchemyConnector.load("sales-source-us-east"))


def test_a_missing_source_block_fails_its_region_naming_the_block(prefect_api, etl_env):
    from prefect_sqlalchemy import SqlAlchemyConnector

    etl_env.seed(rows=300)
    SqlAlchemyConnector.delete("sales-source-us-west")
    # The environment would point at a healthy database: a server run must not silently use it.
    etl_env.monkeypatch.setenv("RETAIL_ETL_SOURCE_URL_US_WEST", etl_env.source_url("us_west"))

    state, summary = run_day(DAY)

    assert state.is_failed()
    us_west = summary.regions["us_west"]
    assert us_west.status == "extract_failed"
    assert "source block 'sales-source-us-west' (SqlAlchemyConnector) not found" in us_west.error
    assert "(after 1 attempt(s))" in us_west.error  # not retried: it will not fix itself
    assert {r for r, o in summary.regions.items() if o.status == "loaded"} == {
        "us_east",
        "europe",
        "apac",
    }


def test_env_credentials_read_the_environment_and_ignore_blocks(prefect_api, etl_env):
    from blocks.sources import load_source_url
    from retail_etl.settings import get_settings

    etl_env.point_source("europe", "postgresql+psycopg2://postgres@127.0.0.1:1/somewhere_else")
    etl_env.monkeypatch.setenv("RETAIL_ETL_CREDENTIALS", "env")
    etl_env.monkeypatch.delenv("RETAIL_ETL_SOURCE_URL_EUROPE")
    etl_env.monkeypatch.setenv("RETAIL_ETL_SOURCE_URL_APAC", etl_env.source_url("apac"))
    settings = get_settings(fresh=True)

    europe, origin = load_source_url("europe", settings)
    assert origin == f"local default database {etl_env.prefix}europe"
    assert europe.get_secret_value() == etl_env.source_url("europe")
    assert load_source_url("apac", settings)[1] == "RETAIL_ETL_SOURCE_URL_APAC"


def test_a_region_that_fails_to_transform_fails_alone(prefect_api, etl_env, monkeypatch):
    """Regions that land together share a transform task; one region's bad data fails only
    that region, named, and the others load."""
    import tasks.transform
    from retail_etl.transform import ReconciliationError

    etl_env.seed(rows=300)
    real_transform = tasks.transform.transform_regions

    def transform_regions(extracts, **kwargs):  # type: ignore[no-untyped-def]
        others = {r: files for r, files in extracts.items() if r != "europe"}
        results, errors = real_transform(others, **kwargs)
        if "europe" in extracts:
            errors["europe"] = ReconciliationError("region europe: 1 row unaccounted for")
        return results, errors

    monkeypatch.setattr(tasks.transform, "transform_regions", transform_regions)

    state, summary = run_day(DAY)

    assert state.is_failed()
    europe = summary.regions["europe"]
    assert europe.status == "transform_failed"
    assert europe.error == "ReconciliationError: region europe: 1 row unaccounted for"
    others = {r: o.status for r, o in summary.regions.items() if r != "europe"}
    assert others == dict.fromkeys(set(REGIONS) - {"europe"}, "loaded")
