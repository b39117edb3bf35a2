"""Recovery latency on the real lab (prints figures; not a test).

For each kind of injected crash (a fatal line while the process keeps running, and a non-zero
exit) and each restart path (Slurm's own delay, cred_expire + 1 s; and fast_restart, where
EpilogSlurmctld sets StartTime=now+1), one job crashes N times in a row and then succeeds. For every
crash it measures
  (a) the fatal line / the exit  ->  `scontrol requeuehold` issued by the supervisor
  (b) the failure                ->  the next attempt's first log line
from wall-clock stamps printed by the tasks and recorded in the state file.

    python benchmarks/recovery.py [--crashes 20] [--keep-lab]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ajr_supervisor.lab import Lab, LabSpec
from ajr_supervisor.slurm import Slurm
from ajr_supervisor.state import StateStore

SPEC = LabSpec(root=Path("/tmp/ajr-bench-lab"), name="ajrbench", nodes=4, subnet="10.81.0",
               ctld_port=6847, dbd_port=6849, db_port=3347)

TASK = r'''
a=${SLURM_RESTART_COUNT:-0}
echo "[bench] start attempt $a $(date +%s.%N)"
if [ "$a" -lt "$CRASHES" ]; then
  sleep 0.3
  if [ "$SLURM_PROCID" = 0 ]; then
    echo "[bench] fail attempt $a $(date +%s.%N)"
    if [ "$KIND" = line ]; then echo "Rank0: (1) segmentation fault: artificial segfault"; sleep 60; else exit 3; fi
  fi
  sleep 60
fi
'''


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_job(slurm: Slurm, workdir: Path, kind: str, crashes: int, timeout_s: float) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    (workdir / "task.sh").write_text(TASK)
    (workdir / "ajr.yaml").write_text("crash_loop_attempts: 1000\nmax_requeue_times: 1000\n")
    (workdir / "job.sh").write_text(f"#!/bin/bash\n{Path(sys.executable).with_name('ajr')} run -- bash {workdir}/task.sh\n")
    env = {**os.environ, "KIND": kind, "CRASHES": str(crashes), "AJR_CONFIG": str(workdir / "ajr.yaml")}
    runner = Slurm(slurm.conf, env=env)
    job_id = runner.sbatch(["-N2", "--ntasks-per-node=1", "--requeue", "--open-mode=append", "--job-name=bench",
                            f"--chdir={workdir}", f"--output={workdir}/batch.out",
                            '--comment={"APS": {"max_requeue_times": 1000}}', str(workdir / "job.sh")])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = slurm.show_job(job_id)
        if job.base_state in ("COMPLETED", "FAILED", "CANCELLED") and job.restarts >= crashes:
            break
        time.sleep(0.5)
    else:
        slurm.scancel(job_id)
        raise SystemExit(f"job {job_id} did not finish {crashes} crashes within {timeout_s:g} s")
    rec = StateStore(workdir / ".ajr").load(job_id)
    starts: dict[int, float] = {}
    fails: dict[int, float] = {}
    for log in workdir.glob("bench_*.log"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if "[bench] start attempt" in line:
                a, t = int(parts[-2]), float(parts[-1])
                starts[a] = min(starts.get(a, t), t)
            elif "[bench] fail attempt" in line:
                fails[int(parts[-2])] = float(parts[-1])
    detect, restart = [], []
    for a in rec.attempts:
        if a.attempt >= crashes or a.attempt not in fails:
            continue
        hold = next((x["at"] for x in a.actions if x["action"] == "requeuehold"), None)
        if hold is not None:
            detect.append(hold - fails[a.attempt])
        if a.attempt + 1 in starts:
            restart.append(starts[a.attempt + 1] - fails[a.attempt])
    return {"job": job_id, "detect": detect, "restart": restart}


def set_fast_restart(on: bool) -> None:
    SPEC.ajr_conf.write_text("fast_restart: true\n" if on else "# fast_restart: true\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("--keep-lab", action="store_true")
    args = ap.parse_args()
    lab = Lab(SPEC)
    print(f"lab up in {lab.up():.2f} s ({SPEC.nodes} nodes, cred_expire={SPEC.cred_expire_s})", flush=True)
    slurm = Slurm(str(SPEC.slurm_conf))
    base = Path(tempfile.mkdtemp(prefix="ajr-bench-"))
    base.chmod(0o755)
    results = []
    try:
        for fast in (False, True):
            set_fast_restart(fast)
            for kind in ("line", "exit"):
                t0 = time.monotonic()
                r = run_job(slurm, base / f"{kind}-{'fast' if fast else 'slow'}", kind, args.crashes,
                            timeout_s=args.crashes * 20 + 60)
                r.update(kind=kind, fast=fast, wall_s=time.monotonic() - t0)
                results.append(r)
                print(f"  {kind:4} crashes, {'fast_restart' if fast else 'Slurm delay '}: "
                      f"{len(r['detect'])} measured in {r['wall_s']:.0f} s (job {r['job']})", flush=True)
    finally:
        set_fast_restart(False)
        if not args.keep_lab:
            lab.down()
    print()
    print(f"{'crash kind':<12}{'restart path':<22}{'n':>4}  {'(a) detect->requeuehold':>24}  {'(b) failure->next first line':>30}")
    print(f"{'':<12}{'':<22}{'':>4}  {'p50 s':>11} {'p95 s':>12}  {'p50 s':>14} {'p95 s':>15}")
    for r in results:
        d, s = r["detect"], r["restart"]
        path = "fast_restart (now+1)" if r["fast"] else f"cred_expire+1 ({SPEC.cred_expire_s + 1} s)"
        print(f"{r['kind']:<12}{path:<22}{len(d):>4}  {pct(d, .5):>11.2f} {pct(d, .95):>12.2f}  "
              f"{pct(s, .5):>14.2f} {pct(s, .95):>15.2f}")
    (base / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nraw figures: {base / 'results.json'}")


if __name__ == "__main__":
    main()
