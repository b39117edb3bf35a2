"""Notifications: planned at ingest (throttled), delivered by the loop, retried, given up."""

from ajr_supervisor.registry import notify
from tests.registry.conftest import NOW, ev

CHANNELS = {"channels": [{"name": "ops", "kind": "webhook", "url": "http://ops.example/hook",
                          "events": ["decision"], "min_severity": "warning"}],
            "dedupe_window_s": 600, "rate_limit_per_hour": 0}


def stop(job_id="1", t=NOW, **kw):
    return ev("decision", job_id, t=t, verdict="STOP", reason="crash loop", **kw)


def notes(reg, **params):
    return reg.get("/api/v1/notifications", **params).json()["items"]


def test_planned_at_ingest_and_throttled(make_registry):
    reg = make_registry(notifications=CHANNELS)
    reg.post([stop(), ev("progress", t=NOW, iteration=1)])
    reg.post([stop(t=NOW + 1, by="epilog")])        # the same happening from the epilog: a duplicate
    rows = notes(reg)
    assert [(n["status"], n["severity"], n["channel"]) for n in rows] == [("suppressed", "critical", "ops"),
                                                                           ("pending", "critical", "ops")]
    assert rows[0]["last_error"] == "duplicate"
    assert "STOP" in rows[1]["subject"] and "payload" in rows[1]
    detail = reg.get("/api/v1/jobs/lab/1").json()
    assert len(detail["notifications"]) == 2 and "payload" not in detail["notifications"][0]


def test_delivered_by_the_loop(make_registry):
    reg = make_registry(notifications=CHANNELS)
    reg.post([stop()])
    notifier = reg.app.state.ctx.notifier
    assert notifier.deliver_due(reg.db) == 1
    [(n, channel)] = reg.sent
    assert channel.name == "ops" and n.payload["severity"] == "critical" and n.recipient == "admins"
    [row] = notes(reg)
    assert row["status"] == "sent" and row["attempts"] == 1 and row["sent_at"] == NOW
    assert notifier.deliver_due(reg.db) == 0


def test_retried_then_given_up(make_registry):
    def failing(n, channel, **_):
        raise notify.DeliveryError("ops: webhook post failed: HTTP 503")

    reg = make_registry(notifications=CHANNELS, sender=failing)
    reg.post([stop()])
    notifier = reg.app.state.ctx.notifier
    assert notifier.deliver_due(reg.db) == 1
    [row] = notes(reg)
    assert row["status"] == "pending" and row["attempts"] == 1 and "HTTP 503" in row["last_error"]
    assert row["next_attempt_at"] == NOW + notify.retry_delay_s(1)
    assert notifier.deliver_due(reg.db) == 0            # not due yet
    for _ in range(notify.MAX_ATTEMPTS - 1):
        reg.clock.advance(notify.RETRY_CAP_S)
        assert notifier.deliver_due(reg.db) == 1
    [row] = notes(reg)
    assert row["status"] == "failed" and row["attempts"] == notify.MAX_ATTEMPTS


def test_a_permanent_error_fails_at_once(make_registry):
    def gone(n, channel, **_):
        raise notify.DeliveryError("ops: webhook post failed: HTTP 404", permanent=True)

    reg = make_registry(notifications=CHANNELS, sender=gone)
    reg.post([stop()])
    reg.app.state.ctx.notifier.deliver_due(reg.db)
    assert [(n["status"], n["attempts"]) for n in notes(reg)] == [("failed", 1)]


def test_throttle_survives_a_restart(make_registry):
    reg = make_registry(notifications=CHANNELS)
    reg.post([stop()])
    again = make_registry(notifications=CHANNELS)       # a new process on the same database
    again.post([stop(t=NOW + 5, by="epilog")])
    assert [n["status"] for n in notes(again)] == ["suppressed", "pending"]
