"""Fixtures for the registry: a real SQLite file and a real PostgreSQL server (started here, once per
session), a fake Slurm, a fake clock, and an app with tokens of every role.

The PostgreSQL server is Debian's binaries run by ``initdb`` + ``pg_ctl`` in a temporary directory on
a free port, as the ``postgres`` OS user when the tests run as root. Missing binaries FAIL the tests
that need them (CI installs the postgresql package): a skipped database test would pass unseen.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ajr_supervisor.slurm import SlurmError

TABLES = ("events", "attempts", "jobs", "tokens", "audit", "notifications", "senders")
NOW = 1_764_064_000.0


# -- PostgreSQL server ---------------------------------------------------------------------------------
def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed (looked on PATH and in /usr/lib/postgresql/*/bin); "
                    "install the postgresql package (apt-get install postgresql) to run the registry tests",
                    pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    root: Path
    port: int
    proc_user: str | None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.proc_user, "--"] if self.proc_user else []
        return subprocess.run(prefix + list(argv), capture_output=True, text=True, timeout=60, check=check)

    def url(self, database: str = "ajr") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self.run(pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", check=False)


def start_pg(*, fast: bool = True) -> PgServer:
    """initdb + pg_ctl start in a new temporary directory; ``fast`` turns fsync off (tests only)."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="ajr-pg-"))
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        if not shutil.which("runuser"):
            pytest.fail("runuser (util-linux) is needed to run PostgreSQL as the postgres user", pytrace=False)
        shutil.chown(root, user, user)
    server = PgServer(root, free_port(), user)
    result = server.run(initdb, "-D", str(root / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-sync", check=False)
    if result.returncode != 0:
        pytest.fail(f"initdb failed: {result.stderr.strip()[-500:]}", pytrace=False)
    options = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if fast:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    result = server.run(pg_ctl, "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "-t", "60",
                        "start", check=False)
    if result.returncode != 0:
        log = (root / "log").read_text(errors="replace")[-800:] if (root / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {result.stderr.strip()[-300:]} {log}", pytrace=False)
    server.create_database("ajr")
    return server


@pytest.fixture(scope="session")
def pg_server():
    server = start_pg()
    yield server
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_migrated(pg_server):
    from ajr_supervisor.registry.db import Database, migrate

    db = Database(pg_server.url())
    migrate(db)
    db.dispose()
    return pg_server.url()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database truncated."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    url = request.getfixturevalue("pg_migrated")
    import psycopg

    port = url.split(":")[-1].split("/")[0]
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=ajr", autocommit=True) as c:
        c.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    return url


# -- fakes ---------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeSlurm:
    """Records actions; ``fail[action]`` makes that action fail as scontrol would."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def _do(self, action: str, job_id) -> None:
        self.calls.append((action, str(job_id)))
        if action in self.fail:
            raise SlurmError(["scontrol", action, str(job_id)], 1, self.fail[action])

    def requeue(self, job_id) -> None:
        self._do("requeue", job_id)

    def release(self, job_id) -> None:
        self._do("release", job_id)

    def hold(self, job_id) -> None:
        self._do("hold", job_id)


def ev(type: str, job_id: str = "100", *, t: float, attempt: int | None = 0, cluster: str = "lab",
       user: str = "alice", job_name: str = "train", source: str = "supervisor", **data) -> dict:
    """An event (schema v1) with a fresh id."""
    return {"id": uuid.uuid4().hex, "v": 1, "type": type, "time": t, "cluster": cluster, "job_id": job_id,
            "job_name": job_name, "user": user, "partition": "gpu", "attempt": attempt, "source": source,
            "data": data}


# -- the app -------------------------------------------------------------------------------------------
@dataclass
class Registry:
    client: object
    app: object
    db: object
    slurm: FakeSlurm
    clock: FakeClock
    tokens: dict[str, str]
    sent: list = field(default_factory=list)

    def h(self, who: str = "admin") -> dict:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def post(self, events: list[dict], who: str = "supervisor", **extra):
        return self.client.post("/api/v1/events", json={"events": events, **extra}, headers=self.h(who))

    def get(self, path: str, who: str = "admin", **params):
        return self.client.get(path, params=params, headers=self.h(who))


@pytest.fixture
def make_registry(db_url):
    """Build a registry app on the test database: ``make_registry(**settings)``."""
    from fastapi.testclient import TestClient

    from ajr_supervisor.registry.app import create_app
    from ajr_supervisor.registry.auth import create_token
    from ajr_supervisor.registry.settings import Settings

    made = []
    tokens: dict[str, str] = {}

    def build(*, sender=None, **settings) -> Registry:
        slurm, clock = FakeSlurm(), FakeClock()
        sent: list = []

        def record(n, channel, **_kw):
            sent.append((n, channel))

        app = create_app(Settings(db=db_url, **settings), slurm=slurm, clock=clock, background=False,
                         sender=sender or record)
        db = app.state.ctx.db
        if not tokens:     # once per database: a second app on it shares them
            tokens.update(admin=create_token(db, "admin", name="root-admin")[0],
                          supervisor=create_token(db, "supervisor", name="sup")[0],
                          alice=create_token(db, "user", subject="alice", name="alice")[0],
                          bob=create_token(db, "user", subject="bob", name="bob")[0])
        reg = Registry(TestClient(app), app, db, slurm, clock, tokens, sent)
        made.append(reg)
        return reg

    yield build
    for reg in made:
        reg.db.dispose()


@pytest.fixture
def registry(make_registry) -> Registry:
    return make_registry()


@pytest.fixture
def pg_url_factory(pg_server):
    """A brand-new, empty PostgreSQL database per call (for migration tests)."""
    return lambda: pg_server.create_database("t" + uuid.uuid4().hex[:12])


@pytest.fixture
def wait():
    def until(predicate, timeout_s: float = 5.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()
    return until
