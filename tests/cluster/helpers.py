"""Helpers shared by the cluster tests."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from ajr_supervisor.state import StateStore


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll until ``predicate()`` is truthy; return its value or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "slurm_examples" / "train.py"
AJR = str(Path(sys.executable).with_name("ajr"))
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def comment(**aps) -> str:
    return json.dumps({"APS": aps})


def final_job(slurm, job_id, timeout_s=90):
    return wait_for(lambda: (j := slurm.show_job(job_id)).base_state in FINAL and j, timeout_s,
                    f"job {job_id} to finish")


def state(job_dir, job_id):
    rec = StateStore(job_dir / ".ajr").load(job_id)
    assert rec is not None, f"no state file for job {job_id}"
    return rec
