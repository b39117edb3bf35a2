"""Pick, from a block of new log text, the lines any detector could care about (pure).

Following a busy log line by line in Python costs tens of microseconds a line: at 1 MB/s of NCCL
chatter and warnings that is more than 10% of a core. Nearly all of those lines can matter to no
detector, so the supervisor works per block instead: one pass over the block finds

- the lines a rule or a checkpoint pattern may match (:meth:`RuleSet.candidate_starts`: hyperscan,
  or the literal anchors of the python engine);
- the lines holding one of :data:`LITERALS` that :data:`WANTED` confirms (progress and throughput
  lines in every format :func:`~ajr_supervisor.detect.progress.parse_progress` reads, telemetry
  records, ajr's rank marks, srun's and slurmstepd's reports, "saving checkpoint" lines);
- the short lines (possible write fragments of ``srun -u``, see :meth:`LogAnalyzer._joined`)
  holding a literal some rule needs (with hyperscan, whose candidates are whole-line matches,
  a fragment would otherwise be missed), and around each short candidate the short lines just
  before and after it,

and only those become :class:`LogLine` objects. The rest of the block counts only as "a line
arrived" (the fixed hang timeout) and towards the line count. The answers are the same as feeding
every line, except for a rule match that exists only in the joined text of fragments none of which
holds a literal of the rule (the analyzer's rejoin then never sees the fragments).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from ajr_supervisor import matching
from ajr_supervisor.detect.analyzer import FRAGMENT_MAX
from ajr_supervisor.logtail import make_line
from ajr_supervisor.matching import anchor_starts
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.types import LogLine

# Lowercase: searched in the lowercased block.
LITERALS = (b"iteration", b"it/s", b"s/it", b"ajr-telemetry", b"[ajr] rank", b"srun: ", b"slurmstepd",
            b"cancelled at", b"saving")
# A line with a literal is kept only when this confirms it: a superset of what parse_progress, the
# analyzer (rank marks, srun's reports) and the watch ("saving checkpoint") act on.
WANTED = re.compile(
    rb"\[ajr-telemetry\]|\[ajr\] rank |srun: |slurmstepd|CANCELLED AT"
    rb"|\biteration\s+\d+\s*/\s*\d+|\bTraining epoch \d+, iteration \d+/|\brank \d+ iteration \d+ step_time_ms"
    rb"|\d+/\d+\s*\[[^\]\n]*?(?:it/s|s/it)"
    rb"|(?i:\bsaving (?:the |a )?(?:distributed )?checkpoint)")
# The same for hyperscan (one scan of the block, no per-line work); ``[ \t]`` for ``\s`` so that a
# match never spans lines. Matched caselessly: a superset again.
HS_WANTED = (rb"\[ajr-telemetry\]", rb"\[ajr\] rank ", rb"srun: ", rb"slurmstepd", rb"CANCELLED AT",
             rb"\biteration[ \t]+\d+[ \t]*/[ \t]*\d+", rb"\bTraining epoch \d+, iteration \d+/",
             rb"\brank \d+ iteration \d+ step_time_ms", rb"\d+/\d+[ \t]*\[[^\]\n]*(it/s|s/it)",
             rb"\bsaving (the |a )?(distributed )?checkpoint")
NEIGHBOURS = 2      # fragments joined by the analyzer: this many lines before (and after) a short one


def _line_end(buf: bytes, start: int) -> int:
    end = buf.find(b"\n", start)
    return len(buf) if end < 0 else end


def _short_neighbours(buf: bytes, start: int) -> list[int]:
    """Starts of up to NEIGHBOURS short lines right before and after the line at ``start``."""
    out: list[int] = []
    at = start
    for _ in range(NEIGHBOURS):                  # backwards
        if at == 0:
            break
        prev = buf.rfind(b"\n", 0, at - 1) + 1
        if at - 1 - prev > FRAGMENT_MAX + 8:     # + srun's "NNNN: " prefix
            break
        out.append(prev)
        at = prev
    at = start
    for _ in range(NEIGHBOURS):                  # forwards
        nxt = _line_end(buf, at) + 1
        if nxt >= len(buf) or _line_end(buf, nxt) - nxt > FRAGMENT_MAX + 8:
            break
        out.append(nxt)
        at = nxt
    return out


class _HsLines:
    """Starts of the lines where hyperscan finds one of ``expressions`` (caseless), by one scan of
    the block; compiled on first use, one scratch per thread. ``starts`` is None when hyperscan is
    not installed or rejects the expressions."""

    def __init__(self, expressions: Sequence[bytes]) -> None:
        self.expressions = list(expressions)
        self._db: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def starts(self, buf: bytes) -> set[int] | None:
        if matching._hs is None or not self.expressions:
            return None
        with self._lock:
            if self._db is None:
                self._db = matching._hs_database(self.expressions, matching._HS_BLOCK) or False
        if self._db is False:
            return None
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = matching._hs.Scratch(self._db)
        ends: list[int] = []
        self._db.scan(buf, scratch=scratch, match_event_handler=lambda _i, _f, to, _fl, _c: ends.append(to))
        rfind = buf.rfind
        return {rfind(b"\n", 0, to) + 1 for to in ends}


_WANTED_HS = _HsLines(HS_WANTED)
_FRAGMENT_HS: weakref.WeakKeyDictionary[RuleSet, _HsLines] = weakref.WeakKeyDictionary()


def wanted_starts(buf: bytes) -> set[int]:
    """Starts of the lines a non-rule detector may act on (a superset of WANTED's lines)."""
    found = _WANTED_HS.starts(buf)
    if found is not None:
        return found
    search = WANTED.search
    return {s for s in anchor_starts(buf.lower(), LITERALS) if search(buf, s, _line_end(buf, s))}


def _fragment_starts(buf: bytes, rules: RuleSet) -> set[int]:
    """With hyperscan: short lines holding one of the rules' anchor literals (one more scan)."""
    if not rules.uses_hyperscan:
        return set()                              # the python engine's candidates already are these
    lines = _FRAGMENT_HS.get(rules)
    if lines is None:
        anchors = rules.anchor_literals() or ()
        lines = _FRAGMENT_HS[rules] = _HsLines([re.escape(a.decode("ascii", "replace")).encode() for a in anchors])
    starts = lines.starts(buf) or set()
    limit = FRAGMENT_MAX + 8
    return {s for s in starts if _line_end(buf, s) - s <= limit}


def line_starts(buf: bytes) -> list[int]:
    """Start offsets of every line of ``buf``."""
    starts = [0]
    at = buf.find(b"\n")
    while 0 <= at < len(buf) - 1:
        starts.append(at + 1)
        at = buf.find(b"\n", at + 1)
    return starts


def interesting_lines(buf: bytes, offset: int, now: float, rules: RuleSet) -> list[LogLine]:
    """The lines of ``buf`` (complete lines; its first byte is at ``offset`` in the log) that some
    detector may act on, in order, as :class:`LogLine` read at ``now``."""
    if not buf:
        return []
    starts = rules.candidate_starts(buf)
    if starts is None:                           # a rule needs no literal: every line is a candidate
        chosen = line_starts(buf)
    else:
        starts |= _fragment_starts(buf, rules)
        extra = [n for s in starts if _line_end(buf, s) - s <= FRAGMENT_MAX + 8 for n in _short_neighbours(buf, s)]
        starts.update(extra)
        starts.update(wanted_starts(buf))
        chosen = sorted(starts)
    return [make_line(buf[s:_line_end(buf, s)], offset + s, now) for s in chosen]
