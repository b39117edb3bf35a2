"""The registry with the real lab: events survive a registry outage, and the held-job watchdog
releases a job through the real Slurm.

`ajr registry serve` runs as a real uvicorn process on the lab's bridge address (the supervisors
run in the nodes' network namespaces and reach it there), with a SQLite database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import requests

from ajr_supervisor.state import StateStore
from tests.cluster.conftest import TEST_LAB
from tests.cluster.helpers import AJR, final_job, state, wait_for

pytest.importorskip("fastapi", reason="the registry extra is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((TEST_LAB.ctl_addr, 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, root, *, config: str = "") -> None:
        self.root, self.port = root, free_port()
        self.db = str(root / "registry.db")
        self.url = f"http://{TEST_LAB.ctl_addr}:{self.port}"
        (root / "registry.yaml").write_text(f"db: {self.db}\nhost: {TEST_LAB.ctl_addr}\nport: {self.port}\n" + config)
        self.proc: subprocess.Popen | None = None
        self.admin = self.token("admin", "tester")

    def cli(self, *args: str) -> str:
        out = subprocess.run([AJR, "registry", *args, "--config", str(self.root / "registry.yaml")],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SLURM_CONF": str(TEST_LAB.slurm_conf)})
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def token(self, role: str, name: str) -> str:
        return self.cli("token", "create", "--role", role, "--name", name).splitlines()[-1].strip()

    def start(self) -> None:
        self.proc = subprocess.Popen([AJR, "registry", "serve", "--config", str(self.root / "registry.yaml")],
                                     stdout=open(self.root / "serve.log", "ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "SLURM_CONF": str(TEST_LAB.slurm_conf)})
        wait_for(lambda: self._up(), 30, "the registry to answer /healthz")

    def _up(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None

    def get(self, path: str) -> dict:
        r = requests.get(self.url + path, headers={"Authorization": f"Bearer {self.admin}"}, timeout=10)
        assert r.ok, r.text
        return r.json()


@pytest.fixture
def registry(job_dir):
    reg = Registry(job_dir)
    yield reg
    reg.stop()


def test_registry_down_for_a_whole_attempt_gets_every_event_once_it_is_back(run_job, slurm, job_dir, registry):
    """Attempt 0 crashes and is requeued while the registry is down: its events wait in the job's
    outbox. The registry starts during attempt 1, whose supervisor delivers the backlog with its own
    events; at the end the registry's view matches the state file and nothing waits."""
    token_file = job_dir / "supervisor.token"
    token_file.write_text(registry.token("supervisor", "lab-supervisors") + "\n")
    job_id = run_job("""
        "$AJR" run -- bash -c 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then echo "step 1"; exit 3; fi
                               echo "Saved checkpoint to /ckpt/1"; sleep 8; echo done'
        """, config=f"registry_url: {registry.url}\nregistry_token_file: {token_file}\ncluster_name: lab\n")
    store = StateStore(job_dir / ".ajr")
    wait_for(lambda: (r := store.load(job_id)) is not None and len(r.attempts) == 2, 60, "attempt 1 to start")
    outbox = job_dir / ".ajr" / "outbox"
    waiting = sorted(p.name for p in outbox.glob("*.json"))
    assert len(waiting) >= 6, waiting           # attempt 0's events, undelivered
    registry.start()
    job = final_job(slurm, job_id, 120)
    assert job.base_state == "COMPLETED" and job.restarts == 1
    wait_for(lambda: not list(outbox.glob("*.json")), 60, "the outbox to empty")
    assert not list((outbox / "rejected").glob("*")) if (outbox / "rejected").exists() else True
    rec = state(job_dir, job_id)
    detail = registry.get(f"/api/v1/jobs/lab/{job_id}")
    assert detail["state"] == "completed", detail
    attempts = {a["attempt"]: a for a in detail["attempts"]}
    assert sorted(attempts) == [0, 1]
    assert attempts[0]["decision"]["verdict"] == rec.attempts[0].decision["verdict"] == "REQUEUE"
    assert [a["action"] for a in attempts[0]["actions"]] == [a["action"] for a in rec.attempts[0].actions]
    assert attempts[1]["end_reason"] == "success"
    assert len(attempts[1]["checkpoints"]) == len(rec.attempts[1].checkpoints) == 2   # one line per rank
    events = registry.get(f"/api/v1/jobs/lab/{job_id}/events")
    items = events["items"] if isinstance(events, dict) else events
    ids = [e["id"] for e in items]
    assert len(ids) == len(set(ids))                       # each event stored once
    kinds = [(e["attempt"], e["type"]) for e in items]
    for expected in [(0, "attempt_started"), (0, "decision"), (0, "action"), (0, "attempt_ended"),
                     (1, "attempt_started"), (1, "checkpoint"), (1, "attempt_ended")]:
        assert expected in kinds, (expected, kinds)


def test_watchdog_releases_a_job_ajr_left_held(jobs, slurm, job_dir):
    """A job requeue-held by ajr whose release never came: the registry releases it after
    held_timeout_s through the real scontrol, and audits it."""
    reg = Registry(job_dir, config="held_timeout_s: 2\nwatchdog_interval_s: 1\n")
    try:
        reg.start()
        script = job_dir / "sleep.sh"
        script.write_text("#!/bin/bash\nsleep 60\n")
        job_id = jobs("-N1", "--requeue", f"--chdir={job_dir}", f"--output={job_dir}/out", str(script))
        wait_for(lambda: slurm.show_job(job_id).base_state == "RUNNING", 30, "the job to run")
        slurm.requeuehold(job_id)
        wait_for(lambda: slurm.show_job(job_id).held, 30, "the job to be held")
        now = time.time()
        token = reg.token("supervisor", "sup")
        event = {"id": f"hold-{job_id}", "v": 1, "type": "action", "time": now, "cluster": "default",
                 "job_id": job_id, "job_name": "sleep", "user": "root", "partition": "lab", "attempt": 0,
                 "source": "supervisor", "data": {"action": "requeuehold", "ok": True, "at": now}}
        r = requests.post(reg.url + "/api/v1/events", json={"events": [event], "host": "t", "backlog": 0},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.ok and r.json()["accepted"] == 1, r.text
        wait_for(lambda: not slurm.show_job(job_id).held, 30, "the watchdog to release the job")
        audit = reg.get("/api/v1/audit")
        rows = audit["items"] if isinstance(audit, dict) else audit
        assert any(a["who"] == "watchdog" and a["action"] == "release" and a["job_id"] == job_id and a["ok"]
                   for a in rows), rows
    finally:
        reg.stop()
