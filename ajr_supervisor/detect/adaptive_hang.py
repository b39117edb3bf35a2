"""Hang by the job's own step cadence (pure, injected clock).

:class:`AdaptiveHang` learns the intervals between progress reports (an interval ends when the
highest iteration seen advances; more ranks reporting the same iteration do not shorten it) and
alarms after ``max(floor_s, k * p99)`` of silence, p99 over the last ``history`` intervals, once
``min_intervals`` are known. Without ``opt_in`` the threshold is never below the fixed
``hang_timeout_s`` (the adaptive part can only make a slow-stepping job wait longer); with
``opt_in`` a fast job is called hung sooner.

- Before the first progress report the silence allowed is ``startup_grace_s`` from ``start``.
- Inside an open checkpoint save (span ``CHECKPOINT_SAVE*`` or a ``saving`` line until the
  ``saved`` line), checkpoint load (``CHECKPOINT_LOAD``) or validation loop (span
  ``VALIDATION*``) no alarm comes before the span has
  been open ``max_span_s``; the end of a span counts as activity.
"""

from __future__ import annotations

from collections import deque

from ajr_supervisor.detect.progress import Progress, SpanEvent
from ajr_supervisor.types import Action, Anomaly, Component, Finding

QUIET_SPANS = ("CHECKPOINT_SAVE", "CHECKPOINT_LOAD", "VALIDATION")


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank) of a non-empty list."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(0.99 * len(s) + 0.999999) - 1))]


class AdaptiveHang:
    def __init__(self, start: float, *, hang_timeout_s: float = 120.0, k: float = 5.0,
                 floor_s: float = 30.0, startup_grace_s: float = 1800.0, max_span_s: float = 3600.0,
                 min_intervals: int = 20, history: int = 500, opt_in: bool = False) -> None:
        if hang_timeout_s <= 0 or floor_s <= 0 or k <= 0:
            raise ValueError("hang_timeout_s, floor_s and k must be positive")
        self.start = start
        self.hang_timeout_s, self.k, self.floor_s = hang_timeout_s, k, floor_s
        self.startup_grace_s, self.max_span_s = startup_grace_s, max_span_s
        self.min_intervals, self.opt_in = min_intervals, opt_in
        self.intervals: deque[float] = deque(maxlen=history)
        self.last_progress_at: float | None = None
        self.last_activity_at = start
        self.max_iteration: int | None = None
        self.open_spans: dict[str, float] = {}   # span key -> opened at

    # --- observations -------------------------------------------------------------------------
    def observe(self, now: float, event: Progress | SpanEvent) -> None:
        if isinstance(event, SpanEvent):
            self.observe_span(now, event)
        else:
            self.observe_progress(now, event)

    def observe_progress(self, now: float, p: Progress) -> None:
        advanced = p.iteration is None or self.max_iteration is None or p.iteration > self.max_iteration
        if not advanced:
            return
        if p.iteration is not None:
            self.max_iteration = p.iteration
        if self.last_progress_at is not None and now >= self.last_progress_at:
            self.intervals.append(now - self.last_progress_at)
        self.last_progress_at = now
        self.last_activity_at = max(self.last_activity_at, now)

    def observe_span(self, now: float, ev: SpanEvent) -> None:
        if not ev.name.upper().startswith(QUIET_SPANS):
            return
        key = f"{ev.name}#{ev.span_id}"
        if ev.kind == "start":
            self.open_spans.setdefault(key, now)
        else:
            opened = self.open_spans.pop(key, None)
            if opened is None:  # an end without its start: close any span of that name
                for k in [k for k in self.open_spans if k.startswith(ev.name + "#")][:1]:
                    self.open_spans.pop(k)
            self._resume(now)

    def observe_checkpoint(self, now: float, saving: bool) -> None:
        """A checkpoint text line: ``saving=True`` for "saving ...", ``False`` for "saved ..."."""
        if saving:
            self.open_spans.setdefault("CHECKPOINT_SAVE#text", now)
        else:
            self.open_spans.pop("CHECKPOINT_SAVE#text", None)
            self._resume(now)

    def _resume(self, now: float) -> None:
        self.last_activity_at = max(self.last_activity_at, now)
        if self.last_progress_at is not None:  # the span's length is not a step interval
            self.last_progress_at = max(self.last_progress_at, now)

    # --- verdict ------------------------------------------------------------------------------
    def threshold_s(self) -> float:
        """Silence allowed after the last progress (or span end) at this point of the run."""
        if self.last_progress_at is None:
            return self.startup_grace_s
        if len(self.intervals) < self.min_intervals:
            return self.hang_timeout_s
        adaptive = max(self.floor_s, self.k * p99(list(self.intervals)))
        return adaptive if self.opt_in else max(adaptive, self.hang_timeout_s)

    def deadline(self) -> float:
        """When :meth:`check` will first return a finding unless something is observed."""
        due = self.last_activity_at + self.threshold_s()
        if self.open_spans:
            due = max(due, min(self.open_spans.values()) + self.max_span_s)
        return due

    def check(self, now: float) -> Finding | None:
        if now < self.deadline():
            return None
        silent = now - self.last_activity_at
        what = "no progress" if self.last_progress_at is not None else "no first step"
        basis = (f"startup grace {self.startup_grace_s:g} s" if self.last_progress_at is None
                 else f"threshold {self.threshold_s():.0f} s from {len(self.intervals)} step intervals")
        if self.open_spans:
            basis += f"; a span open longer than {self.max_span_s:g} s"
        return Finding(anomaly=Anomaly.HANG, component=Component.UNKNOWN, action=Action.REQUEUE,
                       time=now, reason=f"{what} for {silent:.0f} s ({basis})")
