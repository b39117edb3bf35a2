"""What the Slurm hooks do. For now they record one line per call and succeed; the recovery
issue makes ``epilog`` (EpilogSlurmctld) finish half-done decisions.

A hook must never fail: a non-zero Prolog drains the node and requeues the job. Every error is
logged and swallowed.
"""

from __future__ import annotations

import sys
import time
from typing import Mapping

KEYS = ("SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_JOB_RESTART_COUNT", "SLURM_JOB_USER",
        "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_EXIT_CODE2", "SLURM_SCRIPT_CONTEXT")


def hook_line(context: str, env: Mapping[str, str], now: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    fields = " ".join(f"{k}={env[k]}" for k in KEYS if env.get(k))
    return f"{stamp} ajr {context} {fields}".rstrip()


def run_hook(context: str, env: Mapping[str, str], now: float | None = None) -> None:
    line = hook_line(context, env, time.time() if now is None else now)
    path = env.get("AJR_HOOK_LOG")
    try:
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")
        else:
            print(line, file=sys.stderr)
    except OSError as exc:
        print(f"ajr {context}: cannot write {path}: {exc}", file=sys.stderr)
