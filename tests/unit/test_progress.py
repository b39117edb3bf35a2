"""Progress-line parsing on real excerpts (tests/data/progress, SOURCES.md) and the other formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_supervisor.detect.progress import Progress, SpanEvent, parse_kv, parse_progress

DATA = Path(__file__).resolve().parents[1] / "data" / "progress"


def lines(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()


def test_megatron_with_throughput_real():
    p = parse_progress(lines("megatron_lm_tflops.log")[0], rank=0)
    assert p == Progress(71, 5361.6, 243.6, pytest.approx(1000 / 5361.6), 0, "megatron", 100)
    assert parse_progress(lines("megatron_lm_tflops.log")[1], rank=0).iteration == 72


def test_megatron_old_without_throughput_real():
    p = parse_progress(lines("megatron_llm_old.log")[1], rank=3)
    assert isinstance(p, Progress)
    assert (p.iteration, p.step_time_ms, p.tflops, p.rank, p.source) == (123, 87871.6, None, 3, "megatron")


def test_megatron_tflops_spelling():
    text = (" iteration      500/  100000 | consumed samples:      512000 | elapsed time per iteration"
            " (ms): 1234.5 | learning rate: 1.0E-04 | global batch size:  1024 | TFLOPs: 155.25 |")
    p = parse_progress(text)
    assert (p.iteration, p.step_time_ms, p.tflops) == (500, 1234.5, 155.25)


def test_nemo_tqdm_seconds_per_iteration_real():
    p = parse_progress(lines("nemo_tqdm_s_per_it.log")[0], rank=0)
    assert p.iteration == 794 and p.source == "nemo"
    assert p.it_per_s == pytest.approx(1 / 41.36)
    assert p.step_time_ms == pytest.approx(41360.0)


def test_tqdm_iterations_per_second_with_step_timing():
    text = ("Epoch 0: 12%|█▏        | 120/1000 [01:02<07:40, 1.91it/s, v_num=0, reduced_train_loss=2.34,"
            " global_step=119.0, consumed_samples=30720.0, train_step_timing in s=0.52]")
    p = parse_progress(text, rank=0)
    assert (p.iteration, p.it_per_s, p.step_time_ms) == (119, 1.91, pytest.approx(520.0))
    short = "Epoch 2:  50%|█████     | 50/100 [00:10<00:10, 4.97it/s, loss=0.1, train_step_timing=0.2]"
    q = parse_progress(short)
    assert (q.iteration, q.it_per_s, q.step_time_ms) == (50, 4.97, pytest.approx(200.0))
    plain = "Epoch 1:  50%|█████     | 50/100 [00:10<00:10, 4.97it/s, loss=0.1, v_num=3]"
    assert parse_progress(plain).source == "lightning"


def test_nemo2_text_real():
    p = parse_progress(lines("nemo2_text.log")[0], rank=1)
    assert (p.iteration, p.step_time_ms, p.rank, p.source) == (120, pytest.approx(31.46), 1, "nemo")


def test_telemetry_iteration_and_spans():
    it = parse_progress("[ajr-telemetry] ts=2026-11-25T09:00:00.123Z rank=2 event=iteration iteration=100"
                        " step_time_ms=2986.9 tflops=386.7 TFLOP/s=386.7 loss=2.34", rank=5)
    assert it == Progress(100, 2986.9, 386.7, pytest.approx(1000 / 2986.9), 2, "ajr-telemetry")
    st = parse_progress('[ajr-telemetry] ts=x rank=0 event=span_start name=CHECKPOINT_SAVE_SYNC span=7'
                        ' note="a b=c"')
    assert st == SpanEvent("start", "CHECKPOINT_SAVE_SYNC", "7", None, 0)
    en = parse_progress("[ajr-telemetry] ts=x event=span_end name=CHECKPOINT_SAVE_SYNC span=7 duration_ms=1234.5",
                        rank=4)
    assert en == SpanEvent("end", "CHECKPOINT_SAVE_SYNC", "7", 1234.5, 4)
    assert parse_progress("[ajr-telemetry] ts=x rank=0 event=hello") is None


def test_parse_kv_quotes():
    assert parse_kv('a=1 b="x y" c="q\\"d" e=') == {"a": "1", "b": "x y", "c": 'q"d', "e": ""}


def test_example_trainer_lines():
    p = parse_progress("[2026-11-25 09:00:00.123] rank 3 iteration 17 step_time_ms 101.2", rank=3)
    assert (p.iteration, p.step_time_ms, p.rank, p.source) == (17, 101.2, 3, "ajr-example")
    m = parse_progress(" [2026-11-25 09:00:00.123] iteration       10/      50 | consumed samples:          80 |"
                       " elapsed time per iteration (ms): 100.3 | throughput per GPU (TFLOP/s/GPU): 1.2 |"
                       " lm loss: 2.345678E+00 |", rank=0)
    assert (m.iteration, m.step_time_ms, m.tflops, m.source) == (10, 100.3, 1.2, "megatron")


@pytest.mark.parametrize("text", [
    "",
    "NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC",
    "[2026-11-25 09:00:00.123] saving checkpoint at iteration 40 to /ckpt",
    "[2026-11-25 09:00:00.123] SAVE_CHECKPOINT: iteration: 40, ckpt saving takes 0.00 seconds",
    "Traceback (most recent call last):",
    "  warnings.warn('it/s')",
    "[ajr] rank 0 node node1 pid 1234",
])
def test_non_progress_lines(text):
    assert parse_progress(text, rank=0) is None


def test_precheck_rejects_most_lines_without_full_parse(monkeypatch):
    import ajr_supervisor.detect.progress as mod

    class Boom:
        def search(self, _):
            raise AssertionError("full parse reached")
    monkeypatch.setattr(mod, "_MEGATRON", Boom())
    assert parse_progress("NCCL INFO Bootstrap : Using eth0:10.0.0.1<0>") is None


def test_telemetry_nan_is_unknown():
    p = parse_progress("0: x [ajr-telemetry] ts=2026-11-25T09:00:00.123Z rank=0 event=iteration iteration=5"
                       " step_time_ms=812.5 TFLOP/s=nan loss=2.31")
    assert (p.iteration, p.step_time_ms, p.tflops) == (5, 812.5, None)
    assert parse_progress("[ajr-telemetry] ts=t rank=0 event=iteration iteration=6 tflops=nan") == \
        Progress(6, None, None, None, 0, "ajr-telemetry")
