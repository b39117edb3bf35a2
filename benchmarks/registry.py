"""Registry ingest throughput and latency (prints figures; not a test).

Starts ``ajr registry serve`` as a real uvicorn subprocess, on SQLite and then on a PostgreSQL server
started here (initdb + pg_ctl in a temporary directory, as the ``postgres`` user when run as root;
default durability settings), each database fresh, and simulates JOBS concurrent jobs whose outboxes
send their events a few at a time (job_seen + attempt_started + first steps, then progress and
checkpoints, then the end), each job's requests one after the other, over real HTTP/1.1 keep-alive
connections: CLIENTS processes x CONNECTIONS connections. The default client is a minimal asyncio
HTTP/1.1 client (``--client raw``, about 0.06 ms of CPU per request) so that the figures measure the
registry, not the client (httpx costs ~0.9 ms per request, as much as the registry, on the same cores).
Prints events/s, the request latency p50/p99 (from writing a request to having read its whole answer;
time waiting for a free connection excluded), the CPU time of the registry and of the clients, and
checks that every event was stored exactly once.

    python benchmarks/registry.py [--jobs 1000] [--requests-per-job 5] [--events-per-request 4]
                                  [--clients 2] [--connections 8] [--client raw|aiohttp|httpx]
                                  [--only sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Self

import httpx
import psutil

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


class RawClient:
    """The cheapest honest client: asyncio streams speaking HTTP/1.1 with keep-alive, one request at a
    time per connection, a pool of ``connections`` connections. It reads the whole answer (status line,
    headers, a Content-Length body) before the request counts as done."""

    name = "raw asyncio HTTP/1.1"

    def __init__(self, url: str, token: str, connections: int) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port, self.size = parsed.hostname, parsed.port, connections
        self.head = (f"POST /api/v1/events HTTP/1.1\r\nHost: {parsed.netloc}\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: ").encode()
        self.pool: asyncio.Queue = asyncio.Queue()

    def prepare(self, payload: dict) -> bytes:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    async def __aenter__(self) -> Self:
        for _ in range(self.size):
            self.pool.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc) -> None:
        while not self.pool.empty():
            self.pool.get_nowait()[1].close()

    async def connection(self):
        return await self.pool.get()

    def release(self, conn) -> None:
        self.pool.put_nowait(conn)

    async def post(self, conn, request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status, length = int(lines[0].split(b" ", 2)[1]), None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked answers are not supported by this client")
        return status, await reader.readexactly(length or 0)


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, url: str, token: str, connections: int) -> None:
        self.url, self.token, self.size = url + "/api/v1/events", token, connections

    def prepare(self, payload: dict) -> bytes:
        return json.dumps(payload, separators=(",", ":")).encode()

    async def __aenter__(self) -> Self:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.size),
                                             headers={"Authorization": f"Bearer {self.token}",
                                                      "Content-Type": "application/json"})
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def connection(self):
        return None          # the connector pools; the gate keeps requests <= connections

    def release(self, conn) -> None:
        pass

    async def post(self, conn, request: bytes) -> tuple[int, bytes]:
        async with self.session.post(self.url, data=request) as reply:
            return reply.status, await reply.read()


class HttpxClient(AiohttpClient):
    name = "httpx"

    async def __aenter__(self) -> Self:
        import httpx

        self.session = httpx.AsyncClient(limits=httpx.Limits(max_connections=self.size,
                                                             max_keepalive_connections=self.size),
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"}, timeout=60)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.aclose()

    async def post(self, conn, request: bytes) -> tuple[int, bytes]:
        reply = await self.session.post(self.url, content=request)
        return reply.status_code, reply.content


CLIENTS = {"raw": RawClient, "aiohttp": AiohttpClient, "httpx": HttpxClient}


async def simulate(kind: str, url: str, token: str, jobs: range, requests: int, per_request: int,
                   connections: int) -> dict:
    """Send every event of ``jobs``, each job's requests one after the other (like its outbox), over
    ``connections`` keep-alive connections; returns the elapsed time, the request latencies (from
    writing the request to having read the whole answer; waiting for a free connection excluded), the
    errors and this process's CPU time."""
    client = CLIENTS[kind](url, token, connections)
    plans = {j: [(len(batch), client.prepare({"events": batch, "host": f"host{j % 128}",
                                              "backlog": len(batches) - n - 1}))
                 for n, batch in enumerate(batches)]
             for j in jobs for batches in [job_batches(j, requests, per_request)]}
    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(connections)
    async with client:
        async def job(j: int) -> None:
            for count, request in plans[j]:
                async with gate:
                    conn = await client.connection()
                    try:
                        start = time.perf_counter()
                        status, body = await client.post(conn, request)
                        latencies.append(time.perf_counter() - start)
                    finally:
                        client.release(conn)
                if status != 200 or json.loads(body)["accepted"] != count:
                    errors.append(f"{status} {body[:200]!r}")
                await asyncio.sleep(0)

        cpu0, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(job(j) for j in jobs))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    return {"elapsed_s": elapsed, "latencies": latencies, "errors": errors, "cpu_s": cpu}


def _client_process(args: tuple) -> dict:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(simulate(*args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(simulate(*args))


def load(url: str, token: str, args: argparse.Namespace) -> dict:
    """Run the jobs split over ``args.clients`` client processes (each one asyncio loop, uvloop when
    installed, with the ``args.client`` HTTP client)."""
    from concurrent.futures import ProcessPoolExecutor

    n = args.clients
    slices = [range(i, args.jobs, n) for i in range(n)]
    per = [(args.client, url, token, s, args.requests_per_job, args.events_per_request, args.connections) for s in slices]
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
            "errors": [e for p in parts for e in p["errors"]], "jobs_stored": total,
            "client_cpu_s": sum(p["cpu_s"] for p in parts)}


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
        server = psutil.Process(proc.pid)
        cpu0 = sum(server.cpu_times()[:2])
        result = load(url, token, args)
        result["server_cpu_s"] = sum(server.cpu_times()[:2]) - cpu0
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
    print(f"{'':<10} CPU: registry {result['server_cpu_s']:.1f} s, clients {result['client_cpu_s']:.1f} s "
          f"({1000 * result['client_cpu_s'] / result['requests']:.2f} ms per request)", flush=True)
    return {"label": label, "events_per_s": rate, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests-per-job", type=int, default=5)
    parser.add_argument("--events-per-request", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections per client process")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw",
                        help="the HTTP client: raw (asyncio streams, the cheapest), aiohttp or httpx")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    args = parser.parse_args()
    print(f"{args.jobs} jobs x {args.requests_per_job} requests x {args.events_per_request} events, "
          f"{args.clients} client processes x {args.connections} connections, {os.cpu_count()} CPUs; targets: >= 2000 events/s, p99 < 50 ms")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(f"client: {CLIENTS[args.client].name} on {loop}, keep-alive, one request at a time per connection; "
          f"latency = request written -> whole answer read")
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
