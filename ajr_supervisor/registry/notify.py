"""Registry notifications: channel config, severity, who gets what, throttling, and the one sender.

Config: ``notifications:`` of the registry config (``Settings.notifications``); keys are the field
names, except SMTP's ``from`` (:attr:`SmtpSettings.from_addr`)::

    email_domain: example.org        # job user alice -> alice@example.org
    users: {bob: bob@lab.org}        # looked up before email_domain
    smtp: {host: localhost, port: 25, from: ajr@example.org, starttls: false, username: null, password_file: null}
    channels:                        # kind: slack | webhook | email; audience: admins | job_user
      - {name: ops-slack, kind: slack, url: "https://hooks.slack.com/...", events: [decision, action],
         min_severity: warning, audience: admins}
      - {name: mail-users, kind: email, audience: job_user, events: [decision]}
      - {name: mail-admins, kind: email, audience: admins, to: [ops@example.org], min_severity: critical}
    dedupe_window_s: 600             # a (dedupe_key, channel, recipient) at most once per window; 0: off
    rate_limit_per_hour: 30          # per (channel, recipient); 0: no limit

Channel defaults: ``events: [all]``, ``min_severity: warning``, ``audience: admins``. Recipients: email
to admins -> ``to``, else :func:`plan`'s ``admins`` (a name without ``@`` is resolved like a job user);
email to job_user -> the event's user via ``users``, then ``email_domain``; a webhook posts once per
event, recipient ``admins`` or the job's user name (in the payload).

Severity (:func:`severity_of`): decision STOP critical; decision REQUEUE, EXCLUDE_AND_REQUEUE warning;
action with ok false critical; drain action ok warning; anomaly STRAGGLER, PERF_DROP warning;
node_health BAD warning; notification its ``data.severity`` (missing or unknown: warning); anything
else info (CRASH and HANG anomalies too: the decision that follows carries their severity).

Use: per stored event, ``for n in plan(...)``: ``Throttle.admit(n)``, persist ``n`` with the answer,
:func:`send` the admitted ones; on :class:`DeliveryError` retry after ``retry_delay_s(attempts)`` up
to :data:`MAX_ATTEMPTS` (give up at once when ``permanent``). At start, ``Throttle.seed`` with the last
hour's admitted notifications. :func:`send` (in :mod:`.senders`, re-exported here) is the registry's only sender; the rest is pure.
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping


from ajr_supervisor.errors import AjrError
from ajr_supervisor.events import EVENT_TYPES
from ajr_supervisor.registry.settings import SettingsError

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")
KINDS = ("slack", "webhook", "email")
AUDIENCES = ("admins", "job_user")
THROTTLE_ANSWERS = ("send", "duplicate", "rate_limited")
MAX_ATTEMPTS = 8          # delivery tries: 30 s, 1, 2, 4, 8, 16, 32 min apart (about 1 h in all)
RETRY_BASE_S = 30.0
RETRY_CAP_S = 3600.0
HOUR_S = 3600.0
_SECTION_KEYS = ("email_domain", "users", "smtp", "channels", "dedupe_window_s", "rate_limit_per_hour")
_CHANNEL_KEYS = ("name", "kind", "url", "events", "min_severity", "audience", "to")
_SMTP_KEYS = ("host", "port", "from", "starttls", "username", "password_file")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_URL = re.compile(r"(https?)://([^/\s?#]+)\S*")


class DeliveryError(AjrError):
    """A notification did not arrive; ``permanent``: retrying cannot help (HTTP 404, SMTP 550)."""

    def __init__(self, message: str, hint: str | None = None, *, permanent: bool = False) -> None:
        super().__init__(message, hint)
        self.permanent = permanent


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 25
    from_addr: str = "ajr@localhost"   # YAML key: from
    starttls: bool = False
    username: str | None = None
    password_file: str | None = None   # read at each send, so a rotated password is picked up


@dataclass(frozen=True)
class Channel:
    name: str
    kind: str                          # slack | webhook | email
    url: str | None = None             # slack and webhook only
    events: tuple[str, ...] = ("all",)
    min_severity: str = "warning"
    audience: str = "admins"           # admins | job_user
    to: tuple[str, ...] = ()           # email to admins only; empty: plan()'s admins
    email_domain: str | None = None    # from the section: user name -> address
    users: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class NotifySettings:
    channels: tuple[Channel, ...] = ()
    smtp: SmtpSettings = SmtpSettings()
    dedupe_window_s: float = 600.0
    rate_limit_per_hour: int = 30


@dataclass(frozen=True)
class Notification:
    channel: str
    kind: str
    recipient: str                     # an email address, or "admins" / the user name for webhooks
    subject: str
    body: str
    severity: str
    dedupe_key: str
    event_id: str
    event_type: str = ""
    payload: dict = field(default_factory=dict, hash=False)   # what a webhook posts ({} for email)


# ---- config ---------------------------------------------------------------------------------------

def load_channels(section: Mapping[str, Any] | None) -> list[Channel]:
    """The channels of the ``notifications:`` section (``Settings.notifications``; None: none)."""
    return list(load_notify_settings(section).channels)


def load_notify_settings(section: Mapping[str, Any] | None) -> NotifySettings:
    """All of ``notifications:``; a :class:`SettingsError` naming the key (and channel) when wrong."""
    if section is None:
        return NotifySettings()
    _keys(section, _SECTION_KEYS, "notifications")
    domain = _typed(section.get("email_domain"), str, "notifications.email_domain", "example.org")
    users = section.get("users") or {}
    if not isinstance(users, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and _EMAIL.fullmatch(v)
                                                 for k, v in users.items()):
        raise SettingsError("notifications.users is not a map of user name to email address",
                            "write e.g. 'users: {alice: alice@example.org}'")
    raw = section.get("channels") or []
    if not isinstance(raw, list):
        raise SettingsError("notifications.channels is not a list", "write one '- {name: ..., kind: ...}' each")
    channels = tuple(_channel(c, i, domain, dict(users)) for i, c in enumerate(raw))
    names = [c.name for c in channels]
    for name in names:
        if names.count(name) > 1:
            raise SettingsError(f"notifications.channels: the name {name!r} is used twice", "give each its own")
    window = _typed(section.get("dedupe_window_s", 600), float, "notifications.dedupe_window_s", "600 (0: off)")
    limit = _typed(section.get("rate_limit_per_hour", 30), int, "notifications.rate_limit_per_hour", "30 (0: none)")
    return NotifySettings(channels, _smtp(section.get("smtp"), "notifications.smtp"), float(window or 0), limit or 0)


def _channel(raw: Any, index: int, domain: str | None, users: dict[str, str]) -> Channel:
    label = f"notifications.channels[{index}]"
    _keys(raw, _CHANNEL_KEYS, label)
    name = _typed(raw.get("name"), str, f"{label}.name", "ops-slack")
    if not name:
        raise SettingsError(f"{label} has no name", "add e.g. 'name: ops-slack'")
    label = f"{label} ({name})"
    kind = _choice(raw.get("kind"), KINDS, f"{label}.kind")
    audience = _choice(raw.get("audience", "admins"), AUDIENCES, f"{label}.audience")
    min_severity = _choice(raw.get("min_severity", "warning"), SEVERITIES, f"{label}.min_severity")
    events = raw.get("events", ["all"])
    events = [events] if isinstance(events, str) else events
    if not isinstance(events, list) or not events or any(e not in EVENT_TYPES + ("all",) for e in events):
        raise SettingsError(f"{label}.events must list event types", f"use all, or some of {', '.join(EVENT_TYPES)}")
    url, to = raw.get("url"), raw.get("to") or []
    to = [to] if isinstance(to, str) else to
    if kind == "email":
        if url is not None:
            raise SettingsError(f"{label}: an email channel takes no url", "remove url, or make it slack or webhook")
        if not isinstance(to, list) or not all(isinstance(a, str) and _EMAIL.fullmatch(a) for a in to):
            raise SettingsError(f"{label}.to is not a list of email addresses", "write e.g. 'to: [ops@example.org]'")
        if to and audience == "job_user":
            raise SettingsError(f"{label}: 'to' is for audience admins", "remove 'to', or set 'audience: admins'")
        if audience == "job_user" and not (domain or users):
            raise SettingsError(f"{label}: audience job_user needs notifications.email_domain or .users",
                                "set e.g. 'email_domain: example.org'")
    elif not isinstance(url, str) or not _URL.fullmatch(url.strip()):
        raise SettingsError(f"{label}.url is missing or not an http(s) URL", "set the webhook's URL")
    elif to:
        raise SettingsError(f"{label}: 'to' is for email channels", "remove it; a webhook posts once per event")
    return Channel(name=name, kind=kind, url=url.strip() if url else None, events=tuple(events),
                   min_severity=min_severity, audience=audience, to=tuple(to), email_domain=domain, users=users)


def _smtp(raw: Any, label: str) -> SmtpSettings:
    if raw is None:
        return SmtpSettings()
    _keys(raw, _SMTP_KEYS, label)
    port = raw.get("port", 25)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SettingsError(f"{label}.port is not a port number", "set e.g. 'port: 25' (587 with starttls)")
    sender = raw.get("from", "ajr@localhost")
    if not isinstance(sender, str) or not _EMAIL.fullmatch(sender):
        raise SettingsError(f"{label}.from is not an email address", "set e.g. 'from: ajr@example.org'")
    username = _typed(raw.get("username"), str, f"{label}.username", "ajr")
    password_file = _typed(raw.get("password_file"), str, f"{label}.password_file", "/etc/ajr/smtp-password")
    if bool(username) != bool(password_file):
        raise SettingsError(f"{label}: username and password_file go together", "set both (to log in) or neither")
    return SmtpSettings(host=_typed(raw.get("host"), str, f"{label}.host", "localhost") or "localhost",
                        port=port, from_addr=sender, username=username, password_file=password_file,
                        starttls=bool(_typed(raw.get("starttls", False), bool, f"{label}.starttls", "false")))


def _keys(raw: Any, allowed: tuple[str, ...], label: str) -> None:
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{label} is not a mapping", f"write keys under it: {', '.join(allowed)}")
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{label}: unknown key {key!r}", f"valid keys: {', '.join(allowed)}{guess}")


def _choice(value: Any, choices: tuple[str, ...], label: str) -> str:
    if value not in choices:
        raise SettingsError(f"{label} is {value!r}, not one of {', '.join(choices)}", "set one of them")
    return value


def _typed(value: Any, kind: type, label: str, example: str) -> Any:
    """``value`` checked (None passes): a string (stripped, "" -> None), a bool, or a number >= 0."""
    if value is None or (kind is str and isinstance(value, str)) or (kind is bool and isinstance(value, bool)):
        return (value.strip() or None) if isinstance(value, str) else value
    if kind in (int, float) and not isinstance(value, bool) and isinstance(value, (int, kind)) \
            and 0 <= value < float("inf"):
        return value
    what = {str: "a string", bool: "a boolean", int: "a whole number, 0 or more", float: "a number, 0 or more"}
    raise SettingsError(f"{label} is not {what[kind]}", f"set e.g. {example}")


# ---- severity and planning (pure) -----------------------------------------------------------------

def severity_of(event: Mapping[str, Any]) -> str:
    """info | warning | critical, by the table in the module docstring."""
    kind, data = event.get("type"), event.get("data") or {}
    if kind == "decision":
        return {"STOP": "critical", "REQUEUE": "warning", "EXCLUDE_AND_REQUEUE": "warning"}.get(data.get("verdict"),
                                                                                                "info")
    if kind == "action":
        return "critical" if data.get("ok") is False else "warning" if data.get("action") == "drain" else "info"
    if (kind, data.get("anomaly")) in (("anomaly", "STRAGGLER"), ("anomaly", "PERF_DROP")) \
            or (kind, data.get("state")) == ("node_health", "BAD"):
        return "warning"
    if kind == "notification":
        return data.get("severity") if data.get("severity") in SEVERITIES else "warning"
    return "info"


def dedupe_key(event: Mapping[str, Any]) -> str:
    """The same for one happening reported twice (supervisor and epilog), else different."""
    kind, d = event.get("type"), event.get("data") or {}
    if kind == "node_health":   # one alert per window for a node, whichever jobs saw it
        return f"{event.get('cluster')}/node/{d.get('node')}/{d.get('state')}"
    what = {"decision": lambda: d.get("verdict"), "action": lambda: f"{d.get('action')}/{bool(d.get('ok'))}",
            "anomaly": lambda: f"{d.get('anomaly')}/{d.get('component')}", "attribution": lambda: d.get("component"),
            "attempt_ended": lambda: bool(d.get("failed")), "notification": lambda: str(d.get("message"))[:120],
            "job_seen": lambda: "", "attempt_started": lambda: ""}.get(kind, lambda: event.get("id"))
    return f"{event.get('cluster')}/{event.get('job_id')}/{event.get('attempt')}/{kind}/{what()}"


def plan(event: Mapping[str, Any], channels: Iterable[Channel], *, admins: Iterable[str] = ()) -> list[Notification]:
    """The notifications ``event`` causes, per channel by event type, min_severity and audience."""
    severity, key, admins = severity_of(event), dedupe_key(event), list(admins)
    subject, body = _subject(event, severity), _body(event, severity)
    out = []
    for ch in channels:
        if ("all" not in ch.events and event.get("type") not in ch.events) \
                or SEVERITIES.index(severity) < SEVERITIES.index(ch.min_severity):
            continue
        for to in _recipients(event, ch, admins):
            payload = {} if ch.kind == "email" else {"text": f"{subject}\n{body}"} if ch.kind == "slack" else \
                {"summary": subject, "text": body, "severity": severity, "channel": ch.name, "recipient": to,
                 "dedupe_key": key, "event": dict(event)}
            out.append(Notification(ch.name, ch.kind, to, subject, body, severity, key, str(event.get("id", "")),
                                    str(event.get("type", "")), payload))
    return out


def _recipients(event: Mapping[str, Any], ch: Channel, admins: list[str]) -> list[str]:
    if ch.audience == "admins" and ch.kind != "email":
        return ["admins"]
    names = list(ch.to or admins) if ch.audience == "admins" else [event.get("user") or ""]
    if ch.kind != "email":
        return [n for n in names if n]
    found = [(n, n if "@" in n else ch.users.get(n) or (f"{n}@{ch.email_domain}" if n and ch.email_domain else ""))
             for n in names]
    for name, address in found:
        if not address:
            log.debug("channel %s: no email address for %r (event %s)", ch.name, name, event.get("id"))
    return [address for _, address in found if address]


def summary(event: Mapping[str, Any]) -> str:
    """One line: what happened."""
    kind, d = event.get("type"), event.get("data") or {}
    text = {
        "decision": lambda: f"decision {d.get('verdict')}: {d.get('reason', '')}",
        "action": lambda: f"action {d.get('action')} {'done' if d.get('ok') else 'FAILED'}"
                          f"{' (dry run)' if d.get('dry_run') else ''}: {d.get('error') or d.get('detail') or ''}",
        "anomaly": lambda: f"{d.get('anomaly')} ({d.get('component')}): {d.get('reason', '')}",
        "attribution": lambda: f"attributed to {d.get('component')} (confidence {d.get('confidence')})",
        "node_health": lambda: f"node {d.get('node')} is {d.get('state')}",
        "notification": lambda: str(d.get("message", "")),
        "attempt_ended": lambda: f"attempt ended: {d.get('end_reason')}, exit code {d.get('exit_code')}",
        "attempt_started": lambda: f"attempt started on {_join(d.get('nodes'))}",
        "job_seen": lambda: "job enrolled",
        "checkpoint": lambda: f"checkpoint at iteration {d.get('iteration')}",
        "progress": lambda: f"iteration {d.get('iteration')}",
    }.get(kind, lambda: str(kind))()
    return " ".join(text.split()).rstrip(": ")[:200]


def _subject(event: Mapping[str, Any], severity: str) -> str:
    attempt = f" attempt {event['attempt']}" if event.get("attempt") is not None else ""
    name = f" ({event['job_name']})" if event.get("job_name") else ""
    return " ".join(f"[ajr {severity}] {event.get('cluster')}/{event.get('job_id')}{name}{attempt}: "
                    f"{summary(event)}".split())[:250]


def _body(event: Mapping[str, Any], severity: str) -> str:
    d = event.get("data") or {}
    when = datetime.fromtimestamp(float(event.get("time") or 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    who = ", ".join(f"{k} {event[k]}" for k in ("user", "partition") if event.get(k))
    evidence = [*map(str, d.get("evidence") or []), *([f"line: {d['line']}"] if d.get("line") else []),
                *([f"rule: {d['rule_id']}"] if d.get("rule_id") else [])]
    decision = d.get("verdict") and d["verdict"] + (f" (exclude {_join(d['exclude'])})" if d.get("exclude") else "")
    rows = [("Job", f"{event.get('cluster')}/{event.get('job_id')} {event.get('job_name') or ''}"
                    + (f" ({who})" if who else "")),
            ("Attempt", event.get("attempt")), ("Severity", severity),
            ("Event", f"{event.get('type')} from {event.get('source', 'supervisor')} at {when} (id {event.get('id')})"),
            ("What", summary(event)), ("Component", d.get("component")), ("Reason", d.get("reason")),
            ("Evidence", "\n           ".join(evidence)), ("Decision", decision),
            ("Nodes", _join(d.get("nodes") or ([d["node"]] if d.get("node") else d.get("exclude")))),
            ("Error", d.get("error"))]
    return "\n".join(f"{k + ':':<11}{v}" for k, v in rows if v not in (None, "")) + "\n"


def _join(items: Any) -> str:
    return ", ".join(map(str, items)) if isinstance(items, (list, tuple)) else str(items or "")


# ---- throttling (pure state) ----------------------------------------------------------------------

class Throttle:
    """Duplicate and rate-limit gate in memory, over an injected clock; the caller persists outcomes."""

    def __init__(self, dedupe_window_s: float = 600.0, rate_limit_per_hour: int = 30,
                 clock: Callable[[], float] = time.time) -> None:
        self.dedupe_window_s, self.rate_limit_per_hour, self.clock = dedupe_window_s, rate_limit_per_hour, clock
        self._last: dict[tuple[str, str, str], float] = {}    # (dedupe_key, channel, recipient) -> admitted at
        self._sent: dict[tuple[str, str], list[float]] = {}    # (channel, recipient) -> admission times
        self._pruned_at = float("-inf")

    def seed(self, recent: Iterable[tuple[str, str, str, float]]) -> None:
        """Remember what was admitted before a restart: (dedupe_key, channel, recipient, sent_at)."""
        for key, channel, recipient, at in sorted(recent, key=lambda r: r[3]):
            self._record(key, channel, recipient, float(at))

    def admit(self, n: Notification) -> str:
        """"send" (and remembered), "duplicate" (same key to them within the window) or "rate_limited"."""
        now = self.clock()
        self._prune(now)
        last = self._last.get((n.dedupe_key, n.channel, n.recipient))
        if last is not None and now - last < self.dedupe_window_s:
            return "duplicate"
        times = self._sent.get((n.channel, n.recipient), ())
        if self.rate_limit_per_hour and sum(1 for t in times if now - t < HOUR_S) >= self.rate_limit_per_hour:
            return "rate_limited"
        self._record(n.dedupe_key, n.channel, n.recipient, now)
        return "send"

    def _record(self, key: str, channel: str, recipient: str, at: float) -> None:
        self._last[(key, channel, recipient)] = max(at, self._last.get((key, channel, recipient), at))
        self._sent.setdefault((channel, recipient), []).append(at)

    def _prune(self, now: float) -> None:   # at most once a minute: forget what no longer counts
        if now - self._pruned_at >= 60:
            self._pruned_at = now
            self._last = {k: t for k, t in self._last.items() if now - t < self.dedupe_window_s}
            self._sent = {k: kept for k, ts in self._sent.items() if (kept := [t for t in ts if now - t < HOUR_S])}


def retry_delay_s(attempts: int) -> float:
    """The wait after ``attempts`` failed tries: 30 s, 60 s, 120 s ... at most 1 h."""
    return min(RETRY_BASE_S * 2 ** max(attempts - 1, 0), RETRY_CAP_S)


# The senders (the only code that touches the outside world) live in .senders.
from ajr_supervisor.registry.senders import redact_url, send  # noqa: E402

__all__ = ["AUDIENCES", "KINDS", "MAX_ATTEMPTS", "SEVERITIES", "Channel", "DeliveryError", "Notification",
           "NotifySettings", "SmtpSettings", "Throttle", "dedupe_key", "load_channels", "load_notify_settings",
           "plan", "redact_url", "retry_delay_s", "send", "severity_of", "summary"]
