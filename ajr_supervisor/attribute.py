"""Attribution (pure): log findings + node health -> component, nodes, ranks, confidence, evidence.

The order of evidence, strongest first:

1. **A node's own health says BAD** (NVML, kernel Xid, host checks): that node is to blame, its
   component is the failing check's, and it is excluded. Health UNKNOWN never blames anybody.
2. **A deterministic error** (a STOP rule: a code bug, the job's own memory limit, a full disk): no
   node is blamed; the component is the rule's.
3. **The most severe log finding**; its node comes from the rank prefix of the line (``[ajr]`` rank
   marks map ranks to nodes). A finding that names no node of the allocation excludes nobody.
4. **An NCCL (collective) timeout is never a root cause on its own.** Every rank that waited reports
   it; the culprit is elsewhere: the node whose own error came first, else the rank that did *not*
   report the timeout (it never reached the collective). Such an outlier is blamed (``nodes``) but only
   excluded with health evidence.

``confidence`` says how sure: 0.95 health and log agree on a node, 0.9 health alone or a deterministic
error, 0.8 a specific rule on a known node, 0.6 an NCCL-timeout outlier, 0.4 a bare exit status,
0.3 a hang with no other evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ajr_supervisor.policy import primary_finding
from ajr_supervisor.types import ACTION_SEVERITY, Action, Anomaly, Component, Finding

TIMEOUT_RULES = frozenset({"nccl_watchdog_timeout"})


@dataclass(frozen=True)
class HealthFault:
    """One BAD health check of one node (from ``health.NodeHealth``), reduced to what blame needs."""

    node: str
    check: str
    component: Component
    detail: str


@dataclass(frozen=True)
class Attribution:
    anomaly: Anomaly | None
    component: Component
    action: Action
    nodes: tuple[str, ...]
    ranks: tuple[int, ...]
    confidence: float
    reason: str
    evidence: tuple[dict, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"anomaly": self.anomaly.value if self.anomaly else "NONE", "component": self.component.value,
                "action": self.action.value, "nodes": list(self.nodes), "ranks": list(self.ranks),
                "evidence": list(self.evidence), "confidence": round(self.confidence, 2), "reason": self.reason}


NONE = Attribution(None, Component.UNKNOWN, Action.NONE, (), (), 1.0, "nothing wrong found")


def _evidence(f: Finding) -> dict:
    return {"line": f.offset, "text": f.line or f.reason, "rule": f.rule_id}


def attribute(findings: Sequence[Finding], *, step_failed: bool = True,
              health: Sequence[HealthFault] = (), rank_nodes: Mapping[int, str] | None = None,
              allocation: Sequence[str] = (), require_node: bool = True) -> Attribution:
    """Blame a component and nodes for what went wrong (see the module docstring).

    ``require_node``: an exclusion needs a node to exclude (live decisions). Offline (`ajr analyze`
    on an excerpt) the rule's action is reported even when the excerpt does not say which node."""
    rank_nodes = dict(rank_nodes or {})
    in_alloc = (lambda n: n in set(allocation)) if allocation else (lambda n: True)
    faults = [h for h in health if in_alloc(h.node)]
    primary = primary_finding(findings, step_failed)
    if primary is None and not faults:
        return NONE

    if primary is not None and primary.action == Action.STOP:
        return Attribution(primary.anomaly, primary.component, Action.STOP, (), _ranks([primary]), 0.9,
                           f"deterministic error, no node to blame: {primary.reason}", (_evidence(primary),))

    if faults:
        bad_nodes = tuple(sorted({h.node for h in faults}))
        component = _majority([h.component for h in faults])
        log_agrees = primary is not None and set(primary.nodes) & set(bad_nodes)
        evidence = tuple({"line": None, "text": f"{h.node}: {h.check}: {h.detail}", "rule": f"health.{h.check}"}
                         for h in faults)
        if primary is not None:
            evidence += (_evidence(primary),)
        return Attribution(primary.anomaly if primary else Anomaly.CRASH, component, Action.EXCLUDE_NODE_AND_REQUEUE,
                           bad_nodes, _ranks([primary]) if primary else (), 0.95 if log_agrees else 0.9,
                           f"node health is BAD on {', '.join(bad_nodes)} ({faults[0].check}: {faults[0].detail})",
                           evidence)

    assert primary is not None
    if primary.rule_id in TIMEOUT_RULES:
        return _timeout_outlier(primary, findings, rank_nodes, in_alloc)

    nodes = tuple(n for n in primary.nodes if in_alloc(n))
    action = primary.action
    if action == Action.EXCLUDE_NODE_AND_REQUEUE and not nodes and require_node:
        action = Action.REQUEUE
    if primary.rule_id in ("srun.exit", None) and not primary.line:
        confidence = 0.3 if primary.anomaly == Anomaly.HANG else 0.4
    else:
        confidence = 0.8 if nodes else 0.7
    return Attribution(primary.anomaly, primary.component, action, nodes, _ranks([primary]), confidence,
                       primary.reason, (_evidence(primary),))


def _timeout_outlier(timeout: Finding, findings: Sequence[Finding], rank_nodes: Mapping[int, str],
                     in_alloc) -> Attribution:
    others = [f for f in findings if f.rule_id not in TIMEOUT_RULES and f.rule_id != "python_traceback"]
    if others:   # a real error on some rank: the earliest, most severe one is the cause
        cause = sorted(others, key=lambda f: (f.time, -ACTION_SEVERITY[f.action]))[0]
        nodes = tuple(n for n in cause.nodes if in_alloc(n))
        action = cause.action if nodes or cause.action != Action.EXCLUDE_NODE_AND_REQUEUE else Action.REQUEUE
        return Attribution(cause.anomaly, cause.component, action, nodes, _ranks([cause]), 0.8,
                           f"{cause.reason} (the NCCL timeouts on other ranks follow from it)",
                           (_evidence(cause), _evidence(timeout)))
    waited = {f.rank for f in findings if f.rule_id in TIMEOUT_RULES and f.rank is not None}
    known = set(rank_nodes)
    missing = sorted(known - waited) if known else []
    if missing and len(missing) < len(known):
        nodes = tuple(sorted({rank_nodes[r] for r in missing if in_alloc(rank_nodes[r])}))
        return Attribution(timeout.anomaly, Component.NETWORK if len(nodes) != 1 else Component.UNKNOWN,
                           Action.REQUEUE, nodes, tuple(missing), 0.6,
                           f"NCCL timeout on ranks {_span(sorted(waited))}; rank(s) {_span(missing)} never reached "
                           f"the collective (on {', '.join(nodes)}): blamed, not excluded without health evidence",
                           (_evidence(timeout),))
    return Attribution(timeout.anomaly, Component.NETWORK, Action.REQUEUE, (), _ranks([timeout]), 0.4,
                       f"NCCL timeout with no outlier found: {timeout.reason}", (_evidence(timeout),))


def _ranks(fs: Sequence[Finding | None]) -> tuple[int, ...]:
    return tuple(sorted({f.rank for f in fs if f is not None and f.rank is not None}))


def _majority(components: Sequence[Component]) -> Component:
    counts: dict[Component, int] = {}
    for c in components:
        counts[c] = counts.get(c, 0) + 1
    return max(counts, key=lambda c: (counts[c], c.value))


def _span(ranks: Sequence[int]) -> str:
    return ",".join(map(str, ranks)) if len(ranks) <= 8 else f"{ranks[0]}..{ranks[-1]} ({len(ranks)} ranks)"
