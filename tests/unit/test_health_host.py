"""health/host.py: psutil checks (monkeypatched), OOM kills from real kernel logs, this machine."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ajr_supervisor.health import Check, State
from ajr_supervisor.health import host
from ajr_supervisor.health.host import GIB, HostThresholds, host_checks, oom_check, parse_oom_lines
from ajr_supervisor.health.xid import JOURNALCTL, CommandResult

KERNEL = Path(__file__).resolve().parents[1] / "data" / "kernel"


def lines(name: str) -> list[str]:
    return [l for l in (KERNEL / name).read_text().splitlines() if not l.startswith("# ")]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def healthy(monkeypatch, tmp_path):
    """A psutil that reports a healthy 64 GiB node; tests then break one thing at a time."""
    ps = host.psutil
    monkeypatch.setattr(ps, "virtual_memory", lambda: SimpleNamespace(total=64 * GIB, available=40 * GIB))
    monkeypatch.setattr(ps, "swap_memory", lambda: SimpleNamespace(total=0, used=0))
    sizes = {host.SHM: (32 * GIB, 31 * GIB)}
    monkeypatch.setattr(ps, "disk_usage",
                        lambda p: SimpleNamespace(total=sizes.get(p, (100 * GIB, 50 * GIB))[0],
                                                  free=sizes.get(p, (100 * GIB, 50 * GIB))[1]))
    monkeypatch.setattr(ps, "cpu_count", lambda: 16)
    monkeypatch.setattr(host.os, "getloadavg", lambda: (4.0, 3.0, 2.0))
    procs = [SimpleNamespace(info={"status": s}) for s in
             (ps.STATUS_RUNNING, ps.STATUS_ZOMBIE, ps.STATUS_DISK_SLEEP, ps.STATUS_DISK_SLEEP)]
    monkeypatch.setattr(ps, "process_iter", lambda attrs, ad_value=None: iter(procs))
    return sizes


# -- psutil checks -----------------------------------------------------------------------------------

def test_healthy_node_is_all_good(healthy, tmp_path):
    checks = host_checks([str(tmp_path)])
    assert [c.name for c in checks] == ["memory", "swap", "shm", f"disk:{tmp_path}", "load", "processes"]
    assert {c.state for c in checks} == {State.GOOD}
    got = by_name(checks)
    assert got["load"].value == {"load1": 4.0, "cpus": 16, "per_cpu": 0.25}
    assert got["processes"].value == {"zombie": 1, "disk_sleep": 2}
    assert got["swap"].detail == "no swap configured"


def test_low_memory_is_bad(healthy, monkeypatch):
    monkeypatch.setattr(host.psutil, "virtual_memory",
                        lambda: SimpleNamespace(total=64 * GIB, available=2 * GIB))
    memory = by_name(host_checks())["memory"]
    assert memory.state is State.BAD
    assert memory.value == {"available_bytes": 2 * GIB, "total_bytes": 64 * GIB}
    assert "3.1%" in memory.detail
    assert by_name(host_checks(thresholds=HostThresholds(min_available_memory_pct=3.0)))["memory"].state \
        is State.GOOD


def test_swap_is_bad_only_above_the_threshold(healthy, monkeypatch):
    monkeypatch.setattr(host.psutil, "swap_memory", lambda: SimpleNamespace(total=8 * GIB, used=2 * GIB))
    assert by_name(host_checks())["swap"].state is State.GOOD
    monkeypatch.setattr(host.psutil, "swap_memory", lambda: SimpleNamespace(total=8 * GIB, used=7 * GIB))
    assert by_name(host_checks())["swap"].state is State.BAD


@pytest.mark.parametrize("total, free", [(32 * GIB, 1 * GIB), (64 * 1024 ** 2, 60 * 1024 ** 2)])
def test_full_or_tiny_dev_shm_is_bad(healthy, total, free):
    healthy[host.SHM] = (total, free)          # nearly full; Docker's default 64 MiB
    shm = by_name(host_checks())["shm"]
    assert shm.state is State.BAD
    assert shm.value == {"free_bytes": free, "total_bytes": total}
    assert "Bus error" in shm.detail


def test_disk_space_per_path(healthy, tmp_path):
    full, roomy = tmp_path / "ckpt", tmp_path / "logs"
    full.mkdir(), roomy.mkdir()
    healthy[str(full)] = (10_000 * GIB, 50 * GIB)    # 0.5% free: below 1%
    healthy[str(roomy)] = (100 * GIB, 20 * GIB)
    got = by_name(host_checks([str(full), str(roomy)]))
    assert got[f"disk:{full}"].state is State.BAD and got[f"disk:{roomy}"].state is State.GOOD
    healthy[str(roomy)] = (100 * GIB, GIB // 2)     # 0.5 GiB free: below 1 GiB
    assert by_name(host_checks([str(roomy)]))[f"disk:{roomy}"].state is State.BAD


def test_missing_path_is_unknown(healthy, tmp_path):
    missing = tmp_path / "no-such-dir"
    check = by_name(host_checks([str(missing)]))[f"disk:{missing}"]
    assert (check.state, check.detail) == (State.UNKNOWN, f"{missing} does not exist")


@pytest.mark.parametrize("attr, name", [("virtual_memory", "memory"), ("swap_memory", "swap"),
                                        ("disk_usage", "shm"), ("cpu_count", "load"),
                                        ("process_iter", "processes")])
def test_psutil_raising_is_unknown_never_good(healthy, monkeypatch, attr, name):
    def boom(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(host.psutil, attr, boom)
    check = by_name(host_checks())[name]
    assert check.state is State.UNKNOWN
    assert "PermissionError" in check.detail and "Permission denied" in check.detail


def test_getloadavg_failing_is_unknown(healthy, monkeypatch):
    monkeypatch.setattr(host.os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("no loadavg")))
    assert by_name(host_checks())["load"].state is State.UNKNOWN


def test_without_psutil_everything_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "psutil", None)
    checks = host_checks([str(tmp_path)])
    assert {c.state for c in checks} == {State.UNKNOWN}
    assert {c.detail for c in checks} == {"psutil is not installed"}


# -- OOM kills ---------------------------------------------------------------------------------------

def test_oom_lines_global_kill_counted_once_by_pid():
    kills = parse_oom_lines(lines("oom_dmesg_iso.log"))
    assert [(k.pid, k.process, k.cgroup) for k in kills] == [(1440763, "perl", False)]
    assert kills[0].time == pytest.approx(1714395341.679685)     # the constraint line came first


def test_oom_lines_cgroup_and_global_and_odd_names():
    kills = parse_oom_lines(lines("oom_memcg_syslog.log"))
    assert [(k.pid, k.process, k.cgroup) for k in kills] == [
        (15617, "python3", True), (15674, "python3", True),
        (15784, "python3", False), (15925, "(resolved)", False)]
    assert [(k.pid, k.cgroup) for k in parse_oom_lines(lines("oom_memcg_dmesg.log"))] == [(63214, True)]
    memcg = parse_oom_lines(lines("oom_constraint_memcg.log"))
    assert [(k.pid, k.process, k.cgroup) for k in memcg] == [(461754, "pt_main_thread", True)]
    assert [(k.pid, k.cgroup) for k in parse_oom_lines(lines("oom_global_ctime.log"))] == [(7899, False)]


def test_oom_lines_since():
    assert parse_oom_lines(lines("oom_dmesg_iso.log"), since=1714395342.0) == []
    assert len(parse_oom_lines(lines("oom_dmesg_iso.log"), since=1714395341.0)) == 1


@pytest.mark.parametrize("name, state, value", [
    ("oom_dmesg_iso.log", State.BAD, {"global": 1, "cgroup": 0}),
    ("oom_global_ctime.log", State.BAD, {"global": 1, "cgroup": 0}),
    ("oom_memcg_syslog.log", State.BAD, {"global": 2, "cgroup": 2}),
    ("oom_memcg_dmesg.log", State.GOOD, {"global": 0, "cgroup": 1}),
    ("oom_constraint_memcg.log", State.GOOD, {"global": 0, "cgroup": 1}),
    ("xid_h100_dmesg_ctime.log", State.GOOD, {"global": 0, "cgroup": 0}),
])
def test_oom_check_from_real_logs(name, state, value):
    check = oom_check(str(KERNEL / name))
    assert (check.name, check.state, check.value) == ("oom_kills", state, value)


def test_oom_check_details():
    assert "perl[1440763]" in oom_check(str(KERNEL / "oom_dmesg_iso.log")).detail
    detail = oom_check(str(KERNEL / "oom_constraint_memcg.log")).detail
    assert "memory cgroup limit" in detail and "pt_main_thread[461754] (cgroup limit)" in detail


def test_oom_check_unreadable_log_is_unknown():
    check = oom_check("/nonexistent/kern.log")
    assert check.state is State.UNKNOWN and "cannot read" in check.detail
    runner = lambda argv, timeout_s: CommandResult(1, "", "Failed to get journal access: Permission denied")
    assert oom_check("journalctl", runner=runner).state is State.UNKNOWN


def test_host_checks_with_a_journalctl_kernel_log(healthy):
    out = "\n".join("2024-04-29T14:55:41+0200 node7 kernel: " + l.split(" ", 1)[1]
                    for l in lines("oom_dmesg_iso.log")) + "\n"
    calls = []

    def runner(argv, timeout_s):
        calls.append(tuple(argv))
        return CommandResult(0, out, "")
    checks = host_checks(kernel_log_source="journalctl", since=1714395000.0, runner=runner)
    assert calls == [JOURNALCTL + ("--since=@1714395000",)]
    assert checks[-1].name == "oom_kills" and checks[-1].state is State.BAD


# -- this machine ------------------------------------------------------------------------------------

def test_host_checks_on_this_machine(tmp_path):
    """Real psutil, real /dev/shm, real dmesg. Limits at zero so that only a failure to read (UNKNOWN)
    or a global OOM kill after `since` could make a check anything but GOOD."""
    lenient = HostThresholds(min_available_memory_pct=0, max_swap_used_pct=100, min_shm_free_pct=0,
                             min_shm_free_bytes=0, min_path_free_pct=0, min_path_free_bytes=0)
    checks = host_checks([str(tmp_path), str(tmp_path / "missing")], lenient,
                         kernel_log_source="dmesg", since=time.time())
    assert [c.name for c in checks] == ["memory", "swap", "shm", f"disk:{tmp_path}",
                                        f"disk:{tmp_path / 'missing'}", "load", "processes", "oom_kills"]
    assert all(c.state in (State.GOOD, State.UNKNOWN) for c in checks), checks
    assert by_name(checks)[f"disk:{tmp_path / 'missing'}"].state is State.UNKNOWN
    assert all(c.detail for c in checks)
    assert all(Check.from_dict(c.to_dict()) == c for c in checks)   # JSON-able values
