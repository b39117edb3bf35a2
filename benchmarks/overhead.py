"""What the supervisor costs while it follows a busy log: CPU share of one core and RSS.

    python3 benchmarks/overhead.py [--rate-mb 1.0] [--seconds 30] [--ranks 64]

A writer appends a realistic mix of lines (srun ``N: `` prefixes; NCCL INFO chatter, warnings,
data-loader lines, telemetry iteration lines of every rank, Megatron iteration lines of rank 0,
a checkpoint every so often) at ``--rate-mb`` MB/s in 50 ms chunks. The real supervisor code
(``Supervisor.attach``: LogFollower with inotify, the rules with the installed matching engine,
the analyzer, ProgressWatch with the straggler, drop and hang detectors, the state file) runs in
a child process and follows the file; Slurm is replaced by an object that says the step runs.
Its CPU time (user + system) and RSS are sampled with psutil after a warm-up. As a baseline in
the same run, ``tail -F`` follows the same stream (a reader that does nothing with the lines).

Targets: <= 1% of a core and <= 80 MB RSS at 1 MB/s.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK_S = 0.05


def child(log_path: str, state_dir: str) -> None:
    """Run the supervisor's attach mode over ``log_path`` until killed."""
    from ajr_supervisor.config import Config
    from ajr_supervisor.enroll import Enrollment
    from ajr_supervisor.rules import RuleSet
    from ajr_supervisor.slurm import Slurm
    from ajr_supervisor.state import StateStore
    from ajr_supervisor.supervisor import JobContext, Supervisor

    class StepRuns(Slurm):
        def running_steps(self, job_id):
            return [f"{job_id}.0"]

    config = Config(probe_on_anomaly=False, poll_interval_s=0.5, hang_timeout_s=3600)
    job = JobContext(job_id="1", name="bench", user="u", partition="p", work_dir=state_dir,
                     nodes=tuple(f"node{i}" for i in range(1, 9)), restarts=0, comment="")
    sup = Supervisor(job, config, Enrollment(), slurm=StepRuns("/nonexistent"), store=StateStore(state_dir),
                     rules=RuleSet.load(), log_dir=Path(state_dir))
    sup.attach(Path(log_path))


def line_maker(ranks: int, seed: int = 1):
    rng = random.Random(seed)
    step = [0]

    def noise(r: int) -> str:
        k = rng.random()
        if k < 0.55:
            return (f"{r}: node{r // 8 + 1}:{4000 + r}:{4100 + r} [{r % 8}] NCCL INFO Channel {rng.randrange(32):02d}/0 : "
                    f"{r} -> {(r + 1) % ranks} via P2P/IPC/read comm 0x{rng.getrandbits(40):x} nRanks {ranks}")
        if k < 0.75:
            return (f"{r}: /usr/lib/python3/dist-packages/torch/utils/data/dataloader.py:557: UserWarning: "
                    f"This DataLoader will create {rng.randrange(2, 16)} worker processes in total.")
        if k < 0.9:
            return f"{r}: [data] shard {rng.randrange(10000)} loaded in {rng.random() * 100:.2f} ms ({rng.randrange(10**6)} samples)"
        return f"{r}: [rank{r}]: grad norm {rng.random() * 10:.4f} loss scale 65536.0 skipped iterations 0"

    def progress() -> list[str]:
        step[0] += 1
        i = step[0]
        out = [f"{r}: [ajr-telemetry] ts=2026-11-25T09:00:00.000Z rank={r} event=iteration iteration={i} "
               f"step_time_ms={1000 * (1 + rng.gauss(0, 0.02)):.1f} tflops=402.1 TFLOP/s=402.1 loss=2.31"
               for r in range(ranks)]
        out.append(f"0:  iteration {i:8d}/  100000 | consumed samples: {i * 1024} | elapsed time per iteration "
                   f"(ms): 1000.1 | throughput per GPU (TFLOP/s/GPU): 402.1 | learning rate: 1.0E-04 | "
                   f"lm loss: 2.31E+00 | loss scale: 65536.0 | grad norm: 1.12 |")
        if i % 50 == 0:
            out.append(f"0: [ajr-telemetry] ts=2026-11-25T09:00:00.000Z rank=0 event=checkpoint_saved iteration={i} "
                       f'path=/ckpt/iter_{i} msg="Saved checkpoint to /ckpt/iter_{i}"')
        return out

    return noise, progress


def measure(proc: psutil.Process, log: Path, rate: float, seconds: float, warmup_s: float, ranks: int):
    noise, progress = line_maker(ranks)
    per_chunk = int(rate * CHUNK_S)
    t0 = time.monotonic()
    next_step = t0
    written = 0
    cpu0 = rss_max = None
    start_measure = t0 + warmup_s
    with open(log, "a") as f:
        while time.monotonic() - t0 < warmup_s + seconds:
            chunk: list[str] = []
            size = 0
            now = time.monotonic()
            if now >= next_step:        # one training step a second: every rank reports
                next_step += 1.0
                chunk += progress()
                size = sum(len(s) + 1 for s in chunk)
            while size < per_chunk:
                s = noise(random.randrange(ranks))
                chunk.append(s)
                size += len(s) + 1
            f.write("\n".join(chunk) + "\n")
            f.flush()
            written += size
            if cpu0 is None and time.monotonic() >= start_measure:
                c = proc.cpu_times()
                cpu0 = (c.user + c.system, time.monotonic(), written)
            if cpu0 is not None:
                rss_max = max(rss_max or 0, proc.memory_info().rss)
            time.sleep(max(0.0, CHUNK_S - (time.monotonic() - now)))
    c = proc.cpu_times()
    cpu_s, wall, bytes_ = c.user + c.system - cpu0[0], time.monotonic() - cpu0[1], written - cpu0[2]
    return cpu_s / wall, rss_max, bytes_ / wall / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate-mb", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--child", nargs=2, metavar=("LOG", "STATE_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    rate = args.rate_mb * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in ("tail -F (baseline)", "ajr supervisor"):
            log = Path(tmp) / f"{name.split()[0]}.log"
            log.touch()
            if name.startswith("tail"):
                cmd = ["tail", "-F", "-n", "0", str(log)]
            else:
                cmd = [sys.executable, __file__, "--child", str(log), tmp]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.5)     # imports, rules compiled
                results[name] = measure(psutil.Process(p.pid), log, rate, args.seconds, args.warmup, args.ranks)
            finally:
                p.kill()
                p.wait()
    print(f"supervisor overhead: following a log growing at {args.rate_mb:g} MB/s ({args.ranks} ranks, "
          f"{args.seconds:g} s measured after {args.warmup:g} s warm-up)")
    for name, (cpu, rss, mbps) in results.items():
        print(f"  {name:20s} CPU {100 * cpu:5.2f}% of a core   RSS max {rss / 2**20:6.1f} MB   "
              f"(log grew {mbps:.2f} MB/s)")
    ajr, base = results["ajr supervisor"], results["tail -F (baseline)"]
    print(f"  ajr / tail -F CPU ratio: {ajr[0] / base[0]:.1f}x   targets: <= 1% of a core, <= 80 MB RSS: "
          f"CPU {'met' if ajr[0] <= 0.01 else 'NOT met'}, RSS {'met' if ajr[1] <= 80 * 2**20 else 'NOT met'}")


if __name__ == "__main__":
    main()
