"""Attribution: who is to blame, with what confidence and evidence; `ajr analyze` on excerpts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ajr_supervisor.analysis import analyze_lines
from ajr_supervisor.attribute import NONE, HealthFault, attribute
from ajr_supervisor.rules import RuleSet
from ajr_supervisor.types import Action, Anomaly, Component, Finding, Trigger

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


@pytest.fixture(scope="module")
def rules():
    return RuleSet.load()


def finding(rule, action=Action.REQUEUE, component=Component.APPLICATION, *, rank=None, nodes=(), t=1.0,
            anomaly=Anomaly.CRASH, trigger=Trigger.IMMEDIATE):
    return Finding(anomaly, component, action, t, f"{rule} happened", rule_id=rule, line=f"{rank}: {rule}",
                   rank=rank, nodes=tuple(nodes), trigger=trigger, offset=int(t))


def test_nothing_found_is_none():
    assert attribute([], step_failed=False) is NONE
    assert NONE.to_dict()["anomaly"] == "NONE" and NONE.to_dict()["action"] == "NONE"


def test_bad_health_blames_and_excludes_that_node_even_when_the_log_is_vague():
    f = finding("srun.task_exit", rank=0, nodes=("node1",), trigger=Trigger.AT_EXIT)
    health = [HealthFault("node2", "gpu0.ecc_uncorrected_volatile", Component.GPU, "3 uncorrectable errors")]
    a = attribute([f], health=health, allocation=["node1", "node2"])
    assert (a.component, a.action, a.nodes) == (Component.GPU, Action.EXCLUDE_NODE_AND_REQUEUE, ("node2",))
    assert a.confidence == 0.9
    assert any(e["rule"] == "health.gpu0.ecc_uncorrected_volatile" for e in a.evidence)


def test_health_and_log_agreeing_is_the_most_confident():
    f = finding("cuda_ecc_uncorrectable", Action.EXCLUDE_NODE_AND_REQUEUE, Component.GPU, rank=1, nodes=("node2",))
    health = [HealthFault("node2", "gpu0.recovery_action", Component.GPU, "GPU_RESET")]
    assert attribute([f], health=health).confidence == 0.95


def test_health_outside_the_allocation_is_ignored():
    f = finding("nccl_error", rank=0, nodes=("node1",))
    health = [HealthFault("node9", "gpu0.ecc", Component.GPU, "bad")]
    a = attribute([f], health=health, allocation=["node1", "node2"])
    assert "node9" not in a.nodes and a.action == Action.REQUEUE


def test_deterministic_error_blames_the_application_and_no_node():
    f = finding("python_import_error", Action.STOP, rank=3, nodes=("node2",), trigger=Trigger.AT_EXIT)
    a = attribute([f, finding("srun.task_killed", Action.EXCLUDE_NODE_AND_REQUEUE, nodes=("node2",))])
    assert (a.component, a.action, a.nodes, a.ranks) == (Component.APPLICATION, Action.STOP, (), (3,))


def test_exclusion_needs_a_node_of_the_allocation():
    f = finding("nccl_ib_completion_error", Action.EXCLUDE_NODE_AND_REQUEUE, Component.NETWORK, rank=5)
    a = attribute([f], rank_nodes={5: "node3"})
    assert a.action == Action.REQUEUE and a.nodes == ()   # the finding named no node


def test_nccl_timeouts_point_at_the_rank_that_never_reached_the_collective():
    timeouts = [finding("nccl_watchdog_timeout", anomaly=Anomaly.HANG, component=Component.NETWORK, rank=r, t=10 + r)
                for r in (0, 1, 2)]
    a = attribute(timeouts, rank_nodes={0: "node1", 1: "node1", 2: "node2", 3: "node2"})
    assert a.nodes == ("node2",) and a.ranks == (3,)
    assert a.action == Action.REQUEUE          # blamed, not excluded without health evidence
    assert a.confidence == 0.6


def test_nccl_timeout_is_never_the_cause_when_a_rank_reported_a_real_error():
    timeouts = [finding("nccl_watchdog_timeout", anomaly=Anomaly.HANG, component=Component.NETWORK, rank=r, t=20)
                for r in (0, 1)]
    cause = finding("cuda_ecc_uncorrectable", Action.EXCLUDE_NODE_AND_REQUEUE, Component.GPU, rank=3,
                    nodes=("node2",), t=5)
    a = attribute(timeouts + [cause], rank_nodes={0: "node1", 1: "node1", 2: "node2", 3: "node2"})
    assert (a.component, a.action, a.nodes) == (Component.GPU, Action.EXCLUDE_NODE_AND_REQUEUE, ("node2",))


def test_nccl_timeout_everywhere_blames_nobody():
    timeouts = [finding("nccl_watchdog_timeout", anomaly=Anomaly.HANG, component=Component.NETWORK, rank=r)
                for r in (0, 1)]
    a = attribute(timeouts, rank_nodes={0: "node1", 1: "node2"})
    assert a.nodes == () and a.action == Action.REQUEUE and a.confidence == 0.4


def test_a_specific_line_beats_the_traceback_that_carries_it(rules):
    text = (LOGS / "cuda_illegal_memory_access.log").read_text().splitlines()
    a = analyze_lines(text, rules)
    assert a.evidence[0]["rule"] == "cuda_illegal_memory_access"


def test_healthy_logs_analyse_to_none(rules):
    for name in ("megatron_iterations.log", "nccl_info.log", "clip_grad_norm_warning.log"):
        assert analyze_lines((LOGS / name).read_text().splitlines(), rules).to_dict()["anomaly"] == "NONE", name


def test_plain_excerpt_without_prefixes_or_timestamps(rules):
    a = analyze_lines(["some setup", "torch.OutOfMemoryError: CUDA out of memory. Tried to alloc"], rules)
    d = a.to_dict()
    assert (d["anomaly"], d["component"], d["action"]) == ("CRASH", "APPLICATION", "STOP")
    assert d["evidence"] == [{"line": 2, "text": "torch.OutOfMemoryError: CUDA out of memory. Tried to alloc",
                              "rule": "cuda_oom"}]


def test_rank_marks_name_the_node(rules):
    lines = ["0: [ajr] rank 0 node node1 pid 1", "1: [ajr] rank 1 node node7 pid 2",
             "1: RuntimeError: CUDA error: uncorrectable ECC error encountered"]
    d = analyze_lines(lines, rules).to_dict()
    assert d["nodes"] == ["node7"] and d["ranks"] == [1] and d["action"] == "EXCLUDE_NODE_AND_REQUEUE"


def test_cli_json_is_exactly_one_object(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("3: Rank3: (1) segmentation fault: artificial segfault\n")
    proc = subprocess.run([sys.executable, "-m", "ajr_supervisor", "analyze", "--json", str(log)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert set(d) >= {"anomaly", "component", "action", "nodes", "ranks", "evidence", "confidence"}
    assert d["anomaly"] == "CRASH" and d["ranks"] == [3] and 0.0 <= d["confidence"] <= 1.0


def test_cli_missing_file_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ajr_supervisor", "analyze", str(tmp_path / "nope.log")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("ajr: error: ") and proc.stderr.count("\n") == 1


def test_kernel_log_xids_blame_their_node(tmp_path):
    kernel = Path(__file__).resolve().parents[1] / "data" / "kernel" / "xid79_sxid_nvswitch.log"
    proc = subprocess.run([sys.executable, "-m", "ajr_supervisor", "analyze", "--json", "--kernel-log", str(kernel),
                           "--node", "node7", str(LOGS / "cuda_unknown_error.log")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["action"] == "EXCLUDE_NODE_AND_REQUEUE" and d["nodes"] == ["node7"]
    assert any(e["rule"] == "health.xid:0000:91:00" and "Xid 79" in e["text"] for e in d["evidence"])


def test_application_xid_blames_no_node(rules):
    from ajr_supervisor.analysis import xid_faults
    from ajr_supervisor.health.xid import parse_xid_line

    event = parse_xid_line("NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, name=python, Graphics Exception")
    assert xid_faults([event], "node1") == []
