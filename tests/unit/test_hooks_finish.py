"""hooks.finish(): the EpilogSlurmctld backstop, with a fake Slurm answering from records captured on the
lab (tests/data/slurm/) and an injected clock and sleep (no real waiting)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from ajr_supervisor import hooks
from ajr_supervisor.slurm import Completed, Slurm
from ajr_supervisor.state import Attempt, StateStore

DATA = Path(__file__).resolve().parents[1] / "data"
JOB = "77"


def record(name: str, source_id: str | None = None) -> str:
    """One captured ``scontrol -o show job`` record, renumbered to our job id."""
    lines = [ln for ln in (DATA / "slurm" / name).read_text().splitlines() if ln.startswith("JobId=")]
    if source_id is not None:
        lines = [ln for ln in lines if ln.startswith(f"JobId={source_id} ")]
    return re.sub(r"^JobId=\d+ ", f"JobId={JOB} ", lines[0]) + "\n"


COMPLETING_HELD = record("show_job_requeuehold_completing.txt")
HELD = record("show_job_held.txt")
HELD_EXCLUDED_NODE1 = record("show_job_held_excluded.txt")
RELEASED = record("show_job_released_pending.txt")
CANCELLED = record("show_job_all.txt", "1")
FAILED = record("show_job_all.txt", "2")
COMPLETED = record("show_job_all.txt", "3")


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


class Cluster:
    """The fake runner: ``show job`` answers from a script of records (the last one repeats); a
    ``release`` can switch the job to another record; every command is recorded."""

    def __init__(self, *records: str, after_release: str | None = None) -> None:
        self.records = list(records)
        self.after_release = after_release
        self.calls: list[list[str]] = []

    def __call__(self, argv, env, timeout_s):
        argv = list(argv)
        self.calls.append(argv)
        if argv[:4] == ["scontrol", "-o", "show", "job"]:
            text = self.records.pop(0) if len(self.records) > 1 else self.records[0]
            return Completed(0, text, "")
        if argv[:2] == ["scontrol", "release"] and self.after_release:
            self.records = [self.after_release]
        return Completed(0, "", "")

    @property
    def actions(self) -> list[list[str]]:
        return [c for c in self.calls if c[:4] != ["scontrol", "-o", "show", "job"]]


@pytest.fixture
def setup(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cfg = tmp_path / "ajr.yaml"
    cfg.write_text("# defaults\n")

    class Setup:
        store = StateStore(work / ".ajr")
        hook_log = tmp_path / "hooks.log"
        work_dir = work
        config = cfg
        time = FakeTime()

        def env(self, **kw) -> dict[str, str]:
            base = {"SLURM_JOB_ID": JOB, "SLURM_JOB_RESTART_COUNT": "1", "SLURM_JOB_NODELIST": "node[1-2]",
                    "SLURM_JOB_WORK_DIR": str(work), "SLURM_JOB_NAME": "train",
                    "SLURM_JOB_COMMENT": '{"APS": {}}', "SLURM_JOB_PARTITION": "lab",
                    "SLURM_JOB_EXIT_CODE2": "0:0", "SLURM_JOB_USER": "alice",
                    "AJR_CONFIG": str(cfg), "AJR_HOOK_LOG": str(self.hook_log)}
            base.update(kw)
            return {k: v for k, v in base.items() if v is not None}

        def finish(self, cluster: Cluster, *, dry_run: bool = False, **env) -> str:
            slurm = Slurm("/nonexistent/slurm.conf", runner=cluster, dry_run=dry_run, env={"PATH": "/usr/bin:/bin"})
            return hooks.finish(self.env(**env), slurm=slurm, clock=self.time.clock, sleep=self.time.sleep)

        def decided(self, attempt: int, verdict: str, exclude=(), actions=(), excluded=(), nodes=("node1", "node2")):
            def change(rec):
                rec.excluded_nodes = list(excluded)
                rec.attempts.append(Attempt(
                    attempt=attempt, started_at=1.0, ended_at=2.0, nodes=list(nodes), end_reason="requeued",
                    decision={"verdict": verdict, "reason": "test", "exclude": list(exclude), "by": "supervisor",
                              "dry_run": False, "decided_at": 2.0},
                    actions=[{"action": a, "ok": True, "at": 2.0, "error": None} for a in actions]))

            self.store.update(JOB, change)

        def write_log(self, source: str, name: str = "train_77_date_26-11-25_time_09-43-57.log") -> Path:
            path = work / name
            shutil.copy(DATA / "srun" / source, path)
            return path

    return Setup()


# -- (1) after a requeuehold the supervisor decided -----------------------------------------------------

def test_requeue_already_completed_by_the_supervisor_does_nothing(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold", "release"])
    cluster = Cluster(RELEASED)
    summary = setup.finish(cluster)
    assert summary == "the supervisor completed the requeue"
    assert cluster.actions == []
    rec = setup.store.load(JOB)
    assert [a["action"] for a in rec.attempt(0).actions] == ["requeuehold", "release"]
    assert rec.attempt(1) is None
    assert f"ajr epilog-finish job {JOB}: the supervisor completed the requeue" in setup.hook_log.read_text()


def test_waits_for_the_job_to_leave_completing_without_real_sleeping(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold", "release"])
    cluster = Cluster(COMPLETING_HELD, COMPLETING_HELD, HELD, RELEASED)
    assert setup.finish(cluster) == "the supervisor completed the requeue"
    assert cluster.actions == []
    assert 0 < setup.time.slept < 5


# -- (2) the supervisor was killed half way ----------------------------------------------------------

def test_half_done_requeue_is_finished_exclude_then_release(setup):
    setup.decided(0, "EXCLUDE_AND_REQUEUE", exclude=["node2"], actions=["requeuehold"])
    cluster = Cluster(COMPLETING_HELD, HELD, after_release=RELEASED)
    summary = setup.finish(cluster)
    assert summary == "finished the requeue the supervisor left half done: exclude node2, release"
    assert cluster.actions == [["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"],
                               ["scontrol", "release", JOB]]
    assert setup.time.slept >= hooks.FINISH_TIMEOUT_S - 1e-6  # gave the supervisor its chance first
    rec = setup.store.load(JOB)
    assert rec.excluded_nodes == ["node2"]
    acts = rec.attempt(0).actions
    assert [a["action"] for a in acts] == ["requeuehold", "exclude", "release"]
    assert acts[1]["by"] == "epilog" and acts[1]["detail"] == "exclude node2" and acts[2]["ok"] is True


def test_half_done_requeue_with_the_exclusion_already_set_only_releases(setup):
    setup.decided(0, "EXCLUDE_AND_REQUEUE", exclude=["node1"], actions=["requeuehold", "exclude"],
                  excluded=["node1"])
    cluster = Cluster(HELD_EXCLUDED_NODE1)
    assert setup.finish(cluster) == "finished the requeue the supervisor left half done: release"
    assert cluster.actions == [["scontrol", "release", JOB]]


def test_half_done_plain_requeue_only_releases(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold"])
    cluster = Cluster(HELD)
    setup.finish(cluster)
    assert cluster.actions == [["scontrol", "release", JOB]]


# -- (6) never a node outside the allocation ----------------------------------------------------------

def test_never_excludes_a_node_outside_the_allocation(setup):
    """The decision names node9 (not in SLURM_JOB_NODELIST, never excluded before): it is dropped;
    node7, excluded by an earlier attempt, stays."""
    setup.decided(0, "EXCLUDE_AND_REQUEUE", exclude=["node2", "node7", "node9"], actions=["requeuehold"],
                  excluded=["node7"])
    cluster = Cluster(HELD)
    setup.finish(cluster)
    assert cluster.actions == [["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2,node7"],
                               ["scontrol", "release", JOB]]
    assert setup.store.load(JOB).excluded_nodes == ["node2", "node7"]


def test_log_evidence_about_a_foreign_node_is_not_excluded(setup, tmp_path):
    """A rank mark names node9, which is not in this job's allocation: requeue without exclusion."""
    log = setup.work_dir / "train_77_date_26-11-25_time_10-00-00.log"
    log.write_text("0: [ajr] rank 0 node node1 pid 10\n1: [ajr] rank 1 node node9 pid 11\n"
                   "1: RuntimeError: CUDA error: uncorrectable ECC error encountered\n"
                   "srun: error: node9: task 1: Killed\n")
    cluster = Cluster(FAILED)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="1:0")
    assert summary.startswith("decided REQUEUE from the log and requeued")
    assert cluster.actions == [["scontrol", "requeuehold", JOB], ["scontrol", "release", JOB]]
    assert setup.store.load(JOB).excluded_nodes == []


# -- (3) fast restart -------------------------------------------------------------------------------

def test_fast_restart_sets_start_time_once_pending(setup):
    setup.config.write_text("fast_restart: true\n")
    setup.decided(0, "REQUEUE", actions=["requeuehold", "release"])
    cluster = Cluster(COMPLETING_HELD, HELD, RELEASED)
    summary = setup.finish(cluster)
    assert summary == "fast restart: StartTime=now+1"
    assert cluster.actions == [["scontrol", "update", f"JobId={JOB}", "StartTime=now+1"]]
    # the update came only once the job was PENDING (after the COMPLETING answer)
    first_update = cluster.calls.index(["scontrol", "update", f"JobId={JOB}", "StartTime=now+1"])
    assert first_update >= 2


def test_fast_restart_and_a_half_done_requeue(setup):
    setup.config.write_text("fast_restart: true\n")
    setup.decided(0, "REQUEUE", actions=["requeuehold"])
    cluster = Cluster(HELD, after_release=RELEASED)
    summary = setup.finish(cluster)
    assert summary == "finished the requeue the supervisor left half done: StartTime=now+1, release"
    assert cluster.actions == [["scontrol", "update", f"JobId={JOB}", "StartTime=now+1"],
                               ["scontrol", "release", JOB]]


def test_job_that_never_becomes_pending_is_left_alone(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold"])
    cluster = Cluster(COMPLETING_HELD)
    summary = setup.finish(cluster)
    assert summary.startswith("job still COMPLETING after 120 s")
    assert cluster.actions == []
    assert setup.time.slept >= hooks.PENDING_TIMEOUT_S


# -- (4) no decision: decide from the log -----------------------------------------------------------

def test_no_decision_and_a_failed_exit_decides_from_the_log_and_requeues_excluding(setup):
    """The supervisor started attempt 0 and was killed; the log shows rank 1 on node2 SIGKILLed."""
    log = setup.write_log("kill_on_bad_exit_cascade.log", "anywhere.log")
    setup.store.update(JOB, lambda rec: rec.attempts.append(
        Attempt(attempt=0, started_at=1.0, nodes=["node1", "node2"], log_path=str(log))))
    cluster = Cluster(COMPLETING_HELD, FAILED)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="0:9")
    assert summary.startswith("decided EXCLUDE_AND_REQUEUE from the log and requeued")
    assert cluster.actions == [["scontrol", "requeuehold", JOB],
                               ["scontrol", "update", f"JobId={JOB}", "ExcNodeList=node2"],
                               ["scontrol", "release", JOB]]
    rec = setup.store.load(JOB)
    a = rec.attempt(0)
    assert a.decision["verdict"] == "EXCLUDE_AND_REQUEUE" and a.decision["by"] == "epilog"
    assert a.decision["exclude"] == ["node2"]
    assert a.end_reason == "failure" and a.ended_at is not None
    assert [x["action"] for x in a.actions] == ["requeuehold", "exclude", "release"]
    assert rec.excluded_nodes == ["node2"] and rec.final is None


def test_no_record_at_all_finds_the_log_by_name_and_requeues(setup):
    log = setup.write_log("exit_code.log")
    cluster = Cluster(FAILED)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="1:0",
                           SLURM_JOB_NODELIST="node[3-4]")
    assert summary == "decided REQUEUE from the log and requeued: task 0 on node3 exited with code 1"
    assert cluster.actions == [["scontrol", "requeuehold", JOB], ["scontrol", "release", JOB]]
    a = setup.store.load(JOB).attempt(0)
    assert a.log_path == str(log) and a.nodes == ["node3", "node4"]


def test_the_newest_log_of_the_job_is_used(setup):
    old = setup.write_log("kill_on_bad_exit_cascade.log", "train_77_date_26-11-25_time_09-00-00.log")
    new = setup.write_log("exit_code.log", "train_77_date_26-11-25_time_10-00-00.log")
    setup.write_log("kill_on_bad_exit_cascade.log", "train_78_date_26-11-25_time_11-00-00.log")  # another job
    os.utime(old, (100, 100))
    os.utime(new, (200, 200))
    cluster = Cluster(FAILED)
    setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="1:0")
    assert setup.store.load(JOB).attempt(0).log_path == str(new)
    assert cluster.actions == [["scontrol", "requeuehold", JOB], ["scontrol", "release", JOB]]


def test_deterministic_failure_in_the_log_stops(setup):
    setup.write_log("command_not_found.log")
    cluster = Cluster(FAILED)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="127:0",
                           SLURM_JOB_NODELIST="node[1,4]")
    assert summary.startswith("decided STOP from the log: deterministic error")
    assert cluster.actions == []
    rec = setup.store.load(JOB)
    assert rec.final["verdict"] == "STOP" and rec.attempt(0).decision["by"] == "epilog"


def test_requeue_limit_from_the_comment_stops(setup):
    setup.write_log("exit_code.log")
    cluster = Cluster(FAILED)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="1:0",
                           SLURM_JOB_COMMENT='{"APS": {"max_requeue_times": 0}}')
    assert summary.startswith("decided STOP from the log: requeue limit reached (0 of 0 used)")
    assert cluster.actions == []


# -- (5) nothing to do ------------------------------------------------------------------------------

@pytest.mark.parametrize("final", [CANCELLED, COMPLETED])
def test_cancelled_or_completed_job_is_left_alone(setup, final):
    setup.write_log("scancel.log")
    cluster = Cluster(COMPLETING_HELD, final)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="0:15")
    state = "CANCELLED" if final is CANCELLED else "COMPLETED"
    assert summary == f"attempt 0 ended {state}: nothing to do"
    assert cluster.actions == []
    assert setup.store.load(JOB) is None


def test_attempt_already_decided_by_the_supervisor(setup):
    setup.decided(0, "STOP")
    cluster = Cluster(FAILED)
    assert setup.finish(cluster, SLURM_JOB_RESTART_COUNT="0") == "attempt 0 already decided by the supervisor (STOP)"
    assert cluster.actions == []


def test_requeue_held_without_an_ajr_decision_is_left_alone(setup):
    """An admin's requeuehold: attempt 0 has no decision; nothing is released."""
    setup.store.update(JOB, lambda rec: rec.attempts.append(Attempt(attempt=0, started_at=1.0)))
    cluster = Cluster(HELD)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="1")
    assert cluster.actions == []
    assert "nothing to do" in summary


# -- never fails ------------------------------------------------------------------------------------

def test_a_slurm_error_is_a_summary_not_an_exception(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold"])

    def broken(argv, env, timeout_s):
        return Completed(1, "", "slurm_load_jobs error: Unable to contact slurm controller")

    slurm = Slurm("/c", runner=broken, env={"PATH": "/usr/bin:/bin"})
    summary = hooks.finish(setup.env(), slurm=slurm, clock=setup.time.clock, sleep=setup.time.sleep)
    assert summary.startswith("error: ") and "Unable to contact" in summary
    assert "Unable to contact" in setup.hook_log.read_text()


# -- bugs -------------------------------------------------------------------------------------------

def test_attempt_after_a_requeue_that_ended_without_a_record_is_decided_from_the_log(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold", "release"])
    setup.write_log("exit_code.log", "train_77_date_26-11-25_time_11-00-00.log")
    cluster = Cluster(FAILED)
    summary = setup.finish(cluster, SLURM_JOB_RESTART_COUNT="1", SLURM_JOB_EXIT_CODE2="1:0",
                           SLURM_JOB_NODELIST="node[3-4]")
    assert summary.startswith("decided REQUEUE from the log and requeued")


def test_dry_run_epilog_changes_nothing_in_the_state(setup):
    setup.write_log("kill_on_bad_exit_cascade.log")
    cluster = Cluster(FAILED)
    setup.finish(cluster, dry_run=True, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_EXIT_CODE2="0:9")
    assert cluster.actions == []                      # this part holds: Slurm.act only logged
    rec = setup.store.load(JOB)
    assert rec.attempt(0).decision["dry_run"] is True
    assert rec.excluded_nodes == []
    assert all(a.get("dry_run") for a in rec.attempt(0).actions)


def test_fast_restart_when_the_supervisor_released_before_the_child_looked(setup):
    """Race seen in CI: the supervisor released the job while it was still COMPLETING (Reason no
    longer 'requeued in held state'); the epilog's own start time still ties it to the requeuehold."""
    setup.config.write_text("fast_restart: true\n")
    setup.decided(0, "REQUEUE", actions=["requeuehold", "release"])
    completing_released = COMPLETING_HELD.replace("Reason=job_requeued_in_held_state", "Reason=None")
    cluster = Cluster(completing_released, RELEASED)
    summary = setup.finish(cluster, AJR_EPILOG_AT="2.02")          # 20 ms after the requeuehold at 2.0
    assert summary == "fast restart: StartTime=now+1"
    assert cluster.actions == [["scontrol", "update", f"JobId={JOB}", "StartTime=now+1"]]


def test_an_old_requeuehold_does_not_make_a_later_failure_look_like_a_requeue(setup):
    setup.decided(0, "REQUEUE", actions=["requeuehold", "release"])
    setup.write_log("exit_code.log", "train_77_date_26-11-25_time_11-00-00.log")
    summary = setup.finish(Cluster(FAILED), AJR_EPILOG_AT="40.0", SLURM_JOB_RESTART_COUNT="1",
                           SLURM_JOB_EXIT_CODE2="1:0", SLURM_JOB_NODELIST="node[3-4]")
    assert summary.startswith("decided REQUEUE from the log and requeued")


def test_epilog_events_and_the_supervisors_backlog_reach_the_registry(setup):
    """The supervisor was killed with events still in the outbox; the epilog's child decides from
    the log, records its decision and actions as events, and sends everything that waits."""
    from ajr_supervisor.events import make_event
    from ajr_supervisor.outbox import Outbox
    from tests.unit.test_outbox import FakeRegistry

    registry = FakeRegistry()
    try:
        setup.config.write_text(f"registry_url: {registry.url}\ncluster_name: lab\n")
        outbox = Outbox(setup.work_dir / ".ajr" / "outbox", url=None, token=None)
        left = make_event("attempt_started", cluster="lab", job_id=JOB, attempt=0, data={"nodes": ["node1"]})
        assert outbox.put(left)
        log = setup.write_log("kill_on_bad_exit_cascade.log", "anywhere.log")
        setup.store.update(JOB, lambda rec: rec.attempts.append(
            Attempt(attempt=0, started_at=1.0, nodes=["node1", "node2"], log_path=str(log))))
        summary = setup.finish(Cluster(COMPLETING_HELD, FAILED), SLURM_JOB_RESTART_COUNT="0",
                               SLURM_JOB_EXIT_CODE2="0:9", AJR_REGISTRY_TOKEN="tok")
        assert summary.endswith("; events: 6 sent"), summary
        sent = [e for body in registry.bodies for e in body["events"]]
        assert sent[0]["id"] == left["id"]
        assert [e["type"] for e in sent[1:]] == ["attempt_ended", "decision", "action", "action", "action"]
        assert all(e["source"] == "epilog" and e["cluster"] == "lab" and e["user"] == "alice" for e in sent[1:])
        assert sent[2]["data"]["verdict"] == "EXCLUDE_AND_REQUEUE" and sent[2]["data"]["by"] == "epilog"
        assert registry.headers[0]["Authorization"] == "Bearer tok"
        assert outbox.backlog() == 0
    finally:
        registry.stop()
