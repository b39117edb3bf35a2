"""Database engines, transactions and migrations (the registry's only contact with its database).

SQLite (a file; WAL, ``synchronous=NORMAL``, a busy timeout) or PostgreSQL (``postgresql+psycopg://``).
Writes go through :meth:`Database.write`: on SQLite one writer at a time in this process (a lock, so
threads never spin in SQLite's busy handler) inside ``BEGIN IMMEDIATE`` (so a read-then-write
transaction cannot fail on upgrade); on PostgreSQL a plain transaction whose rows ingest locks.
Migrations are Alembic scripts shipped in the package, run programmatically (:func:`migrate`).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ajr_supervisor.errors import AjrError
from ajr_supervisor.registry.settings import db_url

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 10_000
_MIGRATION_LOCK = 0x616A72   # pg_advisory_xact_lock key: one migrator at a time


class DatabaseError(AjrError):
    """The database cannot be reached, opened or migrated."""


def safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<bad URL>"


class Database:
    """One database: an engine plus the write discipline above. ``url`` may also be a SQLite path."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = db_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(self.url)
            self._write_lock: threading.Lock | None = threading.Lock()
        else:
            self.engine = create_engine(self.url, pool_size=pool_size, max_overflow=pool_size * 2,
                                        pool_pre_ping=True)
            self._write_lock = None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (committed on success, rolled back on an exception)."""
        with self._write_lock or nullcontext():
            with self.engine.connect() as conn:
                conn.execution_options(ajr_write=True)
                with conn.begin():
                    yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    def check(self) -> None:
        """Raise :class:`DatabaseError` (one line) when the database cannot be reached."""
        try:
            with self.read() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot use the database {safe_url(self.url)}: {_first_line(exc)}",
                                "check the db URL, that the server runs and the user may connect") from None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:300]


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create the directory for the SQLite database {path}: {exc.strerror}",
                                "create it, or set db to a writable path") from None
    engine = create_engine(url, pool_size=10, max_overflow=20,
                           connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None      # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("ajr_write") else "BEGIN")

    return engine


def alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(db: Database, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; returns the revision now current."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    try:
        with db.write() as conn:
            if not db.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            command.upgrade(alembic_config(conn), revision)
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate the database {safe_url(db.url)}: {_first_line(exc)}",
                            "check the db URL, that the server runs and the user may create tables") from None


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()
