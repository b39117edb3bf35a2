"""Detection delays and false alarms of the progress detectors on simulated runs.

    python3 benchmarks/detectors.py [--seeds 10] [--hours 6] [--nodes 8] [--ranks-per-node 4]

Simulated runs (deterministic seeds), step 3 s: every rank reports each step with 2.5% gaussian
noise, fixed per-node differences (±1%), a 2x spike on one random rank in 2% of the steps and a
checkpoint pause on every rank every 200 steps (10x the step). Prints only figures:

- StragglerDetector: delay in steps from the moment one node turns 10/15/20% slower to the
  finding (median and p95 over seeds, and whether the right node was named); false alarms per
  healthy hour;
- PerfDropDetector (10% drop for 300 s): delay after a whole-job drop of 15/25%; false alarms per
  healthy hour;
- AdaptiveHang vs the fixed 120 s timeout: seconds from the last progress line to the alarm, and
  false alarms per healthy hour (checkpoint saves of 60 s marked by spans, and unmarked).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ajr_supervisor.detect.adaptive_hang import AdaptiveHang  # noqa: E402
from ajr_supervisor.detect.progress import Progress, SpanEvent  # noqa: E402
from ajr_supervisor.detect.straggler import PerfDropDetector, StragglerDetector  # noqa: E402

STEP_S = 3.0
CKPT_EVERY = 200


def ranks(nodes: int, per_node: int) -> dict[int, str]:
    return {r: f"node{r // per_node + 1}" for r in range(nodes * per_node)}


def run(seed: int, steps: int, r2n: dict[int, str], slow_node: str | None = None, slowdown: float = 0.0,
        slow_from: int = 0, job_drop: float = 0.0) -> Iterator[tuple[float, Progress]]:
    rng = random.Random(seed)
    bias = {n: 1 + rng.gauss(0, 0.01) for n in sorted(set(r2n.values()))}
    t = 0.0
    for it in range(1, steps + 1):
        ckpt = 10.0 if it % CKPT_EVERY == 0 else 1.0
        drop = 1 + job_drop if job_drop and it >= slow_from else 1.0
        spike = rng.randrange(len(r2n)) if rng.random() < 0.02 else None
        for rank, node in r2n.items():
            f = bias[node] * (1 + rng.gauss(0, 0.025)) * ckpt * drop
            if rank == spike:
                f *= 2
            if node == slow_node and it >= slow_from:
                f *= 1 + slowdown
            yield t, Progress(it, STEP_S * 1000 * f, None, 1 / (STEP_S * f), rank, "sim")
        t += STEP_S * ckpt * drop


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def straggler(args, r2n: dict[int, str]) -> None:
    steps = int(args.hours * 3600 / STEP_S)
    alarms = 0
    for seed in range(args.seeds):
        det = StragglerDetector(r2n)
        alarms += sum(det.observe(t, p) is not None for t, p in run(1000 + seed, steps, r2n))
    print(f"straggler: healthy {args.seeds} x {args.hours:g} h: false alarms {alarms} "
          f"({alarms / (args.seeds * args.hours):.3f} per hour)")
    for slow in (0.10, 0.15, 0.20):
        delays, right = [], 0
        for seed in range(args.seeds):
            det = StragglerDetector(r2n)
            start = 301 + seed % 7    # not always at a window's start
            for t, p in run(seed, 1000, r2n, slow_node="node2", slowdown=slow, slow_from=start):
                f = det.observe(t, p)
                if f is not None:
                    delays.append(p.iteration - start)
                    right += f.nodes == ("node2",)
                    break
        missed = args.seeds - len(delays)
        print(f"straggler: node {slow:.0%} slower: delay steps median {statistics.median(delays):g} "
              f"p95 {pct(delays, 0.95):g} max {max(delays)}; right node {right}/{args.seeds}, missed {missed}")


def perf_drop(args, r2n: dict[int, str]) -> None:
    steps = int(args.hours * 3600 / STEP_S)
    alarms = 0
    one = {0: "node1"}
    for seed in range(args.seeds):
        det = PerfDropDetector(drop_frac=0.10, duration_s=300)
        alarms += sum(det.observe(t, p) is not None for t, p in run(2000 + seed, steps, one))
    print(f"perf drop (10% for 300 s): healthy false alarms {alarms} ({alarms / (args.seeds * args.hours):.3f} per hour)")
    for drop in (0.15, 0.25):
        delays, starts = [], []
        for seed in range(args.seeds):
            det = PerfDropDetector(drop_frac=0.10, duration_s=300)
            for t, p in run(seed, 3000, one, slow_from=1001, job_drop=drop):
                if det.observe(t, p) is not None:
                    delays.append(p.iteration - 1001)
                    starts.append(det.drop_start[1] - 1001)
                    break
        print(f"perf drop: job {drop:.0%} slower: delay steps median {statistics.median(delays):g} "
              f"p95 {pct(delays, 0.95):g}; start reported at +{statistics.median(starts):g} steps (median), "
              f"found {len(delays)}/{args.seeds}")


def hang_run(seed: int, hours: float, det: AdaptiveHang, spans: bool, hang_at: int | None) -> tuple[int, float | None]:
    """Feed one rank's progress (with 60 s checkpoint saves) and poll every second; returns the
    false alarms before the hang and the delay from the last progress to the alarm."""
    rng = random.Random(seed)
    t, it, alarms = 0.0, 0, 0
    steps = int(hours * 3600 / STEP_S)

    def poll(until: float) -> None:
        nonlocal alarms
        s = det.last_activity_at
        while s < until:
            s = min(until, s + 1.0)
            if det.check(s) is not None:
                alarms += 1
                det.last_activity_at = s   # re-arm after a (false) alarm
    for it in range(1, steps + 1):
        if hang_at is not None and it == hang_at:
            last = t
            s = t
            while det.check(s) is None:
                s += 1.0
            return alarms, s - last
        nxt = t + STEP_S * (1 + rng.gauss(0, 0.03))
        poll(nxt)
        t = nxt
        det.observe(t, Progress(it, None, None, None, 0, "sim"))
        if it % CKPT_EVERY == 0:
            if spans:
                det.observe(t, SpanEvent("start", "CHECKPOINT_SAVE_SYNC", str(it)))
            poll(t + 60.0)
            t += 60.0
            if spans:
                det.observe(t, SpanEvent("end", "CHECKPOINT_SAVE_SYNC", str(it)))
    return alarms, None


def hang(args) -> None:
    kinds = {"fixed 120 s": dict(min_intervals=10**9),
             "adaptive (default: not below 120 s)": dict(),
             "adaptive opt-in (k=5, floor 30 s)": dict(opt_in=True)}
    for name, kw in kinds.items():
        delays = []
        for seed in range(args.seeds):
            det = AdaptiveHang(0.0, hang_timeout_s=120, k=5, floor_s=30, startup_grace_s=600, **kw)
            delays.append(hang_run(seed, 2, det, True, hang_at=1000 + 37 * seed)[1])
        fa = {}
        for spans in (True, False):
            total = 0
            for seed in range(args.seeds):
                det = AdaptiveHang(0.0, hang_timeout_s=120, k=5, floor_s=30, startup_grace_s=600, **kw)
                total += hang_run(3000 + seed, args.hours, det, spans, None)[0]
            fa[spans] = total / (args.seeds * args.hours)
        print(f"hang, {name}: delay after the last step median {statistics.median(delays):g} s "
              f"max {max(delays):g} s; false alarms per healthy hour with 60 s checkpoint saves: "
              f"spans marked {fa[True]:.3f}, unmarked {fa[False]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--ranks-per-node", type=int, default=4)
    args = ap.parse_args()
    r2n = ranks(args.nodes, args.ranks_per_node)
    print(f"step {STEP_S:g} s, {args.nodes} nodes x {args.ranks_per_node} ranks, {args.seeds} seeds, "
          f"healthy runs {args.hours:g} h each")
    straggler(args, r2n)
    perf_drop(args, r2n)
    hang(args)


if __name__ == "__main__":
    main()
