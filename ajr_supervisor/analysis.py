"""Offline analysis of a log: the engine of ``ajr analyze`` and of the attribution benchmark (pure)."""

from __future__ import annotations

from typing import Iterable, Sequence

from ajr_supervisor.attribute import Attribution, HealthFault, attribute
from ajr_supervisor.detect.analyzer import LogAnalyzer
from ajr_supervisor.logtail import split_rank
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.types import LogLine


def analyze_lines(lines: Iterable[str], rules: RuleSet, health: Sequence[HealthFault] = ()) -> Attribution:
    """Attribute what a log shows. Line numbers (1-based) stand in for offsets and times, so the
    evidence points at lines and "first" means first in the file."""
    analyzer = LogAnalyzer(rules)
    for number, raw in enumerate(lines, start=1):
        rank, text = split_rank(raw.rstrip("\r\n"))
        analyzer.feed(LogLine(offset=number, text=text, rank=rank, time=float(number)))
    findings = analyzer.all_findings()
    return attribute(findings, step_failed=bool(findings) or bool(health), health=health,
                     rank_nodes=analyzer.rank_nodes, require_node=False)


def xid_faults(events: Iterable, node: str) -> list[HealthFault]:
    """Kernel Xid events of one node whose catalog class says exclude -> health faults of that node."""
    from ajr_supervisor.health.xid import classify_event

    faults = []
    for event in events:
        cls = classify_event(event)
        if cls.exclude:
            faults.append(HealthFault(node, f"{event.kind.lower()}:{event.pci or 'unknown'}", cls.component,
                                      f"Xid {event.xid} ({cls.mnemonic}): {event.message}"[:200]))
    return faults
