"""health/xid.py: Xid lines from real kernel logs, the catalog classes, reading the log safely."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ajr_supervisor.health import Check, State
from ajr_supervisor.health import xid
from ajr_supervisor.health.xid import (CommandResult, KernelLogError, classify, classify_event,
                                       kernel_xid_checks, normalize_pci, parse_log_time,
                                       parse_xid_line, read_kernel_log, xid_checks, xid_table)
from ajr_supervisor.types import Action, Component

KERNEL = Path(__file__).resolve().parents[1] / "data" / "kernel"
EXCLUDE = Action.EXCLUDE_NODE_AND_REQUEUE


def lines(name: str) -> list[str]:
    return [l for l in (KERNEL / name).read_text().splitlines() if not l.startswith("# ")]


def events(name: str) -> list[xid.XidEvent]:
    return [e for e in map(parse_xid_line, lines(name)) if e is not None]


class FakeRunner:
    """Answers commands from a table {argv tuple: CommandResult | exception}; records the calls."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def __call__(self, argv, timeout_s):
        self.calls.append((tuple(argv), timeout_s))
        answer = self.answers[tuple(argv)]
        if isinstance(answer, BaseException):
            raise answer
        return answer


# -- real excerpts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("xid_h100_dmesg_ctime.log", [(13, "0000:cb:00")] * 3 + [(109, "0000:cb:00"), (31, "0000:cb:00"),
                                                            (109, "0000:cb:00")]),
    ("xid79_sxid_nvswitch.log", [(79, "0000:91:00")] + [(20034, p) for p in (
        "0000:06:00", "0000:05:00", "0000:07:00", "0000:05:00", "0000:07:00", "0000:05:00",
        "0000:07:00", "0000:05:00")]),
    ("xid48_64_syslog.log", [(48, "0000:07:00"), (64, "0000:07:00")]),
    ("xid119_gsp_dmesg_T.log", [(119, "0000:61:00")] * 4),
    ("xid43_31_94_dmesg_T.log", [(43, "0000:00:05"), (43, "0000:00:05"), (31, "0000:00:07"),
                                 (94, "0000:00:08")]),
    ("xid45_journal_kernel.log", [(45, p) for p in ("0000:dc:00", "0000:ed:00", "0000:ba:00",
                                                    "0000:97:00", "0000:dc:00", "0000:ba:00",
                                                    "0000:ed:00")]),
    ("xid_legacy_no_pid.log", [(31, "0000:01:00")] + [(13, "0000:01:00")] * 4 + [(32, "0000:01:00")]),
    ("xid31_process_name.log", [(31, "0000:01:00")]),
    ("xid63_row_remap.log", [(63, "0000:10:1c")]),
    ("xid_nvlink5_kmsg.log", [(149, "0019:01:00"), (149, "0000:00:00"), (145, "0018:01:00"),
                              (144, "0000:01:00")]),
])
def test_real_excerpts_parse(name, expected):
    assert [(e.xid, e.pci) for e in events(name)] == expected


def test_real_excerpts_fields():
    h100 = events("xid_h100_dmesg_ctime.log")
    assert (h100[0].pid, h100[0].process) == (None, None)          # pid='<unknown>', name=<unknown>
    assert h100[0].message == ("Graphics SM Warp Exception on (GPC 7, TPC 7, SM 0): "
                               "Illegal Instruction Parameter")
    assert (h100[3].pid, h100[3].process) == (1797828, "pt_main_thread")
    assert h100[3].message == "Ch 00000008, errorString CTX SWITCH TIMEOUT, Info 0x58005"
    assert h100[3].raw.startswith("[Fri Aug 30 11:43:14 2024] NVRM: Xid")
    legacy = events("xid_legacy_no_pid.log")
    assert (legacy[0].pid, legacy[0].process) == (None, None)
    assert legacy[0].message.startswith("Ch 0000003a, intr 10000000. MMU Fault")
    remap = events("xid63_row_remap.log")[0]
    assert (remap.pid, remap.process) == (1896, None)
    assert remap.message.startswith("Row Remapper: New row marked for remapping")
    assert events("xid31_process_name.log")[0].process == "UnrealEditor"
    sxid = events("xid79_sxid_nvswitch.log")[1]
    assert (sxid.kind, sxid.message) == ("SXid", "Fatal, Link 48 LTSSM Fault Up")


def test_lines_that_are_not_xid_events():
    for line in lines("xid79_sxid_nvswitch.log")[:2] + lines("xid48_64_syslog.log")[:3]:
        assert parse_xid_line(line) is None                       # "NVRM: GPU at ...", RmInitAdapter
    assert parse_xid_line("kernel: NVRM: Xid (PCI:...): 137, RLW_RXPIPE interrupt hit") is None
    assert parse_xid_line("") is None


# -- the catalog -------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", [13, 31, 43, 45])
def test_application_xids_requeue_without_exclusion(number):
    cls = classify(number)
    assert (cls.component, cls.action, cls.exclude) == (Component.APPLICATION, Action.REQUEUE, False)


@pytest.mark.parametrize("number", [46, 48, 62, 64, 74, 79, 95, 109, 110, 119, 120, 123, 136, 140,
                                    143, 155, 156, 158])
def test_hardware_xids_exclude_the_node(number):
    cls = classify(number)
    assert (cls.component, cls.action) == (Component.GPU, EXCLUDE)


@pytest.mark.parametrize("number, action", [
    (8, Action.REQUEUE), (32, Action.REQUEUE), (38, Action.NONE), (56, Action.REQUEUE),
    (57, Action.REQUEUE), (61, Action.REQUEUE), (63, Action.NONE), (69, Action.REQUEUE),
    (92, Action.NONE), (94, Action.REQUEUE), (122, Action.REQUEUE), (137, Action.NONE),
    (144, Action.REQUEUE), (145, Action.REQUEUE), (146, Action.REQUEUE), (147, Action.NONE),
    (148, Action.NONE), (149, Action.REQUEUE), (150, Action.REQUEUE), (154, Action.REQUEUE),
])
def test_catalog_actions(number, action):
    assert classify(number).action is action


def test_catalog_buckets_and_descriptions():
    assert classify(79).bucket == "RESTART_BM"
    assert classify(79).description == "GPU has fallen off the bus"
    assert classify(94).bucket == "RESTART_APP" and classify(95).bucket == "RESET_GPU"
    assert classify(63).bucket == "IGNORE" and classify(48).bucket == "WORKFLOW_XID_48"
    assert classify(119).mnemonic == "GSP_RPC_TIMEOUT"


def test_unknown_xid_is_unknown_and_never_excludes():
    cls = classify(999)
    assert (cls.component, cls.action, cls.exclude) == (Component.UNKNOWN, Action.REQUEUE, False)


def test_table_rows_are_consistent():
    table = xid_table()
    assert len(table) >= 60
    for number, cls in table.items():
        assert cls.xid == number and cls.description and cls.bucket
        if cls.bucket in ("RESET_GPU", "RESTART_BM", "RESTART_VM", "WORKFLOW_XID_48"):
            assert cls.exclude, number
        if cls.component is Component.APPLICATION:
            assert not cls.exclude, number


def test_xid_154_follows_the_recovery_action_it_names():
    base = "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to "
    assert classify_event(parse_xid_line(base + "0x2 (Node Reboot Required)")).action is EXCLUDE
    assert classify_event(parse_xid_line(base + "0x1 (GPU Reset Required)")).action is EXCLUDE
    assert classify_event(parse_xid_line(base + "0x3 (Drain P2P)")).action is Action.REQUEUE
    assert classify_event(parse_xid_line(base + "0x0 (None)")).action is Action.NONE


def test_nvlink5_fatal_excludes_nonfatal_requeues():
    fatal, fatal2, nonfatal, saw = events("xid_nvlink5_kmsg.log")
    assert classify_event(fatal).action is EXCLUDE and classify_event(fatal2).action is EXCLUDE
    assert classify_event(nonfatal).action is Action.REQUEUE
    assert classify_event(saw).action is Action.REQUEUE


def test_sxid_fatal_excludes_other_sxid_lines_do_not():
    sx = [e for e in events("xid79_sxid_nvswitch.log") if e.kind == "SXid"]
    assert classify_event(sx[0]).action is EXCLUDE and classify_event(sx[0]).component is Component.NETWORK
    assert classify_event(sx[2]).action is Action.NONE             # "Severity 1 Engine instance ..."


# -- PCI and time ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("PCI:0000:3b:00", "0000:3b:00"), ("0000:3B:00.0", "0000:3b:00"), ("00000000:3B:00.0", "0000:3b:00"),
    ("3b:00.0", "0000:3b:00"), ("PCI:0019:01:00", "0019:01:00"), ("not a bus id", ""), ("", ""),
])
def test_normalize_pci(text, expected):
    assert normalize_pci(text) == expected


def test_pci_forms_in_lines_agree():
    a = parse_xid_line("NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.")
    b = parse_xid_line("NVRM: Xid (0000:3B:00.0): 79, GPU has fallen off the bus.")
    assert a.pci == b.pci == "0000:3b:00"
    assert xid_checks([a])[0].value == {"pci": "0000:3b:00.0", "xids": [79]}   # NVML's form for joins


def test_times_from_dmesg_and_journald_prefixes():
    utc = datetime(2024, 4, 29, 12, 55, 41, tzinfo=timezone.utc).timestamp()
    assert parse_log_time("2024-04-29T14:55:41,679700+02:00 ") == pytest.approx(utc + 0.6797)
    assert parse_log_time("2024-04-29T14:55:41+0200 host kernel: ") == utc            # short-iso
    assert parse_log_time("2024-04-29T14:55:41.123456+02:00 host kernel: ") == pytest.approx(utc + 0.123456)
    assert parse_log_time("2024-04-29T12:55:41Z host kernel: ") == utc
    local = datetime(2023, 3, 3, 4, 27, 8).timestamp()                               # dmesg -T is local
    assert parse_log_time("[Fri Mar  3 04:27:08 2023] ") == local
    assert parse_log_time("[  219.470994] ") is None                                 # uptime, no boot time
    assert parse_log_time("[  219.470994] ", boot_time=1000.0) == pytest.approx(1219.470994)
    assert parse_log_time("Dec  2 11:38:47 worker4 kernel: [  219.470994] ") is None  # syslog: no year
    assert parse_log_time("kernel: ") is None


def test_event_times_from_real_lines():
    assert events("xid119_gsp_dmesg_T.log")[0].time == datetime(2023, 3, 3, 4, 27, 8).timestamp()
    assert events("xid48_64_syslog.log")[0].time is None
    mono = parse_xid_line(lines("xid79_sxid_nvswitch.log")[2], boot_time=1_700_000_000.0)
    assert mono.time == pytest.approx(1_700_000_000.0 + 6781741.548779)


# -- reading the log ---------------------------------------------------------------------------------

def test_read_kernel_log_from_a_file():
    found = read_kernel_log(str(KERNEL / "xid_h100_dmesg_ctime.log"))
    assert [e.xid for e in found] == [13, 13, 13, 109, 31, 109]


def test_read_kernel_log_from_a_file_since():
    found = read_kernel_log(str(KERNEL / "xid_h100_dmesg_ctime.log"))
    since = found[4].time                                          # Sat Aug 31 07:06:03 (local)
    assert [e.xid for e in read_kernel_log(str(KERNEL / "xid_h100_dmesg_ctime.log"), since)] == [31, 109]
    untimed = read_kernel_log(str(KERNEL / "xid45_journal_kernel.log"), since=2e9)
    assert len(untimed) == 7                                       # no time: kept, not dropped


def test_read_kernel_log_missing_file_is_an_error():
    with pytest.raises(KernelLogError, match="cannot read"):
        read_kernel_log("/nonexistent/kern.log")


def test_journalctl_with_a_fake_command():
    # Real Xid lines (gpu-operator#1146, open-gpu-kernel-modules#446) behind the prefix journalctl
    # -o short-iso prints; no public post had both.
    out = ("2024-12-02T11:38:47+0000 worker4 kernel: " + lines("xid48_64_syslog.log")[3].split("] ", 1)[1]
           + "\n2024-12-02T11:38:48+0000 worker4 kernel: "
           + lines("xid119_gsp_dmesg_T.log")[0].split("] ", 1)[1] + "\n")
    argv = ("journalctl", "-k", "-o", "short-iso", "--no-pager", "--since=@1733139000")
    runner = FakeRunner({argv: CommandResult(0, out, "")})
    found = read_kernel_log("journalctl", since=1733139000.5, runner=runner)
    assert runner.calls == [(argv, 5.0)]
    assert [(e.xid, e.pci, e.process) for e in found] == [(48, "0000:07:00", None),
                                                          (119, "0000:61:00", "nvidia-smi")]
    assert found[0].time == datetime(2024, 12, 2, 11, 38, 47, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("answer, match", [
    (FileNotFoundError("journalctl"), "not found"),
    (subprocess.TimeoutExpired(["journalctl"], 5), "timed out"),
    (PermissionError(13, "Permission denied"), "could not run"),
    (CommandResult(1, "", "Failed to get journal access: Permission denied"), "exit 1"),
    (CommandResult(0, "", "Hint: You are currently not seeing messages from other users and the "
                          "system.\n"), "not seeing messages"),
])
def test_journalctl_failures_are_typed_errors_not_empty(answer, match):
    runner = FakeRunner({xid.JOURNALCTL: answer})
    with pytest.raises(KernelLogError, match=match):
        read_kernel_log("journalctl", runner=runner)
    checks = kernel_xid_checks("journalctl", runner=FakeRunner({xid.JOURNALCTL: answer}))
    assert [(c.name, c.state) for c in checks] == [("xid", State.UNKNOWN)]


def test_dmesg_iso_then_plain_fallback(monkeypatch):
    iso = "\n".join(lines("oom_dmesg_iso.log")[:1]) + "\n2024-04-29T14:56:00,000000+02:00 " + \
        lines("xid63_row_remap.log")[0] + "\n"
    runner = FakeRunner({xid.DMESG_ISO: CommandResult(0, iso, "")})
    assert [e.xid for e in read_kernel_log("dmesg", runner=runner)] == [63]
    # busybox dmesg: no --time-format; plain dmesg stamps are dated from /proc/stat's btime
    monkeypatch.setattr(xid, "boot_time_from_proc", lambda: 1_700_000_000.0)
    plain = "\n".join(lines("xid79_sxid_nvswitch.log")) + "\n"
    runner = FakeRunner({xid.DMESG_ISO: CommandResult(1, "", "dmesg: unrecognized option '--time-format'"),
                         ("dmesg",): CommandResult(0, plain, "")})
    found = read_kernel_log("dmesg", since=1_700_000_000.0 + 6781750, runner=runner)
    assert [c[0] for c in runner.calls] == [xid.DMESG_ISO, ("dmesg",)]
    assert {e.kind for e in found} == {"SXid"}                     # the Xid 79 is before `since`


def test_dmesg_not_permitted_is_an_error_without_fallback():
    refused = CommandResult(1, "", "dmesg: read kernel buffer failed: Operation not permitted")
    runner = FakeRunner({xid.DMESG_ISO: refused})
    with pytest.raises(KernelLogError, match="not permitted"):
        read_kernel_log("dmesg", runner=runner)
    assert len(runner.calls) == 1


def test_default_runner_runs_argv_without_a_shell():
    result = xid.subprocess_runner([sys.executable, "-c", "print('a; b')"], 5.0)
    assert result == CommandResult(0, "a; b\n", "")


def test_reading_this_machines_kernel_log_never_crashes():
    for source in ("dmesg", "journalctl"):
        try:
            found = read_kernel_log(source)
        except KernelLogError as exc:
            assert exc.one_line()
        else:
            assert all(isinstance(e, xid.XidEvent) for e in found)


# -- checks ------------------------------------------------------------------------------------------

def test_xid_checks_one_per_gpu():
    checks = {c.name: c for c in xid_checks(events("xid43_31_94_dmesg_T.log")
                                            + events("xid48_64_syslog.log"))}
    assert sorted(checks) == ["xid:0000:00:05", "xid:0000:00:07", "xid:0000:00:08", "xid:0000:07:00"]
    assert checks["xid:0000:07:00"].state is State.BAD
    assert checks["xid:0000:07:00"].value == {"pci": "0000:07:00.0", "xids": [48, 64]}
    assert "Xid 48 (Double Bit ECC Error" in checks["xid:0000:07:00"].detail
    assert checks["xid:0000:00:05"].state is State.GOOD and "Xid 43 x2" in checks["xid:0000:00:05"].detail
    assert checks["xid:0000:00:08"].state is State.GOOD             # Xid 94: contained


def test_xid_checks_gpu_fallen_off_and_nvswitch():
    checks = {c.name: c.state for c in xid_checks(events("xid79_sxid_nvswitch.log"))}
    assert checks == {"xid:0000:91:00": State.BAD, "sxid:0000:05:00": State.BAD,
                      "sxid:0000:06:00": State.BAD, "sxid:0000:07:00": State.BAD}


def test_xid_checks_informational_only_stays_good():
    checks = xid_checks(events("xid63_row_remap.log"))
    assert [(c.name, c.state) for c in checks] == [("xid:0000:10:1c", State.GOOD)]
    assert "IGNORE -> NONE" in checks[0].detail


def test_xid_checks_empty_log_is_one_good_check():
    assert xid_checks([]) == [Check("xid", State.GOOD, {"xids": []}, "no NVIDIA Xid in the kernel log")]
    assert kernel_xid_checks(str(KERNEL / "oom_dmesg_iso.log"))[0].state is State.GOOD
    assert kernel_xid_checks("/nonexistent/kern.log")[0].state is State.UNKNOWN


def test_the_xid_rule_and_the_nvml_probe_use_the_tables_exclude_list():
    """One source for which Xids take a node out of the job: data/xid.yaml."""
    import re

    from ajr_supervisor.health import nvml
    from ajr_supervisor.health.xid import exclude_xids
    from ajr_supervisor.rules import RuleSet

    [pattern] = RuleSet.load().get("gpu_xid_fatal").patterns
    listed = {int(x) for x in re.search(r"\(\?:([\d|]+)\)", pattern).group(1).split("|")}
    assert listed == set(exclude_xids())
    assert {48, 79, 95, 119} <= exclude_xids() and not {13, 31, 43, 63, 92} & exclude_xids()
    assert nvml.exclude_xids is exclude_xids
