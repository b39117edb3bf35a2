"""AdaptiveHang: cadence learning, the fixed floor, startup grace and quiet spans (injected time)."""

from __future__ import annotations

import pytest

from ajr_supervisor.detect.adaptive_hang import AdaptiveHang, p99
from ajr_supervisor.detect.progress import Progress, SpanEvent
from ajr_supervisor.types import Anomaly


def prog(it: int, rank: int = 0) -> Progress:
    return Progress(it, 3000.0, None, None, rank, "megatron")


def steady(det: AdaptiveHang, steps: int, step_s: float = 3.0, t0: float = 100.0) -> float:
    t = t0
    for it in range(1, steps + 1):
        det.observe(t, prog(it))
        det.observe(t + 0.01, prog(it, rank=1))   # other ranks: same iteration, not an interval
        t += step_s
    return t - step_s


def test_p99():
    assert p99([1.0]) == 1.0
    assert p99([float(i) for i in range(1, 101)]) == 99.0
    assert p99([3.0] * 99 + [50.0]) == 3.0


def test_startup_grace_before_first_step():
    det = AdaptiveHang(start=0.0, startup_grace_s=600, hang_timeout_s=120)
    assert det.check(599.0) is None
    f = det.check(600.0)
    assert f is not None and f.anomaly is Anomaly.HANG and "no first step" in f.reason


def test_fixed_timeout_is_the_floor_without_opt_in():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, k=5, floor_s=30, min_intervals=20)
    last = steady(det, 50)
    assert det.threshold_s() == 120
    assert det.check(last + 119) is None
    assert det.check(last + 120) is not None


def test_opt_in_alarms_sooner():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, k=5, floor_s=30, min_intervals=20, opt_in=True)
    last = steady(det, 50)
    assert det.threshold_s() == 30          # max(30, 5 * 3)
    assert det.check(last + 29.9) is None
    assert det.check(last + 30) is not None
    det2 = AdaptiveHang(start=0.0, hang_timeout_s=120, k=5, floor_s=10, min_intervals=20, opt_in=True)
    last2 = steady(det2, 50)
    assert det2.threshold_s() == pytest.approx(15.0)
    assert det2.deadline() == pytest.approx(last2 + 15.0)


def test_slow_steps_extend_the_timeout():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, k=3, floor_s=30, min_intervals=5)
    last = steady(det, 10, step_s=100.0)
    assert det.threshold_s() == pytest.approx(300.0)
    assert det.check(last + 200) is None


def test_fixed_until_enough_intervals():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, floor_s=10, min_intervals=20, opt_in=True)
    last = steady(det, 5)
    assert det.threshold_s() == 120 and det.check(last + 60) is None


def test_no_alarm_inside_checkpoint_span_until_max_span():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, floor_s=10, min_intervals=20, opt_in=True, max_span_s=900)
    last = steady(det, 50)
    det.observe(last + 1, SpanEvent("start", "CHECKPOINT_SAVE_SYNC", "7"))
    assert det.check(last + 600) is None
    assert det.check(last + 1 + 900) is not None
    det.observe(last + 700, SpanEvent("end", "CHECKPOINT_SAVE_SYNC", "7", 699_000.0))
    assert det.check(last + 700 + 14) is None          # the span end counts as activity
    assert det.check(last + 700 + 15) is not None
    assert det.intervals[-1] == pytest.approx(3.0)      # the save did not become a step interval


def test_validation_span_and_text_checkpoint():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, floor_s=10, min_intervals=20, opt_in=True, max_span_s=900)
    last = steady(det, 50)
    det.observe(last + 1, SpanEvent("start", "VALIDATION_LOOP", "9"))
    assert det.check(last + 500) is None
    det.observe(last + 501, SpanEvent("end", "VALIDATION_LOOP", "9"))
    det.observe_checkpoint(last + 502, saving=True)
    assert det.check(last + 800) is None
    det.observe_checkpoint(last + 803, saving=False)
    assert det.check(last + 803 + 14) is None and det.check(last + 803 + 15) is not None


def test_other_spans_do_not_pause_the_alarm():
    det = AdaptiveHang(start=0.0, hang_timeout_s=120, floor_s=10, min_intervals=20, opt_in=True)
    last = steady(det, 50)
    det.observe(last + 1, SpanEvent("start", "DATA_LOAD", "3"))
    assert det.check(last + 15) is not None


def test_end_without_start_closes_open_span_of_that_name():
    det = AdaptiveHang(start=0.0, floor_s=10, min_intervals=20, opt_in=True)
    last = steady(det, 50)
    det.observe(last + 1, SpanEvent("start", "CHECKPOINT_SAVE_ASYNC", "1"))
    det.observe(last + 2, SpanEvent("end", "CHECKPOINT_SAVE_ASYNC", None))
    assert not det.open_spans


def test_invalid_parameters():
    with pytest.raises(ValueError):
        AdaptiveHang(start=0.0, hang_timeout_s=0)
