"""Node reputation from registry events: which nodes keep failing jobs (pure: no I/O, no clock).

**An attributed failure** of a node is counted once per (job, attempt, node), where a job is
``"cluster/job_id"``:

* an ``attribution`` event whose ``data.component`` is a hardware component (not APPLICATION or
  UNKNOWN) and whose ``data.nodes`` is non-empty: one failure for each node listed. Several
  attributions for the same attempt count once (the earliest gives the time and the component);
* a ``node_health`` event with ``data.state`` BAD for ``data.node``, when no attribution counted a
  failure for that (job, attempt, node). Its component is the first BAD check's (see
  :func:`ajr_supervisor.health.probe.component_of`), else UNKNOWN.

**Score** = sum over the node's failures of ``0.5 ** (age / half_life_s)`` with
``age = max(0, now - failure time)``: a failure counts 1 now, 1/2 after one half-life (default 7
days), 1/16 after four.

**Lemon**: at least ``lemon_min_failures`` failures *within the horizon* (the last
``LEMON_HORIZON_HALF_LIVES`` = 4 half-lives, i.e. each still weighs >= 1/16) spread over at least
``lemon_min_jobs`` different jobs. A node that failed one job's attempts again and again is not a
lemon by itself: that job may be at fault.

**drained_by_ajr** follows ``action`` events in time order: ``drain`` with ``ok`` true sets it,
``resume`` with ``ok`` true clears it; dry-run actions change nothing. The nodes of an action are
``data.nodes`` (a list), else ``data.node``, else ``data.detail`` as a comma-separated list in which
each item's last word is the node (so ``"n1,n2"`` and the epilog's ``"drained n1"`` both work).

``failures``, ``failures_by_component``, ``jobs`` and ``last_failure_at`` cover all time. Nodes
appear when they have a failure or a drain/resume action.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ajr_supervisor.health.probe import component_of
from ajr_supervisor.registry.kpi import sorted_events

NOT_HARDWARE = frozenset({"APPLICATION", "UNKNOWN"})
LEMON_HORIZON_HALF_LIVES = 4.0


@dataclass
class NodeReputation:
    node: str
    failures: int
    failures_by_component: dict[str, int]
    jobs: list[str]                   # "cluster/job_id", sorted
    last_failure_at: float | None
    score: float
    drained_by_ajr: bool
    lemon: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Failure:
    time: float
    component: str
    job: str


def _job(event: Mapping) -> str:
    return f"{event.get('cluster', '')}/{event.get('job_id', '')}"


def _attempt(event: Mapping) -> int | None:
    value = event.get("attempt")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bad_component(checks: Any) -> str:
    for check in checks if isinstance(checks, list) else []:
        if isinstance(check, dict) and check.get("state") == "BAD" and isinstance(check.get("name"), str):
            return component_of(check["name"]).value
    return "UNKNOWN"


def action_nodes(data: Mapping) -> list[str]:
    """The nodes an ``action`` event is about (see the module docstring)."""
    if isinstance(data.get("nodes"), list):
        return [n for n in data["nodes"] if isinstance(n, str) and n]
    if isinstance(data.get("node"), str) and data["node"]:
        return [data["node"]]
    detail = data.get("detail")
    if not isinstance(detail, str):
        return []
    return [item.split()[-1] for item in detail.split(",") if item.split()]


def _failures_and_drains(events: Iterable[dict]) -> tuple[dict[tuple, _Failure], dict[str, bool]]:
    attributed: dict[tuple, _Failure] = {}
    unhealthy: dict[tuple, _Failure] = {}
    drained: dict[str, bool] = {}
    for event in sorted_events(list(events)):
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        t, kind, job = float(event["time"]), event.get("type"), _job(event)
        if kind == "attribution":
            component = str(data.get("component") or "UNKNOWN").upper()
            nodes = data.get("nodes") if isinstance(data.get("nodes"), list) else []
            if component in NOT_HARDWARE:
                continue
            for node in nodes:
                if isinstance(node, str) and node:
                    attributed.setdefault((job, _attempt(event), node), _Failure(t, component, job))
        elif kind == "node_health" and data.get("state") == "BAD":
            node = data.get("node")
            if isinstance(node, str) and node:
                unhealthy.setdefault((job, _attempt(event), node), _Failure(t, _bad_component(data.get("checks")), job))
        elif kind == "action" and data.get("ok") is True and data.get("dry_run") is not True:
            if data.get("action") in ("drain", "resume"):
                for node in action_nodes(data):
                    drained[node] = data["action"] == "drain"
    failures = {**unhealthy, **attributed}
    return failures, drained


def node_reputation(events: Iterable[dict], *, now: float, half_life_s: float = 7 * 86400,
                    lemon_min_failures: int = 3, lemon_min_jobs: int = 2) -> dict[str, NodeReputation]:
    """Every node's reputation from the events of all jobs (definitions in the module docstring)."""
    if not half_life_s > 0:
        raise ValueError(f"half_life_s must be greater than 0, not {half_life_s!r}")
    failures, drained = _failures_and_drains(events)
    per_node: dict[str, list[_Failure]] = {}
    for (_, _, node), failure in failures.items():
        per_node.setdefault(node, []).append(failure)
    horizon_s = LEMON_HORIZON_HALF_LIVES * half_life_s
    reps: dict[str, NodeReputation] = {}
    for node in sorted(set(per_node) | set(drained)):
        found = per_node.get(node, [])
        by_component: dict[str, int] = {}
        for f in found:
            by_component[f.component] = by_component.get(f.component, 0) + 1
        ages = [(max(0.0, now - f.time), f) for f in found]
        recent = [f for age, f in ages if age <= horizon_s]
        reps[node] = NodeReputation(
            node=node, failures=len(found), failures_by_component=dict(sorted(by_component.items())),
            jobs=sorted({f.job for f in found}), last_failure_at=max((f.time for f in found), default=None),
            score=sum(0.5 ** (age / half_life_s) for age, _ in ages), drained_by_ajr=drained.get(node, False),
            lemon=len(recent) >= lemon_min_failures and len({f.job for f in recent}) >= lemon_min_jobs)
    return reps


def lemons(reps: Mapping[str, NodeReputation] | Iterable[NodeReputation]) -> list[str]:
    """The lemon nodes, highest score first (then by name)."""
    values = reps.values() if isinstance(reps, Mapping) else reps
    return [r.node for r in sorted(values, key=lambda r: (-r.score, r.node)) if r.lemon]
