"""The durable event outbox: every registry event lands on disk first, then goes to the registry.

The supervisor and ``ajr epilog`` :meth:`Outbox.put` each event into one directory, one file per
event (``<time_ns>-<id>.json``: temp file, fsync, rename, fsync of the directory). put never raises
and costs well under a millisecond on a local disk, so training never waits on the network. A
:class:`Deliverer` thread posts the oldest files in batches and deletes what the registry took::

    POST {url}/api/v1/events   Authorization: Bearer <token>   Content-Type: application/json
    {"events": [...], "host": "<hostname>", "backlog": <events waiting, this batch included>}
    200 {"accepted": n, "duplicates": m, "rejected": [{"id": "...", "error": "..."}]}

Event ids are made once, so a batch sent twice is harmless (the registry counts duplicates).
Events the registry rejects, and files that cannot be parsed, move to ``rejected/`` with a
``.reason`` file beside them: a poison event never blocks the queue. 401/403, other 4xx, 5xx,
timeouts and refused connections keep everything for the next round; 413 halves the batch (for
good), and a single event still too large is rejected. Two processes delivering from one directory
take turns on an ``flock`` of ``.deliver.lock``; the loser skips its round. As root, the files
and directories made here go to the owner of the directory (the job's user), as in
:mod:`ajr_supervisor.state`. This is the only module of the supervisor that talks HTTP.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import requests

from ajr_supervisor import events

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/events"
LOCK_NAME = ".deliver.lock"
REJECTED_DIR = "rejected"
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>:?\s*")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"\)\]]+)")


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery round (or a flush) did. ``busy``: another process was delivering."""

    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    left: int = 0
    error: str | None = None
    busy: bool = False

    def then(self, later: DeliveryResult) -> DeliveryResult:
        """Both rounds: counts added, ``left``/``error``/``busy`` from ``later``."""
        return DeliveryResult(self.sent + later.sent, self.duplicates + later.duplicates,
                              self.rejected + later.rejected, later.left, later.error, later.busy)


class Outbox:
    """One outbox directory: :meth:`put` events in, :meth:`deliver_once` (or :meth:`flush`) them out.
    ``url`` None: nothing is sent and events wait (``ajr outbox flush`` sends them once an admin
    sets registry_url)."""

    def __init__(self, directory: str | os.PathLike, *, url: str | None, token: str | None,
                 batch_max: int = 200, timeout_s: float = 5.0, clock: Callable[[], float] = time.time,
                 session: requests.Session | None = None) -> None:
        self.directory = Path(directory)
        self.url = url.rstrip("/") if url else None
        self.token = token or None
        self.batch_max = max(1, int(batch_max))
        self.timeout_s = timeout_s
        self.clock = clock
        self.on_put: Callable[[], None] | None = None   # Deliverer.start sets it: wake after a put
        self._session = session
        self._host = socket.gethostname()
        self._stamp_lock, self._last_ns = threading.Lock(), 0
        self._owner: tuple[int, int] | None | bool = False   # False: not looked up yet
        self._put_error: str | None = None                    # the last put failure logged
        self._dropped, self._unlocked = 0, False

    # -- writing -------------------------------------------------------------------------------

    def put(self, event: dict) -> bool:
        """Write ``event`` durably; True once it is on disk. Never raises: an invalid event or a
        disk error logs a warning (once per distinct error) and returns False."""
        try:
            events.validate(event)
            data = _encode(event)
            if len(data) > events.MAX_EVENT_BYTES:
                raise events.EventError(f"event is {len(data)} bytes, the registry takes at most "
                                        f"{events.MAX_EVENT_BYTES}")
            self._write(f"{self._stamp():020d}-{_UNSAFE.sub('_', event['id'])}.json", data)
        except (events.EventError, TypeError, ValueError) as exc:
            return self._put_failed(f"dropped an invalid event: {exc}")
        except OSError as exc:
            return self._put_failed(f"cannot write to the outbox {self.directory}: {exc.strerror or exc}")
        except Exception as exc:  # never into the training's path
            return self._put_failed(f"outbox put failed: {type(exc).__name__}: {exc}")
        if self._put_error is not None:
            log.info("outbox %s is writable again (%d events were dropped)", self.directory, self._dropped)
            self._put_error, self._dropped = None, 0
        if self.on_put is not None:
            try:
                self.on_put()
            except Exception:
                pass
        return True

    def _put_failed(self, message: str) -> bool:
        self._dropped += 1
        if message != self._put_error:
            log.warning("%s", message)
            self._put_error = message
        return False

    def _stamp(self) -> int:
        """Nanoseconds from the clock, strictly increasing here (file names sort in put order)."""
        with self._stamp_lock:
            self._last_ns = max(int(self.clock() * 1e9), self._last_ns + 1)
            return self._last_ns

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.directory / f".{name}.tmp"
        try:
            fd = os.open(tmp, _NEW, 0o644)
        except FileNotFoundError:
            self._ensure_dir(self.directory)
            fd = os.open(tmp, _NEW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            self._give(fd)
            os.close(fd)
            fd = -1
            os.rename(tmp, self.directory / name)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        try:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass              # some filesystems cannot fsync a directory; the file is safe

    def _give(self, fd: int) -> None:
        """As root, give the open file to the directory's owner (looked up once)."""
        if self._owner is False:
            st = self.directory.stat()
            self._owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and (st.st_uid or st.st_gid) else None
        if self._owner:
            try:
                os.fchown(fd, *self._owner)
            except OSError:
                pass        # still readable (0644) and removable by the directory's owner

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and its parents; as root, give them to the owner of the nearest
        existing ancestor, so the job's user and root can both use them."""
        missing, probe = [], directory
        while not probe.exists() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and missing:
            st = probe.stat()
            for d in missing:
                try:
                    os.chown(d, st.st_uid, st.st_gid)
                except OSError:
                    pass

    # -- reading -------------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[Path]:
        """The waiting event files, oldest first (at most ``limit``)."""
        return [self.directory / n for n in self._names()[:limit]]

    def backlog(self) -> int:
        """How many events wait."""
        return len(self._names())

    def _names(self) -> list[str]:
        try:
            with os.scandir(self.directory) as it:
                return sorted(e.name for e in it if e.name.endswith(".json") and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- delivering ----------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def deliver_once(self, *, timeout_s: float | None = None) -> DeliveryResult:
        """Post the oldest events (up to ``batch_max``) once, under the directory's lock; see the
        module doc for the answers. Never raises for network trouble: ``error`` is one line."""
        if not self.url:
            return DeliveryResult(left=self.backlog(), error="no registry configured (registry_url); "
                                  f"events wait in {self.directory}")
        lock = self.directory / LOCK_NAME
        try:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except PermissionError:    # made by the other side (root epilog / the job's user)
                fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if not self.directory.is_dir():
                return DeliveryResult()    # no outbox yet: nothing waits
            return DeliveryResult(left=self.backlog(), error=f"cannot open {lock}: {exc.strerror}")
        try:
            self._give(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return DeliveryResult(left=self.backlog(), busy=True)
            except OSError as exc:         # no flock here (Lustre without -o flock): ids are idempotent
                if not self._unlocked:
                    log.warning("cannot lock %s (%s); delivering without the lock", lock, exc.strerror)
                    self._unlocked = True
            return self._deliver_locked(timeout_s or self.timeout_s)
        finally:
            os.close(fd)

    def _deliver_locked(self, timeout_s: float) -> DeliveryResult:
        size, moved = self.batch_max, 0
        while True:          # each pass sends, moves a file aside, halves the batch, or fails
            names = self._names()
            batch = []
            for name in names[:size]:
                try:
                    raw = (self.directory / name).read_bytes()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    return DeliveryResult(rejected=moved, left=self.backlog(),
                                          error=f"cannot read {self.directory / name}: {exc.strerror}")
                try:
                    batch.append((self.directory / name, events.validate(json.loads(raw, parse_constant=_bad))))
                except ValueError as exc:       # JSONDecodeError, UnicodeDecodeError, EventError
                    moved += self._reject(self.directory / name, f"unreadable event file: {exc}")
            left = max(0, len(names) - size)
            if not batch:
                return DeliveryResult(rejected=moved, left=left)
            try:
                answer = self._post([e for _, e in batch], len(names), timeout_s)
            except requests.RequestException as exc:
                return DeliveryResult(rejected=moved, left=self.backlog(),
                                      error=f"cannot reach the registry at {self.url}: {_why(exc)}")
            if answer.status_code == 413:
                if len(batch) == 1:          # one event larger than the registry takes: poison
                    moved += self._reject(batch[0][0], f"registry answered 413: {_detail(answer)}")
                else:                        # the registry's limit: keep to it from now on
                    size = self.batch_max = max(1, len(batch) // 2)
                continue
            outcome = self._answer(answer)
            if isinstance(outcome, str):
                return DeliveryResult(rejected=moved, left=self.backlog(), error=outcome)
            accepted, duplicates, refused = outcome
            for path, event in batch:
                if event["id"] in refused:
                    moved += self._reject(path, f"registry rejected it: {refused[event['id']]}")
                else:
                    path.unlink(missing_ok=True)
            return DeliveryResult(accepted, duplicates, moved, left)

    def _answer(self, answer: requests.Response) -> str | tuple[int, int, dict[str, str]]:
        """(accepted, duplicates, {rejected id: error}) from a 2xx answer, else the error line."""
        status = answer.status_code
        if status in (401, 403):
            hint = ("set registry_token_file in the ajr config (a 'supervisor' token) or AJR_REGISTRY_TOKEN"
                    if self.token is None else "check the token in registry_token_file / AJR_REGISTRY_TOKEN "
                    "(it needs the 'supervisor' role)")
            return f"registry refused the token: {status} {_detail(answer)}; {hint}"
        if not 200 <= status < 300:
            return f"registry answered {status}: {_detail(answer)}"
        try:
            body = answer.json()
            return (int(body["accepted"]), int(body.get("duplicates", 0)),
                    {r["id"]: str(r.get("error", "")) for r in body.get("rejected", [])})
        except (ValueError, TypeError, KeyError, AttributeError):
            return (f"registry answered {status} with an unexpected body (expected accepted/duplicates/"
                    f"rejected): {_detail(answer)}")

    def _post(self, batch: list[dict], backlog: int, timeout_s: float) -> requests.Response:
        body = json.dumps({"events": batch, "host": self._host, "backlog": backlog},
                          separators=(",", ":"), allow_nan=False).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.session.post(self.url + EVENTS_PATH, data=body, headers=headers, timeout=timeout_s,
                                 allow_redirects=False)

    def _reject(self, path: Path, reason: str) -> int:
        """Move ``path`` to rejected/ with a ``.reason`` file; 1 when moved (0: it was gone)."""
        aside = self.directory / REJECTED_DIR
        try:
            if not aside.is_dir():
                self._ensure_dir(aside)
            os.rename(path, aside / path.name)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot move the rejected event %s aside: %s", path, exc.strerror)
            return 0
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.clock()))
        try:
            (aside / f"{path.stem}.reason").unlink(missing_ok=True)
            fd = os.open(aside / f"{path.stem}.reason", _NEW, 0o644)
            try:
                os.write(fd, f"{when} {reason}\n".encode())
                self._give(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        log.warning("outbox: %s: %s; kept in %s", path.name, reason, aside)
        return 1

    def flush(self, timeout_s: float, *, sleep: Callable[[float], None] = time.sleep) -> DeliveryResult:
        """Deliver until nothing waits, an error, or ``timeout_s`` (each request's timeout is cut
        to the time left); waits while another process delivers."""
        deadline = self.clock() + timeout_s
        total = DeliveryResult(left=self.backlog())
        while total.left and (left_s := deadline - self.clock()) > 0:
            result = self.deliver_once(timeout_s=max(0.1, min(self.timeout_s, left_s)))
            total = total.then(result)
            if result.error:
                break
            if result.busy:
                sleep(min(0.1, max(0.0, deadline - self.clock())))
            elif not (result.sent or result.duplicates or result.rejected):
                break
        return total


def from_config(config: Any, work_dir: str | os.PathLike, env: Mapping[str, str] | None = None, *,
                directory: str | os.PathLike | None = None) -> Outbox:
    """The outbox of a job: ``config.outbox_path(work_dir)`` (or ``directory``), the registry at
    ``config.registry_url``, the token from ``registry_token_file``, else ``$AJR_REGISTRY_TOKEN``.
    An unreadable token file is a warning: events still go to disk and wait."""
    env = os.environ if env is None else env
    token = None
    if config.registry_token_file:
        try:
            token = Path(config.registry_token_file).read_text().strip() or None
            if token is None:
                log.warning("registry token file %s is empty; put a 'supervisor' token in it",
                            config.registry_token_file)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read the registry token file %s (%s); make it readable by this user",
                        config.registry_token_file, getattr(exc, "strerror", None) or "not text")
    return Outbox(directory or config.outbox_path(work_dir), url=config.registry_url,
                  token=token or env.get("AJR_REGISTRY_TOKEN") or None)


def fetch_lemons(url: str | None, token: str | None, timeout_s: float = 3.0) -> list[str] | None:
    """The registry's lemon nodes (``GET /api/v1/lemons``), or None when they cannot be known (no
    registry, refused, down, a bad answer): one warning, and the job runs without them."""
    if not url:
        return None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = requests.get(url.rstrip("/") + "/api/v1/lemons", headers=headers, timeout=timeout_s,
                              allow_redirects=False)
        nodes = answer.json().get("nodes") if answer.ok else None
    except (requests.RequestException, ValueError, AttributeError) as exc:
        log.warning("cannot read the lemon nodes from %s (%s); no lemon is excluded", url, _why(exc))
        return None
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        log.warning("cannot read the lemon nodes from %s (%s); no lemon is excluded", url,
                    f"HTTP {answer.status_code}: {_detail(answer)}" if not answer.ok else "unexpected answer")
        return None
    return nodes


def _encode(event: dict) -> bytes:
    try:
        return json.dumps(event, separators=(",", ":"), allow_nan=False, default=str).encode()
    except ValueError:     # NaN/inf (a diverged loss): JSON has none, send null
        return json.dumps(_finite(event), separators=(",", ":"), default=str).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _bad(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _detail(answer: requests.Response) -> str:
    """The registry's own words, short: FastAPI's ``detail``, else the start of the body."""
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else (answer.text or answer.reason or "")
    return " ".join(str(text).split())[:200] or "(empty body)"


def _why(exc: Exception) -> str:
    """A stable one-line reason for a requests failure (no object addresses, so it logs once)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer in time"
    found = _ERRNO.search(str(exc))
    if found:
        return found.group(1).strip().lower()
    return " ".join(_OBJECT_REPR.sub("", str(exc)).split())[:200] or type(exc).__name__


from ajr_supervisor.deliverer import Deliverer  # noqa: E402  (the thread that empties an Outbox)

__all__ = ["EVENTS_PATH", "DeliveryResult", "Deliverer", "Outbox", "fetch_lemons", "from_config"]
