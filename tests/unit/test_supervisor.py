"""The Supervisor loop (ajr_supervisor/supervisor.py) and the recovery sequence (recovery.py), without Slurm.

``FakeSlurm`` is the real :class:`Slurm` with a fake runner (so ``act()`` and dry-run behave for real)
whose ``launch_step`` starts a local stand-in for ``srun -l -u``: a small launcher that runs the command
once per rank through ``ajr run``'s task wrapper (``SLURM_PROCID``/``SLURMD_NODENAME`` set), prefixes every
line with ``R: `` like ``srun -l``, kills the other tasks when one fails (``--kill-on-bad-exit``) and
reports task ends with srun's own words. Every process is killed at the end of each test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ajr_supervisor.config import Config
from ajr_supervisor.detect.srun import TASK_WRAPPER
from ajr_supervisor.enroll import Enrollment
from ajr_supervisor.journal import NULL, Journal
from ajr_supervisor.outbox import Outbox
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.slurm import Completed, Slurm
from ajr_supervisor.state import Attempt, StateStore
from ajr_supervisor.supervisor import (EXIT_REQUEUED, EXIT_STOPPED, EXIT_TERMINATED, JobContext, Supervisor,
                                       log_file_name)

JOB = "77"
ECC = "RuntimeError: CUDA error: uncorrectable ECC error encountered"

FAKE_SRUN = r'''
import os, signal, subprocess, sys, threading, time

nodes = sys.argv[1].split(",")
cmd = sys.argv[2:]
out = sys.stdout.buffer
lock = threading.Lock()
WORDS = {9: "Killed", 15: "Terminated", 11: "Segmentation fault", 6: "Aborted"}


def emit(data):
    with lock:
        out.write(data)
        out.flush()


def kill_step(*_):
    # like slurmstepd: every process of the step (our process group), not us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except ProcessLookupError:
        pass


signal.signal(signal.SIGTERM, kill_step)
procs = []
for rank, node in enumerate(nodes):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURMD_NODENAME=node, PYTHONUNBUFFERED="1")
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env))


def pump(rank, p):
    for line in iter(p.stdout.readline, b""):
        emit(f"{rank}: ".encode() + line)


pumps = [threading.Thread(target=pump, args=(r, p), daemon=True) for r, p in enumerate(procs)]
for t in pumps:
    t.start()


def report(rank, rc):
    how = f"Exited with exit code {rc}" if rc > 0 else WORDS.get(-rc, f"signal {-rc}")
    emit(f"srun: error: {nodes[rank]}: task {rank}: {how}\n".encode())


first = None
reported = set()
while len(reported) < len(procs):
    for rank, p in enumerate(procs):
        rc = p.poll()
        if rc is None or rank in reported:
            continue
        reported.add(rank)
        pumps[rank].join(timeout=2)
        if rc != 0:
            report(rank, rc)
            if first is None:
                first = rc
                kill_step()          # --kill-on-bad-exit
    time.sleep(0.01)
for t in pumps:
    t.join(timeout=2)
sys.exit(0 if first is None else (first if first > 0 else 128 - first))
'''


class FakeRunner:
    """Records every Slurm command and answers from a table keyed by argv prefix (all succeed by default)."""

    def __init__(self, answers=None):
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv, env, timeout_s):
        self.calls.append(list(argv))
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return answer
        return Completed(0, "", "")


class FakeSlurm(Slurm):
    def __init__(self, script: Path, nodes=("node1", "node2"), *, dry_run=False, answers=None):
        self.runner = FakeRunner(answers)
        super().__init__("/nonexistent/slurm.conf", runner=self.runner, dry_run=dry_run,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.script = script
        self.nodes = list(nodes)
        self.launches: list[tuple[list[str], list[str], str | None]] = []
        self.steps: list[subprocess.Popen] = []

    def launch_step(self, srun_args, command, *, stdout, wrapper=None):
        self.launches.append((list(srun_args), list(command), wrapper))
        argv = [sys.executable, str(self.script), ",".join(self.nodes)]
        if wrapper:
            argv += ["/bin/sh", "-c", wrapper, "ajr-task"]
        argv += list(command)
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True, env=dict(os.environ))
        self.steps.append(proc)
        return proc

    @property
    def commands(self) -> list[list[str]]:
        return self.runner.calls

    def kill_all(self) -> None:
        for proc in self.steps:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def rules():
    return RuleSet.load()


@pytest.fixture
def env(tmp_path, rules):
    """Builds a Supervisor over a FakeSlurm; kills every process it started at the end."""
    script = tmp_path / "fake_srun.py"
    script.write_text(FAKE_SRUN)
    made: list[FakeSlurm] = []

    class Env:
        store = StateStore(tmp_path / ".ajr")
        log_dir = tmp_path / "logs"

        def supervisor(self, *, dry_run=False, restarts=0, enrollment=None, nodes=("node1", "node2"),
                       answers=None, journal=NULL, **config) -> tuple[Supervisor, FakeSlurm]:
            slurm = FakeSlurm(script, nodes, dry_run=dry_run, answers=answers)
            made.append(slurm)
            # the node probe (srun --overlap ajr probe) has its own tests below
            config = {"settle_s": 0.2, "poll_interval_s": 0.05, "hang_timeout_s": 30.0, "stop_grace_s": 5.0,
                      "probe_on_anomaly": False, **config}
            job = JobContext(job_id=JOB, name="train", user="alice", partition="lab", work_dir=str(tmp_path),
                             nodes=tuple(nodes), restarts=restarts, comment='{"APS": {}}')
            sup = Supervisor(job, Config(**config), enrollment or Enrollment(), slurm=slurm, store=self.store,
                             rules=rules, log_dir=self.log_dir, journal=journal)
            return sup, slurm

        def record(self):
            rec = self.store.load(JOB)
            assert rec is not None
            return rec

    yield Env()
    for slurm in made:
        slurm.kill_all()


def bash(script: str) -> list[str]:
    return ["bash", "-c", script]


def run(sup: Supervisor, command: list[str], srun_args=()) -> tuple[int, float]:
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = sup.run(list(srun_args), command)
    elapsed = time.monotonic() - t0
    assert signal.getsignal(signal.SIGTERM) == before, "run() must restore the SIGTERM handler"
    return rc, elapsed


def action_names(attempt: Attempt) -> list[str]:
    return [a["action"] for a in attempt.actions]


# -- success -------------------------------------------------------------------------------------------

def test_clean_exit(env):
    sup, slurm = env.supervisor()
    rc, _ = run(sup, bash('echo "step 1 loss 2.5"; echo "Saved checkpoint to /ck/iter_1"; echo done'))
    assert rc == 0
    assert slurm.commands == []
    (args, command, wrapper), = slurm.launches
    assert args == [] and wrapper == TASK_WRAPPER and command[0] == "bash"
    rec = env.record()
    assert (rec.job_name, rec.user, rec.partition) == ("train", "alice", "lab")
    [a] = rec.attempts
    assert a.decision["verdict"] == "NONE" and a.decision["reason"] == "completed successfully"
    assert a.decision["by"] == "supervisor" and a.decision["dry_run"] is False
    assert (a.end_reason, a.exit_code, a.actions) == ("success", 0, [])
    assert a.ended_at is not None and a.nodes == ["node1", "node2"]
    assert a.rank_nodes == {"0": "node1", "1": "node2"}
    assert [c["iteration"] for c in a.checkpoints] == [1, 1]       # one per rank
    log = Path(a.log_path)
    assert log.parent == env.log_dir and log.name.startswith("train_77_date_") and log.name.endswith(".log")
    text = log.read_text()
    assert "0: [ajr] rank 0 node node1 pid " in text and "1: done" in text
    assert a.log_offset == log.stat().st_size
    assert rec.final is None


def test_kill_on_bad_exit_is_not_added_twice(env):
    sup, slurm = env.supervisor(srun_kill_on_bad_exit=True)
    rc, _ = run(sup, ["true"], srun_args=["-K0", "--time=5"])
    assert rc == 0 and slurm.launches[0][0] == ["-K0", "--time=5"]


def test_kill_on_bad_exit_is_off_by_default_and_can_be_asked_for(env):
    sup, slurm = env.supervisor()
    assert run(sup, ["true"])[0] == 0 and slurm.launches[0][0] == []
    sup, slurm = env.supervisor(srun_kill_on_bad_exit=True)
    assert run(sup, ["true"])[0] == 0 and slurm.launches[0][0] == ["--kill-on-bad-exit=1"]


def test_log_file_name_is_ajrs():
    when = time.mktime((2026, 11, 25, 9, 43, 57, 0, 0, -1))
    assert log_file_name("my/job", "12", when) == "my_job_12_date_26-11-25_time_09-43-57.log"
    assert log_file_name("", "12", when).startswith("job_12_date_")


# -- failures ------------------------------------------------------------------------------------------

def test_exit_code_failure_requeues(env):
    sup, slurm = env.supervisor()
    rc, elapsed = run(sup, bash('echo "step 1"; if [ "$SLURM_PROCID" = 0 ]; then exit 3; fi; exec sleep 30'))
    assert rc == EXIT_REQUEUED
    assert elapsed < 20
    assert slurm.commands == [["scontrol", "requeuehold", JOB], ["scontrol", "release", JOB]]
    [a] = env.record().attempts
    assert action_names(a) == ["requeuehold", "release"] and all(x["ok"] for x in a.actions)
    assert [x["at"] for x in a.actions] == sorted(x["at"] for x in a.actions)
    assert a.decision["verdict"] == "REQUEUE"
    assert a.decision["reason"] == "task 0 on node1 exited with code 3"
    assert a.decision["finding"]["rule_id"] == "srun.task_exit"
    assert {f["rule_id"] for f in a.anomalies} == {"srun.task_exit", "srun.exit"}
    assert (a.end_reason, a.exit_code) == ("requeued", 3)
    assert a.log_offset == Path(a.log_path).stat().st_size     # the whole output was read
    assert env.record().excluded_nodes == [] and env.record().final is None


def test_fatal_line_acts_while_the_step_still_runs_and_excludes_the_ranks_node(env):
    """rank 1 (node2, known from the wrapper's mark) prints an ECC error and keeps running."""
    sup, slurm = env.supervisor()
    rc, elapsed = run(sup, bash(f'echo "step 1"; [ "$SLURM_PROCID" = 1 ] && echo "{ECC}"; exec sleep 30'))
    assert rc == EXIT_REQUEUED
    assert elapsed < 20                                   # did not wait for the step's own 30 s
    assert slurm.steps[0].poll() is None                  # still running: it acted on the line, not the exit
    assert slurm.commands == [["scontrol", "requeuehold", JOB],
                              ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"],
                              ["scontrol", "release", JOB]]
    rec = env.record()
    [a] = rec.attempts
    assert a.rank_nodes == {"0": "node1", "1": "node2"}
    assert a.decision["verdict"] == "EXCLUDE_AND_REQUEUE" and a.decision["exclude"] == ["node2"]
    f = a.decision["finding"]
    assert f["rule_id"] == "cuda_ecc_uncorrectable" and f["nodes"] == ["node2"] and f["rank"] == 1
    assert f["line"] == f"1: {ECC}" and f["trigger"] == "immediate"
    assert action_names(a) == ["requeuehold", "exclude", "release"]
    assert a.actions[1]["detail"] == "node2"
    assert (a.end_reason, a.exit_code) == ("requeued", None)
    assert rec.excluded_nodes == ["node2"]


def test_exclusion_is_the_union_with_earlier_exclusions(env):
    env.store.update(JOB, lambda r: setattr(r, "excluded_nodes", ["node7"]))
    sup, slurm = env.supervisor(restarts=1)
    rc, _ = run(sup, bash(f'[ "$SLURM_PROCID" = 1 ] && echo "{ECC}"; exec sleep 30'))
    assert rc == EXIT_REQUEUED
    assert ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2,node7"] in slurm.commands
    assert env.record().excluded_nodes == ["node2", "node7"]


def test_no_exclude_command_when_the_list_does_not_change(env):
    env.store.update(JOB, lambda r: setattr(r, "excluded_nodes", ["node7"]))
    sup, slurm = env.supervisor(restarts=1)
    rc, _ = run(sup, bash('exit 4'))
    assert rc == EXIT_REQUEUED
    assert slurm.commands == [["scontrol", "requeuehold", JOB], ["scontrol", "release", JOB]]


def test_hang_is_detected_and_requeued(env):
    sup, slurm = env.supervisor(hang_timeout_s=0.5)
    rc, elapsed = run(sup, bash('echo "step 1"; exec sleep 30'))
    assert rc == EXIT_REQUEUED and elapsed < 20
    # hang evidence first (py-spy on every node through srun --overlap), then the requeue
    overlap, *rest = slurm.commands
    assert overlap[:2] == ["srun", "--overlap"] and "--nodelist=node1,node2" in overlap
    assert "\"$AJR_PYSPY\" dump --pid" in overlap[-1]
    assert rest == [["scontrol", "requeuehold", JOB], ["scontrol", "release", JOB]]
    [a] = env.record().attempts
    assert a.decision["verdict"] == "REQUEUE" and a.decision["finding"]["anomaly"] == "HANG"
    assert "hang timeout 0.5 s" in a.decision["reason"]
    assert a.end_reason == "requeued"


def test_enrollment_hang_timeout_overrides_the_config(env):
    sup, _ = env.supervisor(hang_timeout_s=60.0, enrollment=Enrollment(hang_timeout_s=0.3))
    assert sup.hang_timeout_s == 0.3
    rc, elapsed = run(sup, bash('exec sleep 30'))
    assert rc == EXIT_REQUEUED and elapsed < 20
    assert env.record().attempts[0].decision["finding"]["anomaly"] == "HANG"


def test_deterministic_error_stops(env):
    sup, slurm = env.supervisor()
    rc, _ = run(sup, [sys.executable, "-c", "import nonexistent_mod_xyz"])
    assert rc == EXIT_STOPPED
    assert slurm.commands == []                        # no requeuehold, nothing
    rec = env.record()
    [a] = rec.attempts
    assert a.decision["verdict"] == "STOP" and a.decision["finding"]["rule_id"] == "python_import_error"
    assert a.decision["reason"].startswith("deterministic error")
    assert (a.end_reason, a.exit_code, a.actions) == ("stopped", 1, [])
    assert rec.final["verdict"] == "STOP" and rec.final["attempt"] == 0


def test_stop_while_running_stops_the_step(env):
    """A fatal line that asks for STOP while the step runs: the step is stopped (SIGTERM), exit 79."""
    sup, slurm = env.supervisor()
    line = "python3: can't open file '/x/train.py': [Errno 2] No such file or directory"
    rc, elapsed = run(sup, bash(f'echo "{line}"; exec sleep 30'))
    assert rc == EXIT_STOPPED and elapsed < 20
    assert slurm.steps[0].poll() is not None           # the step was stopped, not left running
    assert slurm.commands == []
    rec = env.record()
    assert rec.attempts[0].decision["finding"]["rule_id"] == "python_missing_script"
    assert rec.final["verdict"] == "STOP"


def test_requeue_limit_stops(env):
    sup, slurm = env.supervisor(restarts=2, enrollment=Enrollment(max_requeue_times=2))
    assert sup.max_requeues == 2
    rc, _ = run(sup, bash('exit 3'))
    assert rc == EXIT_STOPPED
    assert slurm.commands == []
    rec = env.record()
    [a] = rec.attempts
    assert a.attempt == 2
    assert a.decision["verdict"] == "STOP" and "requeue limit reached (2 of 2 used)" in a.decision["reason"]
    assert rec.final["verdict"] == "STOP" and rec.final["attempt"] == 2


def test_one_below_the_requeue_limit_requeues(env):
    sup, _ = env.supervisor(restarts=1, enrollment=Enrollment(max_requeue_times=2))
    assert run(sup, bash('exit 3'))[0] == EXIT_REQUEUED


def test_crash_loop_stops(env):
    def two_failures(rec):
        rec.attempts = [Attempt(attempt=i, started_at=float(i), ended_at=float(i) + 0.5, end_reason="requeued")
                        for i in range(2)]

    env.store.update(JOB, two_failures)
    sup, slurm = env.supervisor(restarts=2, crash_loop_attempts=3)
    rc, _ = run(sup, bash('exit 3'))
    assert rc == EXIT_STOPPED and slurm.commands == []
    rec = env.record()
    assert [a.attempt for a in rec.attempts] == [0, 1, 2]
    assert rec.attempts[2].decision["reason"].startswith("crash loop: 3 attempts in a row")


def test_a_checkpoint_in_this_attempt_breaks_the_crash_loop(env):
    def two_failures(rec):
        rec.attempts = [Attempt(attempt=i, started_at=float(i), ended_at=float(i) + 0.5, end_reason="requeued")
                        for i in range(2)]

    env.store.update(JOB, two_failures)
    sup, _ = env.supervisor(restarts=2, crash_loop_attempts=3)
    rc, _ = run(sup, bash('if [ "$SLURM_PROCID" = 0 ]; then echo "Saved checkpoint to /ck/iter_7"; exit 3; fi; '
                          'exec sleep 30'))
    assert rc == EXIT_REQUEUED


def test_an_earlier_attempt_left_running_is_marked_lost(env):
    env.store.update(JOB, lambda r: r.attempts.append(Attempt(attempt=0, started_at=1.0)))
    sup, _ = env.supervisor(restarts=1)
    assert run(sup, ["true"])[0] == 0
    first, second = env.record().attempts
    assert first.end_reason == "lost" and first.ended_at is not None
    assert second.end_reason == "success"


def test_failed_requeuehold_stops_the_sequence(env):
    sup, slurm = env.supervisor(answers={("scontrol", "requeuehold"): Completed(1, "", "Invalid job id specified")})
    rc, _ = run(sup, bash('exit 3'))
    assert rc == EXIT_STOPPED                           # could not requeue: not "requeued"
    assert slurm.commands == [["scontrol", "requeuehold", JOB]]
    [a] = env.record().attempts
    [act] = a.actions
    assert act["action"] == "requeuehold" and act["ok"] is False and "Invalid job id" in act["error"]


# -- not ours: cancellations -------------------------------------------------------------------------

def test_cancellation_in_the_log_is_left_alone(env):
    """slurmstepd's CANCELLED banner came first (scancel): the failure that follows is not ours."""
    sup, slurm = env.supervisor()
    banner = f"slurmstepd-node1: error: *** STEP {JOB}.0 ON node1 CANCELLED AT 2026-11-25T09:43:49 ***"
    rc, _ = run(sup, bash(f'if [ "$SLURM_PROCID" = 0 ]; then echo "{banner}"; sleep 0.1; kill -TERM $$; fi; '
                          'exec sleep 30'))
    assert rc == 143                                   # the step's own code: ajr did nothing
    assert slurm.commands == []
    [a] = env.record().attempts
    assert a.decision["verdict"] == "NONE" and "cancelled" in a.decision["reason"]
    assert a.end_reason == "cancelled" and a.actions == []


def test_sigterm_from_slurm_ends_the_attempt_without_action(env):
    sup, slurm = env.supervisor()

    def slurm_cancels():
        deadline = time.monotonic() + 10
        while signal.getsignal(signal.SIGTERM) != sup._on_term:   # the supervisor's handler is in place
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)                        # the batch script gets SIGTERM ...
        time.sleep(0.2)
        os.killpg(slurm.steps[0].pid, signal.SIGTERM)               # ... and so does the step

    killer = threading.Thread(target=slurm_cancels, daemon=True)
    killer.start()
    rc, elapsed = run(sup, bash('echo "step 1"; exec sleep 30'))
    killer.join(timeout=10)
    assert rc == EXIT_TERMINATED and elapsed < 20
    assert slurm.commands == []
    [a] = env.record().attempts
    assert a.decision["verdict"] == "NONE" and "SIGTERM" in a.decision["reason"]
    assert a.end_reason == "terminated" and a.actions == []


# -- dry run -------------------------------------------------------------------------------------------

def test_dry_run_logs_what_it_would_run_and_lets_the_training_go_on(env, caplog):
    sup, slurm = env.supervisor(dry_run=True, settle_s=0.05)
    with caplog.at_level(logging.INFO):
        rc, _ = run(sup, bash(f'[ "$SLURM_PROCID" = 1 ] && echo "{ECC}"; sleep 0.5; echo "still training"'))
    assert rc == 0                                     # the step ended on its own
    assert slurm.commands == []                        # nothing ran for real
    would = [r.getMessage() for r in caplog.records if r.getMessage().startswith("would run:")]
    assert would == [f"would run: scontrol requeuehold {JOB}",
                     f"would run: scontrol update JobId={JOB} ExcNodeList=node2",
                     f"would run: scontrol release {JOB}"]
    assert any("dry run: nothing changed" in r.getMessage() for r in caplog.records)
    rec = env.record()
    [a] = rec.attempts
    assert a.decision["verdict"] == "EXCLUDE_AND_REQUEUE" and a.decision["dry_run"] is True
    assert action_names(a) == ["requeuehold", "exclude", "release"] and all(x["dry_run"] for x in a.actions)
    assert rec.excluded_nodes == []                    # a dry run changes nothing, the state's list included
    assert (a.end_reason, a.exit_code) == ("dry run: ended on its own", 0)
    assert "1: still training" in Path(a.log_path).read_text()
    assert rec.final is None


def test_dry_run_stop_is_not_final(env, caplog):
    sup, slurm = env.supervisor(dry_run=True, settle_s=0.05, restarts=1, enrollment=Enrollment(max_requeue_times=1))
    line = "python3: can't open file '/x/train.py': [Errno 2] No such file or directory"
    with caplog.at_level(logging.INFO):
        rc, _ = run(sup, bash(f'echo "{line}"; sleep 0.5'))
    assert rc == 0 and slurm.commands == []
    assert slurm.steps[0].returncode == 0              # the step was not stopped
    rec = env.record()
    assert rec.attempts[0].decision["verdict"] == "STOP" and rec.final is None


def test_dry_run_exit_failure_returns_the_steps_code(env, caplog):
    sup, slurm = env.supervisor(dry_run=True)
    with caplog.at_level(logging.INFO):
        rc, _ = run(sup, bash('exit 3'))
    assert rc == 3 and slurm.commands == []
    assert f"would run: scontrol requeuehold {JOB}" in caplog.text
    assert env.record().attempts[0].decision["verdict"] == "REQUEUE"


def test_dry_run_exit_failure_ends_the_attempt(env):
    sup, _ = env.supervisor(dry_run=True)
    assert run(sup, bash('exit 3'))[0] == 3
    [a] = env.record().attempts
    assert a.ended_at is not None and a.exit_code == 3 and not a.running


def test_state_file_is_json_with_the_decision_first_then_the_actions(env):
    """The decision is written before any action, so ajr epilog can finish a sequence half done."""
    seen = []
    sup, slurm = env.supervisor()
    real_runner = slurm.runner

    def spying(argv, e, timeout_s):
        data = json.loads(env.store.path(JOB).read_text())
        seen.append((argv[1], data["attempts"][0]["decision"]["verdict"], len(data["attempts"][0]["actions"])))
        return real_runner(argv, e, timeout_s)

    slurm._runner = spying
    assert run(sup, bash('exit 3'))[0] == EXIT_REQUEUED
    assert seen == [("requeuehold", "REQUEUE", 0), ("release", "REQUEUE", 1)]


def test_exit_zero_after_a_fatal_line_is_success_with_the_evidence_kept(env):
    """Every task exited 0: the training finished its own way, so the job is not requeued; the
    fatal line stays in the attempt's anomalies (evidence against the node for later)."""
    sup, slurm = env.supervisor(settle_s=3.0)
    rc, _ = run(sup, bash(f'[ "$SLURM_PROCID" = 1 ] && echo "{ECC}"; exit 0'))
    assert rc == 0
    assert not [c for c in slurm.commands if c[:2] in (["scontrol", "requeuehold"], ["scontrol", "update"])]
    [a] = env.record().attempts
    assert a.decision["verdict"] == "NONE" and a.end_reason == "success"
    assert [f["rule_id"] for f in a.anomalies] == ["cuda_ecc_uncorrectable"]
    assert a.anomalies[0]["nodes"] == ["node2"]


def test_an_attempt_requeued_by_slurm_does_not_count_as_a_crash(env):
    def history(rec):
        rec.attempts = [Attempt(attempt=0, started_at=0.0, ended_at=1.0, end_reason="requeued"),
                        Attempt(attempt=1, started_at=2.0, ended_at=3.0, exit_code=143,
                                end_reason="cancelled due to job requeue")]

    env.store.update(JOB, history)
    sup, _ = env.supervisor(restarts=2, crash_loop_attempts=3)
    assert run(sup, bash('exit 3'))[0] == EXIT_REQUEUED


def test_stack_dumps_from_interleaved_srun_output():
    from ajr_supervisor.supervisor import parse_stack_dumps

    out = ("1: === rank 1 pid 27642\n0: === rank 0 pid 27644\n"
           "0: Process \x1b[33m\x1b[1m27644\x1b[0m: python3 train.py\n"
           "1: Process 27642: python3 train.py\n"
           "0: Thread 27644 (idle): \"MainThread\"\n0:     sleep_forever (train.py:160)\n"
           "1:     barrier (train.py:250)\n")
    dumps = parse_stack_dumps(out)
    assert dumps["0"] == 'Process 27644: python3 train.py\nThread 27644 (idle): "MainThread"\n    sleep_forever (train.py:160)'
    assert dumps["1"] == "Process 27642: python3 train.py\n    barrier (train.py:250)"


PROBE_OUT = (
    '0: {"node": "node1", "at": 1.0, "checks": [{"name": "memory", "state": "GOOD", "value": null, "detail": "ok"}]}\n'
    '1: {"node": "node2", "at": 1.0, "checks": [{"name": "gpu0.ecc_uncorrected_volatile", "state": "BAD", '
    '"value": null, "detail": "gpu0 (0000:3b:00.0): 2 uncorrectable ECC errors"}]}\n')


def test_bad_health_from_the_probe_excludes_that_node_not_the_one_the_log_names(env):
    """The log shows rank 0 (node1) failing vaguely; the probe finds node2's GPU bad: node2 goes."""
    sup, slurm = env.supervisor(probe_on_anomaly=True, answers={("srun", "--overlap"): Completed(0, PROBE_OUT, "")})
    rc, _ = run(sup, bash('if [ "$SLURM_PROCID" = 0 ]; then echo "RuntimeError: CUDA error: unknown error"; exit 1; fi; '
                          'exec sleep 30'))
    assert rc == EXIT_REQUEUED
    probe = slurm.commands[0]
    assert probe[:2] == ["srun", "--overlap"] and probe[-6:-3] == ["probe", "--json", "--since"]
    assert ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"] in slurm.commands
    [a] = env.record().attempts
    assert a.decision["verdict"] == "EXCLUDE_AND_REQUEUE" and a.decision["exclude"] == ["node2"]
    assert a.decision["attribution"]["component"] == "GPU" and a.decision["attribution"]["nodes"] == ["node2"]
    assert sorted(a.health) == ["node1", "node2"]


def test_unknown_health_blames_nobody(env):
    out = '0: {"node": "node1", "at": 1.0, "checks": [{"name": "nvml", "state": "UNKNOWN", "value": null, "detail": "NVML call timed out"}]}\n'
    sup, slurm = env.supervisor(probe_on_anomaly=True, answers={("srun", "--overlap"): Completed(0, out, "")})
    rc, _ = run(sup, bash('echo "RuntimeError: CUDA error: unknown error"; exit 1'))
    assert rc == EXIT_REQUEUED
    assert not [c for c in slurm.commands if c[:2] == ["scontrol", "update"]]
    [a] = env.record().attempts
    assert a.decision["verdict"] == "REQUEUE" and a.decision["exclude"] == []


def test_a_failed_probe_is_unknown_and_the_job_is_still_recovered(env):
    sup, slurm = env.supervisor(probe_on_anomaly=True,
                                answers={("srun", "--overlap"): Completed(1, "", "srun: error: Unable to create step")})
    rc, _ = run(sup, bash('exit 3'))
    assert rc == EXIT_REQUEUED
    assert ["scontrol", "requeuehold", JOB] in slurm.commands


def test_probe_output_cut_into_chunks_by_srun_is_joined_per_task():
    from ajr_supervisor.supervisor import parse_probe_output

    line0 = '{"node": "node1", "at": 1.0, "checks": [{"name": "memory", "state": "GOOD", "value": null, "detail": "ok"}]}'
    line1 = ('{"node": "node2", "at": 1.0, "checks": [{"name": "gpu0.ecc_uncorrected_volatile", "state": "BAD", '
             '"value": null, "detail": "2 errors"}]}')
    out = f"1: {line1[:40]}\n0: {line0[:30]}\n1: {line1[40:]}\n0: {line0[30:]}\n"
    health = parse_probe_output(out)
    assert sorted(health) == ["node1", "node2"]
    assert [c.name for c in health["node2"].bad] == ["gpu0.ecc_uncorrected_volatile"]


STEPS = ('for i in $(seq 1 40); do t=100; [ "$SLURMD_NODENAME" = node2 ] && t=125; '
         'echo "[2026-11-25 09:00:00.000] rank $SLURM_PROCID iteration $i step_time_ms $t"; sleep 0.005; done; ')


def test_straggler_is_excluded_when_asked(env):
    sup, slurm = env.supervisor(straggler_action="exclude", nodes=("node1", "node2", "node3"))
    rc, _ = run(sup, bash(STEPS + "exec sleep 30"))
    assert rc == EXIT_REQUEUED
    assert ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"] in slurm.commands
    [a] = env.record().attempts
    assert a.decision["finding"]["anomaly"] == "STRAGGLER" and a.decision["exclude"] == ["node2"]
    assert "node node2 is 25.0% slower than its peers" in a.decision["reason"]


def test_straggler_is_only_reported_when_asked(env):
    sup, slurm = env.supervisor(straggler_action="report", nodes=("node1", "node2", "node3"))
    rc, _ = run(sup, bash(STEPS))
    assert rc == 0 and slurm.commands == []
    [a] = env.record().attempts
    assert a.decision["verdict"] == "NONE"
    assert [f["anomaly"] for f in a.anomalies] == ["STRAGGLER"] and a.anomalies[0]["nodes"] == ["node2"]


def test_straggler_auto_excludes_when_the_run_is_long(env):
    """Default (auto): no total in the lines and no time limit known: the run counts as long."""
    sup, slurm = env.supervisor(nodes=("node1", "node2", "node3"))
    rc, _ = run(sup, bash(STEPS + "exec sleep 30"))
    assert rc == EXIT_REQUEUED
    assert ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"] in slurm.commands


def test_straggler_auto_keeps_a_node_when_the_run_ends_soon(env):
    """The job's time limit ends in 60 s: 25% of 0.1 s over <= 600 steps is less than a restart."""
    sup, slurm = env.supervisor(nodes=("node1", "node2", "node3"))
    sup.job = dataclasses.replace(sup.job, end_time=time.time() + 60)
    rc, _ = run(sup, bash(STEPS))
    assert rc == 0 and slurm.commands == []
    assert "restart cost 300 s" in sup.watch.note and "<=" in sup.watch.note


def test_first_step_is_recorded(env):
    sup, _ = env.supervisor(straggler_action="report")
    before = time.time()
    rc, _ = run(sup, bash(STEPS))
    [a] = env.record().attempts
    assert rc == 0 and before <= a.first_step_at <= a.ended_at


def test_every_step_of_a_recovery_is_an_event_in_the_outbox(env, tmp_path):
    outbox = Outbox(tmp_path / "outbox", url=None, token=None)
    journal = Journal(outbox, cluster="lab", job_id=JOB, job_name="train", user="alice", partition="lab")
    sup, _ = env.supervisor(journal=journal)
    rc, _ = run(sup, bash(STEPS.replace("seq 1 40", "seq 1 3") + 'echo "Saved checkpoint to /ckpt/3"; '
                          'echo "RuntimeError: CUDA error: an illegal memory access was encountered" >&2; exit 1'))
    assert rc == EXIT_REQUEUED
    files = sorted((tmp_path / "outbox").glob("*.json"))
    sent = [json.loads(f.read_text()) for f in files]
    assert [e["id"] for e in sent] == [e["id"] for e in journal.sent]          # on disk, in order
    types = [e["type"] for e in sent]
    assert types[:3] == ["job_seen", "attempt_started", "progress"] and types[-1] == "action"
    for t in ("checkpoint", "anomaly", "attribution", "decision", "attempt_ended"):
        assert t in types, types
    assert [e["data"]["action"] for e in sent if e["type"] == "action"] == ["requeuehold", "release"]
    decision = next(e for e in sent if e["type"] == "decision")
    assert decision["data"]["verdict"] == "REQUEUE" and decision["attempt"] == 0
    assert decision["data"]["failure_at"] <= decision["time"]
    assert all(e["cluster"] == "lab" and e["job_id"] == JOB and e["user"] == "alice" for e in sent)
    ended = next(e for e in sent if e["type"] == "attempt_ended")
    assert ended["data"]["end_reason"] == "requeued" and ended["data"]["failed"] is True


def test_lemon_nodes_of_the_allocation_are_excluded_on_a_requeue(env):
    sup, slurm = env.supervisor(nodes=("node1", "node2"))
    sup.lemons = ("node2", "node9")
    rc, _ = run(sup, bash("exit 3"))
    assert rc == EXIT_REQUEUED
    assert ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"] in slurm.commands
    [a] = env.record().attempts
    assert a.decision["verdict"] == "EXCLUDE_AND_REQUEUE" and "lemon node node2 (registry)" in a.decision["reason"]


def test_a_scancel_whose_cancel_line_trails_srun_s_report_is_left_alone(env):
    """Seen on the lab: srun reports the SIGTERM'd tasks, then slurmstepd's CANCELLED line, and srun
    exits 143 before the SIGTERM reaches ajr. That is an outside cancel, not a failure to requeue."""
    sup, slurm = env.supervisor()
    rc, _ = run(sup, bash('echo "srun: error: node2: task 1: Terminated"; sleep 0.3; '
                          'echo "slurmstepd-node1: error: *** STEP 77.0 ON node1 CANCELLED AT 2026-11-25T13:15:40 ***"; '
                          'exit 143'))
    assert slurm.commands == []
    [a] = env.record().attempts
    assert a.decision["verdict"] == "NONE" and not a.failed, a.decision
    assert rc == 143


def test_a_task_killed_before_a_cancel_is_still_a_failure(env):
    sup, slurm = env.supervisor()
    rc, _ = run(sup, bash('echo "srun: error: node2: task 1: Killed"; '
                          'echo "slurmstepd-node1: error: *** STEP 77.0 ON node1 CANCELLED AT 2026-11-25T13:15:40 ***"; '
                          'exit 137'))
    assert rc == EXIT_REQUEUED and ["scontrol", "requeuehold", JOB] in slurm.commands


def test_a_cancel_seen_while_the_step_still_runs_is_left_alone(env):
    sup, slurm = env.supervisor()
    rc, _ = run(sup, bash('echo "srun: error: node2: task 1: Terminated"; '
                          'echo "slurmstepd-node1: error: *** STEP 77.0 ON node1 CANCELLED AT 2026-11-25T13:15:40 ***"; '
                          'sleep 1.5; exit 143'))
    assert slurm.commands == [] and rc == EXIT_TERMINATED
    [a] = env.record().attempts
    assert a.decision["verdict"] == "NONE" and a.end_reason == "cancelled" and not a.failed
