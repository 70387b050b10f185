"""Alembic environment for the agentrl store.

Run through :func:`agentrl.store.migrate.upgrade` (``agentrl store upgrade``), which passes an open
connection in ``config.attributes["connection"]``. Each upgrade runs in one transaction (both SQLite
and PostgreSQL have transactional DDL), so a failed or killed upgrade leaves the old schema intact.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from agentrl.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # plain `alembic -x url=...` use during development
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
        engine = create_engine(url)
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
        return
    _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("agentrl store migrations run online only (agentrl store upgrade)")
run_migrations_online()
