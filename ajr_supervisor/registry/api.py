"""The HTTP API, version 1 (OpenAPI at ``/docs``): ingest, jobs, actions, audit, notifications, KPIs,
nodes; plus ``/healthz`` and ``/metrics``.

Every route but ``/healthz`` (and ``/metrics`` with ``metrics_open``) needs ``Authorization: Bearer
<token>``: 401 without a valid one, 403 when its role may not use the route, 404 for a job of
another user. Read routes are plain functions: FastAPI runs them in its thread pool, so database
calls block only that thread. Ingest is async: it hands the batch to the group writer
(:class:`~ajr_supervisor.registry.ingest.GroupWriter`) and awaits its result.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ajr_supervisor.registry import queries
from ajr_supervisor.registry.actions import ACTIONS, perform
from ajr_supervisor.registry.auth import Principal
from ajr_supervisor.registry.ingest import MAX_EVENTS_PER_REQUEST
from ajr_supervisor.registry.ingest import Request as IngestRequest
from ajr_supervisor.registry.models import NOTIFICATION_STATUSES, STATES
from ajr_supervisor.registry.reputation import lemons
from ajr_supervisor.registry.stats import REPUTATION_TYPES, Unavailable

NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL)]
Text = Annotated[str | None, Query(max_length=256, pattern=NO_NUL)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]

router = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="a registry token (ajr registry token create)")


def ctx(request: Request) -> Any:
    return request.app.state.ctx


async def caller(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    tokens, header = ctx(request).tokens, f"Bearer {cred.credentials}" if cred else None
    who = tokens.cached(header) or await run_in_threadpool(tokens.authenticate, header)
    if who is None:
        raise HTTPException(401, "missing, unknown or revoked bearer token", headers={"WWW-Authenticate": "Bearer"})
    return who


def role(*allowed: str):
    async def check(who: Annotated[Principal, Depends(caller)]) -> Principal:
        if who.role not in allowed:
            raise HTTPException(403, f"a {who.role} token may not do this (needs {' or '.join(allowed)})")
        return who
    return check


Reader = Annotated[Principal, Depends(role("user", "admin"))]
Admin = Annotated[Principal, Depends(role("admin"))]
Sender = Annotated[Principal, Depends(role("supervisor", "admin"))]


def _bad(exc: Exception) -> HTTPException:
    return HTTPException(422, str(exc))


def _unavailable(exc: Unavailable) -> HTTPException:
    return HTTPException(503, str(exc))


# -- models (what OpenAPI documents) ------------------------------------------------------------------
class EventBatch(BaseModel):
    events: list[Any] = Field(description=f"events (schema v1, ajr_supervisor.events); at most "
                                          f"{MAX_EVENTS_PER_REQUEST}; each is accepted or rejected on its own")
    host: str | None = Field(None, max_length=256, pattern=NO_NUL, description="the sending host")
    backlog: int | None = Field(None, ge=0, le=2**53, description="events still waiting in the sender's outbox")


class Rejected(BaseModel):
    id: str
    error: str


class IngestReply(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[Rejected]


class ActionRequest(BaseModel):
    action: Literal["requeue", "release", "hold"]
    reason: str = Field(min_length=1, max_length=1000, pattern=NO_NUL)


# -- routes --------------------------------------------------------------------------------------------
@router.get("/healthz", tags=["service"])
def healthz(request: Request) -> dict:
    """Liveness and database reachability (no token needed)."""
    try:
        ctx(request).db.check()
    except Exception as exc:
        raise HTTPException(503, f"database unreachable: {exc}") from None
    return {"status": "ok"}


@router.get("/metrics", tags=["service"], response_class=Response)
async def metrics(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Response:
    """Prometheus metrics (open when the config says metrics_open: true, else an admin token)."""
    c = ctx(request)
    if not c.settings.metrics_open:
        await role("admin")(await caller(request, cred))
    try:
        body, content_type = await run_in_threadpool(c.stats.render_metrics)
    except Unavailable as exc:
        raise _unavailable(exc) from None
    return Response(content=body, media_type=content_type)


@router.post("/api/v1/events", tags=["events"], response_model=IngestReply,
             responses={413: {"description": f"more than {MAX_EVENTS_PER_REQUEST} events"}})
async def post_events(batch: EventBatch, request: Request, who: Sender) -> dict:
    """Store events (idempotent by event id); a bad event is rejected alone, with a one-line reason."""
    if len(batch.events) > MAX_EVENTS_PER_REQUEST:
        raise HTTPException(413, f"{len(batch.events)} events in one request; send at most "
                                 f"{MAX_EVENTS_PER_REQUEST} per request")
    future = ctx(request).writer.submit(IngestRequest(batch.events, batch.host, batch.backlog))
    return (await asyncio.wrap_future(future)).as_dict()


@router.get("/api/v1/jobs", tags=["jobs"])
def list_jobs(request: Request, who: Reader, cluster: Text = None, user: Text = None,
              state: Literal[STATES] | None = None, name: Text = None,   # type: ignore[valid-type]
              since: Text = None, sort: Annotated[str, Query(max_length=16, pattern=NO_NUL)] = "-updated",
              limit: Limit = 50, offset: Offset = 0) -> dict:
    """Jobs, newest update first by default; ``sort`` is updated, created or job_id (``-`` for descending);
    ``since`` (Unix seconds or ISO 8601) keeps jobs updated since then. A user token sees its own jobs."""
    try:
        flt = queries.JobFilter(cluster, user, state, name, queries.parse_since(since))
        with ctx(request).db.read() as conn:
            return queries.list_jobs(conn, flt, who, sort=sort, limit=limit, offset=offset)
    except queries.QueryError as exc:
        raise _bad(exc) from None


@router.get("/api/v1/jobs/{cluster}/{job_id}", tags=["jobs"])
def get_job(request: Request, cluster: Name, job_id: Name, who: Reader) -> dict:
    """A job with its attempts (nodes, start/end, exit, end reason, anomalies, attribution, checkpoints,
    decision, actions), the nodes involved with their reputation, notifications, audit and KPIs."""
    c = ctx(request)
    with c.db.read() as conn:
        job = queries.find_job(conn, cluster, job_id, who)
        if job is None:
            raise HTTPException(404, f"no job {cluster}/{job_id}")
        attempts = queries.job_attempts(conn, job["id"])
        job_events = queries.job_event_bodies(conn, cluster, job_id)
        notes = [{k: v for k, v in n.items() if k != "payload"} for n in queries.job_notifications(conn, cluster, job_id)]
        audit = queries.job_audit(conn, cluster, job_id)
    out = {**queries.job_item(job), "attempts": attempts, "notifications": notes, "audit": audit}
    try:
        out["kpis"] = c.stats.job_kpis(job_events)
    except Unavailable:
        out["kpis"] = None
    try:
        reps = c.stats.reputation()
    except Unavailable:
        reps = {}
    out["nodes"] = [{"node": n, "reputation": asdict(reps[n]) if n in reps else None}
                    for n in queries.nodes_involved(attempts)]
    return out


@router.get("/api/v1/jobs/{cluster}/{job_id}/events", tags=["jobs"])
def get_job_events(request: Request, cluster: Name, job_id: Name, who: Reader,
                   type: Text = None, limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
                   offset: Offset = 0) -> dict:
    """The job's events as received, in time order."""
    types = tuple(t for t in (type or "").split(",") if t)
    with ctx(request).db.read() as conn:
        if queries.find_job(conn, cluster, job_id, who) is None:
            raise HTTPException(404, f"no job {cluster}/{job_id}")
        return {"total": queries.count_job_events(conn, cluster, job_id, types),
                "items": queries.job_event_bodies(conn, cluster, job_id, types=types, limit=limit, offset=offset)}


@router.post("/api/v1/jobs/{cluster}/{job_id}/actions", tags=["actions"])
def post_action(request: Request, cluster: Name, job_id: Name, body: ActionRequest, who: Admin) -> dict:
    """Requeue, release or hold the job through Slurm (admin); audited whatever the outcome. The audit
    entry comes back; ``ok`` false and ``result`` say when Slurm refused."""
    c = ctx(request)
    assert body.action in ACTIONS
    with c.db.read() as conn:
        job = queries.find_job(conn, cluster, job_id, who)
    if job is None:
        raise HTTPException(404, f"no job {cluster}/{job_id}")
    return perform(c.db, c.access, job, body.action, reason=body.reason, who=who.who, clock=c.clock,
                   planner=c.notifier)


@router.get("/api/v1/audit", tags=["actions"])
def get_audit(request: Request, who: Admin, cluster: Text = None, job_id: Text = None, limit: Limit = 100,
              offset: Offset = 0) -> dict:
    """Every action the registry ran (admins and the watchdog), newest first."""
    with ctx(request).db.read() as conn:
        return queries.list_audit(conn, cluster=cluster, job_id=job_id, limit=limit, offset=offset)


@router.get("/api/v1/notifications", tags=["notifications"])
def get_notifications(request: Request, who: Admin,
                      status: Literal[NOTIFICATION_STATUSES] | None = None,   # type: ignore[valid-type]
                      cluster: Text = None, job_id: Text = None,
                      severity: Literal["info", "warning", "critical"] | None = None,
                      limit: Limit = 100, offset: Offset = 0) -> dict:
    """Notifications planned at ingest and their delivery state, newest first."""
    with ctx(request).db.read() as conn:
        return queries.list_notifications(conn, status=status, cluster=cluster, job_id=job_id, severity=severity,
                                          limit=limit, offset=offset)


@router.get("/api/v1/kpis", tags=["kpis"])
def get_kpis(request: Request, who: Reader, cluster: Text = None, user: Text = None, name: Text = None,
             since: Text = None, limit: Limit = 200, offset: Offset = 0) -> dict:
    """Per-job KPIs (efficiency, downtime...) of the jobs updated most recently, and their aggregate."""
    c = ctx(request)
    try:
        flt = queries.JobFilter(cluster, user, None, name, queries.parse_since(since))
        with c.db.read() as conn:
            return c.stats.kpis(conn, flt, who, limit=limit, offset=offset)
    except queries.QueryError as exc:
        raise _bad(exc) from None
    except Unavailable as exc:
        raise _unavailable(exc) from None


@router.get("/api/v1/nodes", tags=["nodes"])
def get_nodes(request: Request, who: Reader, lemon: bool | None = None) -> dict:
    """Node reputation (failures attributed to each node, decayed score, lemon flag), worst first."""
    try:
        reps = ctx(request).stats.reputation()
    except Unavailable as exc:
        raise _unavailable(exc) from None
    nodes = sorted(reps.values(), key=lambda r: (-r.score, r.node))
    return {"nodes": [asdict(r) for r in nodes if lemon is None or r.lemon == lemon]}


@router.get("/api/v1/lemons", tags=["nodes"])
def get_lemons(request: Request, who: Annotated[Principal, Depends(role("supervisor", "user", "admin"))]) -> dict:
    """The lemon nodes' names, worst first: all a supervisor may read (``exclude_lemons``)."""
    try:
        reps = ctx(request).stats.reputation()
    except Unavailable as exc:
        raise _unavailable(exc) from None
    return {"nodes": lemons(reps)}


@router.get("/api/v1/nodes/{node}", tags=["nodes"])
def get_node(request: Request, node: Annotated[str, Path(min_length=1, max_length=256, pattern=NO_NUL)],
             who: Admin) -> dict:
    """One node: its reputation, the jobs that ran on it and its recent failure, health and action events."""
    c = ctx(request)
    try:
        rep = c.stats.reputation().get(node)
    except Unavailable as exc:
        raise _unavailable(exc) from None
    with c.db.read() as conn:
        ran = queries.node_jobs(conn, node)
        recent = [e for e in queries.events_by_type(conn, REPUTATION_TYPES, since=c.clock() - 30 * 86400)
                  if _mentions(e, node)][-100:]
    if rep is None and not ran and not recent:
        raise HTTPException(404, f"the registry knows no node {node!r}")
    return {"node": node, "reputation": asdict(rep) if rep else None, "jobs": ran, "events": recent}


def _mentions(event: dict, node: str) -> bool:
    data = event.get("data") or {}
    nodes = data.get("nodes") if isinstance(data.get("nodes"), list) else []
    return node in nodes or data.get("node") == node or node in str(data.get("detail") or "").replace(",", " ").split()
