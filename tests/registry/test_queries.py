"""Job queries: filters, sort, pagination, a job's events, KPIs and nodes."""

import pytest

from tests.registry.conftest import NOW, ev


@pytest.fixture
def jobs(registry):
    """Six jobs: ids 7, 9, 10, 11, 80, 100; users alice/bob; names train-*/eval-*; two clusters."""
    spec = [("7", "alice", "train-llm", "lab", 0), ("9", "bob", "eval-llm", "lab", 10),
            ("10", "alice", "train-vit", "lab", 20), ("11", "bob", "TRAIN-big", "prod", 30),
            ("80", "alice", "eval-vit", "prod", 40), ("100", "bob", "train-llm", "lab", 50)]
    for job_id, user, name, cluster, dt in spec:
        registry.post([ev("attempt_started", job_id, t=NOW + dt, user=user, job_name=name, cluster=cluster,
                          nodes=["n1"])])
    # updates in another order than creation: 7 last, 100 first
    registry.post([ev("progress", "100", t=NOW + 60, user="bob", job_name="train-llm", iteration=1)])
    registry.post([ev("attempt_ended", "7", t=NOW + 70, job_name="train-llm", end_reason="failure", failed=True,
                      exit_code=1)])
    return registry


def ids(reply):
    assert reply.status_code == 200, reply.text
    return [j["job_id"] for j in reply.json()["items"]]


def test_default_sort_is_most_recently_updated(jobs):
    assert ids(jobs.get("/api/v1/jobs")) == ["7", "100", "80", "11", "10", "9"]


@pytest.mark.parametrize("sort, expected", [
    ("created", ["7", "9", "10", "11", "80", "100"]),
    ("-created", ["100", "80", "11", "10", "9", "7"]),
    ("job_id", ["7", "9", "10", "11", "80", "100"]),     # numeric, not "10" < "7"
    ("-job_id", ["100", "80", "11", "10", "9", "7"]),
    ("updated", ["9", "10", "11", "80", "100", "7"]),
])
def test_sort(jobs, sort, expected):
    assert ids(jobs.get("/api/v1/jobs", sort=sort)) == expected


def test_filters(jobs):
    assert ids(jobs.get("/api/v1/jobs", cluster="prod", sort="job_id")) == ["11", "80"]
    assert ids(jobs.get("/api/v1/jobs", user="alice", sort="job_id")) == ["7", "10", "80"]
    assert ids(jobs.get("/api/v1/jobs", state="failed")) == ["7"]
    assert ids(jobs.get("/api/v1/jobs", name="train", sort="job_id")) == ["7", "10", "11", "100"]   # any case
    assert ids(jobs.get("/api/v1/jobs", name="%", sort="job_id")) == []                              # literal
    assert ids(jobs.get("/api/v1/jobs", since=str(NOW + 45), sort="job_id")) == ["7", "100"]
    assert ids(jobs.get("/api/v1/jobs", since="2099-01-01T00:00:00Z")) == []
    assert ids(jobs.get("/api/v1/jobs", cluster="lab", user="bob", name="llm", sort="job_id")) == ["9", "100"]


def test_pagination(jobs):
    page1 = jobs.get("/api/v1/jobs", sort="job_id", limit=4).json()
    page2 = jobs.get("/api/v1/jobs", sort="job_id", limit=4, offset=4).json()
    assert page1["total"] == page2["total"] == 6
    assert [j["job_id"] for j in page1["items"] + page2["items"]] == ["7", "9", "10", "11", "80", "100"]
    assert jobs.get("/api/v1/jobs", offset=100).json() == {"total": 6, "items": []}


@pytest.mark.parametrize("params", [{"sort": "size"}, {"since": "yesterday"}, {"limit": 0}, {"limit": 5000},
                                    {"state": "exploded"}, {"offset": -1}])
def test_bad_query_parameters_are_422_with_a_reason(jobs, params):
    reply = jobs.get("/api/v1/jobs", **params)
    assert reply.status_code == 422
    assert reply.json()["detail"]


def test_job_events_in_time_order_filtered_and_paged(jobs):
    jobs.post([ev("checkpoint", "7", t=NOW + 5, iteration=3), ev("progress", "7", t=NOW + 3, iteration=1)])
    all_events = jobs.get("/api/v1/jobs/lab/7/events").json()
    assert [e["type"] for e in all_events["items"]] == ["attempt_started", "progress", "checkpoint", "attempt_ended"]
    only = jobs.get("/api/v1/jobs/lab/7/events", type="checkpoint,progress", limit=1, offset=1).json()
    assert only["total"] == 2 and [e["type"] for e in only["items"]] == ["checkpoint"]
    assert jobs.get("/api/v1/jobs/lab/nope/events").status_code == 404


def test_kpis_per_job_and_aggregate(jobs):
    body = jobs.get("/api/v1/kpis", cluster="lab").json()
    assert {j["job_id"] for j in body["jobs"]} == {"7", "9", "10", "100"}
    assert body["aggregate"]["jobs"] == 4
    seven = next(j for j in body["jobs"] if j["job_id"] == "7")
    assert seven["allocated_s"] == 70 and seven["user"] == "alice" and "downtime" in seven
    assert {j["job_id"] for j in jobs.get("/api/v1/kpis", who="alice").json()["jobs"]} == {"7", "10", "80"}


def test_nodes_reputation_and_lemons(registry):
    for j in range(3):   # n9 fails three different jobs: a lemon
        registry.post([ev("attempt_started", str(j), t=NOW + j, nodes=["n9", "n1"]),
                       ev("attribution", str(j), t=NOW + 10 + j, component="GPU", nodes=["n9"], confidence=1.0)])
    registry.post([ev("attribution", "50", t=NOW, component="NETWORK", nodes=["n2"])])
    nodes = registry.get("/api/v1/nodes").json()["nodes"]
    assert [n["node"] for n in nodes] == ["n9", "n2"]
    assert nodes[0]["failures"] == 3 and nodes[0]["lemon"] is True
    assert [n["node"] for n in registry.get("/api/v1/nodes", lemon="true").json()["nodes"]] == ["n9"]
    assert [n["node"] for n in registry.get("/api/v1/nodes", who="alice").json()["nodes"]] == ["n9", "n2"]
    detail = registry.get("/api/v1/nodes/n9").json()
    assert detail["reputation"]["failures_by_component"] == {"GPU": 3}
    assert sorted(j["job_id"] for j in detail["jobs"]) == ["0", "1", "2"]
    assert len(detail["events"]) == 3
    assert registry.get("/api/v1/nodes/n1").json()["reputation"] is None      # ran jobs, never failed
    assert registry.get("/api/v1/nodes/zz").status_code == 404
    assert registry.get("/api/v1/nodes/n9", who="alice").status_code == 403
    assert registry.get("/api/v1/lemons", who="supervisor").json() == {"nodes": ["n9"]}   # all it may read
    assert registry.get("/api/v1/nodes", who="supervisor").status_code == 403
