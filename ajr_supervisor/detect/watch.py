"""What the supervisor makes of a running job's cadence: hangs, stragglers, performance drops (pure).

:class:`ProgressWatch` is fed every log line (``line``) and every saved checkpoint
(``checkpoint``) with the time they were read, and asked ``check(now)`` / ``deadline()`` between
lines. Nothing here reads a clock or touches the outside world.

Hangs
  *Fixed* (AJR's): no log line for ``hang_timeout_s``. While a quiet span is open (a telemetry
  ``CHECKPOINT_SAVE*`` / ``CHECKPOINT_LOAD`` / ``VALIDATION*`` span, or a ``saving checkpoint``
  line before its saved line) the silence allowed is ``hang_quiet_span_max_s`` instead: a large
  save is expected to be silent. *Adaptive* (``hang_adaptive``, opt-in per job): no progress for
  ``max(hang_adaptive_floor_s, hang_adaptive_k x p99 of recent step intervals)``
  (:class:`~ajr_supervisor.detect.adaptive_hang.AdaptiveHang`), which for a fast-stepping job is
  far sooner than the fixed timeout; before the first step ``hang_startup_grace_s`` applies.

Stragglers and performance drops
  :class:`~ajr_supervisor.detect.straggler.StragglerDetector` names a node persistently slower
  than its peers; ``straggler_action`` says what follows: ``report`` records it, ``exclude`` ends
  the attempt (exclude the node, requeue), ``auto`` ends it only while excluding pays:
  ``slowdown x step_time x remaining_steps > restart_cost_s + time since the last checkpoint``
  (:func:`~ajr_supervisor.detect.straggler.should_exclude`). The remaining steps come from the
  run's last iteration when the lines name it (Megatron ``iteration i/N``, telemetry
  ``total_iterations``), else from the job's remaining time limit divided by the step time; with
  neither the run is taken as long (exclude). ``auto`` looks again at every checkpoint and every
  window while the node stays slow, so a straggler found just before a save is excluded just
  after it, when the restart loses the least.
"""

from __future__ import annotations

import re
from typing import Callable

from ajr_supervisor.config import Config
from ajr_supervisor.detect.adaptive_hang import AdaptiveHang
from ajr_supervisor.detect.hang import HangDetector
from ajr_supervisor.detect.progress import Progress, SpanEvent, parse_progress
from ajr_supervisor.detect.straggler import PerfDropDetector, StragglerDetector, should_exclude
from ajr_supervisor.types import Finding

SAVING = re.compile(r"\bsaving (?:the |a )?(?:distributed )?checkpoint", re.IGNORECASE)
UNBOUNDED_S = float("inf")


class ProgressWatch:
    def __init__(self, config: Config, start: float, *, hang_timeout_s: float,
                 remaining_s: Callable[[], float | None] = lambda: None,
                 restart_cost_s: float | None = None) -> None:
        self.config = config
        self.start = start
        self.hang = HangDetector(hang_timeout_s, start)
        self.adaptive = AdaptiveHang(start, hang_timeout_s=hang_timeout_s, k=config.hang_adaptive_k,
                                     floor_s=config.hang_adaptive_floor_s,
                                     startup_grace_s=config.hang_startup_grace_s,
                                     max_span_s=config.hang_quiet_span_max_s, opt_in=config.hang_adaptive)
        self.straggler = StragglerDetector({}, exclude=True)
        self.perf_drop = PerfDropDetector(drop_frac=config.perf_drop_frac, duration_s=config.perf_drop_duration_s)
        self.remaining_s = remaining_s
        self.restart_cost_s = config.restart_cost_s if restart_cost_s is None else restart_cost_s
        self.findings: list[Finding] = []          # stragglers and drops, recorded with the attempt
        self.pending: list[Finding] = []           # auto: stragglers not (yet) worth a restart
        self.first_progress_at: float | None = None
        self.last_checkpoint_at: float | None = None
        self.iteration: int | None = None
        self.total: int | None = None
        self.note = ""                             # the last cost reckoning of auto, for the log

    # --- observations -------------------------------------------------------------------------
    def heard(self, now: float) -> None:
        """Any log line was read at ``now`` (the fixed hang timeout restarts)."""
        self.hang.observe(now)

    def line(self, now: float, text: str, rank: int | None, rank_nodes: dict[int, str]) -> Finding | None:
        """A log line that no rule claimed; returns a straggler finding that should end the attempt."""
        parsed = parse_progress(text, rank)
        if isinstance(parsed, SpanEvent):
            self.adaptive.observe_span(now, parsed)
            return None
        if parsed is None:
            if SAVING.search(text):
                self.adaptive.observe_checkpoint(now, saving=True)
            return None
        return self._progress(now, parsed, rank_nodes)

    def checkpoint(self, now: float) -> Finding | None:
        """A checkpoint was saved (a checkpoint pattern matched); may release a pending straggler."""
        self.adaptive.observe_checkpoint(now, saving=False)
        self.last_checkpoint_at = now
        return self._reconsider(now)

    def _progress(self, now: float, p: Progress, rank_nodes: dict[int, str]) -> Finding | None:
        if self.first_progress_at is None:
            self.first_progress_at = now
        self.adaptive.observe_progress(now, p)
        if p.iteration is not None:
            self.iteration = max(self.iteration or 0, p.iteration)
        if p.total:
            self.total = p.total
        self.straggler.rank_to_node.update(rank_nodes)
        ended = None
        windows = self.straggler.windows_closed
        found = self.straggler.observe(now, p)
        if found is not None:
            self.findings.append(found)
            if self.config.straggler_action == "exclude":
                ended = found
            elif self.config.straggler_action == "auto":
                self.pending.append(found)
        drop = self.perf_drop.observe(now, p)
        if drop is not None:
            self.findings.append(drop)
        if ended is None and self.straggler.windows_closed != windows:   # a window closed: look again
            ended = self._reconsider(now)
        return ended

    # --- the straggler cost model ---------------------------------------------------------------
    def remaining_steps(self, step_time_s: float) -> float:
        """Steps left in the run: from its last iteration, else from the time limit; else unbounded."""
        steps = []
        if self.total is not None and self.iteration is not None:
            steps.append(max(0, self.total - self.iteration))
        left = self.remaining_s()
        if left is not None and step_time_s > 0:
            steps.append(max(0.0, left) / step_time_s)
        return min(steps) if steps else UNBOUNDED_S

    def worth_excluding(self, node: str, now: float) -> bool:
        slowdown = self.straggler.slowdown.get(node, 0.0)
        step_s = self.straggler.peers_step_ms.get(node, 0.0) / 1000.0
        since = now - (self.last_checkpoint_at if self.last_checkpoint_at is not None else self.start)
        cost = self.restart_cost_s + max(0.0, since)
        remaining = self.remaining_steps(step_s)
        verdict = should_exclude(slowdown, remaining, step_s, cost)
        self.note = (f"{node}: {slowdown:.1%} slower x {step_s:.3g} s/step x "
                     f"{remaining:.0f} steps left = {slowdown * step_s * remaining:.3g} s "
                     f"{'>' if verdict else '<='} restart cost {cost:.3g} s")
        return verdict

    def _reconsider(self, now: float) -> Finding | None:
        for f in list(self.pending):
            node = f.nodes[0]
            if not self.straggler.still_slow(node):
                continue
            if self.worth_excluding(node, now):
                self.pending.remove(f)
                return f
        return None

    # --- hang verdicts ------------------------------------------------------------------------
    def _quiet_span(self) -> str | None:
        """An open quiet span that began after the last step (an async save with training going on
        around it is not a reason to be silent), by name."""
        last = self.adaptive.last_progress_at
        for key, opened in self.adaptive.open_spans.items():
            if last is None or opened >= last:
                return key.split("#")[0]
        return None

    def _fixed_deadline(self) -> float:
        due = self.hang.deadline()
        if self._quiet_span() is not None:
            due = max(due, self.hang.last_line_at + self.config.hang_quiet_span_max_s)
        return due

    def deadline(self) -> float:
        due = self._fixed_deadline()
        if self.config.hang_adaptive:
            due = min(due, self.adaptive.deadline())
        return due

    def check(self, now: float) -> Finding | None:
        """A hang finding when one is due (the adaptive one first: it is the sooner)."""
        if self.config.hang_adaptive:
            found = self.adaptive.check(now)
            if found is not None:
                return found
        if now < self._fixed_deadline():
            return None
        found = self.hang.check(now)
        span = self._quiet_span()
        if found is not None and span is not None:
            return Finding(found.anomaly, found.component, found.action, found.time,
                           f"{found.reason}; a {span} span open for longer than "
                           f"{self.config.hang_quiet_span_max_s:g} s")
        return found
