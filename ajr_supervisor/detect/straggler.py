"""Stragglers, whole-job performance drops and the cost of excluding a slow node (pure).

Time comes from the caller (the lines' read time); nothing here reads a clock.

:class:`StragglerDetector` groups per-rank step times by node (``rank -> node``) into windows of
``window`` distinct iterations. At the end of a window each node's value is the median of its
ranks' step times in that window; a node is *slow in that window* when, against the other nodes
(its peers), it is both ``>= min_slowdown`` slower than the peers' median and more than
``k_mad`` robust deviations above it (deviation = 1.4826 * MAD of the peers, floored at
``mad_floor`` of the peers' median so that two or three identical peers do not make every
wobble an outlier). A node slow in ``consecutive`` windows in a row is reported once. Spikes of
one rank and pauses of every rank (checkpoints) do not move a median of medians.

:class:`PerfDropDetector` learns the job's throughput over ``baseline_steps`` samples after
``warmup_steps``, then reports when the rolling median of the last ``smooth`` samples stays
below ``(1 - drop_frac)`` of the baseline for ``duration_s``; it names when the drop began. A drop
ends only when the rolling median comes back within ``drop_frac / 2`` of the baseline (hysteresis:
noise around the threshold does not restart the clock).

:func:`should_exclude`: synchronous training runs at the slowest rank's pace, so a node
``slowdown_frac`` slower costs ``remaining_steps * step_time_s * slowdown_frac`` seconds over
the rest of the run (``step_time_s`` = the healthy step time). Excluding it and requeueing costs
:func:`restart_cost_s` = requeue (queue wait) + restart to the first step + the work lost since
the last checkpoint. Exclude only when the first is larger than the second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median

from ajr_supervisor.detect.progress import Progress
from ajr_supervisor.types import Action, Anomaly, Component, Finding

MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data


def _mad(values: list[float], center: float) -> float:
    return median(abs(v - center) for v in values)


@dataclass(frozen=True)
class WindowStat:
    """One node in one closed window."""

    first_iteration: int
    last_iteration: int
    node_ms: float
    peers_ms: float
    slow: bool


class StragglerDetector:
    def __init__(self, rank_to_node: dict[int, str], *, window: int = 5, consecutive: int = 3,
                 min_slowdown: float = 0.05, k_mad: float = 3.0, mad_floor: float = 0.01,
                 exclude: bool = True) -> None:
        if window < 1 or consecutive < 1:
            raise ValueError("window and consecutive must be >= 1")
        self.rank_to_node = dict(rank_to_node)
        self.window, self.consecutive = window, consecutive
        self.min_slowdown, self.k_mad, self.mad_floor = min_slowdown, k_mad, mad_floor
        self.action = Action.EXCLUDE_NODE_AND_REQUEUE if exclude else Action.REQUEUE
        self._open: dict[int, dict[str, list[float]]] = {}   # iteration -> node -> step times
        self._closed_below = -1                               # iterations <= this are closed
        self._history: dict[str, deque[WindowStat]] = {}
        self.reported: set[str] = set()
        self.windows_closed = 0                   # how many windows have been judged
        self.slowdown: dict[str, float] = {}      # reported node -> its slowdown (0.12 = 12% slower)
        self.peers_step_ms: dict[str, float] = {}  # reported node -> its peers' median step time

    def observe(self, now: float, p: Progress) -> Finding | None:
        """A progress line (with its rank) read at ``now``; returns a finding when one is due."""
        if p.rank is None or p.iteration is None or p.step_time_ms is None:
            return None
        node = self.rank_to_node.get(p.rank)
        if node is None or p.iteration <= self._closed_below:
            return None
        self._open.setdefault(p.iteration, {}).setdefault(node, []).append(p.step_time_ms)
        if len(self._open) <= self.window:
            return None
        its = sorted(self._open)[: self.window]
        return self._close(now, its)

    def _close(self, now: float, its: list[int]) -> Finding | None:
        per_node: dict[str, list[float]] = {}
        for it in its:
            for node, times in self._open.pop(it).items():
                per_node.setdefault(node, []).append(median(times))
        self._closed_below = its[-1]
        self.windows_closed += 1
        values = {n: median(v) for n, v in per_node.items()}
        found: Finding | None = None
        for node, x in values.items():
            peers = [v for n, v in values.items() if n != node]
            if not peers:
                continue
            pm = median(peers)
            spread = max(MAD_SCALE * _mad(peers, pm), self.mad_floor * pm)
            slow = x >= pm * (1 + self.min_slowdown) and x - pm > self.k_mad * spread
            hist = self._history.setdefault(node, deque(maxlen=self.consecutive))
            hist.append(WindowStat(its[0], its[-1], x, pm, slow))
            if (found is None and node not in self.reported and len(hist) == self.consecutive
                    and all(w.slow for w in hist)):
                self.reported.add(node)
                found = self._finding(now, node, list(hist))
        return found

    def still_slow(self, node: str) -> bool:
        """Whether ``node`` was slow in the last window closed."""
        hist = self._history.get(node)
        return bool(hist) and hist[-1].slow

    def _finding(self, now: float, node: str, hist: list[WindowStat]) -> Finding:
        node_ms = median(w.node_ms for w in hist)
        peers_ms = median(w.peers_ms for w in hist)
        self.slowdown[node] = node_ms / peers_ms - 1.0 if peers_ms > 0 else 0.0
        self.peers_step_ms[node] = peers_ms
        pct = 100.0 * (node_ms / peers_ms - 1.0)
        windows = ", ".join(f"{w.first_iteration}-{w.last_iteration}: {w.node_ms:.1f}/{w.peers_ms:.1f}"
                            for w in hist)
        reason = (f"node {node} is {pct:.1f}% slower than its peers: median step {node_ms:.1f} ms vs "
                  f"the peers' {peers_ms:.1f} ms in {len(hist)} consecutive windows of "
                  f"{self.window} iterations (node/peers ms: {windows})")
        return Finding(anomaly=Anomaly.STRAGGLER, component=Component.UNKNOWN, action=self.action,
                       time=now, reason=reason, nodes=(node,))


def throughput_of(p: Progress) -> tuple[str, float] | None:
    """The best throughput figure of a progress line: TFLOP/s, else it/s, else 1/step time."""
    if p.tflops is not None:
        return "tflops", p.tflops
    if p.it_per_s is not None:
        return "it_per_s", p.it_per_s
    if p.step_time_ms:
        return "it_per_s", 1000.0 / p.step_time_ms
    return None


class PerfDropDetector:
    def __init__(self, *, drop_frac: float = 0.10, duration_s: float = 600.0, warmup_steps: int = 20,
                 baseline_steps: int = 50, smooth: int = 5, rank: int | None = 0,
                 action: Action = Action.NONE) -> None:
        """``rank``: only this rank's lines count (``None``: lines of every rank); ``action``
        defaults to ``NONE`` (report only)."""
        if not 0 < drop_frac < 1:
            raise ValueError("drop_frac must be in (0, 1)")
        self.drop_frac, self.duration_s = drop_frac, duration_s
        self.warmup_steps, self.baseline_steps, self.rank, self.action = warmup_steps, baseline_steps, rank, action
        self.metric: str | None = None
        self.baseline: float | None = None
        self._seen = 0
        self._learn: list[float] = []
        self._recent: deque[float] = deque(maxlen=smooth)
        self.drop_start: tuple[float, int | None] | None = None    # (time, iteration)
        self.reported = False

    def observe(self, now: float, p: Progress) -> Finding | None:
        if self.rank is not None and p.rank not in (self.rank, None):
            return None
        tp = throughput_of(p)
        if tp is None or (self.metric is not None and tp[0] != self.metric):
            return None
        self.metric = tp[0]
        self._seen += 1
        if self._seen <= self.warmup_steps:
            return None
        if self.baseline is None:
            self._learn.append(tp[1])
            if len(self._learn) >= self.baseline_steps:
                self.baseline = median(self._learn)
            return None
        self._recent.append(tp[1])
        if len(self._recent) < (self._recent.maxlen or 1):
            return None
        current = median(self._recent)
        if self.drop_start is None:
            if current >= self.baseline * (1 - self.drop_frac):
                return None
            self.drop_start = (now, p.iteration)
        elif current >= self.baseline * (1 - self.drop_frac / 2):   # hysteresis: a real recovery
            self.drop_start = None
            return None
        start, it = self.drop_start
        if self.reported or now - start < self.duration_s:
            return None
        self.reported = True
        pct = 100.0 * (1 - current / self.baseline)
        return Finding(anomaly=Anomaly.PERF_DROP, component=Component.UNKNOWN, action=self.action,
                       time=now, rank=p.rank,
                       reason=(f"throughput {current:.3g} {self.metric} is {pct:.1f}% below the baseline "
                               f"{self.baseline:.3g} since iteration {it} ({now - start:.0f} s)"))


def restart_cost_s(requeue_s: float, restart_to_first_step_s: float, steps_since_checkpoint: float,
                   step_time_s: float) -> float:
    """What one exclude-and-requeue costs: queue wait + restart to the first step + lost work."""
    return requeue_s + restart_to_first_step_s + steps_since_checkpoint * step_time_s


def should_exclude(slowdown_frac: float, remaining_steps: float, step_time_s: float,
                   restart_cost_s: float) -> bool:
    """Exclude + requeue only when ``remaining_steps * step_time_s * slowdown_frac`` (the time the
    slow node costs over the rest of the run) exceeds ``restart_cost_s``. No slowdown, no
    remaining steps or a non-positive step time: never."""
    if slowdown_frac <= 0 or remaining_steps <= 0 or step_time_s <= 0:
        return False
    return remaining_steps * step_time_s * slowdown_frac > max(0.0, restart_cost_s)
