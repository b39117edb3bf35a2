"""Derived figures: job KPIs (:mod:`.kpi`), node reputation (:mod:`.reputation`) and the ``/metrics``
snapshot (:mod:`.metrics`), read from the database.

Reputation and the metrics snapshot read many events, so each is cached for ``metrics_cache_s``
(a scrape every few seconds costs one computation). Modules another part of the registry provides
are imported when first used; a missing one makes only its endpoint answer 503.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from sqlalchemy import Connection, and_, func, or_, select

from ajr_supervisor.registry.auth import Principal
from ajr_supervisor.registry.db import Database
from ajr_supervisor.registry.models import attempts, events, jobs, notifications, senders
from ajr_supervisor.registry.queries import JobFilter, events_by_type, events_of_jobs, jobs_for_kpis
from ajr_supervisor.registry.settings import Settings

REPUTATION_TYPES = ("attribution", "action", "node_health")
ACTIVE_STATES = ("running", "requeued", "held")
RECENT_S = 3600.0          # /metrics: efficiency of active jobs and of those updated this recently
MAX_EFFICIENCY_JOBS = 1000


class Unavailable(RuntimeError):
    """A module this figure needs is not installed (yet); the message names it."""


def _module(name: str):
    import importlib

    try:
        return importlib.import_module(f"ajr_supervisor.registry.{name}")
    except ImportError as exc:
        raise Unavailable(f"ajr_supervisor.registry.{name} is not available ({exc})") from None


class Stats:
    def __init__(self, db: Database, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.db, self.settings, self.clock = db, settings, clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.RLock()     # the metrics snapshot reads the cached reputation

    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < self.settings.metrics_cache_s:
                return hit[1]
            value = compute()
            self._cache[key] = (time.monotonic(), value)
            return value

    # -- KPIs ------------------------------------------------------------------------------------
    def job_kpis(self, job_events: list[dict]) -> dict:
        kpi = _module("kpi")
        return kpi.job_kpis(job_events, now=self.clock(), success_at=self.settings.kpi_success_at)

    def kpis(self, conn: Connection, flt: JobFilter, who: Principal, *, limit: int, offset: int) -> dict:
        kpi = _module("kpi")
        rows = jobs_for_kpis(conn, flt, who, limit=limit, offset=offset)
        by_job = events_of_jobs(conn, [(r["cluster"], r["job_id"]) for r in rows])
        now = self.clock()
        items = [{**r, **kpi.job_kpis(by_job[(r["cluster"], r["job_id"])], now=now,
                                      success_at=self.settings.kpi_success_at)} for r in rows]
        return {"aggregate": kpi.aggregate_kpis(items), "jobs": items}

    # -- nodes -------------------------------------------------------------------------------------
    def reputation(self) -> dict[str, Any]:
        """node -> NodeReputation, over every attribution, action and node_health event."""
        def compute() -> dict[str, Any]:
            rep = _module("reputation")
            with self.db.read() as conn:
                feed = events_by_type(conn, REPUTATION_TYPES)
            s = self.settings
            return rep.node_reputation(feed, now=self.clock(), half_life_s=s.reputation_half_life_s,
                                       lemon_min_failures=s.lemon_min_failures, lemon_min_jobs=s.lemon_min_jobs)
        return self._cached("reputation", compute)

    # -- /metrics ----------------------------------------------------------------------------------
    def render_metrics(self) -> tuple[bytes, str]:
        metrics = _module("metrics")
        return self._cached("metrics", lambda: metrics.render(self.snapshot()))

    def snapshot(self) -> Any:
        metrics = _module("metrics")
        reps = self.reputation()
        now = self.clock()
        with self.db.read() as conn:
            by_state = dict(conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())
            requeues = conn.execute(select(func.coalesce(func.sum(jobs.c.requeues), 0))).scalar_one()
            ingested = dict(conn.execute(select(events.c.type, func.count()).group_by(events.c.type)).all())
            notes = dict(conn.execute(select(notifications.c.status, func.count())
                                      .group_by(notifications.c.status)).all())
            backlog = dict(conn.execute(select(senders.c.host, senders.c.backlog)).all())
            anomalies: dict[tuple[str, str], int] = {}
            for body in conn.execute(select(events.c.body).where(events.c.type == "anomaly")).scalars():
                data = json.loads(body).get("data") or {}
                key = (str(data.get("anomaly") or "UNKNOWN"), str(data.get("component") or "UNKNOWN"))
                anomalies[key] = anomalies.get(key, 0) + 1
            detection, recovery = _latencies(conn)
            efficiency, aggregate = self._efficiency(conn, now)
        return metrics.MetricsSnapshot(
            jobs_by_state={k: int(v) for k, v in by_state.items()}, anomalies=anomalies, requeues_total=int(requeues),
            detection_latency_s=detection, recovery_latency_s=recovery, efficiency=efficiency,
            efficiency_aggregate=aggregate, outbox_backlog={k: int(v) for k, v in backlog.items()},
            nodes_drained=sum(1 for r in reps.values() if r.drained_by_ajr),
            lemon_nodes=sorted(n for n, r in reps.items() if r.lemon),
            node_failures={n: r.failures for n, r in reps.items()},
            events_ingested={k: int(v) for k, v in ingested.items()},
            notifications={k: int(v) for k, v in notes.items()})

    def _efficiency(self, conn: Connection, now: float) -> tuple[dict[str, float], float | None]:
        kpi = _module("kpi")
        rows = conn.execute(select(jobs.c.cluster, jobs.c.job_id).where(
            or_(jobs.c.state.in_(ACTIVE_STATES), jobs.c.updated_at >= now - RECENT_S))
            .order_by(jobs.c.updated_at.desc()).limit(MAX_EFFICIENCY_JOBS)).all()
        keys = [(r.cluster, r.job_id) for r in rows]
        per_job = {k: kpi.job_kpis(evs, now=now, success_at=self.settings.kpi_success_at)
                   for k, evs in events_of_jobs(conn, keys).items()}
        efficiency = {f"{c}/{j}": k["efficiency"] for (c, j), k in per_job.items() if k["efficiency"] is not None}
        aggregate = kpi.aggregate_kpis(list(per_job.values()))["efficiency"] if per_job else None
        return efficiency, aggregate


def _latencies(conn: Connection) -> tuple[list[float], list[float]]:
    """Detection (failure -> decision) and recovery (failure -> next attempt's first step, else its
    start) of every decided attempt."""
    a, nxt = attempts.alias("a"), attempts.alias("nxt")
    rows = conn.execute(select(a.c.failure_at, a.c.decided_at, nxt.c.first_step_at, nxt.c.started_at)
                        .select_from(a.outerjoin(nxt, and_(nxt.c.job_pk == a.c.job_pk,
                                                           nxt.c.attempt == a.c.attempt + 1)))
                        .where(a.c.failure_at.is_not(None), a.c.decided_at.is_not(None))).all()
    detection = [max(0.0, r.decided_at - r.failure_at) for r in rows]
    recovery = [max(0.0, (r.first_step_at or r.started_at) - r.failure_at) for r in rows
                if (r.first_step_at or r.started_at) is not None]
    return detection, recovery
