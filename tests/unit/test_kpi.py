"""Job KPIs (training-time efficiency) from hand-built event sequences; every number checked by hand."""

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ajr_supervisor.events import make_event
from ajr_supervisor.registry.kpi import DOWNTIME_PARTS, aggregate_kpis, job_kpis

NOW = 10_000.0
_ids = itertools.count()


def ev(type, t, attempt, **data):
    """An event of job lab/1 at time ``t`` (seconds; NOW is 10000)."""
    return make_event(type, cluster="lab", job_id="1", attempt=attempt, data=data, when=t,
                      event_id=f"e{next(_ids):06d}")


def clean_job():
    return [ev("attempt_started", 0, 0, nodes=["n1"]), ev("progress", 100, 0, iteration=1, first=True),
            ev("progress", 500, 0, iteration=50, first=False), ev("checkpoint", 1000, 0, iteration=100),
            ev("checkpoint", 2000, 0, iteration=200), ev("decision", 3000, 0, verdict="NONE"),
            ev("attempt_ended", 3000, 0, exit_code=0, end_reason="success", failed=False)]


def crash_then_success(progress=True):
    """Attempt 0 crashes at 1500 (last checkpoint 1000), attempt 1 restarts and finishes."""
    events = [ev("attempt_started", 0, 0), ev("checkpoint", 1000, 0),
              ev("anomaly", 1500, 0, anomaly="CRASH", component="GPU"),
              ev("decision", 1510, 0, verdict="REQUEUE", failure_at=1500.0),
              ev("attempt_ended", 1530, 0, exit_code=1, end_reason="requeued", failed=True),
              ev("attempt_started", 1600, 1), ev("checkpoint", 2200, 1),
              ev("attempt_ended", 3000, 1, exit_code=0, end_reason="success", failed=False)]
    if progress:
        events += [ev("progress", 100, 0, first=True), ev("progress", 1700, 1, first=True),
                   ev("progress", 1800, 1, first=False)]
    return events


def test_clean_job():
    k = job_kpis(clean_job(), now=NOW)
    assert k["allocated_s"] == 3000
    assert k["productive_s"] == 2900          # the first 100 s (startup to the first step) are not productive
    assert k["efficiency"] == pytest.approx(2900 / 3000)
    assert (k["attempts"], k["requeues"], k["interruptions"]) == (1, 0, [])
    assert k["downtime"] == {part: 0 for part in DOWNTIME_PARTS}


def test_crash_with_checkpoint_requeue_then_success():
    k = job_kpis(crash_then_success(), now=NOW)
    assert k["allocated_s"] == 1530 + 1400
    # not productive: [0,100] startup + [1000,1530] lost work, detection, shutdown; [1600,2200] restart
    assert k["productive_s"] == 2930 - (100 + 530 + 600) == 1700
    assert k["efficiency"] == pytest.approx(1700 / 2930)
    assert (k["attempts"], k["requeues"]) == (2, 1)
    assert k["interruptions"] == [{
        "attempt": 0, "failure_at": 1500.0, "detected_at": 1510.0, "ended_at": 1530.0, "next_started_at": 1600.0,
        "first_step_at": 1700.0, "first_checkpoint_at": 2200.0, "detection_s": 10.0, "shutdown_s": 20.0,
        "queue_wait_s": 70.0, "restart_to_first_step_s": 100.0, "lost_work_s": 500.0}]
    assert k["downtime"] == {"detection_s": 10, "shutdown_s": 20, "queue_wait_s": 70,
                             "restart_to_first_step_s": 100, "lost_work_s": 500}


def test_success_at_first_step_counts_the_restart_productive_sooner():
    k = job_kpis(crash_then_success(), now=NOW, success_at="first_step")
    assert k["productive_s"] == 2930 - (100 + 530 + 100) == 2200
    assert k["downtime"] == job_kpis(crash_then_success(), now=NOW)["downtime"]


def test_unknown_success_point_is_refused():
    with pytest.raises(ValueError, match="first_step"):
        job_kpis(clean_job(), now=NOW, success_at="first_save")


def test_hang():
    events = [ev("attempt_started", 0, 0), ev("progress", 50, 0, first=True), ev("checkpoint", 500, 0),
              ev("progress", 800, 0), ev("anomaly", 920, 0, anomaly="HANG", component="UNKNOWN"),
              ev("decision", 925, 0, verdict="REQUEUE", failure_at=800.0),
              ev("attempt_ended", 940, 0, failed=True, end_reason="requeued"),
              ev("attempt_started", 1000, 1), ev("progress", 1100, 1, first=True), ev("checkpoint", 1300, 1)]
    k = job_kpis(events, now=2000)
    assert k["allocated_s"] == 940 + 1000           # attempt 1 still runs: until now
    i = k["interruptions"][0]
    assert (i["detection_s"], i["shutdown_s"], i["lost_work_s"]) == (125, 15, 300)
    assert (i["queue_wait_s"], i["restart_to_first_step_s"]) == (60, 100)
    assert k["productive_s"] == 1940 - (50 + 440 + 300) == 1150


def test_job_still_running():
    events = [ev("attempt_started", 0, 0), ev("progress", 100, 0, first=True), ev("checkpoint", 400, 0)]
    k = job_kpis(events, now=NOW)
    assert (k["allocated_s"], k["productive_s"]) == (NOW, NOW - 100)
    assert k["interruptions"] == []


def test_running_restart_without_its_first_checkpoint_is_not_productive_yet():
    events = crash_then_success()[:5] + [ev("progress", 100, 0, first=True), ev("attempt_started", 1600, 1),
                                         ev("progress", 1700, 1, first=True)]
    k = job_kpis(events, now=2000)
    assert k["allocated_s"] == 1530 + 400
    assert k["productive_s"] == 1930 - (100 + 530 + 400) == 900
    assert job_kpis(events, now=2000, success_at="first_step")["productive_s"] == 1930 - (100 + 530 + 100)


def test_events_in_any_order_give_the_same_numbers():
    events = crash_then_success()
    expected = job_kpis(events, now=NOW)
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(events)
        assert job_kpis(events, now=NOW) == expected


def test_same_time_events_are_ordered_by_type():
    events = [ev("progress", 0, 0, first=True), ev("attempt_ended", 0, 0, failed=False), ev("attempt_started", 0, 0),
              ev("attempt_started", 5, 1), ev("attempt_ended", 9, 1)]
    k = job_kpis(events, now=NOW)
    assert (k["allocated_s"], k["productive_s"], k["interruptions"]) == (4, 4, [])


def test_missing_progress_leaves_first_step_parts_unknown():
    k = job_kpis(crash_then_success(progress=False), now=NOW)
    i = k["interruptions"][0]
    assert i["first_step_at"] is None and i["restart_to_first_step_s"] is None
    assert k["downtime"]["restart_to_first_step_s"] == 0        # unknown parts are left out of the sums
    # no startup is subtracted where no step was ever seen; the restart's startup is known (checkpoint)
    assert k["productive_s"] == 2930 - (530 + 600)
    assert job_kpis(crash_then_success(progress=False), now=NOW, success_at="first_step")["productive_s"] == 2930 - 530


def test_registry_saw_only_part_of_the_job():
    # attempt 0 without attempt_started (and no checkpoint): no allocated time, lost work unknown
    events = [ev("progress", 100, 0, first=True),
              ev("decision", 1510, 0, verdict="EXCLUDE_AND_REQUEUE", failure_at=1500),
              ev("attempt_ended", 1530, 0, failed=True), ev("attempt_started", 1600, 1),
              ev("progress", 1700, 1, first=True), ev("attempt_ended", 2600, 1, failed=False)]
    k = job_kpis(events, now=NOW, success_at="first_step")
    assert (k["allocated_s"], k["productive_s"]) == (1000, 900)
    i = k["interruptions"][0]
    assert i["lost_work_s"] is None and (i["detection_s"], i["shutdown_s"], i["queue_wait_s"]) == (10, 20, 70)


def test_requeues_is_slurms_restart_count():
    events = [ev("attempt_started", 100, 3), ev("attempt_ended", 200, 3, failed=False)]
    k = job_kpis(events, now=NOW)
    assert (k["attempts"], k["requeues"], k["allocated_s"]) == (1, 3, 100)


def test_no_events():
    k = job_kpis([], now=NOW)
    assert (k["allocated_s"], k["productive_s"], k["efficiency"], k["attempts"], k["requeues"]) == (0, 0, None, 0, 0)


def test_stop_at_the_end():
    events = [ev("attempt_started", 0, 0), ev("progress", 100, 0, first=True), ev("checkpoint", 1000, 0),
              ev("anomaly", 1200, 0, anomaly="CRASH"), ev("decision", 1205, 0, verdict="STOP", failure_at=1200),
              ev("attempt_ended", 1210, 0, failed=True, end_reason="stopped")]
    k = job_kpis(events, now=NOW)
    assert (k["allocated_s"], k["productive_s"], k["requeues"]) == (1210, 900, 0)
    i = k["interruptions"][0]
    assert (i["detection_s"], i["shutdown_s"], i["lost_work_s"]) == (5, 5, 200)
    assert i["next_started_at"] is None and i["queue_wait_s"] is None and i["restart_to_first_step_s"] is None


def test_failure_time_falls_back_to_the_first_hard_anomaly_then_the_end():
    events = [ev("attempt_started", 0, 0), ev("anomaly", 300, 0, anomaly="STRAGGLER"),
              ev("anomaly", 500, 0, anomaly="CRASH"), ev("decision", 520, 0, verdict="REQUEUE"),
              ev("attempt_ended", 530, 0, failed=True)]
    assert job_kpis(events, now=NOW)["interruptions"][0]["failure_at"] == 500
    no_decision = [ev("attempt_started", 0, 0), ev("checkpoint", 200, 0), ev("attempt_ended", 530, 0, failed=True)]
    i = job_kpis(no_decision, now=NOW)["interruptions"][0]
    assert (i["failure_at"], i["detected_at"], i["detection_s"], i["shutdown_s"], i["lost_work_s"]) == \
        (530, None, None, None, 330)


def test_a_restart_failing_before_its_first_checkpoint_is_not_counted_twice():
    events = [ev("attempt_started", 0, 0), ev("progress", 10, 0, first=True), ev("checkpoint", 100, 0),
              ev("decision", 210, 0, verdict="REQUEUE", failure_at=200), ev("attempt_ended", 220, 0, failed=True),
              ev("attempt_started", 300, 1), ev("progress", 320, 1, first=True),
              ev("decision", 410, 1, verdict="REQUEUE", failure_at=400), ev("attempt_ended", 420, 1, failed=True),
              ev("attempt_started", 500, 2), ev("progress", 510, 2, first=True), ev("checkpoint", 600, 2),
              ev("attempt_ended", 700, 2, failed=False)]
    k = job_kpis(events, now=NOW)
    assert k["allocated_s"] == 540
    assert k["productive_s"] == 540 - (130 + 120 + 100) == 190
    assert [i["lost_work_s"] for i in k["interruptions"]] == [100, 100]
    assert k["requeues"] == 2


def test_aggregate():
    a, b = job_kpis(clean_job(), now=NOW), job_kpis(crash_then_success(), now=NOW)
    total = aggregate_kpis([{"cluster": "lab", "job_id": "1", **a}, b])
    assert total["jobs"] == 2
    assert (total["allocated_s"], total["productive_s"]) == (3000 + 2930, 2900 + 1700)
    assert total["efficiency"] == pytest.approx(4600 / 5930)
    assert (total["attempts"], total["requeues"]) == (3, 1)
    assert total["downtime"]["lost_work_s"] == 500
    assert "interruptions" not in total


def test_aggregate_of_nothing_and_of_junk():
    assert aggregate_kpis([])["efficiency"] is None
    total = aggregate_kpis([{"allocated_s": None, "productive_s": "x", "downtime": None}])
    assert (total["jobs"], total["allocated_s"], total["efficiency"]) == (1, 0, None)


TYPES = ("attempt_started", "attempt_ended", "progress", "checkpoint", "anomaly", "decision", "job_seen")
DATA = st.fixed_dictionaries({}, optional={
    "failed": st.sampled_from([True, False, None, "yes"]), "first": st.sampled_from([True, False, 1]),
    "verdict": st.sampled_from(["NONE", "REQUEUE", "EXCLUDE_AND_REQUEUE", "STOP", "bogus"]),
    "failure_at": st.one_of(st.none(), st.floats(-100, 3000, allow_nan=False), st.text(max_size=2)),
    "anomaly": st.sampled_from(["CRASH", "HANG", "STRAGGLER", "PERF_DROP"])})
EVENTS = st.lists(st.builds(lambda type, t, attempt, data: {"type": type, "time": t,
                                                            "cluster": "lab", "job_id": "1", "attempt": attempt,
                                                            "data": data},
                            st.sampled_from(TYPES), st.floats(0, 2000, allow_nan=False),
                            st.one_of(st.none(), st.integers(0, 3)), DATA), max_size=30)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.floats(0, 3000, allow_nan=False), st.sampled_from(["checkpoint", "first_step"]))
def test_invariants(events, now, success_at):
    events = [{**e, "id": f"e{n:03d}"} for n, e in enumerate(events)]    # ids are unique in the registry
    k = job_kpis(events, now=now, success_at=success_at)
    assert 0 <= k["productive_s"] <= k["allocated_s"]
    assert k["efficiency"] is None if k["allocated_s"] == 0 else 0 <= k["efficiency"] <= 1
    assert all(v >= 0 for v in k["downtime"].values())
    for i in k["interruptions"]:
        assert all(i[p] is None or i[p] >= 0 for p in DOWNTIME_PARTS)
    assert job_kpis(list(reversed(events)), now=now, success_at=success_at) == k
    total = aggregate_kpis([k, k])
    assert total["efficiency"] is None or 0 <= total["efficiency"] <= 1
