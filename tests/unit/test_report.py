"""render_timeline (ajr_supervisor/report.py) on realistic state records."""

from __future__ import annotations

import time


from ajr_supervisor.report import render_timeline
from ajr_supervisor.state import Attempt, JobRecord

T0 = 1_795_000_000.0
ECC = "1: RuntimeError: CUDA error: uncorrectable ECC error encountered"


def clock(t: float) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(t))


def three_attempts() -> JobRecord:
    """Attempt 0: ECC error on node2 -> excluded and requeued; attempt 1: hang -> requeued, but the release
    failed; attempt 2: exit 1 at the requeue limit -> stopped by the epilog."""
    a0 = Attempt(
        attempt=0, started_at=T0, ended_at=T0 + 65, nodes=["node1", "node2"], log_path="/logs/train_4711_a0.log",
        end_reason="requeued",
        checkpoints=[{"time": T0 + 20, "iteration": 200, "line": "Saved checkpoint to /ck/iter_200"},
                     {"time": T0 + 40, "iteration": 400, "line": "Saved checkpoint to /ck/iter_400"}],
        decision={"verdict": "EXCLUDE_AND_REQUEUE", "reason": "A GPU reported an uncorrectable ECC memory error; "
                  "excluding node2", "exclude": ["node2"], "decided_at": T0 + 64, "by": "supervisor",
                  "dry_run": False,
                  "finding": {"anomaly": "CRASH", "component": "GPU", "nodes": ["node2"],
                              "rule_id": "cuda_ecc_uncorrectable", "line": ECC}},
        actions=[{"action": "requeuehold", "ok": True, "at": T0 + 64, "error": None},
                 {"action": "exclude", "ok": True, "at": T0 + 64, "error": None, "detail": "node2"},
                 {"action": "release", "ok": True, "at": T0 + 64, "error": None}])
    a1 = Attempt(
        attempt=1, started_at=T0 + 100, ended_at=T0 + 100 + 3661,
        nodes=["node3", "node4", "node5", "node6", "node7", "node8", "node9", "node10"],
        log_path="/logs/train_4711_a1.log", end_reason="requeued",
        checkpoints=[{"time": T0 + 1000, "iteration": None, "line": "Saved checkpoint to /ck/latest"}],
        decision={"verdict": "REQUEUE", "reason": "no new log line for 120 s (hang timeout 120 s)",
                  "exclude": ["node2"], "by": "supervisor", "dry_run": False,
                  "finding": {"anomaly": "HANG", "component": "UNKNOWN", "nodes": [], "rule_id": None,
                              "line": None}},
        actions=[{"action": "requeuehold", "ok": True, "at": T0 + 3761, "error": None},
                 {"action": "release", "ok": False, "at": T0 + 3761,
                  "error": "`scontrol release 4711` failed with exit code 1: Invalid job id specified"}])
    a2 = Attempt(
        attempt=2, started_at=T0 + 4000, ended_at=T0 + 4002, nodes=["node1", "node3"], exit_code=1,
        end_reason="stopped",
        decision={"verdict": "STOP", "reason": "requeue limit reached (2 of 2 used): the step failed",
                  "exclude": ["node2"], "by": "epilog", "dry_run": False, "finding": None})
    return JobRecord(job_id="4711", job_name="train", user="alice", partition="gpu", excluded_nodes=["node2"],
                     attempts=[a0, a1, a2],
                     final={"verdict": "STOP", "reason": "requeue limit reached (2 of 2 used): the step failed",
                            "at": T0 + 4002, "attempt": 2})


def test_timeline_of_a_requeue_with_exclusion_then_a_stop():
    lines = render_timeline(three_attempts()).splitlines()
    assert lines[10].startswith("      HANG (UNKNOWN")      # the hang detector's finding has no rule id
    lines[10] = "<hang finding>"
    assert lines == [
        "job 4711 (train, user alice, partition gpu): 3 attempts, excluded node2",
        "  STOPPED after attempt 2: requeue limit reached (2 of 2 used): the step failed",
        f"  attempt 0  {clock(T0)}      1m05s  on node1,node2  -> requeued",
        f"      checkpoints: 2, last iteration 400 at {clock(T0 + 40)}",
        f"      CRASH (GPU on node2, rule cuda_ecc_uncorrectable): {ECC}",
        "      decision (supervisor): requeued, excluding node2 - A GPU reported an uncorrectable ECC memory error; "
        "excluding node2",
        "      actions: requeuehold ok, exclude ok, release ok",
        "      log: /logs/train_4711_a0.log",
        f"  attempt 1  {clock(T0 + 100)}   1h01m01s  on node3,node4,node5,node6,node7,... (8 nodes)  -> requeued",
        f"      checkpoints: 1, last at {clock(T0 + 1000)}",
        "<hang finding>",
        "      decision (supervisor): requeued - no new log line for 120 s (hang timeout 120 s)",
        "      actions: requeuehold ok, release FAILED: `scontrol release 4711` failed with exit code 1: "
        "Invalid job id specified",
        "      log: /logs/train_4711_a1.log",
        f"  attempt 2  {clock(T0 + 4000)}      0m02s  on node1,node3  -> stopped (exit 1)",
        "      decision (epilog): STOPPED - requeue limit reached (2 of 2 used): the step failed",
    ]


def test_dry_run_decision_is_flagged():
    rec = JobRecord(job_id="8", job_name="t", user="bob", partition="lab", attempts=[Attempt(
        attempt=0, started_at=T0, ended_at=T0 + 5, nodes=["node1", "node2"], exit_code=0,
        end_reason="dry run: ended on its own",
        decision={"verdict": "EXCLUDE_AND_REQUEUE", "reason": "bad GPU; excluding node1", "exclude": ["node1"],
                  "by": "supervisor", "dry_run": True,
                  "finding": {"anomaly": "CRASH", "component": "GPU", "nodes": ["node1"], "rule_id": "x",
                              "line": "0: boom"}},
        actions=[{"action": "requeuehold", "ok": True, "dry_run": True}])])
    text = render_timeline(rec)
    assert "1 attempt\n" in text + "\n" and "attempts" not in text.splitlines()[0]
    assert "-> dry run: ended on its own\n" in text          # exit 0 is not shown
    assert "      decision (supervisor): requeued, excluding node1 [dry run] - bad GPU; excluding node1" in text
    assert "excluded" not in text.splitlines()[0]           # a dry run never excluded anything
    assert "STOPPED after" not in text


def test_running_attempt_and_a_record_without_details():
    rec = JobRecord(job_id="9", attempts=[Attempt(attempt=0, started_at=T0)])
    assert render_timeline(rec).splitlines() == [
        "job 9: 1 attempt",
        f"  attempt 0  {clock(T0)}    running  on ?  -> running",
    ]


def test_empty_record():
    assert render_timeline(JobRecord(job_id="10", job_name="j")) == "job 10 (j, user ?, partition ?): 0 attempts"


def test_decision_by_default_is_the_supervisor_and_unknown_verdicts_are_shown_raw():
    rec = JobRecord(job_id="11", attempts=[Attempt(
        attempt=3, started_at=T0, ended_at=T0 + 7200, nodes=["n1"], exit_code=-9, end_reason="failure",
        decision={"verdict": "MYSTERY", "reason": "r", "exclude": []})])
    lines = render_timeline(rec).splitlines()
    assert lines[1].endswith("2h00m00s  on n1  -> failure (exit -9)")
    assert lines[2] == "      decision (supervisor): MYSTERY - r"


def test_six_nodes_are_listed_in_full():
    nodes = [f"node{i}" for i in range(1, 7)]
    rec = JobRecord(job_id="12", attempts=[Attempt(attempt=0, started_at=T0, nodes=nodes)])
    assert "on node1,node2,node3,node4,node5,node6  ->" in render_timeline(rec)


def test_a_finding_without_rule_id_does_not_print_rule_none():
    text = render_timeline(three_attempts())
    assert "      HANG (UNKNOWN" in text and "rule None" not in text
