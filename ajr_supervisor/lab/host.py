"""The lab's door to the host: processes, /proc, network namespaces and links (``ip``).

Only the lab uses this; it needs root.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from ajr_supervisor.errors import AjrError


class HostError(AjrError):
    pass


def run(argv: Sequence[str], *, check: bool = True, timeout_s: float = 60,
        env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              env=env, input=input, check=False,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise HostError(f"`{argv[0]}` not found", "run `ajr lab install` first") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"`{' '.join(argv)}` timed out after {timeout_s:g} s") from None
    if check and proc.returncode != 0:
        err = " ".join(proc.stderr.split())[:300]
        raise HostError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}: {err}")
    return proc


# -- processes ------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # state is the field after the parenthesised comm
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] not in (b"Z", b"X")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def environ_has(pid: int, entry: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry.encode() in raw.split(b"\0")


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(stat[stat.rfind(b")") + 2:].split()[1])


def descendants(roots: Iterable[int]) -> list[int]:
    """Every living descendant of ``roots`` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        children.setdefault(parent_of(pid), []).append(pid)
    out, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_daemon(argv: Sequence[str], log_path: Path, env: dict[str, str]) -> int:
    """Start a foreground daemon in its own session, output to ``log_path``; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    env=env, start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise HostError(f"`{argv[0]}` not found", "run `ajr lab install` first") from None
    return proc.pid


def stop_pids(pids: Iterable[int], timeout_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL whatever is left."""
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        _kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        if pids:
            time.sleep(0.05)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """True when a TCP listener already holds ``port`` (in this network namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    wanted = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(wanted) if wanted else "(empty log)"


# -- network --------------------------------------------------------------------------------

def netns_list() -> list[str]:
    proc = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def link_names() -> list[str]:
    proc = run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ip", *args], check=check)
