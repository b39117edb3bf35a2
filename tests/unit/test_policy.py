"""The policy (ajr_supervisor/policy.py): every rule of its docstring, pure data in, a Decision out."""

from __future__ import annotations

import pytest

from ajr_supervisor.policy import (PastAttempt, PolicyInput, consecutive_failures_without_checkpoint, decide,
                                   primary_finding)
from ajr_supervisor.types import Action, Anomaly, Component, Finding, Trigger, Verdict

IMM, AT_EXIT = Trigger.IMMEDIATE, Trigger.AT_EXIT
FAILED, OK = PastAttempt(failed=True, new_checkpoint=False), PastAttempt(failed=False, new_checkpoint=False)
FAILED_WITH_CKPT = PastAttempt(failed=True, new_checkpoint=True)


def finding(action: Action, time: float = 1.0, trigger: Trigger = IMM, nodes=(), rule_id: str | None = None,
            anomaly: Anomaly = Anomaly.CRASH, component: Component = Component.UNKNOWN) -> Finding:
    return Finding(anomaly, component, action, time, f"{rule_id or action.value} at {time}",
                   rule_id=rule_id or f"{action.value.lower()}@{time}", nodes=tuple(nodes), trigger=trigger)


def inp(findings=(), *, step_failed=True, restarts=0, max_requeues=10, crash_loop_attempts=3,
        new_checkpoint=False, previous=(), allocation=("node1", "node2"), excluded=(), ended_externally=""):
    return PolicyInput(findings=list(findings), step_failed=step_failed, restarts=restarts,
                       max_requeues=max_requeues, crash_loop_attempts=crash_loop_attempts,
                       new_checkpoint=new_checkpoint, previous=list(previous), allocation=list(allocation),
                       excluded=list(excluded), ended_externally=ended_externally)


# -- 1. ended by Slurm or the user ---------------------------------------------------------------

@pytest.mark.parametrize("why", ["cancelled", "cancelled due to job requeue", "time limit"])
def test_ended_externally_is_left_alone_even_with_fatal_evidence(why):
    d = decide(inp([finding(Action.STOP), finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node1"])],
                   restarts=99, max_requeues=1, previous=[FAILED] * 5, ended_externally=why))
    assert d.verdict == Verdict.NONE
    assert why in d.reason and "not ours to retry" in d.reason
    assert d.exclude == () and d.finding is None


# -- 2. success ------------------------------------------------------------------------------------

def test_clean_exit_without_findings_is_success():
    d = decide(inp([], step_failed=False))
    assert d == d.__class__(Verdict.NONE, "completed successfully")


def test_clean_exit_ignores_lines_that_only_explain():
    """A printed traceback (at_exit) in a run that exited 0 is no failure."""
    d = decide(inp([finding(Action.STOP, trigger=AT_EXIT), finding(Action.REQUEUE, trigger=AT_EXIT)],
                   step_failed=False))
    assert d.verdict == Verdict.NONE and d.reason == "completed successfully"


# -- 3. the primary finding -------------------------------------------------------------------------

def test_severity_order_stop_over_exclude_over_requeue():
    req, exc, stop = (finding(Action.REQUEUE, 1), finding(Action.EXCLUDE_NODE_AND_REQUEUE, 2, nodes=["node1"]),
                      finding(Action.STOP, 3))
    for order in ([req, exc, stop], [stop, exc, req], [exc, req, stop]):
        assert primary_finding(order, step_failed=True) is stop
    assert primary_finding([req, exc], step_failed=True) is exc
    assert primary_finding([finding(Action.NONE, 0), req], step_failed=True) is req


def test_earliest_among_equals_whatever_the_list_order():
    late, early, middle = finding(Action.REQUEUE, 9), finding(Action.REQUEUE, 2), finding(Action.REQUEUE, 5)
    assert primary_finding([late, early, middle], step_failed=True) is early
    d = decide(inp([late, middle, early]))
    assert d.finding is early


def test_at_exit_findings_count_only_once_the_step_failed():
    explain = finding(Action.STOP, 1, AT_EXIT)
    assert primary_finding([explain], step_failed=False) is None
    assert primary_finding([explain], step_failed=True) is explain


def test_immediate_finding_acts_while_the_step_still_runs():
    """A line that proves death is acted on with step_failed False (the step has not exited yet)."""
    fatal = finding(Action.REQUEUE, 4, IMM, rule_id="segfault")
    traceback = finding(Action.STOP, 3, AT_EXIT, rule_id="python_import_error")
    d = decide(inp([traceback, fatal], step_failed=False))
    assert d.verdict == Verdict.REQUEUE and d.finding is fatal
    # once the step failed, the explaining STOP line is the more severe evidence
    d = decide(inp([traceback, fatal], step_failed=True))
    assert d.verdict == Verdict.STOP and d.finding is traceback


def test_fatal_line_outranks_the_exit_status():
    fatal = finding(Action.REQUEUE, 2, IMM, rule_id="segfault")
    exit_status = finding(Action.REQUEUE, 9, AT_EXIT, rule_id="srun.exit")
    assert decide(inp([exit_status, fatal])).finding is fatal


def test_step_failed_with_no_evidence_is_requeued():
    d = decide(inp([], step_failed=True))
    assert d.verdict == Verdict.REQUEUE
    assert d.reason == "the step failed with no other evidence"
    assert d.finding.anomaly == Anomaly.CRASH and d.finding.component == Component.UNKNOWN
    assert d.finding.action == Action.REQUEUE and d.finding.trigger == AT_EXIT


def test_step_failed_with_only_ignored_kinds_of_evidence_still_requeues():
    """Only at_exit evidence and the step did not fail: success; the same evidence + failure: acted on."""
    d = decide(inp([finding(Action.REQUEUE, 1, AT_EXIT)], step_failed=True))
    assert d.verdict == Verdict.REQUEUE and d.finding.rule_id == "requeue@1"


def test_finding_asking_for_nothing_decides_nothing():
    d = decide(inp([finding(Action.NONE, 1)]))
    assert d.verdict == Verdict.NONE and d.reason.startswith("nothing to do: ")
    assert d.finding is not None and d.finding.action == Action.NONE


# -- 4. deterministic error -------------------------------------------------------------------------

def test_deterministic_error_stops_and_keeps_earlier_exclusions():
    d = decide(inp([finding(Action.STOP, 1, AT_EXIT, rule_id="python_import_error")],
                   excluded=["node7", "node3", "node7"]))
    assert d.verdict == Verdict.STOP
    assert d.reason.startswith("deterministic error, a retry would fail the same way: ")
    assert d.exclude == ("node3", "node7")
    assert d.finding.rule_id == "python_import_error"


def test_deterministic_error_is_reported_as_such_even_when_the_budget_is_spent():
    d = decide(inp([finding(Action.STOP)], restarts=5, max_requeues=5, previous=[FAILED] * 4))
    assert d.verdict == Verdict.STOP and d.reason.startswith("deterministic error")


# -- 5. requeue budget ------------------------------------------------------------------------------

def test_requeue_budget_edge():
    ev = [finding(Action.REQUEUE, rule_id="segfault")]
    below = decide(inp(ev, restarts=2, max_requeues=3))
    assert below.verdict == Verdict.REQUEUE
    at = decide(inp(ev, restarts=3, max_requeues=3))
    assert at.verdict == Verdict.STOP
    assert at.reason.startswith("requeue limit reached (3 of 3 used): ")
    assert at.finding.rule_id == "segfault"
    above = decide(inp(ev, restarts=4, max_requeues=3))
    assert above.verdict == Verdict.STOP


def test_zero_requeues_allowed_stops_at_the_first_failure():
    d = decide(inp([], restarts=0, max_requeues=0))
    assert d.verdict == Verdict.STOP and "requeue limit reached (0 of 0 used)" in d.reason


def test_budget_stop_keeps_earlier_exclusions_and_adds_none():
    d = decide(inp([finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node1"])], restarts=1, max_requeues=1,
                   excluded=["node4"]))
    assert d.verdict == Verdict.STOP and d.exclude == ("node4",)


def test_budget_is_checked_before_the_crash_loop():
    d = decide(inp([], restarts=3, max_requeues=3, crash_loop_attempts=2, previous=[FAILED] * 3))
    assert d.verdict == Verdict.STOP and d.reason.startswith("requeue limit reached")


# -- 6. crash loop ----------------------------------------------------------------------------------

@pytest.mark.parametrize("previous, current_ckpt, expected", [
    ([], False, 1),
    ([FAILED, FAILED], False, 3),
    ([FAILED, FAILED], True, 0),                    # this attempt saved a checkpoint: the streak is broken
    ([FAILED, FAILED_WITH_CKPT, FAILED], False, 2),  # a past attempt with a checkpoint breaks it
    ([FAILED, OK, FAILED], False, 2),                # a past success breaks it
    ([OK, OK], False, 1),
])
def test_consecutive_failures_without_checkpoint(previous, current_ckpt, expected):
    assert consecutive_failures_without_checkpoint(
        [*previous, PastAttempt(failed=True, new_checkpoint=current_ckpt)]) == expected


def test_crash_loop_stops_after_n_failures_in_a_row_without_checkpoint():
    d = decide(inp([finding(Action.REQUEUE, rule_id="segfault")], restarts=2, crash_loop_attempts=3,
                   previous=[FAILED, FAILED], excluded=["node9"]))
    assert d.verdict == Verdict.STOP
    assert d.reason.startswith("crash loop: 3 attempts in a row failed without a new checkpoint (limit 3): ")
    assert d.exclude == ("node9",) and d.finding.rule_id == "segfault"


def test_one_short_of_the_crash_loop_limit_requeues():
    d = decide(inp([], restarts=1, crash_loop_attempts=3, previous=[FAILED]))
    assert d.verdict == Verdict.REQUEUE


def test_a_new_checkpoint_in_this_attempt_breaks_the_crash_loop():
    d = decide(inp([], restarts=2, crash_loop_attempts=3, previous=[FAILED, FAILED], new_checkpoint=True))
    assert d.verdict == Verdict.REQUEUE


def test_a_past_success_breaks_the_crash_loop():
    d = decide(inp([], restarts=3, crash_loop_attempts=3, previous=[FAILED, OK, FAILED]))
    assert d.verdict == Verdict.REQUEUE


def test_a_past_attempt_with_a_checkpoint_breaks_the_crash_loop():
    d = decide(inp([], restarts=3, crash_loop_attempts=3, previous=[FAILED, FAILED_WITH_CKPT, FAILED]))
    assert d.verdict == Verdict.REQUEUE
    d = decide(inp([], restarts=4, crash_loop_attempts=3, previous=[FAILED_WITH_CKPT, FAILED, FAILED, FAILED]))
    assert d.verdict == Verdict.STOP


def test_crash_loop_of_one_stops_any_failure_without_checkpoint():
    assert decide(inp([], crash_loop_attempts=1)).verdict == Verdict.STOP
    assert decide(inp([], crash_loop_attempts=1, new_checkpoint=True)).verdict == Verdict.REQUEUE


def test_crash_loop_zero_means_no_crash_loop_check():
    assert decide(inp([], crash_loop_attempts=0, previous=[FAILED] * 8, restarts=8)).verdict == Verdict.REQUEUE


# -- 7. exclusion -----------------------------------------------------------------------------------

def test_exclude_and_requeue_when_the_evidence_names_a_node_of_the_allocation():
    f = finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node2"], rule_id="cuda_ecc_uncorrectable")
    d = decide(inp([f], allocation=["node1", "node2"]))
    assert d.verdict == Verdict.EXCLUDE_AND_REQUEUE
    assert d.exclude == ("node2",)
    assert d.reason.endswith("; excluding node2") and d.finding is f


def test_only_nodes_of_the_allocation_are_excluded():
    f = finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node9", "node2"])
    d = decide(inp([f], allocation=["node1", "node2"]))
    assert d.verdict == Verdict.EXCLUDE_AND_REQUEUE
    assert d.exclude == ("node2",)
    assert "node9" not in d.reason


def test_evidence_naming_only_foreign_nodes_requeues_without_excluding():
    f = finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node9"])
    d = decide(inp([f], allocation=["node1", "node2"], excluded=["node3"]))
    assert d.verdict == Verdict.REQUEUE
    assert d.exclude == ("node3",)


def test_exclusion_without_known_node_requeues():
    d = decide(inp([finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=[])]))
    assert d.verdict == Verdict.REQUEUE and d.exclude == ()


def test_exclusion_is_the_union_with_earlier_exclusions():
    f = finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node2"])
    d = decide(inp([f], allocation=["node1", "node2"], excluded=["node7", "node3", "node7"]))
    assert d.verdict == Verdict.EXCLUDE_AND_REQUEUE
    assert d.exclude == ("node2", "node3", "node7")


def test_excluding_an_already_excluded_node_keeps_the_list():
    f = finding(Action.EXCLUDE_NODE_AND_REQUEUE, nodes=["node2"])
    d = decide(inp([f], allocation=["node2"], excluded=["node2"]))
    assert d.exclude == ("node2",)


def test_a_requeue_finding_never_excludes_its_node():
    """A segfault names its rank's node, but the rule asks for a requeue only."""
    d = decide(inp([finding(Action.REQUEUE, nodes=["node1"])], allocation=["node1", "node2"]))
    assert d.verdict == Verdict.REQUEUE and d.exclude == ()


def test_requeue_keeps_earlier_exclusions_sorted_and_unique():
    d = decide(inp([], excluded=["node4", "node2", "node4"]))
    assert d.verdict == Verdict.REQUEUE and d.exclude == ("node2", "node4")


def test_more_severe_exclusion_wins_over_earlier_requeue():
    early = finding(Action.REQUEUE, 1, AT_EXIT)
    later = finding(Action.EXCLUDE_NODE_AND_REQUEUE, 2, AT_EXIT, nodes=["node1"])
    d = decide(inp([early, later]))
    assert d.verdict == Verdict.EXCLUDE_AND_REQUEUE and d.exclude == ("node1",)


def test_a_requeue_also_excludes_the_allocations_lemon_nodes():
    from ajr_supervisor.policy import PolicyInput, decide
    from ajr_supervisor.types import Action, Anomaly, Component, Finding, Verdict

    crash = Finding(Anomaly.CRASH, Component.UNKNOWN, Action.REQUEUE, 1.0, "exit 1")
    base = dict(findings=[crash], step_failed=True, restarts=0, max_requeues=5, crash_loop_attempts=3,
                new_checkpoint=True, allocation=("n1", "n2"), excluded=("n7",))
    d = decide(PolicyInput(**base, lemons=("n9", "n2")))
    assert d.verdict == Verdict.EXCLUDE_AND_REQUEUE and d.exclude == ("n2", "n7")
    assert d.reason == "exit 1; excluding lemon node n2 (registry)"
    assert decide(PolicyInput(**base, lemons=("n9",))).verdict == Verdict.REQUEUE
