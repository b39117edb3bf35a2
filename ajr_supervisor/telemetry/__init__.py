"""Training telemetry: spans, iterations, checkpoints and errors, written where ajr reads them.

The shape follows NVIDIA's ``training_telemetry`` (nvidia-resiliency-ext); the core is stdlib only.
Configure a provider once per process, then wrap the phases of the training::

    from ajr_supervisor import telemetry
    from ajr_supervisor.telemetry import (FileBackend, IterationMetrics, LoggerBackend,
                                          ApplicationMetrics)

    telemetry.configure(backends=[LoggerBackend(), FileBackend("telemetry/rank{rank}.jsonl")],
                        application=ApplicationMetrics(job_name="gpt", global_batch_size=1024))
    with telemetry.running():
        with telemetry.checkpoint_load():
            start = load_latest(model, optimizer)              # your code
        with telemetry.training():
            for i in range(start, num_iterations):
                # measures step_time_ms; tflops = flops per GPU per step / step time
                with telemetry.iteration(i, flops=flops_per_gpu_step, samples=batch_size) as it:
                    loss = train_step(model, optimizer, next(batches))
                    it.update(loss=float(loss), lr=scheduler.get_last_lr()[0])
                if i % 1000 == 0:
                    with telemetry.validation():
                        evaluate(model)
                    with telemetry.checkpoint_save(iteration=i, path=f"/ckpt/iter_{i}"):
                        save(model, optimizer, f"/ckpt/iter_{i}")

(``telemetry.record_iteration(IterationMetrics(i,
step_time_ms=..., tflops=...))`` writes an iteration you timed yourself.) Any exception leaving
a span is recorded once, with its traceback, by every rank, and goes on. ``telemetry.event(name,
**attrs)`` writes anything else. PyTorch Lightning users add
``ajr_supervisor.telemetry.lightning.AJRTelemetryCallback()`` to the trainer's callbacks.

The rank comes from ``rank=``, else ``$RANK``, ``$SLURM_PROCID``, else 0. :class:`LoggerBackend`
writes the line format of :mod:`.lineformat` (parse it with :func:`parse_line` / :data:`LINE_RE`);
by default only rank 0 writes, except errors. Iteration lines carry ``TFLOP/s=<value>`` (AJR's
throughput detection) and checkpoint lines ``Saved checkpoint to <path>`` (AJR's default
checkpoint pattern), so ajr notices progress with no configuration.
"""

from __future__ import annotations

import os
from typing import Any

from .backends import Backend, FileBackend, LoggerBackend, OpenTelemetryBackend
from .lineformat import LINE_RE, MARKER, format_line, parse_line, quote, unquote
from .metrics import (ApplicationMetrics, CheckpointMetrics, IterationMetrics, Kind, Record,
                      SpanName)
from .provider import (CheckpointSpan, IterationScope, Provider, Span, configure,
                       get_provider)

__all__ = [
    "LINE_RE", "MARKER", "ApplicationMetrics", "Backend", "CheckpointMetrics", "CheckpointSpan",
    "FileBackend", "IterationMetrics", "IterationScope", "Kind", "LoggerBackend",
    "OpenTelemetryBackend", "Provider", "Record", "Span", "SpanName", "checkpoint_load",
    "checkpoint_save", "configure", "event", "format_line", "get_provider", "iteration",
    "parse_line", "quote", "record_application", "record_checkpoint", "record_error",
    "record_iteration", "running", "timed_span", "training", "unquote", "validation",
]


def running(**attrs: Any) -> Span:
    """The whole program (MAIN_FUNCTION) on the current provider."""
    return get_provider().running(**attrs)


def training(**attrs: Any) -> Span:
    """The training loop (TRAINING_LOOP)."""
    return get_provider().training(**attrs)


def validation(**attrs: Any) -> Span:
    """A validation loop (VALIDATION_LOOP)."""
    return get_provider().validation(**attrs)


def checkpoint_load(**attrs: Any) -> Span:
    """Loading a checkpoint (CHECKPOINT_LOAD)."""
    return get_provider().checkpoint_load(**attrs)


def checkpoint_save(sync: bool = True, iteration: int | None = None,
                    path: str | os.PathLike[str] | None = None, **attrs: Any) -> CheckpointSpan:
    """Saving a checkpoint (CHECKPOINT_SAVE_SYNC / _ASYNC); a sync save ends with ``checkpoint_saved``."""
    return get_provider().checkpoint_save(sync, iteration, path, **attrs)


def timed_span(name: SpanName | str, **attrs: Any) -> Span:
    """A span with any name."""
    return get_provider().timed_span(name, **attrs)


def iteration(i: int, metrics: IterationMetrics | None = None, **values: Any) -> IterationScope:
    """Time iteration ``i``; one ``iteration`` record at the end."""
    return get_provider().iteration(i, metrics, **values)


def record_iteration(metrics: IterationMetrics) -> None:
    """Write an ``iteration`` record now."""
    get_provider().record_iteration(metrics)


def record_checkpoint(metrics: CheckpointMetrics) -> None:
    """Write a ``checkpoint_saved`` record now (e.g. when an async save has finished)."""
    get_provider().record_checkpoint(metrics)


def record_application(metrics: ApplicationMetrics) -> None:
    """Write the job's description (``event name=application``)."""
    get_provider().record_application(metrics)


def record_error(exc: BaseException, **attrs: Any) -> None:
    """Write an ``error`` record with ``exc``'s traceback."""
    get_provider().record_error(exc, **attrs)


def event(name: str, /, **attrs: Any) -> None:
    """Write an ``event name=<name>`` record."""
    get_provider().event(name, **attrs)
