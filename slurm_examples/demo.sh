#!/bin/bash
# The demo: a local Slurm cluster (slurmctld + 4 slurmd, each node in its own network namespace), a
# 2-node training job whose rank on one node is killed by SIGKILL in the first attempt, and ajr
# recovering it: the node is excluded, the same job id is requeued and resumes from its checkpoint.
# Run it with `make demo` (which installs everything first).
set -euo pipefail
AJR=${AJR:-ajr}
export AJR
here=$(cd "$(dirname "$0")" && pwd)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_done() {   # job id
  for _ in $(seq 1 600); do
    state=$(squeue -h -j "$1" -t all -o %T 2>/dev/null || true)
    restarts=$(scontrol -o show job "$1" | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT) [ "${restarts:-0}" -ge "${2:-0}" ] && return 0 ;; esac
    sleep 0.5
  done
  echo "job $1 did not finish in time" >&2; return 1
}

step "Bring up the lab cluster"
$AJR lab up --nodes 4
eval "$($AJR lab env)"
sinfo

workdir=$(mktemp -d /tmp/ajr-demo.XXXXXX)
chmod 755 "$workdir"
cd "$workdir"

step "Submit a 2-node training job; its rank 1 will be killed (SIGKILL) at iteration 12 of attempt 0"
export PYTHON=${PYTHON:-python3} EXAMPLES_DIR=$here
export TRAIN_ARGS="--fail-at 12 --fail-rank 1 --fail-mode signal:KILL --fail-attempt 0"
job=$(sbatch --parsable --output="$workdir/batch_%j.out" "$here/train_job.sh")
echo "job $job submitted (work dir $workdir)"
wait_done "$job" 1

step "What ajr did (the supervisor's lines in the batch output)"
grep ' ajr ' "$workdir/batch_$job.out" | sed -E 's/^[0-9-]+ ([0-9:]+),[0-9]+ ajr INFO /\1 /' | cut -c1-180

step "ajr status $job"
$AJR status "$job"

step "Slurm's view: the same job id, restarted once, with the bad node excluded"
scontrol -o show job "$job" | tr ' ' '\n' | grep -E '^(JobState|Restarts|NodeList|ExcNodeList)='

step "The unified logs, one per attempt (AJR's names): first and last lines of each"
for log in "$workdir"/train_"$job"_date_*.log; do
  echo "--- $(basename "$log")"
  grep -v '^\s*$' "$log" | grep -E 'starting attempt|resuming|iteration +(1|5|10|11|30)/|SAVE_CHECKPOINT|srun: error|finished' | head -12
done

echo
echo "The lab stays up: export SLURM_CONF=$SLURM_CONF to use it; 'make demo-down' stops it."
