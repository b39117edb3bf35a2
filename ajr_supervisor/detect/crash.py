"""Crash findings from fatal log lines and from how the training step ended."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from ajr_supervisor.detect.srun import Cancelled, NodeFailure, SrunEvent, TaskEnd
from ajr_supervisor.types import Action, Anomaly, Component, Finding, LogLine, RuleMatch, Trigger

# Deaths by these signals point at the program, not the node: requeue without excluding.
PROGRAM_SIGNALS = frozenset({"Segmentation fault", "Aborted", "Floating point exception",
                             "Illegal instruction", "Terminated", "Interrupt"})
# Exit codes that mean the command itself is wrong: retrying cannot help.
COMMAND_NOT_RUNNABLE = {126: "command not executable", 127: "command not found"}


# NCCL and torch prefix their lines with the host: "node48:1234:5678 [0] NCCL WARN ..."
HOST_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9._-]*):\d+:\d+ \[\d+\] ")


def line_finding(line: LogLine, match: RuleMatch, rank_nodes: Mapping[int, str]) -> Finding:
    """A rule matched ``line``: the finding, with the node its rank runs on when known (the [ajr]
    rank marks), else the host the line itself names (NCCL's ``host:pid:tid [dev]`` prefix)."""
    node = rank_nodes.get(line.rank) if line.rank is not None else None
    if node is None:
        m = HOST_PREFIX.match(line.text)
        node = m.group(1).split(".")[0] if m else None
    prefix = f"{line.rank}: " if line.rank is not None else ""
    return Finding(anomaly=match.anomaly, component=match.component, action=match.action,
                   time=line.time, reason=match.description, rule_id=match.rule_id,
                   line=prefix + line.text, rank=line.rank, nodes=(node,) if node else (),
                   trigger=match.trigger, offset=line.offset)


def srun_findings(events: Iterable[tuple[float, str, SrunEvent]]) -> list[Finding]:
    """Findings from srun's report of how tasks ended, in log order.

    Only the first task ends count as evidence: once one task has failed, srun (``--kill-on-bad-exit``)
    and Slurm kill the others, and those collateral deaths say nothing about their nodes.
    """
    out: list[Finding] = []
    for when, line, ev in events:
        if isinstance(ev, NodeFailure):
            out.append(Finding(Anomaly.CRASH, Component.UNKNOWN, Action.EXCLUDE_NODE_AND_REQUEUE, when,
                               f"Slurm reported a node failure on {ev.node}", rule_id="srun.node_failure",
                               line=line, nodes=(ev.node,), trigger=Trigger.AT_EXIT))
            break
        if isinstance(ev, Cancelled):
            break
        if isinstance(ev, TaskEnd):
            tasks = ",".join(map(str, ev.tasks))
            if ev.exit_code is not None:
                code = ev.exit_code
                if code in COMMAND_NOT_RUNNABLE:
                    out.append(Finding(Anomaly.CRASH, Component.APPLICATION, Action.STOP, when,
                                       f"task {tasks} on {ev.node}: {COMMAND_NOT_RUNNABLE[code]} (exit {code})",
                                       rule_id="srun.command_not_runnable", line=line, trigger=Trigger.AT_EXIT))
                elif code != 0:
                    out.append(Finding(Anomaly.CRASH, Component.APPLICATION, Action.REQUEUE, when,
                                       f"task {tasks} on {ev.node} exited with code {code}",
                                       rule_id="srun.task_exit", line=line, trigger=Trigger.AT_EXIT))
            elif ev.signal in PROGRAM_SIGNALS:
                out.append(Finding(Anomaly.CRASH, Component.APPLICATION, Action.REQUEUE, when,
                                   f"task {tasks} on {ev.node} died: {ev.signal}",
                                   rule_id="srun.task_signal", line=line, trigger=Trigger.AT_EXIT))
            else:
                out.append(Finding(Anomaly.CRASH, Component.UNKNOWN, Action.EXCLUDE_NODE_AND_REQUEUE, when,
                                   f"task {tasks} on {ev.node} was killed by signal ({ev.signal})",
                                   rule_id="srun.task_killed", line=line, nodes=(ev.node,),
                                   trigger=Trigger.AT_EXIT))
            break
    return out


def exit_finding(returncode: int, now: float) -> Finding | None:
    """The step's own exit status when nothing more specific was found."""
    if returncode == 0:
        return None
    how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return Finding(Anomaly.CRASH, Component.UNKNOWN, Action.REQUEUE, now,
                   f"the training step ended with {how}", rule_id="srun.exit", trigger=Trigger.AT_EXIT)
