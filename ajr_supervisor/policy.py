"""What to do about an attempt that ended (or must end): requeue, exclude and requeue, stop, nothing.

Pure: plain data in, a :class:`~ajr_supervisor.types.Decision` out. The rules, in order:

1. An attempt ended by the user or by Slurm itself (scancel, time limit, preemption) is left alone.
2. A clean exit with no fatal finding is success: nothing to do. (The supervisor treats every exit 0
   as success: when all tasks exit 0 the training finished its own way; it does not ask the policy.)
3. The primary finding is the most severe one (STOP > EXCLUDE_NODE_AND_REQUEUE > REQUEUE); among
   equals a specific one before a generic one (a traceback, an exit status), then the earliest. A fatal line that proves death (trigger ``immediate``) outranks the exit
   status; a line that only explains (``at_exit``) counts once the step has failed.
4. STOP on a deterministic application error: the next attempt would fail the same way.
5. STOP when the requeue budget is spent: Slurm's restart count >= min(system, job) limit.
6. STOP on a crash loop: ``crash_loop_attempts`` attempts in a row failed without a new checkpoint.
7. EXCLUDE_AND_REQUEUE when the evidence names nodes of this allocation; the exclusion list is the
   union with earlier exclusions (Slurm's update replaces the list). Otherwise REQUEUE.
8. With ``exclude_lemons``, a requeue also excludes the allocation's lemon nodes (the registry's
   list of nodes with repeated attributed failures across jobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ajr_supervisor.types import (ACTION_SEVERITY, Action, Anomaly, Component, Decision, Finding, Trigger,
                                 Verdict)


@dataclass(frozen=True)
class PastAttempt:
    failed: bool
    new_checkpoint: bool


@dataclass(frozen=True)
class PolicyInput:
    findings: Sequence[Finding]
    step_failed: bool                         # the step exited non-zero or was stopped for a finding
    restarts: int                             # Slurm's restart count of this attempt (0 = first run)
    max_requeues: int                         # min(system, job)
    crash_loop_attempts: int
    new_checkpoint: bool                      # this attempt saved at least one checkpoint
    previous: Sequence[PastAttempt] = ()      # earlier attempts, oldest first
    allocation: Sequence[str] = ()            # this attempt's nodes
    excluded: Sequence[str] = ()              # nodes excluded by earlier decisions
    ended_externally: str = ""                # non-empty: why Slurm or the user ended it
    lemons: Sequence[str] = ()                # the registry's lemon nodes, excluded on a requeue
    details: dict = field(default_factory=dict)


# Findings that say *that* something failed rather than *what*: any specific finding of the same
# severity explains more (a CUDA error line beats the traceback that carries it, and both beat the
# exit status).
GENERIC_RULES = frozenset({"python_traceback", "torch_elastic_child_failed", "srun.exit", "srun.task_exit",
                           "srun.task_signal", None})


def primary_finding(findings: Sequence[Finding], step_failed: bool) -> Finding | None:
    """The finding that decides: the most severe; among equals a specific one before a generic one;
    then the earliest."""
    relevant = [f for f in findings if f.trigger == Trigger.IMMEDIATE or step_failed]
    if not relevant:
        return None
    return sorted(relevant, key=lambda f: (-ACTION_SEVERITY[f.action], f.rule_id in GENERIC_RULES, f.time))[0]


def consecutive_failures_without_checkpoint(previous: Sequence[PastAttempt]) -> int:
    count = 0
    for past in reversed(previous):
        if past.failed and not past.new_checkpoint:
            count += 1
        else:
            break
    return count


def decide(inp: PolicyInput) -> Decision:
    if inp.ended_externally:
        return Decision(Verdict.NONE, f"ended by Slurm or the user ({inp.ended_externally}): not ours to retry")
    finding = primary_finding(inp.findings, inp.step_failed)
    if finding is None:
        if not inp.step_failed:
            return Decision(Verdict.NONE, "completed successfully")
        finding = Finding(Anomaly.CRASH, Component.UNKNOWN, Action.REQUEUE, 0.0,
                          "the step failed with no other evidence", trigger=Trigger.AT_EXIT)
    exclude_before = tuple(sorted(set(inp.excluded)))
    if finding.action == Action.STOP:
        return Decision(Verdict.STOP, f"deterministic error, a retry would fail the same way: {finding.reason}",
                        exclude=exclude_before, finding=finding)
    if finding.action == Action.NONE:
        return Decision(Verdict.NONE, f"nothing to do: {finding.reason}", finding=finding)
    if inp.restarts >= inp.max_requeues:
        return Decision(Verdict.STOP, f"requeue limit reached ({inp.restarts} of {inp.max_requeues} used): "
                        f"{finding.reason}", exclude=exclude_before, finding=finding)
    loop = consecutive_failures_without_checkpoint(
        [*inp.previous, PastAttempt(failed=True, new_checkpoint=inp.new_checkpoint)])
    if inp.crash_loop_attempts > 0 and loop >= inp.crash_loop_attempts:
        return Decision(Verdict.STOP, f"crash loop: {loop} attempts in a row failed without a new checkpoint "
                        f"(limit {inp.crash_loop_attempts}): {finding.reason}",
                        exclude=exclude_before, finding=finding)
    bad = [n for n in finding.nodes if n in set(inp.allocation)] if finding.action == Action.EXCLUDE_NODE_AND_REQUEUE else []
    lemons = [n for n in inp.lemons if n in set(inp.allocation) and n not in bad]
    reason = finding.reason + (f"; excluding {', '.join(bad)}" if bad else "")
    if lemons:
        reason += f"; excluding lemon node{'s' if len(lemons) > 1 else ''} {', '.join(lemons)} (registry)"
    if bad or lemons:
        return Decision(Verdict.EXCLUDE_AND_REQUEUE, reason,
                        exclude=tuple(sorted(set(inp.excluded) | set(bad) | set(lemons))), finding=finding)
    return Decision(Verdict.REQUEUE, finding.reason, exclude=exclude_before, finding=finding)
