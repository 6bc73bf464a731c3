"""One ``SqlAlchemyConnector`` block per region: ``sales-source-<region with dashes>``.

The password is kept as a ``SecretStr`` inside ``ConnectionComponents`` (never as part
of a plain URL string), so it is encrypted at rest by Prefect and masked when printed.
"""

from __future__ import annotations

import os

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from blocks.prefect_api import prefect_api_url
from retail_etl.settings import Settings, get_settings


class SourceBlockError(RuntimeError):
    """A region's source block is missing or malformed (not retried: it will not fix itself)."""


def connector_from_url(url: SecretStr):  # type: ignore[no-untyped-def]
    """Build a SqlAlchemyConnector from a SQLAlchemy URL, password as a secret field."""
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

    parsed = make_url(url.get_secret_value())
    driver = parsed.drivername
    if driver == "postgresql":
        driver = "postgresql+psycopg2"
    if driver != SyncDriver.POSTGRESQL_PSYCOPG2.value:
        raise SourceBlockError(
            f"source URLs must use PostgreSQL with psycopg2 (postgresql+psycopg2://), got {driver!r}"
        )
    return SqlAlchemyConnector(
        connection_info=ConnectionComponents(
            driver=SyncDriver.POSTGRESQL_PSYCOPG2,
            database=parsed.database or "postgres",
            username=parsed.username,
            password=SecretStr(parsed.password) if parsed.password else None,
            host=parsed.host,
            port=parsed.port,
            query={k: str(v) for k, v in parsed.query.items()} or None,
        )
    )


def register_source_blocks(settings: Settings | None = None) -> list[str]:
    """Create or update ``sales-source-<region>`` for every configured region."""
    settings = settings or get_settings()
    names = []
    for region in settings.regions:
        name = settings.source_block_name(region)
        connector_from_url(settings.source_url(region)).save(name, overwrite=True)
        names.append(name)
    return names


def credentials_mode(settings: Settings) -> str:
    """``blocks`` or ``env``: ``auto`` means blocks whenever a Prefect API URL is configured
    (a server or Cloud, where deployments run), env for the in-process ephemeral API."""
    if settings.credentials != "auto":
        return settings.credentials
    return "blocks" if prefect_api_url() else "env"


def load_source_url(region: str, settings: Settings | None = None) -> tuple[SecretStr, str]:
    """The region's source URL and where it came from (a block name or a setting, never the URL).

    In ``blocks`` mode the region's block must exist: a missing one fails the region with a
    message naming the block. In ``env`` mode no block is read.
    """
    settings = settings or get_settings()
    if credentials_mode(settings) == "env":
        variable = settings.source_url_variable(region)
        if os.environ.get(variable):
            return settings.source_url(region), variable
        return settings.source_url(
            region
        ), f"local default database {settings.source_database(region)}"

    from prefect_sqlalchemy import SqlAlchemyConnector

    name = settings.source_block_name(region)
    try:
        connector = SqlAlchemyConnector.load(name)
    except ValueError as exc:  # Prefect raises ValueError when no block document has that name
        raise SourceBlockError(
            f"region {region}: source block {name!r} (SqlAlchemyConnector) not found; set "
            f"{settings.source_url_variable(region)} and run `retail-etl blocks register`, or set "
            "RETAIL_ETL_CREDENTIALS=env to read sources from the environment"
        ) from exc
    info = connector.connection_info
    if isinstance(info, str):
        return SecretStr(info), f"block {name}"
    url = info.create_url()  # type: ignore[union-attr]
    return SecretStr(url.render_as_string(hide_password=False)), f"block {name}"
