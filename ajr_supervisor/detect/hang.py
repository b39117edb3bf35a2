"""Hang: no new log line for ``timeout_s`` (AJR's default: two minutes)."""

from __future__ import annotations

from ajr_supervisor.types import Action, Anomaly, Component, Finding


class HangDetector:
    def __init__(self, timeout_s: float, start: float) -> None:
        if timeout_s <= 0:
            raise ValueError("hang timeout must be positive")
        self.timeout_s = timeout_s
        self.last_line_at = start

    def observe(self, now: float) -> None:
        """A line arrived at ``now``."""
        self.last_line_at = max(self.last_line_at, now)

    def silence(self, now: float) -> float:
        return max(0.0, now - self.last_line_at)

    def deadline(self) -> float:
        return self.last_line_at + self.timeout_s

    def check(self, now: float) -> Finding | None:
        silent = self.silence(now)
        if silent < self.timeout_s:
            return None
        return Finding(anomaly=Anomaly.HANG, component=Component.UNKNOWN, action=Action.REQUEUE,
                       time=now, reason=f"no new log line for {silent:.0f} s (hang timeout {self.timeout_s:g} s)")
