"""Attach mode (``ajr run --attach``): the job's steps, watched through Slurm, stand in for the
step process the supervisor did not start."""

from __future__ import annotations

import logging
from typing import Callable

from ajr_supervisor.errors import AjrError
from ajr_supervisor.slurm import Slurm

log = logging.getLogger("ajr_supervisor.supervisor")


class StepWatcher:
    """Stands in for the step process in attach mode: ``poll()`` is None while a step of the job
    runs (asked from squeue at most every ``interval_s``), 0 once the steps are gone."""

    attached = True
    pid = None

    def __init__(self, slurm: Slurm, job_id: str, clock: Callable[[], float], *, interval_s: float = 2.0,
                 first_step_timeout_s: float = 120.0) -> None:
        self.slurm, self.job_id, self.clock = slurm, job_id, clock
        self.interval_s = interval_s
        self.started = clock()
        self.first_step_timeout_s = first_step_timeout_s
        self.seen: list[str] = []
        self._next = 0.0
        self._done = False

    def poll(self) -> int | None:
        if self._done:
            return 0
        now = self.clock()
        if now < self._next:
            return None
        self._next = now + self.interval_s
        try:
            steps = self.slurm.running_steps(self.job_id)
        except AjrError as exc:   # unknown is not "ended"
            log.warning("job %s: cannot list its steps (%s); still watching", self.job_id, exc.one_line())
            return None
        if steps:
            self.seen = steps
            return None
        if self.seen or now - self.started > self.first_step_timeout_s:
            self._done = True
            return 0
        return None

    def stop(self, grace_s: float) -> None:
        """STOP in attach mode: cancel the running steps (srun forwards SIGTERM, then SIGKILL)."""
        for step in self.seen:
            try:
                self.slurm.scancel(step)
            except AjrError as exc:
                log.error("job %s: cannot cancel step %s: %s", self.job_id, step, exc.one_line())
