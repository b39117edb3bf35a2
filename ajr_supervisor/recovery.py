"""Acting on a decision: the only place that changes the job (through ``slurm.py``).

The requeue sequence (ARCHITECTURE.md, "How it acts on Slurm"), run from inside the job by its own
user, ignoring the SIGTERM that ``requeuehold`` brings:

    scontrol requeuehold JOBID                 (Slurm kills the step and the batch script)
    scontrol update JobId=JOBID ExcNodeList=<union of all exclusions>   (only when it changed)
    scontrol release JOBID                     (with fast_restart, EpilogSlurmctld then sets
                                                 StartTime=now+1 once the job is PENDING)

Each action is recorded in the state file as it completes, so ``ajr epilog`` can finish a sequence
the supervisor could not (killed half way). STOP stops the step: SIGTERM, grace, SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from ajr_supervisor.config import Config
from ajr_supervisor.enroll import Enrollment
from ajr_supervisor.journal import NULL, Journal
from ajr_supervisor.slurm import Slurm, SlurmError
from ajr_supervisor.state import JobRecord, StateStore
from ajr_supervisor.types import Decision, Verdict

if TYPE_CHECKING:
    from ajr_supervisor.supervisor import JobContext

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, slurm: Slurm, store: StateStore, job: "JobContext", attempt: int,
                 enrollment: Enrollment, config: Config, journal: Journal = NULL) -> None:
        self.journal = journal
        self.slurm = slurm
        self.store = store
        self.job = job
        self.attempt = attempt
        self.enrollment = enrollment
        self.config = config

    def execute(self, decision: Decision, step: subprocess.Popen | None) -> bool:
        """Carry out ``decision``; True when every action succeeded."""
        if decision.verdict == Verdict.STOP:
            if step is not None:
                self.stop_step(step)
            return True
        if decision.verdict not in (Verdict.REQUEUE, Verdict.EXCLUDE_AND_REQUEUE):
            return True
        if self.enrollment.mode == "singleton_dependency":
            return self._release_next_singleton()
        # From here on Slurm signals us (requeuehold kills the job): finish the sequence regardless.
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except ValueError:  # not the main thread (tests)
            pass
        job_id = self.job.job_id
        ok = self._do("requeuehold", lambda: self.slurm.requeuehold(job_id))
        if not ok:
            return False
        record = self.store.load(job_id)
        before = set(record.excluded_nodes) if record else set()
        if set(decision.exclude) != before:
            ok = self._do("exclude", lambda: self.slurm.set_excluded_nodes(job_id, decision.exclude),
                          detail=",".join(decision.exclude)) and ok
            if ok and not self.slurm.dry_run:
                self.store.update(job_id, lambda rec: setattr(rec, "excluded_nodes", sorted(decision.exclude)))
        return self._do("release", lambda: self.slurm.release(job_id)) and ok

    def _do(self, action: str, call, detail: str = "") -> bool:
        t0 = time.time()
        error = None
        try:
            call()
        except SlurmError as exc:
            error = exc.one_line()
        entry = {"action": action, "ok": error is None, "at": t0, "error": error,
                 "detail": detail, "dry_run": self.slurm.dry_run}
        if error:
            log.error("job %s attempt %d: %s failed: %s", self.job.job_id, self.attempt, action, error)
        else:
            log.info("job %s attempt %d: %s%s done%s", self.job.job_id, self.attempt, action,
                     f" {detail}" if detail else "", " (dry run)" if self.slurm.dry_run else "")

        def change(rec: JobRecord) -> None:
            a = rec.attempt(self.attempt)
            if a is not None:
                a.actions.append(entry)

        self.store.update(self.job.job_id, change)
        self.journal.emit("action", self.attempt, entry, when=t0)
        return error is None

    def stop_step(self, step) -> None:
        """SIGTERM the step (srun forwards it to every task), then SIGKILL after the grace period."""
        if not isinstance(step, subprocess.Popen):   # attach mode: not our child
            step.stop(self.config.stop_grace_s)
            return
        if step.poll() is not None:
            return
        log.info("job %s attempt %d: stopping the step (SIGTERM, %gs grace)", self.job.job_id,
                 self.attempt, self.config.stop_grace_s)
        _signal(step, signal.SIGTERM)
        try:
            step.wait(timeout=self.config.stop_grace_s)
        except subprocess.TimeoutExpired:
            _signal(step, signal.SIGKILL)
            try:
                step.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("job %s: the step did not die after SIGKILL", self.job.job_id)

    def _release_next_singleton(self) -> bool:
        """AJR's deprecated singleton_dependency mode: release the next held job of the chain."""
        rows = self.slurm.pending_held_jobs(self.job.name, self.job.user)
        rows = [r for r in rows if r.job_id != self.job.job_id]
        if not rows:
            log.warning("job %s: singleton_dependency: no held job named %r of user %s to release",
                        self.job.job_id, self.job.name, self.job.user)
            return False
        nxt = sorted(rows, key=lambda r: int(r.job_id.split("_")[0]) if r.job_id.split("_")[0].isdigit() else 0)[0]
        return self._do("release_next", lambda: self.slurm.release(nxt.job_id), detail=nxt.job_id)


def _signal(step: subprocess.Popen, sig: int) -> None:
    try:
        os.kill(step.pid, sig)
    except ProcessLookupError:
        pass
