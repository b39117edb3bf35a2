"""The registry's first schema: events, the jobs/attempts projection, tokens, audit, notifications,
senders.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_events_job", "events", ["cluster", "job_id", "time"])
    op.create_index("ix_events_type_time", "events", ["type", "time"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("job_num", sa.BigInteger, nullable=False),
        sa.Column("job_name", sa.String(256), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_at", sa.Float, nullable=False),
        sa.Column("attempt", sa.Integer),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("requeues", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_verdict", sa.String(32)),
        sa.Column("last_reason", sa.Text),
        sa.Column("end_reason", sa.String(64)),
        sa.Column("exit_code", sa.Integer),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("hold_at", sa.Float),
        sa.Column("hold_cleared_at", sa.Float),
        sa.Column("watchdog_tried_at", sa.Float),
        sa.UniqueConstraint("cluster", "job_id", name="uq_jobs_cluster_job"),
    )
    op.create_index("ix_jobs_updated", "jobs", ["updated_at"])
    op.create_index("ix_jobs_user", "jobs", ["user"])
    op.create_index("ix_jobs_state", "jobs", ["state"])

    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_pk", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("nodes", sa.Text, nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("exit_code", sa.Integer),
        sa.Column("end_reason", sa.String(64)),
        sa.Column("failed", sa.Boolean),
        sa.Column("first_step_at", sa.Float),
        sa.Column("last_progress_at", sa.Float),
        sa.Column("iteration", sa.BigInteger),
        sa.Column("failure_at", sa.Float),
        sa.Column("decided_at", sa.Float),
        sa.Column("verdict", sa.String(32)),
        sa.Column("anomalies", sa.Text, nullable=False),
        sa.Column("attribution", sa.Text),
        sa.Column("checkpoints", sa.Text, nullable=False),
        sa.Column("checkpoint_count", sa.Integer, nullable=False),
        sa.Column("decision", sa.Text),
        sa.Column("actions", sa.Text, nullable=False),
        sa.UniqueConstraint("job_pk", "attempt", name="uq_attempts_job_attempt"),
    )

    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64)),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )

    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("who", sa.String(256), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_job", "audit", ["cluster", "job_id"])

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64)),
        sa.Column("cluster", sa.String(64)),
        sa.Column("job_id", sa.String(64)),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("recipient", sa.String(256), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("dedupe_key", sa.String(256)),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float),
    )
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_at"])
    op.create_index("ix_notifications_job", "notifications", ["cluster", "job_id"])

    op.create_table(
        "senders",
        sa.Column("host", sa.String(256), primary_key=True),
        sa.Column("backlog", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("senders", "notifications", "audit", "tokens", "attempts", "jobs", "events"):
        op.drop_table(table)
