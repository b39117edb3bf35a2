"""Training-time efficiency of a job, from its registry events (pure: no I/O, no clock reads).

Modelled on NVIDIA Mission Control AJR's *training-time efficiency*: productive time / allocated
time, where a restart counts as successful at its first checkpoint save (``success_at="checkpoint"``)
or at its first training step (``success_at="first_step"``). All times are Unix seconds; ``now`` is
passed in. Events may come in any order: they are sorted by time, then by a fixed type order
(``job_seen``, ``attempt_started`` first; ``attempt_ended`` last), then by id.

Attempts are the events' ``attempt`` numbers (Slurm's restart count: 0 is the first run); job-level
events (``attempt`` null) are ignored.

* **allocated** = sum over attempts of (end or ``now`` while running) - start, where start is the
  earliest ``attempt_started`` and end the latest ``attempt_ended`` of the attempt.
* An attempt **failed** when an ``attempt_ended`` says ``failed: true`` or a ``decision`` in it has
  verdict REQUEUE, EXCLUDE_AND_REQUEUE or STOP (the first such decision is *the* decision). Each
  failed attempt is one **interruption**:

  - ``failure_at``: the decision's ``failure_at``; else the first CRASH/HANG anomaly's time (else
    the first anomaly's); else the attempt's end; else the decision's time.
  - ``detected_at``: the decision's time. ``detection_s`` = detected_at - failure_at.
  - ``shutdown_s`` = attempt end - detected_at.
  - ``queue_wait_s`` = next attempt's start - this attempt's end (next = attempt number + 1).
  - ``restart_to_first_step_s`` = next attempt's first step - its start; the first step is the
    first ``progress`` with ``first: true``, else the earliest ``progress``.
  - ``lost_work_s`` = failure_at - the attempt's last checkpoint (none: - the attempt's start).
  Every duration is clamped at >= 0; ``first_step_at`` and ``first_checkpoint_at`` are the next
  attempt's.

* **productive** = allocated minus, per attempt, the union of its non-productive spans:

  - startup: start -> success point. Attempt 0: its first step (whatever ``success_at`` says: the
    first run's startup is not productive either). Later attempts (restarts): the first checkpoint
    (``success_at="checkpoint"``) or the first step (``"first_step"``).
  - failure (failed attempts): last checkpoint (or start) -> end, i.e. lost work + detection +
    shutdown (or -> ``now`` while the attempt has not ended).

  The union, not the sum, so a restart that fails before its first checkpoint is not counted twice.
  Queue wait is outside any allocation, so it is reported but never subtracted. Productive time is
  clamped to [0, allocated].

**Missing events** never raise. A value that needs an event the registry did not see is ``None`` and
left out of every sum. An attempt without ``attempt_started`` adds no allocated time. A success
point not seen in an attempt counts as *not reached* (start -> end non-productive) when the job
reported that kind of event (progress or checkpoint) in some attempt, and as *unknown* (nothing
subtracted) when it never did: a job whose progress lines the supervisor does not recognise is not
called idle. So with missing events the efficiency is an upper bound.

**requeues** = the highest attempt number seen (Slurm's restart count, so requeues the registry did
not see still count); **attempts** = the number of distinct attempts seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

SUCCESS_POINTS = ("checkpoint", "first_step")
FAILED_VERDICTS = frozenset({"REQUEUE", "EXCLUDE_AND_REQUEUE", "STOP"})
DOWNTIME_PARTS = ("detection_s", "shutdown_s", "queue_wait_s", "restart_to_first_step_s", "lost_work_s")
_TYPE_ORDER = {name: i for i, name in enumerate(
    ("job_seen", "attempt_started", "progress", "checkpoint", "anomaly", "attribution", "node_health",
     "decision", "action", "notification", "attempt_ended"))}


@dataclass
class _Attempt:
    """What the events say about one attempt."""

    number: int
    started_at: float | None = None
    ended_at: float | None = None
    ended_failed: bool = False
    flagged_first_step_at: float | None = None   # progress with data.first true
    earliest_step_at: float | None = None
    checkpoints: list[float] = field(default_factory=list)
    anomalies: list[tuple[float, str]] = field(default_factory=list)
    decided_at: float | None = None               # the first failing decision
    decision_failure_at: float | None = None

    @property
    def first_step_at(self) -> float | None:
        return self.flagged_first_step_at if self.flagged_first_step_at is not None else self.earliest_step_at

    @property
    def first_checkpoint_at(self) -> float | None:
        return min(self.checkpoints) if self.checkpoints else None

    @property
    def failed(self) -> bool:
        return self.ended_failed or self.decided_at is not None

    def failure_at(self) -> float | None:
        if self.decision_failure_at is not None:
            return self.decision_failure_at
        hard = [t for t, kind in self.anomalies if kind in ("CRASH", "HANG")]
        if hard or self.anomalies:
            return min(hard) if hard else min(t for t, _ in self.anomalies)
        return self.ended_at if self.ended_at is not None else self.decided_at


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _sort_key(indexed: tuple[int, dict]) -> tuple:
    index, event = indexed
    return (_number(event.get("time")) or 0.0, _TYPE_ORDER.get(event.get("type"), len(_TYPE_ORDER)),
            str(event.get("id", "")), index)


def sorted_events(events: Sequence[dict]) -> list[dict]:
    """Events with a numeric time, by time, then type order, then id (then input order)."""
    usable = [(i, e) for i, e in enumerate(events) if isinstance(e, dict) and _number(e.get("time")) is not None]
    return [e for _, e in sorted(usable, key=_sort_key)]


def _attempts(events: Sequence[dict]) -> dict[int, _Attempt]:
    attempts: dict[int, _Attempt] = {}
    for event in sorted_events(events):
        number = event.get("attempt")
        if isinstance(number, bool) or not isinstance(number, int):
            continue
        a = attempts.setdefault(number, _Attempt(number))
        t = float(event["time"])
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        kind = event.get("type")
        if kind == "attempt_started" and a.started_at is None:
            a.started_at = t
        elif kind == "attempt_ended":
            a.ended_at = t
            a.ended_failed = a.ended_failed or data.get("failed") is True
        elif kind == "progress":
            if a.earliest_step_at is None:
                a.earliest_step_at = t
            if data.get("first") is True and a.flagged_first_step_at is None:
                a.flagged_first_step_at = t
        elif kind == "checkpoint":
            a.checkpoints.append(t)
        elif kind == "anomaly":
            a.anomalies.append((t, str(data.get("anomaly", ""))))
        elif kind == "decision" and data.get("verdict") in FAILED_VERDICTS and a.decided_at is None:
            a.decided_at = t
            a.decision_failure_at = _number(data.get("failure_at"))
    return attempts


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _interruption(a: _Attempt, nxt: _Attempt | None) -> dict:
    failure_at = a.failure_at()
    if a.checkpoints:
        lost = _span(max(a.checkpoints), failure_at)
    else:
        lost = _span(a.started_at, failure_at)
    return {"attempt": a.number, "failure_at": failure_at, "detected_at": a.decided_at,
            "ended_at": a.ended_at, "next_started_at": nxt.started_at if nxt else None,
            "first_step_at": nxt.first_step_at if nxt else None,
            "first_checkpoint_at": nxt.first_checkpoint_at if nxt else None,
            "detection_s": _span(failure_at, a.decided_at), "shutdown_s": _span(a.decided_at, a.ended_at),
            "queue_wait_s": _span(a.ended_at, nxt.started_at) if nxt else None,
            "restart_to_first_step_s": _span(nxt.started_at, nxt.first_step_at) if nxt else None,
            "lost_work_s": lost}


def _union_length(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``spans`` clipped to [lo, hi]."""
    clipped = sorted((max(lo, s), min(hi, e)) for s, e in spans if min(hi, e) > max(lo, s))
    total, cur_s, cur_e = 0.0, None, None
    for s, e in clipped:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _success_point(a: _Attempt, success_at: str, end: float, *, job_steps: bool, job_checkpoints: bool) -> float | None:
    """When the attempt started being productive; ``end`` when never (known); None when unknown."""
    by_step = a.number == 0 or success_at == "first_step"
    seen, reported = (a.first_step_at, job_steps) if by_step else (a.first_checkpoint_at, job_checkpoints)
    if seen is not None:
        return seen
    return end if reported else None


def job_kpis(events: Sequence[dict], *, now: float, success_at: str = "checkpoint") -> dict:
    """KPIs of ONE job from its events (see the module docstring for every definition)."""
    if success_at not in SUCCESS_POINTS:
        raise ValueError(f"success_at must be one of {', '.join(SUCCESS_POINTS)}, not {success_at!r}")
    attempts = _attempts(events)
    job_steps = any(a.first_step_at is not None for a in attempts.values())
    job_checkpoints = any(a.checkpoints for a in attempts.values())
    allocated = unproductive = 0.0
    interruptions = []
    for number in sorted(attempts):
        a = attempts[number]
        if a.failed:
            interruptions.append(_interruption(a, attempts.get(number + 1)))
        if a.started_at is None:
            continue
        end = max(a.started_at, a.ended_at if a.ended_at is not None else now)
        allocated += end - a.started_at
        spans = []
        success = _success_point(a, success_at, end, job_steps=job_steps, job_checkpoints=job_checkpoints)
        if success is not None:
            spans.append((a.started_at, success))
        if a.failed:
            failure_at = a.failure_at()
            if failure_at is not None:
                lost = interruptions[-1]["lost_work_s"] or 0.0
                spans.append((failure_at - lost, end))
        unproductive += _union_length(spans, a.started_at, end)
    productive = min(allocated, max(0.0, allocated - unproductive))
    downtime = {part: sum(i[part] for i in interruptions if i[part] is not None) for part in DOWNTIME_PARTS}
    return {"allocated_s": allocated, "productive_s": productive,
            "efficiency": productive / allocated if allocated > 0 else None,
            "attempts": len(attempts), "requeues": max(0, max(attempts, default=0)),
            "downtime": downtime, "interruptions": interruptions}


def aggregate_kpis(per_job: Sequence[dict]) -> dict:
    """Totals over jobs (``job_kpis`` results, extra keys ignored): sums, and the pooled efficiency
    sum(productive) / sum(allocated) (None when nothing was allocated). Non-numbers count as 0."""
    def total(key: str, source=None) -> float:
        return sum(_number(j.get(key)) or 0.0 for j in (per_job if source is None else source))

    downtimes = [j.get("downtime") if isinstance(j.get("downtime"), dict) else {} for j in per_job]
    allocated, productive = total("allocated_s"), total("productive_s")
    return {"jobs": len(per_job), "allocated_s": allocated, "productive_s": productive,
            "efficiency": productive / allocated if allocated > 0 else None,
            "attempts": int(total("attempts")), "requeues": int(total("requeues")),
            "downtime": {part: total(part, downtimes) for part in DOWNTIME_PARTS}}
