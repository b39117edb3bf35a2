#!/usr/bin/env python3
"""A real data-parallel PyTorch training on CPUs (gloo), instrumented with ajr's telemetry library.

One process per Slurm task (``srun``/``ajr run`` starts them). Ranks meet through a file store on
the shared filesystem (``--store-dir``), average their gradients with ``all_reduce`` every step,
save a checkpoint from rank 0 every ``--ckpt-every`` steps and resume from the latest one, so a
requeued attempt continues where the last one stopped.

Every rank writes its telemetry ``iteration`` lines (``LoggerBackend(all_ranks=True)``), with
``step_time_ms`` = that rank's own compute time (forward, backward, optimizer: the all-reduce wait
is left out, as it is the same for every rank in synchronous training), so ajr can compare nodes.

Fault injection, for the demo and the lab tests:
  --slow-node NODE --slow-frac F   ranks on NODE compute F (0.15 = 15%) longer
  --freeze-rank R --freeze-at I    rank R stops itself with SIGSTOP at iteration I (first attempt only)
  --ckpt-pause S                   each checkpoint save takes S seconds more (a silent save)
  --fail-at I                      rank 0 raises at iteration I (first attempt only)

Needs torch (``pip install torch==2.13.0`` takes the CPU wheel on these machines).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ajr_supervisor import telemetry
from ajr_supervisor.telemetry import ApplicationMetrics, IterationMetrics, LoggerBackend


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--store-dir", default=None, help="shared directory for the rendezvous file (default: ckpt dir)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--min-step-s", type=float, default=0.05, help="pad each step's compute to at least this")
    p.add_argument("--slow-node", default=None)
    p.add_argument("--slow-frac", type=float, default=0.0)
    p.add_argument("--freeze-rank", type=int, default=None)
    p.add_argument("--freeze-at", type=int, default=None)
    p.add_argument("--ckpt-pause", type=float, default=0.0)
    p.add_argument("--fail-at", type=int, default=None)
    return p.parse_args(argv)


def pick_interface() -> None:
    """gloo finds its own address through the host name; where that does not resolve (the lab's
    network namespaces), use the first interface that is not loopback."""
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return
    try:
        socket.gethostbyname(socket.gethostname())
        return
    except OSError:
        pass
    for _, name in socket.if_nameindex():
        if name != "lo":
            os.environ["GLOO_SOCKET_IFNAME"] = name
            return


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world = int(os.environ.get("SLURM_PROCID", 0)), int(os.environ.get("SLURM_NTASKS", 1))
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)
    node = os.environ.get("SLURMD_NODENAME", socket.gethostname())
    job = os.environ.get("SLURM_JOB_ID", "local")
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    store_dir = Path(args.store_dir or ckpt_dir)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    telemetry.configure(backends=[LoggerBackend(all_ranks=True)], rank=rank, world_size=world,
                        application=ApplicationMetrics(job_name="torch_ddp", global_batch_size=args.batch * world))
    with telemetry.running():
        pick_interface()
        store = store_dir / f".rendezvous.{job}.{attempt}"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        model = torch.nn.Sequential(torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(args.hidden, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        start = 0
        with telemetry.checkpoint_load():
            ckpt = latest_checkpoint(ckpt_dir)
            if ckpt is not None:
                state = torch.load(ckpt, weights_only=True)
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["opt"])
                start = int(state["step"])
        if rank == 0:
            print(f"rank 0 node {node}: world {world}, starting at step {start}"
                  f"{' from ' + str(ckpt) if ckpt else ''}", flush=True)
        params = sum(p.numel() for p in model.parameters())
        flops = 6.0 * params * args.batch
        gen = torch.Generator().manual_seed(1000 + rank)
        slow = args.slow_frac if args.slow_node == node else 0.0
        with telemetry.training():
            for step in range(start + 1, args.iters + 1):
                if attempt == 0 and args.freeze_rank == rank and args.freeze_at == step:
                    print(f"rank {rank}: freezing myself (SIGSTOP) at step {step}", flush=True)
                    os.kill(os.getpid(), signal.SIGSTOP)
                if attempt == 0 and args.fail_at == step and rank == 0:
                    raise RuntimeError(f"injected failure at step {step}")
                t0 = time.perf_counter()
                x = torch.randn(args.batch, args.hidden, generator=gen)
                loss = model(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                spent = time.perf_counter() - t0
                pad = max(0.0, args.min_step_s - spent)
                time.sleep(pad + (spent + pad) * slow)
                compute = time.perf_counter() - t0
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
                opt.step()
                telemetry.record_iteration(IterationMetrics(
                    step, step_time_ms=round(compute * 1000, 3), tflops=round(flops / compute / 1e12, 6),
                    loss=round(float(loss), 5), total_iterations=args.iters,
                    extra={"wall_ms": round((time.perf_counter() - t0) * 1000, 3)}))
                if step % args.ckpt_every == 0:
                    if rank == 0:
                        path = ckpt_dir / f"step_{step}.pt"
                        with telemetry.checkpoint_save(iteration=step, path=str(path)):
                            time.sleep(args.ckpt_pause)
                            tmp = path.with_suffix(".tmp")
                            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
                            os.replace(tmp, path)
                    dist.barrier()
        dist.barrier()
        if rank == 0:
            print(f"training done at step {args.iters}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
