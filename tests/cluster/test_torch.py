"""A real distributed PyTorch job (CPU, gloo, 2 lab nodes, the telemetry library) under ajr:
a slow node is excluded, a frozen rank is caught by the adaptive hang timeout, and a healthy run
with long silent checkpoint saves raises nothing."""

from __future__ import annotations

import re

import pytest

from tests.cluster.helpers import REPO, final_job, read, state, wait_for

pytest.importorskip("torch", reason="the PyTorch example needs torch (pip install torch==2.13.0)")

TORCH_DDP = REPO / "slurm_examples" / "torch_ddp.py"
# rank 0 waits for the other ranks at the file store; every rank writes telemetry lines
SCRIPT = """
    "$AJR" run -- "$PY" "$TORCH_DDP" --ckpt-dir "$CK" {args}
    """


def training_output(job_dir) -> str:
    """The unified logs of every attempt (ajr run writes one per attempt)."""
    return "".join(read(p) for p in sorted(job_dir.glob("ddp_*.log")))


def submit(run_job, args: str, config: str, env: dict | None = None) -> str:
    return run_job(SCRIPT.format(args=args), config=config, name="ddp",
                   env={"TORCH_DDP": str(TORCH_DDP), **(env or {})})


def test_slow_node_is_excluded_by_the_cost_model(run_job, slurm, job_dir):
    """node of rank 1 computes 15% longer; straggler_action auto (the default) excludes it because
    the rest of the run (400 steps) loses more than a restart costs here (1 s + work since the
    last checkpoint), and the next attempt resumes from the checkpoint on other nodes."""
    (job_dir / "pick_slow.sh").write_text(
        '[ -s slow ] || scontrol show hostnames "$SLURM_JOB_NODELIST" | tail -1 > slow\n')
    job_id = run_job(f"""
        cd {job_dir} && . ./pick_slow.sh
        "$AJR" run -- "$PY" "$TORCH_DDP" --ckpt-dir "$CK" --iters 400 --ckpt-every 10 --min-step-s 0.04 \\
            --slow-node "$(cat slow)" --slow-frac 0.15
        """, config="restart_cost_s: 1\n", name="ddp", env={"TORCH_DDP": str(TORCH_DDP)})
    job = final_job(slurm, job_id, 150)
    slow = (job_dir / "slow").read_text().strip()
    rec = state(job_dir, job_id)
    first = rec.attempts[0]
    assert first.decision["verdict"] == "EXCLUDE_AND_REQUEUE", first.decision
    assert first.decision["finding"]["anomaly"] == "STRAGGLER" and first.decision["exclude"] == [slow]
    assert re.search(rf"node {slow} is 1\d\.\d% slower than its peers", first.decision["reason"])
    assert job.base_state == "COMPLETED" and job.restarts == 1 and job.exc_nodes == slow
    assert slow not in rec.attempts[1].nodes
    out = training_output(job_dir)
    assert re.search(r"starting at step [1-9]\d* from .*step_\d+\.pt", out), out[-2000:]
    assert "training done at step 400" in out


def test_frozen_rank_is_caught_by_the_adaptive_timeout(run_job, slurm, job_dir):
    """Rank 1 stops itself (SIGSTOP) at step 40; rank 0 then waits in its all-reduce, silent. The
    job opted in to the adaptive timeout (AJR_HANG_ADAPTIVE=true): steps come every ~50 ms, so the
    alarm comes after the 10 s floor, long before the fixed 120 s timeout."""
    job_id = submit(run_job, "--iters 80 --ckpt-every 20 --freeze-rank 1 --freeze-at 40",
                    config="hang_adaptive_floor_s: 10\n", env={"AJR_HANG_ADAPTIVE": "true"})
    job = final_job(slurm, job_id, 150)
    first = state(job_dir, job_id).attempts[0]
    assert first.decision["verdict"] == "REQUEUE", first.decision
    finding = first.decision["finding"]
    assert finding["anomaly"] == "HANG"
    assert re.search(r"no progress for 1\d s \(threshold 10 s from \d+ step intervals\)", finding["reason"]), finding
    assert job.base_state == "COMPLETED" and job.restarts == 1
    assert "training done at step 80" in training_output(job_dir)


def test_healthy_run_with_silent_checkpoint_saves_raises_nothing(run_job, slurm, job_dir):
    """Each save is 8 s of silence: longer than the fixed timeout (6 s) and the adaptive floor
    (3 s), but inside a CHECKPOINT_SAVE span, so neither alarms."""
    job_id = submit(run_job, "--iters 60 --ckpt-every 30 --ckpt-pause 8",
                    config="hang_timeout_s: 6\nhang_adaptive_floor_s: 3\n", env={"AJR_HANG_ADAPTIVE": "true"})
    job = final_job(slurm, job_id, 120)
    assert job.base_state == "COMPLETED" and job.restarts == 0
    [attempt] = state(job_dir, job_id).attempts
    assert attempt.decision["verdict"] == "NONE" and attempt.end_reason == "success"
    assert not [a for a in attempt.anomalies if a["anomaly"] == "HANG"], attempt.anomalies
    assert len(attempt.checkpoints) == 2
