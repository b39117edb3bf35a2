"""Reads: jobs (list, detail), a job's events, the audit and notification lists.

Every function takes the caller (:class:`~ajr_supervisor.registry.auth.Principal`); a ``user`` caller
sees only jobs whose user is its subject, and another user's job reads as absent (``None``), never
as forbidden. Reads come from the projection (jobs, attempts); only a job's event list and KPIs read
the raw events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, tuple_

from ajr_supervisor.registry import projection
from ajr_supervisor.registry.auth import Principal
from ajr_supervisor.registry.models import attempts, audit, events, jobs, notifications

SORTS = {"updated": jobs.c.updated_at, "created": jobs.c.created_at, "job_id": jobs.c.job_num}
_HIDDEN = ("id", "job_num", "state_at", "hold_at", "hold_cleared_at", "watchdog_tried_at")


class QueryError(ValueError):
    """A query parameter the caller must fix (answered 422 with this message)."""


def parse_since(value: str | None) -> float | None:
    """``since`` as Unix seconds: a number, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
        if number == number and abs(number) != float("inf"):
            return number
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"since={value!r} is neither Unix seconds nor an ISO 8601 time "
                         "(e.g. 1764064000 or 2025-11-25T10:00:00Z)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def parse_sort(value: str) -> tuple[str, bool]:
    m = re.fullmatch(r"([+-]?)(\w+)", value or "")
    if not m or m.group(2) not in SORTS:
        raise QueryError(f"sort={value!r} is not one of {', '.join(SORTS)} (prefix - for descending, e.g. -updated)")
    return m.group(2), m.group(1) == "-"


@dataclass(frozen=True)
class JobFilter:
    cluster: str | None = None
    user: str | None = None
    state: str | None = None
    name: str | None = None
    since: float | None = None


def _visible(who: Principal):
    return jobs.c.user == who.subject if who.role == "user" else None


def _job_where(flt: JobFilter, who: Principal) -> list:
    where = [c for c in (_visible(who),) if c is not None]
    if flt.cluster:
        where.append(jobs.c.cluster == flt.cluster)
    if flt.user:
        where.append(jobs.c.user == flt.user)
    if flt.state:
        where.append(jobs.c.state == flt.state)
    if flt.name:
        where.append(func.lower(jobs.c.job_name).contains(flt.name.lower(), autoescape=True))
    if flt.since is not None:
        where.append(jobs.c.updated_at >= flt.since)
    return where


def job_item(row: Any) -> dict:
    """What the API shows of a jobs row."""
    job = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
    held = job["hold_at"] is not None and job["hold_at"] > (job["hold_cleared_at"] or 0)
    out = {k: v for k, v in job.items() if k not in _HIDDEN}
    out["held_since"] = job["hold_at"] if held else None
    return out


def list_jobs(conn: Connection, flt: JobFilter, who: Principal, *, sort: str = "-updated",
              limit: int = 50, offset: int = 0) -> dict:
    key, desc = parse_sort(sort)
    where = _job_where(flt, who)
    total = conn.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()
    col = SORTS[key]
    order = [col.desc(), jobs.c.job_id.desc(), jobs.c.id.desc()] if desc else [col.asc(), jobs.c.job_id, jobs.c.id]
    rows = conn.execute(select(jobs).where(*where).order_by(*order).limit(limit).offset(offset))
    return {"total": total, "items": [job_item(r) for r in rows]}


def find_job(conn: Connection, cluster: str, job_id: str, who: Principal) -> dict | None:
    """The jobs row (all columns) if it exists and the caller may see it."""
    where = [jobs.c.cluster == cluster, jobs.c.job_id == job_id]
    if who.role == "user":
        where.append(jobs.c.user == who.subject)
    row = conn.execute(select(jobs).where(*where)).first()
    return dict(row._mapping) if row else None


def job_attempts(conn: Connection, job_pk: int) -> list[dict]:
    rows = conn.execute(select(attempts).where(attempts.c.job_pk == job_pk).order_by(attempts.c.attempt))
    out = []
    for r in rows:
        a = projection.decode_attempt(dict(r._mapping))
        del a["id"], a["job_pk"]
        out.append(a)
    return out


def job_event_bodies(conn: Connection, cluster: str, job_id: str, *, types: tuple[str, ...] = (),
                     limit: int | None = None, offset: int = 0) -> list[dict]:
    query = select(events.c.body).where(events.c.cluster == cluster, events.c.job_id == job_id)
    if types:
        query = query.where(events.c.type.in_(types))
    query = query.order_by(events.c.time, events.c.seq).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return [json.loads(b) for b in conn.execute(query).scalars()]


def count_job_events(conn: Connection, cluster: str, job_id: str, types: tuple[str, ...] = ()) -> int:
    query = select(func.count()).select_from(events).where(events.c.cluster == cluster, events.c.job_id == job_id)
    if types:
        query = query.where(events.c.type.in_(types))
    return conn.execute(query).scalar_one()


def events_of_jobs(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict]]:
    """Every event of these jobs, by job, in time order (for KPIs)."""
    out: dict[tuple[str, str], list[dict]] = {k: [] for k in keys}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        query = (select(events.c.cluster, events.c.job_id, events.c.body)
                 .where(tuple_(events.c.cluster, events.c.job_id).in_(chunk)).order_by(events.c.time, events.c.seq))
        for cluster, job_id, body in conn.execute(query):
            out[(cluster, job_id)].append(json.loads(body))
    return out


def job_notifications(conn: Connection, cluster: str, job_id: str) -> list[dict]:
    query = (select(notifications).where(notifications.c.cluster == cluster, notifications.c.job_id == job_id)
             .order_by(notifications.c.id))
    return [dict(r._mapping) for r in conn.execute(query)]


def job_audit(conn: Connection, cluster: str, job_id: str) -> list[dict]:
    query = select(audit).where(audit.c.cluster == cluster, audit.c.job_id == job_id).order_by(audit.c.id)
    return [dict(r._mapping) for r in conn.execute(query)]


def nodes_involved(attempt_rows: list[dict]) -> list[str]:
    found: set[str] = set()
    for a in attempt_rows:
        found.update(a["nodes"] or [])
        if a["attribution"]:
            found.update(a["attribution"].get("nodes") or [])
        for anomaly in a["anomalies"]:
            found.update(anomaly.get("nodes") or [])
    return sorted(found)


def list_audit(conn: Connection, *, cluster: str | None = None, job_id: str | None = None, limit: int = 100,
               offset: int = 0) -> dict:
    where = [c for c in (audit.c.cluster == cluster if cluster else None,
                         audit.c.job_id == job_id if job_id else None) if c is not None]
    total = conn.execute(select(func.count()).select_from(audit).where(*where)).scalar_one()
    rows = conn.execute(select(audit).where(*where).order_by(audit.c.id.desc()).limit(limit).offset(offset))
    return {"total": total, "items": [dict(r._mapping) for r in rows]}


def list_notifications(conn: Connection, *, status: str | None = None, cluster: str | None = None,
                       job_id: str | None = None, severity: str | None = None, limit: int = 100,
                       offset: int = 0) -> dict:
    conds = {notifications.c.status: status, notifications.c.cluster: cluster, notifications.c.job_id: job_id,
             notifications.c.severity: severity}
    where = [col == value for col, value in conds.items() if value]
    total = conn.execute(select(func.count()).select_from(notifications).where(*where)).scalar_one()
    rows = conn.execute(select(notifications).where(*where).order_by(notifications.c.id.desc())
                        .limit(limit).offset(offset))
    return {"total": total, "items": [dict(r._mapping) for r in rows]}


def jobs_for_kpis(conn: Connection, flt: JobFilter, who: Principal, *, limit: int, offset: int = 0) -> list[dict]:
    where = _job_where(flt, who)
    rows = conn.execute(select(jobs.c.cluster, jobs.c.job_id, jobs.c.job_name, jobs.c.user).where(*where)
                        .order_by(jobs.c.updated_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset))
    return [dict(r._mapping) for r in rows]


def node_jobs(conn: Connection, node: str, *, limit: int = 100) -> list[dict]:
    """Jobs with an attempt that ran on ``node`` (newest first)."""
    pattern = "%" + json.dumps(node).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    query = (select(jobs).join(attempts, attempts.c.job_pk == jobs.c.id)
             .where(attempts.c.nodes.like(pattern, escape="\\")).distinct()
             .order_by(jobs.c.updated_at.desc()).limit(limit))
    return [job_item(r) for r in conn.execute(query)]


def events_by_type(conn: Connection, types: tuple[str, ...], *, since: float | None = None) -> list[dict]:
    query = select(events.c.body).where(events.c.type.in_(types))
    if since is not None:
        query = query.where(events.c.time >= since)
    return [json.loads(b) for b in conn.execute(query.order_by(events.c.time, events.c.seq)).scalars()]


def held_too_long(conn: Connection, *, now: float, timeout_s: float) -> list[dict]:
    """Jobs whose latest ajr action is an ok requeuehold with no later release/start, older than
    ``timeout_s``, not tried by the watchdog in the last ``timeout_s``."""
    query = select(jobs).where(
        jobs.c.hold_at.is_not(None), jobs.c.hold_at <= now - timeout_s,
        or_(jobs.c.hold_cleared_at.is_(None), jobs.c.hold_cleared_at < jobs.c.hold_at),
        or_(jobs.c.watchdog_tried_at.is_(None),
            and_(jobs.c.watchdog_tried_at < jobs.c.hold_at),
            jobs.c.watchdog_tried_at <= now - timeout_s)).order_by(jobs.c.hold_at)
    return [dict(r._mapping) for r in conn.execute(query)]
