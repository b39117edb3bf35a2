"""registry.metrics: a snapshot rendered in the Prometheus text format, read back with its parser."""

import math

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from ajr_supervisor.registry.metrics import (CONTENT_TYPE, LATENCY_BUCKETS_S, METRIC_NAMES, MetricsSnapshot,
                                             histogram_buckets, render)


def full_snapshot():
    return MetricsSnapshot(
        jobs_by_state={"running": 3, "requeued": 1, "completed": 7},
        anomalies={("CRASH", "GPU"): 4, ("HANG", "NETWORK"): 2},
        requeues_total=5,
        detection_latency_s=[0.2, 0.5, 3.0, 45.0, 900.0],
        recovery_latency_s=[60.0, 240.0],
        efficiency={"lab/1234": 0.91, "lab/1233_7": 0.5},
        efficiency_aggregate=0.87,
        outbox_backlog={"gpu-01": 12, "gpu-02": 0},
        nodes_drained=2,
        lemon_nodes=["n3", "n7"],
        node_failures={"n3": 5, "n7": 3},
        events_ingested={"decision": 9, "progress": 1200},
        notifications={"sent": 6, "failed": 1, "suppressed": 3, "pending": 2},
    )


def parse(snapshot, **kw):
    body, content_type = render(snapshot, **kw)
    assert content_type == CONTENT_TYPE and content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return body.decode(), samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_values_come_back_with_their_labels():
    _, samples = parse(full_snapshot())
    assert value(samples, "ajr_jobs", state="running") == 3
    assert value(samples, "ajr_anomalies_total", anomaly="CRASH", component="GPU") == 4
    assert value(samples, "ajr_requeues_total") == 5
    assert value(samples, "ajr_job_efficiency_ratio", cluster="lab", job_id="1233_7") == 0.5
    assert value(samples, "ajr_efficiency_ratio") == 0.87
    assert value(samples, "ajr_outbox_backlog_events", host="gpu-01") == 12
    assert value(samples, "ajr_nodes_drained") == 2
    assert value(samples, "ajr_node_failures_total", node="n3") == 5
    assert value(samples, "ajr_lemon_node", node="n7") == 1
    assert value(samples, "ajr_events_ingested_total", type="progress") == 1200
    assert value(samples, "ajr_notifications_total", status="suppressed") == 3
    assert value(samples, "ajr_notifications_pending") == 2           # falls as they are sent: a gauge
    assert ("ajr_notifications_total", (("status", "pending"),)) not in samples


def test_metric_types_and_every_name_is_present():
    body, _ = parse(full_snapshot())
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert types["ajr_anomalies"] == "counter" and types["ajr_jobs"] == "gauge"
    assert types["ajr_detection_latency_seconds"] == "histogram"
    present = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE")}
    assert present == set(METRIC_NAMES)
    assert all(name.startswith("ajr_") for name in METRIC_NAMES)


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    _, samples = parse(full_snapshot())
    les = [*(repr(float(b)) for b in LATENCY_BUCKETS_S), "+Inf"]
    counts = [value(samples, "ajr_detection_latency_seconds_bucket", le=le) for le in les]
    assert counts == [2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5]
    assert counts == sorted(counts)
    assert value(samples, "ajr_detection_latency_seconds_count") == 5
    assert math.isclose(value(samples, "ajr_detection_latency_seconds_sum"), 948.7)
    assert value(samples, "ajr_recovery_latency_seconds_bucket", le="300.0") == 2
    assert value(samples, "ajr_recovery_latency_seconds_bucket", le="120.0") == 1


def test_histogram_clamps_skew_and_drops_nan():
    buckets, total, count = histogram_buckets([-3.0, float("nan"), 1.0], bounds=(0.5, 2.0))
    assert buckets == [("0.5", 1.0), ("2.0", 2.0), ("+Inf", 2.0)]
    assert (total, count) == (1.0, 2)


def test_label_values_are_escaped():
    snapshot = MetricsSnapshot(lemon_nodes=['we"ird\\node\nx'], outbox_backlog={"host ä": 1})
    body, samples = parse(snapshot)
    assert 'ajr_lemon_node{node="we\\"ird\\\\node\\nx"} 1.0' in body
    assert value(samples, "ajr_lemon_node", node='we"ird\\node\nx') == 1
    assert value(samples, "ajr_outbox_backlog_events", host="host ä") == 1


def test_an_empty_snapshot_renders_validly():
    body, samples = parse(MetricsSnapshot())
    assert value(samples, "ajr_requeues_total") == 0 and value(samples, "ajr_nodes_drained") == 0
    assert value(samples, "ajr_notifications_pending") == 0
    assert value(samples, "ajr_detection_latency_seconds_bucket", le="+Inf") == 0
    assert value(samples, "ajr_detection_latency_seconds_count") == 0
    assert not any(name == "ajr_efficiency_ratio" for name, _ in samples)     # unknown: no sample, not 0
    assert not any(name == "ajr_jobs" for name, _ in samples)
    assert {f.name for f in text_string_to_metric_families(body)} >= {"ajr_jobs", "ajr_lemon_node"}


def test_per_job_series_are_capped_to_the_most_recent():
    efficiency = {f"lab/{1000 - i}": i / 1000 for i in range(50)}      # most recent first
    _, samples = parse(MetricsSnapshot(efficiency=efficiency), max_job_series=10)
    jobs = {dict(labels)["job_id"] for name, labels in samples if name == "ajr_job_efficiency_ratio"}
    assert jobs == {str(1000 - i) for i in range(10)}


def test_render_keeps_no_global_state():
    before = {m.name for m in prometheus_client.REGISTRY.collect()}
    first, _ = render(MetricsSnapshot(requeues_total=1))
    second, _ = render(MetricsSnapshot(requeues_total=2))
    assert b"ajr_requeues_total 1.0" in first and b"ajr_requeues_total 2.0" in second
    assert b"ajr_requeues_total 1.0" not in second
    assert {m.name for m in prometheus_client.REGISTRY.collect()} == before
