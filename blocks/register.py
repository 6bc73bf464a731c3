"""``retail-etl blocks register``: create or update every block the pipeline needs.

Values come from the environment (see README, "Configuration"); each block is saved
with ``overwrite=True`` so running the command again updates it. Secrets are stored in
``SecretStr`` fields and never printed.
"""

from __future__ import annotations

from blocks.notifications import register_slack_line
from blocks.sources import register_source_blocks
from retail_etl.settings import Settings


def register_staging_bucket(settings: Settings) -> str | None:
    """``S3Bucket`` (+ ``AwsCredentials``) for the S3 staging store, if a bucket is configured."""
    if not settings.s3_bucket_name:
        return None
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    credentials = AwsCredentials(
        aws_access_key_id=(
            settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None
        ),
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region_name,
        aws_client_parameters=AwsClientParameters(endpoint_url=settings.s3_endpoint_url),
    )
    credentials_name = f"{settings.s3_bucket_block}-credentials"
    credentials.save(credentials_name, overwrite=True)
    S3Bucket(
        bucket_name=settings.s3_bucket_name,
        credentials=credentials,
        bucket_folder=settings.s3_prefix,
    ).save(settings.s3_bucket_block, overwrite=True)
    return settings.s3_bucket_block


def register_snowflake(settings: Settings) -> str | None:
    """``SnowflakeConnector`` (+ ``SnowflakeCredentials``), if an account is configured."""
    if not settings.snowflake_account:
        return None
    from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

    if not (settings.snowflake_user and settings.snowflake_password):
        raise ValueError(
            "RETAIL_ETL_SNOWFLAKE_ACCOUNT is set but RETAIL_ETL_SNOWFLAKE_USER or "
            "RETAIL_ETL_SNOWFLAKE_PASSWORD is missing"
        )
    if not (settings.snowflake_database and settings.snowflake_warehouse):
        raise ValueError(
            "Snowflake needs RETAIL_ETL_SNOWFLAKE_DATABASE and RETAIL_ETL_SNOWFLAKE_WAREHOUSE"
        )
    credentials_name = f"{settings.snowflake_block}-credentials"
    credentials = SnowflakeCredentials(
        account=settings.snowflake_account,
        user=settings.snowflake_user,
        password=settings.snowflake_password,
        role=settings.snowflake_role,
    )
    credentials.save(credentials_name, overwrite=True)
    SnowflakeConnector(
        credentials=credentials,
        database=settings.snowflake_database,
        warehouse=settings.snowflake_warehouse,
        schema=settings.snowflake_schema,
    ).save(settings.snowflake_block, overwrite=True)
    return settings.snowflake_block


def register_all(settings: Settings) -> list[str]:
    """Register every block; returns human lines (names only, never values)."""
    lines = [f"saved SqlAlchemyConnector {name}" for name in register_source_blocks(settings)]
    staging = register_staging_bucket(settings)
    lines.append(
        f"saved S3Bucket {staging}"
        if staging
        else "S3 staging not configured (RETAIL_ETL_S3_BUCKET_NAME): local staging"
    )
    warehouse = register_snowflake(settings)
    lines.append(
        f"saved SnowflakeConnector {warehouse}"
        if warehouse
        else "Snowflake not configured (RETAIL_ETL_SNOWFLAKE_ACCOUNT): DuckDB warehouse"
    )
    lines.append(register_slack_line(settings))
    return lines
