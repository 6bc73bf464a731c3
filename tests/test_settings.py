"""Settings: names derived from regions are checked when the settings are read."""

from __future__ import annotations

from datetime import date

import pytest

from retail_etl.run import new_batch_id
from retail_etl.settings import (
    DEFAULT_REGIONS,
    MAX_REGION_LENGTH,
    InvalidIdentifierError,
    Settings,
    SettingsError,
    load_registration_settings,
    load_settings,
)
from retail_etl.warehouse.sql import stage_table_name


def test_default_regions_get_valid_distinct_block_names():
    settings = Settings()
    names = [settings.source_block_name(region) for region in DEFAULT_REGIONS]
    assert names == [
        "sales-source-us-east",
        "sales-source-us-west",
        "sales-source-europe",
        "sales-source-apac",
    ]


def test_block_names_stay_unique_for_underscored_regions():
    settings = Settings(RETAIL_ETL_REGIONS="a_b_c,ab_c,a_bc,abc")
    names = {settings.source_block_name(region) for region in settings.regions}
    assert len(names) == 4


def test_max_region_length_matches_the_longest_stage_table_name():
    batch = new_batch_id(date(2024, 1, 15))
    longest = "r" * MAX_REGION_LENGTH
    assert len(stage_table_name("rejects", batch, longest)) == 63
    with pytest.raises(InvalidIdentifierError):
        stage_table_name("rejects", batch, longest + "r")


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("RETAIL_ETL_REGIONS", "us_east,Europe", "region 'Europe'"),
        ("RETAIL_ETL_REGIONS", "us_east," + "x" * (MAX_REGION_LENGTH + 1), "characters long"),
        ("RETAIL_ETL_SOURCE_BLOCK_PREFIX", "Sales_", "source block name of region us_east"),
        ("RETAIL_ETL_SLACK_BLOCK", "retail_etl_slack", "RETAIL_ETL_SLACK_BLOCK"),
        ("RETAIL_ETL_SOURCE_DATABASE_PREFIX", "retail-", "database 'retail-us_east'"),
        ("RETAIL_ETL_CREDENTIALS", "vault", "credentials"),
    ],
)
def test_bad_configuration_fails_at_start_up_naming_the_setting(
    monkeypatch, variable, value, named
):
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("RETAIL_ETL_SLACK_WEBHOOK_URL", "https://hooks.example/T0/B0/very-secret")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert named in str(raised.value)
    assert "very-secret" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_explicit_source_url_skips_the_default_database_name(monkeypatch):
    monkeypatch.setenv("RETAIL_ETL_SOURCE_DATABASE_PREFIX", "retail-")
    for region in DEFAULT_REGIONS:
        monkeypatch.setenv(f"RETAIL_ETL_SOURCE_URL_{region.upper()}", "postgresql+psycopg2://h/db")
    assert load_settings().regions == list(DEFAULT_REGIONS)


def test_dev_keeps_todays_names_and_other_environments_prefix_them(monkeypatch):
    dev = Settings()
    assert dev.env == "dev"
    assert (dev.source_block_name("us_east"), dev.slack_block, dev.artifact_key("summary-x")) == (
        "sales-source-us-east",
        "retail-etl-slack",
        "summary-x",
    )
    monkeypatch.setenv("RETAIL_ETL_ENV", "prod")
    monkeypatch.setenv("RETAIL_ETL_SLACK_BLOCK", "team-slack")
    prod = load_settings()
    assert prod.source_block_name("us_east") == "prod-sales-source-us-east"
    assert (prod.s3_bucket_block, prod.snowflake_block, prod.slack_block) == (
        "prod-retail-etl-staging",
        "prod-retail-etl-warehouse",
        "prod-team-slack",
    )
    assert prod.artifact_key("summary-2024-01-15") == "prod-summary-2024-01-15"


@pytest.mark.parametrize("value", ["production", "PROD-1", ""])
def test_an_unknown_environment_is_refused_naming_the_choices(monkeypatch, value):
    monkeypatch.setenv("RETAIL_ETL_ENV", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert f"RETAIL_ETL_ENV must be one of dev, staging, prod, got {value!r}" in str(info.value)


REGISTRATION_SECRETS = {
    "RETAIL_ETL_AWS_SECRET_ACCESS_KEY": "aws-very-secret",
    "RETAIL_ETL_SNOWFLAKE_PASSWORD": "snowflake-very-secret",
    "RETAIL_ETL_SLACK_WEBHOOK_URL": "https://hooks.example/T0/B0/slack-very-secret",
}


def test_registration_secrets_are_read_apart_from_the_run_settings(monkeypatch):
    for variable, value in REGISTRATION_SECRETS.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("RETAIL_ETL_SNOWFLAKE_ACCOUNT", "acme-xy12345")

    stored = load_registration_settings()
    assert stored.aws_secret_access_key is not None and stored.snowflake_password is not None
    assert stored.aws_secret_access_key.get_secret_value() == "aws-very-secret"
    assert stored.snowflake_password.get_secret_value() == "snowflake-very-secret"
    assert stored.snowflake_account == "acme-xy12345"
    # what flows and tasks get holds none of it, not even masked
    run_settings = load_settings().model_dump_json()
    assert "very-secret" not in run_settings and "acme-xy12345" not in run_settings
    assert not set(type(stored).model_fields) & set(Settings.model_fields)
