"""The detectors (ajr_supervisor/detect/): srun's own lines, crash findings, hangs, the log analyzer.

The srun/slurmstepd lines are real: captured on the lab (tests/data/srun/SOURCES.md says how).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_supervisor.detect.analyzer import CheckpointSeen, LogAnalyzer
from ajr_supervisor.detect.crash import exit_finding, line_finding, srun_findings
from ajr_supervisor.detect.hang import HangDetector
from ajr_supervisor.detect.srun import (TASK_WRAPPER, Cancelled, NodeFailure, TaskEnd, nodes_of, parse_rank_mark,
                                        parse_srun_line)
from ajr_supervisor.logtail import LogFollower
from ajr_supervisor.policy import PolicyInput, decide
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.types import Action, Anomaly, Component, Finding, LogLine, Trigger, Verdict

SRUN = Path(__file__).resolve().parents[1] / "data" / "srun"


@pytest.fixture(scope="module")
def rules():
    return RuleSet.load()


def analyze(rules, name: str) -> LogAnalyzer:
    """Read a captured log the way the supervisor and the epilog do, and analyse it."""
    follower = LogFollower(SRUN / name, inotify=False, clock=lambda: 0.0)
    return LogAnalyzer(rules).feed_all(follower.read_new(final=True))


def lines_of(*texts: str, start: float = 0.0) -> list[LogLine]:
    """Lines as the follower makes them: ``'1: text'`` -> rank 1; time = position."""
    from ajr_supervisor.logtail import split_rank

    out = []
    for i, raw in enumerate(texts):
        rank, text = split_rank(raw)
        out.append(LogLine(offset=i * 100, text=text, rank=rank, time=start + i))
    return out


# -- parse_srun_line on real lines --------------------------------------------------------------

@pytest.mark.parametrize("line, event", [
    ("srun: error: node2: task 1: Killed", TaskEnd("node2", (1,), None, "Killed")),
    ("srun: error: node1: task 0: Terminated", TaskEnd("node1", (0,), None, "Terminated")),
    ("srun: error: node3: task 1: Segmentation fault", TaskEnd("node3", (1,), None, "Segmentation fault")),
    ("srun: error: node1: task 0: Exited with exit code 1", TaskEnd("node1", (0,), 1, None)),
    ("srun: error: node1: tasks 0-1: Exited with exit code 3", TaskEnd("node1", (0, 1), 3, None)),
    ("srun: error: node4: task 1: Exited with exit code 127", TaskEnd("node4", (1,), 127, None)),
    ("srun: error: Node failure on node2", NodeFailure("node2")),
    ("slurmstepd-node1: error: *** STEP 5.0 ON node1 CANCELLED AT 2026-11-25T09:39:42 ***",
     Cancelled("node1", "")),
    ("slurmstepd-node1: error: *** JOB 4 ON node1 CANCELLED AT 2026-11-25T09:37:02 DUE TO JOB REQUEUE ***",
     Cancelled("node1", "JOB REQUEUE")),
    ("slurmstepd-node1: error: *** STEP 30.0 ON node1 CANCELLED AT 2026-11-25T09:43:57 DUE TO JOB REQUEUE ***",
     Cancelled("node1", "JOB REQUEUE")),
    ("slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-11-25T09:16:40 DUE TO TIME LIMIT ***",
     Cancelled("node1", "TIME LIMIT")),
])
def test_parse_srun_line_events(line, event):
    assert parse_srun_line(line) == event


def test_cancel_line_still_parses_with_the_rank_prefix_left_on():
    assert parse_srun_line("0: slurmstepd-node1: error: *** STEP 5.0 ON node1 CANCELLED AT "
                           "2026-11-25T09:39:42 ***") == Cancelled("node1", "")


def test_tasks_lists_with_commas_and_ranges():
    ev = parse_srun_line("srun: error: node7: tasks 0,2-4,9: Killed")
    assert ev == TaskEnd("node7", (0, 2, 3, 4, 9), None, "Killed")


@pytest.mark.parametrize("line", [
    "srun: launch/slurm: _step_signal: Terminating StepId=5.0",
    "srun: Force Terminated StepId=5.0",
    "srun: Job step aborted: Waiting up to 7 seconds for job step to finish.",
    "srun: got SIGCONT",
    "srun: forcing job termination",
    "step 1 loss 2.5",
    "[ajr] rank 3 node node2 pid 4242",
    "my code printed srun: error: node1: task 0: Killed in the middle of a line",
    "the word CANCELLED AT appears here but not srun's banner",
    "",
])
def test_lines_that_are_not_events(line):
    assert parse_srun_line(line) is None


# -- rank marks ------------------------------------------------------------------------------------

def test_parse_rank_mark():
    assert parse_rank_mark("[ajr] rank 3 node node2 pid 4242") == (3, "node2", 4242)
    assert parse_rank_mark("[ajr] rank 12 node gpu-a01.cluster pid 1") == (12, "gpu-a01.cluster", 1)
    for bad in ("[ajr] rank x node node2 pid 4242", "[ajr] rank 3 node node2", "[ajr] rank 3 node  pid 1",
                "x [ajr] rank 3 node node2 pid 4242", "[ajr] rank 3 node node2 pid 4242 extra"):
        assert parse_rank_mark(bad) is None


def test_task_wrapper_prints_a_parsable_mark_and_execs(tmp_path):
    import subprocess

    out = subprocess.run(["/bin/sh", "-c", TASK_WRAPPER, "ajr-task", "sh", "-c", 'echo "child $$"'],
                         env={"SLURM_PROCID": "3", "SLURMD_NODENAME": "node2", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
    rank, node, pid = parse_rank_mark(out[0])
    assert (rank, node) == (3, "node2")
    assert out[1] == f"child {pid}"      # exec: the command keeps the pid the mark announced


def test_nodes_of():
    assert nodes_of("node[1-3],gpu01") == ["node1", "node2", "node3", "gpu01"]
    assert nodes_of("node[3-1]") == []
    assert nodes_of("node[1") == []


# -- srun_findings ---------------------------------------------------------------------------------

def ev(line: str, when: float = 1.0):
    event = parse_srun_line(line)
    assert event is not None, line
    return when, line, event


def test_first_task_failure_wins_and_collateral_kills_are_ignored():
    found = srun_findings([ev("srun: error: node2: task 1: Killed", 1),
                           ev("srun: error: node1: task 0: Terminated", 2)])
    [f] = found
    assert f.rule_id == "srun.task_killed" and f.action == Action.EXCLUDE_NODE_AND_REQUEUE
    assert f.nodes == ("node2",) and f.trigger == Trigger.AT_EXIT and f.time == 1
    assert f.line == "srun: error: node2: task 1: Killed"
    assert f.reason == "task 1 on node2 was killed by signal (Killed)"


@pytest.mark.parametrize("signal_words", ["Segmentation fault", "Aborted", "Terminated", "Floating point exception",
                                          "Illegal instruction", "Interrupt"])
def test_program_signals_requeue_without_excluding(signal_words):
    [f] = srun_findings([ev(f"srun: error: node3: task 1: {signal_words}")])
    assert f.rule_id == "srun.task_signal" and f.action == Action.REQUEUE and f.nodes == ()
    assert f.component == Component.APPLICATION


def test_exit_code_requeues():
    [f] = srun_findings([ev("srun: error: node1: tasks 0-1: Exited with exit code 3")])
    assert f.rule_id == "srun.task_exit" and f.action == Action.REQUEUE
    assert f.reason == "task 0,1 on node1 exited with code 3" and f.nodes == ()


@pytest.mark.parametrize("code, words", [(126, "command not executable"), (127, "command not found")])
def test_command_not_runnable_stops(code, words):
    [f] = srun_findings([ev(f"srun: error: node4: task 1: Exited with exit code {code}")])
    assert f.rule_id == "srun.command_not_runnable" and f.action == Action.STOP
    assert words in f.reason and f"exit {code}" in f.reason


def test_node_failure_excludes_that_node():
    [f] = srun_findings([ev("srun: error: Node failure on node2"),
                         ev("srun: error: node1: task 0: Killed")])
    assert f.rule_id == "srun.node_failure" and f.action == Action.EXCLUDE_NODE_AND_REQUEUE
    assert f.nodes == ("node2",) and f.trigger == Trigger.AT_EXIT


def test_a_cancellation_first_means_no_srun_finding():
    assert srun_findings([ev("slurmstepd-node1: error: *** STEP 5.0 ON node1 CANCELLED AT 2026-11-25T09:39:42 ***"),
                          ev("srun: error: node1: task 0: Terminated")]) == []


def test_exit_code_zero_ends_the_search_without_a_finding():
    assert srun_findings([ev("srun: error: node1: task 0: Exited with exit code 0"),
                          ev("srun: error: node2: task 1: Killed")]) == []


def test_no_events_no_findings():
    assert srun_findings([]) == []


# -- the analyzer over real captured logs -----------------------------------------------------------

def test_kill_on_bad_exit_cascade(rules):
    """rank 1 on node2 SIGKILLed, then srun terminated task 0 and slurmstepd cancelled the step."""
    a = analyze(rules, "kill_on_bad_exit_cascade.log")
    assert a.rank_nodes == {0: "node1", 1: "node2"}
    assert set(a.rank_pids) == {0, 1} and all(p > 0 for p in a.rank_pids.values())
    assert [type(e).__name__ for _, _, e in a.srun_events] == ["TaskEnd", "Cancelled", "TaskEnd"]
    assert a.cancelled() is None          # the cancellation followed a task failure: not external
    [f] = a.all_findings()
    assert f.rule_id == "srun.task_killed" and f.nodes == ("node2",)
    assert f.line == "srun: error: node2: task 1: Killed"
    d = decide(PolicyInput(findings=a.all_findings(), step_failed=True, restarts=0, max_requeues=10,
                           crash_loop_attempts=3, new_checkpoint=False, allocation=["node1", "node2"]))
    assert d.verdict == Verdict.EXCLUDE_AND_REQUEUE and d.exclude == ("node2",)


def test_exit_code_with_the_other_task_terminated(rules):
    a = analyze(rules, "exit_code.log")
    assert a.rank_nodes == {0: "node3", 1: "node4"}
    assert a.cancelled() is None
    [f] = a.all_findings()
    assert f.rule_id == "srun.task_exit" and f.reason == "task 0 on node3 exited with code 1"


def test_tasks_range_exit(rules):
    a = analyze(rules, "tasks_range_exit.log")
    [f] = a.all_findings()
    assert f.reason == "task 0,1 on node1 exited with code 3"


def test_segfault_is_requeued_not_excluded(rules):
    a = analyze(rules, "segfault.log")
    assert a.cancelled() is None
    [f] = a.all_findings()
    assert f.rule_id == "srun.task_signal" and f.action == Action.REQUEUE and f.nodes == ()
    assert "Segmentation fault" in f.reason and "node3" in f.reason


def test_command_not_found_stops(rules):
    a = analyze(rules, "command_not_found.log")
    [f] = a.all_findings()           # the first of the two reports wins
    assert f.rule_id == "srun.command_not_runnable" and f.action == Action.STOP
    assert f.reason == "task 0 on node1: command not found (exit 127)"


def test_scancel_is_an_external_cancellation(rules):
    a = analyze(rules, "scancel.log")
    assert a.cancelled() == Cancelled("node1", "")
    assert a.all_findings() == []    # the Terminated tasks after the cancel are not evidence
    # the cancel line came with rank 0's prefix; the event keeps it for people
    assert a.srun_events[0][1].startswith("0: slurmstepd-node1: error: *** STEP 29.0 ON node1 CANCELLED")


def test_requeue_is_an_external_cancellation(rules):
    a = analyze(rules, "requeue.log")
    assert a.cancelled() == Cancelled("node1", "JOB REQUEUE")
    assert a.all_findings() == []
    # srun's own reports of the terminated tasks came after the cancellation: collateral
    assert [type(e).__name__ for _, _, e in a.srun_events] == ["Cancelled", "TaskEnd", "TaskEnd"]


def test_progress_bar_log_lines_are_not_findings(rules):
    a = analyze(rules, "progress_bar.log")
    assert a.all_findings() == [] and a.srun_events == []
    assert a.lines == 10


def test_node_failure_log(rules, tmp_path):
    (tmp_path / "nf.log").write_text(
        "0: [ajr] rank 0 node node1 pid 11\n1: [ajr] rank 1 node node2 pid 12\n"
        "srun: error: Node failure on node2\n"
        "srun: Job step aborted: Waiting up to 7 seconds for job step to finish.\n"
        "srun: error: node1: task 0: Killed\n")
    follower = LogFollower(tmp_path / "nf.log", inotify=False)
    a = LogAnalyzer(rules).feed_all(follower.read_new(final=True))
    [f] = a.all_findings()
    assert f.rule_id == "srun.node_failure" and f.nodes == ("node2",)


# -- the analyzer, line by line ---------------------------------------------------------------------

def test_rule_finding_gets_its_ranks_node(rules):
    a = LogAnalyzer(rules)
    out = [a.feed(x) for x in lines_of("0: [ajr] rank 0 node node1 pid 10", "1: [ajr] rank 1 node node2 pid 11",
                                       "1: RuntimeError: CUDA error: uncorrectable ECC error encountered")]
    assert out[:2] == [None, None]
    f = out[2]
    assert isinstance(f, Finding) and a.findings == [f]
    assert f.rule_id == "cuda_ecc_uncorrectable" and f.nodes == ("node2",) and f.rank == 1
    assert f.line == "1: RuntimeError: CUDA error: uncorrectable ECC error encountered"
    assert f.trigger == Trigger.IMMEDIATE and f.time == 2


def test_rule_finding_without_known_node(rules):
    a = LogAnalyzer(rules)
    before_mark, no_rank = a.feed_all(lines_of(
        "3: RuntimeError: CUDA error: uncorrectable ECC error encountered",
        "RuntimeError: CUDA error: uncorrectable ECC error encountered")).findings
    assert before_mark.nodes == () and before_mark.rank == 3
    assert no_rank.nodes == () and no_rank.rank is None and no_rank.line.startswith("RuntimeError")


def test_checkpoint_lines(rules):
    a = LogAnalyzer(rules)
    seen = a.feed(lines_of("0: Saved checkpoint to /ck/iter_4")[0])
    assert isinstance(seen, CheckpointSeen) and seen.iteration == 4
    assert a.checkpoints == [seen] and a.findings == []


def test_rule_findings_come_before_srun_findings(rules):
    a = LogAnalyzer(rules).feed_all(lines_of(
        "0: [ajr] rank 0 node node1 pid 10",
        "0: Traceback (most recent call last):",
        "0: ModuleNotFoundError: No module named 'nonexistent_mod_xyz'",
        "srun: error: node1: task 0: Exited with exit code 1"))
    assert [f.rule_id for f in a.all_findings()] == ["python_traceback", "python_import_error", "srun.task_exit"]
    assert a.cancelled() is None


def test_malformed_mark_is_just_a_line(rules):
    a = LogAnalyzer(rules)
    assert a.feed(lines_of("0: [ajr] rank zero node node1 pid 10")[0]) is None
    assert a.rank_nodes == {} and a.lines == 1


def test_later_mark_for_a_rank_replaces_the_node(rules):
    a = LogAnalyzer(rules).feed_all(lines_of("[ajr] rank 0 node node1 pid 10", "[ajr] rank 0 node node3 pid 99"))
    assert a.rank_nodes == {0: "node3"} and a.rank_pids == {0: 99}


def test_line_finding_directly():
    from ajr_supervisor.types import RuleMatch

    match = RuleMatch("r", Anomaly.CRASH, Component.GPU, Action.EXCLUDE_NODE_AND_REQUEUE, Trigger.IMMEDIATE, "bad")
    f = line_finding(LogLine(0, "boom", 2, 7.5), match, {2: "node5"})
    assert (f.nodes, f.rank, f.line, f.time, f.reason, f.component) == (("node5",), 2, "2: boom", 7.5, "bad",
                                                                        Component.GPU)
    assert line_finding(LogLine(0, "boom", 4, 1.0), match, {2: "node5"}).nodes == ()


# -- exit_finding ----------------------------------------------------------------------------------

def test_exit_finding():
    assert exit_finding(0, 5.0) is None
    f = exit_finding(3, 5.0)
    assert f.reason == "the training step ended with exit code 3" and f.time == 5.0
    assert (f.action, f.trigger, f.rule_id, f.anomaly) == (Action.REQUEUE, Trigger.AT_EXIT, "srun.exit", Anomaly.CRASH)
    assert exit_finding(-9, 1.0).reason == "the training step ended with signal 9"


# -- HangDetector (injected clock, no sleeping) -------------------------------------------------------

def test_hang_detector_fires_at_the_timeout():
    h = HangDetector(120.0, start=1000.0)
    assert h.deadline() == 1120.0
    assert h.check(1000.0) is None and h.check(1119.9) is None
    f = h.check(1120.0)
    assert f is not None and f.anomaly == Anomaly.HANG and f.action == Action.REQUEUE and f.time == 1120.0
    assert f.reason == "no new log line for 120 s (hang timeout 120 s)"
    assert f.trigger == Trigger.IMMEDIATE


def test_a_line_resets_the_hang_clock():
    h = HangDetector(10.0, start=0.0)
    h.observe(8.0)
    assert h.check(17.0) is None and h.silence(17.0) == 9.0
    assert h.deadline() == 18.0
    assert h.check(18.5) is not None


def test_observe_never_moves_back_and_silence_is_never_negative():
    h = HangDetector(5.0, start=100.0)
    h.observe(50.0)
    assert h.last_line_at == 100.0
    assert h.silence(90.0) == 0.0


@pytest.mark.parametrize("bad", [0, -1.0])
def test_hang_timeout_must_be_positive(bad):
    with pytest.raises(ValueError):
        HangDetector(bad, start=0.0)


def test_fractional_timeout_in_the_reason():
    assert "hang timeout 0.5 s" in HangDetector(0.5, start=0.0).check(2.0).reason


# -- srun -u fragments (one write of an unbuffered task = one labelled line) ------------------------------

def test_short_fragments_of_one_rank_are_joined_before_matching(rules):
    a = LogAnalyzer(rules).feed_all(lines_of(
        "1: [ajr] rank 1 node node2 pid 5",
        "1: Traceback (most recent call last):",
        '1:   File "<string>", line 1, in <module>',
        "1: ModuleNotFoundError",
        "1: : ",
        "1: No module named 'nonexistent_mod_xyz'",
        "1: "))
    assert [f.rule_id for f in a.findings] == ["python_traceback", "python_import_error"]
    f = a.findings[1]
    assert f.line == "1: ModuleNotFoundError: No module named 'nonexistent_mod_xyz'"
    assert f.rank == 1 and f.nodes == ("node2",) and f.action == Action.STOP and f.time == 5


def test_fragments_are_joined_per_rank_when_ranks_interleave(rules):
    a = LogAnalyzer(rules).feed_all(lines_of(
        "0: ModuleNotFoundError", "1: : ", "0: : ", "1: step 3", "0: No module named 'x'"))
    [f] = a.findings
    assert f.rank == 0 and f.line == "0: ModuleNotFoundError: No module named 'x'"


def test_fragments_of_different_ranks_are_not_joined(rules):
    a = LogAnalyzer(rules).feed_all(lines_of("0: ModuleNotFoundError", "1: : ", "1: No module named 'x'"))
    assert a.findings == []


def test_lines_without_a_rank_are_not_joined(rules):
    a = LogAnalyzer(rules).feed_all(lines_of("ModuleNotFoundError", ": ", "No module named 'x'"))
    assert a.findings == []


def test_a_long_line_ends_the_fragments(rules):
    a = LogAnalyzer(rules).feed_all(lines_of("0: ModuleNotFoundError", "0: " + "x" * 120, "0: : No module named 'x'"))
    assert a.findings == []
