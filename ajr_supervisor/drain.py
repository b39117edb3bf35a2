"""Admin mode: drain the nodes ajr excludes, behind a circuit breaker; resume only ajr's own drains.

Run by ``ajr epilog`` (EpilogSlurmctld, as SlurmUser: draining needs an admin). A cluster-wide
ledger (``drain_ledger``, a JSON file) records every drain ajr made. The breaker refuses a drain
when ajr already drained ``drain_max_per_hour`` nodes in the last hour, or when one more would put
more than ``drain_max_fraction`` of the partition (at least one node) in ajr's hands: a flood of
"bad nodes" usually means a bad rule or a fabric-wide problem, and a person should look (the refusal
is recorded and, once the registry exists, notified). ``resume`` touches a node only when the ledger
says ajr drained it and Slurm still shows ajr's reason.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ajr_supervisor.errors import AjrError
from ajr_supervisor.slurm import Slurm
from ajr_supervisor.state import JsonFile

DEFAULT_LEDGER = Path("/var/lib/ajr/drains.json")
REASON_PREFIX = "ajr:"
REASON_MAX = 120
HOUR_S = 3600.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    why: str


def breaker(entries: Sequence[dict], *, partition: str, partition_size: int, now: float,
            max_per_hour: int, max_fraction: float) -> Verdict:
    """May ajr drain one more node of ``partition`` now? (pure)"""
    recent = [e for e in entries if now - e["at"] < HOUR_S]
    if len(recent) >= max_per_hour:
        return Verdict(False, f"breaker: ajr drained {len(recent)} nodes in the last hour (limit {max_per_hour})")
    active = [e for e in entries if e.get("active") and e.get("partition") == partition]
    limit = max(1, math.floor(max_fraction * partition_size))
    if len(active) + 1 > limit:
        return Verdict(False, f"breaker: ajr already holds {len(active)} of {partition_size} nodes of partition "
                              f"{partition} drained (limit {limit})")
    return Verdict(True, "ok")


def drain_reason(component: str, evidence: str) -> str:
    """``ajr: GPU: <evidence>``, one line, no characters that trouble scontrol, at most 120 chars."""
    text = re.sub(r"\s+", " ", re.sub(r"[\"'=]", "", evidence)).strip()
    return f"{REASON_PREFIX} {component}: {text}"[:REASON_MAX]


class Drainer:
    def __init__(self, slurm: Slurm, ledger: str | Path | None, *, max_per_hour: int, max_fraction: float,
                 clock=time.time) -> None:
        self.slurm = slurm
        self.file = JsonFile(Path(ledger) if ledger else DEFAULT_LEDGER)
        self.max_per_hour = max_per_hour
        self.max_fraction = max_fraction
        self.clock = clock

    def entries(self) -> list[dict]:
        doc = self.file.load()
        return list(doc.get("drains", [])) if doc else []

    def drain(self, node: str, *, partition: str, job_id: str, component: str, evidence: str) -> Verdict:
        """Drain ``node`` unless the breaker says no; the ledger records either outcome."""
        size = sum(1 for r in self.slurm.sinfo() if r.partition.rstrip("*") == partition) or 1
        result: list[Verdict] = []

        def change(doc: dict) -> None:
            entries = doc.setdefault("drains", [])
            if any(e["node"] == node and e.get("active") for e in entries):
                result.append(Verdict(False, f"{node} is already drained by ajr"))
                return
            now = self.clock()
            verdict = breaker(entries, partition=partition, partition_size=size, now=now,
                              max_per_hour=self.max_per_hour, max_fraction=self.max_fraction)
            if verdict.allowed:
                reason = drain_reason(component, evidence)
                self.slurm.drain(node, reason)
                if not self.slurm.dry_run:
                    entries.append({"node": node, "partition": partition, "job_id": job_id, "at": now,
                                    "reason": reason, "active": True})
            else:
                doc.setdefault("refused", []).append({"node": node, "partition": partition, "job_id": job_id,
                                                      "at": now, "why": verdict.why})
            result.append(verdict)

        self.file.update(change, dict)
        return result[0]

    def resume(self, node: str) -> str:
        """Resume ``node`` if and only if ajr drained it and Slurm still shows ajr's reason."""
        entries = [e for e in self.entries() if e["node"] == node and e.get("active")]
        if not entries:
            raise AjrError(f"{node} was not drained by ajr", "resume it yourself with scontrol if you mean to")
        nodes = [n for n in self.slurm.show_nodes(node) if n.name == node]
        if not nodes:
            raise AjrError(f"Slurm knows no node {node}")
        if "DRAIN" not in nodes[0].flags or not nodes[0].reason.startswith(REASON_PREFIX):
            self._close(node, "no longer drained by ajr")
            return f"{node} is not drained by ajr any more (state {nodes[0].state}, reason {nodes[0].reason!r}): left as is"
        self.slurm.resume(node)
        if not self.slurm.dry_run:
            self._close(node, "resumed")
        return f"{node} resumed"

    def _close(self, node: str, how: str) -> None:
        now = self.clock()

        def change(doc: dict) -> None:
            for e in doc.get("drains", []):
                if e["node"] == node and e.get("active"):
                    e["active"], e["closed_at"], e["closed"] = False, now, how

        self.file.update(change, dict)
