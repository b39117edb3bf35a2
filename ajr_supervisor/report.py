"""Render a job's state file for people: the attempts as a timeline (``ajr status``). Pure."""

from __future__ import annotations

import time

from ajr_supervisor.state import Attempt, JobRecord

VERDICT_WORDS = {"NONE": "no action", "REQUEUE": "requeued", "EXCLUDE_AND_REQUEUE": "requeued, excluding",
                 "STOP": "STOPPED"}


def _clock(t: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _duration(a: Attempt) -> str:
    if a.ended_at is None:
        return "running"
    s = int(a.ended_at - a.started_at)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _nodes(nodes: list[str]) -> str:
    return ",".join(nodes) if len(nodes) <= 6 else f"{','.join(nodes[:5])},... ({len(nodes)} nodes)"


def render_timeline(rec: JobRecord) -> str:
    head = f"job {rec.job_id}"
    if rec.job_name:
        head += f" ({rec.job_name}, user {rec.user or '?'}, partition {rec.partition or '?'})"
    head += f": {len(rec.attempts)} attempt{'s' if len(rec.attempts) != 1 else ''}"
    if rec.excluded_nodes:
        head += f", excluded {','.join(rec.excluded_nodes)}"
    lines = [head]
    if rec.final:
        lines.append(f"  STOPPED after attempt {rec.final.get('attempt')}: {rec.final.get('reason')}")
    for a in rec.attempts:
        lines.append(f"  attempt {a.attempt}  {_clock(a.started_at)}  {_duration(a):>9}  "
                     f"on {_nodes(a.nodes) or '?'}  -> {a.end_reason or 'running'}"
                     + (f" (exit {a.exit_code})" if a.exit_code not in (None, 0) else ""))
        if a.checkpoints:
            last = a.checkpoints[-1]
            it = f" iteration {last['iteration']}" if last.get("iteration") is not None else ""
            lines.append(f"      checkpoints: {len(a.checkpoints)}, last{it} at {_clock(last.get('time'))}")
        d = a.decision
        if d:
            f = d.get("finding") or {}
            if f:
                where = f" on {','.join(f['nodes'])}" if f.get("nodes") else ""
                rule = f", rule {f['rule_id']}" if f.get("rule_id") else ""
                lines.append(f"      {f.get('anomaly')} ({f.get('component')}{where}{rule})"
                             + (f": {f['line']}" if f.get("line") else ""))
            blame = d.get("attribution")
            if blame and blame.get("action") != "NONE":
                on = f" on {','.join(blame['nodes'])}" if blame.get("nodes") else ""
                lines.append(f"      blame: {blame['component']}{on} (confidence {blame['confidence']}) - {blame['reason']}")
            verdict = VERDICT_WORDS.get(d["verdict"], d["verdict"])
            excl = f" {','.join(d['exclude'])}" if d["verdict"] == "EXCLUDE_AND_REQUEUE" else ""
            dry = " [dry run]" if d.get("dry_run") else ""
            lines.append(f"      decision ({d.get('by', 'supervisor')}): {verdict}{excl}{dry} - {d['reason']}")
        if a.health:
            bad = [f"{n}: {c['name']} ({c['detail']})" for n, h in sorted(a.health.items())
                   for c in h.get("checks", []) if c.get("state") == "BAD"]
            unknown = sorted({n for n, h in a.health.items() for c in h.get("checks", []) if c.get("state") == "UNKNOWN"})
            lines.append(f"      node health: {len(a.health)} probed; BAD: {'; '.join(bad) if bad else 'none'}"
                         + (f"; UNKNOWN checks on {','.join(unknown)}" if unknown else ""))
        if a.stacks:
            lines.append(f"      stacks before the kill (py-spy): ranks {', '.join(sorted(a.stacks, key=int))}")
            for rank in sorted(a.stacks, key=int)[:2]:
                frames = [ln.strip() for ln in a.stacks[rank].splitlines() if ln.strip()][:4]
                lines.append(f"        rank {rank}: " + " | ".join(frames))
        if a.actions:
            acts = ", ".join(f"{x['action']} {'ok' if x.get('ok') else 'FAILED: ' + str(x.get('error'))}"
                             for x in a.actions)
            lines.append(f"      actions: {acts}")
        if a.log_path:
            lines.append(f"      log: {a.log_path}")
    return "\n".join(lines)
