"""What the training telemetry costs per call, in microseconds.

    python3 benchmarks/telemetry.py [--n 200000]

Times, in this one process and after a warm-up, ``--n`` calls of:

- an empty loop (the baseline, subtracted from the others);
- ``record_iteration(IterationMetrics(...))`` and ``with iteration(i) as it: it.update(loss=...)``;
- a span enter/exit (``with timed_span(...)``), which writes two records;
- each with no backend, a LoggerBackend on a null stream (``os.devnull``, rank 0, so every line is
  formatted and written), a LoggerBackend on rank 1 (filtered out), and a FileBackend (JSON lines
  to a temporary file, flushed per record).

Only figures are printed: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ajr_supervisor.telemetry import (FileBackend, IterationMetrics, LoggerBackend,  # noqa: E402
                                      Provider)


def per_call_us(fn: Callable[[int], None], n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``fn(i)`` for i in range(n), in microseconds per call."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per measurement")
    args = parser.parse_args(argv)
    n = args.n

    def empty(i: int) -> None:
        pass

    baseline = per_call_us(empty, n)
    print(f"python {sys.version.split()[0]}, {n} calls each, best of 3; "
          f"baseline (empty loop + call): {baseline:.3f} us/call")
    print(f"{'backend':<28} {'record_iteration':>17} {'iteration() ctx':>16} {'span enter/exit':>16}")

    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as null:
        setups: list[tuple[str, Callable[[], Provider]]] = [
            ("none", lambda: Provider([], rank=0)),
            ("logger, null stream, rank 0", lambda: Provider([LoggerBackend(null)], rank=0)),
            ("logger, rank 1 (filtered)", lambda: Provider([LoggerBackend(null)], rank=1)),
            ("file (JSON lines)", lambda: Provider([FileBackend(Path(tmp) / "t{rank}.jsonl")], rank=0)),
        ]
        for label, make in setups:
            p = make()

            def record(i: int, p: Provider = p) -> None:
                p.record_iteration(IterationMetrics(i, step_time_ms=812.5, tflops=402.1,
                                                    loss=2.3456, lr=3e-4))

            def scope(i: int, p: Provider = p) -> None:
                with p.iteration(i) as it:
                    it.update(loss=2.3456, tflops=402.1)

            def span(i: int, p: Provider = p) -> None:
                with p.timed_span("ITERATION"):
                    pass

            for fn in (record, scope, span):  # warm-up
                for i in range(1000):
                    fn(i)
            costs = [per_call_us(fn, n) - baseline for fn in (record, scope, span)]
            print(f"{label:<28} {costs[0]:>14.2f} us {costs[1]:>13.2f} us {costs[2]:>13.2f} us")
            p.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
