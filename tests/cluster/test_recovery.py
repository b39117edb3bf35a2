"""`ajr run` on the real lab: the recovery loop end to end, checked from Slurm and the state file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


from ajr_supervisor.state import StateStore
from ajr_supervisor.slurm import expand_hostlist
from tests.cluster.helpers import AJR, FINAL, REPO, final_job, read, state, wait_for

def test_ajr_verification_requeue_then_stop(run_job, slurm, job_dir):
    """AJR's own install-guide test with max_requeue_times 1: crash, requeue once, crash, stop."""
    body = (REPO / "slurm_examples" / "ajr_verification_requeue.sh").read_text().split("\n", 1)[1]
    body = re.sub(r"^#SBATCH.*\n", "", body, flags=re.M)
    job_id = run_job(body, aps={"auto_resume_mode": "requeue", "max_requeue_times": 1})
    job = final_job(slurm, job_id)
    assert job.restarts == 1
    rec = state(job_dir, job_id)
    assert [a.attempt for a in rec.attempts] == [0, 1]
    first, second = rec.attempts
    assert first.decision["verdict"] == "REQUEUE" and first.decision["finding"]["rule_id"] == "segfault"
    assert [a["action"] for a in first.actions] == ["requeuehold", "release"]
    assert all(a["ok"] for a in first.actions)
    assert second.decision["verdict"] == "STOP" and "requeue limit reached (1 of 1" in second.decision["reason"]
    assert second.actions == []
    assert rec.final["verdict"] == "STOP"
    out = read(job_dir / "batch.out")
    assert out.count("decision REQUEUE") == 1 and out.count("decision STOP") == 1
    # We acted at the line, without waiting for the 30 s sleep to end.
    assert first.ended_at - first.started_at < 10 and second.ended_at - second.started_at < 10


def test_crash_by_exit_code_is_requeued_and_resumes(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 12 --step-s 0.05 --ckpt-dir "$CK" --ckpt-every 4 \\
            --fail-at 7 --fail-mode exit:3 --fail-attempt 0
        """)
    job = final_job(slurm, job_id)
    assert job.base_state == "COMPLETED" and job.restarts == 1
    rec = state(job_dir, job_id)
    first, second = rec.attempts
    assert first.decision["verdict"] == "REQUEUE"
    assert "exited with code 3" in first.decision["reason"]
    assert [c["iteration"] for c in first.checkpoints] == [4]
    assert second.decision["verdict"] == "NONE" and second.end_reason == "success"
    second_log = read(Path(second.log_path))
    assert "resuming from checkpoint iteration 4" in second_log and "training finished: 12 iterations" in second_log


def test_killed_by_signal_on_one_node_excludes_it(run_job, slurm, job_dir):
    """The real trainer: rank 1's node loses its process to SIGKILL; the job resumes elsewhere."""
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 16 --step-s 0.05 --ckpt-dir "$CK" --ckpt-every 5 \\
            --fail-at 8 --fail-rank 1 --fail-mode signal:KILL --fail-attempt 0
        """)
    job = final_job(slurm, job_id)
    assert job.base_state == "COMPLETED" and job.restarts == 1
    rec = state(job_dir, job_id)
    first, second = rec.attempts
    bad = first.rank_nodes["1"]
    assert first.decision["verdict"] == "EXCLUDE_AND_REQUEUE"
    assert first.decision["exclude"] == [bad]
    assert rec.excluded_nodes == [bad]
    assert job.exc_nodes == bad
    assert bad not in second.nodes and bad not in expand_hostlist(job.nodes)
    second_log = read(Path(second.log_path))
    assert "resuming from checkpoint iteration 5" in second_log
    assert "training finished: 16 iterations" in second_log


def test_hang_is_detected_and_requeued(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 10 --step-s 0.05 --ckpt-dir "$CK" --ckpt-every 3 \\
            --fail-at 5 --fail-mode hang --fail-attempt 0
        """, aps={"hang_timeout_s": 3})
    job = final_job(slurm, job_id)
    assert job.base_state == "COMPLETED" and job.restarts == 1
    first, second = state(job_dir, job_id).attempts
    assert first.decision["verdict"] == "REQUEUE"
    assert first.decision["finding"]["anomaly"] == "HANG"
    # the evidence taken before the kill: py-spy stacks of both ranks, naming the trainer's frames
    assert sorted(first.stacks) == ["0", "1"]
    assert all("train.py" in dump for dump in first.stacks.values()), first.stacks
    assert 3 <= first.ended_at - first.started_at < 15
    assert second.end_reason == "success"


def test_completed_job_gets_no_action(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 5 --step-s 0.02 --ckpt-dir "$CK" --ckpt-every 2
        """)
    job = final_job(slurm, job_id)
    assert job.base_state == "COMPLETED" and job.restarts == 0 and job.exit_code == "0:0"
    [only] = state(job_dir, job_id).attempts
    assert only.decision["verdict"] == "NONE" and only.actions == [] and only.exit_code == 0
    assert [c["iteration"] for c in only.checkpoints] == [2, 4, 5]


def test_scancel_is_not_requeued(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 400 --step-s 0.05 --ckpt-dir "$CK"
        """)
    wait_for(lambda: "iteration        3/" in read(job_dir / "batch.out") + "".join(
        read(p) for p in job_dir.glob("t_*.log")), 30, "the training to run")
    slurm.scancel(job_id)
    job = final_job(slurm, job_id)
    assert job.base_state == "CANCELLED" and job.restarts == 0
    [only] = wait_for(lambda: (r := state(job_dir, job_id)).attempts[0].ended_at and r.attempts, 10,
                      "the supervisor to record the end")
    # Which comes first, our SIGTERM or srun's exit with the CANCELLED line, is a race: both mean
    # "ended by Slurm or the user", neither counts as a failure.
    assert only.decision["verdict"] == "NONE" and only.actions == []
    assert only.end_reason in ("terminated", "cancelled") and not only.failed


def test_deterministic_error_stops_after_one_attempt(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" -c "print('loading model'); import apex_fused_layer_norm_missing"
        echo "ajr exit $?"
        """)
    job = final_job(slurm, job_id)
    assert job.restarts == 0
    rec = state(job_dir, job_id)
    [only] = rec.attempts
    assert only.decision["verdict"] == "STOP"
    assert only.decision["finding"]["rule_id"] == "python_import_error"
    assert only.decision["attribution"]["nodes"] == [] and only.decision["exclude"] == []   # no node blamed
    assert rec.final["verdict"] == "STOP"
    assert "ajr exit 79" in read(job_dir / "batch.out")


def test_crash_loop_without_checkpoints_stops(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 50 --step-s 0.02 --ckpt-dir "$CK" --no-ckpt \\
            --fail-at 3 --fail-mode exit:2
        """, aps={"max_requeue_times": 10}, config="crash_loop_attempts: 2\n")
    job = final_job(slurm, job_id, timeout_s=120)
    assert job.restarts == 1
    rec = state(job_dir, job_id)
    assert [a.decision["verdict"] for a in rec.attempts] == ["REQUEUE", "STOP"]
    assert "crash loop: 2 attempts in a row failed without a new checkpoint" in rec.final["reason"]


def test_checkpointing_job_is_not_stopped_by_the_crash_loop_rule(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 100 --step-s 0.02 --ckpt-dir "$CK" --ckpt-every 2 \\
            --fail-after 3 --fail-mode exit:2
        """, aps={"max_requeue_times": 3}, config="crash_loop_attempts: 2\n")
    job = final_job(slurm, job_id, timeout_s=150)
    assert job.restarts == 3
    rec = state(job_dir, job_id)
    assert [a.decision["verdict"] for a in rec.attempts] == ["REQUEUE", "REQUEUE", "REQUEUE", "STOP"]
    assert all(a.checkpoints for a in rec.attempts)
    assert "requeue limit reached (3 of 3 used)" in rec.final["reason"]


def test_dry_run_changes_nothing(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 8 --step-s 0.05 --ckpt-dir "$CK" \\
            --fail-at 4 --fail-rank 1 --fail-mode signal:KILL
        """, env={"APS_DRY_RUN": "true"})
    # Nothing changes, so the surviving rank waits for its dead peer, as it would without ajr.
    out = wait_for(lambda: "dry run: nothing changed" in (o := read(job_dir / "batch.out")) and o, 60,
                   "the dry-run decision")
    job = slurm.show_job(job_id)
    assert job.restarts == 0 and job.base_state == "RUNNING" and job.exc_nodes == ""
    assert re.search(r"would run: scontrol requeuehold " + job_id + r"\b", out)
    assert "would run: scontrol update JobId=" + job_id + " ExcNodeList=" in out
    assert "would run: scontrol release " + job_id in out
    [only] = state(job_dir, job_id).attempts
    assert only.decision["dry_run"] is True and only.decision["verdict"] == "EXCLUDE_AND_REQUEUE"
    assert state(job_dir, job_id).excluded_nodes == []


def test_bad_comment_runs_unsupervised_with_one_clear_line(jobs, slurm, job_dir):
    script = job_dir / "job.sh"
    script.write_text(f"#!/bin/bash\n{AJR} run -- {sys.executable} -c 'print(\"trained\")'\n")
    job_id = jobs("-N1", f"--chdir={job_dir}", f"--output={job_dir}/batch.out",
                  '--comment={"APS": {"max_requeue_times": -1}}', str(script))
    job = final_job(slurm, job_id)
    assert job.base_state == "COMPLETED"
    out = read(job_dir / "batch.out")
    lines = [ln for ln in out.splitlines() if ln.startswith("ajr:")]
    assert len(lines) == 1 and "runs WITHOUT supervision" in lines[0] and "max_requeue_times" in lines[0]
    logs = list(job_dir.glob("job.sh_*_date_*_time_*.log"))
    assert len(logs) == 1 and "trained" in read(logs[0])


def test_epilog_finishes_when_the_supervisor_was_killed(run_job, slurm, job_dir):
    """The backstop: the supervisor dies, the training fails later; EpilogSlurmctld requeues it."""
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 30 --step-s 0.1 --ckpt-dir "$CK" --ckpt-every 5 \\
            --fail-at 20 --fail-mode exit:5 --fail-attempt 0 &
        if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
            sleep 1.5; kill -9 $!                          # the supervisor dies, srun goes on
            while pgrep -f -- "--ckpt-dir $CK" >/dev/null; do sleep 0.2; done
            exit 5
        fi
        wait $!
        """, nodes=1)
    # The first attempt ends FAILED; the epilog's detached child requeues it moments later.
    job = wait_for(lambda: (j := slurm.show_job(job_id)).restarts >= 1 and j.base_state in FINAL and j,
                   120, "the requeued attempt to finish")
    assert job.base_state == "COMPLETED" and job.restarts == 1
    rec = state(job_dir, job_id)
    first, second = rec.attempts
    assert first.decision["by"] == "epilog" and first.decision["verdict"] == "REQUEUE"
    assert "exited with code 5" in first.decision["reason"]
    assert second.end_reason == "success"


def test_attach_follows_the_scripts_own_srun_log(run_job, slurm, job_dir):
    """`ajr run --attach LOG` beside a script's own `srun --output=LOG`: acts at the fatal line."""
    job_id = run_job("""
        LOG="$PWD/own_${SLURM_JOB_ID}.log"
        "$AJR" run --attach "$LOG" &
        srun -l -u --kill-on-bad-exit=1 --open-mode=append --output="$LOG" bash -c '
            echo "attempt ${SLURM_RESTART_COUNT:-0} on $(hostname)"
            if [ "${SLURM_RESTART_COUNT:-0}" = 0 ] && [ "$SLURM_PROCID" = 0 ]; then
                echo "Rank0: (1) segmentation fault: artificial segfault"; sleep 30
            fi
            sleep 1'
        wait
        """)
    job = wait_for(lambda: (j := slurm.show_job(job_id)).restarts >= 1 and j.base_state in FINAL and j,
                   60, "the second attempt to finish")
    assert job.base_state == "COMPLETED" and job.restarts == 1
    rec = state(job_dir, job_id)
    first, second = rec.attempts
    assert first.decision["verdict"] == "REQUEUE" and first.decision["finding"]["rule_id"] == "segfault"
    assert first.log_path == str(job_dir / f"own_{job_id}.log")
    assert first.ended_at - first.started_at < 15
    assert second.decision is None  # ended on its own; the exit is EpilogSlurmctld's to judge
    assert "no step of the job runs any more" in read(job_dir / "batch.out")


def test_fast_restart_from_the_epilog(lab, run_job, slurm, job_dir, capsys):
    """fast_restart (admin setting, read by EpilogSlurmctld): StartTime=now+1 once PENDING."""
    lab.spec.ajr_conf.write_text("fast_restart: true\n")
    try:
        job_id = run_job("""
            "$AJR" run -- bash -c 'echo "start ${SLURM_RESTART_COUNT:-0} $(date +%s.%N)"
                if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 0.5; exit 3; fi'
            """)
        job = wait_for(lambda: (j := slurm.show_job(job_id)).restarts >= 1 and j.base_state in FINAL and j,
                       60, "the second attempt to finish")
    finally:
        lab.spec.ajr_conf.write_text("# fast_restart: true\n")
    assert job.base_state == "COMPLETED" and job.restarts == 1
    hook_lines = [ln for ln in read(lab.spec.hook_log).splitlines() if f"epilog-finish job {job_id}:" in ln]
    assert any("fast restart: StartTime=now+1" in ln for ln in hook_lines), hook_lines
    first, second = state(job_dir, job_id).attempts
    hold = next(a["at"] for a in first.actions if a["action"] == "requeuehold")
    starts = [float(m) for m in re.findall(r"start 1 (\d+\.\d+)", read(Path(second.log_path)))]
    with capsys.disabled():
        print(f"\nfast restart: requeuehold -> next attempt's first line {min(starts) - hold:.2f} s")


def test_partition_enrollment_without_a_comment(run_job, slurm, job_dir):
    job_id = run_job("""
        "$AJR" run -- bash -c 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then exit 4; fi; echo fine'
        """, aps=False, config="enroll_partitions: [lab]\n")
    job = wait_for(lambda: (j := slurm.show_job(job_id)).restarts >= 1 and j.base_state in FINAL and j,
                   60, "the requeued attempt to finish")
    assert job.base_state == "COMPLETED" and job.comment == ""
    rec = state(job_dir, job_id)
    assert rec.enrollment["source"] == "partition"
    assert [a.decision["verdict"] for a in rec.attempts] == ["REQUEUE", "NONE"]


def test_singleton_dependency_releases_the_next_held_job(jobs, run_job, slurm, job_dir):
    """AJR's deprecated mode: no requeue; the next job of the chain (same name, same user) is released."""
    nxt = jobs("-N1", "-H", "--job-name=chain", f"--chdir={job_dir}", f"--output={job_dir}/next.out",
               "--wrap", "echo next-ran")
    job_id = run_job("""
        "$AJR" run -- bash -c 'exit 6'
        """, aps={"auto_resume_mode": "singleton_dependency"}, nodes=1, name="chain")
    job = final_job(slurm, job_id)
    assert job.restarts == 0
    wait_for(lambda: slurm.show_job(nxt).base_state == "COMPLETED", 60, "the next job of the chain to run")
    assert "next-ran" in read(job_dir / "next.out")
    [only] = state(job_dir, job_id).attempts
    assert [(a["action"], a["detail"]) for a in only.actions] == [("release_next", nxt)]
    assert "singleton_dependency" in read(job_dir / "batch.out")  # the deprecation warning


def test_admin_mode_drains_behind_the_breaker_and_resumes_only_its_own(lab, run_job, slurm, job_dir):
    """drain: true in the epilog's config: the first excluded node is drained with ajr's reason; the
    breaker (1 per hour) refuses the second; `ajr drain resume` undoes the first."""
    ledger = job_dir / "drains.json"
    lab.spec.ajr_conf.write_text(f"drain: true\ndrain_max_per_hour: 1\ndrain_max_fraction: 0.5\n"
                                 f"drain_ledger: {ledger}\n")
    body = """
        "$AJR" run -- "$PY" "$TRAIN" --iters 12 --step-s 0.05 --ckpt-dir "$CK" --ckpt-every 4 \\
            --fail-at 5 --fail-rank 1 --fail-mode signal:KILL --fail-attempt 0
        """
    drained = []
    try:
        first = run_job(body)
        wait_for(lambda: (j := slurm.show_job(first)).restarts >= 1 and j.base_state in FINAL and j,
                       90, "the first job to finish")
        bad = state(job_dir, first).attempts[0].decision["exclude"][0]
        node = wait_for(lambda: next((n for n in slurm.show_nodes(bad) if "DRAIN" in n.flags), None), 20,
                        f"{bad} to be drained")
        drained.append(bad)
        assert node.reason.startswith("ajr: UNKNOWN: srun: error: ") and bad in node.reason
        drain_action = [a for a in state(job_dir, first).attempts[0].actions if a["action"] == "drain"]
        assert drain_action and drain_action[0]["ok"]

        (job_dir / "ckpt").rename(job_dir / "ckpt-first")
        second = run_job(body)
        wait_for(lambda: (j := slurm.show_job(second)).restarts >= 1 and j.base_state in FINAL and j,
                 90, "the second job to finish")
        rec = wait_for(lambda: (r := state(job_dir, second)) and any(
            a["action"] == "drain" for a in r.attempts[0].actions) and r, 20, "the breaker's answer")
        other = rec.attempts[0].decision["exclude"][0]
        refused = [a for a in rec.attempts[0].actions if a["action"] == "drain"][0]
        assert not refused["ok"] and "breaker" in refused["detail"]
        assert not [n for n in slurm.show_nodes(other) if "DRAIN" in n.flags]
        proc = subprocess.run([AJR, "drain", "resume", bad], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "SLURM_CONF": str(lab.spec.slurm_conf),
                                   "AJR_CONFIG": str(lab.spec.ajr_conf)})
        assert proc.returncode == 0 and proc.stdout.strip() == f"{bad} resumed", proc.stderr
        drained.clear()
        proc = subprocess.run([AJR, "drain", "resume", other], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "SLURM_CONF": str(lab.spec.slurm_conf),
                                   "AJR_CONFIG": str(lab.spec.ajr_conf)})
        assert proc.returncode == 1 and "was not drained by ajr" in proc.stderr
    finally:
        lab.spec.ajr_conf.write_text("# fast_restart: true\n")
        for n in drained:
            slurm.resume(n)


HEALTHY_GPU = {"pci": "0000:3b:00.0", "uuid": "GPU-11111111-2222-3333-4444-555555555555", "recovery_action": 0,
               "ecc_uncorrected_volatile": 0, "ecc_uncorrected_aggregate": 0, "temperature": 45}


def fake_nvml(job_dir: Path, **overrides) -> str:
    """Healthy fake-NVML state for every lab node; returns the AJR_NVML_FAKE template (%n = node)."""
    for i in range(1, 5):
        (job_dir / f"nvml-node{i}.json").write_text(json.dumps({"gpus": [HEALTHY_GPU], **overrides}))
    return str(job_dir / "nvml-%n.json")


def test_bad_gpu_found_by_the_probe_is_excluded_not_the_node_that_logged(lab, run_job, slurm, job_dir):
    """Rank 0 fails with a vague CUDA error; meanwhile rank 1's GPU reports uncorrectable ECC errors
    (fake NVML). The probe during the settle blames rank 1's node, and only that node is excluded;
    in admin mode EpilogSlurmctld drains it with the GPU evidence as the reason."""
    lab.spec.ajr_conf.write_text(f"drain: true\ndrain_ledger: {job_dir / 'drains.json'}\n")
    try:
        _bad_gpu_case(run_job, slurm, job_dir)
    finally:
        lab.spec.ajr_conf.write_text("# fast_restart: true\n")
        for n in slurm.show_nodes():
            if "DRAIN" in n.flags and n.reason.startswith("ajr:"):
                slurm.resume(n.name)


def _bad_gpu_case(run_job, slurm, job_dir):
    template = fake_nvml(job_dir)
    bad_gpu = json.dumps({"gpus": [{**HEALTHY_GPU, "ecc_uncorrected_volatile": 2}]})
    job_id = run_job(f"""
        "$AJR" run -- bash -c '
            if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
                if [ "$SLURM_PROCID" = 1 ]; then echo '"'"'{bad_gpu}'"'"' > "$JOBDIR/nvml-$SLURMD_NODENAME.json"; sleep 30; fi
                sleep 0.3; echo "RuntimeError: CUDA error: unknown error"; exit 1
            fi
            echo "attempt ${{SLURM_RESTART_COUNT}} fine on $SLURMD_NODENAME"'
        """, env={"AJR_NVML_FAKE": template, "JOBDIR": str(job_dir)})
    job = wait_for(lambda: (j := slurm.show_job(job_id)).restarts >= 1 and j.base_state in FINAL and j,
                   90, "the requeued attempt to finish")
    assert job.base_state == "COMPLETED"
    first = state(job_dir, job_id).attempts[0]
    rank0, rank1 = first.rank_nodes["0"], first.rank_nodes["1"]
    assert first.decision["verdict"] == "EXCLUDE_AND_REQUEUE" and first.decision["exclude"] == [rank1]
    blame = first.decision["attribution"]
    assert blame["component"] == "GPU" and blame["nodes"] == [rank1] and rank0 not in blame["nodes"]
    checks = {c["name"]: c["state"] for c in first.health[rank1]["checks"]}
    assert checks["gpu0.ecc_uncorrected_volatile"] == "BAD"
    assert {c["state"] for c in first.health[rank0]["checks"]} <= {"GOOD", "UNKNOWN"}
    assert rank1 not in expand_hostlist(job.nodes) and job.exc_nodes == rank1
    node = wait_for(lambda: next((n for n in slurm.show_nodes(rank1) if "DRAIN" in n.flags), None), 20,
                    f"{rank1} to be drained")
    assert node.reason.startswith(f"ajr: GPU: node health is BAD on {rank1} (gpu0.ecc_uncorrected_volatile: ")


def test_hung_nvml_is_unknown_and_blames_nobody(run_job, slurm, job_dir):
    template = fake_nvml(job_dir, hang={"call": "nvmlDeviceGetTotalEccErrors", "seconds": 60})
    job_id = run_job("""
        "$AJR" run -- bash -c 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then exit 3; fi; echo fine'
        """, env={"AJR_NVML_FAKE": template}, config="nvml_timeout_s: 1\n")
    job = wait_for(lambda: (j := slurm.show_job(job_id)).restarts >= 1 and j.base_state in FINAL and j,
                   90, "the requeued attempt to finish")
    assert job.base_state == "COMPLETED" and job.exc_nodes == ""
    first = state(job_dir, job_id).attempts[0]
    assert first.decision["verdict"] == "REQUEUE" and first.decision["exclude"] == []
    for node, health in first.health.items():
        states = {c["name"]: (c["state"], c["detail"]) for c in health["checks"]}
        assert not [n for n, (s, _) in states.items() if s == "BAD"], (node, states)
        assert any(s == "UNKNOWN" and "timed out" in d for s, d in states.values()), (node, states)


def test_straggler_node_is_excluded_when_configured(run_job, slurm, job_dir):
    """The trainer runs 25% slower on node2 (its ranks keep in lockstep, so only their own step
    times show it); with straggler_action: exclude, node2 is excluded and the job requeued."""
    job_id = run_job("""
        "$AJR" run -- "$PY" "$TRAIN" --iters 200 --step-s 0.04 --ckpt-dir "$CK" --ckpt-every 10 \\
            --slow-node node2 --slow-factor 1.25
        """, nodes=3, config="straggler_action: exclude\n", extra=("--nodelist=node[1-3]",))
    rec = wait_for(lambda: (r := StateStore(job_dir / ".ajr").load(job_id)) and r.attempts
                   and r.attempts[0].decision and r, 90, "the straggler decision")
    first = rec.attempts[0]
    assert first.decision["verdict"] == "EXCLUDE_AND_REQUEUE", first.decision
    assert first.decision["finding"]["anomaly"] == "STRAGGLER" and first.decision["exclude"] == ["node2"]
    assert re.search(r"node node2 is 2\d\.\d% slower than its peers", first.decision["reason"])
    wait_for(lambda: slurm.show_job(job_id).exc_nodes == "node2", 30, "node2 to be excluded")
