"""The stable one-line text format of telemetry records, and its parser.

Every record written by :class:`~ajr_supervisor.telemetry.LoggerBackend` is ONE line::

    [ajr-telemetry] ts=<ISO8601 UTC, ms> rank=<r> event=<kind> key=value key=value ...

for example::

    [ajr-telemetry] ts=2026-11-25T09:00:00.123Z rank=0 event=iteration iteration=100 step_time_ms=812.5 tflops=402.1 TFLOP/s=402.1 loss=2.31
    [ajr-telemetry] ts=2026-11-25T09:00:05.000Z rank=0 event=checkpoint_saved iteration=100 duration_ms=5012.0 path=/ckpt/iter_100 msg="Saved checkpoint to /ckpt/iter_100"

Rules (the supervisor parses these lines; they do not change without a new marker):

- the marker ``[ajr-telemetry]`` may be preceded by anything (srun's ``0: `` rank prefix, a
  ``logging`` prefix); ``ts``, ``rank`` and ``event`` always come first, in that order;
- keys match ``[A-Za-z_][A-Za-z0-9_./-]*`` (``TFLOP/s`` is a key); a value is written bare when it is
  non-empty and holds only printable characters other than space, ``"``, ``\\`` and ``=``;
  otherwise it is double-quoted, with ``\\\\``, ``\\"``, ``\\n``, ``\\r``, ``\\t`` and ``\\uXXXX`` /
  ``\\UXXXXXXXX`` (other non-printable characters) escapes, so a record never spans two lines;
- ``message`` and ``traceback`` of ``error`` records are always quoted;
- booleans are ``true``/``false``, floats are Python's shortest ``repr`` (``nan`` when unknown),
  ``None`` values are left out.

The kinds and their leading fields (more may follow, in this order, e.g. ``span_end`` attributes):

- ``span_start name=<SpanName> span=<id> [parent=<id>]``
- ``span_end name=<SpanName> span=<id> duration_ms=<float> status=ok|error``
- ``iteration iteration=<i> [step_time_ms=] [tflops=] TFLOP/s=<value> [tokens_per_s=]
  [samples_per_s=] [loss=] [lr=]``; ``TFLOP/s`` (per GPU, AJR's throughput marker) is always
  there, ``nan`` when unknown
- ``checkpoint_saved [iteration=<i>] [duration_ms=<f>] path=<p> [size_bytes=] msg="Saved checkpoint
  to <p>"`` (AJR's default checkpoint pattern and its iteration pattern match this line)
- ``event name=<n> key=value ...`` (``name=application`` carries ApplicationMetrics)
- ``error type=<ExcType> message="<quoted>" traceback="<quoted, \\n escapes>" [span=<id>] ...``

:data:`LINE_RE` finds a line (``re.search``) and :func:`parse_line` turns it back into a dict of
strings (``rank`` as an int): values are unquoted but not converted.
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping

MARKER = "[ajr-telemetry]"

#: Finds a telemetry line (use ``LINE_RE.search``): groups ``ts``, ``rank``, ``event`` and ``rest``.
LINE_RE = re.compile(
    r"\[ajr-telemetry\] ts=(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) rank=(?P<rank>\d+)"
    r" event=(?P<event>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>(?: [^\s=]+=(?:\"(?:[^\"\\]|\\.)*\"|[^\s\"]*))*)\s*$")

_PAIR_RE = re.compile(r" (?P<key>[^\s=]+)=(?P<value>\"(?:[^\"\\]|\\.)*\"|[^\s\"]*)")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_./-]")
_NEEDS_QUOTE = re.compile(r"[\s\"\\=]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_UNESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.S)

RESERVED_KEYS = frozenset({"ts", "rank", "event"})


def _escape_char(ch: str) -> str:
    esc = _ESCAPES.get(ch)
    if esc is not None:
        return esc
    if ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def quote(text: str) -> str:
    """``text`` as a line value: bare when safe, else double-quoted with backslash escapes."""
    if text and text.isprintable() and not _NEEDS_QUOTE.search(text):
        return text
    return '"' + "".join(_escape_char(ch) for ch in text) + '"'


def _unescape(match: re.Match[str]) -> str:
    body = match.group(1)
    if len(body) > 1:
        return chr(int(body[1:], 16))
    return _UNESCAPES.get(body, body)


def unquote(value: str) -> str:
    """The inverse of :func:`quote`."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return _UNESCAPE_RE.sub(_unescape, value[1:-1])
    return value


class Quoted(str):
    """A string value that is always written double-quoted (error messages and tracebacks)."""

    __slots__ = ()


def format_value(value: Any) -> str:
    """One value as it appears on a line."""
    if type(value) is Quoted:
        return '"' + "".join(_escape_char(ch) for ch in value) + '"'
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return quote(value if isinstance(value, str) else str(value))


def clean_key(key: str) -> str:
    """``key`` made valid: bad characters become ``_``; reserved names get an ``attr_`` prefix."""
    key = _KEY_BAD.sub("_", key)
    if not key or not (key[0].isascii() and key[0].isalpha() or key[0] == "_"):
        key = "_" + key
    if key in RESERVED_KEYS:
        key = "attr_" + key
    return key


_ts_cache: list[Any] = [-1, ""]


def iso_ms(epoch: float) -> str:
    """``epoch`` seconds as ``2026-11-25T09:00:00.123Z`` (UTC, milliseconds)."""
    ms_total = int(epoch * 1000)
    sec, ms = divmod(ms_total, 1000)
    cache = _ts_cache
    if cache[0] != sec:
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cache[0] = sec
    return f"{cache[1]}.{ms:03d}Z"


def format_line(ts: float, rank: int, kind: str, fields: Mapping[str, Any]) -> str:
    """One record as a line, without the newline. ``None`` values are left out."""
    parts = [f"{MARKER} ts={iso_ms(ts)} rank={rank} event={kind}"]
    append = parts.append
    for key, value in fields.items():
        if value is None:
            continue
        kind_of = type(value)
        if kind_of is float or kind_of is int:  # the common case, kept fast
            append(f"{key}={value!r}")
        elif kind_of is str:
            append(f"{key}={quote(value)}")
        else:
            append(f"{key}={format_value(value)}")
    return " ".join(parts)


def parse_line(line: str) -> dict[str, Any] | None:
    """A telemetry line back as a dict (``ts``, ``rank`` (int), ``event``, then the fields as
    unquoted strings), or None when ``line`` holds no telemetry record."""
    match = LINE_RE.search(line)
    if match is None:
        return None
    out: dict[str, Any] = {"ts": match["ts"], "rank": int(match["rank"]), "event": match["event"]}
    for pair in _PAIR_RE.finditer(match["rest"]):
        out[pair["key"]] = unquote(pair["value"])
    return out
