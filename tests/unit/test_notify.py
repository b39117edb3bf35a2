"""registry.notify: channel config, severity, planning, throttling, and real deliveries (local HTTP and SMTP)."""

import email
import email.policy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from ajr_supervisor.events import make_event
from ajr_supervisor.registry import notify
from ajr_supervisor.registry.notify import (Channel, DeliveryError, Notification, SmtpSettings, Throttle,
                                            load_channels, load_notify_settings, plan, severity_of)
from ajr_supervisor.registry.settings import SettingsError

NOW = 1_764_064_000.0
SECTION = {
    "email_domain": "example.org",
    "users": {"bob": "bob@lab.org"},
    "smtp": {"host": "localhost", "port": 25, "from": "ajr@example.org", "starttls": False,
             "username": None, "password_file": None},
    "channels": [
        {"name": "ops-slack", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/secret",
         "events": ["decision", "action"], "min_severity": "warning", "audience": "admins"},
        {"name": "hook", "kind": "webhook", "url": "http://hooks.example/ajr", "events": ["all"],
         "audience": "admins", "min_severity": "info"},
        {"name": "mail-users", "kind": "email", "audience": "job_user", "events": ["decision"]},
        {"name": "mail-admins", "kind": "email", "audience": "admins", "to": ["ops@example.org"],
         "min_severity": "critical"},
    ],
    "dedupe_window_s": 600,
    "rate_limit_per_hour": 30,
}


def event(type_, data=None, **kw):
    base = dict(cluster="lab", job_id="1234", attempt=2, job_name="train", user="alice", partition="gpu",
                when=NOW, source="supervisor")
    base.update(kw)
    return make_event(type_, data=data or {}, **base)


def decision(verdict="EXCLUDE_AND_REQUEUE", **kw):
    return event("decision", {"verdict": verdict, "reason": "Xid 79 on node n3", "exclude": ["n3"],
                              "failure_at": NOW - 5, "by": "supervisor", "component": "GPU"}, **kw)


class FakeClock:
    def __init__(self, t=NOW):
        self.t = t

    def __call__(self):
        return self.t


# ---- config ---------------------------------------------------------------------------------------

def test_full_config_loads_with_defaults_and_addressing():
    settings = load_notify_settings(SECTION)
    assert [c.name for c in settings.channels] == ["ops-slack", "hook", "mail-users", "mail-admins"]
    slack, _, users, admins = settings.channels
    assert slack.events == ("decision", "action") and slack.kind == "slack"
    assert users.email_domain == "example.org" and users.users == {"bob": "bob@lab.org"}
    assert users.min_severity == "warning" and users.url is None
    assert admins.to == ("ops@example.org",)
    assert settings.smtp == SmtpSettings(host="localhost", port=25, from_addr="ajr@example.org")
    assert (settings.dedupe_window_s, settings.rate_limit_per_hour) == (600.0, 30)
    assert load_channels(SECTION) == list(settings.channels)


def test_no_section_means_no_channels():
    assert load_channels(None) == []
    assert load_notify_settings({}).channels == ()
    defaults = load_channels({"channels": [{"name": "h", "kind": "webhook", "url": "http://x"}]})[0]
    assert (defaults.events, defaults.min_severity, defaults.audience) == (("all",), "warning", "admins")


def channel(**kw):
    return {"channels": [{"name": "c1", "kind": "slack", "url": "https://hooks.example/x", **kw}]}


@pytest.mark.parametrize("section, says", [
    ([], "notifications is not a mapping"),
    ({"chanels": []}, "unknown key 'chanels'"),
    ({"channels": {"name": "x"}}, "notifications.channels is not a list"),
    (channel(kind="slak"), "notifications.channels[0] (c1).kind is 'slak', not one of slack, webhook, email"),
    (channel(colour="red"), "notifications.channels[0]: unknown key 'colour'"),
    ({"channels": [{"kind": "slack", "url": "https://x"}]}, "notifications.channels[0] has no name"),
    (channel(url=None), "(c1).url is missing or not an http(s) URL"),
    (channel(url="ftp://x"), "(c1).url is missing or not an http(s) URL"),
    (channel(min_severity="urgent"), "(c1).min_severity is 'urgent'"),
    (channel(events=["decisions"]), "(c1).events must list event types"),
    (channel(events=[]), "(c1).events must list event types"),
    (channel(audience="everyone"), "(c1).audience is 'everyone'"),
    (channel(to=["ops@example.org"]), "(c1): 'to' is for email channels"),
    ({"channels": [{"name": "m", "kind": "email", "url": "http://x"}]}, "(m): an email channel takes no url"),
    ({"channels": [{"name": "m", "kind": "email", "audience": "job_user"}]},
     "(m): audience job_user needs notifications.email_domain"),
    ({"channels": [{"name": "m", "kind": "email", "to": ["not-an-address"]}]}, "(m).to is not a list of email"),
    ({"email_domain": "x.org", "channels": [{"name": "m", "kind": "email", "audience": "job_user", "to": "a@b"}]},
     "(m): 'to' is for audience admins"),
    ({"channels": [{"name": "a", "kind": "webhook", "url": "http://x"}] * 2}, "the name 'a' is used twice"),
    ({"users": {"alice": "alice"}}, "notifications.users is not a map of user name to email address"),
    ({"smtp": {"port": 0}}, "notifications.smtp.port is not a port number"),
    ({"smtp": {"from": "ajr"}}, "notifications.smtp.from is not an email address"),
    ({"smtp": {"starttls": "yes"}}, "notifications.smtp.starttls is not a boolean"),
    ({"smtp": {"username": "ajr"}}, "notifications.smtp: username and password_file go together"),
    ({"smtp": {"hots": "x"}}, "notifications.smtp: unknown key 'hots'"),
    ({"dedupe_window_s": -1}, "notifications.dedupe_window_s is not a number, 0 or more"),
    ({"rate_limit_per_hour": 2.5}, "notifications.rate_limit_per_hour is not a whole number"),
    ({"email_domain": 7}, "notifications.email_domain is not a string"),
])
def test_bad_config_is_one_line_naming_the_key(section, says):
    with pytest.raises(SettingsError) as err:
        load_notify_settings(section)
    assert says in err.value.message
    assert err.value.hint and "\n" not in err.value.one_line()


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(SettingsError) as err:
        load_notify_settings(channel(min_severty="info"))
    assert "did you mean 'min_severity'?" in err.value.hint


# ---- severity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_, data, severity", [
    ("decision", {"verdict": "STOP"}, "critical"),
    ("decision", {"verdict": "REQUEUE"}, "warning"),
    ("decision", {"verdict": "EXCLUDE_AND_REQUEUE"}, "warning"),
    ("decision", {"verdict": "NONE"}, "info"),
    ("action", {"action": "requeuehold", "ok": False, "error": "slurm timeout"}, "critical"),
    ("action", {"action": "requeuehold", "ok": True}, "info"),
    ("action", {"action": "drain", "ok": True}, "warning"),
    ("anomaly", {"anomaly": "STRAGGLER", "component": "GPU"}, "warning"),
    ("anomaly", {"anomaly": "PERF_DROP", "component": "UNKNOWN"}, "warning"),
    ("anomaly", {"anomaly": "CRASH", "component": "GPU"}, "info"),
    ("anomaly", {"anomaly": "HANG", "component": "NETWORK"}, "info"),
    ("node_health", {"node": "n3", "state": "BAD"}, "warning"),
    ("node_health", {"node": "n3", "state": "UNKNOWN"}, "info"),
    ("notification", {"severity": "critical", "message": "breaker open"}, "critical"),
    ("notification", {"severity": "info", "message": "hello"}, "info"),
    ("notification", {"message": "no severity"}, "warning"),
    ("progress", {"iteration": 10}, "info"),
    ("attempt_ended", {"failed": True, "exit_code": 1, "end_reason": "crash"}, "info"),
])
def test_severity_table(type_, data, severity):
    assert severity_of(event(type_, data)) == severity


# ---- planning -------------------------------------------------------------------------------------

def by_channel(notifications):
    return {(n.channel, n.recipient) for n in notifications}


def test_a_warning_decision_goes_to_slack_hook_and_the_user_not_to_critical_mail():
    out = plan(decision(), load_channels(SECTION), admins=["root@example.org"])
    assert by_channel(out) == {("ops-slack", "admins"), ("hook", "admins"), ("mail-users", "alice@example.org")}


def test_a_stop_also_reaches_the_admin_mail_channel_to_list():
    out = plan(decision("STOP"), load_channels(SECTION), admins=["root@example.org"])
    assert ("mail-admins", "ops@example.org") in by_channel(out)


def test_event_filter_and_min_severity():
    channels = load_channels(SECTION)
    progress = event("progress", {"iteration": 5, "first": True})
    assert by_channel(plan(progress, channels)) == {("hook", "admins")}          # only [all] + info
    straggler = event("anomaly", {"anomaly": "STRAGGLER", "component": "GPU", "reason": "n2 slow", "nodes": ["n2"]})
    assert by_channel(plan(straggler, channels)) == {("hook", "admins")}         # slack wants decision/action only
    none = decision("NONE")
    assert by_channel(plan(none, channels)) == {("hook", "admins")}              # info < warning


def test_job_user_addresses_come_from_the_users_map_then_the_domain():
    channels = load_channels(SECTION)
    assert ("mail-users", "bob@lab.org") in by_channel(plan(decision(user="bob"), channels))
    assert not [n for n in plan(decision(user=""), channels) if n.channel == "mail-users"]
    no_domain = load_channels({"users": {"bob": "bob@lab.org"},
                               "channels": [{"name": "m", "kind": "email", "audience": "job_user"}]})
    assert plan(decision(user="alice"), no_domain) == []


def test_admins_without_to_get_the_admins_list_and_names_are_resolved():
    channels = load_channels({"email_domain": "example.org",
                              "channels": [{"name": "m", "kind": "email", "min_severity": "info"}]})
    out = plan(decision(), channels, admins=["root@site.org", "carol"])
    assert [n.recipient for n in out] == ["root@site.org", "carol@example.org"]
    assert plan(decision(), channels, admins=[]) == []


def test_webhook_for_job_user_names_the_user():
    channels = load_channels({"channels": [{"name": "h", "kind": "webhook", "url": "http://x/y",
                                            "audience": "job_user"}]})
    (n,) = plan(decision(), channels)
    assert n.recipient == "alice" and n.payload["recipient"] == "alice"


def test_notification_text_and_payloads():
    ev = decision()
    out = {n.channel: n for n in plan(ev, load_channels(SECTION))}
    slack, hook, mail = out["ops-slack"], out["hook"], out["mail-users"]
    assert slack.subject == ("[ajr warning] lab/1234 (train) attempt 2: decision EXCLUDE_AND_REQUEUE: "
                             "Xid 79 on node n3")
    for text in ("lab/1234 train (user alice, partition gpu)", "Attempt:   2", "Component: GPU",
                 "Decision:  EXCLUDE_AND_REQUEUE (exclude n3)", "Nodes:     n3", "2025-11-25 09:46:40 UTC",
                 f"id {ev['id']}"):
        assert text in slack.body, text
    assert slack.payload == {"text": f"{slack.subject}\n{slack.body}"}
    assert hook.payload["event"] == ev and hook.payload["summary"] == slack.subject
    assert hook.payload["severity"] == "warning" and mail.payload == {}
    assert {n.event_id for n in out.values()} == {ev["id"]} and {n.event_type for n in out.values()} == {"decision"}
    json.dumps(hook.payload)


def test_evidence_lines_in_the_body():
    ev = event("attribution", {"component": "GPU", "nodes": ["n3"], "ranks": [5], "confidence": 0.9,
                               "evidence": ["Xid 79 on n3", "NCCL timeout rank 5"]})
    (n,) = plan(ev, [Channel("h", "webhook", "http://x", min_severity="info")])
    assert "Evidence:  Xid 79 on n3\n           NCCL timeout rank 5" in n.body


def test_dedupe_key_is_the_same_for_supervisor_and_epilog_reports():
    a, b = decision(source="supervisor"), decision(source="epilog", when=NOW + 30)
    assert a["id"] != b["id"]
    assert notify.dedupe_key(a) == notify.dedupe_key(b) == "lab/1234/2/decision/EXCLUDE_AND_REQUEUE"
    assert notify.dedupe_key(decision(attempt=3)) != notify.dedupe_key(a)
    assert notify.dedupe_key(decision("STOP")) != notify.dedupe_key(a)
    bad = [event("node_health", {"node": "n3", "state": "BAD"}, job_id=j) for j in ("1", "2")]
    assert notify.dedupe_key(bad[0]) == notify.dedupe_key(bad[1]) == "lab/node/n3/BAD"
    p1, p2 = event("progress", {"iteration": 1}), event("progress", {"iteration": 1})
    assert notify.dedupe_key(p1) != notify.dedupe_key(p2)


# ---- throttle -------------------------------------------------------------------------------------

def note(key="k1", channel="c", recipient="r"):
    return Notification(channel, "webhook", recipient, "s", "b", "warning", key, "e1")


def test_duplicates_within_the_window_then_sent_again():
    clock = FakeClock()
    t = Throttle(dedupe_window_s=600, rate_limit_per_hour=0, clock=clock)
    assert t.admit(note()) == "send"
    clock.t += 599
    assert t.admit(note()) == "duplicate"
    assert t.admit(note(recipient="other")) == "send"
    assert t.admit(note(key="k2")) == "send"
    clock.t += 2
    assert t.admit(note()) == "send"


def test_rate_limit_per_channel_and_recipient_per_hour():
    clock = FakeClock()
    t = Throttle(dedupe_window_s=600, rate_limit_per_hour=3, clock=clock)
    assert [t.admit(note(key=f"k{i}")) for i in range(4)] == ["send", "send", "send", "rate_limited"]
    assert t.admit(note(key="k0")) == "duplicate"                  # a duplicate is not counted
    assert t.admit(note(key="x", recipient="someone-else")) == "send"
    clock.t += 3600
    assert t.admit(note(key="k9")) == "send"


def test_zero_turns_dedupe_and_rate_limit_off():
    t = Throttle(dedupe_window_s=0, rate_limit_per_hour=0, clock=FakeClock())
    assert {t.admit(note()) for _ in range(100)} == {"send"}


def test_seed_keeps_memory_across_a_restart():
    clock = FakeClock()
    t = Throttle(dedupe_window_s=600, rate_limit_per_hour=2, clock=clock)
    t.seed([("k1", "c", "r", NOW - 100), ("k2", "c", "r", NOW - 4000)])
    assert t.admit(note("k1")) == "duplicate"
    assert t.admit(note("k2")) == "send"            # 4000 s ago: outside the window and the hour
    assert t.admit(note("k3")) == "rate_limited"    # k1 (seeded) + k2 = 2 in the last hour
    clock.t += 3600 * 2
    assert t.admit(note("k1")) == "send"            # pruned, then admitted again


def test_retry_backoff_is_exponential_with_a_cap():
    assert [notify.retry_delay_s(n) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert notify.retry_delay_s(0) == 30
    assert sum(notify.retry_delay_s(n) for n in range(1, notify.MAX_ATTEMPTS)) <= 2 * 3600


# ---- real deliveries ------------------------------------------------------------------------------

class Webhook:
    """A local HTTP server that records POSTs and answers with ``status`` / ``answer``."""

    def __init__(self):
        self.requests, self.status, self.answer = [], 200, b"ok"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, self.headers.get("Content-Type"), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.answer)))
                self.end_headers()
                self.wfile.write(outer.answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    server = Webhook()
    yield server
    server.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slack_webhook_receives_the_text(webhook):
    ch = Channel("ops-slack", "slack", f"{webhook.url}/services/T/B/secret")
    (n,) = plan(decision(), [ch])
    notify.send(n, ch, smtp=SmtpSettings())
    ((path, content_type, body),) = webhook.requests
    assert path == "/services/T/B/secret" and content_type == "application/json"
    assert json.loads(body) == {"text": f"{n.subject}\n{n.body}"}


def test_generic_webhook_receives_the_event(webhook):
    ch = Channel("hook", "webhook", f"{webhook.url}/ajr", min_severity="info")
    ev = decision()
    (n,) = plan(ev, [ch])
    webhook.answer = b'{"accepted": true}'
    webhook.status = 202
    notify.send(n, ch, smtp=SmtpSettings())
    ((path, content_type, body),) = webhook.requests
    sent = json.loads(body)
    assert path == "/ajr" and content_type == "application/json"
    assert sent["event"] == ev and sent["dedupe_key"] == n.dedupe_key and sent["recipient"] == "admins"


@pytest.mark.parametrize("status, permanent", [(500, False), (429, False), (404, True)])
def test_a_non_2xx_answer_is_a_delivery_error(webhook, status, permanent):
    ch = Channel("ops-slack", "slack", f"{webhook.url}/services/T/B/secret")
    (n,) = plan(decision(), [ch])
    webhook.status, webhook.answer = status, b"invalid_payload\nmore"
    with pytest.raises(DeliveryError) as err:
        notify.send(n, ch, smtp=SmtpSettings())
    line = err.value.one_line()
    assert line.startswith("ops-slack: slack post for admins to http://127.0.0.1")
    assert f"HTTP {status} invalid_payload more" in line and "secret" not in line and "\n" not in line
    assert err.value.permanent is permanent


def test_an_unreachable_webhook_is_a_delivery_error():
    ch = Channel("hook", "webhook", f"http://127.0.0.1:{free_port()}/x", min_severity="info")
    (n,) = plan(decision(), [ch])
    with pytest.raises(DeliveryError, match=r"^hook: webhook post for admins .* failed: ConnectionError"):
        notify.send(n, ch, smtp=SmtpSettings(), timeout_s=2)


class Mailbox:
    def __init__(self, refuse=()):
        self.messages, self.refuse = [], refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


@pytest.fixture
def smtp_server():
    box = Mailbox(refuse=("nobody@example.org",))
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret")

    controller = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    box.port, box.logins = controller.port, logins
    yield box
    controller.stop()


def mail_channel():
    return load_channels({"email_domain": "example.org", "channels": [
        {"name": "mail-users", "kind": "email", "audience": "job_user"}]})[0]


def test_email_reaches_a_real_smtp_server(smtp_server):
    ch = mail_channel()
    (n,) = plan(decision("STOP"), [ch])
    notify.send(n, ch, smtp=SmtpSettings(host="127.0.0.1", port=smtp_server.port, from_addr="ajr@example.org"))
    ((mail_from, rcpt, content),) = smtp_server.messages
    assert mail_from == "ajr@example.org" and rcpt == ["alice@example.org"]
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "[ajr critical] lab/1234 (train) attempt 2: decision STOP: Xid 79 on node n3"
    assert message["X-AJR-Severity"] == "critical"
    assert message.get_content().replace("\r\n", "\n") == n.body


def test_email_login_with_the_password_file(smtp_server, tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    ch = mail_channel()
    (n,) = plan(decision(), [ch])
    smtp = SmtpSettings(host="127.0.0.1", port=smtp_server.port, from_addr="ajr@example.org", username="ajr",
                        password_file=str(tmp_path / "pw"))
    notify.send(n, ch, smtp=smtp)
    assert smtp_server.logins == [(b"ajr", b"s3cret")] and len(smtp_server.messages) == 1
    with pytest.raises(DeliveryError, match="cannot read smtp.password_file"):
        notify.send(n, ch, smtp=SmtpSettings(host="127.0.0.1", port=smtp_server.port, username="ajr",
                                             password_file=str(tmp_path / "missing")))


def test_a_refused_recipient_is_a_permanent_delivery_error(smtp_server):
    ch = mail_channel()
    (n,) = plan(decision(user="nobody"), [ch])
    with pytest.raises(DeliveryError) as err:
        notify.send(n, ch, smtp=SmtpSettings(host="127.0.0.1", port=smtp_server.port))
    assert err.value.one_line().startswith("mail-users: email to nobody@example.org via 127.0.0.1:")
    assert "550" in err.value.one_line() and err.value.permanent
    assert smtp_server.messages == []


def test_an_unreachable_smtp_port_is_a_delivery_error():
    ch = mail_channel()
    (n,) = plan(decision(), [ch])
    port = free_port()
    with pytest.raises(DeliveryError) as err:
        notify.send(n, ch, smtp=SmtpSettings(host="127.0.0.1", port=port), timeout_s=2)
    line = err.value.one_line()
    assert line.startswith(f"mail-users: email to alice@example.org via 127.0.0.1:{port} failed: ")
    assert "ConnectionRefusedError" in line and not err.value.permanent
