"""Actions on jobs (admin requests and the watchdog): run them through Slurm, audit them, record them.

Slurm is the injected :class:`ajr_supervisor.slurm.Slurm` (``scontrol requeue|release|hold``), or a
mapping of cluster name to one when the registry serves several clusters. Every attempt is written
to the ``audit`` table, ok or not, and stored as an ``action`` event (source ``registry``) of the
job in the same transaction, so the projection (state, held watch), the job's history and the
notification plan (a failed action is critical) see it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping

from sqlalchemy import insert

from ajr_supervisor.errors import AjrError
from ajr_supervisor.events import make_event
from ajr_supervisor.registry.db import Database
from ajr_supervisor.registry.ingest import Planner, project, store
from ajr_supervisor.registry.models import audit, notifications

log = logging.getLogger(__name__)

ACTIONS = ("requeue", "release", "hold")


class NoSlurmError(AjrError):
    """The registry has no Slurm access for the job's cluster."""


class SlurmAccess:
    """Which Slurm handle acts on which cluster: one for all, or one per cluster name."""

    def __init__(self, slurm: Any) -> None:
        self._slurm = slurm

    def for_cluster(self, cluster: str) -> Any:
        if self._slurm is None:
            raise NoSlurmError("this registry has no Slurm access", "start it where scontrol works")
        if isinstance(self._slurm, Mapping):
            try:
                return self._slurm[cluster]
            except KeyError:
                known = ", ".join(sorted(self._slurm)) or "none"
                raise NoSlurmError(f"no Slurm access configured for cluster {cluster!r} (configured: {known})",
                                   "add it under slurm_confs in the registry config") from None
        return self._slurm


def run_action(slurm: Any, action: str, job_id: str) -> tuple[bool, str, bool]:
    """Run one action; returns ``(ok, result, dry_run)`` and never raises for a Slurm failure."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    dry_run = bool(getattr(slurm, "dry_run", False))
    try:
        getattr(slurm, action)(job_id)
    except AjrError as exc:
        return False, exc.one_line(), dry_run
    except Exception as exc:    # a Slurm handle must not take the service down; say what it was
        return False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", dry_run
    return True, ("dry run: nothing changed" if dry_run else "ok"), dry_run


def perform(db: Database, access: SlurmAccess, job: Mapping[str, Any], action: str, *, reason: str, who: str,
            clock: Callable[[], float], planner: Planner | None = None) -> dict:
    """Run ``action`` on ``job`` (a jobs row), audit it and record it; returns the audit entry."""
    try:
        slurm = access.for_cluster(job["cluster"])
    except NoSlurmError as exc:
        ok, result, dry_run = False, exc.one_line(), False
    else:
        ok, result, dry_run = run_action(slurm, action, job["job_id"])
    now = clock()
    log.info("job %s/%s attempt %s: %s by %s: %s", job["cluster"], job["job_id"], job.get("attempt"), action, who,
             result)
    entry = {"at": now, "who": who[:256], "action": action, "cluster": job["cluster"], "job_id": job["job_id"],
             "reason": reason, "ok": ok, "result": result}
    event = make_event("action", cluster=job["cluster"], job_id=job["job_id"], attempt=job.get("attempt"),
                       job_name=job.get("job_name") or "", user=job.get("user") or "", source="registry",
                       when=now, data={"action": action, "ok": ok, "error": None if ok else result,
                                       "detail": f"{who}: {reason}"[:1000], "dry_run": dry_run, "by": who})
    with db.write() as conn:
        entry["id"] = conn.execute(insert(audit).values(**entry).returning(audit.c.id)).scalar_one()
        new = store(conn, [(event, _body(event))], now=now)
        if new:
            project(conn, new, pg=conn.dialect.name == "postgresql")
            rows = planner.rows_for(new, now) if planner is not None else []
            if rows:
                conn.execute(insert(notifications), rows)
    return entry


def _body(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))
