"""srun's and slurmstepd's own lines in the unified log: which task ended how, node failures,
cancellations. Parsed from real output captured on the lab (tests/data/srun/)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ajr_supervisor.slurm import expand_hostlist

# srun: error: node2: task 1: Killed
# srun: error: node1: tasks 0-1: Exited with exit code 3
_TASK = re.compile(r"^srun: error: (?P<node>[^:\s]+): tasks? (?P<tasks>[\d,\-]+): (?P<how>.+?)\s*$")
_EXIT = re.compile(r"^Exited with exit code (\d+)$")
# srun: error: Node failure on node2
_NODE_FAIL = re.compile(r"^srun: error: Node failure on (?P<node>\S+)")
# slurmstepd-node1: error: *** STEP 1.0 ON node1 CANCELLED AT 2026-11-25T09:16:40 DUE TO JOB REQUEUE ***
# slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-11-25T09:16:40 ***      (scancel)
_CANCEL = re.compile(r"\*\*\* (?:STEP|JOB) \S+ ON (?P<node>\S+) CANCELLED AT \S+(?: DUE TO (?P<why>[A-Z ]+?))? \*\*\*")


@dataclass(frozen=True)
class TaskEnd:
    node: str
    tasks: tuple[int, ...]
    exit_code: int | None      # set when the task exited
    signal: str | None         # srun's words when it died by signal: Killed, Segmentation fault, ...


@dataclass(frozen=True)
class NodeFailure:
    node: str


@dataclass(frozen=True)
class Cancelled:
    node: str
    why: str                   # "" for scancel; JOB REQUEUE, TIME LIMIT, NODE FAILURE, PREEMPTION...


SrunEvent = TaskEnd | NodeFailure | Cancelled


def _tasks(spec: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(out)


def parse_srun_line(text: str) -> SrunEvent | None:
    """One log line (rank prefix removed) -> what srun/slurmstepd reported, or None."""
    if "srun: error:" in text:
        m = _TASK.match(text)
        if m:
            how = m.group("how")
            code = _EXIT.match(how)
            return TaskEnd(node=m.group("node"), tasks=_tasks(m.group("tasks")),
                           exit_code=int(code.group(1)) if code else None,
                           signal=None if code else how)
        m = _NODE_FAIL.match(text)
        if m:
            return NodeFailure(node=m.group("node"))
    if "CANCELLED AT" in text:
        m = _CANCEL.search(text)
        if m:
            return Cancelled(node=m.group("node"), why=(m.group("why") or "").strip())
    return None


# `ajr run` starts every task through a tiny shell that prints this line first, so the log itself
# says which node each rank runs on: "[ajr] rank 3 node node2 pid 4242".
RANK_MARK = re.compile(r"^\[ajr\] rank (?P<rank>\d+) node (?P<node>\S+) pid (?P<pid>\d+)$")
TASK_WRAPPER = 'echo "[ajr] rank $SLURM_PROCID node $SLURMD_NODENAME pid $$"; exec "$@"'


def parse_rank_mark(text: str) -> tuple[int, str, int] | None:
    m = RANK_MARK.match(text)
    return (int(m.group("rank")), m.group("node"), int(m.group("pid"))) if m else None


def nodes_of(expr: str) -> list[str]:
    """A Slurm node list as names; empty for ``(null)``, nothing, or a list that does not parse."""
    if not expr or expr == "(null)":
        return []
    try:
        return expand_hostlist(expr)
    except ValueError:
        return []
