"""The lab is a real Slurm cluster: multi-node jobs, requeue cycles, accounting, hooks, recovery."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from ajr_supervisor.lab import Lab, LabSpec
from ajr_supervisor.lab import host
from ajr_supervisor.slurm import expand_hostlist

from tests.cluster.helpers import read, wait_for


def test_two_node_job_has_rank_prefixed_lines_from_two_hosts(jobs, slurm, job_dir):
    out = job_dir / "out.log"
    job_id = jobs("-N2", "--ntasks-per-node=1", f"--chdir={job_dir}", f"--output={out}",
                  "--wrap", "srun -l -u bash -c 'echo host=$(hostname) addr=$(hostname -I)'")
    wait_for(lambda: slurm.show_job(job_id).base_state == "COMPLETED", 30, "the job to complete")
    lines = re.findall(r"^(\d+): host=(\S+) addr=(\S+)", read(out), re.M)
    assert sorted(r for r, _, _ in lines) == ["0", "1"]
    hosts = {h for _, h, _ in lines}
    assert len(hosts) == 2 and hosts <= {"node1", "node2", "node3", "node4"}
    addrs = {a for _, _, a in lines}
    assert len(addrs) == 2 and all(a.startswith("10.78.0.") for a in addrs)


def test_requeuehold_exclude_release_cycle(jobs, slurm, job_dir, capsys):
    out = job_dir / "out.log"
    script = job_dir / "job.sh"
    script.write_text("#!/bin/bash\n"
                      "srun -l -u bash -c 'echo attempt=${SLURM_RESTART_COUNT:-0} host=$(hostname); sleep 120'\n")
    job_id = jobs("-N2", "--ntasks-per-node=1", "--requeue", "--open-mode=append",
                  f"--output={out}", str(script))
    wait_for(lambda: read(out).count("attempt=0") == 2, 30, "attempt 0 on both nodes")
    first = slurm.show_job(job_id)
    first_nodes = expand_hostlist(first.nodes)
    bad = first_nodes[0]

    t0 = time.monotonic()
    slurm.requeuehold(job_id)
    held = wait_for(lambda: (j := slurm.show_job(job_id)).held and j.base_state == "PENDING" and j,
                    30, "the job to be held")
    assert held.restarts == 1
    slurm.set_excluded_nodes(job_id, [bad])
    slurm.release(job_id)
    wait_for(lambda: "attempt=1" in read(out), 60, "the second attempt's first line", interval_s=0.02)
    cycle_s = time.monotonic() - t0

    second = slurm.show_job(job_id)
    assert second.restarts == 1
    assert second.exc_nodes == bad
    assert bad not in expand_hostlist(second.nodes)
    hosts = re.findall(r"attempt=1 host=(\S+)", read(out))
    assert hosts and bad not in hosts
    with capsys.disabled():
        print(f"\nrequeuehold -> release -> first line of next attempt: {cycle_s:.2f} s "
              f"(cred_expire={slurm_cred_expire(slurm)})")


def slurm_cred_expire(slurm) -> str:
    m = re.search(r"cred_expire=(\d+)", Path(slurm.conf).read_text())
    return m.group(1) if m else "?"


def test_sacct_lists_the_requeued_run(jobs, slurm, job_dir):
    out = job_dir / "out.log"
    job_id = jobs("-N1", "--requeue", "--open-mode=append", f"--output={out}",
                  "--wrap", "echo run=${SLURM_RESTART_COUNT:-0}; sleep 2")
    wait_for(lambda: "run=0" in read(out), 30, "the first run")
    slurm.requeue(job_id)
    wait_for(lambda: slurm.show_job(job_id).base_state == "COMPLETED", 60, "the second run to complete")

    def runs():
        rows = [r for r in slurm.sacct(job_id) if r["JobID"] == job_id]
        return rows if [r["State"] for r in rows] == ["REQUEUED", "COMPLETED"] else None

    wait_for(runs, 20, "sacct to show REQUEUED then COMPLETED")


def test_drain_and_resume(lab, slurm):
    node = lab.spec.node_names[-1]
    slurm.drain(node, "ajr test: drain")
    try:
        row = wait_for(lambda: next((r for r in slurm.sinfo() if r.node == node and "drain" in r.state), None),
                       10, "the node to drain")
        assert row.reason == "ajr test: drain"
        assert not next(n for n in slurm.show_nodes(node) if n.name == node).usable
    finally:
        slurm.resume(node)
    wait_for(lambda: any(r.node == node and r.state == "idle" for r in slurm.sinfo()), 10, "the node to resume")


def test_hooks_run_for_every_node_and_for_slurmctld(lab, jobs, slurm, job_dir):
    job_id = jobs("-N2", f"--output={job_dir / 'o'}", "--wrap", "srun true")
    wait_for(lambda: slurm.show_job(job_id).base_state == "COMPLETED", 30, "the job to complete")

    def lines(kind):
        return [ln for ln in read(lab.spec.hook_log).splitlines()
                if f" ajr {kind} " in ln and f"SLURM_JOB_ID={job_id} " in ln + " "]

    wait_for(lambda: len(lines("prolog")) == 2 and len(lines("node-epilog")) == 2 and lines("epilog"),
             15, "prolog and epilog lines on both nodes and the EpilogSlurmctld line")
    nodes = {re.search(r"SLURMD_NODENAME=(\S+)", ln).group(1) for ln in lines("prolog")}
    assert nodes == set(expand_hostlist(slurm.show_job(job_id).nodes))


def test_up_twice_is_harmless(lab):
    assert lab.up() == 0.0
    assert lab.is_up()


def test_cli_status_and_env(lab):
    run = lambda *a: subprocess.run([sys.executable, "-m", "ajr_supervisor", "lab", *a, "--dir",
                                     str(lab.spec.root)], capture_output=True, text=True, timeout=60)
    status = run("status")
    assert status.returncode == 0, status.stderr
    assert "slurmctld" in status.stdout and "node4" in status.stdout
    env = run("env")
    assert env.stdout.strip() == f"export SLURM_CONF={lab.spec.slurm_conf}"


def test_up_recovers_from_a_lab_killed_from_outside(tmp_path):
    """CI ends our processes but not our namespaces: `up` must clean up and start again."""
    spec = LabSpec(root=tmp_path / "lab2", name="ajrtwo", nodes=2, subnet="10.79.0", ctld_port=6837)
    lab = Lab(spec)
    try:
        lab.up()
        pids = [d.pid for d in lab.daemons()]
        for pid in pids:
            host._kill(pid, 9)
        wait_for(lambda: not any(host.alive(p) for p in pids), 10, "the daemons to die")
        assert spec.netns(1) in host.netns_list()  # the leftovers are there
        seconds = lab.up()
        assert seconds > 0 and lab.is_up()
        assert all(d.running and d.pid not in pids for d in lab.daemons())
    finally:
        lab.down()
    assert not [n for n in host.netns_list() if n.startswith("ajrtwo-")]
    assert not [link for link in host.link_names() if link.startswith("ajrtwo-")]
    assert not any(d.running for d in lab.daemons())


def test_port_in_use_is_one_clear_error(tmp_path):
    import socket

    import pytest

    from ajr_supervisor.lab import LabError

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = LabSpec(root=tmp_path / "lab3", name="ajrthree", nodes=1, subnet="10.80.0", ctld_port=port)
        with pytest.raises(LabError, match=f"port {port} \\(for slurmctld\\) is already in use"):
            Lab(spec).up()
    assert not [n for n in host.netns_list() if n.startswith("ajrthree-")]
