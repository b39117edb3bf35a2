"""Event ingest: check each event, store the new ones once, update the projection, in one transaction.

Each event is checked on its own (:func:`check_event`); a bad one is rejected with a one-line reason
and never fails the others. The event id makes ingest idempotent: ``INSERT ... ON CONFLICT DO
NOTHING RETURNING id`` says which events are new, and only those reach the projection
(:mod:`.projection`), the notification plan and the counters. The sender's outbox backlog is kept
per host for ``/metrics``. Under load the API hands requests to :class:`GroupWriter`, which commits
the requests waiting at the same moment in one transaction (group commit).
"""

from __future__ import annotations

import json
import math
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Protocol, Sequence

from sqlalchemy import Connection

from ajr_supervisor.events import MAX_EVENT_BYTES, EventError, validate
from ajr_supervisor.registry import projection
from ajr_supervisor.registry.db import Database
from ajr_supervisor.registry.models import attempts, jobs, notifications

MAX_EVENTS_PER_REQUEST = 1000
_LIMITS = {"cluster": 64, "user": 64, "partition": 64, "job_name": 256}
_JOB_COLUMNS = [c.name for c in jobs.columns if c.name != "id"]
_ATTEMPT_COLUMNS = [c.name for c in attempts.columns if c.name != "id"]
_EVENT_COLUMNS = ["id", "type", "time", "cluster", "job_id", "attempt", "source", "received_at", "body"]
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)   # what json.dumps(..., same options) does


class Planner(Protocol):
    def rows_for(self, new_events: Sequence[dict], now: float) -> list[dict]: ...


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)
    new_events: list[dict] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def check_event(raw: Any) -> tuple[dict, str]:
    """The event and its stored JSON text, or :class:`EventError` with a one-line reason."""
    event = validate(raw)
    if not math.isfinite(event["time"]) or event["time"] < 0:
        raise EventError("event field 'time' must be a finite, non-negative number of Unix seconds")
    attempt = event.get("attempt")
    if attempt is not None and not 0 <= attempt <= projection.INT32:
        raise EventError(f"event field 'attempt' is out of range ({attempt})")
    for key, limit in _LIMITS.items():
        if len(event.get(key) or "") > limit:
            raise EventError(f"event field {key!r} is longer than {limit} characters")
    if not event["cluster"]:
        raise EventError("event field 'cluster' is empty")
    try:
        body = _ENCODER.encode(event)
    except ValueError:
        raise EventError("event contains NaN or Infinity, which JSON does not allow") from None
    if "\\u0000" in body:
        raise EventError("event contains a NUL character")
    if len(body.encode()) > MAX_EVENT_BYTES:
        raise EventError(f"event is larger than {MAX_EVENT_BYTES // 1024} KiB")
    return event, body


@dataclass
class Request:
    """One POST's worth of events, with the sender's host and outbox backlog."""

    events: Sequence[Any]
    host: str | None = None
    backlog: int | None = None


def ingest(db: Database, raw_events: Iterable[Any], *, now: float, host: str | None = None,
           backlog: int | None = None, planner: Planner | None = None) -> IngestResult:
    """Store ``raw_events``; see the module docstring. ``now`` stamps ``received_at``."""
    return ingest_many(db, [Request(list(raw_events), host, backlog)], now=now, planner=planner)[0]


def ingest_many(db: Database, requests: Sequence[Request], *, now: float,
                planner: Planner | None = None) -> list[IngestResult]:
    """Store several requests in ONE transaction (group commit); each gets its own result, as if
    alone: an event sent twice counts as accepted for the first request that carried it."""
    results = [IngestResult() for _ in requests]
    checked: dict[str, tuple[dict, str]] = {}
    owner: dict[str, int] = {}
    for n, request in enumerate(requests):
        for raw in request.events:
            try:
                event, body = check_event(raw)
            except EventError as exc:
                rid = raw.get("id") if isinstance(raw, dict) else None
                results[n].rejected.append({"id": rid if isinstance(rid, str) else "",
                                            "error": " ".join(str(exc).split())})
                continue
            if event["id"] in checked:
                results[n].duplicates += 1
            else:
                checked[event["id"]] = (event, body)
                owner[event["id"]] = n
    backlogs = {r.host[:256]: max(0, r.backlog or 0) for r in requests if r.host}   # the latest per host
    with db.write() as conn:
        new = store(conn, list(checked.values()), now=now)
        for event in new:
            results[owner[event["id"]]].new_events.append(event)
        for n, result in enumerate(results):
            result.accepted = len(result.new_events)
        for event_id, n in owner.items():
            results[n].duplicates += 1
        for result in results:
            result.duplicates -= result.accepted
        if new:
            project(conn, new, pg=conn.dialect.name == "postgresql")
            rows = planner.rows_for(new, now) if planner is not None else []
            if rows:
                conn.execute(notifications.insert(), rows)
        if backlogs:
            store_senders(conn, backlogs, now=now)
    return results


class GroupWriter:
    """Ingest through one writer thread that commits whatever requests are waiting as one group:
    under load, many requests share one transaction (and its fsync), so throughput grows with
    concurrency instead of collapsing on the database's write lock. A group that fails is retried
    request by request, so one request's failure is its own."""

    def __init__(self, db: Database, *, clock: Callable[[], float], planner: Planner | None = None,
                 max_group_events: int = 5000) -> None:
        self.db, self.clock, self.planner, self.max_group_events = db, clock, planner, max_group_events
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, request: Request) -> Future:
        """A future of the request's :class:`IngestResult`."""
        future: Future = Future()
        self._queue.put((request, future))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ajr-ingest", daemon=True)
                    self._thread.start()
        return future

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group, size = [item], len(item[0].events)
            while size < self.max_group_events:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                group.append(item)
                size += len(item[0].events)
            self._write(group)

    def _write(self, group: list) -> None:
        try:
            results = ingest_many(self.db, [r for r, _ in group], now=self.clock(), planner=self.planner)
        except Exception as exc:
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            for item in group:
                self._write([item])
            return
        for (_, future), result in zip(group, results):
            future.set_result(result)


class _Sql:
    """Ingest's statements as SQL text for one dialect, run through ``exec_driver_sql``: no statement
    building or per-row parameter processing in SQLAlchemy (the hot path's main cost), yet the same
    connection, transaction and error handling (SQLAlchemy's exceptions, disconnect detection).

    PostgreSQL: one statement per table and batch whatever its size, the rows passed as ONE JSON
    parameter that the server turns into rows of the table's own types (``json_populate_recordset``):
    the SQL text never changes (psycopg parses it once, the server prepares it) and no parameter is
    adapted row by row in Python. SQLite: multi-row ``VALUES`` (at most ``MAX_PARAMS`` parameters a
    statement) and ``executemany``, which cost it nothing extra per statement."""

    MAX_PARAMS = 30000   # SQLite >= 3.32 allows 32766
    _TABLES: ClassVar[dict] = {"events": (_EVENT_COLUMNS, "ON CONFLICT (id) DO NOTHING RETURNING id"),
               "jobs": (_JOB_COLUMNS, "ON CONFLICT (cluster, job_id) DO NOTHING"),
               "attempts": (_ATTEMPT_COLUMNS, ""),
               "senders": (["host", "backlog", "updated_at"],
                           "ON CONFLICT (host) DO UPDATE SET backlog = excluded.backlog, updated_at = excluded.updated_at")}
    _KEYS: ClassVar[dict] = {"jobs": ("cluster", "job_id"), "attempts": ("job_pk", "attempt")}
    _TABLE_COLUMNS: ClassVar[dict] = {"jobs": [c.name for c in jobs.columns], "attempts": [c.name for c in attempts.columns]}

    def __init__(self, conn: Connection) -> None:
        self.pg = conn.dialect.name == "postgresql"
        q = conn.dialect.identifier_preparer.quote
        self.columns = {name: columns for name, (columns, _) in self._TABLES.items()}
        self.inserts, self.selects, self.updates = {}, {}, {}
        for name, (columns, tail) in self._TABLES.items():
            names = ", ".join(q(c) for c in columns)
            if self.pg:
                self.inserts[name] = (f"INSERT INTO {name} ({names}) SELECT {names} FROM "
                                      f"json_populate_recordset(NULL::{name}, %s) {tail}").rstrip()
            else:
                self.inserts[name] = (f"INSERT INTO {name} ({names}) VALUES {{}} {tail}".rstrip(),
                                      "(" + ", ".join("?" for _ in columns) + ")", len(columns))
            if name in self._KEYS:
                every = ", ".join(f"{name}.{q(c)}" for c in self._TABLE_COLUMNS[name])
                a, b = self._KEYS[name]
                if self.pg:
                    self.selects[name] = (f"SELECT {every} FROM {name} WHERE ({a}, {b}) IN (SELECT {a}, {b} FROM "
                                          f"json_populate_recordset(NULL::{name}, %s))"
                                          + (" ORDER BY cluster, job_id FOR UPDATE" if name == "jobs" else ""))
                    sets = ", ".join(f"{q(c)} = v.{q(c)}" for c in columns)
                    self.updates[name] = (f"UPDATE {name} SET {sets} FROM json_populate_recordset(NULL::{name}, %s) "
                                          f"AS v WHERE {name}.id = v.id")
                else:
                    self.selects[name] = (f"SELECT {every} FROM {name} WHERE ({a}, {b}) IN ({{}})"
                                          + (" ORDER BY cluster, job_id" if name == "jobs" else ""), "(?, ?)", 2)
                    sets = ", ".join(f"{q(c)} = ?" for c in columns)
                    self.updates[name] = f"UPDATE {name} SET {sets} WHERE id = ?"

    @staticmethod
    def _json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str]:
        return (json.dumps([dict(zip(columns, row)) for row in rows], separators=(",", ":"), allow_nan=False),)

    def _many(self, conn: Connection, statement: tuple[str, str, int], rows: Sequence[Sequence[Any]]):
        template, one, width = statement
        per = max(1, self.MAX_PARAMS // width)
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            yield conn.exec_driver_sql(template.format(", ".join([one] * len(chunk))),
                                       tuple(v for row in chunk for v in row))

    def insert(self, conn: Connection, name: str, rows: Sequence[Sequence[Any]]) -> list:
        """Insert ``rows`` (in order) into table ``name``; the rows its RETURNING clause gives, if any."""
        if self.pg:
            results = [conn.exec_driver_sql(self.inserts[name], self._json(self.columns[name], rows))]
        else:
            results = list(self._many(conn, self.inserts[name], rows))
        return [r for result in results if result.returns_rows for r in result]

    def select(self, conn: Connection, name: str, keys: Sequence[tuple]) -> list[dict]:
        """The rows of ``name`` (jobs, attempts) with these keys (jobs: locked, in key order)."""
        if self.pg:
            results = [conn.exec_driver_sql(self.selects[name], self._json(self._KEYS[name], keys))]
        else:
            results = list(self._many(conn, self.selects[name], keys))
        return [dict(r) for result in results for r in result.mappings()]

    def update(self, conn: Connection, name: str, rows: Sequence[Sequence[Any]]) -> None:
        """Update rows of ``name`` by id; each row is its columns' values in order, then its id."""
        if self.pg:
            conn.exec_driver_sql(self.updates[name], self._json(self.columns[name] + ["id"], rows))
        else:
            conn.exec_driver_sql(self.updates[name], [tuple(r) for r in rows])


_SQL: dict[str, _Sql] = {}


def _sql(conn: Connection) -> _Sql:
    sql = _SQL.get(conn.dialect.name)
    if sql is None:
        sql = _SQL[conn.dialect.name] = _Sql(conn)
    return sql


def store(conn: Connection, checked: Sequence[tuple[dict, str]], *, now: float) -> list[dict]:
    """Insert the events not stored yet; returns those (the new ones), in time order."""
    if not checked:
        return []
    rows = [(e["id"], e["type"], float(e["time"]), e["cluster"], e["job_id"], e.get("attempt"),
             e.get("source") or "supervisor", now, body) for e, body in checked]
    inserted = {r[0] for r in _sql(conn).insert(conn, "events", rows)}
    new = [e for e, _ in checked if e["id"] in inserted]
    new.sort(key=lambda e: e["time"])
    return new


def store_senders(conn: Connection, backlogs: dict[str, int], *, now: float) -> None:
    """Keep each host's latest outbox backlog (hosts in order, so concurrent writers lock alike)."""
    _sql(conn).insert(conn, "senders", [(h, b, now) for h, b in sorted(backlogs.items())])


def project(conn: Connection, new_events: Sequence[dict], *, pg: bool) -> None:
    """Apply new events to the jobs and attempts they touch (rows locked on PostgreSQL)."""
    sql = _sql(conn)
    first: dict[tuple[str, str], dict] = {}
    for e in new_events:
        first.setdefault((e["cluster"], e["job_id"]), e)
    keys = sorted(first)
    sql.insert(conn, "jobs", [[row[c] for c in _JOB_COLUMNS] for row in (projection.new_job(first[k]) for k in keys)])
    job_rows = {(r["cluster"], r["job_id"]): r for r in sql.select(conn, "jobs", keys)}
    # Which attempts the batch touches (job-level events: the job's latest, possibly set by this batch).
    wanted: set[tuple[int, int]] = set()
    latest = {k: j["attempt"] for k, j in job_rows.items()}
    for e in new_events:
        key = (e["cluster"], e["job_id"])
        if e.get("attempt") is not None and (latest[key] is None or e["attempt"] > latest[key]):
            latest[key] = e["attempt"]
        number = e["attempt"] if e.get("attempt") is not None else latest[key]
        if number is not None:
            wanted.add((job_rows[key]["id"], number))
    loaded: dict[tuple[int, int], dict] = {}
    if wanted:
        loaded = {(r["job_pk"], r["attempt"]): projection.decode_attempt(r)
                  for r in sql.select(conn, "attempts", sorted(wanted))}
    created: dict[tuple[int, int], dict] = {}
    touched: set[tuple[int, int]] = set()
    for e in new_events:
        job = job_rows[(e["cluster"], e["job_id"])]
        number = e["attempt"] if e.get("attempt") is not None else job["attempt"]
        attempt = None
        if number is not None:
            key = (job["id"], number)
            attempt = loaded.get(key) or created.get(key)
            if attempt is None:
                attempt = created[key] = projection.new_attempt(job["id"], number)
                job["attempts"] += 1
            touched.add(key)
        projection.apply(e, job, attempt)
    sql.update(conn, "jobs", [[j[c] for c in _JOB_COLUMNS] + [j["id"]] for j in job_rows.values()])
    if created:
        sql.insert(conn, "attempts", [[a[c] for c in _ATTEMPT_COLUMNS] for a in
                                      map(projection.encode_attempt, created.values())])
    changed = [projection.encode_attempt(loaded[k]) for k in touched if k in loaded]
    if changed:
        sql.update(conn, "attempts", [[a[c] for c in _ATTEMPT_COLUMNS] + [a["id"]] for a in changed])
