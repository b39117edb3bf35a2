"""Follow the unified log: wait for it to appear, read complete lines, survive truncation.

``srun -l -u`` writes the file directly, so the training never depends on the reader. The reader
keeps a byte offset (saved in the state file), wakes on inotify (``watchdog``) and falls back to
polling where inotify is not available. Lines are split into srun's rank prefix and the text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
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
                 clock: Callable[[], float] = time.monotonic, inotify: bool = True) -> None:
        self.path = Path(path)
        self.offset = offset
        self.clock = clock
        self._partial = b""
        self._event = threading.Event()
        self._observer = None
        if inotify:
            self._observer = _start_observer(self.path, self._event)

    @property
    def uses_inotify(self) -> bool:
        return self._observer is not None

    def read_new(self, final: bool = False) -> list[LogLine]:
        """Complete lines written since the last call. ``final``: also return an unterminated tail."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
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
        now = self.clock()
        lines: list[LogLine] = []
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            lines.extend(self._make(buf[pos:nl], start + pos, now))
            pos = nl + 1
        rest = buf[pos:]
        if final and rest:
            lines.extend(self._make(rest, start + pos, now))
            rest = b""
        elif len(rest) > MAX_LINE_BYTES:
            lines.extend(self._make(rest, start + pos, now))
            rest = b""
        self._partial = rest
        return lines

    @staticmethod
    def _make(raw: bytes, offset: int, now: float) -> list[LogLine]:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        rank, body = split_rank(text)
        if "\r" in body:                              # progress bars: keep the last state only
            body = body.rsplit("\r", 1)[-1]
        return [LogLine(offset=offset, text=body, rank=rank, time=now)]

    def wait(self, timeout_s: float) -> None:
        if self._observer is None:
            self._event.wait(min(timeout_s, 0.2))
        else:
            self._event.wait(timeout_s)
        self._event.clear()

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=2)
            except Exception:  # stopping a watcher must never break the caller
                pass
            self._observer = None


def _start_observer(path: Path, event: threading.Event):
    """An inotify watch on the log's directory that sets ``event``; None when unavailable."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None
    target = str(path)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, ev):  # noqa: D401 - watchdog callback
            if getattr(ev, "src_path", None) == target or getattr(ev, "dest_path", None) == target:
                event.set()

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
