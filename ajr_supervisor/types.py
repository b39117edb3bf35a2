"""The plain data that flows through the supervisor: lines, rule matches, findings, decisions.

Frozen dataclasses and string enums only; no behaviour that touches the outside world. Enum values
are the strings that appear in rule files, the state file and the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Anomaly(str, Enum):
    CRASH = "CRASH"
    HANG = "HANG"
    STRAGGLER = "STRAGGLER"
    PERF_DROP = "PERF_DROP"


class Component(str, Enum):
    GPU = "GPU"
    NODE_MEMORY = "NODE_MEMORY"
    NETWORK = "NETWORK"
    STORAGE = "STORAGE"
    APPLICATION = "APPLICATION"
    UNKNOWN = "UNKNOWN"


class Action(str, Enum):
    """What a rule (or the policy) asks for. Ordered by severity in :data:`ACTION_SEVERITY`."""

    NONE = "NONE"
    REQUEUE = "REQUEUE"
    EXCLUDE_NODE_AND_REQUEUE = "EXCLUDE_NODE_AND_REQUEUE"
    STOP = "STOP"


ACTION_SEVERITY = {Action.NONE: 0, Action.REQUEUE: 1, Action.EXCLUDE_NODE_AND_REQUEUE: 2, Action.STOP: 3}


class Trigger(str, Enum):
    """When a matching line is acted on."""

    IMMEDIATE = "immediate"  # the line itself means the job is dead: act now (after a short settle)
    AT_EXIT = "at_exit"      # the line explains a failure but does not prove one (a printed traceback)


@dataclass(frozen=True)
class LogLine:
    """One line of the unified log. ``rank`` comes from srun's ``N: `` prefix (``-l``)."""

    offset: int          # byte offset of the line's start in the log file
    text: str            # the line without the rank prefix and without the newline
    rank: int | None
    time: float          # when the supervisor read it (injected clock)


@dataclass(frozen=True)
class RuleMatch:
    rule_id: str
    anomaly: Anomaly
    component: Component
    action: Action
    trigger: Trigger
    description: str


@dataclass(frozen=True)
class CheckpointMatch:
    iteration: int | None
    pattern: str


@dataclass(frozen=True)
class Finding:
    """Something a detector concluded, with the evidence that made it conclude so."""

    anomaly: Anomaly
    component: Component
    action: Action
    time: float
    reason: str                       # one human sentence
    rule_id: str | None = None
    line: str | None = None           # the log line (rank prefix included) that decided it
    rank: int | None = None
    nodes: tuple[str, ...] = ()       # nodes the evidence points at (to exclude when the action says so)
    trigger: Trigger = Trigger.IMMEDIATE
    offset: int | None = None         # where the line is: byte offset in a log (or line number in `ajr analyze`)


class Verdict(str, Enum):
    NONE = "NONE"                       # nothing to do (success, user cancel, still healthy)
    REQUEUE = "REQUEUE"
    EXCLUDE_AND_REQUEUE = "EXCLUDE_AND_REQUEUE"
    STOP = "STOP"                       # give up: limit reached, crash loop, deterministic error


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    exclude: tuple[str, ...] = ()       # the full ExcNodeList to set (union with earlier exclusions)
    finding: Finding | None = None
    details: dict = field(default_factory=dict)
