"""The registry service's config: defaults -> YAML file -> command-line overrides.

The YAML keys are the :class:`Settings` field names. An unknown key, a wrong type or a bad value is a
:class:`SettingsError` whose one line names the file and the key, says what is wrong and lists the
valid keys where that helps. Reading the file is this module's only contact with the outside world.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping


from ajr_supervisor.errors import UsageError
from ajr_supervisor.yamlfile import read_mapping

DEFAULT_SETTINGS_PATH = Path("/etc/ajr/registry.yaml")
DEFAULT_DB = "/var/lib/ajr/registry.db"
SUCCESS_POINTS = ("checkpoint", "first_step")    # registry.kpi's


class SettingsError(UsageError):
    """The registry config (file or option) is wrong; the message names the key."""


@dataclass(frozen=True)
class Settings:
    """What ``ajr registry serve`` runs with; field names are the YAML keys, names say the unit."""

    db: str = DEFAULT_DB                 # a SQLite file path, sqlite:///PATH or postgresql+psycopg://...
    host: str = "127.0.0.1"
    port: int = 8787
    held_timeout_s: float = 600.0        # a job requeue-held by ajr longer than this is released
    watchdog_interval_s: float = 30.0
    metrics_open: bool = False           # /metrics readable without a token
    docs_open: bool = True               # /docs and /openapi.json readable without a token (no data)
    admins: tuple[str, ...] = ()         # emails or names that get admin notifications
    notifications: Any = None            # channels, parsed by registry.notify.load_channels
    delivery_interval_s: float = 5.0
    kpi_success_at: str = "checkpoint"   # what counts as productive time (registry.kpi)
    lemon_min_failures: int = 3
    lemon_min_jobs: int = 2
    reputation_half_life_s: float = 7 * 86400.0
    token_cache_s: float = 2.0           # a valid token is re-checked at most this often (revocation delay)
    metrics_cache_s: float = 5.0         # /metrics and node reputation are recomputed at most this often
    slurm_timeout_s: float = 30.0
    slurm_confs: Mapping[str, str] = field(default_factory=dict)   # cluster -> slurm.conf; {}: one Slurm
    dry_run: bool = False                # actions and the watchdog log "would run" and change nothing

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _checked(f.name, value, f"{f.name}={value!r}"))
        if self.kpi_success_at not in SUCCESS_POINTS:
            raise SettingsError(f"kpi_success_at={self.kpi_success_at!r} is not one of {', '.join(SUCCESS_POINTS)}",
                                "set checkpoint (a restart counts from its first checkpoint) or first_step")
        from ajr_supervisor.registry.notify import load_notify_settings   # checks the section, names the key

        load_notify_settings(self.notifications)

    def with_overrides(self, **values: Any) -> "Settings":
        """A copy with the options given (``None`` = not given, what click passes)."""
        given = {k: v for k, v in values.items() if v is not None}
        for key in given:
            if key not in _KINDS:
                raise SettingsError(f"unknown setting {key!r}", valid_keys_hint(key))
        return replace(self, **given)


_KINDS: dict[str, str] = {
    "db": "str", "host": "str", "port": "port", "held_timeout_s": "seconds", "watchdog_interval_s": "seconds",
    "metrics_open": "bool", "docs_open": "bool", "admins": "list", "notifications": "any",
    "delivery_interval_s": "seconds", "kpi_success_at": "str", "lemon_min_failures": "count",
    "lemon_min_jobs": "count", "reputation_half_life_s": "seconds", "metrics_cache_s": "seconds0", "token_cache_s": "seconds0",
    "slurm_timeout_s": "seconds", "slurm_confs": "map", "dry_run": "bool",
}
KEYS = tuple(sorted(_KINDS))


def valid_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"valid keys: {', '.join(KEYS)}{guess}"


def _checked(name: str, value: Any, label: str) -> Any:
    kind = _KINDS[name]
    if kind == "any":
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{label} is not a non-empty string", "set it as a quoted string")
        return value.strip()
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{label} is not a boolean", "set true or false")
        return value
    if kind in ("port", "count"):
        low, high = (1, 65535) if kind == "port" else (1, 10**6)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SettingsError(f"{label} is not a whole number from {low} to {high}", "set e.g. 8787"
                                if kind == "port" else "set a whole number, e.g. 3")
        return value
    if kind in ("seconds", "seconds0"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (kind == "seconds" and value == 0):
            need = "greater than 0" if kind == "seconds" else "0 or more"
            raise SettingsError(f"{label} is not a number of seconds {need}", "set e.g. 600")
        return float(value)
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(f"{label} is not a list of strings", "write a YAML list, e.g. [ops@example.org]")
        return tuple(value)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items()):
        raise SettingsError(f"{label} is not a mapping of cluster name to slurm.conf path",
                            "write e.g. {lab: /etc/slurm/slurm.conf}")
    return dict(value)


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Defaults, then the file (``path``, else :data:`DEFAULT_SETTINGS_PATH` when it exists), then
    ``overrides`` (``None`` values ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_file(Path(path), explicit=True)
    elif DEFAULT_SETTINGS_PATH.exists():
        values = read_file(DEFAULT_SETTINGS_PATH, explicit=False)
    try:
        settings = Settings(**values)
    except SettingsError as exc:   # keep the file's name in the message
        raise SettingsError(f"{path or DEFAULT_SETTINGS_PATH}: {exc.message}", exc.hint) from None
    return settings.with_overrides(**overrides)


def read_file(path: Path, *, explicit: bool = True) -> dict[str, Any]:
    """The file's settings, checked key by key (unknown keys are errors)."""
    data = read_mapping(path, error=SettingsError, what="registry config", explicit=explicit, example="port: 8787")
    unknown = sorted(str(k) for k in data if k not in _KINDS)
    if unknown:
        raise SettingsError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
                            valid_keys_hint(unknown[0]))
    values = {}
    for key, raw in data.items():
        if raw is None and _KINDS[key] != "any":
            raise SettingsError(f"{path}: {key} has no value", "give it a value, or remove it to use the default")
        values[key] = _checked(key, raw, f"{path}: {key}={raw!r}")
    return values


def db_url(value: str) -> str:
    """A SQLAlchemy URL from ``db``: a URL stays as given; a path becomes ``sqlite:///ABSPATH``."""
    if "://" in value:
        if value.startswith(("postgresql://", "postgres://")):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite:", "postgresql+psycopg:")):
            raise SettingsError(f"db={value!r}: unsupported database URL",
                                "use a SQLite path, sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return value
    return "sqlite:///" + os.path.abspath(value)
