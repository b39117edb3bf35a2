#!/bin/bash
#SBATCH --job-name=ajr-verify
#SBATCH -N 2
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 1}}'
#
# Our version of the verification test in NVIDIA AJR's install guide.
#
# AJR's original: a batch script enrolled with the comment above whose step prints AJR's test line
# `Rank0: (1) segmentation fault: artificial segfault` and then sleeps 60 s. The line matches a CRASH
# rule, so AJR must act on the line while the step still runs (it does not wait for the step to end),
# requeue the job once, and then stop because max_requeue_times is 1.
#
# Expected sequence (same job id throughout; SLURM_RESTART_COUNT counts the attempts):
#   attempt 1 (restart count 0): rank 0 prints the line -> CRASH detected -> step killed
#       -> `scontrol requeuehold` (requeued and held) -> ExcNodeList updated if a node is blamed
#       -> `scontrol release`
#   attempt 2 (restart count 1): rank 0 prints the line again -> CRASH detected -> step killed
#       -> no further requeue: max_requeue_times (1) is used up; the job ends and stays ended.
#
# Here the step sleeps 30 s instead of 60 s: if nothing acts on the line, the step ends by itself
# after 30 s and the job completes with no requeue, which is the failure this test is meant to show.
# Submit with: sbatch slurm_examples/ajr_verification_requeue.sh   (AJR=/path/to/ajr to pick a build)
${AJR:-ajr} run -- bash -c 'if [ "$SLURM_PROCID" = 0 ]; then echo "Rank0: (1) segmentation fault: artificial segfault"; fi; sleep 30'
