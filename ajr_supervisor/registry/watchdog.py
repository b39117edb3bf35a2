"""The held-job watchdog: release jobs that ajr requeue-held and then left held.

A job is *held too long* when its latest ok ajr action is ``requeuehold``, with no later ok release
(or requeue, hold, stop) and no later attempt start, for longer than ``held_timeout_s`` (the
supervisor and the epilog normally release within seconds; both may have died). The watchdog
releases it through Slurm, audited as by ``watchdog``; when the release fails it escalates: a
critical ``notification`` event for the admins (stored, and planned to the notification channels).
One try per hold and per ``held_timeout_s``; the claim on the job row keeps two processes from
releasing one job twice. Time comes from the injected clock.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import update

from ajr_supervisor.events import make_event
from ajr_supervisor.registry import actions
from ajr_supervisor.registry.db import Database
from ajr_supervisor.registry.ingest import Planner, ingest
from ajr_supervisor.registry.models import jobs
from ajr_supervisor.registry.queries import held_too_long

log = logging.getLogger(__name__)

WHO = "watchdog"


class Watchdog:
    def __init__(self, db: Database, access: actions.SlurmAccess, *, held_timeout_s: float,
                 clock: Callable[[], float], planner: Planner | None = None) -> None:
        self.db, self.access, self.held_timeout_s, self.clock, self.planner = db, access, held_timeout_s, clock, planner

    def run_once(self) -> list[dict]:
        """One pass; returns the audit entries of the releases it tried."""
        now = self.clock()
        with self.db.read() as conn:
            candidates = held_too_long(conn, now=now, timeout_s=self.held_timeout_s)
        done = []
        for job in candidates:
            if not self._claim(job, now):
                continue
            held_s = now - job["hold_at"]
            entry = actions.perform(self.db, self.access, job, "release", who=WHO, clock=self.clock,
                                    planner=self.planner, reason=f"requeue-held by ajr for {held_s:.0f} s (held_timeout_s "
                                           f"{self.held_timeout_s:g}) with no release")
            done.append(entry)
            if not entry["ok"]:
                self._escalate(job, held_s, entry["result"])
        return done

    def _claim(self, job: dict, now: float) -> bool:
        old = job["watchdog_tried_at"]
        same = jobs.c.watchdog_tried_at.is_(None) if old is None else jobs.c.watchdog_tried_at == old
        with self.db.write() as conn:
            result = conn.execute(update(jobs).where(jobs.c.id == job["id"], same).values(watchdog_tried_at=now))
        return result.rowcount == 1

    def _escalate(self, job: dict, held_s: float, error: str) -> None:
        message = (f"job {job['cluster']}/{job['job_id']} has been requeue-held by ajr for {held_s:.0f} s and the "
                   f"watchdog could not release it: {error}; release it (scontrol release {job['job_id']}) "
                   "or cancel it")
        log.warning("%s", message)
        event = make_event("notification", cluster=job["cluster"], job_id=job["job_id"], attempt=job["attempt"],
                           job_name=job["job_name"] or "", user=job["user"] or "", source="registry",
                           when=self.clock(), data={"severity": "critical", "message": message, "by": WHO})
        ingest(self.db, [event], now=self.clock(), planner=self.planner)
