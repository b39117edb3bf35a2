"""Admin actions go through (fake) Slurm and are audited, failures included."""

import pytest

from tests.registry.conftest import NOW, ev


@pytest.fixture
def job(registry):
    registry.post([ev("attempt_started", "42", t=NOW, user="alice", nodes=["n1"])])
    return registry


def act(reg, action, reason="admin test", job="lab/42", who="admin"):
    return reg.client.post(f"/api/v1/jobs/{job}/actions", json={"action": action, "reason": reason},
                           headers=reg.h(who))


def test_actions_call_slurm_and_are_audited(job):
    for action in ("hold", "release", "requeue"):
        reply = act(job, action, reason=f"because {action}")
        assert reply.status_code == 200, reply.text
        assert reply.json()["ok"] is True and reply.json()["who"] == "root-admin"
    assert job.slurm.calls == [("hold", "42"), ("release", "42"), ("requeue", "42")]
    audit = job.get("/api/v1/audit").json()
    assert audit["total"] == 3
    newest = audit["items"][0]
    assert (newest["action"], newest["reason"], newest["ok"], newest["result"]) == ("requeue", "because requeue",
                                                                                      True, "ok")
    assert newest["at"] == NOW and newest["cluster"] == "lab" and newest["job_id"] == "42"
    detail = job.get("/api/v1/jobs/lab/42").json()
    assert [a["action"] for a in detail["attempts"][0]["actions"]] == ["hold", "release", "requeue"]
    assert all(a["source"] == "registry" for a in detail["attempts"][0]["actions"])
    assert len(detail["audit"]) == 3


def test_hold_changes_the_state(job):
    job.clock.advance(10)
    act(job, "hold")
    assert job.get("/api/v1/jobs/lab/42").json()["state"] == "held"


def test_a_failed_action_is_audited_with_slurms_error(job):
    job.slurm.fail["release"] = "slurm_release error: Job is no longer pending execution"
    reply = act(job, "release", reason="try")
    assert reply.status_code == 200
    body = reply.json()
    assert body["ok"] is False
    assert "no longer pending" in body["result"] and "scontrol release 42" in body["result"]
    entry = job.get("/api/v1/audit", job_id="42").json()["items"][0]
    assert entry["ok"] is False and entry["result"] == body["result"]
    assert job.get("/api/v1/jobs/lab/42").json()["attempts"][0]["actions"][0]["ok"] is False


def test_unknown_job_is_404_and_nothing_runs(job):
    assert act(job, "release", job="lab/43").status_code == 404
    assert job.slurm.calls == []


@pytest.mark.parametrize("body", [{"action": "scancel", "reason": "x"}, {"action": "hold"},
                                  {"action": "hold", "reason": ""}])
def test_bad_action_requests_are_422(job, body):
    reply = job.client.post("/api/v1/jobs/lab/42/actions", json=body, headers=job.h())
    assert reply.status_code == 422
    assert job.slurm.calls == []


def test_a_cluster_without_slurm_access_is_audited_as_failed(db_url):
    from fastapi.testclient import TestClient

    from ajr_supervisor.registry.app import create_app
    from ajr_supervisor.registry.auth import create_token
    from ajr_supervisor.registry.settings import Settings
    from tests.registry.conftest import FakeSlurm

    slurm = FakeSlurm()
    app = create_app(Settings(db=db_url), slurm={"other": slurm}, background=False)
    token, _ = create_token(app.state.ctx.db, "admin")
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {token}"}
    client.post("/api/v1/events", json={"events": [ev("job_seen", "5", t=NOW)]}, headers=headers)
    body = client.post("/api/v1/jobs/lab/5/actions", json={"action": "hold", "reason": "x"}, headers=headers).json()
    assert body["ok"] is False and "no Slurm access configured for cluster 'lab'" in body["result"]
    assert slurm.calls == []
    app.state.ctx.db.dispose()
