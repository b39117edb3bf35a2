"""ProgressWatch: hang verdicts (fixed, quiet spans, adaptive) and the straggler cost model."""

from __future__ import annotations

from ajr_supervisor.config import Config
from ajr_supervisor.detect.watch import ProgressWatch

NODES = {0: "node1", 1: "node2", 2: "node3"}


def feed_steps(w: ProgressWatch, start_it: int, n: int, t: float, *, dt: float = 0.1, total: int | None = None,
               slow: str = "node2", slow_ms: float = 125.0):
    """n iterations of all three ranks, one iteration every dt seconds; returns (t, first finding)."""
    for i in range(start_it, start_it + n):
        t += dt
        for r, node in NODES.items():
            ms = slow_ms if node == slow else 100.0
            if total is None:
                text = f"[2026-11-25 09:00:00.000] rank {r} iteration {i} step_time_ms {ms}"
            else:
                text = (f" iteration {i:8d}/{total:8d} | consumed samples: 1 | elapsed time per iteration (ms): "
                        f"{ms} | learning rate: 1.0E-04 |")
            w.heard(t)
            found = w.line(t, text, r, NODES)
            if found is not None:
                return t, found
    return t, None


def watch(**config) -> ProgressWatch:
    return ProgressWatch(Config(**config), 0.0, hang_timeout_s=120.0)


# --- stragglers ------------------------------------------------------------------------------------

def test_exclude_ends_at_once_report_never():
    _, found = feed_steps(watch(straggler_action="exclude"), 1, 40, 0.0)
    assert found is not None and found.nodes == ("node2",)
    w = watch(straggler_action="report")
    _, found = feed_steps(w, 1, 40, 0.0)
    assert found is None and [f.nodes for f in w.findings] == [("node2",)] and not w.pending


def test_auto_excludes_a_long_run():
    w = watch()
    _, found = feed_steps(w, 1, 40, 0.0, total=1_000_000)
    assert found is not None and found.nodes == ("node2",)
    assert "> restart cost" in w.note


def test_auto_keeps_a_node_near_the_end_of_the_run():
    w = watch()
    _, found = feed_steps(w, 1, 40, 0.0, total=100)
    assert found is None and w.pending and w.findings
    # 25% of 0.1 s for at most 85 steps left is about 2 s: far less than a 300 s restart
    assert "<= restart cost" in w.note


def test_auto_waits_for_the_checkpoint_that_makes_a_restart_cheap():
    """Found 100 s after the last save: the lost work makes a restart too dear; right after the
    next save it pays (25% of 0.1 s x ~10000 steps = ~250 s > 10 s restart)."""
    w = ProgressWatch(Config(restart_cost_s=10.0), 0.0, hang_timeout_s=120.0)
    t, found = feed_steps(w, 1, 40, 300.0, total=10_000)
    assert found is None and w.pending
    found = w.checkpoint(t + 1.0)
    assert found is not None and found.nodes == ("node2",) and not w.pending


def test_auto_forgets_a_node_that_recovered():
    w = ProgressWatch(Config(restart_cost_s=10.0), 0.0, hang_timeout_s=120.0)
    t, found = feed_steps(w, 1, 40, 300.0, total=10_000)
    assert found is None and w.pending
    t, found = feed_steps(w, 41, 10, t, total=10_000, slow_ms=100.0)   # node2 back to normal
    assert found is None
    assert w.checkpoint(t + 1.0) is None


def test_remaining_steps_from_the_time_limit():
    w = ProgressWatch(Config(), 0.0, hang_timeout_s=120.0, remaining_s=lambda: 60.0)
    _, found = feed_steps(w, 1, 40, 0.0)
    assert found is None and "600 steps left" in w.note
    assert w.remaining_steps(0.1) == 600


# --- hangs --------------------------------------------------------------------------------------

def test_fixed_hang_at_the_timeout():
    w = watch()
    w.heard(10.0)
    assert w.deadline() == 130.0
    assert w.check(129.0) is None
    assert "no new log line for 120 s" in w.check(130.0).reason


def test_a_checkpoint_save_is_a_quiet_span():
    w = watch(hang_quiet_span_max_s=600.0)
    feed_steps(w, 1, 3, 0.0)
    w.heard(5.0)
    w.line(5.0, "saving checkpoint at iteration 3 to /ckpt", 0, NODES)
    assert w.check(200.0) is None and w.deadline() == 605.0
    found = w.check(605.0)
    assert found is not None and "CHECKPOINT_SAVE span open for longer than 600 s" in found.reason
    w.heard(300.0)
    w.checkpoint(300.0)                   # saved: the fixed timeout is back
    assert w.deadline() == 420.0


def test_telemetry_span_is_a_quiet_span_but_not_an_async_one_with_steps_around_it():
    w = watch(hang_quiet_span_max_s=600.0)
    w.heard(1.0)
    w.line(1.0, "[ajr-telemetry] ts=x rank=0 event=span_start name=CHECKPOINT_SAVE_SYNC span=4", 0, NODES)
    assert w.deadline() == 601.0
    w.heard(2.0)
    w.line(2.0, "[ajr-telemetry] ts=x rank=0 event=span_end name=CHECKPOINT_SAVE_SYNC span=4 duration_ms=1000", 0, NODES)
    assert w.deadline() == 122.0
    # an async save: the span stays open while steps go on, so a silence after a step is not excused
    w.line(3.0, "[ajr-telemetry] ts=x rank=0 event=span_start name=CHECKPOINT_SAVE_ASYNC span=5", 0, NODES)
    w.heard(4.0)
    w.line(4.0, "[ajr-telemetry] ts=x rank=0 event=iteration iteration=7 step_time_ms=100", 0, NODES)
    assert w.deadline() == 124.0


def test_adaptive_hang_is_opt_in():
    def steady(w):
        t = 0.0
        for i in range(1, 31):
            t += 1.0
            w.heard(t)
            w.line(t, f"[ajr-telemetry] ts=x rank=0 event=iteration iteration={i} step_time_ms=1000", 0, NODES)
        return t

    off = watch()
    t = steady(off)
    assert off.check(t + 60) is None and off.check(t + 120) is not None
    on = watch(hang_adaptive=True)
    t = steady(on)
    assert on.deadline() == t + 30.0          # max(floor 30 s, 5 x p99 1 s)
    found = on.check(t + 30.0)
    assert found is not None and "no progress for 30 s" in found.reason
