"""Host checks of one node with psutil: memory, swap, OOM kills, /dev/shm, disk space, load, processes.

psutil is imported here and nowhere else in the package. Every check that cannot read what it needs
(psutil missing or raising, a path that does not exist, an unreadable kernel log) is UNKNOWN with the
reason in its detail, never GOOD. Load and process counts are informational (GOOD or UNKNOWN).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ajr_supervisor.health import Check, State
from ajr_supervisor.health.xid import KernelLogError, Runner, parse_log_time, read_kernel_lines

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is a dependency; stay importable without it
    psutil = None  # type: ignore[assignment]

GIB = 1024 ** 3
SHM = "/dev/shm"

_KILLED = re.compile(r"(?:(Memory cgroup out of memory|Out of memory)[^:]*: )?"
                     r"Killed process (\d+) \((.+?)\)(?= total-vm|,|\s*$)")
_CONSTRAINT = re.compile(r"oom-kill:constraint=(CONSTRAINT_\w+),.*?task=(.*?),pid=(\d+)")


@dataclass(frozen=True)
class HostThresholds:
    """When a host check turns BAD. ``*_pct`` are percent (0-100), ``*_bytes`` bytes."""

    min_available_memory_pct: float = 5.0   # BAD below this share of total RAM available
    max_swap_used_pct: float = 80.0         # swap is informational up to this
    min_shm_free_pct: float = 5.0           # /dev/shm: BAD below this share free ...
    min_shm_free_bytes: int = 1 * GIB       # ... or below this many bytes free
    min_path_free_pct: float = 1.0          # each given path: BAD below this share free ...
    min_path_free_bytes: int = 1 * GIB      # ... or below this many bytes free


@dataclass(frozen=True)
class OomKill:
    """One process the OOM killer killed. ``cgroup``: a memory cgroup limit (the job's own ``--mem``
    under Slurm's cgroup plugin) rather than the node running out of memory."""

    pid: int
    process: str
    cgroup: bool
    time: float | None
    raw: str


def parse_oom_lines(lines: Iterable[str], boot_time: float | None = None,
                    since: float | None = None) -> list[OomKill]:
    """The OOM kills in kernel-log lines (a kill's ``oom-kill:constraint=`` and ``Killed process``
    lines count once, by pid), at or after ``since`` (kills without a time are kept)."""
    kills: dict[int, OomKill] = {}
    memcg: set[int] = set()
    for line in lines:
        m = _CONSTRAINT.search(line)
        if m:
            constraint, task, pid_text = m.groups()
            pid = int(pid_text)
            if constraint == "CONSTRAINT_MEMCG":
                memcg.add(pid)
            found = m
        else:
            m = _KILLED.search(line)
            if not m:
                continue
            origin, pid_text, task = m.groups()
            pid = int(pid_text)
            if origin == "Memory cgroup out of memory":
                memcg.add(pid)
            found = m
        when = parse_log_time(line[:found.start()], boot_time)
        if since is not None and when is not None and when < since:
            continue
        if pid not in kills:
            kills[pid] = OomKill(pid, task, False, when, line.rstrip("\r\n"))
    return [OomKill(k.pid, k.process, k.pid in memcg, k.time, k.raw) for k in kills.values()]


def _unknown(name: str, exc: BaseException) -> Check:
    return Check(name, State.UNKNOWN, None, f"{type(exc).__name__}: {exc}".rstrip(": "))


def _guarded(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; psutil missing or anything raising makes it UNKNOWN."""
    if psutil is None:
        return Check(name, State.UNKNOWN, None, "psutil is not installed")
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - any failure to read is UNKNOWN, never GOOD
        return _unknown(name, exc)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _memory(t: HostThresholds) -> Check:
    vm = psutil.virtual_memory()
    pct = 100.0 * vm.available / vm.total
    state = State.BAD if pct < t.min_available_memory_pct else State.GOOD
    return Check("memory", state, {"available_bytes": vm.available, "total_bytes": vm.total},
                 f"{_gib(vm.available)} of {_gib(vm.total)} available ({pct:.1f}%, "
                 f"BAD below {t.min_available_memory_pct:g}%)")


def _swap(t: HostThresholds) -> Check:
    sw = psutil.swap_memory()
    if not sw.total:
        return Check("swap", State.GOOD, {"used_bytes": 0, "total_bytes": 0}, "no swap configured")
    pct = 100.0 * sw.used / sw.total
    state = State.BAD if pct > t.max_swap_used_pct else State.GOOD
    return Check("swap", state, {"used_bytes": sw.used, "total_bytes": sw.total},
                 f"{_gib(sw.used)} of {_gib(sw.total)} swap used ({pct:.1f}%, "
                 f"BAD above {t.max_swap_used_pct:g}%)")


def _space(name: str, path: str, min_pct: float, min_bytes: int, note: str = "") -> Check:
    if not os.path.exists(path):
        return Check(name, State.UNKNOWN, None, f"{path} does not exist")
    du = psutil.disk_usage(path)
    pct = 100.0 * du.free / du.total if du.total else 0.0
    bad = pct < min_pct or du.free < min_bytes
    detail = (f"{_gib(du.free)} free of {_gib(du.total)} on {path} ({pct:.1f}%, BAD below "
              f"{min_pct:g}% or {_gib(min_bytes)})")
    return Check(name, State.BAD if bad else State.GOOD,
                 {"free_bytes": du.free, "total_bytes": du.total},
                 detail + (f"; {note}" if bad and note else ""))


def _load() -> Check:
    load1 = os.getloadavg()[0]
    cpus = psutil.cpu_count() or 0
    ratio = load1 / cpus if cpus else None
    return Check("load", State.GOOD, {"load1": load1, "cpus": cpus, "per_cpu": ratio},
                 f"1-minute load {load1:.2f} on {cpus} CPUs"
                 + (f" ({ratio:.2f} per CPU)" if ratio is not None else ""))


def _processes() -> Check:
    zombies = blocked = 0
    for proc in psutil.process_iter(["status"], ad_value=None):
        status = proc.info.get("status")
        zombies += status == psutil.STATUS_ZOMBIE
        blocked += status == psutil.STATUS_DISK_SLEEP
    return Check("processes", State.GOOD, {"zombie": zombies, "disk_sleep": blocked},
                 f"{zombies} zombie, {blocked} in uninterruptible sleep (D)")


def oom_check(source: str, since: float | None = None, *, runner: Runner | None = None) -> Check:
    """``oom_kills``: BAD when the node itself ran out of memory (a global OOM kill) since ``since``;
    kills by a memory cgroup limit only (the job's own limit) are GOOD with the count in the value;
    an unreadable kernel log is UNKNOWN."""
    try:
        lines, boot_time = read_kernel_lines(source, since, runner=runner)
    except KernelLogError as exc:
        return Check("oom_kills", State.UNKNOWN, None, exc.one_line())
    kills = parse_oom_lines(lines, boot_time, since)
    node = [k for k in kills if not k.cgroup]
    value: dict[str, Any] = {"global": len(node), "cgroup": len(kills) - len(node)}
    if not kills:
        return Check("oom_kills", State.GOOD, value, "no OOM kill in the kernel log")
    named = ", ".join(f"{k.process}[{k.pid}]{' (cgroup limit)' if k.cgroup else ''}"
                      for k in kills[:8])
    if node:
        return Check("oom_kills", State.BAD, value,
                     f"the node ran out of memory: {len(node)} process(es) killed ({named})")
    return Check("oom_kills", State.GOOD, value,
                 f"{len(kills)} process(es) killed by a memory cgroup limit, not a node shortage "
                 f"({named})")


def host_checks(paths: Sequence[str] = (), thresholds: HostThresholds = HostThresholds(),
                kernel_log_source: str | None = None, *, since: float | None = None,
                runner: Runner | None = None) -> list[Check]:
    """The host checks of this node, in a fixed order. ``paths``: directories whose file system must
    have room (log dir, checkpoint dir), one ``disk:<path>`` check each. ``kernel_log_source``
    (``"journalctl"``, ``"dmesg"`` or a file) adds ``oom_kills`` counted from ``since``."""
    t = thresholds
    checks = [
        _guarded("memory", lambda: _memory(t)),
        _guarded("swap", lambda: _swap(t)),
        _guarded("shm", lambda: _space(
            "shm", SHM, t.min_shm_free_pct, t.min_shm_free_bytes,
            "a small or full /dev/shm kills NCCL and DataLoader workers with 'Bus error' "
            "(Docker's default is 64 MiB: --shm-size)")),
    ]
    checks += [_guarded(f"disk:{p}", lambda p=p: _space(f"disk:{p}", p, t.min_path_free_pct,
                                                        t.min_path_free_bytes)) for p in paths]
    checks += [_guarded("load", _load), _guarded("processes", _processes)]
    if kernel_log_source is not None:
        checks.append(oom_check(kernel_log_source, since, runner=runner))
    return checks
