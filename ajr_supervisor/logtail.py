"""Follow the unified log: wait for it to appear, read complete lines, survive truncation.

``srun -l -u`` writes the file directly, so the training never depends on the reader. The reader
keeps a byte offset (saved in the state file), wakes on inotify and falls back to polling where
inotify is not available. Lines are split into srun's rank prefix and the text.

inotify is read in the caller's own thread (``select`` on the inotify descriptor and a wake-up
pipe), with no thread of its own: watchdog's observer, with its three threads, cost about 1.6% of
a core on a log written 20 times a second (benchmarks/overhead.py), more than everything else the
supervisor does with the log. watchdog's observer is kept as the fallback where libc's inotify
cannot be loaded.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
import struct
import time
from pathlib import Path
from typing import Callable

from ajr_supervisor.types import LogLine

log = logging.getLogger(__name__)

RANK_PREFIX = re.compile(r"^\s*(\d+): ")
MAX_LINE_BYTES = 64 * 1024       # a runaway line (progress bar without newline) is cut, not buffered forever
READ_CHUNK = 1 << 20


def split_rank(line: str) -> tuple[int | None, str]:
    """``'3: loss 1.2'`` -> ``(3, 'loss 1.2')``; a line without srun's prefix -> ``(None, line)``."""
    m = RANK_PREFIX.match(line)
    if m:
        return int(m.group(1)), line[m.end():]
    return None, line


class LogFollower:
    """Reads new complete lines of one file from a byte offset.

    ``wait(timeout_s)`` blocks until the file may have changed (inotify) or the timeout passes;
    ``wake()`` ends a wait early (another thread saw something, e.g. the training exited).
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0, *,
                 clock: Callable[[], float] = time.monotonic, inotify: bool = True,
                 min_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        # A log written in many small bursts would wake the reader for each one: a change seen
        # sooner than this after the last wake-up waits for the rest of it (wake() never waits).
        self.min_interval_s = min_interval_s
        self._woke_at = 0.0
        self.offset = offset
        self.clock = clock
        self._partial = b""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._inotify: _Inotify | None = None
        self._observer = None
        if inotify:
            self._inotify = _Inotify.open(self.path)
            if self._inotify is None:
                self._observer = _start_observer(self.path, self.wake)

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None or self._observer is not None

    def read_block(self, final: bool = False) -> tuple[bytes, int, float]:
        """The complete lines written since the last call as one block: ``(bytes, offset of its
        first byte in the file, read time)``; the block ends with a newline unless ``final`` (an
        unterminated tail too) or a runaway line longer than MAX_LINE_BYTES was cut."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return b"", self.offset, self.clock()
        if size < self.offset:                       # truncated or replaced: start again
            log.warning("log %s shrank from %d to %d bytes; reading it again from the start",
                        self.path, self.offset, size)
            self.offset, self._partial = 0, b""
        data = b""
        if size > self.offset:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(max(size - self.offset, 0))
        start = self.offset - len(self._partial)
        buf = self._partial + data
        self.offset += len(data)
        cut = buf.rfind(b"\n") + 1
        if final or len(buf) - cut > MAX_LINE_BYTES:
            cut = len(buf)
        self._partial = buf[cut:]
        return buf[:cut], start, self.clock()

    def read_new(self, final: bool = False) -> list[LogLine]:
        """Complete lines written since the last call. ``final``: also return an unterminated tail."""
        buf, start, now = self.read_block(final)
        lines: list[LogLine] = []
        pos = 0
        while pos < len(buf):
            nl = buf.find(b"\n", pos)
            end = len(buf) if nl < 0 else nl
            lines.append(make_line(buf[pos:end], start + pos, now))
            pos = end + 1
        return lines

    def wait(self, timeout_s: float) -> None:
        """Block until the file may have changed (or was created), ``wake()`` was called, or
        ``timeout_s`` passed (at most 0.2 s without inotify)."""
        fds = [self._wake_r]
        if self._inotify is not None:
            fds.append(self._inotify.fd)
        elif self._observer is None:
            timeout_s = min(timeout_s, 0.2)
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            try:
                ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            except InterruptedError:     # a signal: its handler may have called wake()
                continue
            if self._wake_r in ready:
                _drain(self._wake_r)
                break
            if not ready or (self._inotify is not None and self._inotify.relevant()):
                self._linger(deadline)
                break
        self._woke_at = time.monotonic()

    def _linger(self, deadline: float) -> None:
        """After a change: wait out ``min_interval_s`` since the last wake-up (a wake() ends it)."""
        until = min(deadline, self._woke_at + self.min_interval_s)
        while time.monotonic() < until:
            try:
                ready, _, _ = select.select([self._wake_r], [], [], max(0.0, until - time.monotonic()))
            except InterruptedError:
                continue
            if ready:
                _drain(self._wake_r)
                return

    def wake(self) -> None:
        """End a wait early; safe from other threads and signal handlers."""
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):   # the pipe is full (a wake is pending) or closed
            pass

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=2)
            except Exception:  # stopping a watcher must never break the caller
                pass
            self._observer = None


    def __del__(self) -> None:
        # the wake pipe lives as long as the follower: a late wake() must never write into a
        # descriptor number that a closed pipe left for another file
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:
            return out
        if not chunk:
            return out
        out += chunk


class _Inotify:
    """inotify(7) on the log's directory, read without a thread: the caller selects on ``fd`` and
    asks :meth:`relevant` whether the events are about the log (other files in the directory,
    such as other jobs' logs, are not)."""

    # IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
    MASK = 0x002 | 0x008 | 0x100 | 0x080 | 0x400 | 0x800
    _HEADER = struct.Struct("iIII")

    def __init__(self, fd: int, name: bytes) -> None:
        self.fd, self.name = fd, name

    @classmethod
    def open(cls, path: Path) -> "_Inotify | None":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError):
            return None
        add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.warning("inotify unavailable (%s); polling %s", os.strerror(ctypes.get_errno()), path)
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            wd = add(fd, os.fsencode(path.parent), cls.MASK)
        except OSError as exc:
            os.close(fd)
            log.warning("cannot watch %s (%s); polling instead", path.parent, exc)
            return None
        if wd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            log.warning("cannot watch %s (%s); polling instead", path.parent,
                        "inotify watch limit reached" if err == errno.ENOSPC else os.strerror(err))
            return None
        return cls(fd, os.fsencode(path.name))

    def relevant(self) -> bool:
        """Read the pending events; True when one is about the log (or the queue overflowed)."""
        buf, pos, found = _drain(self.fd), 0, False
        while pos + self._HEADER.size <= len(buf):
            _wd, mask, _cookie, length = self._HEADER.unpack_from(buf, pos)
            name = buf[pos + self._HEADER.size: pos + self._HEADER.size + length].rstrip(b"\0")
            pos += self._HEADER.size + length
            if name == self.name or mask & 0x4000 or not name:   # IN_Q_OVERFLOW, or the directory itself
                found = True
        return found

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def make_line(raw: bytes, offset: int, now: float) -> LogLine:
    """One raw line (without its newline) as a LogLine: rank prefix split off, a progress bar's
    carriage-return states reduced to the last one."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    rank, body = split_rank(text)
    if "\r" in body:
        body = body.rsplit("\r", 1)[-1]
    return LogLine(offset=offset, text=body, rank=rank, time=now)


def _start_observer(path: Path, wake: Callable[[], None]):
    """watchdog's observer on the log's directory, calling ``wake``; None when unavailable."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None
    target = str(path)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, ev):  # noqa: D401 - watchdog callback
            if getattr(ev, "src_path", None) == target or getattr(ev, "dest_path", None) == target:
                wake()

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(Handler(), str(path.parent), recursive=False)
        observer.daemon = True
        observer.start()
        return observer
    except OSError as exc:  # e.g. inotify watch limit reached
        log.warning("inotify unavailable for %s (%s); polling instead", path.parent, exc)
        return None
