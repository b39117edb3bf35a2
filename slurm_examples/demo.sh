#!/bin/bash
# The demo: a local Slurm cluster (slurmctld + 4 slurmd, each node in its own network namespace), a
# 2-node training job whose rank on one node is killed by SIGKILL in the first attempt, and ajr
# recovering it: the node is excluded, the same job id is requeued and resumes from its checkpoint.
# A registry (`ajr registry serve`, SQLite) receives every event; the demo ends with its KPIs and
# node reputation. Run it with `make demo` (which installs everything first).
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

step "Start the registry on the lab's bridge address (the nodes reach it there)"
addr=$(grep -oE 'SlurmctldHost=[^(]*\(([0-9.]+)\)' "$SLURM_CONF" | grep -oE '[0-9.]+\)$' | tr -d ')')
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
printf 'db: %s/registry.db\nhost: %s\nport: %s\n' "$workdir" "$addr" "$port" > registry.yaml
$AJR registry serve --config registry.yaml > registry.log 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT
export AJR_REGISTRY_URL=http://$addr:$port
export AJR_REGISTRY_TOKEN=$($AJR registry token create --config registry.yaml --role supervisor --name demo | tail -1)
admin=$($AJR registry token create --config registry.yaml --role admin --name demo-admin | tail -1)
get() {   # path [token]: GET from the registry, the body on stdout
  python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]} if sys.argv[2] else {})
print(u.urlopen(r, timeout=5).read().decode())' "$AJR_REGISTRY_URL$1" "${2:-}"
}
for _ in $(seq 1 60); do get /healthz >/dev/null 2>&1 && break; sleep 0.5; done
echo "registry at $AJR_REGISTRY_URL (log $workdir/registry.log)"

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

step "The registry's view: the job, training-time efficiency and node reputation"
for _ in $(seq 1 40); do [ -z "$(ls "$workdir"/.ajr/outbox/*.json 2>/dev/null)" ] && break; sleep 0.5; done
cluster=$(get "/api/v1/jobs?limit=1000" "$admin" |
  python3 -c 'import json, sys; print(next(j["cluster"] for j in json.load(sys.stdin)["items"] if j["job_id"] == sys.argv[1]))' "$job")
get "/api/v1/jobs/$cluster/$job" "$admin" | python3 -c '
import json, sys
j = json.load(sys.stdin)
print("registry: job %s on cluster %s is %s after %d attempts" % (j["job_id"], j["cluster"], j["state"], len(j["attempts"])))
for a in j["attempts"]:
    d = a.get("decision") or {}
    print("  attempt %s: %s; decision %s %s" % (a["attempt"], a.get("end_reason") or "running", d.get("verdict", "-"),
                                                  d.get("reason", "")[:100]))'
$AJR kpi --token "$admin"
$AJR nodes --token "$admin"

echo
echo "The lab stays up: export SLURM_CONF=$SLURM_CONF to use it; 'make demo-down' stops it."
