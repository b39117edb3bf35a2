"""AJR-compatible enrollment: is a job supervised, and with which limits?

NVIDIA AJR enrolls a job through its ``--comment``::

    #SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'

``{"APS": {}}`` alone is enough. Other top-level keys (other tools share the comment field) are
ignored. A job in one of the config's ``enroll_partitions`` is enrolled without a comment.

Strings that hold a number are accepted for the numeric keys (``"max_requeue_times": "3"``), since
shell quoting produces them; anything else that is not a whole number (``"3.5"``, ``3.0``, ``true``)
is an error. ``null`` for any key means "not given" (the default mode, the system limits).
Pure code: no I/O.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ajr_supervisor.errors import UsageError

VALID_KEYS = ("auto_resume_mode", "max_requeue_times", "hang_timeout_s")  # the last is an ajr extension
MODES = ("requeue", "singleton_dependency")   # singleton_dependency is deprecated in AJR but supported
SOURCES = ("comment", "partition")
APS_KEY = "APS"
EXAMPLE = '--comment=\'{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}\''
EXCERPT_CHARS = 20
_MENTIONS_APS = re.compile(r"\baps\b", re.IGNORECASE)
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


class EnrollmentError(UsageError):
    """The job's ``--comment`` tries to enrol it but is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class Enrollment:
    """How a job is enrolled. ``None`` limits mean "use the system config"."""

    mode: str = "requeue"
    max_requeue_times: int | None = None
    hang_timeout_s: float | None = None
    source: str = "comment"   # or "partition"

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.source not in SOURCES:
            raise ValueError(f"bad Enrollment: mode={self.mode!r} source={self.source!r}")

    @property
    def deprecated_mode(self) -> bool:
        """True for AJR's deprecated ``singleton_dependency`` mode (still supported)."""
        return self.mode == "singleton_dependency"


def parse_comment(comment: str) -> Enrollment:
    """Parse a job comment that must enrol the job; raise :class:`EnrollmentError` if it does not."""
    text = _clean(comment)
    if not text:
        raise EnrollmentError("job has no --comment", "enrol it with --comment='{\"APS\": {}}'")
    data = _load_json(text)
    if not isinstance(data, dict):
        raise EnrollmentError(f"job --comment is JSON but not an object (it is {_json_type(data)})",
                              "write an object, e.g. --comment='{\"APS\": {}}'")
    if APS_KEY not in data:
        keys = ", ".join(json.dumps(key) for key in data) or "none"
        near = [key for key in data if key.strip().lower() == "aps"]
        hint = (f'the key is "APS" in upper case: rename {json.dumps(near[0])} to "APS"' if near
                else 'add "APS": {} to it (other keys may stay), e.g. --comment=\'{"APS": {}}\'')
        raise EnrollmentError(f'job --comment has no "APS" key (its keys: {keys})', hint)
    aps = data[APS_KEY]
    if not isinstance(aps, dict):
        raise EnrollmentError(f'"APS" in the job --comment is {_json_type(aps)}, not an object',
                              f'write "APS": {{}} or a full object, e.g. {EXAMPLE}')
    unknown = [key for key in aps if key not in VALID_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], VALID_KEYS, n=1)
        guess = f' (did you mean "{close[0]}"?)' if close else ""
        raise EnrollmentError(
            f'unknown key{"s" if len(unknown) > 1 else ""} {", ".join(json.dumps(k) for k in unknown)} '
            'in "APS" of the job --comment',
            f"valid keys: {', '.join(VALID_KEYS)}{guess}")
    return Enrollment(mode=_mode(aps.get("auto_resume_mode")),
                      max_requeue_times=_max_requeues(aps.get("max_requeue_times")),
                      hang_timeout_s=_hang_timeout(aps.get("hang_timeout_s")),
                      source="comment")


def resolve(comment: str, partition: str, enroll_partitions: Sequence[str]) -> Enrollment | None:
    """The job's enrollment, or ``None`` when it is not enrolled.

    A comment with an ``APS`` key is parsed (errors propagate). Otherwise a job in one of
    ``enroll_partitions`` is enrolled with defaults (``partition`` may be Slurm's comma-separated
    list; any enrolled one counts). A comment that is not JSON, or JSON without an ``APS`` key, is
    someone else's comment and means "not enrolled" - unless it visibly tries to be an enrollment
    (a top-level key ``aps`` in another case, or, when it is not a JSON object, the word ``APS`` in
    any case, e.g. ``{'APS': {}}``): then the mistake is raised so the user learns about it.
    """
    text = _clean(comment)
    wanted = {name.strip() for name in partition.split(",")} & set(enroll_partitions)
    fallback = Enrollment(source="partition") if wanted else None
    if not text:
        return fallback
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        data = None
    if isinstance(data, dict):
        if APS_KEY in data or any(key.strip().lower() == "aps" for key in data):
            return parse_comment(text)   # valid, or raises (e.g. "aps" in lower case)
    elif _MENTIONS_APS.search(text):
        parse_comment(text)   # raises: not a JSON object, but it tries to enrol the job
    return fallback


def effective_max_requeues(system_max: int, enrollment: Enrollment) -> int:
    """AJR's limit: the smaller of the system's and the job's; a job without one gets the system's."""
    if enrollment.max_requeue_times is None:
        return system_max
    return min(system_max, enrollment.max_requeue_times)


def _clean(comment: str | None) -> str:
    text = (comment or "").strip()
    return "" if text == "(null)" else text


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = (f"JSON needs double quotes, e.g. {EXAMPLE}" if "'" in text and '"' not in text
                else f"fix the JSON, e.g. {EXAMPLE}")
        raise EnrollmentError(f"job --comment is not valid JSON at character {exc.pos + 1} ({exc.msg}), "
                              f"near `{_excerpt(text, exc.pos)}` (^ marks the spot)", hint) from None
    except RecursionError:
        raise EnrollmentError("job --comment is JSON nested too deeply",
                              f"simplify it, e.g. {EXAMPLE}") from None


def _excerpt(text: str, pos: int) -> str:
    start, end = max(0, pos - EXCERPT_CHARS), pos + EXCERPT_CHARS
    before = ("..." if start else "") + text[start:pos]
    after = text[pos:end] + ("..." if end < len(text) else "")
    return f"{before}^{after}".replace("\n", "\\n")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _bad(key: str, value: object, problem: str, hint: str) -> EnrollmentError:
    return EnrollmentError(f'"{key}": {json.dumps(value)} in "APS" of the job --comment {problem}', hint)


def _mode(value: object) -> str:
    if value is None:
        return "requeue"
    if isinstance(value, str) and value in MODES:
        return value
    raise _bad("auto_resume_mode", value, "is not a valid mode",
               'use "requeue" (or the deprecated "singleton_dependency")')


def _max_requeues(value: object) -> int | None:
    hint = 'use a whole number of 0 or more, e.g. "max_requeue_times": 10'
    if value is None:
        return None
    number = value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise _bad("max_requeue_times", value, "is not a whole number", hint)
    if number < 0:
        raise _bad("max_requeue_times", value, "is negative", hint)
    return number


def _hang_timeout(value: object) -> float | None:
    hint = 'use a number of seconds greater than 0, e.g. "hang_timeout_s": 120'
    if value is None:
        return None
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise _bad("hang_timeout_s", value, "is not a number", hint)
    if number <= 0:
        raise _bad("hang_timeout_s", value, "is not positive", hint)
    return float(number)
