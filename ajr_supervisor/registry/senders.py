"""Sending one notification: Slack-compatible and generic JSON webhooks (requests) and email
(smtplib). The only code of the notifications that touches the outside world; what to send and to
whom is :mod:`ajr_supervisor.registry.notify`."""

from __future__ import annotations

import email.policy
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import requests

from ajr_supervisor.registry.notify import Channel, DeliveryError, Notification, SmtpSettings

_MAIL_POLICY = email.policy.default.clone(max_line_length=998)   # a subject on one line (RFC 5322 limit)
_URL = re.compile(r"(https?)://([^/\s?#]+)\S*")


def send(n: Notification, channel: Channel, *, smtp: SmtpSettings, timeout_s: float = 10.0) -> None:
    """Deliver ``n`` through ``channel``, or raise :class:`DeliveryError` (one line: channel, recipient, why)."""
    if channel.kind == "email":
        _send_email(n, channel, smtp, timeout_s)
    else:
        _post(n, channel, timeout_s)


def _post(n: Notification, channel: Channel, timeout_s: float) -> None:
    where = f"{channel.name}: {channel.kind} post for {n.recipient} to {redact_url(channel.url or '')}"
    try:
        response = requests.post(channel.url or "", json=n.payload, timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as exc:
        raise DeliveryError(f"{where} failed: {type(exc).__name__}: {_one_line(exc)}") from None
    code = response.status_code
    if not 200 <= code < 300:
        raise DeliveryError(f"{where} failed: HTTP {code} {_one_line(response.text)[:120]}".rstrip(),
                            permanent=400 <= code < 500 and code not in (408, 429))


def _send_email(n: Notification, channel: Channel, smtp: SmtpSettings, timeout_s: float) -> None:
    where = f"{channel.name}: email to {n.recipient} via {smtp.host}:{smtp.port}"
    message = EmailMessage(policy=_MAIL_POLICY)
    for header, value in (("From", smtp.from_addr), ("To", n.recipient), ("Subject", n.subject),
                          ("Date", formatdate(usegmt=True)), ("X-AJR-Severity", n.severity),
                          ("Message-ID", make_msgid("ajr", domain=smtp.from_addr.rpartition("@")[2]))):
        message[header] = value
    message.set_content(n.body)
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s) as client:
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
            if smtp.username:
                client.login(smtp.username, _password(smtp, where))
            client.send_message(message)
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{where} failed: SMTP {exc.smtp_code} {_one_line(exc.smtp_error)}",
                            permanent=exc.smtp_code >= 500) from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"{where} failed: recipient refused: {_one_line(exc.recipients)}", permanent=True) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"{where} failed: {type(exc).__name__}: {_one_line(exc)}") from None


def _password(smtp: SmtpSettings, where: str) -> str:
    try:
        return Path(smtp.password_file or "").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeliveryError(f"{where} failed: cannot read smtp.password_file {smtp.password_file} "
                            f"({type(exc).__name__})", "make it readable by the registry") from None


def redact_url(url: str) -> str:
    """``https://hooks.slack.com/...``: scheme and host only (a webhook's path is its secret)."""
    match = _URL.fullmatch(url.strip())
    return f"{match.group(1)}://{match.group(2)}/..." if match else "(no url)"


def _one_line(value: Any) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:200]
