"""Property-based API test: schemathesis generates requests from the app's own OpenAPI (valid and
invalid), sent with an admin token; no request may end in a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.registry.conftest import NOW, FakeClock, FakeSlurm, ev


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from fastapi.testclient import TestClient

    from ajr_supervisor.registry.app import create_app
    from ajr_supervisor.registry.auth import create_token
    from ajr_supervisor.registry.settings import Settings

    notifications = {"channels": [{"name": "ops", "kind": "webhook", "url": "http://ops.example/h"}]}
    app = create_app(Settings(db=str(tmp_path_factory.mktemp("st") / "r.db"), notifications=notifications),
                     slurm=FakeSlurm(fail={"hold": "denied"}), clock=FakeClock(), background=False,
                     sender=lambda *a, **k: None)
    token, _ = create_token(app.state.ctx.db, "admin")
    headers = {"Authorization": f"Bearer {token}"}
    TestClient(app).post("/api/v1/events", headers=headers, json={"events": [
        ev("attempt_started", "1", t=NOW, nodes=["n1"]), ev("attribution", "1", t=NOW + 1, component="GPU",
                                                            nodes=["n1"]),
        ev("decision", "1", t=NOW + 2, verdict="STOP", failure_at=NOW + 1)]})
    app.state.test_headers = headers
    yield app
    app.state.ctx.db.dispose()


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_asgi("/openapi.json", api)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, api):
    case.call_and_validate(headers=api.state.test_headers, checks=[not_a_server_error])
