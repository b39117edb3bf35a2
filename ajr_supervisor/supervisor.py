"""The loop inside the allocation: gather -> detect -> decide -> act -> report.

``Supervisor.run`` starts the training step (``srun -l -u``) writing straight to the unified log,
follows that log, and on a fatal line (after a short settle), a hang or the step's exit decides with
:mod:`ajr_supervisor.policy` and acts through :mod:`ajr_supervisor.recovery`. Everything it learns
goes to the per-job state file first.

Exit codes of ``ajr run`` (documented in the README):
  the training's own code  when it ended and ajr did nothing (success, or a failure left alone)
  75 (EXIT_REQUEUED)       ajr requeued the job (usually never seen: Slurm ends the batch script first)
  79 (EXIT_STOPPED)        ajr stopped the job: requeue limit, crash loop or deterministic error
  143                      the job was cancelled or ended by Slurm (scancel, time limit) while running
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from ajr_supervisor.attribute import HealthFault, attribute
from ajr_supervisor.config import Config
from ajr_supervisor.detect.analyzer import CheckpointSeen, LogAnalyzer
from ajr_supervisor.detect.crash import exit_finding
from ajr_supervisor.detect.sieve import interesting_lines
from ajr_supervisor.detect.watch import ProgressWatch
from ajr_supervisor.evidence import NodeProbe, capture_stacks, parse_probe_output, parse_stack_dumps  # noqa: F401
from ajr_supervisor.detect.srun import TASK_WRAPPER, NodeFailure, TaskEnd
from ajr_supervisor.enroll import Enrollment, effective_max_requeues
from ajr_supervisor.journal import NULL, Journal
from ajr_supervisor.logtail import LogFollower
from ajr_supervisor.policy import PastAttempt, PolicyInput, decide
from ajr_supervisor.recovery import Recovery
from ajr_supervisor.stepwatch import StepWatcher
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.slurm import Slurm, expand_hostlist
from ajr_supervisor.state import FAILURE_REASONS, Attempt, JobRecord, StateStore
from ajr_supervisor.health import NodeHealth
from ajr_supervisor.health.probe import component_of
from ajr_supervisor.types import Action, Anomaly, Decision, Finding, LogLine, Trigger, Verdict

log = logging.getLogger(__name__)

EXIT_REQUEUED = 75
EXIT_STOPPED = 79
EXIT_TERMINATED = 143
READ_INTERVAL_S = 0.1           # the log is read at most this often (a busy log's writes are batched)
MAX_RECORDED_ANOMALIES = 50


@dataclass(frozen=True)
class JobContext:
    """What the supervisor knows about its job, read from Slurm at start."""

    job_id: str
    name: str
    user: str
    partition: str
    work_dir: str
    nodes: tuple[str, ...]
    restarts: int
    comment: str
    end_time: float | None = None      # Slurm's EndTime (wall clock) of a running job; None: unknown/unlimited

    @classmethod
    def from_slurm(cls, slurm: Slurm, job_id: str) -> "JobContext":
        job = slurm.show_job(job_id)
        comment = slurm.job_comment(job_id)
        return cls(job_id=str(job_id), name=job.name, user=job.user, partition=job.partition,
                   work_dir=job.fields.get("WorkDir", os.getcwd()), nodes=tuple(expand_hostlist(job.nodes)),
                   restarts=job.restarts, comment=comment, end_time=_slurm_time(job.fields.get("EndTime")))


def _slurm_time(text: str | None) -> float | None:
    """``2026-11-25T12:30:00`` (local time, as scontrol prints it) -> epoch seconds; else None."""
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None   # Unknown, None, an UNLIMITED job


def log_file_name(job_name: str, job_id: str, when: float) -> str:
    """AJR's unified log name: ``{job_name}_{job_id}_date_%y-%m-%d_time_%H-%M-%S.log``."""
    safe = job_name.replace("/", "_") or "job"
    return f"{safe}_{job_id}_date_{time.strftime('%y-%m-%d_time_%H-%M-%S', time.localtime(when))}.log"


class Supervisor:
    def __init__(self, job: JobContext, config: Config, enrollment: Enrollment, *, slurm: Slurm,
                 store: StateStore, rules: RuleSet, log_dir: Path,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 journal: Journal = NULL, lemons: Sequence[str] = ()) -> None:
        self.job = job
        self.lemons = tuple(lemons)         # the registry's lemon nodes (exclude_lemons), excluded on a requeue
        self.journal = journal
        self.config = config
        self.enrollment = enrollment
        self.slurm = slurm
        self.store = store
        self.rules = rules
        self.log_dir = log_dir
        self.clock = clock
        self.wall = wall
        self.attempt = job.restarts
        self.hang_timeout_s = enrollment.hang_timeout_s or config.hang_timeout_s
        self.max_requeues = effective_max_requeues(config.max_requeue_times, enrollment)
        self.analyzer = LogAnalyzer(rules)
        self.watch: ProgressWatch | None = None        # made when the step starts (its clock starts then)
        self.trigger_findings: list[Finding] = []      # ones that end the attempt (a straggler to exclude)
        self.started_at = wall()
        self.health: dict[str, NodeHealth] = {}
        self.health_faults: list[HealthFault] = []
        self.probe = NodeProbe(slurm, job.job_id, job.nodes, since=self.started_at, log_dir=log_dir,
                               timeout_s=config.probe_timeout_s, info=self.info)
        self.hang_findings: list[Finding] = []
        self.checkpoints: list[dict] = []
        self._first_step_at: float | None = None
        self._terminated: int | None = None
        self._follower: LogFollower | None = None

    # -- logging helper -----------------------------------------------------------------------
    def info(self, msg: str, *args) -> None:
        log.info("job %s attempt %d: " + msg, self.job.job_id, self.attempt, *args)

    # -- the run ------------------------------------------------------------------------------
    def run(self, srun_args: Sequence[str], command: Sequence[str]) -> int:
        started = self.wall()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / log_file_name(self.job.name, self.job.job_id, started)
        self._begin_attempt(started, log_path)
        args = list(srun_args)
        if self.config.srun_kill_on_bad_exit and not any(
                a == "-K" or a.startswith(("-K", "--kill-on-bad-exit")) for a in args):
            args.insert(0, "--kill-on-bad-exit=1")
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = self.slurm.launch_step(args, command, stdout=fd, wrapper=TASK_WRAPPER)
        finally:
            os.close(fd)
        self.info("started %s (log %s, hang timeout %gs, requeues %d of %d used)",
                  " ".join(command), log_path, self.hang_timeout_s, self.attempt, self.max_requeues)
        old_term = signal.signal(signal.SIGTERM, self._on_term)
        follower = self._follower = LogFollower(log_path, clock=self.clock, min_interval_s=READ_INTERVAL_S)
        threading.Thread(target=self._wake_on_exit, args=(proc, follower), daemon=True).start()
        try:
            return self._supervise(proc, follower)
        finally:
            follower.close()
            try:
                signal.signal(signal.SIGTERM, old_term)
            except (ValueError, TypeError):
                pass

    def attach(self, log_path: Path) -> int:
        """Follow a log that the script's own ``srun --output=LOG`` writes (``ajr run --attach``).

        Fatal lines and hangs are acted on as usual. The step is not our child, so its exit code
        is not ours to see: once no step of the job runs any more, the attempt is left for
        EpilogSlurmctld (``ajr epilog``), which analyses this log with the job's exit code.
        """
        self._begin_attempt(self.wall(), log_path)
        self.info("attached to %s (hang timeout %gs, requeues %d of %d used)", log_path,
                  self.hang_timeout_s, self.attempt, self.max_requeues)
        old_term = signal.signal(signal.SIGTERM, self._on_term)
        # A requeued job's srun appends to the same file: this attempt starts where the previous
        # attempt's supervisor stopped reading it.
        record = self.store.load(self.job.job_id)
        prev = [a for a in (record.attempts if record else []) if a.attempt < self.attempt and a.log_path == str(log_path)]
        offset = prev[-1].log_offset if prev else 0
        follower = self._follower = LogFollower(log_path, offset=offset, clock=self.clock,
                                                min_interval_s=READ_INTERVAL_S)
        try:
            return self._supervise(StepWatcher(self.slurm, self.job.job_id, self.clock), follower)
        finally:
            follower.close()
            signal.signal(signal.SIGTERM, old_term)

    def _on_term(self, signum, frame) -> None:
        self._terminated = signum
        if self._follower is not None:
            self._follower.wake()

    @staticmethod
    def _wake_on_exit(proc, follower: LogFollower) -> None:
        proc.wait()
        follower.wake()

    def _supervise(self, proc, follower: LogFollower) -> int:
        watch = self.watch = self._new_watch()
        settle_until: float | None = None
        decided = cancel_wait = False
        while True:
            for line in self._read(follower, watch):
                if self._on_line(line, watch) and settle_until is None:
                    settle_until = self.clock() + self.config.settle_s
                    self._start_probe()   # node health, in parallel with the settle
            rc = proc.poll()
            now = self.clock()
            if rc is not None:
                for line in self._read(follower, watch, final=True):
                    self._on_line(line, watch)
                if isinstance(proc, StepWatcher) and not decided:
                    self.info("no step of the job runs any more; its exit is left to EpilogSlurmctld")
                    self._record_decision_free_end()
                    return 0
                if decided:   # dry run, or a cancel seen while running: decided and recorded already
                    if self.slurm.dry_run:
                        self._end_attempt(rc, "dry run: ended on its own", None)
                    return EXIT_TERMINATED if self.analyzer.cancelled() and not self.slurm.dry_run else rc
                if rc != 0 and self._terminated is None and (rc in (143, -15) or self.analyzer.looks_cancelled()):
                    self._await_cancel(follower, watch)
                if self._terminated is not None:
                    return self._on_external_end(proc)
                return self._on_exit(rc)
            if self._terminated is not None and not decided:
                return self._on_external_end(proc)
            if decided:
                follower.wait(self.config.poll_interval_s)
                continue
            why = None
            if settle_until is not None and now >= settle_until:
                if self.analyzer.looks_cancelled() and not cancel_wait:
                    # only SIGTERM'd tasks so far: a scancel's CANCELLED line or SIGTERM may follow
                    cancel_wait, settle_until = True, now + self.config.settle_s
                    continue
                why = "fatal line"
            else:
                finding = watch.check(now)
                if finding is not None:
                    self.hang_findings.append(finding)
                    self.info("HANG detected: %s", finding.reason)
                    why = "hang"
            if why:
                result = self._decide_and_act(proc, step_failed=True, exit_code=None)
                if result is not None:
                    return result
                decided = True        # dry run: keep following until the step ends
                continue
            timeout = self.config.poll_interval_s
            if settle_until is not None:
                timeout = min(timeout, max(0.0, settle_until - now))
            timeout = min(timeout, max(0.01, watch.deadline() - now))
            follower.wait(timeout)

    def _await_cancel(self, follower: LogFollower, watch: ProgressWatch) -> None:
        """The step died by SIGTERM: a scancel or time limit, whose SIGTERM to us (or slurmstepd's
        CANCELLED line) can trail srun's exit. Wait up to ``settle_s`` for either before deciding."""
        deadline = self.clock() + self.config.settle_s
        while self._terminated is None and self.analyzer.cancelled() is None and self.clock() < deadline:
            follower.wait(min(0.05, max(0.0, deadline - self.clock())))
            for line in self._read(follower, watch, final=True):
                self._on_line(line, watch)

    def _read(self, follower: LogFollower, watch: ProgressWatch, final: bool = False) -> list[LogLine]:
        """The new lines any detector may act on (:mod:`~ajr_supervisor.detect.sieve`); every
        other new line only counts as a sign of life."""
        buf, offset, now = follower.read_block(final)
        if buf:
            watch.heard(now)
        return interesting_lines(buf, offset, now, self.rules)

    def _new_watch(self) -> ProgressWatch:
        wall_end = self.job.end_time
        return ProgressWatch(self.config, self.clock(), hang_timeout_s=self.hang_timeout_s,
                             remaining_s=(lambda: wall_end - self.wall()) if wall_end else (lambda: None),
                             restart_cost_s=self._restart_cost_s())

    def _restart_cost_s(self) -> float:
        """Queue wait + restart to the first step: the job's own last requeue when known (its
        attempt's end to the next attempt's first step), else the config's restart_cost_s."""
        record = self.store.load(self.job.job_id)
        attempts = record.attempts if record else []
        seen = [b.first_step_at - a.ended_at for a, b in zip(attempts, attempts[1:])
                if a.ended_at and b.first_step_at and b.first_step_at > a.ended_at]
        return seen[-1] if seen else self.config.restart_cost_s

    def _on_line(self, line: LogLine, watch: ProgressWatch) -> bool:
        """Feed one line to the detectors (``_read`` already told the watch a line arrived); True
        when it is a fatal line that proves death."""
        seen = self.analyzer.feed(line)
        if isinstance(seen, CheckpointSeen):
            self._record_checkpoint(line, seen.iteration)
            return self._straggler_ends(watch.checkpoint(line.time))
        if isinstance(seen, Finding):
            if len(self.analyzer.findings) <= 5 or seen.trigger == Trigger.IMMEDIATE:
                self.info("%s (%s, rule %s) at line: %s", seen.anomaly.value, seen.component.value,
                          seen.rule_id, seen.line)
            return seen.trigger == Trigger.IMMEDIATE
        if isinstance(seen, (TaskEnd, NodeFailure)):
            # A task is gone: the others would wait for it forever in their next collective.
            self.info("srun reports: %s", line.text)
            return True
        if seen is None:
            before = len(watch.findings)
            ends = watch.line(line.time, line.text, line.rank, self.analyzer.rank_nodes)
            if watch.first_progress_at is not None and self._first_step_at is None:
                self._record_first_step()
            for f in watch.findings[before:]:
                self.info("%s: %s", f.anomaly.value, f.reason)
            return self._straggler_ends(ends)
        return False

    def _straggler_ends(self, finding: Finding | None) -> bool:
        """A straggler worth excluding (straggler_action exclude, or auto once it pays): act now."""
        if finding is None:
            return False
        if self.watch is not None and self.watch.note:
            self.info("straggler cost: %s", self.watch.note)
        self.trigger_findings.append(finding)
        return True

    # -- endings ------------------------------------------------------------------------------
    def _on_exit(self, rc: int) -> int:
        if rc == 0:
            # Every task exited 0: the training finished its own way. A fatal line seen on the way
            # is kept as evidence (node reputation) but does not requeue a finished job.
            self.info("the step completed (exit 0)")
            self._record_decision(Decision(Verdict.NONE, "completed successfully"), step_failed=False,
                                  findings=self.hang_findings + self.analyzer.all_findings())
            self._end_attempt(0, "success", None)
            return 0
        self.info("the step failed (exit %d)", rc)
        result = self._decide_and_act(None, step_failed=True, exit_code=rc)
        return rc if result is None else result

    def _on_external_end(self, proc) -> int:
        """SIGTERM we did not cause: scancel, time limit, preemption or Slurm's own requeue."""
        self.info("terminated by Slurm or the user (signal %d): no action", self._terminated)
        try:
            rc = proc.wait(timeout=5)
        except Exception:
            rc = None
        self._record_decision(Decision(Verdict.NONE, "ended by Slurm or the user (SIGTERM)"), step_failed=False)
        self._end_attempt(rc, "terminated", None)
        return EXIT_TERMINATED

    # -- node health ------------------------------------------------------------------------------
    def _start_probe(self) -> None:
        """Probe every node of the allocation in the background (once per attempt)."""
        if self.config.probe_on_anomaly and self.job.nodes:
            self.probe.start()

    def _health_faults(self) -> list[HealthFault]:
        self.health = self.probe.result()
        return [HealthFault(node, c.name, component_of(c.name), c.detail)
                for node, h in sorted(self.health.items()) if node in self.job.nodes for c in h.bad]

    def _decide_and_act(self, proc, *, step_failed: bool, exit_code: int | None) -> int | None:
        findings = self.hang_findings + self.trigger_findings + self.analyzer.all_findings()
        if exit_code is not None:
            extra = exit_finding(exit_code, self.clock())
            if extra is not None:
                findings.append(extra)
        cancelled = self.analyzer.cancelled()
        external = ""
        if cancelled and not [f for f in findings if f.trigger == Trigger.IMMEDIATE]:
            external = f"cancelled{' due to ' + cancelled.why.lower() if cancelled.why else ''}"
        if not external:   # ended by Slurm or the user: nothing to attribute, no probe
            self._start_probe()
            self.health_faults = self._health_faults()
            findings += [Finding(Anomaly.CRASH, h.component, Action.EXCLUDE_NODE_AND_REQUEUE, self.clock(),
                                 f"node health is BAD on {h.node}: {h.check}: {h.detail}",
                                 rule_id=f"health.{h.check}", nodes=(h.node,)) for h in self.health_faults]
        record = self.store.load(self.job.job_id) or JobRecord(job_id=self.job.job_id)
        previous = [PastAttempt(failed=a.failed, new_checkpoint=bool(a.checkpoints))
                    for a in record.attempts if a.attempt < self.attempt]
        decision = decide(PolicyInput(
            findings=findings, step_failed=step_failed, restarts=self.attempt, max_requeues=self.max_requeues,
            crash_loop_attempts=self.config.crash_loop_attempts, new_checkpoint=bool(self.checkpoints),
            previous=previous, allocation=self.job.nodes, excluded=record.excluded_nodes,
            ended_externally=external, lemons=self.lemons))
        self.info("decision %s: %s", decision.verdict.value, decision.reason)
        self._record_decision(decision, step_failed=step_failed, findings=findings)
        if proc is not None and decision.finding is not None and decision.finding.anomaly == Anomaly.HANG:
            self._record_stacks(capture_stacks(self.slurm, self.job.job_id, self.analyzer.rank_pids,
                                               self.analyzer.rank_nodes, self.info))
        recovery = Recovery(self.slurm, self.store, self.job, self.attempt, self.enrollment, self.config,
                            self.journal)
        if decision.verdict == Verdict.NONE:
            self._end_attempt(exit_code, external or "failure", None)
            return None
        if self.slurm.dry_run:
            recovery.execute(decision, step=None)
            if proc is None:   # the step has already ended: so has the attempt
                self._end_attempt(exit_code, "dry run: ended on its own", None)
                return exit_code if exit_code is not None else 0
            self.info("dry run: nothing changed; the training goes on")
            return None
        end_reason = {Verdict.STOP: "stopped", Verdict.REQUEUE: "requeued",
                      Verdict.EXCLUDE_AND_REQUEUE: "requeued"}[decision.verdict]
        self._end_attempt(exit_code, end_reason, decision)
        ok = recovery.execute(decision, step=proc)
        self._save_final_offset()
        if decision.verdict == Verdict.STOP:
            return EXIT_STOPPED
        return EXIT_REQUEUED if ok else EXIT_STOPPED

    # -- state ----------------------------------------------------------------------------------
    def _begin_attempt(self, started: float, log_path: Path) -> None:
        job = self.job

        def change(rec: JobRecord) -> None:
            rec.job_name, rec.user, rec.partition, rec.work_dir = job.name, job.user, job.partition, job.work_dir
            rec.enrollment = asdict(self.enrollment)
            for a in rec.attempts:
                if a.running and a.attempt != self.attempt:
                    a.ended_at = started
                    a.end_reason = a.end_reason or "lost"
            rec.attempts = [a for a in rec.attempts if a.attempt != self.attempt]
            rec.attempts.append(Attempt(attempt=self.attempt, started_at=started, nodes=list(job.nodes),
                                        log_path=str(log_path), host=socket.gethostname(),
                                        supervisor_pid=os.getpid()))
            rec.attempts.sort(key=lambda a: a.attempt)

        self.store.update(job.job_id, change)
        self.journal.emit("job_seen", None, {"enrollment": asdict(self.enrollment), "work_dir": job.work_dir,
                                              "max_requeue_times": self.max_requeues}, when=started)
        self.journal.emit("attempt_started", self.attempt, {"nodes": list(job.nodes), "host": socket.gethostname(),
                                                            "log_path": str(log_path)}, when=started)

    def _current(self, rec: JobRecord) -> Attempt:
        a = rec.attempt(self.attempt)
        if a is None:
            a = Attempt(attempt=self.attempt, started_at=self.wall())
            rec.attempts.append(a)
        return a

    def _record_checkpoint(self, line: LogLine, iteration: int | None) -> None:
        entry = {"time": self.wall(), "iteration": iteration, "line": line.text[:300]}
        self.checkpoints.append(entry)
        self.info("checkpoint saved%s", f" (iteration {iteration})" if iteration is not None else "")
        self.store.update(self.job.job_id, lambda rec: self._current(rec).checkpoints.append(entry))
        self.journal.emit("checkpoint", self.attempt, {"iteration": iteration, "line": entry["line"]},
                          when=entry["time"])

    def _record_first_step(self) -> None:
        """The attempt's first progress line: when the restart began to pay (KPIs, restart cost)."""
        self._first_step_at = now = self.wall()
        self.store.update(self.job.job_id, lambda rec: setattr(self._current(rec), "first_step_at", now))
        watch = self.watch
        self.journal.emit("progress", self.attempt, {"first": True, "iteration": watch.iteration if watch else None},
                          when=now)

    def _record_decision(self, decision: Decision, *, step_failed: bool, findings: Sequence[Finding] = ()) -> None:
        now = self.wall()
        blame = attribute([f for f in findings if not (f.rule_id or "").startswith("health.")],
                          step_failed=step_failed, health=self.health_faults, rank_nodes=self.analyzer.rank_nodes,
                          allocation=self.job.nodes) if findings else None
        entry = {"verdict": decision.verdict.value, "reason": decision.reason, "exclude": list(decision.exclude),
                 "decided_at": now, "by": "supervisor", "dry_run": self.slurm.dry_run,
                 "finding": _finding_dict(decision.finding) if decision.finding else None,
                 "attribution": blame.to_dict() if blame else None}
        reported = [f for f in (self.watch.findings if self.watch else []) if f not in findings]
        anomalies = (list(findings) + reported)[:MAX_RECORDED_ANOMALIES]

        def change(rec: JobRecord) -> None:
            a = self._current(rec)
            a.decision = entry
            if self.health:
                a.health = {n: h.to_dict() for n, h in sorted(self.health.items())}
            a.anomalies = [_finding_dict(f) for f in anomalies]
            a.rank_nodes = {str(k): v for k, v in sorted(self.analyzer.rank_nodes.items())}
            if self._follower is not None:
                a.log_offset = self._follower.offset

        self.store.update(self.job.job_id, change)
        self._report_decision(entry, decision, anomalies)

    def _wall_of(self, t: float) -> float:
        """A time of the supervisor's clock (line read times) on the wall clock."""
        return self.wall() - (self.clock() - t)

    def _report_decision(self, entry: dict, decision: Decision, anomalies: Sequence[Finding]) -> None:
        """The decision and its evidence as registry events (anomalies, health, attribution, decision)."""
        emit, attempt = self.journal.emit, self.attempt
        for f in anomalies:
            emit("anomaly", attempt, _finding_dict(f), when=self._wall_of(f.time))
        for node, h in sorted(self.health.items()):
            if h.state.value != "GOOD":
                emit("node_health", attempt, {"node": node, "state": h.state.value,
                                              "checks": [c for c in h.to_dict()["checks"] if c["state"] != "GOOD"]})
        if entry["attribution"]:
            emit("attribution", attempt, entry["attribution"])
        failure_at = None
        f = decision.finding
        if decision.verdict != Verdict.NONE and f is not None:
            started = self.watch.hang.last_line_at if f.anomaly == Anomaly.HANG and self.watch else f.time
            failure_at = self._wall_of(min(started, f.time))
        emit("decision", attempt, {"verdict": entry["verdict"], "reason": entry["reason"],
                                   "exclude": entry["exclude"], "failure_at": failure_at, "by": "supervisor",
                                   "dry_run": entry["dry_run"]}, when=entry["decided_at"])

    def _record_stacks(self, dumps: dict[str, str]) -> None:
        if dumps:
            self.store.update(self.job.job_id, lambda rec: setattr(self._current(rec), "stacks", dumps))

    def _save_final_offset(self) -> None:
        """After acting, remember how far this attempt's output reaches (the step is dead by now),
        so a supervisor attached to the same file in the next attempt starts after it."""
        if self._follower is None:
            return
        self._follower.read_new(final=True)
        offset = self._follower.offset
        self.store.update(self.job.job_id, lambda rec: setattr(self._current(rec), "log_offset", offset))

    def _record_decision_free_end(self) -> None:
        def change(rec: JobRecord) -> None:
            a = self._current(rec)
            a.rank_nodes = {str(k): v for k, v in sorted(self.analyzer.rank_nodes.items())}
            if self._follower is not None:
                a.log_offset = self._follower.offset

        self.store.update(self.job.job_id, change)

    def _end_attempt(self, exit_code: int | None, reason: str, decision: Decision | None) -> None:
        now = self.wall()

        def change(rec: JobRecord) -> None:
            a = self._current(rec)
            a.ended_at, a.exit_code, a.end_reason = now, exit_code, reason
            if decision is not None and decision.verdict == Verdict.STOP and not self.slurm.dry_run:
                rec.final = {"verdict": "STOP", "reason": decision.reason, "at": now, "attempt": self.attempt}

        self.store.update(self.job.job_id, change)
        self.journal.emit("attempt_ended", self.attempt, {"exit_code": exit_code, "end_reason": reason,
                                                          "failed": reason in FAILURE_REASONS}, when=now)


def _finding_dict(f: Finding) -> dict:
    d = asdict(f)
    for key in ("anomaly", "component", "action", "trigger"):
        d[key] = d[key].value if hasattr(d[key], "value") else d[key]
    d["nodes"] = list(f.nodes)
    return d
