"""Node health: what the probes saw, in three states.

Every observation is a :class:`Check` that is GOOD, BAD or UNKNOWN:

- GOOD: the probe read the value and it is within limits;
- BAD: the probe read the value and it shows a fault (a reason to exclude the node);
- UNKNOWN: the probe could not tell (a call failed, timed out, is not supported, no GPU or no driver).

UNKNOWN never means healthy and never means bad: it never excludes or drains a node, and it never
clears one either. A :class:`NodeHealth` is the checks of one node at one time; its ``state`` is BAD
if any check is BAD, else UNKNOWN if any check is UNKNOWN (or there are no checks), else GOOD.

Only ``health/nvml.py`` talks to NVML (and only it imports ``pynvml``); ``health/fake_nvml.py`` is
its fake backend for tests and the lab. Everything here is plain data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping


class State(str, Enum):
    GOOD = "GOOD"
    BAD = "BAD"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Check:
    """One observation. ``value`` is JSON-able (GPU checks: a dict with ``pci``); ``detail`` is one
    human line saying why the check is BAD or UNKNOWN (or what was read)."""

    name: str
    state: State
    value: object = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state.value, "value": self.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        try:
            return cls(str(data["name"]), State(data["state"]), data.get("value"), str(data.get("detail", "")))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"not a health check: {data!r} ({exc})") from None


@dataclass(frozen=True)
class NodeHealth:
    """The checks of one node, observed at ``at`` (seconds since the epoch)."""

    node: str
    checks: tuple[Check, ...]
    at: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple(self.checks))

    @property
    def state(self) -> State:
        states = {c.state for c in self.checks}
        if State.BAD in states:
            return State.BAD
        if State.UNKNOWN in states or not states:
            return State.UNKNOWN  # nothing checked is not healthy
        return State.GOOD

    @property
    def bad(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.state is State.BAD)

    @property
    def unknown(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.state is State.UNKNOWN)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "at": self.at, "state": self.state.value,
                "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeHealth:
        """The inverse of :meth:`to_dict` (``state`` is derived, so it is not read back)."""
        try:
            checks = tuple(Check.from_dict(c) for c in data["checks"])
            return cls(str(data["node"]), checks, float(data["at"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a node health record: {exc}") from None


_PCI = re.compile(r"(?:PCI:)?(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?$")


def normalize_pci(bus_id: str) -> str:
    """A PCI address in the kernel's form ``0000:3b:00.0``, from NVML's ``00000000:3B:00.0`` or a
    kernel Xid line's ``PCI:0000:3b:00`` (no function: ``.0``, as for GPUs). Raises ValueError."""
    m = _PCI.match(bus_id.strip())
    if not m:
        raise ValueError(f"not a PCI address: {bus_id!r}")
    domain, bus, dev, fn = m.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{fn or '0'}"
