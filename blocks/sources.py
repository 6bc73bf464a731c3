"""One ``SqlAlchemyConnector`` block per region: ``sales-source-<region>``.

The password is kept as a ``SecretStr`` inside ``ConnectionComponents`` (never as part
of a plain URL string), so it is encrypted at rest by Prefect and masked when printed.
"""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from retail_etl.settings import Settings, get_settings, validate_identifier


class SourceBlockError(RuntimeError):
    """A region's source block is missing or malformed."""


def source_block_name(region: str, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return f"{settings.source_block_prefix}{validate_identifier(region, 'region')}"


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
        name = source_block_name(region, settings)
        connector_from_url(settings.source_url(region)).save(name, overwrite=True)
        names.append(name)
    return names


def load_source_url(region: str, settings: Settings | None = None) -> tuple[SecretStr, str]:
    """The region's source URL and where it came from ('block <name>' or 'settings').

    The block wins; without one, the URL from settings (environment or the local default).
    """
    from prefect_sqlalchemy import SqlAlchemyConnector

    settings = settings or get_settings()
    name = source_block_name(region, settings)
    try:
        connector = SqlAlchemyConnector.load(name)
    except ValueError:  # Prefect raises ValueError when no block document has that name
        return settings.source_url(region), "settings"
    info = connector.connection_info
    if isinstance(info, str):
        return SecretStr(info), f"block {name}"
    url = info.create_url()  # type: ignore[union-attr]
    return SecretStr(url.render_as_string(hide_password=False)), f"block {name}"
