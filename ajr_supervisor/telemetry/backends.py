"""Telemetry backends: where records go.

- :class:`LoggerBackend`: one line per record (format in :mod:`.lineformat`) to a stream or a
  ``logging.Logger``; by default only rank 0 writes, except errors, which every rank writes.
- :class:`FileBackend`: JSON lines, one file per rank (``{rank}`` in the path), flushed per record.
- :class:`OpenTelemetryBackend`: spans as OpenTelemetry spans (needs ``ajr-supervisor[otel]``).

A backend is anything with ``emit(record)`` and ``close()``; both must be thread-safe.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any, Protocol

from .lineformat import format_line, iso_ms
from .metrics import Kind, Record


class Backend(Protocol):
    """What the provider needs of a backend."""

    def emit(self, record: Record) -> None:
        """Write one record (never raise for I/O trouble worth ignoring)."""

    def close(self) -> None:
        """Flush and release what the backend holds."""


class LoggerBackend:
    """One line per record to ``stream`` (default ``sys.stdout``, flushed) or ``logger``.

    ``all_ranks=False`` (the default): only rank 0 writes non-error records; errors are written
    by every rank. ``iteration_interval=n``: only iterations divisible by ``n`` are written.
    """

    def __init__(self, stream: IO[str] | None = None, logger: logging.Logger | None = None,
                 all_ranks: bool = False, iteration_interval: int = 1, level: int = logging.INFO):
        if stream is not None and logger is not None:
            raise ValueError("LoggerBackend takes a stream or a logger, not both")
        self._stream = stream
        self._logger = logger
        self.all_ranks = all_ranks
        self.iteration_interval = max(1, int(iteration_interval))
        self.level = level
        self._lock = threading.Lock()

    def wants(self, record: Record) -> bool:
        """Whether this backend writes ``record`` (rank filter, iteration interval)."""
        kind = record.kind
        if kind is Kind.ERROR:
            return True
        if record.rank != 0 and not self.all_ranks:
            return False
        if kind is Kind.ITERATION and self.iteration_interval > 1:
            it = record.fields.get("iteration")
            return isinstance(it, int) and it % self.iteration_interval == 0
        return True

    def emit(self, record: Record) -> None:
        if record.rank != 0 and not self.all_ranks and record.kind is not Kind.ERROR:
            return
        if self.iteration_interval > 1 and not self.wants(record):
            return
        line = format_line(record.time, record.rank, record.kind.value, record.fields)
        if self._logger is not None:
            self._logger.log(logging.ERROR if record.kind is Kind.ERROR else self.level, line)
            return
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream never stops the training

    def close(self) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        with self._lock:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def _json_default(value: Any) -> Any:
    return str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class FileBackend:
    """JSON lines: one object per record (``ts``, ``time``, ``rank``, ``event``, then the fields).

    ``path`` may hold ``{rank}`` (one file per rank, e.g. ``telemetry-{rank}.jsonl``); without it,
    ranks other than 0 write to ``<path>.rank<r>`` so that two processes never share a file.
    Files are opened for appending on first use and flushed after every record.
    """

    def __init__(self, path: str | os.PathLike[str], all_ranks: bool = True):
        self.path_template = str(path)
        self.all_ranks = all_ranks
        self._files: dict[int, IO[str]] = {}
        self._lock = threading.Lock()

    def path_for(self, rank: int) -> Path:
        """The file that ``rank`` writes."""
        if "{rank}" in self.path_template:
            return Path(self.path_template.replace("{rank}", str(rank)))
        return Path(self.path_template if rank == 0 else f"{self.path_template}.rank{rank}")

    def emit(self, record: Record) -> None:
        if record.rank != 0 and not self.all_ranks and record.kind is not Kind.ERROR:
            return
        obj: dict[str, Any] = {"ts": iso_ms(record.time), "time": record.time, "rank": record.rank,
                               "event": record.kind.value}
        for key, value in record.fields.items():
            if value is not None:
                obj[key] = _json_safe(value)
        text = json.dumps(obj, default=_json_default, ensure_ascii=False) + "\n"
        with self._lock:
            handle = self._files.get(record.rank)
            try:
                if handle is None:
                    path = self.path_for(record.rank)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    handle = self._files[record.rank] = open(path, "a", encoding="utf-8")
                handle.write(text)
                handle.flush()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                try:
                    handle.close()
                except OSError:
                    pass
            self._files.clear()


OTEL_MISSING = ("OpenTelemetryBackend needs the opentelemetry API and SDK: "
                "pip install ajr-supervisor[otel]")


class OpenTelemetryBackend:
    """Spans as OpenTelemetry spans; iterations, checkpoints, events and errors as span events on
    the innermost open span of the rank (or as a short span of their own when none is open).
    Uses the globally configured tracer provider unless ``tracer_provider`` is given."""

    def __init__(self, tracer_provider: Any = None, service_name: str = "ajr_supervisor.telemetry"):
        try:
            from opentelemetry import trace
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(OTEL_MISSING) from exc
        self._trace = trace
        self._tracer = trace.get_tracer(service_name, tracer_provider=tracer_provider)
        self._open: dict[tuple[int, Any], Any] = {}
        self._stack: dict[int, list[Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _attrs(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
                for k, v in fields.items() if v is not None}

    def emit(self, record: Record) -> None:
        ns = int(record.time * 1e9)
        fields = record.fields
        with self._lock:
            stack = self._stack.setdefault(record.rank, [])
            if record.kind is Kind.SPAN_START:
                parent = self._open.get((record.rank, fields.get("parent")))
                ctx = self._trace.set_span_in_context(parent) if parent is not None else None
                span = self._tracer.start_span(str(fields.get("name")), context=ctx, start_time=ns,
                                               attributes={"rank": record.rank})
                self._open[(record.rank, fields.get("span"))] = span
                stack.append(span)
            elif record.kind is Kind.SPAN_END:
                span = self._open.pop((record.rank, fields.get("span")), None)
                if span is not None:
                    if span in stack:
                        stack.remove(span)
                    span.set_attributes(self._attrs(fields))
                    span.end(end_time=ns)
            else:
                attrs = self._attrs(fields)
                if stack:
                    stack[-1].add_event(record.kind.value, attributes=attrs, timestamp=ns)
                else:
                    span = self._tracer.start_span(record.kind.value, start_time=ns, attributes=attrs)
                    span.end(end_time=ns)

    def close(self) -> None:
        with self._lock:
            for span in self._open.values():
                span.end()
            self._open.clear()
            self._stack.clear()
