"""Admin-mode draining: the breaker, the reason text, the ledger, resume only ajr's own drains."""

import pytest

from ajr_supervisor.drain import Drainer, breaker, drain_reason
from ajr_supervisor.errors import AjrError
from ajr_supervisor.slurm import Completed, Slurm

SINFO = "node1|lab*|idle|2|none\nnode2|lab*|idle|2|none\nnode3|lab*|idle|2|none\nnode4|lab*|idle|2|none\n"


def entry(node, at, active=True, partition="lab"):
    return {"node": node, "partition": partition, "job_id": "1", "at": at, "reason": "ajr: GPU: x", "active": active}


def test_breaker_allows_the_first_drain():
    assert breaker([], partition="lab", partition_size=4, now=100.0, max_per_hour=2, max_fraction=0.1).allowed


def test_breaker_limits_drains_per_hour_cluster_wide():
    entries = [entry("a", 0.0, active=False, partition="other"), entry("b", 3000.0, active=False)]
    v = breaker(entries, partition="lab", partition_size=100, now=3500.0, max_per_hour=2, max_fraction=0.5)
    assert not v.allowed and "2 nodes in the last hour (limit 2)" in v.why
    # an hour later the first one no longer counts
    assert breaker(entries, partition="lab", partition_size=100, now=3700.0, max_per_hour=2, max_fraction=0.5).allowed


def test_breaker_limits_the_share_of_a_partition_but_allows_one_node():
    one = [entry("node1", 0.0)]
    v = breaker(one, partition="lab", partition_size=4, now=10_000.0, max_per_hour=10, max_fraction=0.1)
    assert not v.allowed and "1 of 4 nodes of partition lab" in v.why
    assert breaker([], partition="lab", partition_size=4, now=0.0, max_per_hour=10, max_fraction=0.1).allowed
    assert breaker(one, partition="lab", partition_size=20, now=10_000.0, max_per_hour=10, max_fraction=0.1).allowed


def test_drain_reason_is_one_clean_short_line():
    r = drain_reason("GPU", 'RuntimeError: CUDA error: "uncorrectable ECC"\n  x=1 ' + "y" * 300)
    assert r.startswith("ajr: GPU: RuntimeError: CUDA error: uncorrectable ECC x1 ")
    assert len(r) <= 120 and "\n" not in r and '"' not in r and "=" not in r


class Cluster:
    def __init__(self, node_line="NodeName=node2 State=IDLE+DRAIN Reason=ajr: GPU: x [root@t] Partitions=lab"):
        self.calls = []
        self.node_line = node_line

    def __call__(self, argv, env, timeout_s):
        self.calls.append(list(argv))
        if argv[0] == "sinfo":
            return Completed(0, SINFO, "")
        if argv[:3] == ["scontrol", "-o", "show"]:
            return Completed(0, self.node_line + "\n", "")
        return Completed(0, "", "")


def drainer(tmp_path, cluster, **kw):
    return Drainer(Slurm("/c", runner=cluster, env={}), tmp_path / "drains.json",
                   max_per_hour=kw.get("per_hour", 2), max_fraction=kw.get("fraction", 0.5), clock=lambda: 1000.0)


def test_drain_then_breaker_then_resume(tmp_path):
    cluster = Cluster()
    d = drainer(tmp_path, cluster, per_hour=1)
    assert d.drain("node2", partition="lab", job_id="7", component="GPU", evidence="Xid 79").allowed
    assert ["scontrol", "update", "NodeName=node2", "State=DRAIN", "Reason=ajr: GPU: Xid 79"] in cluster.calls
    refused = d.drain("node3", partition="lab", job_id="8", component="GPU", evidence="Xid 79")
    assert not refused.allowed and "last hour" in refused.why
    assert not any("NodeName=node3" in " ".join(c) for c in cluster.calls)
    assert [e["node"] for e in d.entries()] == ["node2"]
    assert d.resume("node2") == "node2 resumed"
    assert ["scontrol", "update", "NodeName=node2", "State=RESUME"] in cluster.calls
    assert d.entries()[0]["active"] is False and d.entries()[0]["closed"] == "resumed"


def test_resume_refuses_a_node_ajr_did_not_drain(tmp_path):
    with pytest.raises(AjrError, match="node4 was not drained by ajr"):
        drainer(tmp_path, Cluster()).resume("node4")


def test_resume_leaves_a_node_someone_else_took_over(tmp_path):
    cluster = Cluster()
    d = drainer(tmp_path, cluster)
    d.drain("node2", partition="lab", job_id="7", component="GPU", evidence="Xid 79")
    cluster.node_line = "NodeName=node2 State=IDLE+DRAIN Reason=maintenance [admin@t] Partitions=lab"
    assert "left as is" in d.resume("node2")
    assert not any(c[-1] == "State=RESUME" for c in cluster.calls)


def test_a_node_already_drained_by_ajr_is_not_drained_twice(tmp_path):
    cluster = Cluster()
    d = drainer(tmp_path, cluster)
    d.drain("node2", partition="lab", job_id="7", component="GPU", evidence="a")
    again = d.drain("node2", partition="lab", job_id="9", component="GPU", evidence="b")
    assert not again.allowed and "already drained" in again.why
    assert sum(1 for c in cluster.calls if c[-1].startswith("Reason=")) == 1


def test_dry_run_drains_nothing_and_records_nothing(tmp_path):
    cluster = Cluster()
    d = Drainer(Slurm("/c", runner=cluster, env={}, dry_run=True), tmp_path / "drains.json",
                max_per_hour=2, max_fraction=0.5)
    assert d.drain("node2", partition="lab", job_id="7", component="GPU", evidence="x").allowed
    assert not any(c[:2] == ["scontrol", "update"] for c in cluster.calls)
    assert d.entries() == []
