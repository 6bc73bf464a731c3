"""Every setting and default of the pipeline, in one place.

Values come from environment variables prefixed ``RETAIL_ETL_`` (see README, "Configuration").
Nothing else in the code reads the environment for configuration.

Two classes: :class:`Settings`, what a run reads (it travels with flows and tasks), and
:class:`RegistrationSettings`, the credentials only ``retail-etl blocks register`` reads to
store them in blocks; they are never part of a run's settings.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar, get_args
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REGIONS: tuple[str, ...] = ("us_east", "us_west", "europe", "apac")
#: Deployment environments (``RETAIL_ETL_ENV``). ``dev`` keeps the unprefixed block names and
#: artifact keys of installs made before environments existed; the others prefix them.
Environment = Literal["dev", "staging", "prod"]
ENVIRONMENTS: tuple[str, ...] = get_args(Environment)
#: Snowflake's WAREHOUSE_SIZE values (the load may resize its warehouse to one of them).
SnowflakeWarehouseSize = Literal[
    "XSMALL", "SMALL", "MEDIUM", "LARGE", "XLARGE", "XXLARGE", "XXXLARGE", "X4LARGE"
]
IDENTIFIER_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DEFAULT_SERVER_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
# Prefect block document names: lowercase letters, digits and dashes only.
BLOCK_NAME_PATTERN = re.compile(r"^[a-z0-9-]+$")
# The longest derived identifier is the stage table ``stg_rejects_<YYYYMMDD_12hex>_<region>``
# (retail_etl.warehouse.sql.stage_table_name), held to 63 characters like every identifier.
MAX_REGION_LENGTH = 63 - len("stg_rejects_") - len("20240115_0123456789ab") - len("_")


class SettingsError(ValueError):
    """The RETAIL_ETL_* configuration is invalid; the message names each bad setting."""


#: Where each default region's business day is counted (README, "The right day, closed").
DEFAULT_REGION_TIMEZONES: dict[str, str] = {
    "us_east": "America/New_York",
    "us_west": "America/Los_Angeles",
    "europe": "Europe/London",
    "apac": "Asia/Singapore",
}


class InvalidIdentifierError(ValueError):
    """A region, table or database name that is not a safe SQL identifier."""


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a lower-case SQL identifier; raise otherwise.

    Regions end up in database names, file paths and SQL, so they are held to
    ``[a-z][a-z0-9_]*`` (max 63 chars, PostgreSQL's limit).
    """
    if not IDENTIFIER_PATTERN.fullmatch(name):
        raise InvalidIdentifierError(
            f"{what} {name!r} is not a valid identifier: use lower-case letters, digits and "
            "underscores, starting with a letter (at most 63 characters)"
        )
    return name


def validate_block_name(name: str, what: str = "block name") -> str:
    """Return ``name`` if Prefect accepts it as a block document name; raise otherwise."""
    if not BLOCK_NAME_PATTERN.fullmatch(name):
        raise InvalidIdentifierError(
            f"{what} {name!r} is not a valid Prefect block name: use lower-case letters, digits "
            "and dashes"
        )
    return name


class Settings(BaseSettings):
    """Pipeline configuration; each field maps to ``RETAIL_ETL_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="RETAIL_ETL_", extra="ignore")

    env: Environment = Field(
        default="dev",
        description="Deployment environment: dev, staging or prod. Block names and artifact "
        "keys of staging and prod start with '<env>-'; dev keeps the plain names.",
    )

    regions_csv: str = Field(
        default=",".join(DEFAULT_REGIONS),
        validation_alias="RETAIL_ETL_REGIONS",
        description="Comma-separated regions to process.",
    )
    timezone: str = Field(
        default="UTC",
        description="Timezone of the schedule: the default run_date is the day before the flow "
        "run's scheduled start time, in this zone; also the zone of a region without one.",
    )
    region_timezones: str = Field(
        default="{}",
        description="JSON: region -> IANA timezone its business day is counted in, over "
        'DEFAULT_REGION_TIMEZONES, e.g. {"europe": "Europe/Berlin"}.',
    )
    close_grace_minutes: int = Field(
        default=60,
        ge=0,
        description="A region's business day is extracted only this long after it ended in the "
        "region's timezone; before that the region is deferred.",
    )
    lookback_days: int = Field(
        default=3,
        ge=0,
        le=31,
        description="The daily run re-checks this many days before run_date and reprocesses the "
        "(region, date) pairs whose source changed since their load, or left deferred or failed.",
    )
    source_database_prefix: str = Field(
        default="retail_",
        description="Default source database name is <prefix><region> on the server below.",
    )
    source_server_url: SecretStr = Field(
        default=SecretStr(DEFAULT_SERVER_URL),
        description="Server used for default source URLs and by `retail-etl seed`.",
    )
    staging_dir: Path = Field(default=Path("data/staging"), description="Local staging root.")
    duckdb_path: Path = Field(
        default=Path("data/warehouse.duckdb"), description="Embedded warehouse file."
    )
    warehouse: Literal["duckdb", "snowflake"] = "duckdb"
    staging_store: Literal["local", "s3"] = "local"

    retries: int = Field(default=2, ge=0, description="Extraction retries per region.")
    # Time bounds: a hung source fails its region within these, and the others go on.
    source_connect_timeout_seconds: int = Field(
        default=10, gt=0, description="TCP connect + PostgreSQL start-up handshake of a source."
    )
    source_statement_timeout_seconds: int = Field(
        default=900,
        gt=0,
        description="Longest source statement (a region's COPY: ~2 s per 500K rows here).",
    )
    source_keepalive_idle_seconds: int = Field(
        default=30, gt=0, description="TCP keepalive: a silent peer is probed after this."
    )
    warehouse_lock_timeout_seconds: float = Field(
        default=1800,
        ge=0,
        description="How long a writer waits for a DuckDB file held by another process.",
    )
    zombie_after_seconds: float = Field(
        default=200,
        ge=60,
        description="A run without a heartbeat for this long is marked Crashed (automation); "
        "deployments beat every 60 s.",
    )
    staging_retention_days: int = Field(
        default=14,
        ge=0,
        description="Staged batches older than this are deleted (0: keep); long enough to resume.",
    )
    keep_run_dir: bool = Field(
        default=False,
        description="Debugging: leave a run's scratch folder in place when it ends (the next "
        "run's sweep removes it).",
    )
    stale_stage_table_hours: float = Field(
        default=6, gt=0, description="A stg_* table older than this was left by a killed load."
    )
    extract_timeout_seconds: float = Field(
        default=1800,
        gt=0,
        description="Longest extraction attempt: one still streaming past it fails (and is "
        "retried like any failure).",
    )
    retry_base_seconds: float = Field(default=300.0, ge=0, description="Exponential backoff base.")
    retry_jitter_factor: float = Field(default=0.2, ge=0)
    chunk_rows: int = Field(default=250_000, gt=0, description="Rows per streamed extract chunk.")
    max_concurrent_extracts: int = Field(
        default=8, gt=0, description="Extraction tasks (regions or splits) running at once."
    )
    extract_splits: int = Field(
        default=1,
        gt=0,
        le=64,
        description="Extraction tasks per region (sale_id hash ranges); 1 = one task per region.",
    )
    extract_splits_by_region: str = Field(
        default="{}",
        description='JSON: region -> extraction tasks, overriding extract_splits, e.g. {"us_east": 4}.',
    )
    task_runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="Where per-region / per-split tasks run: local threads, or a Dask cluster.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786); unset with "
        "task_runner=dask: a local cluster of dask_workers processes, one per run process.",
    )
    dask_workers: int = Field(default=2, gt=0, description="Workers of the local Dask cluster.")
    dask_connect_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Dask mode: how long to wait for the scheduler, the local cluster's "
        "workers and each Prefect API health check before the run fails.",
    )

    # Quality gate thresholds (documented in README, "Quality gate").
    min_rows_per_region: int = Field(default=100, ge=0)
    min_rows_per_batch: int = Field(default=100, ge=0)
    max_null_share: float = Field(default=0.05, ge=0, le=1)
    max_reject_rate: float = Field(default=0.05, ge=0, le=1)
    history_days: int = Field(default=28, gt=0, description="Look-back for the volume check.")
    history_min_points: int = Field(default=3, gt=0)
    history_warn_deviation: float = Field(default=0.3, ge=0)
    history_fail_deviation: float = Field(default=0.5, ge=0)
    history_fail_mode: Literal["fail", "warn"] = "fail"
    max_missing_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Quality gate: largest share of the keys sales_fact holds for a region's "
        "day that may be missing from the source (and so be retracted as missing_from_source).",
    )
    duckdb_memory_limit: str = Field(
        default="400MB",
        description="DuckDB memory cap for transform and load (spills to disk past it). The "
        "process peaks at about this plus 0.5 GB (Prefect, pyarrow): 0.86-0.88 GB for a 20M-row "
        "day (640MB: 1.14 GB, in the same time within the machine's noise).",
    )
    duckdb_threads: int = Field(default=2, gt=0)
    transform_pass_rows: int = Field(
        default=500_000,
        gt=0,
        description="Small regions that land together are transformed in one DuckDB pass of up "
        "to this many rows (capped at target_file_rows); a larger region runs alone.",
    )
    target_file_rows: int = Field(
        default=2_000_000, gt=0, description="Max rows per staged parquet file."
    )

    column_aliases: str = Field(
        default="{}",
        description='JSON: contract column -> accepted source names, e.g. {"customer_id": ["customer_uuid"]}.',
    )

    # Blocks (names of Prefect blocks the pipeline loads).
    credentials: Literal["auto", "blocks", "env"] = Field(
        default="auto",
        description=(
            "Where region sources come from: 'blocks' (a missing block fails its region), "
            "'env' (RETAIL_ETL_SOURCE_URL_<REGION> or the local default), 'auto' (blocks when "
            "a Prefect API URL is configured, env for the in-process ephemeral API)."
        ),
    )
    # Base names; the environment's prefix is added by the properties of the same names
    # without ``_base`` (``prod-retail-etl-slack``), so two environments share one Prefect API.
    source_block_prefix: str = "sales-source-"
    s3_bucket_block_base: str = Field(
        default="retail-etl-staging", validation_alias="RETAIL_ETL_S3_BUCKET_BLOCK"
    )
    snowflake_block_base: str = Field(
        default="retail-etl-warehouse", validation_alias="RETAIL_ETL_SNOWFLAKE_BLOCK"
    )
    slack_block_base: str = Field(
        default="retail-etl-slack", validation_alias="RETAIL_ETL_SLACK_BLOCK"
    )

    snowflake_login_timeout_seconds: int = Field(
        default=60, gt=0, description="Snowflake login bound."
    )
    snowflake_statement_timeout_seconds: int = Field(
        default=3600,
        gt=0,
        description="Snowflake STATEMENT_TIMEOUT_IN_SECONDS and LOCK_TIMEOUT of a run's sessions "
        "(a load's LOCK_TIMEOUT: snowflake_load_lock_timeout_seconds).",
    )
    load_transaction_rows: int = Field(
        default=2_000_000,
        gt=0,
        description="Regions of a batch share one load transaction up to this many staged rows "
        "(a region above it has its own): one transaction per batch of small regions, without "
        "one huge transaction on a large day.",
    )
    # A region's load (its whole transaction) under contention: bounded retries with backoff.
    load_attempts: int = Field(
        default=3,
        ge=1,
        description="Attempts of a region's load transaction when it fails on a lock timeout "
        "or a transient warehouse error (1: no retry).",
    )
    load_retry_delay_seconds: float = Field(
        default=30,
        ge=0,
        description="Pause before the second attempt of a region's load; doubled each attempt.",
    )
    snowflake_load_lock_timeout_seconds: int = Field(
        default=600,
        gt=0,
        description="Snowflake LOCK_TIMEOUT during a load: a MERGE waiting this long for a "
        "lock fails and is retried (RETAIL_ETL_LOAD_ATTEMPTS).",
    )
    snowflake_load_warehouse: str | None = Field(
        default=None,
        description="Snowflake warehouse the load runs on (USE WAREHOUSE), separate from "
        "analytics; default: the block's warehouse.",
    )
    snowflake_load_warehouse_size: SnowflakeWarehouseSize | None = Field(
        default=None,
        description="Resize the load's warehouse to this for the load and restore its "
        "previous size after (also on failure).",
    )
    snowflake_storage_integration: str | None = Field(
        default=None,
        description="Snowflake storage integration the stage reaches S3 through (no AWS keys "
        "in SQL); without one, the stage must exist already.",
    )

    @field_validator("env", mode="before")
    @classmethod
    def _known_environment(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ENVIRONMENTS:
            return value.strip().lower()
        raise ValueError(f"RETAIL_ETL_ENV must be one of {', '.join(ENVIRONMENTS)}, got {value!r}")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        ZoneInfo(value)  # raises for unknown zones
        return value

    @model_validator(mode="after")
    def _derived_names_are_valid(self) -> Settings:
        """Fail at start-up, not at load time, on a region whose derived names cannot work."""
        for region in self.regions:
            if len(region) > MAX_REGION_LENGTH:
                raise InvalidIdentifierError(
                    f"region {region!r} is {len(region)} characters long; at most "
                    f"{MAX_REGION_LENGTH} fit the warehouse stage table names"
                )
            self.source_block_name(region)
            if not os.environ.get(self.source_url_variable(region)):
                self.source_database(region)
            self.region_timezone(region)
        for what in ("s3_bucket_block", "snowflake_block", "slack_block"):
            validate_block_name(getattr(self, what), f"RETAIL_ETL_{what.upper()}")
        return self

    @property
    def env_prefix(self) -> str:
        """``''`` for dev, ``'<env>-'`` otherwise: the start of block names and artifact keys."""
        return "" if self.env == "dev" else f"{self.env}-"

    @property
    def s3_bucket_block(self) -> str:
        return self.env_prefix + self.s3_bucket_block_base

    @property
    def snowflake_block(self) -> str:
        return self.env_prefix + self.snowflake_block_base

    @property
    def slack_block(self) -> str:
        return self.env_prefix + self.slack_block_base

    def artifact_key(self, key: str) -> str:
        """A Prefect artifact key in this environment: ``summary-2024-01-15`` is
        ``prod-summary-2024-01-15`` in prod."""
        return self.env_prefix + key

    @property
    def regions(self) -> list[str]:
        names = [part.strip() for part in self.regions_csv.split(",") if part.strip()]
        if not names:
            raise ValueError("RETAIL_ETL_REGIONS is empty: configure at least one region")
        return [validate_identifier(name, "region") for name in names]

    def source_url(self, region: str) -> SecretStr:
        """SQLAlchemy URL of a region's source database.

        ``RETAIL_ETL_SOURCE_URL_<REGION>`` wins; otherwise the database
        ``<source_database_prefix><region>`` on ``source_server_url``.
        """
        explicit = os.environ.get(self.source_url_variable(region))
        if explicit:
            return SecretStr(explicit)
        return SecretStr(
            database_url(self.source_server_url.get_secret_value(), self.source_database(region))
        )

    @staticmethod
    def source_url_variable(region: str) -> str:
        """The environment variable holding a region's source URL."""
        return f"RETAIL_ETL_SOURCE_URL_{validate_identifier(region, 'region').upper()}"

    def source_block_name(self, region: str) -> str:
        """The region's ``SqlAlchemyConnector`` block: ``us_east`` -> ``sales-source-us-east``
        (``prod-sales-source-us-east`` in prod).

        Regions hold no dashes, so replacing underscores keeps the names unique.
        """
        region_part = validate_identifier(region, "region").replace("_", "-")
        name = f"{self.env_prefix}{self.source_block_prefix}{region_part}"
        return validate_block_name(name, f"source block name of region {region}")

    def column_aliases_for(self, region: str) -> dict[str, list[str]]:
        """Alias names a region may use for contract columns (same map for every region)."""
        try:
            raw = json.loads(self.column_aliases)
        except json.JSONDecodeError as exc:
            raise ValueError(f"RETAIL_ETL_COLUMN_ALIASES is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("RETAIL_ETL_COLUMN_ALIASES must be a JSON object")
        aliases: dict[str, list[str]] = {}
        for column, names in raw.items():
            names = [names] if isinstance(names, str) else list(names)
            aliases[column] = [validate_identifier(str(n), f"alias of {column}") for n in names]
        return aliases

    def extract_splits_for(self, region: str) -> int:
        """How many extraction tasks ``region`` is split into (``extract_splits_by_region``
        wins over ``extract_splits``)."""
        try:
            raw = json.loads(self.extract_splits_by_region)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"RETAIL_ETL_EXTRACT_SPLITS_BY_REGION is not valid JSON: {exc}"
            ) from exc
        if not isinstance(raw, dict):
            raise ValueError("RETAIL_ETL_EXTRACT_SPLITS_BY_REGION must be a JSON object")
        value = raw.get(region, self.extract_splits)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
            raise ValueError(
                f"RETAIL_ETL_EXTRACT_SPLITS_BY_REGION: splits of region {region!r} must be an "
                f"integer from 1 to 64, got {value!r}"
            )
        return value

    def region_timezone(self, region: str) -> ZoneInfo:
        """The timezone ``region``'s business day is counted in (``region_timezones`` over
        :data:`DEFAULT_REGION_TIMEZONES`, else ``timezone``)."""
        try:
            raw = json.loads(self.region_timezones)
        except json.JSONDecodeError as exc:
            raise ValueError(f"RETAIL_ETL_REGION_TIMEZONES is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("RETAIL_ETL_REGION_TIMEZONES must be a JSON object")
        name = raw.get(region, DEFAULT_REGION_TIMEZONES.get(region, self.timezone))
        try:
            return ZoneInfo(str(name))
        except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(
                f"RETAIL_ETL_REGION_TIMEZONES: timezone {name!r} of region {region!r} is not a "
                "known IANA timezone"
            ) from exc

    def source_database(self, region: str) -> str:
        return validate_identifier(f"{self.source_database_prefix}{region}", "database")

    @property
    def writer_lock_path(self) -> Path:
        """The lock a run holds while it loads, so loads of every run on this machine (``run``,
        daily, backfill) take turns: next to the DuckDB file, or in the staging folder."""
        if self.warehouse == "duckdb":
            return self.duckdb_path.with_name(self.duckdb_path.name + ".writer-lock")
        return self.staging_dir / "snowflake.writer-lock"

    @property
    def runs_dir(self) -> Path:
        """Where each run keeps its scratch: ``runs/<date>/<batch>/`` (removed when it ends)."""
        return self.staging_dir / "runs"


class RegistrationSettings(BaseSettings):
    """What ``retail-etl blocks register`` stores in blocks (bucket, keys, Snowflake login,
    Slack webhook); each field maps to ``RETAIL_ETL_<FIELD>``. Read by that command only, so
    these secrets never travel with a run: flows and tasks get :class:`Settings`, which
    ignores these variables, and load the blocks by name."""

    model_config = SettingsConfigDict(env_prefix="RETAIL_ETL_", extra="ignore")

    s3_bucket_name: str | None = Field(default=None, description="Staging bucket (S3 store).")
    s3_prefix: str = Field(default="retail-etl", description="Key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(
        default=None, description="Custom S3 endpoint (MinIO, tests)."
    )
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region_name: str | None = None
    snowflake_account: str | None = None
    snowflake_user: str | None = None
    snowflake_password: SecretStr | None = None
    snowflake_role: str | None = None
    snowflake_warehouse: str | None = None
    snowflake_database: str | None = None
    snowflake_schema: str = "RETAIL"
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="Incoming-webhook URL stored in the Slack block (alerts)."
    )


def database_url(server_url: str, database: str) -> str:
    """The URL of ``database`` on the server of ``server_url`` (driver forced to psycopg2)."""
    from sqlalchemy.engine import make_url

    url = make_url(server_url).set(database=database)
    if url.drivername == "postgresql":
        # SQLAlchemy 2.1 maps bare postgresql:// to psycopg 3, which we do not ship.
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


_Loaded = TypeVar("_Loaded", bound=BaseSettings)


def _load(settings_class: type[_Loaded]) -> _Loaded:
    try:
        return settings_class()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        # Not chained: pydantic's error repeats every input value, secrets included.
        raise SettingsError(f"invalid configuration: {problems}") from None


def load_settings() -> Settings:
    """Read the settings from the environment; a bad value raises :class:`SettingsError`."""
    return _load(Settings)


def load_registration_settings() -> RegistrationSettings:
    """Read what ``retail-etl blocks register`` stores (fresh each time; nothing caches it)."""
    return _load(RegistrationSettings)


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return load_settings()


def get_settings(*, fresh: bool = False) -> Settings:
    """The process-wide settings; ``fresh=True`` re-reads the environment (tests, CLI)."""
    if fresh:
        _cached.cache_clear()
    return _cached()
