"""The CLI as a user meets it: help everywhere, one clear line on bad input, no tracebacks."""

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ajr_supervisor.cli import cli


def all_commands(group=cli, path=()):
    for name, cmd in group.commands.items():
        yield path + (name,)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, path + (name,))


def run_ajr(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ajr_supervisor", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0
    for name in ("lab", "prolog", "epilog", "node-epilog"):
        assert name in result.output


@pytest.mark.parametrize("path", list(all_commands()), ids=" ".join)
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"], catch_exceptions=False)
    assert result.exit_code == 0 and "ajr, version" in result.output


def test_unknown_command_is_one_clear_line():
    proc = run_ajr("frobnicate")
    assert proc.returncode == 2
    assert "No such command 'frobnicate'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_option_value():
    proc = run_ajr("lab", "up", "--nodes", "99")
    assert proc.returncode == 2
    assert "Invalid value for '--nodes'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_lab_is_one_line_with_a_fix(tmp_path):
    proc = run_ajr("lab", "status", "--dir", str(tmp_path / "nolab"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"ajr: error: no lab at {tmp_path / 'nolab'}; start one with `ajr lab up`"


def test_corrupt_lab_record_is_one_line(tmp_path):
    (tmp_path / "lab.json").write_text("{not json")
    proc = run_ajr("lab", "down", "--dir", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("ajr: error: ") and proc.stderr.count("\n") == 1
    assert "remove it and run `ajr lab up` again" in proc.stderr


def test_bad_lab_name_is_a_usage_error(tmp_path):
    proc = run_ajr("lab", "up", "--dir", str(tmp_path), "--name", "UPPER")
    assert proc.returncode == 2
    assert proc.stderr.startswith("ajr: error: ") and "Traceback" not in proc.stderr


def test_hooks_succeed_even_without_a_slurm_environment(tmp_path):
    proc = run_ajr("prolog", env={"AJR_HOOK_LOG": str(tmp_path / "h.log")})
    assert proc.returncode == 0
    assert "ajr prolog" in (tmp_path / "h.log").read_text()


def test_broken_pipe_is_quiet():
    proc = subprocess.run(f"{sys.executable} -m ajr_supervisor --help | head -c 1", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr


def test_run_outside_slurm_is_one_line():
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    proc = subprocess.run([sys.executable, "-m", "ajr_supervisor", "run", "--", "true"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ajr: error: not inside a Slurm job (SLURM_JOB_ID is not set); call `ajr run` "
                                   "from an sbatch script, in place of `srun -l -u`")


def test_run_needs_a_command_after_the_srun_options():
    proc = run_ajr("run", "-N2", env={"SLURM_JOB_ID": "1"})
    assert proc.returncode == 2 and "put -- before the training command" in proc.stderr
    assert proc.stderr.count("\n") == 1
