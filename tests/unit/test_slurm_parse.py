"""Parsers over real output captured from the lab (tests/data/slurm/)."""

import pytest

from ajr_supervisor.slurm import (expand_hostlist, parse_jobs, parse_key_values, parse_nodes,
                                  parse_sacct, parse_sinfo, parse_squeue)


def test_running_job(slurm_data):
    [job] = parse_jobs(slurm_data("show_job_running.txt"))
    assert job.job_id == "1"
    assert job.name == "wrap"
    assert job.user == "root"
    assert job.state == "RUNNING"
    assert job.nodes == "node[1-2]"
    assert job.batch_host == "node1"
    assert job.num_nodes == 2
    assert job.restarts == 0
    assert job.requeue is True
    assert job.exc_nodes == ""
    assert job.held is False
    # The comment holds spaces and is followed by two spaces then StdErr=.
    assert job.comment == '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'
    assert job.fields["StdErr"] == "/tmp/j/job-1.out"
    assert job.fields["WorkDir"] == "/tmp/j"
    assert job.fields["NtasksPerN:B:S:C"] == "0:0:*:*"


def test_requeuehold_is_completing_then_held(slurm_data):
    [completing] = parse_jobs(slurm_data("show_job_requeuehold_completing.txt"))
    assert completing.reason == "job_requeued_in_held_state"
    assert completing.restarts == 1
    [held] = parse_jobs(slurm_data("show_job_held.txt"))
    assert held.state == "PENDING"
    assert held.priority == 0
    assert held.held is True
    assert held.restarts == 1


def test_excluded_then_requeued_running(slurm_data):
    [held] = parse_jobs(slurm_data("show_job_held_excluded.txt"))
    assert held.exc_nodes == "node1"
    [released] = parse_jobs(slurm_data("show_job_released_pending.txt"))
    assert released.held is False
    assert released.state == "PENDING"
    [running] = parse_jobs(slurm_data("show_job_requeued_running.txt"))
    assert running.state == "RUNNING"
    assert running.restarts == 1
    assert running.exc_nodes == "node1"
    assert "node1" not in expand_hostlist(running.nodes)


def test_node_fail_requeue(slurm_data):
    [job] = parse_jobs(slurm_data("show_job_node_fail_requeued.txt"))
    assert job.state == "PENDING"
    assert job.restarts == 1
    assert job.held is False


def test_many_jobs_with_arrays(slurm_data):
    jobs = parse_jobs(slurm_data("show_job_mixed.txt"))
    assert len(jobs) == 5
    array = [j for j in jobs if j.fields.get("ArrayJobId") == "2"]
    assert sorted(j.fields["ArrayTaskId"] for j in array) == ["0", "1", "2"]
    states = {j.job_id: j.state for j in jobs}
    assert states["1"] == "CANCELLED"
    assert states["3"] == "COMPLETED"
    by_task = {j.fields["ArrayTaskId"]: j for j in array}
    assert by_task["2"].state == "FAILED" and by_task["2"].exit_code == "3:0"
    assert by_task["0"].state == "RUNNING" and by_task["0"].exit_code == "0:0"


def test_nodes_down_and_drained(slurm_data):
    nodes = {n.name: n for n in parse_nodes(slurm_data("show_node_down_drain.txt"))}
    assert set(nodes) == {"node1", "node2", "node3", "node4"}
    assert nodes["node1"].usable
    assert nodes["node1"].addr == "10.77.0.11"
    assert nodes["node1"].cpus == 2
    assert nodes["node3"].state == "IDLE+DRAIN"
    assert "DRAIN" in nodes["node3"].flags
    assert nodes["node3"].reason.startswith("ajr: Xid 79 on GPU 0000:3b:00.0")
    assert not nodes["node3"].usable
    assert nodes["node4"].base_state == "DOWN"
    assert "NOT_RESPONDING" in nodes["node4"].flags
    assert not nodes["node4"].usable


def test_node_not_responding_reason(slurm_data):
    [node] = parse_nodes(slurm_data("show_node_down_not_responding.txt"))
    assert node.reason.startswith("Not responding [root@")
    assert node.fields["NodeHostName"] == "node2"


def test_sinfo(slurm_data):
    rows = {r.node: r for r in parse_sinfo(slurm_data("sinfo_down_drain.txt"))}
    assert rows["node1"].state == "idle" and rows["node1"].reason == ""
    assert rows["node1"].default_partition
    assert rows["node3"].state == "drained"
    assert rows["node3"].reason == "ajr: Xid 79 on GPU 0000:3b:00.0"
    assert rows["node4"].state == "down*"


def test_squeue(slurm_data):
    rows = {r.job_id: r for r in parse_squeue(slurm_data("squeue_all.txt"))}
    assert rows["1"].comment == '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'
    assert rows["3"].comment == ""
    assert rows["2_1"].state == "FAILED" and rows["2_1"].reason == "NonZeroExitCode"
    assert rows["6"].state == "PENDING" and rows["6"].nodes == ""


def test_squeue_comment_may_hold_the_separator():
    [row] = parse_squeue('7|train|alice|RUNNING|None|lab|node1|{"APS": {}, "note": "a|b"}\n')
    assert row.comment == '{"APS": {}, "note": "a|b"}'


def test_squeue_rejects_short_lines():
    with pytest.raises(ValueError, match="expected 8"):
        parse_squeue("7|train|alice\n")


def test_comment_with_key_value_text_inside():
    line = ('JobId=9 JobName=x UserId=bob(1000) JobState=RUNNING Reason=None '
            'Comment={"APS": {}} note Foo=bar  StdErr=/tmp/o StdIn=/dev/null StdOut=/tmp/o Power=')
    f = parse_key_values(line)
    assert f["Comment"] == '{"APS": {}} note Foo=bar'
    assert f["StdErr"] == "/tmp/o"
    assert f["Power"] == ""


def test_sacct():
    text = "6|job|REQUEUED|0:0|node[1-2]\n6|job|COMPLETED|0:0|node[2-3]\n"
    rows = parse_sacct(text, ("JobID", "JobName", "State", "ExitCode", "NodeList"))
    assert [r["State"] for r in rows] == ["REQUEUED", "COMPLETED"]


@pytest.mark.parametrize("expr,expected", [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("node[1,3-4],gpu01", ["node1", "node3", "node4", "gpu01"]),
    ("n[08-10]", ["n08", "n09", "n10"]),
    ("rack[1-2]-gpu", ["rack1-gpu", "rack2-gpu"]),
    ("", []),
])
def test_expand_hostlist(expr, expected):
    assert expand_hostlist(expr) == expected


@pytest.mark.parametrize("bad", ["node[1-", "node[a-b]", "node[3-1]", "node]1["])
def test_expand_hostlist_errors_name_the_fragment(bad):
    with pytest.raises(ValueError, match="host list|range"):
        expand_hostlist(bad)


def test_sacct_lists_every_run_of_a_requeued_job(slurm_data):
    rows = parse_sacct(slurm_data("sacct_requeued.txt"),
                       ("JobID", "JobName", "State", "ExitCode", "NodeList", "Start", "End", "Elapsed"))
    runs = [r for r in rows if r["JobID"] == "1"]
    assert [(r["State"], r["NodeList"]) for r in runs] == [("REQUEUED", "node[1-2]"),
                                                           ("COMPLETED", "node[2-3]")]
