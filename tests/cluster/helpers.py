"""Helpers shared by the cluster tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


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
