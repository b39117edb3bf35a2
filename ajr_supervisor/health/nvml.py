"""GPU health from NVML: the only module of the package that imports ``pynvml`` (lazily, in RealNVML).

:func:`probe_gpus` returns a :class:`NodeHealth`: one ``nvml`` check (GOOD, value ``{"gpus", "driver"}``)
and per GPU ``N`` the checks ``gpuN.<check>``, each valued by a dict with ``pci`` (kernel form
``0000:3b:00.0``, as a kernel Xid line names it) and the reading; each detail starts ``gpuN (<pci>):``.

==========================  ================================================  ======================
check                       BAD when                                          NotSupported: omitted?
==========================  ================================================  ======================
device                      handle/PCI/UUID say GPU_IS_LOST, RESET_REQUIRED   no: UNKNOWN
recovery_action             NVML_FI_DEV_GET_GPU_RECOVERY_ACTION is not NONE   yes (driver < R570)
ecc_uncorrected_volatile    uncorrectable ECC errors since driver load > 0    yes (no ECC, ECC off)
ecc_uncorrected_aggregate   never (lifetime count, for the record)            yes
remapped_rows_failure       row remapping failed                              yes (pre-Ampere)
remapped_rows_pending       a row remap waits for a GPU reset                 yes
retired_pages_pending       a page retirement waits for a GPU reset           yes (Ampere+ remaps)
nvlink_errors               one link's replay+recovery+CRC > nvlink_errors_max  yes (no NVLink: PCIe)
throttle                    HW, HW thermal, SW thermal or power-brake slowdown  no: UNKNOWN
temperature                 above temperature_max_c                           no: UNKNOWN
xid                         a hardware Xid arrives during the short wait      yes (no events)
==========================  ================================================  ======================

"Omitted": NVML says the GPU or driver lacks the feature, so there is nothing to be unknown about; the
names are listed in ``gpuN.device``'s ``not_applicable``. Any other NVML error: that check is UNKNOWN
(GPU_IS_LOST and RESET_REQUIRED: BAD). No pynvml, no driver, no GPU: a single ``nvml`` check, UNKNOWN.

Every call runs on one daemon thread per probe, waited for at most ``timeout_s`` (the probe: ``budget_s``).
A call that does not return makes its check and every check not yet done UNKNOWN ("NVML call X timed out
after Ns"); its thread is abandoned, and until that call returns, later probes of the same backend answer
UNKNOWN at once instead of piling up hung threads.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Mapping

from . import Check, NodeHealth, State, normalize_pci
from .xid import exclude_xids

RECOVERY_ACTION_FIELD = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (nvml.h), for a pynvml that lacks it
RECOVERY_ACTIONS = {0: "NONE", 1: "GPU_RESET", 2: "NODE_REBOOT", 3: "DRAIN_P2P", 4: "DRAIN_AND_RESET",
                    5: "RECOVER_IMEX_DOMAIN", 6: "BUS_RESET", 7: "SYSTEM_REBOOT"}
CLOCK_REASONS = {0x1: "GPU_IDLE", 0x2: "APPLICATIONS_CLOCKS_SETTING", 0x4: "SW_POWER_CAP", 0x8: "HW_SLOWDOWN",
                 0x10: "SYNC_BOOST", 0x20: "SW_THERMAL_SLOWDOWN", 0x40: "HW_THERMAL_SLOWDOWN",
                 0x80: "HW_POWER_BRAKE_SLOWDOWN", 0x100: "DISPLAY_CLOCK_SETTING", 0x200: "BOARD_LIMIT",
                 0x400: "RELIABILITY"}
SLOWDOWN_REASONS = 0x8 | 0x20 | 0x40 | 0x80  # the hardware slows the GPU (not idle, power cap, app clocks)
NVLINK_COUNTERS = {"replay": 0, "recovery": 1, "crc_flit": 2, "crc_data": 3}  # NVML_NVLINK_ERROR_DL_*
# nvml.h values (a stable ABI): return codes, then the arguments the probe passes
_INVALID_ARGUMENT, _NOT_SUPPORTED, _TIMEOUT, _FUNCTION_NOT_FOUND, _GPU_IS_LOST, _RESET_REQUIRED = 2, 3, 10, 13, 15, 16
_UNCORRECTED, _VOLATILE, _AGGREGATE, _TEMPERATURE_GPU, _XID_EVENT = 1, 0, 1, 0, 0x8
_VALUE_ATTRS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # by NVML_VALUE_TYPE_*
_GONE = (_GPU_IS_LOST, _RESET_REQUIRED)


@dataclasses.dataclass(frozen=True)
class Limits:
    temperature_max_c: int = 90  # above: BAD (below, the temperature is only reported)
    nvlink_errors_max: int = 10  # per link: replay + recovery + CRC errors since the driver loaded
    xid_wait_ms: int = 20        # Xid event wait per GPU (NVML events are live: no history)


class RealNVML:
    """The backend over the real ``pynvml`` module: its functions, constants and exception classes."""

    key = "pynvml"

    def __init__(self) -> None:
        import pynvml  # here: importing this module needs neither pynvml nor a driver

        self._module = pynvml

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def backend_from_env(env: Mapping[str, str] | None = None) -> Any:
    """``AJR_NVML_FAKE=<state file>``: the fake backend (tests, the lab); otherwise the real pynvml."""
    path = (os.environ if env is None else env).get("AJR_NVML_FAKE")
    if path:
        from .fake_nvml import FakeNVML

        return FakeNVML(path)
    return RealNVML()


class _Timeout(BaseException):
    """A call that did not return in time (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


_ABANDONED: dict[str, tuple[str, threading.Thread]] = {}  # backend key -> (hung call, its thread)
_ABANDONED_LOCK = threading.Lock()


class _Worker:
    """Runs one backend call at a time on its own daemon thread, and stops waiting after the timeout."""

    def __init__(self, backend: Any, key: str, timeout_s: float, budget_s: float) -> None:
        self.nv, self.key, self.timeout_s, self.budget_s = backend, key, timeout_s, budget_s
        self.deadline = time.monotonic() + budget_s
        self.hung: _Timeout | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="ajr-nvml-probe", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def __call__(self, name: str, *args: Any, wait_s: float | None = None) -> Any:
        if self.hung:
            raise self.hung
        wait = min(self.timeout_s, self.deadline - time.monotonic()) if wait_s is None else wait_s
        if wait <= 0:
            raise _Timeout(f"NVML probe ran past its {self.budget_s:g}s budget before call {name}")
        try:
            fn = getattr(self.nv, name)
        except AttributeError:  # an older pynvml
            raise self.nv.NVMLError(_FUNCTION_NOT_FOUND) from None
        future: Future = Future()
        self._jobs.put((future, fn, args))
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            if future.done():
                raise
            self.hung = _Timeout(f"NVML call {name} timed out after {wait:g}s")
            with _ABANDONED_LOCK:
                _ABANDONED[self.key] = (name, self._thread)
            raise self.hung from None

    def close(self) -> None:
        if not self.hung:
            self._jobs.put(None)


Judge = Callable[[Any], "tuple[bool, str, dict]"]  # a reading -> (bad?, detail, the reading as a dict)


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rows_flag(flag: str, bad: str, good: str) -> Judge:
    """A judge of nvmlDeviceGetRemappedRows' (correctable, uncorrectable, pending, failure) by one flag."""

    def judge(raw: Any) -> tuple[bool, str, dict]:
        corr, unc, pending, failure = (int(x) for x in raw)
        rows = {"correctable": corr, "uncorrectable": unc, "pending": bool(pending), "failure": bool(failure)}
        return rows[flag], bad if rows[flag] else good, rows

    return judge


def _throttle(mask: int) -> tuple[bool, str, dict]:
    reasons = [label for bit, label in CLOCK_REASONS.items() if mask & bit]
    slow = [label for bit, label in CLOCK_REASONS.items() if mask & bit & SLOWDOWN_REASONS]
    detail = f"clocks slowed by {', '.join(slow)}" if slow else f"clock reasons: {', '.join(reasons) or 'none'}"
    return bool(slow), detail, {"mask": mask, "reasons": reasons}


@dataclasses.dataclass
class _Gpu:
    index: int
    handle: Any = None
    pci: str | None = None
    absent: list[str] = dataclasses.field(default_factory=list)


class _Probe:
    def __init__(self, call: _Worker, limits: Limits) -> None:
        self.call, self.nv, self.limits = call, call.nv, limits
        self.out: list[Check] = []
        hot, ecc, rows = limits.temperature_max_c, "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows"
        # name -> (calls (newer first), extra args, omit on NotSupported, judge); None: a method of its own
        self.steps: dict[str, tuple[tuple[str, ...], tuple, bool, Judge] | None] = {
            "device": None, "recovery_action": None,
            "ecc_uncorrected_volatile": ((ecc,), (_UNCORRECTED, _VOLATILE), True, lambda n: (
                n > 0, f"{n} uncorrectable ECC error(s) since the driver loaded", {"count": n})),
            "ecc_uncorrected_aggregate": ((ecc,), (_UNCORRECTED, _AGGREGATE), True, lambda n: (
                False, f"{n} uncorrectable ECC error(s) in the GPU's life (history)", {"count": n})),
            "remapped_rows_failure": ((rows,), (), True, _rows_flag(
                "failure", "row remapping FAILED: the GPU needs service", "no row remapping failure")),
            "remapped_rows_pending": ((rows,), (), True, _rows_flag(
                "pending", "a row remap is pending: the GPU needs a reset", "no row remap pending")),
            "retired_pages_pending": (("nvmlDeviceGetRetiredPagesPendingStatus",), (), True, lambda n: (
                n == 1, "retired pages pending: the GPU needs a reset" if n == 1 else "no retired pages pending",
                {"pending": n == 1})),
            "nvlink_errors": None,
            "throttle": (("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
                         (), False, _throttle),
            "temperature": (("nvmlDeviceGetTemperature",), (_TEMPERATURE_GPU,), False, lambda c: (
                c > hot, f"{c} C" + (f", above the {hot} C limit" if c > hot else ""), {"celsius": c})),
            "xid": None}

    def run(self) -> list[Check]:
        try:
            self.call("nvmlInit")
        except _Timeout as t:
            return [Check("nvml", State.UNKNOWN, None, t.detail)]
        except Exception as exc:
            return [Check("nvml", State.UNKNOWN, None, f"NVML unavailable: {_text(exc)}")]
        try:
            self._all()
        except _Timeout as t:  # counting the GPUs or reading the driver version
            self.out.append(Check("nvml", State.UNKNOWN, None, t.detail))
        finally:
            if not self.call.hung:
                try:
                    self.call("nvmlShutdown", wait_s=self.call.timeout_s)
                except (Exception, _Timeout):
                    pass
        return self.out

    def _all(self) -> None:
        try:
            count = int(self.call("nvmlDeviceGetCount"))
        except Exception as exc:
            self.out.append(Check("nvml", State.UNKNOWN, None, f"cannot count GPUs: {_text(exc)}"))
            return
        if count <= 0:
            self.out.append(Check("nvml", State.UNKNOWN, {"gpus": 0}, "NVML sees no GPU"))
            return
        try:
            driver: str | None = _str(self.call("nvmlSystemGetDriverVersion"))
        except Exception:
            driver = None
        self.out.append(Check("nvml", State.GOOD, {"gpus": count, "driver": driver}, f"{count} GPU(s)"))
        names = list(self.steps)
        for index in range(count):
            g, at = _Gpu(index), len(self.out)
            for k, name in enumerate(names):
                try:
                    spec = self.steps[name]
                    check = getattr(self, "_" + name)(g, name) if spec is None else self._read(g, name, *spec)
                except _Timeout as t:  # this check and every one not yet done: UNKNOWN
                    for j in range(index, count):
                        for n in names[k if j == index else 0:]:
                            detail = t.detail if (j, n) == (index, name) else f"not checked: {t.detail}"
                            self.out.append(self._check(g if j == index else _Gpu(j), n, State.UNKNOWN, detail))
                    return
                except Exception as exc:  # a reading of an unexpected shape: this probe cannot tell
                    check = self._check(g, name, State.UNKNOWN, f"unexpected answer: {_text(exc)}")
                self.out.extend([check] if check else [])
                if g.handle is None:
                    break  # no handle: the device check says why, and nothing else can be asked
            if g.absent and self.out[at].name == f"gpu{index}.device":
                device = self.out[at]
                self.out[at] = dataclasses.replace(device, value={**device.value, "not_applicable": g.absent})

    def _check(self, g: _Gpu, name: str, state: State, detail: str, **reading: Any) -> Check:
        return Check(f"gpu{g.index}.{name}", state, {"pci": g.pci, **reading},
                     f"gpu{g.index} ({g.pci or 'PCI address unknown'}): {detail}")

    def _code(self, exc: BaseException) -> int | None:
        return getattr(exc, "value", None) if isinstance(exc, self.nv.NVMLError) else None

    def _failed(self, g: _Gpu, name: str, call: str, exc: BaseException, omit: tuple[int, ...]) -> Check | None:
        code = self._code(exc)
        if code in omit:  # the GPU or the driver lacks the feature: nothing to check
            g.absent.append(name)
            return None
        if code in _GONE:
            return self._check(g, name, State.BAD, f"{call}: {exc} (the GPU needs a reset or is gone)")
        if code == _NOT_SUPPORTED:
            return self._check(g, name, State.UNKNOWN, f"not supported ({call})")
        return self._check(g, name, State.UNKNOWN, f"{call} failed: {_text(exc)}")

    def _read(self, g: _Gpu, name: str, calls: tuple[str, ...], args: tuple, omit: bool,
              judge: Judge) -> Check | None:
        for call in calls:  # several: the newer name first, then the older where the driver lacks it
            try:
                raw = self.call(call, g.handle, *args)
                break
            except Exception as exc:
                if self._code(exc) != _FUNCTION_NOT_FOUND or call == calls[-1]:
                    return self._failed(g, name, call, exc, (_NOT_SUPPORTED,) if omit else ())
        bad, detail, reading = judge(raw if isinstance(raw, (tuple, list)) else int(raw))
        return self._check(g, name, State.BAD if bad else State.GOOD, detail, **reading)

    def _device(self, g: _Gpu, name: str) -> Check | None:
        try:
            g.handle = self.call("nvmlDeviceGetHandleByIndex", g.index)
        except Exception as exc:
            return self._failed(g, name, "nvmlDeviceGetHandleByIndex", exc, ())
        got: dict[str, str | None] = {"bus_id": None, "uuid": None}
        failures: list[BaseException] = []
        for key, call in (("bus_id", "nvmlDeviceGetPciInfo"), ("uuid", "nvmlDeviceGetUUID")):
            try:
                raw = self.call(call, g.handle)
                got[key] = _str(raw.busId if key == "bus_id" else raw)
                g.pci = normalize_pci(got["bus_id"] or "") if key == "bus_id" else g.pci
            except Exception as exc:
                failures.append(exc)
        state = State.BAD if any(self._code(e) in _GONE for e in failures) else \
            State.UNKNOWN if failures else State.GOOD
        detail = "; ".join(_text(e) for e in failures) or f"{got['uuid']}, NVML bus id {got['bus_id']}"
        return self._check(g, name, state, detail, **got)

    def _recovery_action(self, g: _Gpu, name: str) -> Check | None:
        call, field = "nvmlDeviceGetFieldValues", getattr(self.nv, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
        try:
            value = self.call(call, g.handle, [int(RECOVERY_ACTION_FIELD if field is None else field)])[0]
            if int(value.nvmlReturn) != 0:
                raise self.nv.NVMLError(int(value.nvmlReturn))
        except Exception as exc:  # an older driver answers the unknown field NOT_SUPPORTED or INVALID_ARGUMENT
            return self._failed(g, name, call, exc, (_NOT_SUPPORTED, _INVALID_ARGUMENT, _FUNCTION_NOT_FOUND))
        vtype = int(value.valueType)
        action = int(getattr(value.value, _VALUE_ATTRS[vtype] if 0 <= vtype < len(_VALUE_ATTRS) else "uiVal"))
        label = RECOVERY_ACTIONS.get(action, f"ACTION_{action}")
        detail = f"NVML asks for recovery action {label} ({action})" if action else "no recovery action needed"
        return self._check(g, name, State.BAD if action else State.GOOD, detail, action=action, label=label)

    def _nvlink_errors(self, g: _Gpu, name: str) -> Check | None:
        links, active, limit = 0, 0, self.limits.nvlink_errors_max
        errors: dict[str, dict[str, int]] = {}
        bad: list[str] = []
        problems: list[BaseException] = []
        for link in range(int(getattr(self.nv, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                up = int(self.call("nvmlDeviceGetNvLinkState", g.handle, link))
            except Exception as exc:
                if self._code(exc) not in (_NOT_SUPPORTED, _INVALID_ARGUMENT):  # those: no such link
                    links += 1
                    problems.append(exc)
                continue
            links, active, counts = links + 1, active + (1 if up else 0), {}
            for counter, cid in NVLINK_COUNTERS.items() if up else ():
                try:
                    counts[counter] = int(self.call("nvmlDeviceGetNvLinkErrorCounter", g.handle, link, cid))
                except Exception as exc:
                    problems += [] if self._code(exc) == _NOT_SUPPORTED else [exc]
            problems += [self.nv.NVMLError(_NOT_SUPPORTED)] if up and not counts else []  # counters unreadable
            errors.update({str(link): counts} if sum(counts.values()) else {})
            bad += [f"link {link} {counts}"] if sum(counts.values()) > limit else []
        if links == 0:  # no NVLink on this GPU (a PCIe card)
            g.absent.append(name)
            return None
        reading = {"links": links, "active": active, "errors": errors}
        if bad:
            detail = f"NVLink errors above {limit} on a link: {'; '.join(bad)}"
            return self._check(g, name, State.BAD, detail, **reading)
        if problems:
            state = State.BAD if any(self._code(e) in _GONE for e in problems) else State.UNKNOWN
            return self._check(g, name, state, f"NVLink counters unreadable: {_text(problems[0])}", **reading)
        return self._check(g, name, State.GOOD, f"{active}/{links} links up, errors within limit", **reading)

    def _xid(self, g: _Gpu, name: str) -> Check | None:
        wait = "nvmlEventSetWait_v2" if hasattr(self.nv, "nvmlEventSetWait_v2") else "nvmlEventSetWait"
        ms, xids, call = self.limits.xid_wait_ms, [], "nvmlEventSetCreate"
        try:
            events = self.call(call)
        except Exception as exc:
            return self._failed(g, name, call, exc, (_NOT_SUPPORTED,))
        try:
            call = "nvmlDeviceRegisterEvents"
            self.call(call, g.handle, _XID_EVENT, events)
            for call in [wait] * 32:
                data = self.call(call, events, ms)
                xids += [int(data.eventData)] if int(data.eventType) & _XID_EVENT else []
        except Exception as exc:
            ended = self._code(exc) == _TIMEOUT and call == wait  # the wait's TIMEOUT: no more events
            if not ended and not exclude_xids().intersection(xids):  # a hardware Xid seen stays BAD
                return self._failed(g, name, call, exc, (_NOT_SUPPORTED,))
        finally:
            if not self.call.hung:
                try:
                    self.call("nvmlEventSetFree", events)
                except (Exception, _Timeout):
                    pass
        bad = [x for x in xids if x in exclude_xids()]
        seen = f"Xid {', '.join(map(str, xids))}" if xids else "no Xid events"
        return self._check(g, name, State.BAD if bad else State.GOOD,
                           f"{seen} during a {ms} ms event wait" + (" (hardware)" if bad else ""), xids=xids)


def probe_gpus(backend: Any = None, timeout_s: float = 5.0, now: Callable[[], float] = time.time, *,
               node: str | None = None, limits: Limits = Limits(), budget_s: float = 60.0) -> NodeHealth:
    """Probe every GPU of this node (the checks and their rules: the module docstring).

    ``backend``: RealNVML, FakeNVML or any object with pynvml's names; None: :func:`backend_from_env`.
    NVML trouble never raises: it is UNKNOWN (or BAD) checks. Returns within about ``budget_s`` plus
    ``timeout_s`` even when a call hangs for ever.
    """
    at, node = now(), node or socket.gethostname().split(".")[0]
    if backend is None:
        try:
            backend = backend_from_env()
        except Exception as exc:  # pynvml not installed, an unreadable fake state file
            return NodeHealth(node, (Check("nvml", State.UNKNOWN, None, f"NVML unavailable: {_text(exc)}"),), at)
    key = str(getattr(backend, "key", id(backend)))
    with _ABANDONED_LOCK:
        stuck = _ABANDONED.get(key)
        if stuck and not stuck[1].is_alive():  # the hung call has returned since: NVML may answer again
            del _ABANDONED[key]
            stuck = None
    if stuck:
        detail = f"NVML call {stuck[0]} of an earlier probe is still hung; NVML not called again"
        return NodeHealth(node, (Check("nvml", State.UNKNOWN, None, detail),), at)
    worker = _Worker(backend, key, timeout_s, budget_s)
    try:
        return NodeHealth(node, tuple(_Probe(worker, limits).run()), at)
    finally:
        worker.close()
