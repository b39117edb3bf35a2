"""The NVML door: three states per GPU check, the fake backend, timeouts, and the real pynvml path."""

import ast
import ctypes
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pynvml
import pytest

from ajr_supervisor.health import Check, NodeHealth, State, normalize_pci
from ajr_supervisor.health.fake_nvml import FakeNVML
from ajr_supervisor.health.nvml import Limits, RealNVML, backend_from_env, probe_gpus

PACKAGE = Path(__file__).resolve().parents[2] / "ajr_supervisor"
FAST = Limits(xid_wait_ms=1)
GPU_CHECKS = ["device", "recovery_action", "ecc_uncorrected_volatile", "ecc_uncorrected_aggregate",
              "remapped_rows_failure", "remapped_rows_pending", "retired_pages_pending", "nvlink_errors",
              "throttle", "temperature", "xid"]
PCI = ["0000:3b:00.0", "0000:5e:00.0"]


def healthy_gpu(pci):
    return {"pci": pci, "uuid": f"GPU-{pci}", "recovery_action": 0, "ecc_uncorrected_volatile": 0,
            "ecc_uncorrected_aggregate": 0,
            "remapped_rows": {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False},
            "retired_pages_pending": False,
            "nvlink_errors": {"0": {"replay": 0, "recovery": 0, "crc_flit": 0}, "1": {"replay": 0}},
            "throttle_reasons": 0, "temperature": 45, "xid_events": []}


@pytest.fixture
def fake(tmp_path):
    """fake(gpu1={...overrides}, **top) -> FakeNVML over a fresh state file with two healthy GPUs."""
    def make(gpu0=None, gpu1=None, name="nvml.json", **top):
        gpus = [{**healthy_gpu(PCI[0]), **(gpu0 or {})}, {**healthy_gpu(PCI[1]), **(gpu1 or {})}]
        path = tmp_path / name
        path.write_text(json.dumps({"gpus": gpus, **top}))
        return FakeNVML(path)
    return make


def checks(health):
    return {c.name: c for c in health.checks}


def real_nvml_library_present():
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


# -- GOOD and BAD

def test_healthy_gpus_are_all_good_and_carry_their_pci_address(fake):
    health = probe_gpus(fake(), now=lambda: 1000.0, node="node1", limits=FAST)
    assert health.state is State.GOOD and health.node == "node1" and health.at == 1000.0
    by_name = checks(health)
    assert list(by_name) == ["nvml"] + [f"gpu{i}.{n}" for i in (0, 1) for n in GPU_CHECKS]
    assert by_name["nvml"].value == {"gpus": 2, "driver": "550.54.15"}
    for i in (0, 1):
        for name in GPU_CHECKS:
            check = by_name[f"gpu{i}.{name}"]
            assert check.state is State.GOOD, check
            assert check.value["pci"] == PCI[i] and PCI[i] in check.detail
    assert by_name["gpu1.device"].value["bus_id"] == "00000000:5E:00.0"  # NVML's own form, as a real GPU
    assert by_name["gpu1.device"].value["uuid"] == f"GPU-{PCI[1]}"
    assert by_name["gpu0.temperature"].value["celsius"] == 45


@pytest.mark.parametrize("override, check, words", [
    ({"recovery_action": 1}, "recovery_action", "GPU_RESET"),
    ({"recovery_action": 2}, "recovery_action", "NODE_REBOOT"),
    ({"recovery_action": 3}, "recovery_action", "DRAIN_P2P"),
    ({"recovery_action": 4}, "recovery_action", "DRAIN_AND_RESET"),
    ({"ecc_uncorrected_volatile": 3}, "ecc_uncorrected_volatile", "3 uncorrectable"),
    ({"remapped_rows": {"uncorrectable": 5, "failure": True}}, "remapped_rows_failure", "FAILED"),
    ({"remapped_rows": {"uncorrectable": 1, "pending": True}}, "remapped_rows_pending", "reset"),
    ({"retired_pages_pending": True}, "retired_pages_pending", "reset"),
    ({"nvlink_errors": {"0": {"crc_flit": 40}, "1": {}}}, "nvlink_errors", "link 0"),
    ({"nvlink_errors": {"0": {}, "3": {"recovery": 6, "replay": 6}}}, "nvlink_errors", "link 3"),
    ({"throttle_reasons": 0x8}, "throttle", "HW_SLOWDOWN"),
    ({"throttle_reasons": 0x40 | 0x1}, "throttle", "HW_THERMAL_SLOWDOWN"),
    ({"throttle_reasons": 0x20}, "throttle", "SW_THERMAL_SLOWDOWN"),
    ({"throttle_reasons": 0x80}, "throttle", "HW_POWER_BRAKE_SLOWDOWN"),
    ({"temperature": 97}, "temperature", "above the 90 C limit"),
    ({"xid_events": [79]}, "xid", "Xid 79"),
    ({"errors": {"nvmlDeviceGetTotalEccErrors": "GPU_IS_LOST"}}, "ecc_uncorrected_volatile", "GPU is lost"),
])
def test_each_fault_is_bad_on_its_gpu_only_with_its_pci_address(fake, override, check, words):
    health = probe_gpus(fake(gpu1=override), limits=FAST)
    bad = [c.name for c in health.bad]
    assert health.state is State.BAD
    assert f"gpu1.{check}" in bad and all(name.startswith("gpu1.") for name in bad)
    found = checks(health)[f"gpu1.{check}"]
    assert found.value["pci"] == PCI[1] and PCI[1] in found.detail and words in found.detail


@pytest.mark.parametrize("override, check", [
    ({"throttle_reasons": 0x1 | 0x2 | 0x4 | 0x10}, "throttle"),  # idle, app clocks, power cap, sync boost
    ({"ecc_uncorrected_aggregate": 7}, "ecc_uncorrected_aggregate"),  # history: the remap checks judge it
    ({"remapped_rows": {"correctable": 3, "uncorrectable": 2}}, "remapped_rows_failure"),
    ({"temperature": 88}, "temperature"),
    ({"xid_events": [13, 43]}, "xid"),  # application-level Xids
    ({"nvlink_errors": {"0": {"replay": 4, "crc_flit": 6}}}, "nvlink_errors"),  # 10: not above the limit
    ({"nvlink_errors": {"0": {"active": False, "crc_flit": 99}}}, "nvlink_errors"),  # link down: not read
])
def test_readings_that_are_not_faults_stay_good(fake, override, check):
    health = probe_gpus(fake(gpu1=override), limits=FAST)
    assert health.state is State.GOOD, health.bad
    assert checks(health)[f"gpu1.{check}"].state is State.GOOD


def test_limits_are_configurable(fake):
    health = probe_gpus(fake(gpu0={"temperature": 85, "nvlink_errors": {"0": {"replay": 1}}}),
                        limits=Limits(temperature_max_c=80, nvlink_errors_max=0, xid_wait_ms=1))
    assert [c.name for c in health.bad] == ["gpu0.nvlink_errors", "gpu0.temperature"]


def test_readings_are_in_the_value(fake):
    health = probe_gpus(fake(gpu0={"recovery_action": 2, "throttle_reasons": 0x48,
                                   "nvlink_errors": {"0": {"replay": 2}, "1": {"active": False}}}), limits=FAST)
    by_name = checks(health)
    assert by_name["gpu0.recovery_action"].value == {"pci": PCI[0], "action": 2, "label": "NODE_REBOOT"}
    assert by_name["gpu0.throttle"].value["reasons"] == ["HW_SLOWDOWN", "HW_THERMAL_SLOWDOWN"]
    assert by_name["gpu0.nvlink_errors"].value == {
        "pci": PCI[0], "links": 2, "active": 1,
        "errors": {"0": {"replay": 2, "recovery": 0, "crc_flit": 0, "crc_data": 0}}}


# -- features a GPU lacks, and errors

def test_features_the_gpu_lacks_are_omitted_and_listed(fake):
    lacking = {"not_supported": ["nvmlDeviceGetRemappedRows", "nvmlDeviceGetTotalEccErrors",
                                 "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION"], "nvlink_errors": {}}
    health = probe_gpus(fake(gpu0=lacking, not_supported=["nvmlDeviceGetRetiredPagesPendingStatus"]), limits=FAST)
    by_name = checks(health)
    omitted = ["recovery_action", "ecc_uncorrected_volatile", "ecc_uncorrected_aggregate",
               "remapped_rows_failure", "remapped_rows_pending", "retired_pages_pending", "nvlink_errors"]
    assert all(f"gpu0.{name}" not in by_name for name in omitted)
    assert by_name["gpu0.device"].value["not_applicable"] == omitted
    assert "gpu1.remapped_rows_failure" in by_name and "gpu1.retired_pages_pending" not in by_name
    assert health.state is State.GOOD  # a PCIe card without row remapping is not unknown: it has none


@pytest.mark.parametrize("override, check", [
    ({"not_supported": ["nvmlDeviceGetTemperature"]}, "temperature"),
    ({"not_supported": ["nvmlDeviceGetCurrentClocksEventReasons"]}, "throttle"),
    ({"not_supported": ["nvmlDeviceGetNvLinkErrorCounter"]}, "nvlink_errors"),  # links up, counters unreadable
    ({"not_supported": ["nvmlDeviceGetUUID"]}, "device"),
])
def test_not_supported_where_the_gpu_should_answer_is_unknown(fake, override, check):
    health = probe_gpus(fake(gpu0=override), limits=FAST)
    found = checks(health)[f"gpu0.{check}"]
    assert found.state is State.UNKNOWN and "not supported" in found.detail.lower()
    assert health.state is State.UNKNOWN and not health.bad


def test_an_nvml_error_is_unknown_with_its_text(fake):
    health = probe_gpus(fake(gpu1={"errors": {"nvmlDeviceGetTemperature": "NO_PERMISSION"}}), limits=FAST)
    found = checks(health)["gpu1.temperature"]
    assert found.state is State.UNKNOWN and "Insufficient Permissions" in found.detail
    assert health.state is State.UNKNOWN


def test_older_driver_falls_back_to_the_throttle_reasons_call(fake):
    gpu = {"throttle_reasons": 0x8, "errors": {"nvmlDeviceGetCurrentClocksEventReasons": "FUNCTION_NOT_FOUND"}}
    assert checks(probe_gpus(fake(gpu0=gpu), limits=FAST))["gpu0.throttle"].state is State.BAD


def test_a_lost_gpu_is_bad_and_the_others_are_still_probed(fake):
    health = probe_gpus(fake(gpu0={"errors": {"nvmlDeviceGetHandleByIndex": "GPU_IS_LOST"}}), limits=FAST)
    by_name = checks(health)
    assert by_name["gpu0.device"].state is State.BAD and "GPU is lost" in by_name["gpu0.device"].detail
    assert [n for n in by_name if n.startswith("gpu0.")] == ["gpu0.device"]
    assert all(by_name[f"gpu1.{name}"].state is State.GOOD for name in GPU_CHECKS)


# -- hangs and no NVML at all

def test_a_hung_call_is_unknown_for_it_and_every_check_after_it(fake):
    backend = fake(hang={"call": "nvmlDeviceGetTotalEccErrors", "seconds": 30})
    start = time.monotonic()
    health = probe_gpus(backend, timeout_s=0.5, limits=FAST)
    assert time.monotonic() - start < 5
    by_name = checks(health)
    assert by_name["gpu0.device"].state is State.GOOD and by_name["gpu0.recovery_action"].state is State.GOOD
    hung = by_name["gpu0.ecc_uncorrected_volatile"]
    assert hung.state is State.UNKNOWN
    assert hung.detail.endswith("NVML call nvmlDeviceGetTotalEccErrors timed out after 0.5s")
    rest = [f"gpu0.{n}" for n in GPU_CHECKS[3:]] + [f"gpu1.{n}" for n in GPU_CHECKS]
    assert all(by_name[n].state is State.UNKNOWN and "timed out" in by_name[n].detail for n in rest)
    assert health.state is State.UNKNOWN and not health.bad
    again = probe_gpus(backend, timeout_s=0.5, limits=FAST)  # the call is still hung: do not pile up threads
    assert [(c.name, c.state) for c in again.checks] == [("nvml", State.UNKNOWN)]
    assert "still hung" in again.checks[0].detail
    assert probe_gpus(fake(name="other.json"), limits=FAST).state is State.GOOD  # another backend is fine


def test_a_hung_init_is_a_single_unknown(fake):
    start = time.monotonic()
    health = probe_gpus(fake(hang={"call": "nvmlInit", "seconds": 30}), timeout_s=0.3)
    assert time.monotonic() - start < 5
    assert [(c.name, c.state) for c in health.checks] == [("nvml", State.UNKNOWN)]
    assert "nvmlInit timed out" in health.checks[0].detail


def test_the_probe_budget_bounds_the_whole_probe(fake):
    health = probe_gpus(fake(), budget_s=0)
    assert [(c.name, c.state) for c in health.checks] == [("nvml", State.UNKNOWN)]
    assert "budget" in health.checks[0].detail


@pytest.mark.parametrize("top, words", [
    ({"init_error": "DRIVER_NOT_LOADED"}, "Driver Not Loaded"),
    ({"init_error": "LIBRARY_NOT_FOUND"}, "NVML Shared Library Not Found"),
    ({"gpus": []}, "no GPU"),
])
def test_no_driver_or_no_gpu_is_a_single_unknown(fake, top, words):
    health = probe_gpus(fake(**top), limits=FAST)
    assert [(c.name, c.state) for c in health.checks] == [("nvml", State.UNKNOWN)]
    assert words in health.checks[0].detail and health.state is State.UNKNOWN


def test_an_unreadable_fake_state_is_unknown(tmp_path):
    health = probe_gpus(FakeNVML(tmp_path / "missing.json"))
    assert health.state is State.UNKNOWN and "missing.json" in health.checks[0].detail


# -- the fake behaves like pynvml

def test_the_fake_raises_pynvml_classes_and_rereads_its_file(tmp_path):
    path = tmp_path / "state.yaml"
    path.write_text("init_error: DRIVER_NOT_LOADED\ngpus: [{}]\n")
    nv = FakeNVML(path)
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        nv.nvmlInit()
    path.write_text("gpus:\n  - pci: '0000:3b:00.0'\n    not_supported: [nvmlDeviceGetRemappedRows]\n")
    nv.nvmlInit()
    handle = nv.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetRemappedRows(handle)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetHandleByIndex(1)
    assert nv.nvmlDeviceGetPciInfo(handle).busId == "00000000:3B:00.0"
    assert nv.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU and nv.NVMLError is pynvml.NVMLError
    with pytest.raises(AttributeError):
        nv.nvmlDeviceGetPowerUsage  # a pynvml function the fake does not implement is missing
    nv.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()


def test_ajr_nvml_fake_selects_the_fake(fake, monkeypatch):
    backend = fake(gpu0={"uuid": "GPU-from-env"})
    assert isinstance(backend_from_env({"AJR_NVML_FAKE": str(backend.path)}), FakeNVML)
    assert isinstance(backend_from_env({}), RealNVML)
    monkeypatch.setenv("AJR_NVML_FAKE", str(backend.path))
    health = probe_gpus(limits=FAST)
    assert checks(health)["gpu0.device"].value["uuid"] == "GPU-from-env"


# -- the boundary, and the real pynvml path on this machine

def test_only_the_nvml_modules_import_pynvml():
    allowed = {PACKAGE / "health" / "nvml.py", PACKAGE / "health" / "fake_nvml.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        with warnings.catch_warnings():  # another module's odd escape is not this test's business
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n == "pynvml" or n.startswith("pynvml.") for n in names) and path not in allowed:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
    nvml_top = ast.parse((PACKAGE / "health" / "nvml.py").read_text()).body
    assert not any(isinstance(n, ast.Import) and any(a.name == "pynvml" for a in n.names) for n in nvml_top)


def test_importing_the_probe_does_not_import_pynvml():
    code = "import sys, ajr_supervisor.health.nvml; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(real_nvml_library_present(), reason="an NVIDIA driver is installed here")
def test_real_pynvml_without_a_gpu_is_unknown_never_good_or_bad():
    health = probe_gpus(RealNVML(), timeout_s=5.0)
    assert health.state is State.UNKNOWN
    assert [(c.name, c.state) for c in health.checks] == [("nvml", State.UNKNOWN)]
    assert "NVML unavailable" in health.checks[0].detail and "Library Not Found" in health.checks[0].detail


@pytest.mark.skipif(not real_nvml_library_present(), reason="no NVIDIA driver here")
def test_real_pynvml_with_a_driver_is_well_formed():
    health = probe_gpus(RealNVML(), timeout_s=5.0)
    for check in health.checks:
        assert isinstance(check.state, State) and check.detail
        if check.name.startswith("gpu") and check.state is not State.UNKNOWN:
            assert check.value["pci"] == normalize_pci(check.value["pci"])


# -- the three-state types

def test_node_state_bad_wins_then_unknown_and_nothing_checked_is_unknown():
    good, bad, unknown = (Check("a", State.GOOD), Check("b", State.BAD, 1, "why"), Check("c", State.UNKNOWN))
    assert NodeHealth("n", (good,), 0).state is State.GOOD
    assert NodeHealth("n", (good, unknown), 0).state is State.UNKNOWN
    assert NodeHealth("n", (unknown, bad, good), 0).state is State.BAD
    assert NodeHealth("n", (unknown, bad, good), 0).bad == (bad,)
    assert NodeHealth("n", (), 0).state is State.UNKNOWN


def test_node_health_round_trips_through_json(fake):
    health = probe_gpus(fake(gpu1={"ecc_uncorrected_volatile": 1}), limits=FAST)
    data = json.loads(json.dumps(health.to_dict()))
    assert data["state"] == "BAD" and data["checks"][0]["state"] == "GOOD"
    assert NodeHealth.from_dict(data) == health
    with pytest.raises(ValueError):
        NodeHealth.from_dict({"node": "n", "at": 0, "checks": [{"name": "x", "state": "FINE"}]})


@pytest.mark.parametrize("given, expected", [
    ("00000000:3B:00.0", "0000:3b:00.0"), ("PCI:0000:3b:00", "0000:3b:00.0"), ("0000:3B:00.1", "0000:3b:00.1"),
    ("3b:00.0", "0000:3b:00.0"),
])
def test_normalize_pci(given, expected):
    assert normalize_pci(given) == expected


def test_an_unexpected_answer_is_unknown_not_a_crash(fake):
    class Odd(FakeNVML):
        def nvmlDeviceGetTemperature(self, handle, sensor):
            return "hot"

    backend = fake()
    health = probe_gpus(Odd(backend.path), limits=FAST)
    found = checks(health)["gpu0.temperature"]
    assert found.state is State.UNKNOWN and "unexpected answer" in found.detail
