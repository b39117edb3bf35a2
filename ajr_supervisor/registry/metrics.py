"""The registry's Prometheus metrics: a :class:`MetricsSnapshot` (built from the DB by the service)
rendered in the Prometheus text format (pure: no global registry, no clock, no I/O).

Every render uses a fresh ``CollectorRegistry`` holding one collector that yields metric families
from the snapshot, so nothing leaks between calls or into ``prometheus_client``'s default registry.

Metrics (all prefixed ``ajr_``; labels in braces)::

    ajr_jobs{state}                              gauge      jobs per state (registry.models.STATES)
    ajr_anomalies_total{anomaly,component}       counter    anomalies ever reported
    ajr_requeues_total                           counter    requeues ever made
    ajr_detection_latency_seconds                histogram  failure -> decision, per interruption
    ajr_recovery_latency_seconds                 histogram  failure -> the next attempt's first step
    ajr_job_efficiency_ratio{cluster,job_id}     gauge      training-time efficiency per job (0..1)
    ajr_efficiency_ratio                         gauge      the same over all jobs (absent when unknown)
    ajr_outbox_backlog_events{host}              gauge      events waiting in a sender's outbox
    ajr_nodes_drained                            gauge      nodes drained by ajr now
    ajr_node_failures_total{node}                counter    failures attributed to a node
    ajr_lemon_node{node}                         gauge      1 for every node judged a lemon
    ajr_events_ingested_total{type}              counter    events stored, by type
    ajr_notifications_total{status}              counter    notifications, by final status (sent, failed, ...)
    ajr_notifications_pending                    gauge      notifications waiting for (re)delivery

Counters and histograms must be all-time totals (never windowed), or Prometheus' ``rate()`` and
``increase()`` read a shrinking value as a reset. So ``MetricsSnapshot.notifications["pending"]``,
which falls as notifications are sent, is the gauge ``ajr_notifications_pending``, not a counter. Latency histograms use the fixed
:data:`LATENCY_BUCKETS_S`; a negative latency (clock skew) counts as 0 and a NaN is left out.

Cardinality: per-job efficiency is limited to the first :data:`MAX_JOB_SERIES` entries of
``MetricsSnapshot.efficiency``, which the service fills most recent job first (the cap does not
change ``ajr_efficiency_ratio``, which the service computes). Labelled families have one series per
key the snapshot holds: a state with no jobs is absent unless the service puts it in with 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
MAX_JOB_SERIES = 200
PENDING = "pending"    # the one notification status that is not final

#: name -> (kind, labels, help). Counter names include ``_total``; histograms are the base name.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ajr_jobs": ("gauge", ("state",), "Jobs known to the registry, by state."),
    "ajr_anomalies_total": ("counter", ("anomaly", "component"), "Anomalies reported, by kind and component."),
    "ajr_requeues_total": ("counter", (), "Requeues of supervised jobs."),
    "ajr_detection_latency_seconds": ("histogram", (), "Seconds from a failure to ajr's decision."),
    "ajr_recovery_latency_seconds": ("histogram", (),
                                     "Seconds from a failure to the next attempt's first training step."),
    "ajr_job_efficiency_ratio": ("gauge", ("cluster", "job_id"),
                                 "Training-time efficiency of a job: productive / allocated time."),
    "ajr_efficiency_ratio": ("gauge", (), "Training-time efficiency over all jobs: productive / allocated time."),
    "ajr_outbox_backlog_events": ("gauge", ("host",), "Events waiting in a sender's outbox, as last reported."),
    "ajr_nodes_drained": ("gauge", (), "Nodes drained by ajr now."),
    "ajr_node_failures_total": ("counter", ("node",), "Failures attributed to a node."),
    "ajr_lemon_node": ("gauge", ("node",), "1 for a node judged a lemon (fails again and again)."),
    "ajr_events_ingested_total": ("counter", ("type",), "Events stored by the registry, by type."),
    "ajr_notifications_total": ("counter", ("status",), "Notifications, by final status."),
    "ajr_notifications_pending": ("gauge", (), "Notifications waiting for delivery or a retry."),
}
#: the sample name bases (histograms: without _bucket/_sum/_count)
METRIC_NAMES = frozenset(METRICS)


@dataclass
class MetricsSnapshot:
    """What ``/metrics`` reports; the service fills it from the DB (every field may stay empty)."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)
    anomalies: dict[tuple[str, str], int] = field(default_factory=dict)    # (anomaly, component) -> count
    requeues_total: int = 0
    detection_latency_s: list[float] = field(default_factory=list)
    recovery_latency_s: list[float] = field(default_factory=list)
    efficiency: dict[str, float] = field(default_factory=dict)             # "cluster/job_id", most recent first
    efficiency_aggregate: float | None = None
    outbox_backlog: dict[str, int] = field(default_factory=dict)           # sender host -> events
    nodes_drained: int = 0
    lemon_nodes: list[str] = field(default_factory=list)
    node_failures: dict[str, int] = field(default_factory=dict)            # node -> failures
    events_ingested: dict[str, int] = field(default_factory=dict)          # event type -> count
    notifications: dict[str, int] = field(default_factory=dict)            # status -> count (pending too)


def render(snapshot: MetricsSnapshot, *, max_job_series: int = MAX_JOB_SERIES) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``snapshot`` and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, max_job_series))
    return generate_latest(registry), CONTENT_TYPE


def histogram_buckets(values: Iterable[float], bounds: Iterable[float] = LATENCY_BUCKETS_S
                      ) -> tuple[list[tuple[str, float]], float, int]:
    """Cumulative ``(le, count)`` buckets ending with ``+Inf``, the sum and the count of ``values``."""
    kept = [max(0.0, float(v)) for v in values if not math.isnan(float(v))]
    buckets = [(_le(b), float(sum(1 for v in kept if v <= b))) for b in sorted(bounds)]
    return buckets + [("+Inf", float(len(kept)))], math.fsum(kept), len(kept)


class _SnapshotCollector:
    def __init__(self, snapshot: MetricsSnapshot, max_job_series: int) -> None:
        self.snapshot, self.max_job_series = snapshot, max_job_series

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield _family("ajr_jobs", ((([state], n) for state, n in sorted(s.jobs_by_state.items()))))
        yield _family("ajr_anomalies_total", (([a, c], n) for (a, c), n in sorted(s.anomalies.items())))
        yield _family("ajr_requeues_total", [([], s.requeues_total)])
        yield _histogram("ajr_detection_latency_seconds", s.detection_latency_s)
        yield _histogram("ajr_recovery_latency_seconds", s.recovery_latency_s)
        jobs = list(s.efficiency.items())[:max(self.max_job_series, 0)]
        yield _family("ajr_job_efficiency_ratio", ((_cluster_job(key), ratio) for key, ratio in jobs))
        aggregate = [] if s.efficiency_aggregate is None else [([], s.efficiency_aggregate)]
        yield _family("ajr_efficiency_ratio", aggregate)
        yield _family("ajr_outbox_backlog_events", (([h], n) for h, n in sorted(s.outbox_backlog.items())))
        yield _family("ajr_nodes_drained", [([], s.nodes_drained)])
        yield _family("ajr_node_failures_total", (([node], n) for node, n in sorted(s.node_failures.items())))
        yield _family("ajr_lemon_node", (([node], 1) for node in sorted(set(s.lemon_nodes))))
        yield _family("ajr_events_ingested_total", (([t], n) for t, n in sorted(s.events_ingested.items())))
        yield _family("ajr_notifications_total",
                      (([st], n) for st, n in sorted(s.notifications.items()) if st != PENDING))
        yield _family("ajr_notifications_pending", [([], s.notifications.get(PENDING, 0))])


def _family(name: str, samples: Iterable[tuple[list[str], float]]) -> Metric:
    kind, labels, doc = METRICS[name]
    family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=list(labels))
    for values, value in samples:
        family.add_metric([str(v) for v in values], float(value))
    return family


def _histogram(name: str, values: Iterable[float]) -> Metric:
    buckets, total, _ = histogram_buckets(values)
    family = HistogramMetricFamily(name, METRICS[name][2], labels=[])
    family.add_metric([], buckets, total)
    return family


def _cluster_job(key: str) -> list[str]:
    cluster, _, job_id = key.partition("/")
    return [cluster, job_id] if job_id else ["", cluster]


def _le(bound: float) -> str:
    return repr(float(bound))   # "0.5", "10.0": the same spelling prometheus_client uses
