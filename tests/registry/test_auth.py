"""Auth: 401 without or with a bad token, 403 for the wrong role, 404 for another user's job."""

import pytest

from ajr_supervisor.registry.auth import hash_token, list_tokens, revoke_token
from tests.registry.conftest import NOW, ev

READS = ["/api/v1/jobs", "/api/v1/jobs/lab/1", "/api/v1/jobs/lab/1/events", "/api/v1/kpis", "/api/v1/nodes",
         "/api/v1/audit", "/api/v1/notifications", "/api/v1/nodes/n1", "/metrics"]


@pytest.fixture
def two_users(registry):
    registry.post([ev("attempt_started", "1", t=NOW, user="alice", nodes=["n1"]),
                   ev("attempt_started", "2", t=NOW, user="bob", nodes=["n1"])])
    return registry


@pytest.mark.parametrize("path", READS)
def test_no_token_is_401(two_users, path):
    reply = two_users.client.get(path)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer ajr_not-a-real-token", "Bearer ", "Basic YWxpY2U6eA==", "ajr_x"])
def test_bad_token_is_401(two_users, header):
    assert two_users.client.get("/api/v1/jobs", headers={"Authorization": header}).status_code == 401
    assert two_users.client.post("/api/v1/events", json={"events": []},
                                 headers={"Authorization": header}).status_code == 401


def test_ingest_needs_a_token(registry):
    assert registry.client.post("/api/v1/events", json={"events": [ev("job_seen", t=NOW)]}).status_code == 401
    assert registry.get("/api/v1/jobs").json()["total"] == 0


@pytest.mark.parametrize("path", READS[:-1])
def test_supervisor_token_cannot_read(two_users, path):
    assert two_users.get(path, who="supervisor").status_code == 403


def test_user_cannot_ingest_or_act(two_users):
    assert two_users.post([ev("job_seen", t=NOW)], who="alice").status_code == 403
    reply = two_users.client.post("/api/v1/jobs/lab/1/actions", json={"action": "hold", "reason": "mine"},
                                  headers=two_users.h("alice"))
    assert reply.status_code == 403
    assert two_users.slurm.calls == []
    for path in ("/api/v1/audit", "/api/v1/notifications", "/metrics"):
        assert two_users.get(path, who="alice").status_code == 403


def test_user_sees_only_own_jobs_and_another_users_job_is_404(two_users):
    mine = two_users.get("/api/v1/jobs", who="alice").json()
    assert [j["job_id"] for j in mine["items"]] == ["1"] and mine["total"] == 1
    # asking for bob's jobs by filter still shows nothing of bob's
    assert two_users.get("/api/v1/jobs", who="alice", user="bob").json()["total"] == 0
    assert two_users.get("/api/v1/jobs/lab/1", who="alice").status_code == 200
    other = two_users.get("/api/v1/jobs/lab/2", who="alice")
    assert other.status_code == 404
    assert other.json() == {"detail": "no job lab/2"}     # the same answer as for a job that does not exist
    assert two_users.get("/api/v1/jobs/lab/2/events", who="alice").status_code == 404
    assert [j["job_id"] for j in two_users.get("/api/v1/jobs", who="bob").json()["items"]] == ["2"]


def test_admin_sees_all(two_users):
    assert two_users.get("/api/v1/jobs").json()["total"] == 2
    assert two_users.get("/api/v1/jobs/lab/2").status_code == 200
    assert two_users.get("/api/v1/audit").status_code == 200


def test_healthz_is_open_and_metrics_open_only_when_configured(make_registry):
    closed = make_registry()
    assert closed.client.get("/healthz").json() == {"status": "ok"}
    assert closed.client.get("/metrics").status_code == 401
    assert closed.get("/metrics").status_code == 200
    opened = make_registry(metrics_open=True)
    assert opened.client.get("/metrics").status_code == 200
    assert opened.client.get("/api/v1/jobs").status_code == 401


def test_tokens_are_stored_hashed_and_revocation_is_immediate(make_registry):
    registry = make_registry(token_cache_s=0)
    assert registry.get("/api/v1/jobs", who="alice").status_code == 200
    with registry.db.read() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_hash FROM tokens")]
    assert registry.tokens["admin"] not in stored and hash_token(registry.tokens["admin"]) in stored
    assert all(len(h) == 64 for h in stored)
    assert {t["name"] for t in list_tokens(registry.db)} == {"root-admin", "sup", "alice", "bob"}
    assert "token_hash" not in list_tokens(registry.db)[0]
    revoke_token(registry.db, "alice")
    assert registry.get("/api/v1/jobs", who="alice").status_code == 401


def test_token_cache_forgets_a_revoked_token_within_its_ttl(registry):
    from ajr_supervisor.registry.auth import TokenCache

    now = [0.0]
    cache = TokenCache(registry.db, 2.0, monotonic=lambda: now[0])
    header = f"Bearer {registry.tokens['bob']}"
    assert cache.authenticate(header).subject == "bob"
    revoke_token(registry.db, "bob")
    assert cache.authenticate(header).subject == "bob"      # remembered for up to 2 s
    now[0] = 2.5
    assert cache.authenticate(header) is None
    assert cache.authenticate("Bearer ajr_unknown") is None and cache.cached("Bearer ajr_unknown") is None
