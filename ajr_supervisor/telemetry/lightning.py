"""A PyTorch Lightning callback that writes ajr telemetry.

    from ajr_supervisor import telemetry
    from ajr_supervisor.telemetry.lightning import AJRTelemetryCallback

    telemetry.configure()                      # LoggerBackend on stdout, rank from the environment
    trainer = L.Trainer(callbacks=[AJRTelemetryCallback(flops_per_batch=6 * n_params * tokens)])

It writes TRAINING_LOOP and VALIDATION_LOOP spans, one ``iteration`` record per training batch
(step time, loss, learning rate, samples/tokens per second, TFLOP/s per GPU when
``flops_per_batch`` (all GPUs) is given), a ``checkpoint_saved`` record whenever the trainer's
ModelCheckpoint has written a new file, and an ``error`` record for an exception.

Lightning is imported when this module is (``lightning.pytorch``, else ``pytorch_lightning``);
without either, importing this module works and constructing the callback raises ImportError.
The rest of :mod:`ajr_supervisor.telemetry` never imports Lightning.
"""

from __future__ import annotations

from typing import Any

from .metrics import CheckpointMetrics, IterationMetrics
from .provider import Provider, Span, get_provider

LIGHTNING_MISSING = ("AJRTelemetryCallback needs PyTorch Lightning: pip install lightning "
                     "(or pytorch-lightning)")


def _callback_base() -> type | None:
    try:
        from lightning.pytorch import Callback
        return Callback
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback  # type: ignore[no-redef]
        return Callback
    except ImportError:
        return None


_Base: type | None = _callback_base()


def _scalar(value: Any) -> float | None:
    """A float from a number, a 0-d tensor, or a dict with ``loss``."""
    if isinstance(value, dict):
        value = value.get("loss")
    if value is None:
        return None
    try:
        if hasattr(value, "detach"):
            value = value.detach()
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


class AJRTelemetryCallback(_Base or object):  # type: ignore[misc]
    """Lightning callback writing spans, iterations, checkpoints and errors.

    ``provider``: defaults to :func:`get_provider` at each hook. ``flops_per_batch``: model FLOPs of
    one global batch (for TFLOP/s per GPU); ``tokens_per_batch``: tokens of one global batch.
    """

    def __init__(self, provider: Provider | None = None, flops_per_batch: float | None = None,
                 tokens_per_batch: float | None = None) -> None:
        if _Base is None:
            raise ImportError(LIGHTNING_MISSING)
        super().__init__()
        self._provider = provider
        self.flops_per_batch = flops_per_batch
        self.tokens_per_batch = tokens_per_batch
        self._spans: dict[str, Span] = {}
        self._batch_start: float | None = None
        self._last_ckpt: str = ""

    @property
    def provider(self) -> Provider:
        """The provider the records go to."""
        return self._provider if self._provider is not None else get_provider()

    def _open(self, key: str, span: Span) -> None:
        self._close(key)
        self._spans[key] = span.__enter__()

    def _close(self, key: str) -> None:
        span = self._spans.pop(key, None)
        if span is not None:
            span.__exit__(None, None, None)

    def _check_checkpoint(self, trainer: Any) -> None:
        cb = getattr(trainer, "checkpoint_callback", None)
        path = str(getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "") or "")
        if path and path != self._last_ckpt:
            self._last_ckpt = path
            self.provider.record_checkpoint(CheckpointMetrics(
                iteration=getattr(trainer, "global_step", None), path=path))

    # --- Lightning hooks ----------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._open("train", self.provider.training())

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._check_checkpoint(trainer)
        self._close("train")

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not getattr(trainer, "sanity_checking", False):
            self._open("validation", self.provider.validation())

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("validation")
        self._check_checkpoint(trainer)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batch_start = self.provider.clock()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        p = self.provider
        metrics = IterationMetrics(iteration=int(getattr(trainer, "global_step", batch_idx)),
                                   loss=_scalar(outputs))
        if self._batch_start is not None:
            seconds = p.clock() - self._batch_start
            metrics.step_time_ms = round(seconds * 1000.0, 3)
            if seconds > 0:
                world = int(getattr(trainer, "world_size", 0) or p.world_size or 1)
                if self.flops_per_batch:
                    metrics.tflops = round(self.flops_per_batch / world / seconds / 1e12, 3)
                if self.tokens_per_batch:
                    metrics.tokens_per_s = round(self.tokens_per_batch / seconds, 3)
                size = _batch_size(batch)
                if size:
                    metrics.samples_per_s = round(size * world / seconds, 3)
        try:
            metrics.lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            pass
        p.record_iteration(metrics)
        self._check_checkpoint(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.provider.record_error(exception)
        for key in list(self._spans):
            span = self._spans.pop(key)
            span.__exit__(type(exception), exception, exception.__traceback__)


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of the batch's first tensor, if any."""
    first = batch
    for _ in range(3):
        if isinstance(first, dict):
            first = next(iter(first.values()), None)
        elif isinstance(first, (list, tuple)):
            first = first[0] if first else None
        else:
            break
    shape = getattr(first, "shape", None)
    try:
        return int(shape[0]) if shape else None
    except (TypeError, ValueError, IndexError):
        return None
