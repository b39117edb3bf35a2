"""``ajr nodes`` and ``ajr kpi`` against a tiny real HTTP server serving canned registry answers."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from ajr_supervisor.cli.registry_client import COMMANDS, RegistryAuthError, RegistryClientError, kpi, nodes
from ajr_supervisor.errors import AjrError, UsageError

NODES = {"nodes": [
    {"node": "gpu-a-017", "failures": 4, "failures_by_component": {"GPU": 3, "NETWORK": 1},
     "jobs": ["lab/11", "lab/12", "lab/13", "lab/14"], "last_failure_at": 1.7e9, "score": 3.4567,
     "drained_by_ajr": True, "lemon": True},
    {"node": "n2", "failures": 1, "failures_by_component": {"STORAGE": 1}, "jobs": ["lab/11"],
     "last_failure_at": 1.7e9, "score": 0.5, "drained_by_ajr": False, "lemon": False}]}
DOWN = {"detection_s": 10.0, "shutdown_s": 20.0, "queue_wait_s": 70.0, "restart_to_first_step_s": 100.0,
        "lost_work_s": 500.0}
KPIS = {"aggregate": {"jobs": 2, "allocated_s": 5930.0, "productive_s": 4600.0, "efficiency": 4600 / 5930,
                      "attempts": 3, "requeues": 1, "downtime": DOWN},
        "jobs": [{"cluster": "lab", "job_id": "1", "job_name": "train", "user": "alice", "allocated_s": 3000.0,
                  "productive_s": 2900.0, "efficiency": 2900 / 3000, "attempts": 1, "requeues": 0,
                  "downtime": dict.fromkeys(DOWN, 0.0), "interruptions": []},
                 {"cluster": "lab", "job_id": "2", "job_name": "train", "user": "bob", "allocated_s": 2930.0,
                  "productive_s": 1700.0, "efficiency": 1700 / 2930, "attempts": 2, "requeues": 1,
                  "downtime": DOWN, "interruptions": []}]}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        split = urlsplit(self.path)
        self.server.seen.append({"path": split.path, "query": parse_qs(split.query),
                                 "auth": self.headers.get("Authorization")})
        status, body, kind, delay_s = self.server.routes.get(split.path, (404, {"detail": "Not Found"},
                                                                          "application/json", 0))
        time.sleep(delay_s)
        data = json.dumps(body).encode() if kind == "application/json" else body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:        # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    """A running server: set ``routes[path] = (status, body, content_type, delay_s)``; ``seen`` lists requests."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {"/api/v1/nodes": (200, NODES, "application/json", 0),
                     "/api/v1/kpis": (200, KPIS, "application/json", 0)}
    server.seen = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_ajr_environment(monkeypatch, tmp_path):
    for var in ("AJR_REGISTRY_URL", "AJR_REGISTRY_TOKEN", "AJR_REGISTRY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    config = tmp_path / "ajr.yaml"
    config.write_text("")
    monkeypatch.setenv("AJR_CONFIG", str(config))
    return config


def invoke(command, *args):
    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fails(command, *args, error=AjrError):
    with pytest.raises(error) as info:
        CliRunner().invoke(command, list(args), catch_exceptions=False)
    line = info.value.one_line()
    assert "\n" not in line and info.value.hint
    return line


def test_commands_are_exported():
    assert [c.name for c in COMMANDS] == ["nodes", "kpi"]


def test_nodes_table(registry):
    out = invoke(nodes, "--url", registry.url, "--token", "s3cret")
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "FAILURES", "BY", "COMPONENT", "JOBS", "SCORE", "DRAINED", "LEMON"]
    assert "GPU:3,NETWORK:1" in lines[1] and "lab/11,lab/12,lab/13 +1" in lines[1] and "3.46" in lines[1]
    assert lines[1].split()[-2:] == ["yes", "LEMON"] and lines[2].split()[-1] == "no"
    assert lines[0].index("SCORE") + len("SCORE") == lines[1].index("3.46") + len("3.46")   # right-aligned
    assert registry.seen == [{"path": "/api/v1/nodes", "query": {}, "auth": "Bearer s3cret"}]


def test_nodes_lemons_and_json(registry):
    out = invoke(nodes, "--url", registry.url, "--lemons", "--json")
    assert [n["node"] for n in json.loads(out)["nodes"]] == ["gpu-a-017"]
    assert registry.seen[0]["query"] == {"lemon": ["true"]} and registry.seen[0]["auth"] is None


def test_no_nodes(registry):
    registry.routes["/api/v1/nodes"] = (200, {"nodes": []}, "application/json", 0)
    assert "no lemon nodes" in invoke(nodes, "--url", registry.url, "--lemons")


def test_kpi_table(registry):
    out = invoke(kpi, "--url", registry.url + "/")
    lines = out.splitlines()
    assert lines[0].split() == ["JOB", "EFF", "%", "ALLOC", "h", "PROD", "h", "REQUEUES", "DETECT", "SHUTDOWN",
                                "QUEUE", "RESTART", "LOST"]
    assert lines[1].split() == ["lab/1", "96.7", "0.83", "0.81", "0", "0s", "0s", "0s", "0s", "0s"]
    assert lines[2].split() == ["lab/2", "58.0", "0.81", "0.47", "1", "10s", "20s", "1m10s", "1m40s", "8m20s"]
    assert lines[3].startswith("TOTAL (2 jobs)") and "77.6" in lines[3]
    assert len({len(line) for line in lines[:3]}) == 1          # aligned
    assert registry.seen[0]["path"] == "/api/v1/kpis"


def test_kpi_one_job(registry):
    out = invoke(kpi, "--url", registry.url, "--job", "lab/2")
    assert out.splitlines()[1].startswith("lab/2") and len(out.splitlines()) == 2
    assert registry.seen[0]["query"] == {"job_id": ["2"], "cluster": ["lab"]}
    assert json.loads(invoke(kpi, "--url", registry.url, "--job", "2", "--json"))["user"] == "bob"
    assert "no KPIs for job lab/9" in fails(kpi, "--url", registry.url, "--job", "lab/9", error=RegistryClientError)
    assert "CLUSTER/JOBID" in fails(kpi, "--url", registry.url, "--job", "lab/", error=UsageError)


def test_kpi_json(registry):
    assert json.loads(invoke(kpi, "--url", registry.url, "--json")) == KPIS


def test_url_and_token_from_the_environment(registry, monkeypatch):
    monkeypatch.setenv("AJR_REGISTRY_URL", registry.url)
    monkeypatch.setenv("AJR_REGISTRY_TOKEN", "from-env")
    invoke(nodes)
    assert registry.seen[0]["auth"] == "Bearer from-env"


def test_url_and_token_from_the_config(registry, no_ajr_environment, tmp_path):
    token = tmp_path / "token"
    token.write_text("from-file\n")
    no_ajr_environment.write_text(f"registry_url: {registry.url}\nregistry_token_file: {token}\n")
    invoke(kpi)
    assert registry.seen[0]["auth"] == "Bearer from-file"


def test_unreadable_token_file(registry, no_ajr_environment, tmp_path):
    no_ajr_environment.write_text(f"registry_token_file: {tmp_path / 'missing'}\n")
    assert "cannot read the registry token file" in fails(nodes, "--url", registry.url, error=UsageError)


def test_no_url_configured():
    line = fails(nodes, error=UsageError)
    assert line.startswith("no registry URL configured") and "AJR_REGISTRY_URL" in line


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = fails(kpi, "--url", f"http://127.0.0.1:{port}", error=RegistryClientError)
    assert "connection refused" in line and "registry serve" in line


@pytest.mark.parametrize("status,error,words", [(401, RegistryAuthError, "not authenticated: bad token"),
                                                (403, RegistryAuthError, "forbidden: bad token"),
                                                (404, RegistryClientError, "not found"),
                                                (500, RegistryClientError, "HTTP 500")])
def test_http_errors(registry, status, error, words):
    registry.routes["/api/v1/nodes"] = (status, {"detail": "bad token"}, "application/json", 0)
    assert words in fails(nodes, "--url", registry.url, "--token", "x", error=error)


def test_not_json(registry):
    registry.routes["/api/v1/kpis"] = (200, "<html>login</html>", "text/html", 0)
    assert "is not JSON (HTTP 200, text/html)" in fails(kpi, "--url", registry.url, error=RegistryClientError)
    registry.routes["/api/v1/kpis"] = (502, "<html>bad gateway</html>", "text/html", 0)
    assert "HTTP 502" in fails(kpi, "--url", registry.url, error=RegistryClientError)
    registry.routes["/api/v1/kpis"] = (200, ["a", "list"], "application/json", 0)
    assert "has no 'jobs'" in fails(kpi, "--url", registry.url, error=RegistryClientError)


def test_timeout(registry):
    registry.routes["/api/v1/nodes"] = (200, NODES, "application/json", 1.0)
    line = fails(nodes, "--url", registry.url, "--timeout-s", "0.2", error=RegistryClientError)
    assert "did not answer within 0.2 s" in line


def test_not_an_http_url():
    assert "not an http(s) URL" in fails(nodes, "--url", "registry:8787", error=UsageError)
