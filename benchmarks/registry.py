"""Registry ingest throughput and latency (prints figures; not a test).

Starts ``ajr registry serve`` as a real uvicorn subprocess, on SQLite and then on a PostgreSQL server
started here (initdb + pg_ctl in a temporary directory, as the ``postgres`` user when run as root;
default durability settings), and simulates JOBS concurrent jobs whose outboxes send their events a
few at a time (job_seen + attempt_started + first steps, then progress and checkpoints, then the end)
with asyncio + httpx: CLIENTS processes, each over CONNECTIONS keep-alive connections (httpx spends
more CPU per request than the registry does, and both share this machine's cores). Prints events/s and the request latency
p50/p99 (from sending a request to its answer; time spent waiting for a free connection excluded) for
each database, and checks that every event was stored exactly once.

    python benchmarks/registry.py [--jobs 1000] [--requests-per-job 5] [--events-per-request 4]
                                  [--clients 2] [--connections 8] [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from ajr_supervisor.registry.auth import create_token
from ajr_supervisor.registry.db import Database, migrate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        sys.exit(f"PostgreSQL's {name} is not installed: apt-get install postgresql")
    return found


class Postgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ajr-bench-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user, self.user)

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run(prefix + list(argv), check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        data = str(self.root / "data")
        self._run(pg_bin("initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self._run(pg_bin("pg_ctl"), "-D", data, "-l", str(self.root / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start")
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE ajr")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/ajr"

    def stop(self) -> None:
        try:
            self._run(pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def serve_argv(db: str, port: int) -> list[str]:
    """``ajr registry serve``; through the click group itself while ``ajr`` does not register it yet."""
    from ajr_supervisor.cli import cli

    args = ["registry", "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port)]
    if "registry" in cli.commands:
        return [sys.executable, "-m", "ajr_supervisor", *args]
    return [sys.executable, "-c", "import sys; from ajr_supervisor.cli.registry import registry; "
            "registry(sys.argv[1:], prog_name='ajr registry')", *args[1:]]


def job_batches(job: int, requests: int, per_request: int) -> list[list[dict]]:
    t0 = time.time() - 3600
    job_id = str(100000 + job)
    total = requests * per_request

    def event(i: int) -> dict:
        attempt = None if i == 0 else 0
        if i == 0:
            kind, data = "job_seen", {"max_requeue_times": 3}
        elif i == 1:
            kind, data = "attempt_started", {"nodes": [f"node{job % 64:03d}", f"node{(job + 1) % 64:03d}"]}
        elif i == total - 1:
            kind, data = "attempt_ended", {"exit_code": 0, "end_reason": "success", "failed": False}
        elif i % 5 == 0:
            kind, data = "checkpoint", {"iteration": i * 100}
        else:
            kind, data = "progress", {"iteration": i * 100, "first": i == 2, "step_time_s": 0.5}
        return {"id": uuid.uuid4().hex, "v": 1, "type": kind, "time": t0 + i, "cluster": "bench", "job_id": job_id,
                "job_name": "train", "user": f"user{job % 20}", "partition": "gpu", "attempt": attempt,
                "source": "supervisor", "data": data}

    events = [event(i) for i in range(total)]
    return [events[i:i + per_request] for i in range(0, total, per_request)]


async def simulate(url: str, token: str, jobs: range, requests: int, per_request: int, connections: int) -> dict:
    """Send every event of ``jobs``; returns the elapsed time, the request latencies and the errors."""
    plans = {j: job_batches(j, requests, per_request) for j in jobs}
    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(connections)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers, timeout=60) as client:
        async def job(j: int) -> None:
            batches = plans[j]
            for n, batch in enumerate(batches):
                async with gate:
                    start = time.perf_counter()
                    reply = await client.post("/api/v1/events", json={
                        "events": batch, "host": f"host{j % 128}", "backlog": len(batches) - n - 1})
                    latencies.append(time.perf_counter() - start)
                if reply.status_code != 200 or reply.json()["accepted"] != len(batch):
                    errors.append(f"{reply.status_code} {reply.text[:200]}")
                await asyncio.sleep(0)

        started = time.perf_counter()
        await asyncio.gather(*(job(j) for j in jobs))
        elapsed = time.perf_counter() - started
    return {"elapsed_s": elapsed, "latencies": latencies, "errors": errors}


def _client_process(args: tuple) -> dict:
    return asyncio.run(simulate(*args))


def load(url: str, token: str, args: argparse.Namespace) -> dict:
    """Run the jobs split over ``args.clients`` client processes (each asyncio + httpx)."""
    from concurrent.futures import ProcessPoolExecutor

    n = args.clients
    slices = [range(i, args.jobs, n) for i in range(n)]
    per = [(url, token, s, args.requests_per_job, args.events_per_request, args.connections) for s in slices]
    if n == 1:
        parts = [_client_process(per[0])]
    else:
        with ProcessPoolExecutor(n) as pool:
            parts = list(pool.map(_client_process, per))
    latencies = sorted(x for p in parts for x in p["latencies"])
    total = httpx.get(url + "/api/v1/jobs", params={"limit": 1}, headers={"Authorization": f"Bearer {token}"},
                      timeout=30).json()["total"]
    return {"elapsed_s": max(p["elapsed_s"] for p in parts), "events": args.jobs * args.requests_per_job *
            args.events_per_request, "requests": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "errors": [e for p in parts for e in p["errors"]], "jobs_stored": total}


def run_one(label: str, db: str, args: argparse.Namespace) -> dict:
    database = Database(db)
    migrate(database)
    token, _ = create_token(database, "admin", name=f"bench-{uuid.uuid4().hex[:6]}")
    database.dispose()
    port = free_port()
    proc = subprocess.Popen(serve_argv(db, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{label}: the registry did not start: {proc.stderr.read()[-800:] if proc.stderr else ''}")
            time.sleep(0.1)
        result = load(url, token, args)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    rate = result["events"] / result["elapsed_s"]
    ok = "ok" if not result["errors"] and result["jobs_stored"] == args.jobs else \
        f"PROBLEM: {len(result['errors'])} failed requests ({result['errors'][:1]}), {result['jobs_stored']} jobs stored"
    print(f"{label:<10} {result['events']:>7} events in {result['requests']:>6} requests, {result['elapsed_s']:6.2f} s: "
          f"{rate:8.0f} events/s, {result['requests'] / result['elapsed_s']:6.0f} req/s, "
          f"latency p50 {result['p50_ms']:6.1f} ms, p99 {result['p99_ms']:6.1f} ms  [{ok}]", flush=True)
    return {"label": label, "events_per_s": rate, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests-per-job", type=int, default=5)
    parser.add_argument("--events-per-request", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections per client process")
    parser.add_argument("--clients", type=int, default=2, help="client processes (httpx costs more CPU than "
                                                                "the server per request)")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    args = parser.parse_args()
    print(f"{args.jobs} jobs x {args.requests_per_job} requests x {args.events_per_request} events, "
          f"{args.clients} client processes x {args.connections} connections, {os.cpu_count()} CPUs; targets: >= 2000 events/s, p99 < 50 ms")
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="ajr-bench-") as tmp:
            run_one("sqlite", str(Path(tmp) / "registry.db"), args)
    if args.only in (None, "postgres"):
        pg = Postgres()
        try:
            run_one("postgres", pg.start(), args)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
