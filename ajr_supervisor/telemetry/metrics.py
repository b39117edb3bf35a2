"""Span names, metrics dataclasses and the record that backends receive."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .lineformat import clean_key


class SpanName(str, enum.Enum):
    """Well-known span names (the value is the name written on the line)."""

    MAIN_FUNCTION = "MAIN_FUNCTION"
    TRAINING_LOOP = "TRAINING_LOOP"
    VALIDATION_LOOP = "VALIDATION_LOOP"
    TEST_LOOP = "TEST_LOOP"
    ITERATION = "ITERATION"
    CHECKPOINT_SAVE_SYNC = "CHECKPOINT_SAVE_SYNC"
    CHECKPOINT_SAVE_ASYNC = "CHECKPOINT_SAVE_ASYNC"
    CHECKPOINT_LOAD = "CHECKPOINT_LOAD"
    MODEL_INIT = "MODEL_INIT"
    OPTIMIZER_INIT = "OPTIMIZER_INIT"
    DATA_LOADER_INIT = "DATA_LOADER_INIT"
    DISTRIBUTED_INIT = "DISTRIBUTED_INIT"

    def __str__(self) -> str:
        return self.value


class Kind(str, enum.Enum):
    """The record kinds (``event=<kind>`` on a line)."""

    SPAN_START = "span_start"
    SPAN_END = "span_end"
    ITERATION = "iteration"
    CHECKPOINT_SAVED = "checkpoint_saved"
    EVENT = "event"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass
class ApplicationMetrics:
    """What the job is: recorded once, as ``event name=application``."""

    job_name: str | None = None
    world_size: int | None = None
    global_batch_size: int | None = None
    micro_batch_size: int | None = None
    seq_length: int | None = None
    model_params: int | None = None
    flops_per_sample: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The metrics as ordered line fields (None values included; writers skip them)."""
        out = {k: v for k, v in vars(self).items() if k != "extra"}
        out.update({clean_key(k): v for k, v in self.extra.items()})
        return out


@dataclass
class IterationMetrics:
    """One training iteration. ``tflops`` is per GPU; ``step_time_ms`` is measured by
    :meth:`Provider.iteration` when left None."""

    iteration: int
    step_time_ms: float | None = None
    tflops: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    loss: float | None = None
    lr: float | None = None
    total_iterations: int | None = None   # the run's last iteration: lets ajr weigh a restart's cost
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Ordered line fields; ``TFLOP/s`` (AJR's throughput marker) always present, ``nan`` if unknown."""
        tflops = self.tflops
        out: dict[str, Any] = {
            "iteration": self.iteration, "step_time_ms": self.step_time_ms, "tflops": tflops,
            "TFLOP/s": float("nan") if tflops is None else tflops,
            "tokens_per_s": self.tokens_per_s, "samples_per_s": self.samples_per_s,
            "loss": self.loss, "lr": self.lr, "total_iterations": self.total_iterations,
        }
        if self.extra:
            out.update({clean_key(k): v for k, v in self.extra.items()})
        return out


@dataclass
class CheckpointMetrics:
    """One saved checkpoint."""

    iteration: int | None = None
    path: str | None = None
    size_bytes: int | None = None
    duration_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Ordered line fields, ending with ``msg="Saved checkpoint to <path>"`` (AJR's pattern)."""
        path = "" if self.path is None else str(self.path)
        out: dict[str, Any] = {"iteration": self.iteration, "duration_ms": self.duration_ms,
                               "path": path, "size_bytes": self.size_bytes}
        out.update({clean_key(k): v for k, v in self.extra.items()})
        out["msg"] = f"Saved checkpoint to {path or '(unknown path)'}"
        return out


@dataclass(slots=True)
class Record:
    """What a backend receives: ``time`` is epoch seconds, ``fields`` ordered line fields."""

    time: float
    rank: int
    kind: Kind
    fields: dict[str, Any]

    @property
    def is_error(self) -> bool:
        """True for error records (every rank writes those)."""
        return self.kind is Kind.ERROR
