import sys
import time
from pathlib import Path

import pytest

from ajr_supervisor.lab import host
from ajr_supervisor.lab.cluster import Lab, LabError
from ajr_supervisor.lab.spec import LabSpec


def test_daemon_that_dies_at_start_shows_its_last_log_lines(tmp_path):
    log = tmp_path / "d.out"
    lab = Lab(LabSpec(root=tmp_path))
    pid = host.start_daemon([sys.executable, "-c", "print('line 1'); print('fatal: bad config'); raise SystemExit(1)"],
                            log, {"PATH": "/usr/bin:/bin"})
    with pytest.raises(LabError) as info:
        lab._wait_for(lambda: False, 10, "slurmctld", pid, log)
    assert info.value.one_line() == f"slurmctld died at start: line 1 | fatal: bad config; see {log}"


def test_stop_pids_escalates_to_sigkill(tmp_path):
    pid = host.start_daemon([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(60)"], tmp_path / "o", {"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "o").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    host.stop_pids([pid], timeout_s=0.3)
    assert not host.alive(pid)


def test_port_in_use():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert host.port_in_use(s.getsockname()[1], "127.0.0.1")


def test_tail_of_missing_log():
    assert host.tail(Path("/nonexistent/log")) == "(no log)"
