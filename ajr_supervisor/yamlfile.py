"""Read one YAML config file as a mapping, with one-line errors (shared by ``ajr.yaml`` and the
registry's config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ajr_supervisor.errors import UsageError


def read_mapping(path: Path, *, error: type[UsageError], what: str, label: str | None = None,
                 explicit: bool = True, example: str = "hang_timeout_s: 120") -> dict[str, Any]:
    """The file's top-level mapping ({} for an empty file, or a missing one unless ``explicit``).

    Errors are ``error`` (a :class:`UsageError`) naming the file (``label``, default the path):
    not found, unreadable, not UTF-8, not YAML (with line and column), not a mapping."""
    label = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not explicit:
            return {}
        raise error(f"{label}: {what} not found", "create it, or name an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error(f"{path}: cannot read the {what} ({why})", "make it a readable UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise error(f"{path}: not valid YAML{where}: {problem}", "fix the syntax there "
                    "(indent with spaces; quote values containing ': ' or ' #')") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level is a {type(data).__name__}, not a mapping",
                    f"write one 'key: value' per line, e.g. '{example}'")
    return data
