"""One node's health in one object: host checks, kernel Xids, NVML (``ajr probe``).

It runs on the node being judged: through ``srun --overlap`` from the supervisor while the job still
holds its nodes, from a Prolog/Epilog, or by hand. It never raises for a failed source: that source's
checks are UNKNOWN.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Sequence

from ajr_supervisor.health import Check, NodeHealth, State
from ajr_supervisor.types import Component


def node_name(env: Mapping[str, str]) -> str:
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def per_node(template: str | None, node: str) -> str | None:
    """``/lab/kernel-%n.log`` -> ``/lab/kernel-node2.log`` (sources and fake-NVML state per node)."""
    return template.replace("%n", node) if template else template


def probe_node(*, paths: Sequence[str] = (), since: float | None = None, kernel_log: str | None = None,
               nvml_timeout_s: float = 5.0, env: Mapping[str, str] | None = None) -> NodeHealth:
    from ajr_supervisor.health.host import host_checks
    from ajr_supervisor.health.nvml import backend_from_env, probe_gpus
    from ajr_supervisor.health.xid import kernel_xid_checks

    env = dict(os.environ if env is None else env)
    node = node_name(env)
    source = per_node(kernel_log, node) or "journalctl"
    checks: list[Check] = []
    checks += host_checks(paths, kernel_log_source=source, since=since)
    checks += kernel_xid_checks(source, since)
    if env.get("AJR_NVML_FAKE"):
        env["AJR_NVML_FAKE"] = per_node(env["AJR_NVML_FAKE"], node)
    try:
        backend = backend_from_env(env)
    except Exception as exc:  # pynvml missing, a bad fake state file: unknown, never healthy
        checks.append(Check("nvml", State.UNKNOWN, None, f"NVML unavailable: {exc}"))
    else:
        checks += probe_gpus(backend, timeout_s=nvml_timeout_s, node=node).checks
    return NodeHealth(node, tuple(checks), time.time())


def component_of(check: str) -> Component:
    """Which component a failing check blames."""
    name = check.split(":", 1)[0]
    if check.startswith(("gpu", "nvml")) or name == "xid":
        return Component.GPU
    if name == "sxid":
        return Component.NETWORK
    if name in ("memory", "swap", "shm", "oom_kills"):
        return Component.NODE_MEMORY
    if name == "disk":
        return Component.STORAGE
    return Component.UNKNOWN
