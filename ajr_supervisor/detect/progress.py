"""Iteration progress and throughput from training log lines (pure).

``parse_progress(text, rank)`` reads one line (without srun's ``N: `` rank prefix; the rank is
passed separately) and returns a :class:`Progress`, a :class:`SpanEvent` or ``None``. Formats:

- Megatron-LM (and Megatron-DeepSpeed, the example trainer's rank 0):
  `` iteration      30/81380208 | ... | elapsed time per iteration (ms): 2986.9 |
  throughput per GPU (TFLOP/s/GPU): 386.7 | ...`` (older lines lack the throughput; ``TFLOPs: x``);
- NeMo / Lightning tqdm bars: ``Epoch 0: 12%|█▏ | 120/1000 [01:02<07:40, 1.91it/s, ...,
  global_step=119.0, ..., train_step_timing in s=0.52]`` (``it/s`` or ``s/it``);
- NeMo 2 text lines: ``Training epoch 0, iteration 120/149 | ... | global_step: 120 | ...
  | train_step_timing in s: 0.03146``;
- the ajr telemetry library: ``[ajr-telemetry] ts=... rank=0 event=iteration iteration=100
  step_time_ms=2986.9 tflops=386.7`` and ``event=span_start|span_end name=... span=7
  [duration_ms=...]`` (key=value pairs, values may be double-quoted);
- the example trainer's other ranks: ``[ts] rank R iteration I step_time_ms T``.

Most lines are not progress lines: :data:`_PRECHECK` (one regex search) rejects them first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Progress:
    """One progress report. Fields a format does not print are ``None``."""

    iteration: int | None
    step_time_ms: float | None
    tflops: float | None          # per GPU, as the trainer printed it
    it_per_s: float | None
    rank: int | None
    source: str                   # megatron | nemo | lightning | ajr-telemetry | ajr-example
    total: int | None = None      # the run's last iteration, when the line says (Megatron, telemetry)


@dataclass(frozen=True)
class SpanEvent:
    """A telemetry span boundary (checkpoint save, validation loop, ...)."""

    kind: Literal["start", "end"]
    name: str
    span_id: str | None
    duration_ms: float | None = None
    rank: int | None = None


TELEMETRY_TAG = "[ajr-telemetry]"
_PRECHECK = re.compile(r"iteration|it/s|s/it|ajr-telemetry")
_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"

_MEGATRON = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_ELAPSED = re.compile(r"elapsed time per iteration \(ms\):\s*" + _NUM)
_TFLOPS = re.compile(r"(?:TFLOP/s/GPU\)|TFLOPs(?: per GPU)?|TFLOP/s)\s*:\s*" + _NUM)
_NEMO2 = re.compile(r"\bTraining epoch \d+, iteration (\d+)/\d+")
_COLON_STEP = re.compile(r"\bglobal_step:\s*" + _NUM)
_COLON_TIMING = re.compile(r"\btrain_step_timing(?: in s)?:\s*" + _NUM)
_TQDM = re.compile(r"\b(\d+)/(\d+)\s*\[[^\]]*?" + _NUM + r"\s*(it/s|s/it)")
_EQ_STEP = re.compile(r"\bglobal_step=" + _NUM)
_EQ_TIMING = re.compile(r"\btrain_step_timing(?: in s)?=" + _NUM)
_EXAMPLE = re.compile(r"\brank (\d+) iteration (\d+) step_time_ms " + _NUM)
_KV = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(text: str) -> dict[str, str]:
    """``key=value`` pairs of a telemetry line; double-quoted values are unquoted."""
    out: dict[str, str] = {}
    for key, value in _KV.findall(text):
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = re.sub(r'\\(.)', r'\1', value[1:-1])
        out[key] = value
    return out


def _float(s: str | None) -> float | None:
    if s is None:
        return None
    try:
        f = float(s)
    except ValueError:
        return None
    return f if math.isfinite(f) else None   # telemetry writes ``nan`` for an unknown value


def _int(s: str | None) -> int | None:
    f = _float(s)
    return int(f) if f is not None else None


def _telemetry(text: str, rank: int | None) -> Progress | SpanEvent | None:
    kv = parse_kv(text[text.index(TELEMETRY_TAG) + len(TELEMETRY_TAG):])
    own_rank = _int(kv.get("rank"))
    r = own_rank if own_rank is not None else rank
    event = kv.get("event")
    if event == "iteration":
        step = _float(kv.get("step_time_ms"))
        ips = _float(kv.get("it_per_s"))
        if ips is None and step:
            ips = 1000.0 / step
        tflops = _float(kv.get("tflops", kv.get("TFLOP/s")))
        return Progress(_int(kv.get("iteration")), step, tflops, ips, r, "ajr-telemetry",
                        _int(kv.get("total_iterations")))
    if event in ("span_start", "span_end"):
        return SpanEvent("start" if event == "span_start" else "end", kv.get("name", ""),
                         kv.get("span"), _float(kv.get("duration_ms")), r)
    return None


def _tqdm(m: re.Match[str], text: str, rank: int | None) -> Progress:
    rate, unit = float(m.group(3)), m.group(4)
    ips = rate if unit == "it/s" else (1.0 / rate if rate > 0 else None)
    step_ms = 1000.0 / ips if ips else None
    timing = _EQ_TIMING.search(text)
    if timing:
        step_ms = float(timing.group(1)) * 1000.0
    gs = _EQ_STEP.search(text)
    iteration = int(float(gs.group(1))) if gs else int(m.group(1))
    source = "nemo" if ("reduced_train_loss" in text or timing or gs) else "lightning"
    return Progress(iteration, step_ms, None, ips, rank, source)


def parse_progress(text: str, rank: int | None = None) -> Progress | SpanEvent | None:
    """The progress (or telemetry span) a line reports, or ``None`` for every other line."""
    if not _PRECHECK.search(text):
        return None
    if TELEMETRY_TAG in text:
        return _telemetry(text, rank)
    m = _NEMO2.search(text)
    if m:
        gs = _COLON_STEP.search(text)
        timing = _COLON_TIMING.search(text)
        step_ms = float(timing.group(1)) * 1000.0 if timing else None
        return Progress(int(float(gs.group(1))) if gs else int(m.group(1)), step_ms, None,
                        1000.0 / step_ms if step_ms else None, rank, "nemo")
    m = _MEGATRON.search(text)
    if m:
        step = _ELAPSED.search(text)
        step_ms = float(step.group(1)) if step else None
        tf = _TFLOPS.search(text)
        return Progress(int(m.group(1)), step_ms, float(tf.group(1)) if tf else None,
                        1000.0 / step_ms if step_ms else None, rank, "megatron", int(m.group(2)))
    m = _EXAMPLE.search(text)
    if m:
        step_ms = float(m.group(3))
        return Progress(int(m.group(2)), step_ms, None, 1000.0 / step_ms if step_ms else None,
                        int(m.group(1)), "ajr-example")
    m = _TQDM.search(text)
    if m:
        return _tqdm(m, text, rank)
    return None
