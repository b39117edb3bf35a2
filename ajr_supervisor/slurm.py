"""The only module that runs Slurm's commands (scontrol, squeue, sinfo, sbatch, scancel, sacct).

Every call is an argv list run with ``shell=False``, a timeout and ``SLURM_CONF`` in its environment
(without it Slurm's clients fall back to a DNS SRV lookup). A failure becomes a typed
:class:`SlurmError` carrying the command, the exit code and the first part of stderr; a failed query
never reads as "nothing there".

Commands that change the world (requeue, release, update, drain...) go through :meth:`Slurm.act`,
which in dry-run mode logs ``would run: scontrol ...`` and changes nothing.

The parsers are pure functions over the text Slurm prints, tested on output captured from the lab
(``tests/data/slurm/``).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

from ajr_supervisor.errors import AjrError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
STDERR_KEEP = 300
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "NodeList", "Start", "End", "Elapsed")


class SlurmError(AjrError):
    """A Slurm command failed: non-zero exit, timeout, or missing binary."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str,
                 message: str | None = None, hint: str | None = None) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        first = " ".join(stderr.strip().split())[:STDERR_KEEP]
        if message is None:
            message = f"`{_short(argv)}` failed with exit code {returncode}"
            if first:
                message += f": {first}"
        super().__init__(message, hint)


class SlurmTimeout(SlurmError):
    """The command did not finish within its timeout (slurmctld busy or unreachable)."""


class SlurmNotInstalled(SlurmError):
    """The Slurm client command is not on PATH."""


def _short(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


class Completed(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], Mapping[str, str], float], Completed]


def subprocess_runner(argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> Completed:
    """Run ``argv`` for real. Raises ``FileNotFoundError`` and ``subprocess.TimeoutExpired``."""
    proc = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    return Completed(proc.returncode, proc.stdout, proc.stderr)


class Slurm:
    """A handle on one Slurm cluster: which ``slurm.conf``, which timeouts, dry-run or not.

    ``runner`` is injectable so unit tests can answer with captured output; the CLI builds the real
    one. ``conf`` defaults to ``$SLURM_CONF``; when that is unset the clients use their built-in
    default (``/etc/slurm/slurm.conf``), which is what a real cluster wants.
    """

    def __init__(self, conf: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 dry_run: bool = False, runner: Runner | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.conf = conf if conf is not None else os.environ.get("SLURM_CONF")
        self.timeout_s = timeout_s
        self.dry_run = dry_run
        self._runner = runner or subprocess_runner
        self._base_env = dict(os.environ if env is None else env)

    # -- plumbing ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment every Slurm command (and anything launched through Slurm) gets."""
        env = dict(self._base_env)
        if self.conf:
            env["SLURM_CONF"] = self.conf
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def run(self, argv: Sequence[str], *, timeout_s: float | None = None,
            check: bool = True, extra_env: Mapping[str, str] | None = None) -> Completed:
        """Run a Slurm command; raise :class:`SlurmError` on failure when ``check``."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            result = self._runner(argv, {**self.env(), **(extra_env or {})}, timeout)
        except FileNotFoundError:
            raise SlurmNotInstalled(
                argv, None, "", message=f"`{argv[0]}` not found: Slurm's client commands are not "
                "installed", hint="install them (apt-get install slurm-client, or `ajr lab install`)"
            ) from None
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise SlurmTimeout(argv, None, stderr,
                               message=f"`{_short(argv)}` timed out after {timeout:g} s",
                               hint="is slurmctld running and reachable?") from None
        if check and result.returncode != 0:
            raise SlurmError(argv, result.returncode, result.stderr)
        return result

    def act(self, argv: Sequence[str], *, timeout_s: float | None = None) -> Completed | None:
        """Run a command that changes the cluster; in dry-run mode only log it."""
        if self.dry_run:
            log.info("would run: %s", shlex.join(argv))
            return None
        log.debug("running: %s", shlex.join(argv))
        return self.run(argv, timeout_s=timeout_s)

    # -- queries ----------------------------------------------------------------------------
    def show_job(self, job_id: str | int) -> Job:
        out = self.run(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        jobs = parse_jobs(out)
        if not jobs:
            raise SlurmError(["scontrol", "-o", "show", "job", str(job_id)], 0, "",
                             message=f"scontrol printed no record for job {job_id}")
        return jobs[0]

    def show_nodes(self, names: str | None = None) -> list[Node]:
        argv = ["scontrol", "-o", "show", "node"] + ([names] if names else [])
        return parse_nodes(self.run(argv).stdout)

    def squeue(self, *, job_id: str | int | None = None, all_states: bool = False) -> list[QueueRow]:
        argv = ["squeue", "-h", "-o", SQUEUE_FORMAT]
        if job_id is not None:
            argv += ["-j", str(job_id)]
        if all_states:
            argv += ["-t", "all"]
        return parse_squeue(self.run(argv).stdout)

    def job_comment(self, job_id: str | int) -> str:
        """The job's ``--comment`` exactly as submitted (squeue's ``%k``: no parsing ambiguity)."""
        out = self.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%k"]).stdout
        value = out.rstrip("\n")
        return "" if value == "(null)" else value

    def sinfo(self) -> list[SinfoRow]:
        return parse_sinfo(self.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT]).stdout)

    def ping(self) -> bool:
        """True when slurmctld answers ``scontrol ping`` as UP."""
        result = self.run(["scontrol", "ping"], check=False, timeout_s=min(self.timeout_s, 10))
        return result.returncode == 0 and " is UP" in result.stdout

    def sbatch(self, args: Sequence[str]) -> str:
        """Submit a batch job; returns the job id (``--parsable``, cluster suffix dropped)."""
        out = self.run(["sbatch", "--parsable", *args]).stdout.strip()
        job_id = out.split(";", 1)[0]
        if not job_id:
            raise SlurmError(["sbatch", *args], 0, "", message="sbatch printed no job id")
        return job_id

    def sacct(self, job_id: str | int, fields: Sequence[str] = SACCT_FIELDS) -> list[dict[str, str]]:
        """Every run of a job, each requeue included (``-D``), as dicts keyed by sacct's names."""
        argv = ["sacct", "-a", "-D", "-P", "-n", "-j", str(job_id), "-o", ",".join(fields)]
        return parse_sacct(self.run(argv).stdout, fields)

    def launch_step(self, srun_args: Sequence[str], command: Sequence[str], *, stdout: int,
                    wrapper: str | None = None) -> subprocess.Popen:
        """Start ``srun -l -u [srun_args] COMMAND`` with stdout+stderr to the fd ``stdout``.

        The step runs in its own session, so signals meant for the caller do not reach it by
        accident. ``wrapper`` is a ``sh -c`` script run on every task before ``exec``-ing the command.
        """
        argv = ["srun", "-l", "-u", *srun_args]
        if wrapper:
            argv += ["/bin/sh", "-c", wrapper, "ajr-task"]
        argv += list(command)
        log.debug("starting: %s", shlex.join(argv))
        try:
            return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(), start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise SlurmNotInstalled(argv, None, "", message="`srun` not found: Slurm's client commands "
                                    "are not installed", hint="install them (apt-get install slurm-client)") from None

    def overlap(self, job_id: str | int, nodes: Sequence[str], command: Sequence[str], *,
                timeout_s: float = 20.0, extra_env: Mapping[str, str] | None = None) -> Completed:
        """Run ``command`` once on each of ``nodes`` inside the job's allocation, beside the running
        step (``srun --overlap``, 35 ms to start on the lab), with rank-prefixed output."""
        argv = ["srun", "--overlap", f"--jobid={job_id}", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}",
                "--ntasks-per-node=1", f"--nodelist={','.join(nodes)}", "-l", "--kill-on-bad-exit=0",
                *command]
        return self.run(argv, timeout_s=timeout_s, check=False, extra_env=extra_env)

    def running_steps(self, job_id: str | int) -> list[str]:
        """Ids of the job's running srun steps (``12.0``), without the batch and extern steps."""
        out = self.run(["squeue", "-h", "-s", "-j", str(job_id), "-o", "%i"]).stdout
        return [s for s in out.split() if s.rsplit(".", 1)[-1].isdigit()]

    def pending_held_jobs(self, name: str, user: str) -> list[QueueRow]:
        """Held pending jobs with this name and user (AJR's singleton_dependency chain)."""
        rows = self.squeue_filtered(["-t", "PENDING", "-n", name, "-u", user])
        return [r for r in rows if "held" in r.reason.lower() or r.reason in ("JobHeldUser", "JobHeldAdmin")]

    def squeue_filtered(self, filters: Sequence[str]) -> list[QueueRow]:
        return parse_squeue(self.run(["squeue", "-h", "-o", SQUEUE_FORMAT, *filters]).stdout)

    # -- actions ----------------------------------------------------------------------------
    def requeuehold(self, job_id: str | int) -> None:
        self.act(["scontrol", "requeuehold", str(job_id)])

    def requeue(self, job_id: str | int) -> None:
        self.act(["scontrol", "requeue", str(job_id)])

    def release(self, job_id: str | int) -> None:
        self.act(["scontrol", "release", str(job_id)])

    def hold(self, job_id: str | int) -> None:
        self.act(["scontrol", "hold", str(job_id)])

    def update_job(self, job_id: str | int, **fields: str) -> None:
        """``scontrol update JobId=... Key=Value ...`` with Slurm's spelling of the keys."""
        if not fields:
            raise ValueError("update_job needs at least one field")
        self.act(["scontrol", "update", f"JobId={job_id}", *(f"{k}={v}" for k, v in fields.items())])

    def set_excluded_nodes(self, job_id: str | int, nodes: Iterable[str]) -> None:
        """Set the job's ExcNodeList. Slurm *replaces* the list: pass the union you want."""
        self.update_job(job_id, ExcNodeList=",".join(sorted(set(nodes))))

    def scancel(self, job_id: str | int, *, signal: str | None = None) -> None:
        argv = ["scancel"] + ([f"--signal={signal}"] if signal else []) + [str(job_id)]
        self.act(argv)

    def drain(self, node: str, reason: str) -> None:
        self.act(["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])

    def resume(self, node: str) -> None:
        self.act(["scontrol", "update", f"NodeName={node}", "State=RESUME"])


# ------------------------------------------------------------------------------------------
# Parsers (pure)
# ------------------------------------------------------------------------------------------

# A key starts a field when it stands at the start of the line or after whitespace. Slurm keys use
# letters, digits and `_ : /` (``NtasksPerN:B:S:C``, ``CPUs/Task``).
_KEY = re.compile(r"(?:(?<=\s)|^)([A-Za-z][A-Za-z0-9_:/]*)=")
# Free-text fields whose value may itself contain ``word=`` after a space: the value runs up to the
# key that Slurm always prints next.
_FREE_TEXT_NEXT = {"Comment": ("StdErr", "StdIn", "StdOut", "Power"),
                   "AdminComment": ("OverSubscribe", "Comment", "StdErr"),
                   "Reason": ("Comment", "ExtSensorsJoules", "Dependency", "Requeue")}


def parse_key_values(line: str) -> dict[str, str]:
    """Split one ``scontrol -o`` record into its ``Key=Value`` fields (values may hold spaces)."""
    matches = list(_KEY.finditer(line))
    fields: dict[str, str] = {}
    i = 0
    while i < len(matches):
        m = matches[i]
        key = m.group(1)
        j = i + 1
        stops = _FREE_TEXT_NEXT.get(key)
        if stops:
            while j < len(matches) and matches[j].group(1) not in stops:
                j += 1
        end = matches[j].start() if j < len(matches) else len(line)
        if key not in fields:
            fields[key] = line[m.end():end].rstrip()
        i = j
    return fields


def _null(value: str | None) -> str:
    return "" if value in (None, "(null)", "None") else value


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value not in (None, "", "(null)", "N/A") else default
    except ValueError:
        return default


@dataclass(frozen=True)
class Job:
    """One job record from ``scontrol -o show job``; ``fields`` keeps Slurm's own keys."""

    job_id: str
    name: str
    user: str
    state: str
    reason: str
    partition: str
    nodes: str
    exc_nodes: str
    req_nodes: str
    batch_host: str
    restarts: int
    requeue: bool
    priority: int
    exit_code: str
    comment: str
    num_nodes: int
    fields: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def held(self) -> bool:
        """Held by a user or admin (``scontrol hold``/``requeuehold``): priority 0 while pending."""
        return self.priority == 0 and ("held" in self.reason.lower() or self.reason in ("JobHeldUser", "JobHeldAdmin"))

    @property
    def base_state(self) -> str:
        """The state without flags: ``COMPLETING`` for ``COMPLETING+...``."""
        return self.state.split("+", 1)[0]


def _user(value: str) -> str:
    # UserId=root(0) -> root
    return value.split("(", 1)[0] if value else ""


def parse_job_fields(fields: Mapping[str, str]) -> Job:
    return Job(
        job_id=fields.get("JobId", ""),
        name=_null(fields.get("JobName")),
        user=_user(fields.get("UserId", "")),
        state=fields.get("JobState", ""),
        reason=_null(fields.get("Reason")),
        partition=_null(fields.get("Partition")),
        nodes=_null(fields.get("NodeList")),
        exc_nodes=_null(fields.get("ExcNodeList")),
        req_nodes=_null(fields.get("ReqNodeList")),
        batch_host=_null(fields.get("BatchHost")),
        restarts=_int(fields.get("Restarts")),
        requeue=fields.get("Requeue", "0") == "1",
        priority=_int(fields.get("Priority")),
        exit_code=fields.get("ExitCode", ""),
        comment=_null(fields.get("Comment")),
        num_nodes=_int(fields.get("NumNodes", "").split("-", 1)[0]),
        fields=dict(fields),
    )


def parse_jobs(text: str) -> list[Job]:
    """Parse ``scontrol -o show job`` output (one record per line)."""
    jobs = []
    for line in text.splitlines():
        if line.startswith("JobId="):
            jobs.append(parse_job_fields(parse_key_values(line)))
    return jobs


@dataclass(frozen=True)
class Node:
    """One node record from ``scontrol -o show node``."""

    name: str
    state: str
    reason: str
    addr: str
    hostname: str
    cpus: int
    partitions: str
    fields: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def flags(self) -> frozenset[str]:
        """``IDLE+DRAIN`` -> {"DRAIN"}; ``DOWN*`` -> {"NOT_RESPONDING"}."""
        parts = self.state.split("+")
        flags = set(parts[1:])
        if parts[0].endswith("*"):
            flags.add("NOT_RESPONDING")
        return frozenset(flags)

    @property
    def base_state(self) -> str:
        return self.state.split("+", 1)[0].rstrip("*")

    @property
    def usable(self) -> bool:
        """Up and accepting work: not down, drained, draining, failing or unresponsive."""
        bad = {"DRAIN", "FAIL", "NOT_RESPONDING", "MAINTENANCE", "REBOOT_REQUESTED", "POWERED_DOWN"}
        return self.base_state in ("IDLE", "MIXED", "ALLOCATED", "COMPLETING") and not (self.flags & bad)


def parse_nodes(text: str) -> list[Node]:
    """Parse ``scontrol -o show node`` output."""
    nodes = []
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        f = parse_key_values(line)
        nodes.append(Node(name=f.get("NodeName", ""), state=f.get("State", ""),
                          reason=_null(f.get("Reason")), addr=f.get("NodeAddr", ""),
                          hostname=f.get("NodeHostName", ""), cpus=_int(f.get("CPUTot")),
                          partitions=_null(f.get("Partitions")), fields=f))
    return nodes


# squeue: fields separated by a character that never occurs in them; the comment goes last so it
# may contain anything (even the separator).
SQUEUE_FIELDS = ("JOBID", "NAME", "USER", "STATE", "REASON", "PARTITION", "NODELIST", "COMMENT")
SQUEUE_FORMAT = "|".join(("%i", "%j", "%u", "%T", "%r", "%P", "%N", "%k"))


class QueueRow(NamedTuple):
    job_id: str
    name: str
    user: str
    state: str
    reason: str
    partition: str
    nodes: str
    comment: str


def parse_squeue(text: str) -> list[QueueRow]:
    """Parse ``squeue -h -o SQUEUE_FORMAT`` output."""
    rows = []
    n = len(SQUEUE_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)
        if len(parts) != n:
            raise ValueError(f"squeue line has {len(parts)} fields, expected {n}: {line[:120]!r}")
        job_id, name, user, state, reason, part, nodes, comment = parts
        rows.append(QueueRow(job_id, name, user, state, _null(reason), part, nodes, _null(comment)))
    return rows


SINFO_FORMAT = "%N|%P|%T|%c|%E"


class SinfoRow(NamedTuple):
    node: str
    partition: str
    state: str
    cpus: int
    reason: str

    @property
    def default_partition(self) -> bool:
        return self.partition.endswith("*")


def parse_sinfo(text: str) -> list[SinfoRow]:
    """Parse ``sinfo -h -N -o SINFO_FORMAT`` output (one row per node and partition)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 4)
        if len(parts) != 5:
            raise ValueError(f"sinfo line has {len(parts)} fields, expected 5: {line[:120]!r}")
        node, part, state, cpus, reason = parts
        rows.append(SinfoRow(node, part, state, _int(cpus), "" if reason == "none" else _null(reason)))
    return rows


def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS) -> list[dict[str, str]]:
    """Parse ``sacct -P -n -o <fields>`` output into dicts."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != len(fields):
            raise ValueError(f"sacct line has {len(parts)} fields, expected {len(fields)}: {line[:120]!r}")
        rows.append(dict(zip(fields, parts)))
    return rows


# ------------------------------------------------------------------------------------------
# Host lists
# ------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(expr: str) -> list[str]:
    """``node[1-3,7],gpu01`` -> ``['node1', 'node2', 'node3', 'node7', 'gpu01']`` (zero padding kept).

    Raises ``ValueError`` naming the bad fragment.
    """
    out: list[str] = []
    for part in _split_top(expr.strip()):
        if not part:
            continue
        m = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\]([^\[\]]*)", part)
        if not m:
            if "[" in part or "]" in part:
                raise ValueError(f"bad host list fragment {part!r}")
            out.append(part)
            continue
        prefix, body, suffix = m.groups()
        for rng in body.split(","):
            r = _RANGE.match(rng.strip())
            if not r:
                raise ValueError(f"bad range {rng!r} in host list fragment {part!r}")
            lo, hi = r.group(1), r.group(2) or r.group(1)
            width = len(lo) if lo.startswith("0") else 0
            if int(hi) < int(lo):
                raise ValueError(f"bad range {rng!r} in host list fragment {part!r}")
            out.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
    return out


def _split_top(expr: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in expr:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced brackets in host list {expr!r}")
    parts.append("".join(cur))
    return parts
