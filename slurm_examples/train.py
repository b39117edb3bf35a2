#!/usr/bin/env python3
"""A small but real stand-in for a Megatron-LM / NeMo training job (stdlib only).

Launched once per rank, e.g. by `srun -l -u python3 train.py ...` (or `ajr run -- python3 train.py ...`).
Reads SLURM_PROCID, SLURM_NTASKS, SLURMD_NODENAME (else the hostname), SLURM_RESTART_COUNT (the
attempt) and SLURM_JOB_NODELIST; outside Slurm it is rank 0 of 1, attempt 0. Lines go to stdout,
flushed; Python tracebacks to stderr (srun -u merges them).

Each iteration sleeps --step-s; rank 0 prints a Megatron-LM line (` [ts] iteration       10/      50 |
consumed samples: ... | lm loss: 2.345678E+00 |`), the others `[ts] rank R iteration I step_time_ms T`.
Every --ckpt-every iterations (and at the end) rank 0 writes DIR/iter_0000040/state.json, then
DIR/latest, each atomically, and prints `[ts] SAVE_CHECKPOINT: iteration: 40, ckpt saving takes 0.00
seconds` among its checkpoint lines; the other ranks wait for DIR/latest to reach that iteration.
A new attempt resumes from DIR/latest.

Options:
  --iters N          total iterations (default 50)
  --step-s S         seconds per iteration (default 0.1)
  --ckpt-dir DIR     checkpoint directory (required; shared by all ranks)
  --ckpt-every K     checkpoint interval in iterations (default 10)
  --no-ckpt          never save (resuming from an existing checkpoint still works)
  --no-sync          under srun with several ranks, ranks keep in lockstep (a file barrier per
                     iteration, like a collective: a dead rank makes the others wait); this turns it off
  --fail-at I        inject a failure at the start of iteration I (never logged)
  --fail-after N     inject it after N iterations of every attempt instead (a job that keeps
                     crashing but keeps making progress, when it checkpoints more often than N)
  --fail-rank R      ... on rank R (default 0)
  --fail-node NAME   ... on whichever rank runs on node NAME (instead of --fail-rank)
  --fail-attempt A   ... only in attempt A (= SLURM_RESTART_COUNT); default: every attempt
  --fail-mode MODE   exit:CODE (default exit:1) | signal:NAME (KILL, SEGV, ...) | segfault-line
                     (print AJR's verification line, then sleep 600 s without exiting) | hang (stop
                     printing forever; the other ranks stop at the same iteration too) |
                     traceback:EXC (raise a builtin exception, e.g. ValueError) | cuda-ecc (a real
                     RuntimeError traceback) | nccl-timeout (PyTorch watchdog lines, exit 1)
  --slow-node NAME   ranks on NAME run --slow-factor times slower (sleep longer, lower TFLOP/s)
  --slow-factor F    slow-down factor (default 1.0); without --slow-node it applies to every rank

Example sbatch script (rank on node2 dies with an ECC error in the first attempt only):

  #!/bin/bash
  #SBATCH --job-name=train --nodes=2 --ntasks-per-node=1 --requeue --open-mode=append
  #SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 3}}'
  ajr run -- python3 train.py --iters 200 --ckpt-dir "$PWD/ckpt" \\
      --fail-at 35 --fail-node node2 --fail-attempt 0 --fail-mode cuda-ecc
"""
import argparse
import builtins
import datetime
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sys
import time

GLOBAL_BATCH_SIZE = 32
BASE_TFLOPS = 380.0
CKPT_WAIT_S = 120.0
SEGFAULT_SLEEP_S = 600.0


def ts() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def say(msg: str) -> None:
    print(f"[{ts()}] {msg}", flush=True)


def fail_mode(text: str) -> str:
    """argparse type for --fail-mode: validates MODE and returns it unchanged."""
    kind, _, arg = text.partition(":")
    exc = getattr(builtins, arg, None)
    if (kind == "exit" and arg.isdigit() and int(arg) <= 255
            or kind == "signal" and parse_signal(arg) is not None
            or kind == "traceback" and isinstance(exc, type) and issubclass(exc, Exception)
            or text in ("segfault-line", "hang", "cuda-ecc", "nccl-timeout")):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid fail mode {text!r}: use exit:CODE, signal:NAME, segfault-line, hang, "
        "traceback:EXC (a builtin exception type), cuda-ecc or nccl-timeout")


def parse_signal(name: str):
    """'KILL', 'SIGSEGV', 'segv' or '9' -> signal.Signals; None when there is no such signal."""
    name = name.upper()
    try:
        return signal.Signals(int(name)) if name.isdigit() else signal.Signals["SIG" + name.removeprefix("SIG")]
    except (KeyError, ValueError):
        return None


def expand_hostlist(expr: str) -> list:
    """Slurm host list -> names: 'node[1-3,5],gpu07' -> node1 node2 node3 node5 gpu07."""
    hosts = []
    for m in re.finditer(r"([^,\[\]]+)(?:\[([^\]]*)\])?([^,\[\]]*)", expr):
        prefix, ranges, suffix = m.groups()
        if ranges is None:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}{suffix}")
    return hosts


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--step-s", type=float, default=0.1)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--no-ckpt", action="store_true")
    p.add_argument("--no-sync", action="store_true")
    fail_when = p.add_mutually_exclusive_group()
    fail_when.add_argument("--fail-at", type=int)
    fail_when.add_argument("--fail-after", type=int)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--fail-rank", type=int)
    who.add_argument("--fail-node")
    p.add_argument("--fail-attempt", type=int)
    p.add_argument("--fail-mode", type=fail_mode, default="exit:1")
    p.add_argument("--slow-node")
    p.add_argument("--slow-factor", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.iters < 0 or args.step_s < 0 or args.ckpt_every < 1 or args.slow_factor <= 0:
        p.error("--iters and --step-s must be >= 0, --ckpt-every >= 1, --slow-factor > 0")
    if args.fail_at is not None and args.fail_at < 1:
        p.error("--fail-at must be >= 1 (iterations count from 1)")
    if args.fail_after is not None and args.fail_after < 1:
        p.error("--fail-after must be >= 1")
    return args


class Env:
    def __init__(self, environ):
        self.rank = int(environ.get("SLURM_PROCID", 0))
        self.ntasks = int(environ.get("SLURM_NTASKS", 1))
        self.node = environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
        self.attempt = int(environ.get("SLURM_RESTART_COUNT", 0))
        self.launched_by_srun = "SLURM_STEP_ID" in environ
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        self.nodes = expand_hostlist(nodelist) if nodelist else None


def fault_targets(args, env: Env):
    """(on this rank, on some rank of this job step): where the injected failure happens this attempt."""
    if (args.fail_at is None and args.fail_after is None) or args.fail_attempt not in (None, env.attempt):
        return False, False
    if args.fail_node is not None:
        return env.node == args.fail_node, env.nodes is None or args.fail_node in env.nodes
    return env.rank == (args.fail_rank or 0), (args.fail_rank or 0) < env.ntasks


def sleep_forever() -> None:
    while True:
        signal.pause()


def inject(mode: str, env: Env, iteration: int) -> None:
    r = env.rank
    kind, _, arg = mode.partition(":")
    if kind == "exit":
        say(f"rank {r}: injected failure, exiting with {arg}")
        sys.exit(int(arg))
    if kind == "signal":
        sig = parse_signal(arg)
        say(f"rank {r}: injected failure, killing itself with {sig.name}")
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        return os.kill(os.getpid(), sig)  # a signal that does not end it (STOP, CHLD): training goes on
    if kind == "segfault-line":  # the line only: the process lives on, the supervisor must act on it
        print(f"Rank{r}: (1) segmentation fault: artificial segfault", flush=True)
        return time.sleep(SEGFAULT_SLEEP_S)
    if kind == "hang":
        say(f"rank {r}: injected hang")
        sleep_forever()
    if kind == "traceback":
        raise getattr(builtins, arg)(f"injected failure on rank {r} at iteration {iteration}")
    if kind == "cuda-ecc":
        raise RuntimeError(
            "CUDA error: uncorrectable ECC error encountered\n"
            "CUDA kernel errors might be asynchronously reported at some other API call, "
            "so the stacktrace below might be incorrect.\n"
            "For debugging consider passing CUDA_LAUNCH_BLOCKING=1.")
    if kind == "nccl-timeout":
        p = f"[rank{r}]:[E ProcessGroupNCCL.cpp"
        print(f"{p}:563] [Rank {r}] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, "
              "OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 "
              "milliseconds before timing out.", flush=True)
        print(f"{p}:583] [Rank {r}] To avoid data inconsistency, we are taking the entire process "
              "down.", flush=True)
        sys.exit(1)


def read_latest(ckpt_dir: str):
    try:
        with open(os.path.join(ckpt_dir, "latest")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def load_checkpoint(ckpt_dir: str):
    it = read_latest(ckpt_dir)
    if it is None:
        return None
    with open(os.path.join(ckpt_dir, f"iter_{it:07d}", "state.json")) as f:
        return json.load(f)


def save_checkpoint(ckpt_dir: str, state: dict) -> None:
    it = state["iteration"]
    say(f"saving checkpoint at iteration {it} to {ckpt_dir}")
    t0 = time.monotonic()
    os.makedirs(ckpt_dir, exist_ok=True)
    final = os.path.join(ckpt_dir, f"iter_{it:07d}")
    tmp = os.path.join(ckpt_dir, f".iter_{it:07d}.tmp.{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)  # a stale one from an attempt that did not update latest
    os.rename(tmp, final)
    latest_tmp = os.path.join(ckpt_dir, f".latest.tmp.{os.getpid()}")
    with open(latest_tmp, "w") as f:
        f.write(f"{it}\n")
    os.replace(latest_tmp, os.path.join(ckpt_dir, "latest"))
    say(f"SAVE_CHECKPOINT: iteration: {it}, ckpt saving takes {time.monotonic() - t0:.2f} seconds")
    say(f"successfully saved checkpoint from iteration {it} to {ckpt_dir}")


def wait_for_checkpoint(ckpt_dir: str, it: int, rank: int) -> None:
    deadline = time.monotonic() + CKPT_WAIT_S
    while (read_latest(ckpt_dir) or 0) < it:
        if time.monotonic() > deadline:
            say(f"rank {rank}: timed out waiting for checkpoint at iteration {it}, continuing")
            return
        time.sleep(0.01)


def barrier(sync_dir: str, rank: int, ntasks: int, it: int, timeout_s: float = 300.0) -> None:
    """Wait until every rank has reached iteration ``it`` (a stand-in for a collective).

    Like NCCL without its watchdog, a dead peer makes the others wait: here up to ``timeout_s``,
    then the rank fails the way PyTorch's watchdog would.
    """
    os.makedirs(sync_dir, exist_ok=True)
    mine = os.path.join(sync_dir, f"r{rank}")
    with open(mine + ".tmp", "w") as f:
        f.write(str(it))
    os.replace(mine + ".tmp", mine)
    deadline = time.monotonic() + timeout_s
    while True:
        behind = []
        for r in range(ntasks):
            try:
                with open(os.path.join(sync_dir, f"r{r}")) as f:
                    if int(f.read() or 0) < it:
                        behind.append(r)
            except (FileNotFoundError, ValueError):
                behind.append(r)
        if not behind:
            return
        if time.monotonic() > deadline:
            say(f"rank {rank}: timed out after {timeout_s:g} s waiting for ranks {behind} at iteration {it}")
            sys.exit(1)
        time.sleep(0.005)


def megatron_line(it, iters, ms, tflops, loss) -> str:
    return (f" [{ts()}] iteration {it:8d}/{iters:8d} |"
            f" consumed samples: {it * GLOBAL_BATCH_SIZE:12d} |"
            f" elapsed time per iteration (ms): {ms:.1f} |"
            f" throughput per GPU (TFLOP/s/GPU): {tflops:.1f} |"
            f" lm loss: {loss:.6E} |")


def train(args, env: Env) -> int:
    rank = env.rank
    loss, rng, start = 11.0, random.Random(1234), 0
    ckpt = load_checkpoint(args.ckpt_dir)
    if ckpt is not None:
        start, loss = ckpt["iteration"], ckpt["loss"]
        v, state, gauss = ckpt["rng_state"]
        rng.setstate((v, tuple(state), gauss))
        say(f"rank {rank} on {env.node}: resuming from checkpoint iteration {start}")
    say(f"rank {rank} on {env.node}: starting attempt {env.attempt} from iteration {start}")

    slow = args.slow_factor if args.slow_node in (None, env.node) else 1.0
    noise = random.Random(rank * 1000 + env.attempt)
    here, in_job = fault_targets(args, env)
    fail_at = args.fail_at if args.fail_after is None else start + args.fail_after + 1
    saved = start
    sync = None
    if env.ntasks > 1 and env.launched_by_srun and not args.no_sync:
        sync = os.path.join(args.ckpt_dir, ".sync", f"attempt{env.attempt}")
    for it in range(start + 1, args.iters + 1):
        if sync:
            barrier(sync, rank, env.ntasks, it)
        if it == fail_at:
            if here:
                inject(args.fail_mode, env, it)
            elif in_job and args.fail_mode == "hang":
                sleep_forever()  # blocked in a collective with the hung rank
        t0 = time.monotonic()
        time.sleep(args.step_s * slow)
        loss = 1.5 + (loss - 1.5) * (1.0 - rng.uniform(0.02, 0.06))
        ms = (time.monotonic() - t0) * 1000.0
        if rank == 0:
            tflops = BASE_TFLOPS / slow * (1.0 + noise.uniform(-0.02, 0.02))
            print(megatron_line(it, args.iters, ms, tflops, loss), flush=True)
        else:
            say(f"rank {rank} iteration {it} step_time_ms {ms:.1f}")
        if it % args.ckpt_every == 0 and not args.no_ckpt:
            if rank == 0:
                save_checkpoint(args.ckpt_dir, {"iteration": it, "loss": loss,
                                                "rng_state": rng.getstate(), "attempt": env.attempt})
            else:
                wait_for_checkpoint(args.ckpt_dir, it, rank)
            saved = it
    if rank == 0 and not args.no_ckpt and saved < args.iters:
        save_checkpoint(args.ckpt_dir, {"iteration": args.iters, "loss": loss,
                                        "rng_state": rng.getstate(), "attempt": env.attempt})
    if rank == 0:
        say(f"training finished: {args.iters} iterations")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return train(args, Env(os.environ))


if __name__ == "__main__":
    sys.exit(main())
