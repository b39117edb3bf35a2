"""What the event outbox costs: put() per event, and the delivery rate to a local registry.

    python3 benchmarks/outbox.py [--n 2000] [--dir /path/on/the/job/filesystem] [--deliver 20000]

Measures, in one process and after a warm-up:

- ``put()`` of a typical event (a ``progress`` event, ~400 bytes of JSON), in microseconds per
  event (p50, p99, max), with its two fsyncs (the file, then the directory after the rename);
- the same write by hand without any fsync and with the file's fsync only, to show where the
  time goes (the filesystem's fsync dominates; run it with --dir on the job's filesystem);
- ``put()`` with a Deliverer thread running beside it (what the supervisor does);
- the delivery rate: ``--deliver`` events flushed in batches of 200 to the fake registry of the
  unit tests (a ThreadingHTTPServer on 127.0.0.1, in a child process so that it does not compete
  for this one's GIL), events per second.

On a shared or virtual disk the figures swing by 2x from run to run; ``--dir /dev/shm`` shows the
cost without the disk (fsync is free on tmpfs).

Only figures are printed: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ajr_supervisor.events import make_event  # noqa: E402
from ajr_supervisor.outbox import Deliverer, Outbox  # noqa: E402
from tests.unit.test_outbox import FakeRegistry  # noqa: E402  (the registry of the unit tests)


def typical(i: int) -> dict:
    return make_event("progress", cluster="lab", job_id="123456", attempt=3, job_name="llama-70b",
                      user="alice", partition="gpu",
                      data={"iteration": i, "first": False, "step_time_s": 1.234, "tflops": 187.5})


def report(label: str, seconds: list[float]) -> None:
    us = sorted(s * 1e6 for s in seconds)
    p = lambda q: us[min(len(us) - 1, int(q * len(us)))]   # noqa: E731
    print(f"{label:<44} p50 {p(0.50):8.1f} us   p99 {p(0.99):8.1f} us   max {us[-1]:8.1f} us   "
          f"mean {statistics.fmean(us):8.1f} us")


def time_puts(box: Outbox, n: int) -> list[float]:
    events = [typical(i) for i in range(n)]
    times = []
    for e in events:
        start = time.perf_counter()
        ok = box.put(e)
        times.append(time.perf_counter() - start)
        assert ok
    return times


def time_raw(directory: Path, n: int, fsync: bool) -> list[float]:
    data = b"x" * 420
    times = []
    for i in range(n):
        start = time.perf_counter()
        tmp = directory / f".raw{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        os.rename(tmp, directory / f"raw{i}.json")
        times.append(time.perf_counter() - start)
    return times


def _serve(conn) -> None:
    registry = FakeRegistry()
    conn.send(registry.url)
    conn.recv()               # until the parent goes away


def start_registry() -> tuple[multiprocessing.Process, str]:
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    return proc, parent.recv()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="puts per measurement")
    parser.add_argument("--dir", type=Path, default=None, help="where to put (default: a temporary directory)")
    parser.add_argument("--deliver", type=int, default=20000, help="events for the delivery rate")
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="ajr-outbox-bench-", dir=args.dir)
    print(f"filesystem of {base}; event size {len(__import__('json').dumps(typical(0)))} bytes")

    box = Outbox(Path(base) / "put", url=None, token=None)
    time_puts(box, 100)                                   # warm-up (directory, caches)
    report("put() (validate, encode, write, 2x fsync)", time_puts(box, args.n))
    for fsync in (False, True):
        d = Path(base) / f"raw-{fsync}"
        d.mkdir()
        report(f"raw write+rename, fsync of the file={fsync}", time_raw(d, args.n, fsync))

    registry, url = start_registry()
    try:
        live = Outbox(Path(base) / "live", url=url, token="t")
        deliverer = Deliverer(live, interval_s=3600).start()
        report("put() with a Deliverer thread delivering", time_puts(live, args.n))
        deliverer.stop(30.0)
        print(f"  left undelivered by the thread: {live.backlog()} of {args.n}")

        bulk = Outbox(Path(base) / "bulk", url=url, token="t", batch_max=200)
        for i in range(args.deliver):
            bulk.put(typical(i))
        start = time.perf_counter()
        result = bulk.flush(600.0)
        elapsed = time.perf_counter() - start
        print(f"delivery: {result.sent} events in {elapsed:.2f} s = {result.sent / elapsed:,.0f} events/s "
              f"(batches of 200; left {result.left}, error {result.error})")
    finally:
        registry.terminate()
        for sub in sorted(Path(base).rglob("*"), reverse=True):
            sub.rmdir() if sub.is_dir() else sub.unlink()
        os.rmdir(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
