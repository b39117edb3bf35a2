"""Straggler and perf-drop detection on simulated runs (deterministic seeds), and the cost model."""

from __future__ import annotations

import random

import pytest

from ajr_supervisor.detect.progress import Progress
from ajr_supervisor.detect.straggler import (PerfDropDetector, StragglerDetector, restart_cost_s,
                                             should_exclude)
from ajr_supervisor.types import Action, Anomaly

NODES, RANKS_PER_NODE, STEP_MS = 8, 4, 3000.0
RANK_TO_NODE = {r: f"node{r // RANKS_PER_NODE + 1}" for r in range(NODES * RANKS_PER_NODE)}


def simulate(seed: int, steps: int, slow_node: str | None = None, slowdown: float = 0.10,
             slow_from: int = 0):
    """Yield (time, Progress) for every rank and step: 2.5% gaussian noise per rank and step,
    small fixed per-node differences (±1%), a rare 2x spike on one random rank, and a 10x
    checkpoint pause on every rank every 200 steps."""
    rng = random.Random(seed)
    bias = {n: 1 + rng.gauss(0, 0.01) for n in set(RANK_TO_NODE.values())}
    t = 0.0
    for it in range(1, steps + 1):
        ckpt = 10.0 if it % 200 == 0 else 1.0
        spike = rng.randrange(len(RANK_TO_NODE)) if rng.random() < 0.02 else None
        for rank, node in RANK_TO_NODE.items():
            f = bias[node] * (1 + rng.gauss(0, 0.025)) * ckpt
            if rank == spike:
                f *= 2
            if node == slow_node and it >= slow_from:
                f *= 1 + slowdown
            yield t, Progress(it, STEP_MS * f, None, None, rank, "ajr-example")
        t += STEP_MS / 1000 * ckpt


def first_finding(det, events):
    for now, p in events:
        f = det.observe(now, p)
        if f is not None:
            return f, p.iteration
    return None, None


@pytest.mark.parametrize("seed", range(7))
def test_ten_percent_slower_node_flagged_within_20_steps(seed):
    det = StragglerDetector(RANK_TO_NODE)
    start = 101 + seed    # the slowdown begins anywhere in a window
    f, it = first_finding(det, simulate(seed, 400, slow_node="node3", slow_from=start))
    assert f is not None and f.nodes == ("node3",)
    assert it - start <= 20
    assert f.anomaly is Anomaly.STRAGGLER and f.action is Action.EXCLUDE_NODE_AND_REQUEUE
    assert "node3" in f.reason and "slower than its peers" in f.reason


@pytest.mark.parametrize("seed", range(5))
def test_no_false_alarm_on_healthy_runs(seed):
    det = StragglerDetector(RANK_TO_NODE)
    f, _ = first_finding(det, simulate(100 + seed, 3000))
    assert f is None


def test_policy_flag_requeue_and_reported_once():
    det = StragglerDetector(RANK_TO_NODE, exclude=False)
    findings = [f for now, p in simulate(7, 300, slow_node="node1", slowdown=0.2)
                if (f := det.observe(now, p)) is not None]
    assert len(findings) == 1 and findings[0].action is Action.REQUEUE


def test_two_nodes_uses_mad_floor():
    r2n = {0: "a", 1: "a", 2: "b", 3: "b"}
    det = StragglerDetector(r2n)
    found = None
    for it in range(1, 40):
        for r in r2n:
            found = found or det.observe(float(it), Progress(it, 110.0 if r >= 2 else 100.0, None, None, r, "x"))
    assert found is not None and found.nodes == ("b",)


def test_ignores_unknown_ranks_and_incomplete_lines():
    det = StragglerDetector({0: "a"})
    assert det.observe(0.0, Progress(1, 100.0, None, None, 9, "x")) is None
    assert det.observe(0.0, Progress(None, 100.0, None, None, 0, "x")) is None
    assert det.observe(0.0, Progress(1, None, None, None, 0, "x")) is None


def tput(it: int, tflops: float, rank: int = 0) -> Progress:
    return Progress(it, None, tflops, None, rank, "megatron")


def test_perf_drop_reports_start():
    rng = random.Random(1)
    det = PerfDropDetector(drop_frac=0.10, duration_s=300, warmup_steps=10, baseline_steps=50)
    found = None
    for it in range(1, 1000):
        value = 400.0 * (1 + rng.gauss(0, 0.02)) * (0.8 if it >= 500 else 1.0)
        if it % 100 == 0:
            value /= 10   # checkpoint step
        found = det.observe(it * 3.0, tput(it, value))
        if found:
            break
    assert found is not None and found.anomaly is Anomaly.PERF_DROP
    assert 500 <= det.drop_start[1] <= 505
    assert "since iteration 50" in found.reason
    assert 300 <= found.time - det.drop_start[0] <= 303


def test_perf_drop_healthy_and_short_dip():
    rng = random.Random(2)
    det = PerfDropDetector(drop_frac=0.10, duration_s=300, warmup_steps=10, baseline_steps=50)
    for it in range(1, 5000):
        dip = 0.7 if 1000 <= it < 1050 else 1.0   # 150 s dip: shorter than duration_s
        assert det.observe(it * 3.0, tput(it, 400.0 * (1 + rng.gauss(0, 0.02)) * dip)) is None


def test_perf_drop_other_ranks_and_step_time_metric():
    det = PerfDropDetector(warmup_steps=0, baseline_steps=3, smooth=1, duration_s=0)
    for it in range(1, 4):
        det.observe(it, Progress(it, 100.0, None, None, 0, "x"))
    assert det.baseline == pytest.approx(10.0) and det.metric == "it_per_s"
    assert det.observe(5, Progress(5, 200.0, None, None, 1, "x")) is None   # another rank
    assert det.observe(6, Progress(6, 200.0, None, None, 0, "x")) is not None


def test_cost_model():
    # 10% slower, 10 000 steps of 3 s left: 3000 s lost; a restart costing 600 s is worth it
    assert should_exclude(0.10, 10_000, 3.0, 600.0)
    assert not should_exclude(0.10, 1_000, 3.0, 600.0)     # 300 s < 600 s
    assert not should_exclude(0.10, 2_000, 3.0, 600.0)     # equal: not worth it
    assert not should_exclude(0.0, 10**9, 3.0, 1.0)
    assert not should_exclude(-0.1, 10**9, 3.0, 1.0)
    assert not should_exclude(0.5, 0, 3.0, 0.0)
    assert not should_exclude(0.5, 100, 0.0, 0.0)
    assert should_exclude(0.01, 1, 1.0, 0.0)
    assert restart_cost_s(120.0, 300.0, 50, 3.0) == 570.0


def test_perf_drop_noise_around_threshold_does_not_restart_the_clock():
    rng = random.Random(3)
    det = PerfDropDetector(drop_frac=0.10, duration_s=300, warmup_steps=0, baseline_steps=20)
    found = None
    for it in range(1, 400):
        level = 0.885 if it > 20 else 1.0    # just past the threshold; noise crosses it
        found = found or det.observe(it * 3.0, tput(it, 400.0 * level * (1 + rng.gauss(0, 0.02))))
    assert found is not None and det.drop_start[1] <= 30
