#!/bin/bash
# The demo: a local Slurm cluster (slurmctld + 4 slurmd, each node in its own network namespace)
# and a 2-node job on it. Run it with `make demo` (which installs everything first).
set -euo pipefail
AJR=${AJR:-ajr}
here=$(cd "$(dirname "$0")" && pwd)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Bring up the lab cluster"
$AJR lab up --nodes 4
eval "$($AJR lab env)"

workdir=$(mktemp -d /tmp/ajr-demo.XXXXXX)
chmod 755 "$workdir"
cd "$workdir"

step "sinfo"
sinfo

step "Submit a 2-node job"
job=$(sbatch --parsable --output="$workdir/hello_%j.log" "$here/hello_two_nodes.sh")
echo "job $job submitted"
for _ in $(seq 1 300); do
  state=$(squeue -h -j "$job" -t all -o %T)
  case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL) break ;; esac
  sleep 0.1
done
echo "job $job: $state"

step "The job's unified log ($workdir/hello_$job.log)"
cat "$workdir/hello_$job.log"

step "sinfo after the job"
sinfo

echo
echo "The lab stays up: export SLURM_CONF=$SLURM_CONF to use it; 'make demo-down' stops it."
