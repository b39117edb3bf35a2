"""Ingest: idempotent by event id, bad events rejected alone with one line, the projection follows a
crash -> requeue -> success sequence, and the request limits hold."""

from tests.registry.conftest import NOW, ev


def test_same_batch_twice_is_stored_once(registry):
    batch = [ev("attempt_started", t=NOW, nodes=["n1"]), ev("progress", t=NOW + 5, iteration=10, first=True)]
    first = registry.post(batch, host="login1", backlog=0)
    assert first.status_code == 200
    assert first.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    again = registry.post(batch)
    assert again.json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    # a retry that mixes old and new events stores only the new one
    mixed = registry.post([batch[0], ev("checkpoint", t=NOW + 9, iteration=10)])
    assert mixed.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    events = registry.get("/api/v1/jobs/lab/100/events").json()
    assert events["total"] == 3
    assert [e["type"] for e in events["items"]] == ["attempt_started", "progress", "checkpoint"]
    assert registry.get("/api/v1/jobs/lab/100").json()["event_count"] == 3


def test_duplicate_inside_one_batch_counts_once(registry):
    e = ev("job_seen", t=NOW)
    assert registry.post([e, dict(e)]).json() == {"accepted": 1, "duplicates": 1, "rejected": []}


def test_bad_events_are_rejected_alone_with_one_line(registry):
    good = ev("attempt_started", t=NOW, nodes=["n1"])
    wrong_type = ev("attempt_started", t=NOW)
    wrong_type["type"] = "exploded"
    no_job = ev("progress", t=NOW)
    del no_job["job_id"]
    nan_time = ev("progress", t=NOW)
    nan_time["time"] = -5.0
    huge_attempt = ev("progress", t=NOW, attempt=2**40)
    reply = registry.post([good, wrong_type, no_job, "not an object", nan_time, huge_attempt])
    assert reply.status_code == 200
    body = reply.json()
    assert body["accepted"] == 1 and body["duplicates"] == 0
    errors = {r["id"]: r["error"] for r in body["rejected"]}
    assert len(body["rejected"]) == 5
    assert "unknown event type 'exploded'" in errors[wrong_type["id"]]
    assert errors[no_job["id"]] == "event is missing 'job_id'"
    assert "finite" in errors[nan_time["id"]]
    assert "out of range" in errors[huge_attempt["id"]]
    assert errors[""] == "an event must be a JSON object, not str"
    assert all("\n" not in r["error"] for r in body["rejected"])
    assert registry.get("/api/v1/jobs").json()["total"] == 1


def test_more_than_1000_events_is_refused_clearly(registry):
    batch = [ev("progress", t=NOW + i) for i in range(1001)]
    reply = registry.post(batch)
    assert reply.status_code == 413
    assert "at most 1000" in reply.json()["detail"]
    assert registry.get("/api/v1/jobs").json()["total"] == 0
    assert registry.post(batch[:1000]).json()["accepted"] == 1000


def test_crash_requeue_success_projection(registry):
    t = NOW
    crash = [ev("job_seen", t=t, attempt=None, max_requeue_times=3),
             ev("attempt_started", t=t + 1, nodes=["n1", "n2"], host="n1"),
             ev("progress", t=t + 10, iteration=1, first=True),
             ev("checkpoint", t=t + 50, iteration=100),
             ev("anomaly", t=t + 60, anomaly="CRASH", component="GPU", reason="Xid 79", nodes=["n2"]),
             ev("attribution", t=t + 61, component="GPU", nodes=["n2"], confidence=0.9, evidence=["Xid 79"]),
             ev("decision", t=t + 62, verdict="EXCLUDE_AND_REQUEUE", reason="GPU fell off the bus", exclude=["n2"],
                failure_at=t + 59.5, by="supervisor"),
             ev("attempt_ended", t=t + 63, exit_code=1, end_reason="requeued", failed=True)]
    registry.post(crash)
    job = registry.get("/api/v1/jobs/lab/100").json()
    assert job["state"] == "requeued" and job["last_verdict"] == "EXCLUDE_AND_REQUEUE"
    registry.post([ev("action", t=t + 64, action="requeuehold", ok=True)])
    job = registry.get("/api/v1/jobs/lab/100").json()
    assert job["state"] == "held" and job["held_since"] == t + 64
    registry.post([ev("action", t=t + 65, action="exclude", ok=True, detail="n2"),
                   ev("action", t=t + 66, action="release", ok=True)])
    job = registry.get("/api/v1/jobs/lab/100").json()
    assert job["state"] == "requeued" and job["held_since"] is None
    registry.post([ev("attempt_started", t=t + 90, attempt=1, nodes=["n1", "n3"]),
                   ev("progress", t=t + 100, attempt=1, iteration=101, first=True)])
    assert registry.get("/api/v1/jobs/lab/100").json()["state"] == "running"
    registry.post([ev("attempt_ended", t=t + 500, attempt=1, exit_code=0, end_reason="success", failed=False)])
    job = registry.get("/api/v1/jobs/lab/100").json()
    assert (job["state"], job["attempt"], job["requeues"], job["exit_code"]) == ("completed", 1, 1, 0)
    first, second = job["attempts"]
    assert first["nodes"] == ["n1", "n2"] and second["nodes"] == ["n1", "n3"]
    assert first["end_reason"] == "requeued" and first["failed"] is True and first["exit_code"] == 1
    assert first["anomalies"][0]["anomaly"] == "CRASH" and first["attribution"]["nodes"] == ["n2"]
    assert first["checkpoint_count"] == 1 and first["decision"]["exclude"] == ["n2"]
    assert [a["action"] for a in first["actions"]] == ["requeuehold", "exclude", "release"]
    assert second["end_reason"] == "success" and second["started_at"] == t + 90
    assert [n["node"] for n in job["nodes"]] == ["n1", "n2", "n3"]
    rep = {n["node"]: n["reputation"] for n in job["nodes"]}
    assert rep["n2"]["failures"] == 1 and rep["n1"] is None
    assert job["kpis"]["attempts"] == 2 and job["kpis"]["requeues"] == 1
    assert 0 < job["kpis"]["efficiency"] < 1


def test_late_events_never_move_the_state_backwards(registry):
    registry.post([ev("attempt_ended", t=NOW + 100, exit_code=0, end_reason="success", failed=False)])
    registry.post([ev("attempt_started", t=NOW, nodes=["n1"]), ev("decision", t=NOW + 50, verdict="NONE")])
    job = registry.get("/api/v1/jobs/lab/100").json()
    assert job["state"] == "completed"
    assert job["created_at"] == NOW and job["updated_at"] == NOW + 100


def test_events_of_many_jobs_in_one_batch(registry):
    batch = [ev("attempt_started", job_id=str(j), t=NOW + j, nodes=[f"n{j}"]) for j in range(30)]
    batch += [ev("attempt_ended", job_id=str(j), t=NOW + 100 + j, failed=True, end_reason="failure", exit_code=2)
              for j in range(0, 30, 3)]
    assert registry.post(batch).json()["accepted"] == 40
    assert registry.get("/api/v1/jobs", state="failed").json()["total"] == 10
    assert registry.get("/api/v1/jobs", state="running").json()["total"] == 20


def test_job_level_events_land_on_the_latest_attempt(registry):
    registry.post([ev("attempt_started", t=NOW, attempt=2, nodes=["n1"]),
                   ev("action", t=NOW + 1, attempt=None, action="requeuehold", ok=True)])
    job = registry.get("/api/v1/jobs/lab/100").json()
    assert [a["attempt"] for a in job["attempts"]] == [2]
    assert job["attempts"][0]["actions"][0]["action"] == "requeuehold"


def test_sender_backlog_is_kept_per_host(make_registry):
    reg = make_registry(metrics_open=True, metrics_cache_s=0)
    reg.post([ev("job_seen", t=NOW, attempt=None)], host="node7", backlog=42)
    reg.post([], host="node8", backlog=3)
    text = reg.client.get("/metrics").text
    assert 'ajr_outbox_backlog_events{host="node7"} 42.0' in text
    assert 'ajr_outbox_backlog_events{host="node8"} 3.0' in text
    assert 'ajr_events_ingested_total{type="job_seen"} 1.0' in text


def test_malformed_request_bodies_are_422(registry):
    assert registry.client.post("/api/v1/events", headers=registry.h("supervisor"), json={"nope": 1}).status_code == 422
    assert registry.client.post("/api/v1/events", headers=registry.h("supervisor"),
                                json={"events": [], "backlog": -1}).status_code == 422


def test_group_commit_keeps_per_request_accounting(registry):
    """Several requests in one transaction: each gets its own counts; an event in two requests is
    accepted for the first and a duplicate for the second."""
    from ajr_supervisor.registry.ingest import GroupWriter, Request, ingest_many

    shared = ev("job_seen", "1", t=NOW, attempt=None)
    old = ev("attempt_started", "1", t=NOW + 1, nodes=["n1"])
    registry.post([old])
    results = ingest_many(registry.db, [Request([shared, ev("progress", "1", t=NOW + 2)], "a", 5),
                                        Request([shared, old, {"id": "x"}], "b", 0),
                                        Request([ev("attempt_started", "2", t=NOW, nodes=["n2"])], "a", 1)], now=NOW)
    assert [r.as_dict()["accepted"] for r in results] == [2, 0, 1]
    assert [r.duplicates for r in results] == [0, 2, 0]
    assert [len(r.rejected) for r in results] == [0, 1, 0]
    assert registry.get("/api/v1/jobs").json()["total"] == 2
    writer = GroupWriter(registry.db, clock=lambda: NOW)
    futures = [writer.submit(Request([ev("progress", "3", t=NOW + i)])) for i in range(50)]
    assert sum(f.result(timeout=30).accepted for f in futures) == 50
    writer.close()
    assert registry.get("/api/v1/jobs/lab/3").json()["event_count"] == 50
