"""The registry's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

``events`` keeps every accepted event as received (``body`` is its JSON text); ``jobs`` and
``attempts`` are the projection ingest keeps up to date in the same transaction, so reads never
replay events. Times are Unix seconds (float), like the events. JSON-valued projection columns are
text holding JSON (portable, and written whole by ingest). Migration ``0001`` creates exactly this;
a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String,
                        Table, Text, UniqueConstraint)

metadata = MetaData()

events = Table(
    "events", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),   # arrival order
    Column("id", String(64), nullable=False, unique=True),         # the event's own id: ingest is idempotent
    Column("type", String(32), nullable=False),
    Column("time", Float, nullable=False),
    Column("cluster", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("attempt", Integer),
    Column("source", String(16), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("body", Text, nullable=False),
    Index("ix_events_job", "cluster", "job_id", "time"),
    Index("ix_events_type_time", "type", "time"),
)

jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("job_num", BigInteger, nullable=False, default=0),     # numeric part, for sort=job_id
    Column("job_name", String(256), nullable=False, default=""),
    Column("user", String(64), nullable=False, default=""),
    Column("partition", String(64), nullable=False, default=""),
    Column("state", String(16), nullable=False, default="running"),
    Column("state_at", Float, nullable=False, default=0.0),         # time of the event that set state
    Column("attempt", Integer),                                     # the latest attempt seen
    Column("attempts", Integer, nullable=False, default=0),
    Column("requeues", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("last_verdict", String(32)),
    Column("last_reason", Text),
    Column("end_reason", String(64)),
    Column("exit_code", Integer),
    Column("event_count", Integer, nullable=False, default=0),
    Column("hold_at", Float),            # latest ok requeuehold by ajr
    Column("hold_cleared_at", Float),    # latest ok release/requeue/hold/stop, or attempt start
    Column("watchdog_tried_at", Float),  # the watchdog's latest release attempt for the current hold
    UniqueConstraint("cluster", "job_id", name="uq_jobs_cluster_job"),
    Index("ix_jobs_updated", "updated_at"),
    Index("ix_jobs_user", "user"),
    Index("ix_jobs_state", "state"),
)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_pk", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),     # Slurm's restart count; -1: job-level events
    Column("nodes", Text, nullable=False, default="[]"),
    Column("host", String(256), nullable=False, default=""),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("exit_code", Integer),
    Column("end_reason", String(64)),
    Column("failed", Boolean),
    Column("first_step_at", Float),
    Column("last_progress_at", Float),
    Column("iteration", BigInteger),
    Column("failure_at", Float),
    Column("decided_at", Float),
    Column("verdict", String(32)),
    Column("anomalies", Text, nullable=False, default="[]"),
    Column("attribution", Text),
    Column("checkpoints", Text, nullable=False, default="[]"),
    Column("checkpoint_count", Integer, nullable=False, default=0),
    Column("decision", Text),
    Column("actions", Text, nullable=False, default="[]"),
    UniqueConstraint("job_pk", "attempt", name="uq_attempts_job_attempt"),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("subject", String(64)),
    Column("token_hash", String(64), nullable=False, unique=True),   # sha256 hex of the whole token
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("who", String(256), nullable=False),
    Column("action", String(32), nullable=False),
    Column("cluster", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("ok", Boolean, nullable=False),
    Column("result", Text, nullable=False, default=""),
    Index("ix_audit_at", "at"),
    Index("ix_audit_job", "cluster", "job_id"),
)

notifications = Table(
    "notifications", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64)),
    Column("cluster", String(64)),
    Column("job_id", String(64)),
    Column("channel", String(64), nullable=False),
    Column("kind", String(16), nullable=False, default=""),        # email | slack | webhook
    Column("recipient", String(256), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("body", Text, nullable=False, default=""),
    Column("payload", Text, nullable=False, default="{}"),        # what a webhook posts (JSON)
    Column("dedupe_key", String(256)),
    Column("severity", String(16), nullable=False, default="info"),
    Column("status", String(16), nullable=False, default="pending"),   # pending|sent|failed|suppressed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("next_attempt_at", Float),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    Index("ix_notifications_due", "status", "next_attempt_at"),
    Index("ix_notifications_job", "cluster", "job_id"),
)

senders = Table(
    "senders", metadata,
    Column("host", String(256), primary_key=True),
    Column("backlog", BigInteger, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

STATES = ("running", "requeued", "held", "completed", "failed", "stopped", "cancelled")
NOTIFICATION_STATUSES = ("pending", "sent", "failed", "suppressed")
