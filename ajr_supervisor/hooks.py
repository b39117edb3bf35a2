"""What the Slurm hooks do.

``prolog`` and ``node-epilog`` (node hooks) record one line per call. ``epilog`` (EpilogSlurmctld) is
the backstop and the fast path of recovery. It runs as SlurmUser 3-30 ms after a job ends or is
requeue-held, before the job's processes are dead, with the job's comment, user, nodes and restart
count in its environment. It decides quickly and hands anything that must wait for the job to leave
COMPLETING to a detached child (``ajr epilog --finish``, in its own session with every fd closed:
anything holding the hook's stdout keeps the job COMPLETING).

The child, ``finish``:
  * after a requeuehold that the supervisor decided (its decision is in the state file): with
    ``fast_restart``, waits for PENDING and sets ``StartTime=now+1`` (about 1.5 s to the next batch
    start instead of cred_expire + 1); then, if the job is still held after ``FINISH_TIMEOUT_S``,
    completes whatever the supervisor left undone (exclusion, release);
  * after an attempt that ended with no decision (supervisor killed, or never started): analyses the
    attempt's log, applies the policy, and requeues / excludes / releases itself.
It never touches a node outside the job's own allocation (or the exclusions already recorded).

A hook must never fail: a non-zero Prolog drains the node. Every error is logged and swallowed.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

from ajr_supervisor.detect.srun import nodes_of

log = logging.getLogger(__name__)

KEYS = ("SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_JOB_RESTART_COUNT", "SLURM_JOB_USER",
        "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_EXIT_CODE2", "SLURM_SCRIPT_CONTEXT")
PENDING_TIMEOUT_S = 120.0
FINISH_TIMEOUT_S = 15.0
DELIVER_TIMEOUT_S = 60.0      # the detached child sends what waits in the outbox for at most this long


def hook_line(context: str, env: Mapping[str, str], now: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    fields = " ".join(f"{k}={env[k]}" for k in KEYS if env.get(k))
    return f"{stamp} ajr {context} {fields}".rstrip()


def note(context: str, env: Mapping[str, str], text: str) -> None:
    """Append a line to the hook log (``$AJR_HOOK_LOG``) or stderr; never raises."""
    path = env.get("AJR_HOOK_LOG")
    try:
        if path:
            with open(path, "a") as f:
                f.write(text + "\n")
        else:
            print(text, file=sys.stderr)
    except OSError as exc:
        print(f"ajr {context}: cannot write {path}: {exc}", file=sys.stderr)


def run_hook(context: str, env: Mapping[str, str], now: float | None = None) -> None:
    note(context, env, hook_line(context, env, time.time() if now is None else now))
    if context in ("prolog", "node-epilog"):
        try:
            health_line = _hook_probe(env)
        except Exception as exc:  # a hook never fails
            health_line = f"ajr {context}: probe failed: {exc!r}"
        if health_line:
            note(context, env, health_line)


def _hook_probe(env: Mapping[str, str]) -> str:
    """With ``hook_probe: true``: this node's health in one line (never a reason to fail the hook)."""
    from ajr_supervisor.config import load_config

    config = load_config(env=env)
    if not config.hook_probe:
        return ""
    from ajr_supervisor.health.probe import probe_node

    health = probe_node(kernel_log=config.kernel_log, nvml_timeout_s=config.nvml_timeout_s, env=env)
    bad = "; ".join(f"{c.name}: {c.detail}" for c in health.bad)
    unknown = ",".join(c.name for c in health.unknown)
    return (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ajr health {health.node} {health.state.value}"
            + (f" BAD {bad}" if bad else "") + (f" UNKNOWN {unknown}" if unknown else ""))


# ----------------------------------------------------------------------------------------------
# EpilogSlurmctld
# ----------------------------------------------------------------------------------------------

def epilog(env: Mapping[str, str]) -> None:
    """The EpilogSlurmctld entry point: record, then hand work to a detached child if any."""
    run_hook("epilog", env)
    try:
        if _enrolled(env) is None:
            return
        _spawn_finish(env)
    except Exception as exc:  # a hook never fails
        note("epilog", env, f"ajr epilog: job {env.get('SLURM_JOB_ID')}: error: {exc!r}")


def _enrolled(env: Mapping[str, str]):
    from ajr_supervisor.config import load_config
    from ajr_supervisor.enroll import EnrollmentError, resolve

    config = load_config(env=env)
    try:
        return resolve(env.get("SLURM_JOB_COMMENT", ""), env.get("SLURM_JOB_PARTITION", ""),
                       config.enroll_partitions)
    except EnrollmentError:
        return None


def _spawn_finish(env: Mapping[str, str]) -> None:
    child_env = dict(env, AJR_EPILOG_AT=f"{time.time():.3f}")
    subprocess.Popen([sys.executable, "-m", "ajr_supervisor", "epilog", "--finish"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env=child_env, start_new_session=True, close_fds=True)


def finish(env: Mapping[str, str], *, slurm=None, clock=time.monotonic, sleep=time.sleep) -> str:
    """The detached child's work; returns a one-line summary (also written to the hook log)."""
    from ajr_supervisor.config import load_config
    from ajr_supervisor.slurm import Slurm

    config = load_config(env=env)
    slurm = slurm or Slurm(env.get("SLURM_CONF"), timeout_s=config.slurm_timeout_s, dry_run=config.dry_run,
                           env=env)
    job_id = env["SLURM_JOB_ID"]
    journal = _journal(env, config, job_id)
    try:
        summary = _finish(env, config, slurm, job_id, clock, sleep, journal)
    except Exception as exc:
        summary = f"error: {exc!r}"
    summary += _deliver(journal)
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ajr epilog-finish job {job_id}: {summary}"
    note("epilog", env, line)
    return summary


def _journal(env: Mapping[str, str], config, job_id: str):
    from ajr_supervisor.journal import open_journal

    return open_journal(config, env.get("SLURM_JOB_WORK_DIR", "."), {
        "job_id": job_id, "job_name": env.get("SLURM_JOB_NAME", ""), "user": env.get("SLURM_JOB_USER", ""),
        "partition": env.get("SLURM_JOB_PARTITION", "")}, source="epilog", deliver=False, env=env)


def _deliver(journal) -> str:
    """Send what waits in the job's outbox: the epilog's own events and whatever the supervisor,
    killed by the requeue or the end of the job, had no time to send. Returns a summary tail."""
    outbox = journal.outbox
    if outbox is None or not outbox.url or not outbox.backlog():
        return ""
    result = outbox.flush(DELIVER_TIMEOUT_S)
    tail = f"; events: {result.sent} sent"
    return tail + (f", {result.left} still waiting ({result.error})" if result.left else "")


def _wait_job(slurm, job_id: str, done, timeout_s: float, clock, sleep):
    deadline = clock() + timeout_s
    job = slurm.show_job(job_id)
    while not done(job):
        if clock() > deadline:
            return job, False
        sleep(0.1)
        job = slurm.show_job(job_id)
    return job, True


def _finish(env, config, slurm, job_id: str, clock, sleep, journal) -> str:
    from ajr_supervisor.state import StateStore

    store = StateStore(config.state_path(env.get("SLURM_JOB_WORK_DIR", ".")))
    restarts = int(env.get("SLURM_JOB_RESTART_COUNT", "0") or 0)
    allocation = nodes_of(env.get("SLURM_JOB_NODELIST", ""))
    # On a requeuehold Slurm has already counted the restart: the attempt that just ended is
    # restarts - 1, and the state file holds the supervisor's requeue decision for it.
    record = store.load(job_id)
    prev = record.attempt(restarts - 1) if record and restarts > 0 else None
    if (prev is not None and record.attempt(restarts) is None and prev.decision
            and prev.decision.get("verdict") in ("REQUEUE", "EXCLUDE_AND_REQUEUE")
            and (_hold_just_before(prev, env) or _requeued(slurm.show_job(job_id)))):
        summary = _after_requeuehold(env, config, slurm, store, job_id, restarts - 1, allocation, clock, sleep,
                                     journal)
        return summary + _maybe_drain(env, config, slurm, store, job_id, restarts - 1, prev.decision, allocation,
                                      journal)
    # Any other end: wait until Slurm is done with the job, then see whether anybody decided.
    job, _ = _wait_job(slurm, job_id, lambda j: j.base_state != "COMPLETING", PENDING_TIMEOUT_S, clock, sleep)
    record = store.load(job_id)
    attempt = record.attempt(restarts) if record else None
    if attempt is not None and attempt.decision is not None:
        return f"attempt {restarts} already decided by the supervisor ({attempt.decision['verdict']})"
    if job.base_state in ("CANCELLED", "COMPLETED", "PENDING", "RUNNING", "TIMEOUT", "PREEMPTED", "REQUEUED"):
        return f"attempt {restarts} ended {job.base_state}: nothing to do"
    return _decide_from_log(env, config, slurm, store, job_id, restarts, allocation, attempt, journal)


def _hold_just_before(attempt, env: Mapping[str, str]) -> bool:
    """This EpilogSlurmctld run is the one Slurm started for the supervisor's own requeuehold: it
    runs 3-30 ms after it, while a next attempt that ran and ended takes seconds at the very least."""
    try:
        epilog_at = float(env["AJR_EPILOG_AT"])
    except (KeyError, ValueError):
        return False
    holds = [a["at"] for a in attempt.actions if a.get("action") == "requeuehold" and a.get("ok")]
    return any(-0.5 <= epilog_at - at <= 1.0 for at in holds)


def _requeued(job) -> bool:
    """The job is on its way back (requeue-held, or pending again), not ended for good."""
    return job.base_state == "PENDING" or job.reason == "job_requeued_in_held_state"


def _after_requeuehold(env, config, slurm, store, job_id, attempt_no, allocation, clock, sleep, journal) -> str:
    record = store.load(job_id)
    attempt = record.attempt(attempt_no) if record else None
    decision = attempt.decision if attempt else None
    if not decision or decision.get("verdict") not in ("REQUEUE", "EXCLUDE_AND_REQUEUE"):
        return "requeue-held without an ajr decision (an admin's hold?): left alone"
    job, pending = _wait_job(slurm, job_id, lambda j: j.base_state == "PENDING", PENDING_TIMEOUT_S, clock, sleep)
    if not pending:
        return f"job still {job.state} after {PENDING_TIMEOUT_S:g} s: left for the registry's watchdog"
    done: list[str] = []
    if config.fast_restart:
        # Slurm set BeginTime to requeue time + cred_expire + 1 when the job left COMPLETING.
        # now+1, not now: a start in the same second as the kill fails with "Job credential revoked".
        slurm.update_job(job_id, StartTime="now+1")
        done.append("StartTime=now+1")
    # Backstop: the supervisor normally excludes and releases within milliseconds of requeuehold.
    deadline = clock() + FINISH_TIMEOUT_S
    while clock() < deadline:
        job = slurm.show_job(job_id)
        if not job.held:
            return ("fast restart: " + ", ".join(done)) if done else "the supervisor completed the requeue"
        sleep(0.2)
    record = store.load(job_id)
    exclude = _allowed(decision.get("exclude", []), allocation, record.excluded_nodes if record else [])
    if exclude and sorted(set(nodes_of(job.exc_nodes))) != exclude:
        slurm.set_excluded_nodes(job_id, exclude)
        if not slurm.dry_run:
            store.update(job_id, lambda rec: setattr(rec, "excluded_nodes", exclude))
        done.append("exclude " + ",".join(exclude))
    slurm.release(job_id)
    done.append("release")
    _record_actions(store, job_id, attempt_no, done, journal, dry_run=slurm.dry_run)
    return "finished the requeue the supervisor left half done: " + ", ".join(done)


def _decide_from_log(env, config, slurm, store, job_id, restarts, allocation, attempt, journal) -> str:
    """The supervisor left no decision: analyse the attempt's log and act as it would have."""
    from ajr_supervisor.detect.analyzer import LogAnalyzer
    from ajr_supervisor.enroll import effective_max_requeues, resolve
    from ajr_supervisor.logtail import LogFollower
    from ajr_supervisor.policy import PastAttempt, PolicyInput, decide
    from ajr_supervisor.rules import RuleSet
    from ajr_supervisor.types import Verdict

    enrollment = resolve(env.get("SLURM_JOB_COMMENT", ""), env.get("SLURM_JOB_PARTITION", ""), config.enroll_partitions)
    log_path = attempt.log_path if attempt and attempt.log_path else _latest_log(env)
    analyzer = LogAnalyzer(RuleSet.load(config.rules_files, config.checkpoint_patterns))
    if log_path:
        follower = LogFollower(log_path, inotify=False)
        analyzer.feed_all(follower.read_new(final=True))
    record = store.load(job_id)
    previous = [PastAttempt(failed=a.failed, new_checkpoint=bool(a.checkpoints))
                for a in (record.attempts if record else []) if a.attempt < restarts]
    exit2 = env.get("SLURM_JOB_EXIT_CODE2", "0:0")
    failed = exit2 != "0:0"
    if not failed:
        return f"attempt {restarts} completed (exit {exit2}): nothing to do"
    decision = decide(PolicyInput(
        findings=analyzer.all_findings(), step_failed=failed, restarts=restarts,
        max_requeues=effective_max_requeues(config.max_requeue_times, enrollment),
        crash_loop_attempts=config.crash_loop_attempts, new_checkpoint=bool(analyzer.checkpoints),
        previous=previous, allocation=allocation, excluded=record.excluded_nodes if record else []))
    exclude = _allowed(decision.exclude, allocation, record.excluded_nodes if record else [])

    def change(rec) -> None:
        from ajr_supervisor.state import Attempt

        a = rec.attempt(restarts)
        if a is None:
            a = Attempt(attempt=restarts, started_at=time.time(), nodes=allocation, log_path=log_path or "")
            rec.attempts.append(a)
            rec.attempts.sort(key=lambda x: x.attempt)
        a.ended_at = a.ended_at or time.time()
        a.end_reason = a.end_reason or ("failure" if failed else "success")
        a.decision = {"verdict": decision.verdict.value, "reason": decision.reason, "exclude": exclude,
                      "decided_at": time.time(), "by": "epilog", "dry_run": slurm.dry_run}
        if decision.verdict == Verdict.STOP:
            rec.final = {"verdict": "STOP", "reason": decision.reason, "at": time.time(), "attempt": restarts}

    store.update(job_id, change)
    decided = store.load(job_id).attempt(restarts)
    journal.emit("attempt_ended", restarts, {"exit_code": None, "end_reason": decided.end_reason,
                                            "failed": decided.failed}, when=decided.ended_at)
    journal.emit("decision", restarts, {**decided.decision, "failure_at": decided.ended_at}, when=time.time())
    if decision.verdict not in (Verdict.REQUEUE, Verdict.EXCLUDE_AND_REQUEUE):
        return f"decided {decision.verdict.value} from the log: {decision.reason}"
    slurm.requeuehold(job_id)
    if exclude:
        slurm.set_excluded_nodes(job_id, exclude)
        if not slurm.dry_run:
            store.update(job_id, lambda rec: setattr(rec, "excluded_nodes", sorted(set(exclude))))
    slurm.release(job_id)
    _record_actions(store, job_id, restarts, ["requeuehold"] + (["exclude"] if exclude else []) + ["release"],
                    journal, dry_run=slurm.dry_run)
    recorded = store.load(job_id).attempt(restarts).decision
    return (f"decided {decision.verdict.value} from the log and requeued: {decision.reason}"
            + _maybe_drain(env, config, slurm, store, job_id, restarts, recorded, allocation, journal))


def _maybe_drain(env, config, slurm, store, job_id: str, attempt_no: int, decision: dict, allocation,
                 journal) -> str:
    """Admin mode: drain the nodes this decision excluded (breaker permitting). Returns a summary tail."""
    if not config.drain or not decision or decision.get("verdict") != "EXCLUDE_AND_REQUEUE":
        return ""
    from ajr_supervisor.drain import Drainer

    blame = decision.get("attribution") or {}
    finding = decision.get("finding") or {}
    nodes = blame.get("nodes") or finding.get("nodes") or []
    nodes = [n for n in nodes if n in set(allocation) and n in set(decision.get("exclude", []))]
    component = blame.get("component") or finding.get("component") or "UNKNOWN"
    evidence = finding.get("line") or blame.get("reason") or decision.get("reason", "")
    drainer = Drainer(slurm, config.drain_ledger, max_per_hour=config.drain_max_per_hour,
                      max_fraction=config.drain_max_fraction)
    said = []
    for node in nodes:
        verdict = drainer.drain(node, partition=env.get("SLURM_JOB_PARTITION", ""), job_id=job_id,
                                component=component, evidence=evidence)
        said.append(f"drained {node}" if verdict.allowed else f"not draining {node}: {verdict.why}")
    if not said:
        return ""

    now = time.time()
    _append_actions(store, job_id, attempt_no, journal, [
        {"action": "drain", "ok": s.startswith("drained"), "at": now, "error": None if s.startswith("drained") else s,
         "detail": s, "by": "epilog", "dry_run": slurm.dry_run} for s in said])
    return "; " + "; ".join(said)


def _record_actions(store, job_id: str, attempt_no: int, actions: list[str], journal, dry_run: bool = False) -> None:
    now = time.time()
    _append_actions(store, job_id, attempt_no, journal, [
        {"action": act.split()[0], "ok": True, "at": now, "error": None, "detail": act, "by": "epilog",
         "dry_run": dry_run} for act in actions])


def _append_actions(store, job_id: str, attempt_no: int, journal, entries: list[dict]) -> None:
    """The epilog's actions: into the attempt's record in the state file, then the journal."""
    def change(rec) -> None:
        a = rec.attempt(attempt_no)
        if a is not None:
            a.actions.extend(entries)

    store.update(job_id, change)
    for entry in entries:
        journal.emit("action", attempt_no, entry, when=entry["at"])


def _allowed(exclude, allocation, already) -> list[str]:
    """Only nodes of this job's allocation, or ones excluded before, may be (kept) excluded."""
    ok = set(allocation) | set(already)
    return sorted(n for n in set(exclude) if n in ok)


def _latest_log(env: Mapping[str, str]) -> str | None:
    work = env.get("SLURM_JOB_WORK_DIR", "")
    name, job_id = env.get("SLURM_JOB_NAME", "*"), env.get("SLURM_JOB_ID", "*")
    logs = sorted(glob.glob(os.path.join(glob.escape(work), f"{glob.escape(name)}_{job_id}_date_*.log")),
                  key=lambda p: Path(p).stat().st_mtime)
    return logs[-1] if logs else None
