"""Registry events of one job, written to its outbox: what the supervisor and ``ajr epilog`` report.

:class:`Journal` stamps each event with the job (cluster, id, name, user, partition) and the
source, puts it in the outbox (:mod:`ajr_supervisor.outbox`: on disk first, delivered by a
background thread) and never raises: a registry that is down or an outbox that cannot be written
costs the training nothing. Without a ``registry_url`` events still go to disk and wait there
(``ajr outbox flush`` sends them once a registry is configured). :data:`NULL` is a journal that
drops everything, for tests and for jobs without a state directory.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ajr_supervisor import events

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, outbox: Any | None, *, cluster: str, job_id: str, job_name: str = "", user: str = "",
                 partition: str = "", source: str = "supervisor", deliverer: Any | None = None) -> None:
        self.outbox, self.deliverer = outbox, deliverer
        self.job = {"cluster": cluster, "job_id": str(job_id), "job_name": job_name, "user": user,
                    "partition": partition}
        self.source = source
        self.sent: list[dict] = []          # what was put (kept for tests and `ajr status`)

    def emit(self, type: str, attempt: int | None, data: Mapping[str, Any], *, when: float | None = None) -> None:
        if self.outbox is None:
            return
        try:
            event = events.make_event(type, attempt=attempt, data=dict(data), source=self.source, when=when,
                                      **self.job)
        except events.EventError as exc:      # a bug of ours: log it, never break the training
            log.warning("job %s: event %s not recorded: %s", self.job["job_id"], type, exc)
            return
        if self.outbox.put(event):
            self.sent.append(event)

    def close(self, flush_s: float = 2.0) -> None:
        """Stop the deliverer, sending what waits for at most about ``flush_s``."""
        if self.deliverer is not None:
            try:
                self.deliverer.stop(flush_s)
            except Exception as exc:   # noqa: BLE001 - the end of a job must not fail on delivery
                log.warning("job %s: event delivery did not stop cleanly: %s", self.job["job_id"], exc)
            self.deliverer = None


NULL = Journal(None, cluster="-", job_id="-")


def open_journal(config: Any, work_dir: str, job: Mapping[str, str], *, source: str = "supervisor",
                 deliver: bool = True, env: Mapping[str, str] | None = None) -> Journal:
    """The job's journal: its outbox (``config.outbox_path(work_dir)``) and, with ``deliver``, a
    running :class:`~ajr_supervisor.outbox.Deliverer`. Falls back to :data:`NULL` (with one
    warning) when the outbox cannot be set up."""
    from ajr_supervisor.outbox import Deliverer, from_config

    try:
        outbox = from_config(config, work_dir, env)
        deliverer = Deliverer(outbox).start() if deliver and config.registry_url else None
    except Exception as exc:   # noqa: BLE001 - reporting must never stop the supervision
        log.warning("job %s: registry events are off: %s", job.get("job_id"), exc)
        return NULL
    return Journal(outbox, cluster=config.cluster(env), source=source, deliverer=deliverer,
                   job_id=job.get("job_id", ""), job_name=job.get("job_name", ""), user=job.get("user", ""),
                   partition=job.get("partition", ""))
