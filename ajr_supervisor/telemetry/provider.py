"""The telemetry provider: spans, iterations, checkpoints, events and errors, sent to backends."""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

from .lineformat import Quoted, clean_key
from .metrics import (ApplicationMetrics, CheckpointMetrics, IterationMetrics, Kind, Record,
                      SpanName)
from .backends import Backend
from .spans import _RECORDED, CheckpointSpan, IterationScope, Span

Clock = Callable[[], float]


def _rank_from_env() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return 0


def _world_from_env() -> int | None:
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return None


class Provider:
    """Sends records to backends. ``clock`` (monotonic seconds) times spans; ``wall_clock``
    (epoch seconds) stamps records. Both are injectable for tests."""

    def __init__(self, backends: Iterable[Backend] = (), rank: int | None = None,
                 world_size: int | None = None, clock: Clock | None = None,
                 wall_clock: Clock | None = None):
        self.backends: tuple[Backend, ...] = tuple(backends)
        self.rank = _rank_from_env() if rank is None else int(rank)
        self.world_size = _world_from_env() if world_size is None else int(world_size)
        self.clock: Clock = clock or time.perf_counter
        self.wall_clock: Clock = wall_clock or time.time
        self._ids = itertools.count(1)

    # --- the records -------------------------------------------------------------------------

    def _emit(self, kind: Kind, fields: dict[str, Any]) -> None:
        if not self.backends:
            return
        record = Record(self.wall_clock(), self.rank, kind, fields)
        for backend in self.backends:
            try:
                backend.emit(record)
            except Exception:  # noqa: BLE001 - telemetry never breaks the training
                pass

    def event(self, name: str, /, **attrs: Any) -> None:
        """An ``event name=<name> ...`` record."""
        fields: dict[str, Any] = {"name": name}
        for key, value in attrs.items():
            key = clean_key(key)
            fields["attr_name" if key == "name" else key] = value
        self._emit(Kind.EVENT, fields)

    def record_application(self, metrics: ApplicationMetrics) -> None:
        """The job's description, as ``event name=application ...``."""
        self.event("application", **metrics.fields())

    def record_iteration(self, metrics: IterationMetrics) -> None:
        """An ``iteration`` record (with ``TFLOP/s=``)."""
        self._emit(Kind.ITERATION, metrics.fields())

    def record_checkpoint(self, metrics: CheckpointMetrics) -> None:
        """A ``checkpoint_saved`` record (with ``Saved checkpoint to <path>``)."""
        self._emit(Kind.CHECKPOINT_SAVED, metrics.fields())

    def record_error(self, exc: BaseException, **attrs: Any) -> None:
        """An ``error`` record with the traceback; an exception is recorded once only."""
        try:
            if getattr(exc, _RECORDED, False):
                return
            setattr(exc, _RECORDED, True)
        except Exception:  # noqa: BLE001 - exceptions without a __dict__
            pass
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        fields: dict[str, Any] = {"type": type(exc).__name__, "message": Quoted(str(exc)),
                                  "traceback": Quoted(tb.rstrip("\n"))}
        for key, value in attrs.items():
            key = clean_key(key)
            fields.setdefault(key if key not in fields else "attr_" + key, value)
        self._emit(Kind.ERROR, fields)

    # --- the context managers -----------------------------------------------------------------

    def timed_span(self, name: SpanName | str, **attrs: Any) -> Span:
        """A span with any name."""
        return Span(self, name, {clean_key(k): v for k, v in attrs.items()})

    def running(self, **attrs: Any) -> Span:
        """The whole program (MAIN_FUNCTION)."""
        return self.timed_span(SpanName.MAIN_FUNCTION, **attrs)

    def training(self, **attrs: Any) -> Span:
        """The training loop (TRAINING_LOOP)."""
        return self.timed_span(SpanName.TRAINING_LOOP, **attrs)

    def validation(self, **attrs: Any) -> Span:
        """A validation loop (VALIDATION_LOOP)."""
        return self.timed_span(SpanName.VALIDATION_LOOP, **attrs)

    def checkpoint_load(self, **attrs: Any) -> Span:
        """Loading a checkpoint (CHECKPOINT_LOAD)."""
        return self.timed_span(SpanName.CHECKPOINT_LOAD, **attrs)

    def checkpoint_save(self, sync: bool = True, iteration: int | None = None,
                        path: str | os.PathLike[str] | None = None, **attrs: Any) -> CheckpointSpan:
        """Saving a checkpoint (CHECKPOINT_SAVE_SYNC or CHECKPOINT_SAVE_ASYNC)."""
        span = CheckpointSpan(self, sync, {})
        span.set(iteration=iteration, path=None if path is None else os.fspath(path), **attrs)
        return span

    def iteration(self, iteration: int, metrics: IterationMetrics | None = None,
                  **values: Any) -> IterationScope:
        """Time one iteration and write its ``iteration`` record at the end."""
        scope = IterationScope(self, metrics if metrics is not None else IterationMetrics(iteration))
        scope.metrics.iteration = iteration
        if values:
            scope.update(**values)
        return scope

    def close(self) -> None:
        """Close every backend."""
        for backend in self.backends:
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                pass


_lock = threading.Lock()
_provider: Provider = Provider(rank=0)


def configure(backends: Sequence[Backend] | None = None, rank: int | None = None,
              world_size: int | None = None, application: ApplicationMetrics | None = None,
              clock: Clock | None = None, wall_clock: Clock | None = None) -> Provider:
    """Set the process's provider (replacing, and closing the backends of, any earlier one).

    ``backends`` defaults to ``[LoggerBackend()]``; ``rank`` to ``$RANK``, ``$SLURM_PROCID`` or 0.
    """
    global _provider
    if backends is None:
        from .backends import LoggerBackend
        backends = [LoggerBackend()]
    provider = Provider(backends, rank, world_size, clock, wall_clock)
    with _lock:
        old, _provider = _provider, provider
    for backend in old.backends:
        if not any(backend is b for b in provider.backends):
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                pass
    if application is not None:
        if application.world_size is None:
            application.world_size = provider.world_size
        provider.record_application(application)
    return provider


def get_provider() -> Provider:
    """The process's provider (one without backends until :func:`configure`)."""
    return _provider
