"""The Lightning callback with real PyTorch Lightning on the CPU (a tiny model, a few steps)."""

from __future__ import annotations

import io

import pytest

L = pytest.importorskip("lightning.pytorch", reason="needs lightning (the test extra installs it)")
torch = pytest.importorskip("torch")

from ajr_supervisor.detect.progress import Progress, SpanEvent, parse_progress  # noqa: E402
from ajr_supervisor.rules import RuleSet  # noqa: E402
from ajr_supervisor.telemetry import LoggerBackend, parse_line  # noqa: E402
from ajr_supervisor.telemetry.lightning import AJRTelemetryCallback  # noqa: E402
from ajr_supervisor.telemetry.provider import Provider  # noqa: E402


class Tiny(L.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and batch_idx == self.fail_at:
            raise RuntimeError("injected failure in training_step")
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(n: int = 24):
    data = torch.utils.data.TensorDataset(torch.randn(n, 8))
    return torch.utils.data.DataLoader(data, batch_size=4)


def fit(tmp_path, model: Tiny, steps: int = 6):
    out = io.StringIO()
    provider = Provider([LoggerBackend(stream=out)], rank=0, world_size=1)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[AJRTelemetryCallback(provider, flops_per_batch=1e9), ckpt],
                        val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    error = None
    try:
        trainer.fit(model, loader(), loader(8))
    except RuntimeError as exc:
        error = exc
    return [parse_line(line) for line in out.getvalue().splitlines()], error


def test_a_real_fit_writes_iterations_spans_and_checkpoints(tmp_path):
    records, error = fit(tmp_path, Tiny())
    assert error is None
    kinds = [r["event"] for r in records]
    iterations = [r for r in records if r["event"] == "iteration"]
    assert [int(r["iteration"]) for r in iterations] == [1, 2, 3, 4, 5, 6]
    assert all(float(r["step_time_ms"]) > 0 and float(r["tflops"]) > 0 for r in iterations)
    spans = [(r["event"], r["name"]) for r in records if r["event"].startswith("span_")]
    assert ("span_start", "TRAINING_LOOP") in spans and ("span_end", "TRAINING_LOOP") in spans
    assert spans.count(("span_start", "VALIDATION_LOOP")) == 2
    saved = [r for r in records if r["event"] == "checkpoint_saved"]
    assert len(saved) >= 2 and all(str(tmp_path / "ckpt") in r["path"] for r in saved)
    assert "error" not in kinds


def test_the_supervisor_reads_the_callbacks_lines(tmp_path):
    """What ajr run sees: progress with step times and TFLOP/s, validation spans, saved checkpoints."""
    out = io.StringIO()
    provider = Provider([LoggerBackend(stream=out)], rank=0, world_size=1)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=2, limit_val_batches=1,
                        num_sanity_val_steps=0, default_root_dir=tmp_path,
                        callbacks=[AJRTelemetryCallback(provider, flops_per_batch=1e9),
                                   L.callbacks.ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2)])
    trainer.fit(Tiny(), loader(), loader(8))
    lines = out.getvalue().splitlines()
    parsed = [parse_progress(line, 0) for line in lines]
    progress = [p for p in parsed if isinstance(p, Progress)]
    assert [p.iteration for p in progress] == [1, 2, 3, 4] and all(p.tflops for p in progress)
    assert {s.name for s in parsed if isinstance(s, SpanEvent)} >= {"TRAINING_LOOP", "VALIDATION_LOOP"}
    rules = RuleSet.load()
    assert [m for m in map(rules.checkpoint, lines) if m is not None], "no line matched a checkpoint pattern"


def test_an_exception_in_training_is_recorded_with_its_traceback(tmp_path):
    records, error = fit(tmp_path, Tiny(fail_at=2))
    assert error is not None
    [err] = [r for r in records if r["event"] == "error"]
    assert err["type"] == "RuntimeError" and "injected failure" in err["message"]
    assert "training_step" in err["traceback"]
