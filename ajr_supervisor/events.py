"""The events the supervisor and ``ajr epilog`` send to the registry: one schema, version 1.

An event is a plain JSON object::

    {"id": "5f0c...",            # unique; made once when the event is created, a retry reuses it
     "v": 1,                     # schema version
     "type": "decision",         # one of EVENT_TYPES
     "time": 1764064000.25,      # when it happened (Unix seconds, float)
     "cluster": "lab",           # the Slurm cluster (config cluster_name)
     "job_id": "1234",           # Slurm job id (array jobs: "1234_7")
     "job_name": "train", "user": "alice", "partition": "gpu",
     "attempt": 2,               # Slurm's restart count; null for job-level events
     "source": "supervisor",     # supervisor | epilog | registry
     "data": {...}}              # type-specific, below

``data`` by type (keys not listed are allowed and kept; the listed ones are what readers rely on):

    job_seen         enrollment (dict), max_requeue_times (int|null), work_dir
    attempt_started  nodes (list), host, log_path
    attempt_ended    exit_code (int|null), end_reason (str), failed (bool)
    progress         iteration (int|null), first (bool: the attempt's first step), step_time_s, tflops
    anomaly          anomaly (CRASH|HANG|STRAGGLER|PERF_DROP), component, reason, rule_id, line, rank,
                     nodes (list)
    attribution      component, nodes (list), ranks (list), confidence (0..1), evidence (list of str)
    checkpoint       iteration (int|null), line
    decision         verdict (NONE|REQUEUE|EXCLUDE_AND_REQUEUE|STOP), reason, exclude (list),
                     failure_at (float|null: when the failure happened: the fatal line, the last line
                     before a hang, the step's exit), by (supervisor|epilog)
    action           action (requeuehold|exclude|release|stop|drain|release_next|...), ok (bool),
                     error (str|null), detail, dry_run (bool)
    node_health      node, state (GOOD|BAD|UNKNOWN), checks (list of dicts: the checks not GOOD)
    notification     severity (info|warning|critical), message

This module is pure: building and checking events. Delivery is :mod:`ajr_supervisor.outbox`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Mapping

SCHEMA_VERSION = 1
EVENT_TYPES = ("job_seen", "attempt_started", "attempt_ended", "progress", "anomaly", "attribution",
               "checkpoint", "decision", "action", "node_health", "notification")
SOURCES = ("supervisor", "epilog", "registry")
MAX_EVENT_BYTES = 64 * 1024     # an event larger than this is refused by the registry
_REQUIRED = {"id": str, "type": str, "time": (int, float), "cluster": str, "job_id": str, "data": dict}
_OPTIONAL = {"v": int, "job_name": str, "user": str, "partition": str, "attempt": (int, type(None)),
             "source": str}


class EventError(ValueError):
    """An event that does not follow the schema; the message says which field and why."""


def new_id() -> str:
    return uuid.uuid4().hex


def make_event(type: str, *, cluster: str, job_id: str, data: Mapping[str, Any] | None = None,
               attempt: int | None = None, job_name: str = "", user: str = "", partition: str = "",
               source: str = "supervisor", when: float | None = None, event_id: str | None = None) -> dict:
    """A new event (checked)."""
    event = {"id": event_id or new_id(), "v": SCHEMA_VERSION, "type": type,
             "time": time.time() if when is None else float(when), "cluster": cluster, "job_id": str(job_id),
             "job_name": job_name, "user": user, "partition": partition, "attempt": attempt,
             "source": source, "data": dict(data or {})}
    validate(event)
    return event


def validate(event: Any) -> dict:
    """``event`` itself when it follows the schema, else :class:`EventError`."""
    if not isinstance(event, dict):
        raise EventError(f"an event must be a JSON object, not {type(event).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in event:
            raise EventError(f"event is missing {key!r}")
        if not isinstance(event[key], kind) or isinstance(event[key], bool):
            raise EventError(f"event field {key!r} has the wrong type ({type(event[key]).__name__})")
    for key, kind in _OPTIONAL.items():
        if key in event and (not isinstance(event[key], kind) or isinstance(event[key], bool)):
            raise EventError(f"event field {key!r} has the wrong type ({type(event[key]).__name__})")
    if event["type"] not in EVENT_TYPES:
        raise EventError(f"unknown event type {event['type']!r}; known: {', '.join(EVENT_TYPES)}")
    if event.get("source", "supervisor") not in SOURCES:
        raise EventError(f"unknown event source {event['source']!r}; known: {', '.join(SOURCES)}")
    if not event["id"] or len(event["id"]) > 64:
        raise EventError("event id must be 1 to 64 characters")
    if not event["job_id"] or len(event["job_id"]) > 64:
        raise EventError("event job_id must be 1 to 64 characters")
    if event.get("v", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise EventError(f"event schema version {event['v']} is newer than this one ({SCHEMA_VERSION}); "
                         "upgrade the registry")
    return event
