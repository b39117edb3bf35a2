"""The training telemetry library: line format, spans, backends, rank filtering, optional extras."""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import re
import sys
import threading
import types
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ajr_supervisor import telemetry
from ajr_supervisor.telemetry import (LINE_RE, ApplicationMetrics, CheckpointMetrics, FileBackend,
                                      IterationMetrics, LoggerBackend, OpenTelemetryBackend,
                                      Provider, SpanName, parse_line, quote, unquote)
from ajr_supervisor.telemetry.lineformat import format_line

AJR_CHECKPOINT = re.compile(r"Saved checkpoint to", re.I)
EXACT = re.compile(r"^\[ajr-telemetry\] ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z rank=\d+ event=\w+( \S+=(\"(?:[^\"\\]|\\.)*\"|\S*))*$")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(rank: int = 0, all_ranks: bool = False, **kw: Any) -> tuple[Provider, io.StringIO, FakeClock]:
    stream = io.StringIO()
    clock = FakeClock()
    provider = Provider([LoggerBackend(stream, all_ranks=all_ranks, **kw)], rank=rank,
                        world_size=8, clock=clock, wall_clock=lambda: 1795597200.123)
    return provider, stream, clock


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    out = []
    for line in lines:
        assert EXACT.match(line), line
        parsed = parse_line(line)
        assert parsed is not None, line
        out.append(parsed)
    return out


@pytest.fixture(autouse=True)
def _reset_provider():
    yield
    telemetry.configure(backends=[], rank=0)


# --- the line format ---------------------------------------------------------------------------

def test_exact_line_format_of_each_kind():
    p, stream, clock = make()
    with p.running():
        p.record_iteration(IterationMetrics(7, step_time_ms=812.5, tflops=402.25, loss=2.5, lr=3e-4))
        p.record_checkpoint(CheckpointMetrics(iteration=7, path="/ckpt/iter_7", duration_ms=12.0))
        p.event("note", detail="two words", n=3, ok=True)
        clock.advance(0.25)
    lines = stream.getvalue().splitlines()
    ts = "[ajr-telemetry] ts=2026-11-25T09:00:00.123Z rank=0"
    assert lines == [
        f"{ts} event=span_start name=MAIN_FUNCTION span=1",
        f"{ts} event=iteration iteration=7 step_time_ms=812.5 tflops=402.25 TFLOP/s=402.25 loss=2.5 lr=0.0003",
        f"{ts} event=checkpoint_saved iteration=7 duration_ms=12.0 path=/ckpt/iter_7 msg=\"Saved checkpoint to /ckpt/iter_7\"",
        f"{ts} event=event name=note detail=\"two words\" n=3 ok=true",
        f"{ts} event=span_end name=MAIN_FUNCTION span=1 duration_ms=250.0 status=ok",
    ]
    for line in lines:
        assert EXACT.match(line)


def test_parse_line_and_line_re():
    line = ('0: [ajr-telemetry] ts=2026-11-25T09:00:00.123Z rank=3 event=event name=x '
            'msg="a \\"b\\" c\\nd" empty=""')
    m = LINE_RE.search(line)
    assert m and m["rank"] == "3" and m["event"] == "event"
    assert parse_line(line) == {"ts": "2026-11-25T09:00:00.123Z", "rank": 3, "event": "event",
                                "name": "x", "msg": 'a "b" c\nd', "empty": ""}
    assert parse_line("iteration 10 | loss 2.0 | TFLOP/s 100") is None
    assert parse_line("[ajr-telemetry] garbage") is None
    assert parse_line(line + "\r\n")["empty"] == ""


def test_timestamp_is_iso_utc_with_ms():
    assert format_line(0.0, 0, "event", {}) == "[ajr-telemetry] ts=1970-01-01T00:00:00.000Z rank=0 event=event"
    assert "ts=2026-11-25T09:00:00.999Z" in format_line(1795597200.9999, 0, "event", {})


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_quoting_round_trip(text):
    q = quote(text)
    assert "\n" not in q and "\r" not in q
    assert len(q.splitlines()) <= 1
    assert unquote(q) == text
    line = format_line(0.0, 0, "event", {"name": "x", "value": text, "after": "y"})
    parsed = parse_line(line)
    assert parsed is not None
    assert parsed["value"] == text and parsed["after"] == "y"


def test_bare_and_quoted_values():
    assert quote("abc/def:1") == "abc/def:1"
    assert quote("") == '""'
    assert quote("a b") == '"a b"'
    assert quote('a"b') == '"a\\"b"'
    assert quote("a=b") == '"a=b"'
    assert quote("tab\there") == '"tab\\there"'
    assert quote("\x00") == '"\\u0000"'


def test_bad_and_reserved_keys_are_cleaned():
    p, stream, _ = make()
    p.event("e", **{"rank": 5, "a b": 1, "ts": 2})
    rec = records(stream)[0]
    assert rec["rank"] == 0 and rec["attr_rank"] == "5" and rec["a_b"] == "1" and rec["attr_ts"] == "2"


# --- AJR's patterns ------------------------------------------------------------------------------

def test_ajr_patterns_in_the_right_lines():
    p, stream, _ = make()
    with p.training():
        with p.iteration(1) as it:
            it.update(tflops=300.0)
        p.record_iteration(IterationMetrics(2))  # tflops unknown: TFLOP/s=nan
        with p.checkpoint_save(iteration=2, path="/ck/with space"):
            pass
    lines = stream.getvalue().splitlines()
    iteration_lines = [ln for ln in lines if "event=iteration" in ln]
    assert len(iteration_lines) == 2
    assert "TFLOP/s=300.0" in iteration_lines[0] and "TFLOP/s=nan" in iteration_lines[1]
    assert all("TFLOP" in ln for ln in iteration_lines)
    assert [ln for ln in lines if "TFLOP" in ln] == iteration_lines
    saved = [ln for ln in lines if AJR_CHECKPOINT.search(ln)]
    assert len(saved) == 1 and "event=checkpoint_saved" in saved[0]
    assert "Saved checkpoint to /ck/with space" in saved[0]
    assert re.search(r"\biteration[: =]+(\d+)", saved[0]).group(1) == "2"


def test_async_checkpoint_span_records_no_saved_checkpoint():
    p, stream, _ = make()
    with p.checkpoint_save(sync=False, iteration=3, path="/ck/3"):
        pass
    recs = records(stream)
    assert [r["name"] for r in recs] == ["CHECKPOINT_SAVE_ASYNC"] * 2
    assert not AJR_CHECKPOINT.search(stream.getvalue())
    p.record_checkpoint(CheckpointMetrics(iteration=3, path="/ck/3", size_bytes=10))
    assert records(stream)[-1]["event"] == "checkpoint_saved"


# --- spans -----------------------------------------------------------------------------------------

def test_span_nesting_and_durations():
    p, stream, clock = make()
    with p.running():
        clock.advance(1.0)
        with p.checkpoint_load():
            clock.advance(0.5)
        with p.training() as train:
            with p.iteration(0, samples=16, flops=2e12):
                clock.advance(0.1)
            with p.validation():
                clock.advance(0.002)
            with p.timed_span("custom", stage="x"):
                pass
            with p.timed_span(SpanName.MODEL_INIT):
                pass
        assert train.duration_ms == pytest.approx(102.0)
    recs = records(stream)
    starts = {r["name"]: r for r in recs if r["event"] == "span_start"}
    ends = {r["name"]: r for r in recs if r["event"] == "span_end"}
    assert "parent" not in starts["MAIN_FUNCTION"]
    main = starts["MAIN_FUNCTION"]["span"]
    assert starts["CHECKPOINT_LOAD"]["parent"] == main and starts["TRAINING_LOOP"]["parent"] == main
    assert starts["VALIDATION_LOOP"]["parent"] == starts["TRAINING_LOOP"]["span"]
    assert float(ends["MAIN_FUNCTION"]["duration_ms"]) == pytest.approx(1602.0)
    assert float(ends["CHECKPOINT_LOAD"]["duration_ms"]) == pytest.approx(500.0)
    assert float(ends["VALIDATION_LOOP"]["duration_ms"]) == pytest.approx(2.0)
    assert ends["custom"]["stage"] == "x" and "MODEL_INIT" in ends
    it = next(r for r in recs if r["event"] == "iteration")
    assert float(it["step_time_ms"]) == pytest.approx(100.0)
    assert float(it["samples_per_s"]) == pytest.approx(160.0)
    assert float(it["TFLOP/s"]) == pytest.approx(20.0)
    assert len({r["span"] for r in recs if r["event"] == "span_start"}) == 6


def test_module_level_api_uses_configured_provider():
    stream = io.StringIO()
    telemetry.configure(backends=[LoggerBackend(stream)], rank=0,
                        application=ApplicationMetrics(job_name="gpt", global_batch_size=512))
    with telemetry.running():
        with telemetry.iteration(5, metrics=IterationMetrics(0, step_time_ms=10.0)):
            pass
        telemetry.event("hello")
    recs = records(stream)
    assert recs[0]["event"] == "event" and recs[0]["name"] == "application"
    assert recs[0]["job_name"] == "gpt" and recs[0]["global_batch_size"] == "512"
    it = next(r for r in recs if r["event"] == "iteration")
    assert it["iteration"] == "5" and it["step_time_ms"] == "10.0"


def test_configure_twice_replaces_backends(tmp_path):
    first, second = io.StringIO(), io.StringIO()
    telemetry.configure(backends=[LoggerBackend(first)], rank=0)
    telemetry.event("one")
    provider = telemetry.configure(backends=[LoggerBackend(second)], rank=0)
    assert telemetry.get_provider() is provider
    telemetry.event("two")
    assert "name=one" in first.getvalue() and "name=two" not in first.getvalue()
    assert "name=two" in second.getvalue() and "name=one" not in second.getvalue()


def test_rank_from_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert Provider().rank == 5
    monkeypatch.setenv("RANK", "2")
    assert Provider().rank == 2
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("SLURM_PROCID")
    assert Provider().rank == 0
    assert Provider(rank=7).rank == 7


# --- errors ------------------------------------------------------------------------------------------

def _fail() -> None:
    raise RuntimeError("NCCL timeout on rank 3")


def test_errors_recorded_with_traceback_once_and_reraised():
    p, stream, _ = make()
    with pytest.raises(RuntimeError, match="NCCL timeout"):
        with p.running():
            with p.training():
                _fail()
    lines = stream.getvalue().splitlines()
    errors = [ln for ln in lines if "event=error" in ln]
    assert len(errors) == 1
    assert re.search(r'event=error type=RuntimeError message="NCCL timeout on rank 3" traceback="', errors[0])
    rec = parse_line(errors[0])
    assert rec["traceback"].startswith("Traceback (most recent call last):\n")
    assert "in _fail" in rec["traceback"] and rec["traceback"].endswith("RuntimeError: NCCL timeout on rank 3")
    ends = [r for r in records(stream) if r["event"] == "span_end"]
    assert [e["status"] for e in ends] == ["error", "error"]


def test_record_error_directly_and_in_iteration():
    p, stream, _ = make()
    try:
        raise ValueError("x")
    except ValueError as exc:
        p.record_error(exc, step=3)
    with pytest.raises(KeyError):
        with p.iteration(9):
            raise KeyError("k")
    recs = records(stream)
    assert [r["type"] for r in recs] == ["ValueError", "KeyError"]
    assert recs[0]["message"] == "x" and recs[0]["step"] == "3" and recs[1]["iteration"] == "9"
    assert not any(r["event"] == "iteration" for r in recs)


# --- rank filtering ---------------------------------------------------------------------------------

def test_rank_filtering():
    p, stream, _ = make(rank=3)
    with pytest.raises(ValueError):
        with p.running():
            p.record_iteration(IterationMetrics(1, tflops=1.0))
            p.event("x")
            raise ValueError("boom")
    recs = records(stream)
    assert [r["event"] for r in recs] == ["error"] and recs[0]["rank"] == 3
    p, stream, _ = make(rank=3, all_ranks=True)
    with p.running():
        p.event("x")
    assert [r["event"] for r in records(stream)] == ["span_start", "event", "span_end"]


def test_iteration_interval_and_logger():
    p, stream, _ = make(iteration_interval=10)
    for i in range(25):
        p.record_iteration(IterationMetrics(i))
    assert [r["iteration"] for r in records(stream)] == ["0", "10", "20"]
    logger = logging.getLogger("test.telemetry.lines")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        lp = Provider([LoggerBackend(logger=logger)], rank=0)
        lp.event("via_logger")
        lp.record_error(RuntimeError("bad"))
    finally:
        logger.removeHandler(handler)
    assert [r.levelno for r in seen] == [logging.INFO, logging.ERROR]
    assert parse_line(seen[0].getMessage())["name"] == "via_logger"
    with pytest.raises(ValueError):
        LoggerBackend(io.StringIO(), logger=logger)


# --- the file backend -------------------------------------------------------------------------------

def test_file_backend_json_lines_and_per_rank_files(tmp_path):
    template = tmp_path / "t" / "rank{rank}.jsonl"
    for rank in (0, 1):
        backend = FileBackend(template)
        p = Provider([backend], rank=rank, clock=FakeClock(), wall_clock=lambda: 1795597200.123)
        with p.training():
            p.record_iteration(IterationMetrics(4, step_time_ms=5.0, loss=1.5))
        backend.close()
    for rank in (0, 1):
        objs = [json.loads(ln) for ln in (tmp_path / "t" / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [o["event"] for o in objs] == ["span_start", "iteration", "span_end"]
        assert all(o["rank"] == rank and o["ts"] == "2026-11-25T09:00:00.123Z" for o in objs)
        it = objs[1]
        assert it["iteration"] == 4 and it["loss"] == 1.5 and it["TFLOP/s"] is None
        assert "tflops" not in it
    plain = FileBackend(tmp_path / "plain.jsonl")
    Provider([plain], rank=2).event("x")
    plain.close()
    assert json.loads((tmp_path / "plain.jsonl.rank2").read_text())["name"] == "x"


def test_file_backend_flushes_each_record(tmp_path):
    backend = FileBackend(tmp_path / "f.jsonl")
    p = Provider([backend], rank=0)
    p.event("first")
    assert json.loads((tmp_path / "f.jsonl").read_text())["name"] == "first"
    backend.close()


def test_thread_safety(tmp_path):
    stream = io.StringIO()
    backend = FileBackend(tmp_path / "threads.jsonl")
    p = Provider([LoggerBackend(stream), backend], rank=0)
    n_threads, per_thread = 8, 300

    def work(t: int) -> None:
        for i in range(per_thread):
            with p.timed_span(f"t{t}"):
                p.record_iteration(IterationMetrics(i, loss=float(t), extra={"thread": t}))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.close()
    recs = records(stream)
    assert len(recs) == n_threads * per_thread * 3
    objs = [json.loads(ln) for ln in (tmp_path / "threads.jsonl").read_text().splitlines()]
    assert len(objs) == n_threads * per_thread * 3
    # spans nest per thread: every start's parent is absent (each thread has its own context)
    assert not any("parent" in r for r in recs if r["event"] == "span_start")
    assert len({r["span"] for r in recs if r["event"] == "span_start"}) == n_threads * per_thread


def test_a_broken_backend_never_breaks_training():
    class Broken:
        def emit(self, record):  # noqa: ANN001
            raise RuntimeError("disk full")

        def close(self) -> None:
            raise RuntimeError("still full")

    stream = io.StringIO()
    p = Provider([Broken(), LoggerBackend(stream)], rank=0)
    with p.running():
        pass
    p.close()
    assert len(records(stream)) == 2


# --- optional extras -------------------------------------------------------------------------------

def test_opentelemetry_not_installed():
    if importlib.util.find_spec("opentelemetry") is not None:
        pytest.skip("opentelemetry is installed")
    with pytest.raises(ImportError, match=r"pip install ajr-supervisor\[otel\]"):
        OpenTelemetryBackend()


def test_opentelemetry_backend_when_installed():
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    p = Provider([OpenTelemetryBackend(tracer_provider=tp)], rank=0)
    with p.running():
        with p.training():
            p.record_iteration(IterationMetrics(1, tflops=2.0))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"MAIN_FUNCTION", "TRAINING_LOOP"}
    assert spans["TRAINING_LOOP"].parent.span_id == spans["MAIN_FUNCTION"].context.span_id
    (ev,) = spans["TRAINING_LOOP"].events
    assert ev.name == "iteration" and ev.attributes["TFLOP/s"] == 2.0
    assert spans["TRAINING_LOOP"].attributes["status"] == "ok"


def test_lightning_not_installed():
    import ajr_supervisor.telemetry.lightning as tl

    if tl._Base is not None:
        pytest.skip("lightning is installed")
    with pytest.raises(ImportError, match="PyTorch Lightning"):
        tl.AJRTelemetryCallback()


def test_lightning_callback_with_a_stub_lightning(monkeypatch):
    stub = types.ModuleType("lightning")
    stub_pl = types.ModuleType("lightning.pytorch")

    class Callback:
        pass

    stub_pl.Callback = Callback  # type: ignore[attr-defined]
    stub.pytorch = stub_pl  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lightning", stub)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", stub_pl)
    import ajr_supervisor.telemetry.lightning as tl

    tl = importlib.reload(tl)
    try:
        p, stream, clock = make()
        cb = tl.AJRTelemetryCallback(provider=p, flops_per_batch=8e12)
        assert isinstance(cb, Callback)
        opt = types.SimpleNamespace(param_groups=[{"lr": 0.001}])
        ckpt = types.SimpleNamespace(last_model_path="")
        trainer = types.SimpleNamespace(global_step=0, world_size=2, optimizers=[opt],
                                        checkpoint_callback=ckpt, sanity_checking=False)
        batch = [types.SimpleNamespace(shape=(4, 128))]
        cb.on_train_start(trainer, None)
        cb.on_train_batch_start(trainer, None, batch, 0)
        clock.advance(0.5)
        trainer.global_step = 1
        cb.on_train_batch_end(trainer, None, {"loss": 2.0}, batch, 0)
        cb.on_validation_start(trainer, None)
        ckpt.last_model_path = "/ck/epoch=0-step=1.ckpt"
        cb.on_validation_end(trainer, None)
        cb.on_exception(trainer, None, RuntimeError("oom"))
        recs = records(stream)
        kinds = [(r["event"], r.get("name")) for r in recs]
        assert kinds == [("span_start", "TRAINING_LOOP"), ("iteration", None),
                         ("span_start", "VALIDATION_LOOP"), ("span_end", "VALIDATION_LOOP"),
                         ("checkpoint_saved", None), ("error", None), ("span_end", "TRAINING_LOOP")]
        it = recs[1]
        assert it["iteration"] == "1" and it["loss"] == "2.0" and it["lr"] == "0.001"
        assert float(it["step_time_ms"]) == pytest.approx(500.0)
        assert float(it["TFLOP/s"]) == pytest.approx(8.0)
        assert float(it["samples_per_s"]) == pytest.approx(16.0)
        assert "Saved checkpoint to /ck/epoch=0-step=1.ckpt" in stream.getvalue()
        assert recs[-1]["status"] == "error"
    finally:
        monkeypatch.undo()
        importlib.reload(tl)
