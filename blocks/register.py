"""``retail-etl blocks register``: create or update every block the pipeline needs.

Values come from the environment (see README, "Configuration"): block names from
:class:`~retail_etl.settings.Settings`, what goes into the blocks from
:class:`~retail_etl.settings.RegistrationSettings`. Each block is saved with ``overwrite=True``
so running the command again updates it. Secrets are stored in ``SecretStr`` fields and never
printed.
"""

from __future__ import annotations

from blocks.notifications import register_slack_line
from blocks.sources import register_source_blocks
from retail_etl.settings import RegistrationSettings, Settings


def register_staging_bucket(settings: Settings, stored: RegistrationSettings) -> str | None:
    """``S3Bucket`` (+ ``AwsCredentials``) for the S3 staging store, if a bucket is configured."""
    if not stored.s3_bucket_name:
        return None
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    credentials = AwsCredentials(
        aws_access_key_id=(
            stored.aws_access_key_id.get_secret_value() if stored.aws_access_key_id else None
        ),
        aws_secret_access_key=stored.aws_secret_access_key,
        region_name=stored.aws_region_name,
        aws_client_parameters=AwsClientParameters(endpoint_url=stored.s3_endpoint_url),
    )
    credentials_name = f"{settings.s3_bucket_block}-credentials"
    credentials.save(credentials_name, overwrite=True)
    S3Bucket(
        bucket_name=stored.s3_bucket_name,
        credentials=credentials,
        bucket_folder=stored.s3_prefix,
    ).save(settings.s3_bucket_block, overwrite=True)
    return settings.s3_bucket_block


def register_snowflake(settings: Settings, stored: RegistrationSettings) -> str | None:
    """``SnowflakeConnector`` (+ ``SnowflakeCredentials``), if an account is configured."""
    if not stored.snowflake_account:
        return None
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    if not (stored.snowflake_user and stored.snowflake_password):
        raise ValueError(
            "RETAIL_ETL_SNOWFLAKE_ACCOUNT is set but RETAIL_ETL_SNOWFLAKE_USER or "
            "RETAIL_ETL_SNOWFLAKE_PASSWORD is missing"
        )
    if not (stored.snowflake_database and stored.snowflake_warehouse):
        raise ValueError(
            "Snowflake needs RETAIL_ETL_SNOWFLAKE_DATABASE and RETAIL_ETL_SNOWFLAKE_WAREHOUSE"
        )
    credentials_name = f"{settings.snowflake_block}-credentials"
    credentials = SnowflakeCredentials(
        account=stored.snowflake_account,
        user=stored.snowflake_user,
        password=stored.snowflake_password,
        role=stored.snowflake_role,
    )
    credentials.save(credentials_name, overwrite=True)
    SnowflakeConnector(
        credentials=credentials,
        database=stored.snowflake_database,
        warehouse=stored.snowflake_warehouse,
        schema=stored.snowflake_schema,
    ).save(settings.snowflake_block, overwrite=True)
    return settings.snowflake_block


def register_all(settings: Settings, stored: RegistrationSettings) -> list[str]:
    """Register every block; returns human lines (names only, never values)."""
    lines = [f"saved SqlAlchemyConnector {name}" for name in register_source_blocks(settings)]
    staging = register_staging_bucket(settings, stored)
    lines.append(
        f"saved S3Bucket {staging}"
        if staging
        else "S3 staging not configured (RETAIL_ETL_S3_BUCKET_NAME): local staging"
    )
    warehouse = register_snowflake(settings, stored)
    lines.append(
        f"saved SnowflakeConnector {warehouse}"
        if warehouse
        else "Snowflake not configured (RETAIL_ETL_SNOWFLAKE_ACCOUNT): DuckDB warehouse"
    )
    lines.append(register_slack_line(settings, stored))
    return lines
