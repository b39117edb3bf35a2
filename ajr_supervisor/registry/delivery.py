"""Notification persistence and delivery.

At ingest, :meth:`Notifier.rows_for` turns each new event into ``notifications`` rows with
:func:`ajr_supervisor.registry.notify.plan` (who gets what) and the in-memory
:class:`~ajr_supervisor.registry.notify.Throttle` (``pending``, or ``suppressed`` with the reason).
The delivery loop calls :meth:`Notifier.deliver_due`: it claims due ``pending`` rows (so two
processes never send one twice), sends each through its channel and records ``sent``, or a retry
after ``retry_delay_s(attempts)``, or ``failed`` (permanent error, or too many tries).

A critical registry notification (the watchdog's escalation) that no channel takes still gets one
row (channel ``none``, ``failed``, saying no channel is configured), so admins see it in the API.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from sqlalchemy import select, update

from ajr_supervisor.registry import notify
from ajr_supervisor.registry.db import Database
from ajr_supervisor.registry.models import notifications
from ajr_supervisor.registry.settings import Settings

log = logging.getLogger(__name__)

CLAIM_S = 300.0          # a claimed row is not picked again for this long (a sender that died)
BATCH = 50
NO_CHANNEL = "none"
# Stands in for "no channel" so plan() still writes the subject and body of an escalation.
_NOWHERE = notify.Channel(name=NO_CHANNEL, kind="webhook", url="http://nowhere.invalid/", min_severity="critical")


class Notifier:
    """Plans notification rows at ingest and delivers them; ``sender`` is :func:`notify.send` unless a
    test passes another."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sender: Callable[..., None] | None = None) -> None:
        self.config = notify.load_notify_settings(settings.notifications)
        self.channels = {c.name: c for c in self.config.channels}
        self.admins = list(settings.admins)
        self.clock = clock
        self.throttle = notify.Throttle(self.config.dedupe_window_s, self.config.rate_limit_per_hour, clock)
        self._lock = threading.Lock()
        self._send = sender or notify.send

    def seed(self, db: Database) -> None:
        """Remember the last hour's admitted notifications (dedupe and rate limits survive a restart)."""
        since = self.clock() - notify.HOUR_S
        query = select(notifications.c.dedupe_key, notifications.c.channel, notifications.c.recipient,
                       notifications.c.created_at).where(notifications.c.created_at >= since,
                                                         notifications.c.status != "suppressed")
        with db.read() as conn:
            rows = [(k or "", c, r, t) for k, c, r, t in conn.execute(query)]
        with self._lock:
            self.throttle.seed(rows)

    # -- planning (inside the ingest transaction) ----------------------------------------------
    def rows_for(self, new_events: Sequence[dict], now: float) -> list[dict]:
        rows: list[dict] = []
        for event in new_events:
            planned = notify.plan(event, self.channels.values(), admins=self.admins) if self.channels else []
            for n in planned:
                with self._lock:
                    answer = self.throttle.admit(n)
                rows.append(_row(n, event, now, "pending" if answer == "send" else "suppressed",
                                 None if answer == "send" else answer))
            if not planned and event.get("source") == "registry" and event["type"] == "notification" \
                    and notify.severity_of(event) == "critical":
                n = notify.plan(event, [_NOWHERE], admins=self.admins)[0]
                rows.append(_row(replace(n, kind="", payload={}), event, now, "failed", "no notification channel takes critical registry "
                                 "notifications; add one under notifications.channels in the registry config"))
        return rows

    # -- delivery (the loop) ---------------------------------------------------------------------
    def deliver_due(self, db: Database, *, limit: int = BATCH) -> int:
        """Send the due pending notifications; returns how many were tried."""
        now = self.clock()
        query = (select(notifications).where(notifications.c.status == "pending",
                                             notifications.c.next_attempt_at <= now)
                 .order_by(notifications.c.next_attempt_at, notifications.c.id).limit(limit))
        with db.read() as conn:
            due = [dict(r._mapping) for r in conn.execute(query)]
        tried = 0
        for row in due:
            if not self._claim(db, row, now):
                continue
            tried += 1
            self._deliver(db, row)
        return tried

    def _claim(self, db: Database, row: dict, now: float) -> bool:
        with db.write() as conn:
            result = conn.execute(update(notifications).where(
                notifications.c.id == row["id"], notifications.c.status == "pending",
                notifications.c.next_attempt_at == row["next_attempt_at"]).values(next_attempt_at=now + CLAIM_S))
        return result.rowcount == 1

    def _deliver(self, db: Database, row: dict) -> None:
        attempts = row["attempts"] + 1
        channel = self.channels.get(row["channel"])
        values: dict[str, Any] = {"attempts": attempts}
        if channel is None:
            values.update(status="failed", last_error=f"channel {row['channel']!r} is no longer configured")
        else:
            n = notify.Notification(row["channel"], row["kind"] or channel.kind, row["recipient"], row["subject"],
                                    row["body"], row["severity"], row["dedupe_key"] or "", row["event_id"] or "",
                                    "", json.loads(row["payload"] or "{}"))
            try:
                self._send(n, channel, smtp=self.config.smtp)
            except notify.DeliveryError as exc:
                values.update(_failure(exc.one_line(), attempts, exc.permanent, self.clock()))
            except Exception as exc:   # a sender bug must not stop the loop; keep the row retrying
                values.update(_failure(f"{type(exc).__name__}: {exc}", attempts, False, self.clock()))
            else:
                values.update(status="sent", sent_at=self.clock(), last_error=None)
        if values.get("status") != "pending":
            log.info("notification %s to %s via %s: %s%s", row["id"], row["recipient"], row["channel"],
                     values.get("status", "retry"), f" ({values['last_error']})" if values.get("last_error") else "")
        with db.write() as conn:
            conn.execute(update(notifications).where(notifications.c.id == row["id"]).values(**values))


def _failure(error: str, attempts: int, permanent: bool, now: float) -> dict:
    error = " ".join(error.split())[:1000]
    if permanent or attempts >= notify.MAX_ATTEMPTS:
        return {"status": "failed", "last_error": error}
    return {"status": "pending", "last_error": error, "next_attempt_at": now + notify.retry_delay_s(attempts)}


def _row(n: notify.Notification, event: dict, now: float, status: str, error: str | None) -> dict:
    return {"event_id": event["id"], "cluster": event["cluster"], "job_id": event["job_id"], "channel": n.channel,
            "kind": n.kind, "recipient": n.recipient[:256], "subject": n.subject, "body": n.body,
            "payload": json.dumps(n.payload, separators=(",", ":"), default=str), "dedupe_key": n.dedupe_key[:256],
            "severity": n.severity, "status": status, "attempts": 0, "last_error": error,
            "next_attempt_at": now if status == "pending" else None, "created_at": now, "sent_at": None}
