"""NVIDIA Xid (and NVSwitch SXid) lines from the kernel log, classified after NVIDIA's Xid catalog.

The one door to the kernel log: :func:`read_kernel_lines` reads a file, ``journalctl -k`` or ``dmesg``
(argv lists, ``shell=False``, a timeout, an injectable runner). A log that cannot be read raises
:class:`KernelLogError`, which callers turn into UNKNOWN: it never reads as "no Xids". Parsers and
:func:`classify` are pure; the table is ``data/xid.yaml``. Lines handled: ``NVRM: Xid (PCI:0000:3b:00):
79, pid=1234, name=python, msg`` with or without ``pid=``/``name=``/``PCI:``, behind dmesg (``[uptime]``,
``-T``, ``--time-format iso``), journald short-iso, syslog or kmsg prefixes; and ``nvidia-nvswitchN:
SXid (PCI:...): N, ...``. A line whose PCI address was elided (``PCI:...``) is not an event.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import yaml

from ajr_supervisor.errors import AjrError
from ajr_supervisor.health import Check, State
from ajr_supervisor.health import normalize_pci as health_pci
from ajr_supervisor.types import ACTION_SEVERITY, Action, Component

XID_TABLE = Path(__file__).resolve().parent.parent / "data" / "xid.yaml"
COMMAND_TIMEOUT_S = 5.0
DETAIL_KEEP = 600
JOURNALCTL = ("journalctl", "-k", "-o", "short-iso", "--no-pager")
DMESG_ISO = ("dmesg", "--time-format", "iso")
EXCLUDE = Action.EXCLUDE_NODE_AND_REQUEUE

_PCI = r"(?:PCI:)?([0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)"
_XID = re.compile(r"NVRM: Xid (?:\(" + _PCI + r"\):? )?(\d+)\b,?\s*(.*)$")
_SXID = re.compile(r"(nvidia-nvswitch\d*): SXid \(" + _PCI + r"\): (\d+),\s*(.*)$")
_PID = re.compile(r"pid=(?:'?<unknown>'?|(\d+))(?:, name=(.*?))?(?:,\s+|,?\s*$)")
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:?\d{2})?")
_CTIME = re.compile(r"\[(\w{3} \w{3} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})\]")
_MONO = re.compile(r"\[\s*(\d+\.\d+)\]")
_NO_ACCESS = ("not permitted", "permission denied", "insufficient permissions",
              "not seeing messages from other users")
_RECOVERY = re.compile(r"\bto 0x[0-9a-fA-F]+ \(([^)]*)\)")   # Xid 154: "... to 0x2 (Node Reboot Required)"
_RECOVERY_ACTIONS = {"none": Action.NONE, "drain p2p": Action.REQUEUE, "drain and reset": EXCLUDE,
                     "gpu reset required": EXCLUDE, "node reboot required": EXCLUDE}


class KernelLogError(AjrError):
    """The kernel log could not be read: missing command, no permission, timeout, unreadable file."""

    def __init__(self, source: str, message: str, returncode: int | None = None,
                 stderr: str = "") -> None:
        self.source = source
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message, "run as root, or add the user to the systemd-journal/adm group")


class CommandResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], float], CommandResult]


def subprocess_runner(argv: Sequence[str], timeout_s: float) -> CommandResult:
    """Run ``argv`` for real (C locale). Raises ``OSError`` and ``subprocess.TimeoutExpired``."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, errors="replace", check=False,
                          timeout=timeout_s, stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C"))
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class XidEvent:
    """One Xid (or SXid) line. ``pci`` is ``0000:3b:00`` (domain:bus:device) or ``""``."""

    xid: int
    pci: str
    pid: int | None
    process: str | None
    message: str
    time: float | None          # epoch seconds when the line says (or boot time allows); else None
    raw: str
    kind: str = "Xid"           # "Xid" (a GPU) or "SXid" (an NVSwitch)


@dataclass(frozen=True)
class XidClass:
    xid: int
    mnemonic: str
    description: str
    component: Component
    action: Action
    bucket: str                 # NVIDIA's immediate-action bucket, for the record

    @property
    def exclude(self) -> bool:
        return self.action is EXCLUDE


def normalize_pci(text: str) -> str:
    """``PCI:0000:3B:00``, ``00000000:3b:00.0`` or ``3b:00.0`` -> ``0000:3b:00``; junk -> ``""``.
    (:func:`ajr_supervisor.health.normalize_pci` gives the ``0000:3b:00.0`` form NVML checks use.)"""
    try:
        return health_pci(text).rsplit(".", 1)[0]
    except ValueError:
        return ""


def parse_log_time(prefix: str, boot_time: float | None = None) -> float | None:
    """The epoch time in a kernel-log prefix: ISO (dmesg/journalctl), ``[ctime]``, or ``[uptime]``
    plus ``boot_time``. Syslog's ``Mon DD HH:MM:SS`` has no year and gives None."""
    iso, ctime = _ISO.search(prefix), _CTIME.search(prefix)
    try:
        if iso:
            date, frac, tz = iso.groups()
            text = date + (f".{(frac + '000000')[:6]}" if frac else "")
            text += ("+00:00" if tz == "Z" else f"{tz[:3]}:{tz[-2:]}") if tz else ""
            return datetime.fromisoformat(text).timestamp()
        if ctime:
            return time.mktime(time.strptime(ctime.group(1), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None
    m = _MONO.search(prefix)
    if m and boot_time is not None:
        return boot_time + float(m.group(1))
    return None


def parse_xid_line(line: str, boot_time: float | None = None) -> XidEvent | None:
    """An :class:`XidEvent` for an ``NVRM: Xid`` or ``SXid`` line, else None."""
    line = line.rstrip("\r\n")
    m = _XID.search(line)
    if m:
        pci, number, rest = m.groups()
        p = _PID.match(rest)
        pid = int(p.group(1)) if p and p.group(1) else None
        name = (p.group(2) or "").strip() if p else ""
        process = name if name not in ("", "<unknown>") else None
        rest = rest[p.end():] if p else rest
        return XidEvent(int(number), normalize_pci(pci or ""), pid, process, rest.strip(),
                        parse_log_time(line[:m.start()], boot_time), line)
    m = _SXID.search(line)
    if m:
        _switch, pci, number, rest = m.groups()
        return XidEvent(int(number), normalize_pci(pci), None, None, rest.strip(),
                        parse_log_time(line[:m.start()], boot_time), line, kind="SXid")
    return None


@lru_cache(maxsize=1)
def xid_table() -> dict[int, XidClass]:
    """The packaged table, validated (a broken table is a bug: it raises)."""
    data = yaml.safe_load(XID_TABLE.read_text())
    return {int(x): XidClass(int(x), str(row["mnemonic"]), str(row["description"]),
                             Component(row["component"]), Action(row["action"]), str(row["bucket"]))
            for x, row in data["xids"].items()}


@lru_cache(maxsize=1)
def exclude_xids() -> frozenset[int]:
    """The Xids whose node leaves the job (the table's EXCLUDE_NODE_AND_REQUEUE): the one list that
    the NVML probe's live Xid check and the ``gpu_xid_fatal`` rule use (a test keeps the rule equal)."""
    return frozenset(x for x, c in xid_table().items() if c.action is EXCLUDE)


def classify(xid: int) -> XidClass:
    """The catalog class of an Xid number; an Xid not in the table: UNKNOWN, REQUEUE, never exclude."""
    return xid_table().get(xid) or XidClass(xid, "UNKNOWN", f"Xid {xid} (not in ajr's table)",
                                            Component.UNKNOWN, Action.REQUEUE, "UNKNOWN")


def classify_event(event: XidEvent) -> XidClass:
    """:func:`classify` refined by the line: Xid 154 names the recovery action, Xid 144-150 say
    ``Fatal``/``Nonfatal``, an SXid line starts with ``Fatal``/``Non-fatal`` (NVSwitch fabric)."""
    if event.kind == "SXid":
        fatal = event.message.startswith("Fatal")
        return XidClass(event.xid, "SXID", "NVSwitch error (SXid)", Component.NETWORK,
                        EXCLUDE if fatal else Action.NONE, "FATAL" if fatal else "NON_FATAL")
    base, action = classify(event.xid), None
    if event.xid == 154:
        m = _RECOVERY.search(event.message)
        action = _RECOVERY_ACTIONS.get(m.group(1).strip().lower() if m else "")
    elif 144 <= event.xid <= 150 and re.search(r"\bFatal\b", event.message):
        action = EXCLUDE
    return base if action in (None, base.action) else replace(base, action=action)


def boot_time_from_proc(path: str = "/proc/stat") -> float | None:
    """The boot time (epoch) from ``btime`` in /proc/stat, or None."""
    try:
        return next((float(l.split()[1]) for l in Path(path).read_text().splitlines()
                     if l.startswith("btime ")), None)
    except (OSError, ValueError, IndexError):
        return None


def _run(source: str, argv: Sequence[str], runner: Runner, timeout_s: float) -> CommandResult:
    try:
        return runner(argv, timeout_s)
    except FileNotFoundError:
        raise KernelLogError(source, f"`{argv[0]}` not found: cannot read the kernel log") from None
    except subprocess.TimeoutExpired:
        raise KernelLogError(source, f"`{' '.join(argv)}` timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise KernelLogError(source, f"`{' '.join(argv)}` could not run: {exc}") from None


def _refused(result: CommandResult) -> bool:
    """The command said it could not see the log (journalctl's hints come on stderr or as the
    first stdout lines; kernel lines that mention "permission denied" do not count)."""
    head = [l for l in result.stdout.splitlines()[:3] if l.startswith(("Hint:", "No journal files"))]
    text = "\n".join([result.stderr, *head]).lower()
    return any(needle in text for needle in _NO_ACCESS)


def _failure(source: str, argv: Sequence[str], result: CommandResult) -> KernelLogError:
    first = " ".join(result.stderr.split())[:300]
    return KernelLogError(source, f"`{' '.join(argv)}` failed (exit {result.returncode})"
                          + (f": {first}" if first else ""), result.returncode, result.stderr)


def read_kernel_lines(source: str, since: float | None = None, *, runner: Runner | None = None,
                      timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[list[str], float | None]:
    """The kernel log's lines, and the boot time that dates ``[uptime]`` stamps (or None). ``source``:
    ``"journalctl"`` (``-k``: this boot; ``--since=@<since>``), ``"dmesg"`` (``--time-format iso``, else
    plain, dated by /proc/stat's btime) or a file path. Raises :class:`KernelLogError`."""
    run = runner or subprocess_runner
    if source == "journalctl":
        argv = [*JOURNALCTL] + ([f"--since=@{int(since)}"] if since is not None else [])
        result = _run(source, argv, run, timeout_s)
        if result.returncode != 0 or _refused(result):
            raise _failure(source, argv, result)
        return result.stdout.splitlines(), None
    if source == "dmesg":
        result = _run(source, DMESG_ISO, run, timeout_s)
        if result.returncode == 0:
            return result.stdout.splitlines(), None
        if _refused(result):
            raise _failure(source, DMESG_ISO, result)
        result = _run(source, ["dmesg"], run, timeout_s)   # busybox and old util-linux: no --time-format
        if result.returncode != 0:
            raise _failure(source, ["dmesg"], result)
        return result.stdout.splitlines(), boot_time_from_proc()
    try:
        with open(source, encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines(), None
    except OSError as exc:
        raise KernelLogError(source, f"cannot read the kernel log {source}: {exc.strerror or exc}") from None


def read_kernel_log(source: str, since: float | None = None, *, runner: Runner | None = None,
                    timeout_s: float = COMMAND_TIMEOUT_S) -> list[XidEvent]:
    """The Xid/SXid events in the kernel log at or after ``since`` (events without a time are kept).
    Raises :class:`KernelLogError` when the log cannot be read."""
    lines, boot_time = read_kernel_lines(source, since, runner=runner, timeout_s=timeout_s)
    events = (parse_xid_line(line, boot_time) for line in lines)
    return [e for e in events if e is not None and (since is None or e.time is None or e.time >= since)]


def _describe(events: Sequence[XidEvent]) -> str:
    parts: list[str] = []
    for xid in sorted({e.xid for e in events}):
        same = [e for e in events if e.xid == xid]
        cls = max(map(classify_event, same), key=lambda c: ACTION_SEVERITY[c.action])
        count = f" x{len(same)}" if len(same) > 1 else ""
        parts.append(f"{same[0].kind} {xid}{count} ({cls.description}; {cls.bucket} -> "
                     f"{cls.action.value}): {same[-1].message}")
    text = "; ".join(parts)
    return text if len(text) <= DETAIL_KEEP else text[:DETAIL_KEEP - 3] + "..."


def xid_checks(events: Iterable[XidEvent]) -> list[Check]:
    """One check per GPU (``xid:<pci>``) or NVSwitch (``sxid:<pci>``) that logged something: BAD when
    an event's class says exclude, else GOOD. No events: one GOOD ``xid`` check. Call it only with a
    log that was read; a read failure is :func:`kernel_xid_checks`'s UNKNOWN."""
    groups: dict[str, list[XidEvent]] = {}
    for event in events:
        name = f"{event.kind.lower()}:{event.pci or 'unknown'}"
        groups.setdefault(name, []).append(event)
    if not groups:
        return [Check("xid", State.GOOD, {"xids": []}, "no NVIDIA Xid in the kernel log")]
    checks = []
    for name, group in sorted(groups.items()):
        bad = any(classify_event(e).exclude for e in group)
        pci = health_pci(group[0].pci) if group[0].pci else None
        checks.append(Check(name, State.BAD if bad else State.GOOD,
                            {"pci": pci, "xids": sorted({e.xid for e in group})}, _describe(group)))
    return checks


def kernel_xid_checks(source: str, since: float | None = None, *, runner: Runner | None = None,
                      timeout_s: float = COMMAND_TIMEOUT_S) -> list[Check]:
    """:func:`read_kernel_log` then :func:`xid_checks`; an unreadable log is one UNKNOWN ``xid``."""
    try:
        events = read_kernel_log(source, since, runner=runner, timeout_s=timeout_s)
    except KernelLogError as exc:
        return [Check("xid", State.UNKNOWN, None, exc.one_line())]
    return xid_checks(events)
