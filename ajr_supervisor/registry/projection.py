"""The jobs/attempts projection, pure: how one event changes a job row and an attempt row (dicts).

Ingest loads the rows an event batch touches, applies the new events in time order with
:func:`apply`, and writes the rows back in the same transaction. The job's ``state`` follows the
latest state-changing event by event time (``state_at``), so events that arrive late or out of
order never move a job backwards:

    attempt_started            -> running
    attempt_ended              -> completed | failed | cancelled | stopped | requeued (by end_reason)
    decision REQUEUE/EXCLUDE.. -> requeued        decision STOP -> stopped
    action requeuehold/hold ok -> held            action release/requeue ok -> requeued; stop ok -> stopped

Fields of ``data`` are read defensively: a wrong type reads as "not given", never as an error.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_LIST = 50            # anomalies and checkpoints kept per attempt (the newest)
MAX_ACTIONS = 100
INT32 = 2**31 - 1
INT64 = 2**63 - 1
REQUEUE_VERDICTS = ("REQUEUE", "EXCLUDE_AND_REQUEUE")
_END_STATES = {"success": "completed", "completed": "completed", "cancelled": "cancelled",
               "stopped": "stopped", "requeued": "requeued"}
_ACTION_STATES = {"requeuehold": "held", "hold": "held", "release": "requeued", "requeue": "requeued",
                  "stop": "stopped"}
_CLEARS_HOLD = ("release", "requeue", "hold", "stop")
JSON_COLUMNS = ("nodes", "anomalies", "attribution", "checkpoints", "decision", "actions")


def s(value: Any, limit: int = 256) -> str:
    return value[:limit] if isinstance(value, str) else ""


def i(value: Any, limit: int = INT32) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and -limit <= value <= limit else None


def f(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def str_list(value: Any, limit: int = 256) -> list[str]:
    return [v[:256] for v in value[:limit] if isinstance(v, str)] if isinstance(value, list) else []


def job_num(job_id: str) -> int:
    """The numeric part of a Slurm job id (``1234_7`` -> 1234), 0 when there is none."""
    m = re.match(r"\d{1,18}", job_id)
    return int(m.group()) if m else 0


def new_job(event: dict) -> dict:
    """The row of a job first seen in ``event`` (before the event is applied)."""
    t = event["time"]
    return {"cluster": event["cluster"], "job_id": event["job_id"], "job_num": job_num(event["job_id"]),
            "job_name": "", "user": "", "partition": "", "state": "running", "state_at": 0.0, "attempt": None,
            "attempts": 0, "requeues": 0, "created_at": t, "updated_at": t, "last_verdict": None,
            "last_reason": None, "end_reason": None, "exit_code": None, "event_count": 0, "hold_at": None,
            "hold_cleared_at": None, "watchdog_tried_at": None}


def new_attempt(job_pk: int, attempt: int) -> dict:
    return {"job_pk": job_pk, "attempt": attempt, "nodes": [], "host": "", "started_at": None, "ended_at": None,
            "exit_code": None, "end_reason": None, "failed": None, "first_step_at": None,
            "last_progress_at": None, "iteration": None, "failure_at": None, "decided_at": None, "verdict": None,
            "anomalies": [], "attribution": None, "checkpoints": [], "checkpoint_count": 0, "decision": None,
            "actions": []}


def decode_attempt(row: dict) -> dict:
    """A stored attempt row with its JSON columns decoded."""
    out = dict(row)
    for key in JSON_COLUMNS:
        out[key] = json.loads(out[key]) if isinstance(out[key], str) else out[key]
    return out


def encode_attempt(row: dict) -> dict:
    out = dict(row)
    for key in JSON_COLUMNS:
        out[key] = None if out[key] is None else json.dumps(out[key], separators=(",", ":"))
    return out


def attempt_of(event: dict, job: dict) -> int | None:
    """The attempt an event belongs to: its own, else (job-level events) the job's latest."""
    attempt = event.get("attempt")
    return attempt if attempt is not None else job.get("attempt")


def apply(event: dict, job: dict, attempt: dict | None) -> None:
    """Apply one new event to its job row and (when it has one) its attempt row, in place."""
    t, kind, data = event["time"], event["type"], event["data"]
    for key in ("job_name", "user", "partition"):
        if event.get(key):
            job[key] = event[key][:256 if key == "job_name" else 64]
    job["created_at"] = min(job["created_at"], t)
    job["updated_at"] = max(job["updated_at"], t)
    job["event_count"] += 1
    number = event.get("attempt")
    if number is not None and (job["attempt"] is None or number > job["attempt"]):
        job["attempt"] = number
        job["requeues"] = max(job["requeues"], number)
    state = _state_after(kind, data)
    if kind == "attempt_ended":
        job["end_reason"], job["exit_code"] = s(data.get("end_reason"), 64) or None, i(data.get("exit_code"))
    elif kind == "decision" and s(data.get("verdict"), 32):
        job["last_verdict"], job["last_reason"] = s(data.get("verdict"), 32), s(data.get("reason"), 2000)
    elif kind == "action" and data.get("ok") is True and not data.get("dry_run"):
        action = data.get("action")
        if action == "requeuehold":
            job["hold_at"] = max(job["hold_at"] or t, t)
        elif action in _CLEARS_HOLD:
            job["hold_cleared_at"] = max(job["hold_cleared_at"] or t, t)
    elif kind == "attempt_started":
        job["hold_cleared_at"] = max(job["hold_cleared_at"] or t, t)
    if state and t >= job["state_at"]:
        job["state"], job["state_at"] = state, t
    if attempt is not None:
        _apply_attempt(event, attempt)


def _state_after(kind: str, data: dict) -> str | None:
    if kind == "attempt_started":
        return "running"
    if kind == "attempt_ended":
        reason = s(data.get("end_reason"), 64)
        if reason in _END_STATES:
            return _END_STATES[reason]
        return "failed" if data.get("failed") is True else "completed"
    if kind == "decision":
        verdict = data.get("verdict")
        return "requeued" if verdict in REQUEUE_VERDICTS else "stopped" if verdict == "STOP" else None
    if kind == "action" and data.get("ok") is True and not data.get("dry_run"):
        return _ACTION_STATES.get(data.get("action"))
    return None


def _apply_attempt(event: dict, a: dict) -> None:
    t, kind, data = event["time"], event["type"], event["data"]
    if kind == "attempt_started":
        a["nodes"] = str_list(data.get("nodes")) or a["nodes"]
        a["host"] = s(data.get("host")) or a["host"]
        a["started_at"] = t if a["started_at"] is None else min(a["started_at"], t)
    elif kind == "attempt_ended":
        a["ended_at"], a["exit_code"] = t, i(data.get("exit_code"))
        a["end_reason"] = s(data.get("end_reason"), 64) or None
        a["failed"] = data.get("failed") if isinstance(data.get("failed"), bool) else None
    elif kind == "progress":
        a["last_progress_at"] = max(a["last_progress_at"] or t, t)
        if i(data.get("iteration"), INT64) is not None:
            a["iteration"] = data["iteration"]
        if data.get("first") is True or a["first_step_at"] is None:
            a["first_step_at"] = t if a["first_step_at"] is None else min(a["first_step_at"], t)
    elif kind == "anomaly":
        item = {"time": t, "anomaly": s(data.get("anomaly"), 32), "component": s(data.get("component"), 64),
                "reason": s(data.get("reason"), 1000), "rule_id": s(data.get("rule_id"), 128),
                "rank": i(data.get("rank")), "nodes": str_list(data.get("nodes"))}
        a["anomalies"] = _newest(a["anomalies"] + [item], MAX_LIST)
    elif kind == "attribution":
        if a["attribution"] is None or t >= a["attribution"].get("time", 0):
            a["attribution"] = {"time": t, "component": s(data.get("component"), 64),
                                "nodes": str_list(data.get("nodes")), "ranks": data.get("ranks") if isinstance(
                                    data.get("ranks"), list) else [], "confidence": f(data.get("confidence")),
                                "evidence": str_list(data.get("evidence"), 20)}
    elif kind == "checkpoint":
        a["checkpoints"] = _newest(a["checkpoints"] + [{"time": t, "iteration": i(data.get("iteration"), INT64)}],
                                   MAX_LIST)
        a["checkpoint_count"] += 1
    elif kind == "decision":
        if a["decided_at"] is None or t >= a["decided_at"]:
            a["decision"] = {"time": t, "verdict": s(data.get("verdict"), 32), "reason": s(data.get("reason"), 2000),
                             "exclude": str_list(data.get("exclude")), "failure_at": f(data.get("failure_at")),
                             "by": s(data.get("by"), 32)}
            a["decided_at"], a["verdict"] = t, s(data.get("verdict"), 32) or None
            a["failure_at"] = f(data.get("failure_at"))
    elif kind == "action":
        item = {"time": t, "action": s(data.get("action"), 32), "ok": data.get("ok") is True,
                "error": s(data.get("error"), 1000) or None, "detail": s(data.get("detail"), 1000) or None, "dry_run": data.get("dry_run") is True,
                "source": event.get("source", "supervisor")}
        a["actions"] = _newest(a["actions"] + [item], MAX_ACTIONS)


def _newest(items: list[dict], keep: int) -> list[dict]:
    items.sort(key=lambda x: x["time"])
    return items[-keep:]
