"""Schema migrations with Alembic (imported only when a migration runs).

The migration scripts ship inside the package (``agentrl/store/migrations``), so
``agentrl store upgrade`` works after a plain ``pip install``. Developers add a revision with::

    from alembic import command
    from agentrl.store.migrate import alembic_config
    command.revision(alembic_config(), message="...", autogenerate=True)   # needs -x url or a connection

and append its id to :data:`agentrl.store.models.SCHEMA_REVISIONS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(connection: Any = None) -> Any:
    """An Alembic ``Config`` pointing at the packaged migrations, bound to ``connection`` if given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_revisions() -> list[str]:
    """Revision ids of the packaged migration scripts, oldest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


def run_upgrade(connection: Any, revision: str = "head", current: str | None = None) -> None:
    """Move the database behind ``connection`` to ``revision`` in one transaction (down when it is
    older than ``current``)."""
    from alembic import command

    order = script_revisions()
    if current in order and revision in order and order.index(revision) < order.index(current):
        command.downgrade(alembic_config(connection), revision)
    else:
        command.upgrade(alembic_config(connection), revision)
