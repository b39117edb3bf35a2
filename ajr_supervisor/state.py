"""The per-job state file: every attempt, its anomalies, checkpoints, decision and actions.

One JSON file per job id in the state directory, shared by the supervisor (inside the job, as the
job's user) and ``ajr epilog`` (EpilogSlurmctld, as SlurmUser). Every change is read-modify-write under
an exclusive ``flock`` on a sibling lock file, and lands atomically: temp file, fsync, rename, fsync
of the directory. A file that cannot be read is kept aside (``*.corrupt-<time>``), never overwritten.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

from ajr_supervisor.errors import AjrError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# end_reason values of an attempt that failed: the supervisor's requeued/stopped/failure, the epilog's
# failure, and "lost" (a later attempt found it still marked running: nobody recorded its end).
FAILURE_REASONS = frozenset({"requeued", "stopped", "failure", "lost"})


class StateError(AjrError):
    pass


@dataclass
class Attempt:
    """One run of the job (Slurm's restart count is the attempt number)."""

    attempt: int
    started_at: float
    nodes: list[str] = field(default_factory=list)
    log_path: str = ""
    host: str = ""
    supervisor_pid: int | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    end_reason: str = ""                 # success, failure, hang, cancelled, requeued, stopped, lost...
    anomalies: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    decision: dict | None = None         # verdict, reason, exclude, decided_at, finding, by
    actions: list[dict] = field(default_factory=list)   # action, ok, at, error
    log_offset: int = 0
    rank_nodes: dict[str, str] = field(default_factory=dict)   # rank (as str) -> node
    stacks: dict[str, str] = field(default_factory=dict)       # rank -> py-spy dump, taken before a hang's kill
    health: dict[str, dict] = field(default_factory=dict)      # node -> NodeHealth probed before the decision
    first_step_at: float | None = None   # the attempt's first progress line (wall clock)

    @property
    def running(self) -> bool:
        return self.ended_at is None

    @property
    def failed(self) -> bool:
        """Ended by a failure of its own (counts towards a crash loop). Success, a cancellation or
        requeue by Slurm or the user, and a dry run's own end do not."""
        return self.end_reason in FAILURE_REASONS

    def done(self, action: str) -> bool:
        return any(a["action"] == action and a.get("ok") for a in self.actions)


@dataclass
class JobRecord:
    job_id: str
    job_name: str = ""
    user: str = ""
    partition: str = ""
    work_dir: str = ""
    enrollment: dict = field(default_factory=dict)
    excluded_nodes: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    final: dict | None = None
    notes: list[str] = field(default_factory=list)
    version: int = SCHEMA_VERSION

    def attempt(self, number: int) -> Attempt | None:
        for a in self.attempts:
            if a.attempt == number:
                return a
        return None

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobRecord":
        known = {f.name for f in fields(cls)}
        attempt_known = {f.name for f in fields(Attempt)}
        data = {k: v for k, v in data.items() if k in known}
        data["attempts"] = [Attempt(**{k: v for k, v in a.items() if k in attempt_known})
                            for a in data.get("attempts", [])]
        data["job_id"] = str(data["job_id"])
        return cls(**data)


class JsonFile:
    """One JSON document in a file, shared between processes (and users): read-modify-write under an
    exclusive ``flock`` on ``<file>.lock``, atomic replace (temp file, fsync, rename, fsync of the
    directory). A document that cannot be parsed is kept aside as ``<file>.corrupt-<ns>`` and counts
    as absent. As root, new files are given to the directory's owner (the job's user)."""

    def __init__(self, path: str | os.PathLike, parse: Callable[[dict], Any] = dict,
                 dump: Callable[[Any], dict] = dict) -> None:
        self.path = Path(path)
        self.parse = parse
        self.dump = dump

    def load(self) -> Any | None:
        with self._locked():
            return self._read()

    def update(self, change: Callable[[Any], Any], new: Callable[[], Any]) -> Any:
        """Apply ``change`` to the document (``new()`` when there is none) and write it back."""
        with self._locked():
            doc = self._read()
            if doc is None:
                doc = new()
            change(doc)
            self._write(doc)
            return doc

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_suffix(".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:   # created by the other side (root epilog / the job's user)
                fd = os.open(lock, os.O_RDONLY)
            self._give_to_owner(lock)
        except OSError as exc:
            raise StateError(f"cannot use the state directory {self.path.parent}: {exc.strerror}",
                             "set state_dir in the ajr config to a directory the job's user can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> Any | None:
        path = self.path
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"the top level is a {type(data).__name__}, not an object")
            return self.parse(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            os.replace(path, aside)
            log.warning("%s is unreadable (%s); kept it as %s and started a new one", path, exc, aside)
            return None

    def _give_to_owner(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        st = self.path.parent.stat()
        try:
            os.chown(path, st.st_uid, st.st_gid)
        except OSError:
            pass

    def _write(self, doc: Any) -> None:
        path = self.path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(self.dump(doc), indent=1, sort_keys=True, default=str) + "\n"
        try:
            with open(tmp, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._give_to_owner(tmp)
            os.replace(tmp, path)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StateError(f"cannot write {path}: {exc.strerror}") from None


class StateStore:
    """The per-job state files of one directory."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def path(self, job_id: str) -> Path:
        safe = str(job_id).replace("/", "_")
        return self.directory / f"job_{safe}.json"

    def _file(self, job_id: str) -> JsonFile:
        return JsonFile(self.path(job_id), parse=JobRecord.from_dict, dump=JobRecord.to_dict)

    def load(self, job_id: str) -> JobRecord | None:
        """The job's record, or None when there is none (or it was unreadable and set aside)."""
        return self._file(job_id).load()

    def update(self, job_id: str, change: Callable[[JobRecord], Any]) -> JobRecord:
        """Apply ``change`` to the job's record (created when missing) atomically, under the lock."""
        return self._file(job_id).update(change, lambda: JobRecord(job_id=str(job_id)))
