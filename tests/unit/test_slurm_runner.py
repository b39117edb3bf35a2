"""The Slurm door: argv, environment, timeouts, typed errors, dry-run, with a fake runner."""

import logging
import subprocess

import pytest

from ajr_supervisor.slurm import Completed, Slurm, SlurmError, SlurmNotInstalled, SlurmTimeout


class FakeRunner:
    """Records every call and answers from a table keyed by argv prefix."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers or {}

    def __call__(self, argv, env, timeout_s):
        self.calls.append((list(argv), dict(env), timeout_s))
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                if isinstance(answer, BaseException):
                    raise answer
                return answer
        return Completed(0, "", "")


def test_every_call_carries_slurm_conf_and_a_timeout():
    runner = FakeRunner()
    slurm = Slurm("/lab/slurm.conf", timeout_s=7, runner=runner, env={"HOME": "/root"})
    slurm.requeuehold(42)
    argv, env, timeout = runner.calls[0]
    assert argv == ["scontrol", "requeuehold", "42"]
    assert env["SLURM_CONF"] == "/lab/slurm.conf"
    assert "PATH" in env
    assert timeout == 7


def test_non_zero_exit_is_a_typed_error_with_command_code_and_stderr():
    runner = FakeRunner({("scontrol", "update"): Completed(
        1, "", "Job is no longer pending execution for job 7\n")})
    slurm = Slurm("/c", runner=runner)
    with pytest.raises(SlurmError) as info:
        slurm.set_excluded_nodes(7, ["node2", "node1", "node2"])
    err = info.value
    assert err.argv == ["scontrol", "update", "JobId=7", "ExcNodeList=node1,node2"]
    assert err.returncode == 1
    assert "no longer pending" in err.stderr
    assert "exit code 1" in err.one_line() and "no longer pending" in err.one_line()
    assert "\n" not in err.one_line()


def test_timeout_is_a_typed_error():
    runner = FakeRunner({("squeue",): subprocess.TimeoutExpired(["squeue"], 3)})
    with pytest.raises(SlurmTimeout, match="timed out after 3 s"):
        Slurm("/c", timeout_s=3, runner=runner).squeue()


def test_missing_binary_says_how_to_install():
    runner = FakeRunner({("sinfo",): FileNotFoundError("sinfo")})
    with pytest.raises(SlurmNotInstalled) as info:
        Slurm("/c", runner=runner).sinfo()
    assert "ajr lab install" in info.value.one_line()


def test_failed_query_is_never_an_empty_answer():
    runner = FakeRunner({("squeue",): Completed(1, "", "slurm_load_jobs error: Unable to contact slurm controller")})
    with pytest.raises(SlurmError, match="Unable to contact"):
        Slurm("/c", runner=runner).squeue()


def test_dry_run_logs_and_changes_nothing(caplog):
    runner = FakeRunner()
    slurm = Slurm("/c", dry_run=True, runner=runner)
    with caplog.at_level(logging.INFO, logger="ajr_supervisor.slurm"):
        slurm.requeuehold(5)
        slurm.set_excluded_nodes(5, ["node3"])
        slurm.release(5)
        slurm.drain("node3", "ajr: bad GPU")
    assert runner.calls == []
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["would run: scontrol requeuehold 5",
                     "would run: scontrol update JobId=5 ExcNodeList=node3",
                     "would run: scontrol release 5",
                     "would run: scontrol update NodeName=node3 State=DRAIN 'Reason=ajr: bad GPU'"]


def test_dry_run_still_queries():
    runner = FakeRunner({("squeue",): Completed(0, "1|a|root|RUNNING|None|lab|node1|(null)\n", "")})
    rows = Slurm("/c", dry_run=True, runner=runner).squeue()
    assert rows[0].job_id == "1"


def test_sbatch_returns_the_job_id_without_cluster_suffix():
    runner = FakeRunner({("sbatch",): Completed(0, "123;lab\n", "")})
    assert Slurm("/c", runner=runner).sbatch(["--wrap", "true"]) == "123"
    assert runner.calls[0][0] == ["sbatch", "--parsable", "--wrap", "true"]


def test_show_job_with_no_record_is_an_error():
    with pytest.raises(SlurmError, match="no record for job 9"):
        Slurm("/c", runner=FakeRunner()).show_job(9)


def test_job_comment_reads_squeue_k(slurm_data):
    runner = FakeRunner({("squeue",): Completed(0, '{"APS": {}}\n', "")})
    assert Slurm("/c", runner=runner).job_comment(3) == '{"APS": {}}'
    runner = FakeRunner({("squeue",): Completed(0, "(null)\n", "")})
    assert Slurm("/c", runner=runner).job_comment(3) == ""


def test_ping():
    up = FakeRunner({("scontrol", "ping"): Completed(0, "Slurmctld(primary) at ctl is UP\n", "")})
    down = FakeRunner({("scontrol", "ping"): Completed(1, "Slurmctld(primary) at ctl is DOWN\n", "")})
    assert Slurm("/c", runner=up).ping() is True
    assert Slurm("/c", runner=down).ping() is False


def test_update_job_needs_fields():
    with pytest.raises(ValueError):
        Slurm("/c", runner=FakeRunner()).update_job(1)
