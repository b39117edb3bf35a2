"""A fake NVML backend for tests and the lab: pynvml's function names and signatures, its constants and
its exception classes, answering from a small state file (``.json``: JSON; any other suffix: YAML).

Select it with ``AJR_NVML_FAKE=<state file>`` (see :func:`ajr_supervisor.health.nvml.backend_from_env`).
Every key is optional; a GPU given as ``{}`` is a healthy PCIe GPU (no NVLink)::

    gpus:
      - pci: "0000:3b:00.0"             # NVML reports it as 00000000:3B:00.0, as the real one does
        uuid: GPU-...
        recovery_action: 0               # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (0 NONE, 1 GPU_RESET, ...)
        ecc_uncorrected_volatile: 0
        ecc_uncorrected_aggregate: 0
        remapped_rows: {correctable: 0, uncorrectable: 0, pending: false, failure: false}
        retired_pages_pending: false
        nvlink_errors: {"0": {replay: 0, recovery: 0, crc_flit: 0, crc_data: 0, active: true}}  # absent: no NVLink
        throttle_reasons: 0              # the nvmlClocksEventReason* bit mask
        temperature: 45
        xid_events: [79]                 # delivered to every event set registered on this GPU
        not_supported: [nvmlDeviceGetRemappedRows]       # this GPU only
        errors: {nvmlDeviceGetHandleByIndex: GPU_IS_LOST}  # this GPU only
    init_error: null                     # e.g. DRIVER_NOT_LOADED: nvmlInit raises NVMLError_DriverNotLoaded
    hang: {call: nvmlDeviceGetTotalEccErrors, seconds: 30}   # optional "gpu": i; the call sleeps first
    not_supported: [nvmlDeviceGetRemappedRows]   # every GPU; a field name (NVML_FI_...) fails that field only
    errors: {}                                   # call -> NVML_ERROR_* name without the prefix, or a code
    driver_version: "550.54.15"

Errors are pynvml's own classes (``pynvml.NVMLError(code)`` maps a code to ``NVMLError_NotSupported``
and the others), so the probe's error handling runs as it does on a real node. The file is read again
at every ``nvmlInit``, so a test can change the GPUs between probes. The fake never calls the library.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml  # exception classes, constants and ctypes structures only
import yaml

from . import normalize_pci

_RECOVERY_FIELD = int(getattr(pynvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", 230))
_NVLINK_COUNTERS = {0: "replay", 1: "recovery", 2: "crc_flit", 3: "crc_data", 4: "ecc_data"}


@dataclass(frozen=True)
class FakeHandle:
    index: int


class FakeEventSet:
    def __init__(self) -> None:
        self.pending: list[int] = []  # Xids not yet waited for


def _error(name: str | int) -> pynvml.NVMLError:
    """pynvml's exception for an error name (``GPU_IS_LOST``) or code; the subclass comes with it."""
    code = name if isinstance(name, int) else getattr(pynvml, f"NVML_ERROR_{str(name).upper()}", None)
    if code is None:
        raise ValueError(f"fake NVML: unknown NVML error {name!r}")
    return pynvml.NVMLError(code)


class FakeNVML:
    """Quacks like the ``pynvml`` module for the functions the probe calls; the rest of pynvml's
    constants and classes are reached through it (its other functions are missing, as on an old pynvml)."""

    def __init__(self, state_file: str | os.PathLike[str]) -> None:
        self.path = Path(state_file)
        self.key = f"fake:{self.path.resolve()}"
        self._state: dict[str, Any] | None = None
        self._refs = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(pynvml, name)
        if callable(value) and not isinstance(value, type):
            raise AttributeError(f"the fake NVML has no {name}")
        return value

    # -- the state file, hangs and injected errors

    def _load(self) -> dict[str, Any]:
        text = self.path.read_text()
        state = json.loads(text) if self.path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(state, dict) or not isinstance(state.get("gpus") or [], list):
            raise ValueError(f"{self.path}: a fake NVML state is a mapping with a 'gpus' list")
        return state

    def _enter(self, call: str, index: int | None = None, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Apply the state's hang and errors to ``call``; the GPU's entry (or the whole state)."""
        with self._lock:
            state = state if state is not None else self._state
        if state is None:
            raise _error("UNINITIALIZED")
        hang = state.get("hang") or {}
        if hang.get("call") == call and hang.get("gpu", index) == index:
            time.sleep(float(hang.get("seconds", 30)))
        gpu: dict[str, Any] = {}
        if index is not None:
            gpus = state.get("gpus") or []
            if not 0 <= index < len(gpus):
                raise _error("INVALID_ARGUMENT")
            gpu = gpus[index] or {}
        for scope in (state, gpu):
            if call in (scope.get("not_supported") or ()):
                raise _error("NOT_SUPPORTED")
            if call in (scope.get("errors") or {}):
                raise _error(scope["errors"][call])
        return gpu if index is not None else state

    def _gpu(self, call: str, handle: Any) -> dict[str, Any]:
        if not isinstance(handle, FakeHandle):
            raise _error("INVALID_ARGUMENT")
        return self._enter(call, handle.index)

    def _unsupported(self, handle: FakeHandle) -> set[str]:
        state = self._state or {}
        gpu = (state.get("gpus") or [])[handle.index] or {}
        return set(state.get("not_supported") or ()) | set(gpu.get("not_supported") or ())

    # -- the library

    def nvmlInit(self) -> None:
        state = self._load()
        self._enter("nvmlInit", state=state)
        if state.get("init_error") is not None:
            raise _error(state["init_error"])
        with self._lock:
            self._state, self._refs = state, self._refs + 1

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        with self._lock:
            self._refs -= 1
            if self._refs <= 0:
                self._state, self._refs = None, 0

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._enter("nvmlSystemGetDriverVersion").get("driver_version", "550.54.15"))

    def nvmlDeviceGetCount(self) -> int:
        return len(self._enter("nvmlDeviceGetCount").get("gpus") or [])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex", int(index))
        return FakeHandle(int(index))

    # -- one GPU

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        gpu = self._gpu("nvmlDeviceGetPciInfo", handle)
        domain, bus, rest = normalize_pci(str(gpu.get("pci", f"0000:{0x10 + handle.index:02x}:00.0"))).split(":")
        info = pynvml.nvmlPciInfo_t()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
        info.busId = pynvml.NVML_DEVICE_PCI_BUS_ID_FMT % (info.domain, info.bus, info.device)
        info.busIdLegacy = f"{info.domain:04X}:{info.bus:02X}:{info.device:02X}.0"
        return info

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        return str(gpu.get("uuid", f"GPU-00000000-0000-0000-0000-{handle.index:012d}"))

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, fieldIds: list[Any]) -> Any:
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        supported = "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION" not in self._unsupported(handle)
        for value, field in zip(values, fieldIds):
            value.fieldId = field[0] if isinstance(field, tuple) else field
            value.timestamp = int(time.time() * 1e6)
            if value.fieldId == _RECOVERY_FIELD and supported:
                value.nvmlReturn, value.valueType = pynvml.NVML_SUCCESS, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                value.value.uiVal = int(gpu.get("recovery_action", 0))
            else:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, errorType: int, counterType: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        if errorType not in (0, 1) or counterType not in (0, 1):
            raise _error("INVALID_ARGUMENT")
        kind = "uncorrected" if errorType == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else "corrected"
        counter = "volatile" if counterType == pynvml.NVML_VOLATILE_ECC else "aggregate"
        return int(gpu.get(f"ecc_{kind}_{counter}", 0))

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:
        rows = self._gpu("nvmlDeviceGetRemappedRows", handle).get("remapped_rows") or {}
        return (int(rows.get("correctable", 0)), int(rows.get("uncorrectable", 0)),
                int(bool(rows.get("pending", False))), int(bool(rows.get("failure", False))))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: FakeHandle) -> int:
        gpu = self._gpu("nvmlDeviceGetRetiredPagesPendingStatus", device)
        return pynvml.NVML_FEATURE_ENABLED if gpu.get("retired_pages_pending") else pynvml.NVML_FEATURE_DISABLED

    def _link(self, call: str, handle: FakeHandle, link: int) -> dict[str, Any]:
        links = self._gpu(call, handle).get("nvlink_errors") or {}
        if not links:
            raise _error("NOT_SUPPORTED")  # a GPU without NVLink
        entry = links.get(str(link), links.get(link))
        if entry is None:
            raise _error("INVALID_ARGUMENT")  # no such link on this GPU
        return entry or {}

    def nvmlDeviceGetNvLinkState(self, device: FakeHandle, link: int) -> int:
        return pynvml.NVML_FEATURE_ENABLED if self._link("nvmlDeviceGetNvLinkState", device, link).get(
            "active", True) else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkErrorCounter(self, device: FakeHandle, link: int, counter: int) -> int:
        entry = self._link("nvmlDeviceGetNvLinkErrorCounter", device, link)
        if counter not in _NVLINK_COUNTERS:
            raise _error("INVALID_ARGUMENT")
        return int(entry.get(_NVLINK_COUNTERS[counter], 0))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return int(self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).get("throttle_reasons", 0))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return int(self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).get("throttle_reasons", 0))

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _error("INVALID_ARGUMENT")
        return int(gpu.get("temperature", 40))

    # -- events

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._enter("nvmlEventSetCreate")
        return FakeEventSet()

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, eventTypes: int, eventSet: FakeEventSet) -> None:
        gpu = self._gpu("nvmlDeviceRegisterEvents", handle)
        if eventTypes & pynvml.nvmlEventTypeXidCriticalError:
            eventSet.pending.extend(int(x) for x in gpu.get("xid_events") or ())

    def nvmlEventSetWait_v2(self, eventSet: FakeEventSet, timeoutms: int) -> Any:
        return self._wait("nvmlEventSetWait_v2", eventSet, timeoutms)

    def nvmlEventSetWait(self, eventSet: FakeEventSet, timeoutms: int) -> Any:
        return self._wait("nvmlEventSetWait", eventSet, timeoutms)

    def _wait(self, call: str, eventSet: FakeEventSet, timeoutms: int) -> Any:
        self._enter(call)
        if not eventSet.pending:
            time.sleep(timeoutms / 1000)
            raise _error("TIMEOUT")
        data = pynvml.c_nvmlEventData_t()
        data.eventType, data.eventData = pynvml.nvmlEventTypeXidCriticalError, eventSet.pending.pop(0)
        return data

    def nvmlEventSetFree(self, eventSet: FakeEventSet) -> None:
        self._enter("nvmlEventSetFree")
