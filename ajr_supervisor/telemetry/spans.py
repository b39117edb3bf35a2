"""Spans and iteration scopes: the context managers handed out by the provider."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from .lineformat import clean_key
from .metrics import CheckpointMetrics, IterationMetrics, Kind, SpanName

if TYPE_CHECKING:
    from .provider import Provider

_current_span: contextvars.ContextVar["Span | None"] = contextvars.ContextVar(
    "ajr_telemetry_span", default=None)
_RECORDED = "__ajr_telemetry_recorded__"
# per-step counts given to an iteration -> (the rate field, its unit)
_PER_STEP = {"flops": ("tflops", 1e12), "tokens": ("tokens_per_s", 1.0),
             "samples": ("samples_per_s", 1.0)}


class Span:
    """A timed region: ``span_start`` on enter, ``span_end`` (with ``duration_ms``) on exit.

    An exception leaving the span is recorded (type, message, traceback) once, the span ends with
    ``status=error``, and the exception goes on. ``set(**attrs)`` adds fields to ``span_end``.
    """

    __slots__ = ("provider", "name", "attrs", "id", "parent", "start", "duration_ms", "_token")

    def __init__(self, provider: "Provider", name: SpanName | str, attrs: dict[str, Any]):
        self.provider = provider
        self.name = name.value if isinstance(name, SpanName) else str(name)
        self.attrs = attrs
        self.id = 0
        self.parent: Span | None = None
        self.start = 0.0
        self.duration_ms: float | None = None
        self._token: contextvars.Token[Span | None] | None = None

    def set(self, **attrs: Any) -> None:
        """Add fields to the ``span_end`` record."""
        self.attrs.update({clean_key(k): v for k, v in attrs.items()})

    def __enter__(self) -> "Span":
        p = self.provider
        self.id = next(p._ids)
        self.parent = _current_span.get()
        self._token = _current_span.set(self)
        fields: dict[str, Any] = {"name": self.name, "span": self.id}
        if self.parent is not None:
            fields["parent"] = self.parent.id
        p._emit(Kind.SPAN_START, fields)
        self.start = p.clock()
        return self

    def _end_fields(self, exc: BaseException | None) -> dict[str, Any]:
        return {"name": self.name, "span": self.id, "duration_ms": self.duration_ms,
                "status": "ok" if exc is None else "error", **self.attrs}

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        p = self.provider
        self.duration_ms = round((p.clock() - self.start) * 1000.0, 3)
        if self._token is not None:
            try:
                _current_span.reset(self._token)
            except ValueError:  # exited in another context
                _current_span.set(self.parent)
        if exc is not None and isinstance(exc, (Exception, KeyboardInterrupt)):
            p.record_error(exc, span=self.id)
        p._emit(Kind.SPAN_END, self._end_fields(exc))
        self._on_exit(exc)
        return False

    def _on_exit(self, exc: BaseException | None) -> None:
        """Hook for subclasses, after ``span_end``."""


class CheckpointSpan(Span):
    """A checkpoint save: after a successful synchronous save, a ``checkpoint_saved`` record
    (``Saved checkpoint to <path>``). Tell it what was saved with ``set(iteration=, path=,
    size_bytes=)``. An asynchronous save records nothing more: call
    :meth:`Provider.record_checkpoint` when the save has really finished."""

    __slots__ = ("sync",)

    def __init__(self, provider: "Provider", sync: bool, attrs: dict[str, Any]):
        super().__init__(provider, SpanName.CHECKPOINT_SAVE_SYNC if sync
                         else SpanName.CHECKPOINT_SAVE_ASYNC, attrs)
        self.sync = sync

    def _on_exit(self, exc: BaseException | None) -> None:
        if exc is None and self.sync:
            a = dict(self.attrs)
            metrics = CheckpointMetrics(iteration=a.pop("iteration", None), path=a.pop("path", None),
                                        size_bytes=a.pop("size_bytes", None),
                                        duration_ms=self.duration_ms, extra=a)
            self.provider.record_checkpoint(metrics)


class IterationScope:
    """``with provider.iteration(i) as it:`` times one step and writes ONE ``iteration`` record
    on a normal exit (no span lines). ``it.update(loss=..., tflops=...)`` fills in metrics; an
    explicit ``step_time_ms`` wins over the measured one. ``flops`` (per GPU), ``tokens`` and
    ``samples`` (per step) give ``tflops``, ``tokens_per_s`` and ``samples_per_s`` from the step time
    when those are not set."""

    __slots__ = ("provider", "metrics", "start", "counts")

    def __init__(self, provider: "Provider", metrics: IterationMetrics):
        self.provider = provider
        self.metrics = metrics
        self.start = 0.0
        self.counts: dict[str, float] = {}

    def update(self, **values: Any) -> None:
        """Set IterationMetrics fields (or ``flops``/``tokens``/``samples``); others go to ``extra``."""
        m = self.metrics
        for key, value in values.items():
            if key in _PER_STEP:
                self.counts[key] = value
            elif key != "extra" and hasattr(m, key):
                setattr(m, key, value)
            else:
                m.extra[key] = value

    def __enter__(self) -> "IterationScope":
        self.start = self.provider.clock()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        p = self.provider
        if exc is not None:
            if isinstance(exc, (Exception, KeyboardInterrupt)):
                p.record_error(exc, iteration=self.metrics.iteration)
            return False
        if self.metrics.step_time_ms is None:
            self.metrics.step_time_ms = round((p.clock() - self.start) * 1000.0, 3)
        if self.counts and self.metrics.step_time_ms:
            seconds = self.metrics.step_time_ms / 1000.0
            for key, (attr, scale) in _PER_STEP.items():
                if key in self.counts and getattr(self.metrics, attr) is None:
                    setattr(self.metrics, attr, round(self.counts[key] / seconds / scale, 3))
        p.record_iteration(self.metrics)
        return False
