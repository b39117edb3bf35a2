"""The thread that empties an :class:`~ajr_supervisor.outbox.Outbox` into the registry.

It wakes shortly after a put (a burst goes out as one batch), every ``interval_s``, and after an
error with exponential backoff and jitter; it logs only changes (the first failure, a different
error, the recovery) and never dies. ``stop(flush_s)`` sends what is left within about ``flush_s``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ajr_supervisor.outbox import DeliveryResult, Outbox

log = logging.getLogger("ajr_supervisor.outbox")


class Deliverer:
    """A daemon thread that empties the outbox: ``linger_s`` after a put (:meth:`notify`; a burst
    goes out as one batch), every ``interval_s``, and after errors with exponential backoff and
    jitter (reset on success).
    Logs only changes (the first failure, a different error, the recovery with how many were
    sent); never dies. :meth:`run_once` is one round, testable without the thread."""

    def __init__(self, outbox: Outbox, *, min_backoff_s: float = 0.5, max_backoff_s: float = 60.0,
                 interval_s: float = 10.0, linger_s: float = 0.05, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.outbox = outbox
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.interval_s, self.linger_s = interval_s, linger_s
        self.sleep, self.clock, self.rng = sleep, clock, rng
        self.failures, self._error, self._failing_since, self._flush_s = 0, None, 0.0, 0.0
        self.flushed: DeliveryResult | None = None   # what stop's final flush did
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Deliverer:
        """Start the thread (and have ``outbox.put`` call :meth:`notify`)."""
        self.outbox.on_put = self.notify
        self._thread = threading.Thread(target=self._loop, name="ajr-outbox", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """New events: deliver now, unless backing off after an error."""
        if not self.failures:
            self._wake.set()

    def run_once(self) -> float:
        """One round: deliver while events wait; the seconds to wait before the next round."""
        if not self.outbox.url:
            return self.interval_s
        try:
            sent = 0
            while not self._stopping.is_set():
                result = self.outbox.deliver_once()
                if result.error:
                    return self._failed(result.error)
                if result.busy:       # another process is delivering this directory
                    return min(self.interval_s, max(1.0, self.min_backoff_s))
                sent += result.sent + result.duplicates
                if not result.left or not (result.sent or result.duplicates or result.rejected):
                    break
            if self.failures:
                log.warning("registry delivery recovered after %.0f s: sent %d events",
                            self.clock() - self._failing_since, sent)
                self.failures, self._error = 0, None
            return self.interval_s
        except Exception as exc:   # a bug must not end delivery for the rest of the job
            return self._failed(f"outbox delivery failed: {type(exc).__name__}: {exc}")

    def _failed(self, error: str) -> float:
        if not self.failures:
            self._failing_since = self.clock()
        self.failures += 1
        if error != self._error:
            log.warning("%s; %d events wait in %s, retrying with backoff", error, self.outbox.backlog(),
                        self.outbox.directory)
            self._error = error
        step = min(self.max_backoff_s, self.min_backoff_s * 2 ** min(self.failures - 1, 30))
        return step * (0.5 + 0.5 * self.rng())

    def _loop(self) -> None:
        while not self._stopping.is_set():
            delay = self.run_once()
            if self.failures:
                self._wake.clear()      # puts during a failed round do not cut the backoff short
            if not self._stopping.is_set() and self._wake.wait(delay) and self.linger_s:
                self._stopping.wait(self.linger_s)   # a burst of puts goes out as one batch
            self._wake.clear()
        self.flushed = self._final_flush()

    def _final_flush(self) -> DeliveryResult | None:
        if not self.outbox.url or self._flush_s <= 0:
            return None
        try:
            return self.outbox.flush(self._flush_s, sleep=self.sleep)
        except Exception as exc:
            log.warning("outbox final flush failed: %s: %s", type(exc).__name__, exc)
            return None

    def stop(self, flush_s: float = 2.0) -> DeliveryResult | None:
        """Stop, sending what waits for at most about ``flush_s`` (a request in flight may take its
        own timeout first; then this returns None and the daemon thread is left behind)."""
        self._flush_s = max(0.0, flush_s)
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            self.flushed = self._final_flush()
        else:
            self._thread.join(self._flush_s + 0.5)
        if self.outbox.on_put == self.notify:
            self.outbox.on_put = None
        return self.flushed
