"""Migrations create the schema from an empty database, on SQLite and PostgreSQL, exactly as models.py
describes it; running them again changes nothing."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from ajr_supervisor.registry.db import Database, current_revision, migrate
from ajr_supervisor.registry.models import metadata


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request, tmp_path):
    url = str(tmp_path / "new" / "registry.db") if request.param == "sqlite" else request.getfixturevalue(
        "pg_url_factory")()
    db = Database(url)
    yield db
    db.dispose()


def test_migrate_from_empty(empty_db):
    assert inspect(empty_db.engine).get_table_names() == []
    assert current_revision(empty_db) is None
    assert migrate(empty_db) == "0001"
    tables = set(inspect(empty_db.engine).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}
    with empty_db.read() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert migrate(empty_db) == "0001"       # idempotent


def test_downgrade_to_nothing_and_back(empty_db):
    from alembic import command

    from ajr_supervisor.registry.db import alembic_config

    migrate(empty_db)
    with empty_db.write() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(empty_db.engine).get_table_names()) <= {"alembic_version"}
    assert migrate(empty_db) == "0001"


def test_sqlite_runs_in_wal_mode(tmp_path):
    db = Database(str(tmp_path / "r.db"))
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    db.dispose()


def test_an_unreachable_database_is_one_clear_line():
    from ajr_supervisor.registry.db import DatabaseError

    db = Database("postgresql+psycopg://ajr:secret@127.0.0.1:1/nothing")
    with pytest.raises(DatabaseError) as err:
        migrate(db)
    line = err.value.one_line()
    assert "cannot migrate the database postgresql+psycopg://ajr:***@127.0.0.1:1/nothing" in line
    assert "secret" not in line and "\n" not in line
