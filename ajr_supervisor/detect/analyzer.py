"""One pass over log lines: rank -> node marks, srun's reports, checkpoints and rule findings.

Shared by the live supervisor, ``ajr epilog`` (when the supervisor died) and ``ajr analyze``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ajr_supervisor.detect.crash import line_finding, srun_findings
from ajr_supervisor.detect.srun import (Cancelled, NodeFailure, SrunEvent, TaskEnd, parse_rank_mark,
                                        parse_srun_line)
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.types import Finding, LogLine, RuleMatch

FRAGMENT_MAX = 80   # a line this short may be one write of a longer line (see LogAnalyzer._joined)


def _is_failure(event: SrunEvent) -> bool:
    """srun reports a task that ended badly, or a node that failed."""
    if isinstance(event, NodeFailure):
        return True
    return isinstance(event, TaskEnd) and (event.signal is not None or event.exit_code not in (0, None))


@dataclass(frozen=True)
class CheckpointSeen:
    line: LogLine
    iteration: int | None


@dataclass
class LogAnalyzer:
    rules: RuleSet
    rank_nodes: dict[int, str] = field(default_factory=dict)
    rank_pids: dict[int, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    srun_events: list[tuple[float, str, SrunEvent]] = field(default_factory=list)
    checkpoints: list[CheckpointSeen] = field(default_factory=list)
    lines: int = 0
    _tails: dict[int, list[str]] = field(default_factory=dict, repr=False)

    def feed(self, line: LogLine) -> Finding | CheckpointSeen | SrunEvent | None:
        """Digest one line; returns the rule finding, checkpoint or failed-task report it produced."""
        self.lines += 1
        text = line.text
        if text.startswith("[ajr] rank "):
            mark = parse_rank_mark(text)
            if mark:
                self.rank_nodes[mark[0]] = mark[1]
                self.rank_pids[mark[0]] = mark[2]
                return None
        if text.startswith(("srun: ", "slurmstepd")) or "CANCELLED AT" in text:
            event = parse_srun_line(text)
            if event is not None:
                shown = (f"{line.rank}: " if line.rank is not None else "") + text
                self.srun_events.append((line.time, shown, event))
                return event if _is_failure(event) else None
        ckpt = self.rules.checkpoint(text)
        if ckpt is not None:
            seen = CheckpointSeen(line, ckpt.iteration)
            self.checkpoints.append(seen)
            return seen
        match = self.rules.match(text)
        if match is None:
            joined = self._joined(line)
            if joined is None:
                return None
            line, match = joined
        finding = line_finding(line, match, self.rank_nodes)
        self.findings.append(finding)
        return finding

    def _joined(self, line: LogLine) -> tuple[LogLine, RuleMatch] | None:
        """``srun -l -u`` labels every write of an unbuffered task as its own line, so a Python
        traceback's last line can arrive as ``ModuleNotFoundError`` / ``: `` / ``No module named
        'x'``. When short fragments of one rank precede this line, match them joined as well."""
        if line.rank is None:
            return None
        tail = self._tails.setdefault(line.rank, [])
        found = None
        if len(line.text) <= FRAGMENT_MAX:
            joined = line.text
            for prev in reversed(tail):
                joined = prev + joined
                match = self.rules.match(joined)
                if match is not None:
                    found = (LogLine(line.offset, joined, line.rank, line.time), match)
                    break
        if len(line.text) > FRAGMENT_MAX or found is not None:
            tail.clear()
        else:
            tail.append(line.text)
            del tail[:-2]
        return found

    def feed_all(self, lines: Iterable[LogLine]) -> "LogAnalyzer":
        for line in lines:
            self.feed(line)
        return self

    def all_findings(self) -> list[Finding]:
        """Rule findings plus what srun reported about how the tasks ended."""
        return self.findings + srun_findings(self.srun_events)

    def cancelled(self) -> Cancelled | None:
        """The cancellation that ended the step, when no other failure came first (scancel, time
        limit, Slurm's own requeue). Tasks reported ``Terminated`` (SIGTERM) before it are part of
        the same cancellation: srun often reports them before slurmstepd's CANCELLED line arrives.
        A cancellation after a task failed otherwise is srun's --kill-on-bad-exit at work."""
        for _, _, event in self.srun_events:
            if isinstance(event, Cancelled):
                return event
            if not self.terminated_only(event):
                return None
        return None

    @staticmethod
    def terminated_only(event: SrunEvent) -> bool:
        """A task that ended by SIGTERM (or a harmless report): what an outside cancel looks like."""
        return isinstance(event, TaskEnd) and (event.signal == "Terminated" or not _is_failure(event))

    def looks_cancelled(self) -> bool:
        """Every failure srun reported so far is a SIGTERM'd task (a cancel's first sign)."""
        failures = [e for _, _, e in self.srun_events if _is_failure(e)]
        return bool(failures) and all(self.terminated_only(e) for e in failures)
