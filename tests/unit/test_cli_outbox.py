"""``ajr outbox status|flush`` (ajr_supervisor/cli/outbox.py) through CliRunner, against the fake
registry of test_outbox."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
from click.testing import CliRunner

from ajr_supervisor.cli.outbox import outbox
from ajr_supervisor.errors import AjrError
from ajr_supervisor.outbox import Outbox
from tests.unit.test_outbox import TOKEN, event


@pytest.fixture
def job_dir(tmp_path, monkeypatch):
    """The job's WorkDir as the current directory, with a config naming the registry."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("AJR_CONFIG", raising=False)
    monkeypatch.delenv("AJR_REGISTRY_TOKEN", raising=False)
    return work


def write_config(tmp_path, **values) -> str:
    path = tmp_path / "ajr.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return str(path)


def invoke(*args, env=None):
    return CliRunner().invoke(outbox, list(args), env=env, catch_exceptions=True)


def put(directory, n: int) -> list[str]:
    box = Outbox(directory, url=None, token=None)
    events = [event(i) for i in range(n)]
    assert all(box.put(e) for e in events)
    return [e["id"] for e in events]


def test_status_of_an_empty_outbox(job_dir, tmp_path):
    result = invoke("status", "--config", write_config(tmp_path))
    assert result.exit_code == 0, result.output
    assert f"outbox:   {job_dir / '.ajr' / 'outbox'}" in result.output
    assert "registry: not configured (set registry_url in the ajr config)" in result.output
    assert "pending:  0\n" in result.output and "rejected: 0\n" in result.output


def test_status_counts_pending_rejected_and_the_oldest_age(job_dir, tmp_path):
    directory = tmp_path / "spool"
    put(directory, 3)
    (directory / "rejected").mkdir()
    (directory / "rejected" / "1-x.json").write_text("{}")
    (directory / "rejected" / "1-x.reason").write_text("bad")
    result = invoke("status", "--dir", str(directory), "--json", "--config",
                    write_config(tmp_path, registry_url="http://reg:8787"))
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["pending"] == 3 and info["rejected"] == 1 and info["registry_url"] == "http://reg:8787"
    assert info["directory"] == str(directory) and 0 <= info["oldest_age_s"] < 60
    text = invoke("status", "--dir", str(directory), "--config", write_config(tmp_path)).output
    assert "pending:  3 (oldest 0 s old)" in text and f"rejected: 1 (see {directory / 'rejected'})" in text


def test_flush_sends_everything_from_the_default_directory(job_dir, tmp_path, registry):
    ids = put(job_dir / ".ajr" / "outbox", 5)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = write_config(tmp_path, registry_url=registry.url, registry_token_file=str(token_file))
    result = invoke("flush", "--config", config)
    assert result.exit_code == 0, result.output
    assert result.output == "sent 5 events (0 already there, 0 rejected)\n"
    assert registry.accepted == ids and registry.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    assert invoke("flush", "--config", config).output == f"nothing waits in {job_dir / '.ajr' / 'outbox'}\n"


def test_flush_takes_the_token_from_the_environment(job_dir, tmp_path, registry):
    put(job_dir / ".ajr" / "outbox", 1)
    result = invoke("flush", "--config", write_config(tmp_path, registry_url=registry.url),
                    env={"AJR_REGISTRY_TOKEN": "env-token"})
    assert result.exit_code == 0, result.output
    assert registry.headers[0]["Authorization"] == "Bearer env-token"


def test_flush_with_the_registry_down_is_one_line_and_exit_1(job_dir, tmp_path, registry):
    directory = tmp_path / "spool"
    put(directory, 2)
    registry.stop()
    result = invoke("flush", "--dir", str(directory), "--timeout", "2", "--config",
                    write_config(tmp_path, registry_url=registry.url))
    assert result.exit_code == 1 and isinstance(result.exception, AjrError)
    line = result.exception.one_line()
    assert line == (f"2 events still wait in {directory}: cannot reach the registry at {registry.url}: "
                    "connection refused")
    assert Outbox(directory, url=None, token=None).backlog() == 2


def test_flush_with_a_refused_token(job_dir, tmp_path, registry):
    put(job_dir / ".ajr" / "outbox", 1)
    registry.status = 401
    result = invoke("flush", "--config", write_config(tmp_path, registry_url=registry.url))
    assert result.exit_code == 1
    assert "registry refused the token: 401 invalid token; set registry_token_file" in result.exception.one_line()


def test_flush_without_a_registry_says_how_to_configure_it(job_dir, tmp_path):
    put(job_dir / ".ajr" / "outbox", 1)
    result = invoke("flush", "--config", write_config(tmp_path))
    assert result.exit_code == 1
    assert "no registry configured (registry_url)" in result.exception.one_line()


def test_flush_reports_partial_progress(job_dir, tmp_path, registry):
    ids = put(job_dir / ".ajr" / "outbox", 3)
    registry.reject = {ids[0]: "bad"}
    result = invoke("flush", "--config", write_config(tmp_path, registry_url=registry.url))
    assert result.exit_code == 0 and result.output == "sent 2 events (0 already there, 1 rejected)\n"


def test_flush_waits_for_another_deliverer_then_says_so(job_dir, tmp_path, registry):
    directory = job_dir / ".ajr" / "outbox"
    put(directory, 1)
    fd = os.open(directory / ".deliver.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = invoke("flush", "--timeout", "0.3", "--config", write_config(tmp_path, registry_url=registry.url))
    finally:
        os.close(fd)
    assert result.exit_code == 1
    assert result.exception.one_line() == (f"1 events still wait in {directory}: "
                                           f"another process is delivering {directory}")


def test_a_bad_timeout_is_a_usage_error(job_dir):
    result = invoke("flush", "--timeout", "0")
    assert result.exit_code == 2 and "Invalid value for '--timeout'" in result.output
