"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def registry():
    """A fake registry on 127.0.0.1 that records what the outbox sends (tests/unit/test_outbox.py)."""
    from tests.unit.test_outbox import FakeRegistry

    reg = FakeRegistry()
    yield reg
    reg.stop()
