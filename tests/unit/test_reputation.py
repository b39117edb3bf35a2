"""Node reputation: attributed failures per (job, attempt, node), decayed score, lemons, drains."""

import itertools
import json

import pytest

from ajr_supervisor.events import make_event
from ajr_supervisor.registry.reputation import action_nodes, lemons, node_reputation

NOW = 1_800_000_000.0
DAY = 86400.0
WEEK = 7 * DAY
_ids = itertools.count()


def ago(days=0.0, seconds=0.0):
    return NOW - days * DAY - seconds


def ev(type, t, job="1", attempt=0, cluster="lab", **data):
    return make_event(type, cluster=cluster, job_id=job, attempt=attempt, data=data, when=t,
                      event_id=f"r{next(_ids):06d}")


def blame(t, job, attempt, nodes, component="GPU"):
    return ev("attribution", t, job, attempt, component=component, nodes=nodes, ranks=[0], confidence=0.9,
              evidence=["Xid 79"])


def bad(t, job, attempt, node, check="gpu0:ecc"):
    return ev("node_health", t, job, attempt, node=node, state="BAD", checks=[
        {"name": "disk", "state": "OK"}, {"name": check, "state": "BAD"}])


def action(t, name, detail, ok=True, dry_run=False, **extra):
    return ev("action", t, "9", 0, action=name, ok=ok, error=None, detail=detail, dry_run=dry_run, **extra)


def test_several_jobs_and_nodes():
    events = [blame(ago(1), "1", 0, ["n1", "n2"], "GPU"), blame(ago(2), "2", 0, ["n1"], "NETWORK"),
              blame(ago(3), "3", 1, ["n3"], "STORAGE"), ev("attribution", ago(1), "4", 0, component="GPU", nodes=[]),
              blame(ago(1), "5", 0, ["n4"], "APPLICATION"), blame(ago(1), "6", 0, ["n4"], "UNKNOWN")]
    reps = node_reputation(events, now=NOW)
    assert sorted(reps) == ["n1", "n2", "n3"]
    n1 = reps["n1"]
    assert (n1.failures, n1.failures_by_component, n1.jobs) == (2, {"GPU": 1, "NETWORK": 1}, ["lab/1", "lab/2"])
    assert n1.last_failure_at == ago(1)
    assert (reps["n2"].failures, reps["n3"].jobs) == (1, ["lab/3"])
    assert not any(r.lemon or r.drained_by_ajr for r in reps.values())


def test_one_failure_per_job_attempt_and_node():
    events = [blame(ago(1), "1", 0, ["n1"]), blame(ago(1, 30), "1", 0, ["n1"], "NETWORK"),   # earlier: it wins
              bad(ago(1), "1", 0, "n1"),                      # already attributed: not counted again
              bad(ago(0.5), "1", 1, "n1", "memory"),          # another attempt, no attribution: counted
              bad(ago(0.4), "1", 1, "n1", "memory"),
              blame(ago(0.5), "1", 0, ["n1"], "GPU") | {"cluster": "other"}]   # another cluster's job 1
    reps = node_reputation(events, now=NOW)
    assert reps["n1"].failures == 3
    assert reps["n1"].failures_by_component == {"GPU": 1, "NETWORK": 1, "NODE_MEMORY": 1}
    assert reps["n1"].jobs == ["lab/1", "other/1"]


def test_attribution_wins_over_an_earlier_bad_probe():
    reps = node_reputation([bad(ago(1, 10), "1", 0, "n1", "disk"), blame(ago(1), "1", 0, ["n1"], "GPU")], now=NOW)
    assert (reps["n1"].failures, reps["n1"].failures_by_component) == (1, {"GPU": 1})


def test_score_decays_by_half_per_half_life():
    events = [blame(NOW, "1", 0, ["n1"]), blame(ago(7), "2", 0, ["n1"]), blame(ago(14), "3", 0, ["n1"]),
              blame(NOW + 60, "4", 0, ["n2"])]           # a clock ahead of ours: weighs 1, never more
    reps = node_reputation(events, now=NOW)
    assert reps["n1"].score == pytest.approx(1 + 0.5 + 0.25)
    assert reps["n2"].score == pytest.approx(1.0)
    assert node_reputation(events, now=NOW, half_life_s=DAY * 14)["n1"].score == pytest.approx(1 + 0.5 ** 0.5 + 0.5)


def test_lemon_needs_failures_across_different_jobs():
    across = [blame(ago(1), "1", 0, ["n1"]), blame(ago(2), "2", 0, ["n1"]), blame(ago(3), "1", 1, ["n1"])]
    one_job = [blame(ago(1), "7", a, ["n2"]) for a in range(5)]
    reps = node_reputation(across + one_job, now=NOW)
    assert reps["n1"].lemon and not reps["n2"].lemon
    assert reps["n2"].failures == 5
    assert node_reputation(one_job, now=NOW, lemon_min_jobs=1)["n2"].lemon


def test_old_failures_do_not_make_a_lemon():
    old = [blame(ago(29), "1", 0, ["n1"]), blame(ago(30), "2", 0, ["n1"]), blame(ago(1), "3", 0, ["n1"])]
    rep = node_reputation(old, now=NOW)["n1"]
    assert rep.failures == 3 and not rep.lemon                 # two are older than 4 half-lives (28 days)
    assert node_reputation(old, now=NOW, half_life_s=8 * DAY)["n1"].lemon


def test_lemons_sorted_by_score():
    events = [blame(ago(d), job, 0, ["n1"]) for d, job in ((5, "1"), (6, "2"), (7, "3"))]
    events += [blame(ago(d), job, 0, ["n2"]) for d, job in ((0, "4"), (0, "5"), (0, "6"), (0, "7"))]
    events += [blame(ago(0), "8", 0, ["n3"])]
    reps = node_reputation(events, now=NOW)
    assert lemons(reps) == ["n2", "n1"]
    assert lemons(list(reps.values())) == ["n2", "n1"]


def test_drain_and_resume():
    events = [action(ago(3), "drain", "n1,n2"), action(ago(2), "resume", "n1"),
              action(ago(1), "drain", "drained n3"),                  # the epilog's wording
              action(ago(1), "drain", "n4", ok=False), action(ago(1), "drain", "n5", dry_run=True),
              action(ago(1), "exclude", "n6"), action(ago(1), "drain", "", nodes=["n7"])]
    reps = node_reputation(events, now=NOW)
    assert {n: r.drained_by_ajr for n, r in reps.items()} == {"n1": False, "n2": True, "n3": True, "n7": True}
    assert reps["n2"].failures == 0 and reps["n2"].score == 0 and reps["n2"].last_failure_at is None


def test_events_out_of_order():
    events = [action(ago(2), "resume", "n1"), action(ago(3), "drain", "n1")]
    assert node_reputation(list(reversed(events)), now=NOW)["n1"].drained_by_ajr is False
    assert node_reputation(events, now=NOW)["n1"].drained_by_ajr is False


def test_action_nodes():
    assert action_nodes({"detail": " n1, n2 ,,"}) == ["n1", "n2"]
    assert action_nodes({"node": "n9", "detail": "x"}) == ["n9"]
    assert action_nodes({"detail": None}) == []


def test_as_json_and_bad_half_life():
    reps = node_reputation([blame(ago(1), "1", 0, ["n1"])], now=NOW)
    assert json.loads(json.dumps(reps["n1"].to_dict()))["failures_by_component"] == {"GPU": 1}
    with pytest.raises(ValueError):
        node_reputation([], now=NOW, half_life_s=0)


def test_junk_does_not_crash():
    junk = [{"type": "attribution", "time": NOW, "cluster": "lab", "job_id": "1", "data": {"nodes": "n1"}},
            {"type": "node_health", "time": "yesterday", "data": {}}, {"type": "action", "time": NOW, "data": None},
            {"type": "node_health", "time": NOW, "job_id": "1", "data": {"state": "BAD", "node": "n2", "checks": 5}}]
    reps = node_reputation(junk, now=NOW)
    assert list(reps) == ["n2"] and reps["n2"].failures_by_component == {"UNKNOWN": 1}


def test_the_analytics_modules_stay_pure():
    import ast
    from pathlib import Path

    import ajr_supervisor.registry.kpi as kpi_module
    import ajr_supervisor.registry.reputation as reputation_module

    outside = {"os", "time", "socket", "subprocess", "requests", "pathlib", "sqlalchemy", "fastapi"}
    for module in (kpi_module, reputation_module):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not {n.split(".")[0] for n in names} & outside, (module.__name__, names)
