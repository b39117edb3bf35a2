"""The held-job watchdog: releases a job requeue-held too long, escalates when the release fails."""

from tests.registry.conftest import NOW, ev


def held(reg, job_id="7", at=NOW):
    reg.post([ev("attempt_started", job_id, t=at - 100, nodes=["n1"]),
              ev("decision", job_id, t=at - 2, verdict="REQUEUE", reason="crash"),
              ev("action", job_id, t=at, action="requeuehold", ok=True)])


def test_releases_a_job_held_longer_than_the_timeout(make_registry):
    reg = make_registry(held_timeout_s=600)
    held(reg)
    wd = reg.app.state.ctx.watchdog
    reg.clock.now = NOW + 599
    assert wd.run_once() == [] and reg.slurm.calls == []
    reg.clock.now = NOW + 601
    done = wd.run_once()
    assert [(e["action"], e["who"], e["ok"]) for e in done] == [("release", "watchdog", True)]
    assert reg.slurm.calls == [("release", "7")]
    entry = reg.get("/api/v1/audit").json()["items"][0]
    assert entry["who"] == "watchdog" and "held_timeout_s 600" in entry["reason"]
    job = reg.get("/api/v1/jobs/lab/7").json()
    assert job["state"] == "requeued" and job["held_since"] is None
    reg.clock.advance(10_000)
    assert wd.run_once() == [] and len(reg.slurm.calls) == 1     # released: not again


def test_leaves_alone_jobs_released_restarted_or_held_by_an_admin(make_registry):
    reg = make_registry(held_timeout_s=60)
    held(reg, "1")
    reg.post([ev("action", "1", t=NOW + 5, action="release", ok=True)])
    held(reg, "2")
    reg.post([ev("attempt_started", "2", t=NOW + 30, attempt=1, nodes=["n2"])])
    held(reg, "3")
    reg.post([ev("action", "3", t=NOW + 5, action="release", ok=False, error="busy")])   # a failed release
    held(reg, "4")
    reg.post([ev("action", "4", t=NOW + 1, action="requeuehold", ok=True, dry_run=True)])
    reg.clock.now = NOW + 1000
    assert sorted(e["job_id"] for e in reg.app.state.ctx.watchdog.run_once()) == ["3", "4"]


def test_escalates_to_admins_when_release_fails(make_registry):
    channels = {"channels": [{"name": "ops", "kind": "webhook", "url": "http://ops.example/hook",
                              "min_severity": "critical"}]}
    reg = make_registry(held_timeout_s=600, notifications=channels, admins=["ops@example.org"])
    reg.slurm.fail["release"] = "slurm_release error: Access/permission denied"
    held(reg)
    reg.clock.now = NOW + 700
    wd = reg.app.state.ctx.watchdog
    [entry] = wd.run_once()
    assert entry["ok"] is False and "permission denied" in entry["result"]
    notes = reg.get("/api/v1/notifications", severity="critical").json()["items"]
    escalation = [n for n in notes if "could not release" in n["body"]]
    assert len(escalation) == 1
    assert escalation[0]["channel"] == "ops" and escalation[0]["status"] == "pending"
    assert escalation[0]["job_id"] == "7"
    # the failed release is itself critical (action ok false): planned too
    assert any("FAILED" in n["subject"] for n in notes)
    # one try per hold and per held_timeout_s; a later pass tries again, escalating again
    reg.clock.advance(60)
    assert wd.run_once() == []
    reg.clock.advance(600)
    assert len(wd.run_once()) == 1 and len(reg.slurm.calls) == 2


def test_escalation_is_recorded_even_without_channels(make_registry):
    reg = make_registry(held_timeout_s=60)
    reg.slurm.fail["release"] = "boom"
    held(reg)
    reg.clock.now = NOW + 61
    reg.app.state.ctx.watchdog.run_once()
    notes = reg.get("/api/v1/notifications").json()["items"]
    assert [(n["severity"], n["channel"], n["status"]) for n in notes] == [("critical", "none", "failed")]
    assert "no notification channel" in notes[0]["last_error"]
    assert notes[0]["recipient"] == "admins"


def test_the_loop_survives_a_failing_pass():
    import asyncio

    from ajr_supervisor.registry.app import run_periodically

    calls = []

    def step():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("database went away")

    async def main():
        task = asyncio.create_task(run_periodically("test", step, 0.01))
        while len(calls) < 4:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task

    task = asyncio.run(main())
    assert len(calls) >= 4 and task.cancelled()
