"""Alembic environment: run programmatically with a connection (``config.attributes["connection"]``),
or, from the ``alembic`` command line, with ``-x url=...``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ajr_supervisor.registry.models import metadata

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
