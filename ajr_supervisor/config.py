"""The system config: defaults -> YAML file -> ``AJR_*``/``APS_DRY_RUN`` environment -> CLI overrides.

The YAML keys are the :class:`Config` field names; ``AJR_<FIELD_UPPER>`` sets a field from the
environment (tuples comma-separated). Unknown keys and unknown ``AJR_*`` variables are errors, and
every error is a :class:`ConfigError` whose one line names the source (file and key, or variable),
says what is wrong and how to fix it. Reading the file is the only contact with the outside world.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, NamedTuple


from ajr_supervisor.errors import UsageError
from ajr_supervisor.yamlfile import read_mapping

DEFAULT_CONFIG_PATH = Path("/etc/ajr/ajr.yaml")
#: ``AJR_*`` variables that are not config fields (tools, tests, hooks); never reported as unknown.
NON_CONFIG_ENV = frozenset({"AJR_CONFIG", "AJR_DEBUG", "AJR_LAB_DIR", "AJR_HOOK_LOG", "AJR_KEEP_LAB",
                            "AJR_TEST_LAB_DIR", "AJR_NVML_FAKE", "AJR_REGISTRY_TOKEN", "AJR_EPILOG_AT"})
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class ConfigError(UsageError):
    """The system config (file, environment or option) is wrong; the message names the source."""


@dataclass(frozen=True)
class Config:
    """The supervisor's system settings; field names are the YAML keys, names say the unit."""

    max_requeue_times: int = 10          # system limit; effective limit is min(system, job)
    crash_loop_attempts: int = 3         # stop after this many failed attempts without a new checkpoint
    hang_timeout_s: float = 120.0        # AJR's 2 minutes
    settle_s: float = 1.0                # after a fatal line, collect more lines this long
    stop_grace_s: float = 10.0           # SIGTERM -> SIGKILL grace when stopping the training step
    log_dir: str | None = None           # None: $SLURM_LOG_DIR, else the current directory
    state_dir: str | None = None         # None: "<job WorkDir>/.ajr" (found by both the job and EpilogSlurmctld)
    enroll_partitions: tuple[str, ...] = ()    # jobs here are enrolled without a comment
    checkpoint_patterns: tuple[str, ...] = ()  # extra regexes (case-insensitive) beyond AJR's
    rules_files: tuple[str, ...] = ()    # extra rule files (YAML) beyond the packaged ones
    fast_restart: bool = False           # release requeued jobs with StartTime=now+1 from the epilog
    dry_run: bool = False
    slurm_timeout_s: float = 30.0
    poll_interval_s: float = 0.5
    # True: ajr run adds --kill-on-bad-exit=1. Off by default: srun then drops output still in flight
    # from the dying task (its traceback), and the supervisor ends the step itself, settle_s after
    # srun reports the first failed task.
    srun_kill_on_bad_exit: bool = False
    # Node health: on an anomaly the supervisor probes every node of the allocation (`ajr probe` via
    # srun --overlap) before acting; BAD health blames and excludes a node, UNKNOWN never does.
    probe_on_anomaly: bool = True
    probe_timeout_s: float = 20.0        # the whole srun --overlap probe of all nodes
    nvml_timeout_s: float = 5.0          # each NVML call (a wedged driver hangs NVML)
    kernel_log: str | None = None        # Xid/OOM source: None = journalctl -k; "dmesg"; or a file (%n = node name)
    hook_probe: bool = False             # the node Prolog and Epilog also probe the node and log its health
    # Throughput: a node persistently slower than its peers (per-rank step times) is a straggler;
    # "report" records it, "exclude" excludes the node and requeues. A whole-job drop is reported.
    # "auto" excludes only when the slow node costs more over the rest of the run than a restart
    # (README: "Stragglers"); "report" only records; "exclude" always excludes and requeues.
    straggler_action: str = "auto"
    restart_cost_s: float = 300.0        # queue wait + restart to the first step, when no history says better
    perf_drop_frac: float = 0.10         # throughput below the job's own baseline by this share...
    perf_drop_duration_s: float = 600.0  # ...for this long is a performance drop (reported)
    # Adaptive hang timeout: learn the step cadence; alarm after max(floor, k * p99 step interval).
    # Off: never sooner than hang_timeout_s. On (per job: export AJR_HANG_ADAPTIVE=true): may be sooner.
    hang_adaptive: bool = False
    hang_adaptive_k: float = 5.0
    hang_adaptive_floor_s: float = 30.0
    hang_startup_grace_s: float = 1800.0  # adaptive only: silence allowed before the first step
    hang_quiet_span_max_s: float = 1800.0  # an open checkpoint save / load / validation is not a hang this long
    # The central registry (ajr registry serve): events go to an on-disk outbox first, then there.
    cluster_name: str | None = None      # None: $SLURM_CLUSTER_NAME, else "default"
    registry_url: str | None = None      # e.g. http://registry:8787 ; None: no events are sent
    registry_token_file: str | None = None  # a file holding a "supervisor" token (else $AJR_REGISTRY_TOKEN)
    outbox_dir: str | None = None        # None: "<state_dir>/outbox"
    exclude_lemons: bool = False         # a requeue also excludes the allocation's lemon nodes (registry)
    # Admin mode (EpilogSlurmctld, as SlurmUser): drain the nodes ajr excludes, behind a breaker.
    drain: bool = False
    drain_max_per_hour: int = 2          # at most this many drains by ajr in any hour, cluster-wide
    drain_max_fraction: float = 0.1      # at most this share of a partition drained by ajr (at least 1 node)
    drain_ledger: str | None = None      # None: /var/lib/ajr/drains.json (what ajr drained, and when)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _checked(f.name, value, f"Config {f.name}={value!r}"))

    def log_path(self, env: Mapping[str, str] | None = None) -> Path:
        """Where unified logs go: ``log_dir``, else ``$SLURM_LOG_DIR``, else the current directory."""
        env = os.environ if env is None else env
        return Path(self.log_dir or env.get("SLURM_LOG_DIR") or os.getcwd())

    def state_path(self, work_dir: str | os.PathLike) -> Path:
        """Where job state files go: ``state_dir``, else ``<job WorkDir>/.ajr``.

        The job's WorkDir is known to the supervisor (scontrol) and to EpilogSlurmctld
        (``SLURM_JOB_WORK_DIR``), so both find the file without other shared knowledge.
        """
        return Path(self.state_dir) if self.state_dir else Path(work_dir) / ".ajr"

    def outbox_path(self, work_dir: str | os.PathLike) -> Path:
        """Where undelivered registry events wait: ``outbox_dir``, else ``<state dir>/outbox``."""
        return Path(self.outbox_dir) if self.outbox_dir else self.state_path(work_dir) / "outbox"

    def cluster(self, env: Mapping[str, str] | None = None) -> str:
        env = os.environ if env is None else env
        return self.cluster_name or env.get("SLURM_CLUSTER_NAME") or "default"


CHOICES = {"straggler_action": ("auto", "report", "exclude")}


class _Spec(NamedTuple):
    kind: str            # "int", "float", "bool", "path", "list", "choice" (one of CHOICES[name])
    minimum: float = 0   # ints and floats: the smallest allowed value
    strict: bool = False  # floats: the minimum itself is not allowed
    example: str = ""


_SPECS: dict[str, _Spec] = {
    "max_requeue_times": _Spec("int", 0, example="10"),
    "crash_loop_attempts": _Spec("int", 1, example="3"),
    "hang_timeout_s": _Spec("float", 0, True, "120"),
    "settle_s": _Spec("float", 0, False, "1"),
    "stop_grace_s": _Spec("float", 0, False, "10"),
    "log_dir": _Spec("path"),
    "state_dir": _Spec("path"),
    "enroll_partitions": _Spec("list", example="gpu,batch"),
    "checkpoint_patterns": _Spec("list", example="saved checkpoint"),
    "rules_files": _Spec("list", example="/etc/ajr/rules.d/site.yaml"),
    "fast_restart": _Spec("bool"),
    "dry_run": _Spec("bool"),
    "slurm_timeout_s": _Spec("float", 0, True, "30"),
    "poll_interval_s": _Spec("float", 0, True, "0.5"),
    "srun_kill_on_bad_exit": _Spec("bool"),
    "probe_on_anomaly": _Spec("bool"),
    "probe_timeout_s": _Spec("float", 0, True, "20"),
    "nvml_timeout_s": _Spec("float", 0, True, "5"),
    "kernel_log": _Spec("path"),
    "hook_probe": _Spec("bool"),
    "straggler_action": _Spec("choice", example="auto"),
    "restart_cost_s": _Spec("float", 0, False, "300"),
    "perf_drop_frac": _Spec("float", 0, True, "0.1"),
    "perf_drop_duration_s": _Spec("float", 0, True, "600"),
    "hang_adaptive": _Spec("bool"),
    "hang_adaptive_k": _Spec("float", 0, True, "5"),
    "hang_adaptive_floor_s": _Spec("float", 0, True, "30"),
    "hang_startup_grace_s": _Spec("float", 0, True, "1800"),
    "hang_quiet_span_max_s": _Spec("float", 0, True, "1800"),
    "cluster_name": _Spec("path"),
    "registry_url": _Spec("path"),
    "registry_token_file": _Spec("path"),
    "outbox_dir": _Spec("path"),
    "exclude_lemons": _Spec("bool"),
    "drain": _Spec("bool"),
    "drain_max_per_hour": _Spec("int", 0, example="2"),
    "drain_max_fraction": _Spec("float", 0, True, "0.1"),
    "drain_ledger": _Spec("path"),
}
FIELD_NAMES: tuple[str, ...] = tuple(sorted(_SPECS))
_ENV_NAMES = {f"AJR_{name.upper()}": name for name in FIELD_NAMES}


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> Config:
    """Build the config: defaults, then the file, then the environment, then ``overrides``.

    The file is ``path``, else ``$AJR_CONFIG``, else :data:`DEFAULT_CONFIG_PATH` if it exists.
    ``env`` defaults to ``os.environ``. An override whose value is ``None`` counts as not given
    (what click passes for an option left out).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path), f"{path}", explicit=True))
    elif env.get("AJR_CONFIG"):
        values.update(_read_file(Path(env["AJR_CONFIG"]), f"AJR_CONFIG={env['AJR_CONFIG']!r}",
                                 explicit=True))
    else:
        values.update(_read_file(DEFAULT_CONFIG_PATH, str(DEFAULT_CONFIG_PATH), explicit=False))
    values.update(_from_env(env))
    for key, raw in (overrides or {}).items():
        if key not in _SPECS:
            raise ConfigError(f"unknown option {key!r}", _valid_keys_hint(str(key)))
        if raw is not None:
            values[key] = _converted(key, raw, f"option {key}={raw!r}")
    return Config(**values)


def _read_file(path: Path, label: str, explicit: bool) -> dict[str, Any]:
    data = read_mapping(path, error=ConfigError, what="config file", label=label, explicit=explicit)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in _SPECS:
            raise ConfigError(f"{path}: unknown key {key!r}", _valid_keys_hint(str(key)))
        values[key] = _converted(key, raw, f"{path}: {key}={raw!r}")
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "APS_DRY_RUN" in env:
        values["dry_run"] = _converted("dry_run", env["APS_DRY_RUN"], f"APS_DRY_RUN={env['APS_DRY_RUN']!r}")
    for var in sorted(env):
        if not var.startswith("AJR_") or var in NON_CONFIG_ENV:
            continue
        name = _ENV_NAMES.get(var)
        if name is None:
            close = difflib.get_close_matches(var, list(_ENV_NAMES), n=1)
            guess = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{var} is not an ajr configuration variable",
                              f"unset it or fix its name{guess}; valid: {', '.join(sorted(_ENV_NAMES))}")
        values[name] = _converted(name, env[var], f"{var}={env[var]!r}")
    return values


def _valid_keys_hint(key: str) -> str:
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"valid keys: {', '.join(FIELD_NAMES)}{guess}"


def _converted(name: str, raw: object, label: str) -> Any:
    """Turn text (environment, quoted YAML) into the field's type, then check it."""
    kind, value = _SPECS[name].kind, raw
    if isinstance(raw, str):
        text = raw.strip()
        if kind == "int" and re.fullmatch(r"[+-]?\d+", text):
            value = int(text)
        elif kind == "float":
            value = _number(text)
        elif kind == "bool" and text.lower() in _TRUE | _FALSE:
            value = text.lower() in _TRUE
        elif kind == "list":
            value = split_list(raw)
    elif kind == "bool" and type(raw) is int and raw in (0, 1):
        value = bool(raw)
    elif kind == "path" and isinstance(raw, os.PathLike):
        value = os.fspath(raw)
    return _checked(name, value, label)


def _checked(name: str, value: Any, label: str) -> Any:
    """Check a typed value against its field's spec; return it normalised (tuples, floats, None)."""
    spec = _SPECS[name]
    if value is None and spec.kind != "path":
        raise ConfigError(f"{label} has no value", "give it a value, or remove it to use the default")
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label} is not a whole number", f"set a whole number, e.g. {spec.example}")
        if value < spec.minimum:
            raise ConfigError(f"{label} is {'negative' if spec.minimum == 0 else 'too small'}",
                              f"set a whole number of at least {spec.minimum:g}, e.g. {spec.example}")
    elif spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} is not a number", f"set a number of seconds, e.g. {spec.example}")
        if not math.isfinite(value):
            raise ConfigError(f"{label} is not a finite number",
                              f"set a number of seconds, e.g. {spec.example}")
        if value < 0 or (spec.strict and value <= 0):
            need = "greater than 0" if spec.strict else "0 or more"
            raise ConfigError(f"{label} is {'negative' if value < 0 else 'zero'}",
                              f"set a number of seconds {need}, e.g. {spec.example}")
        value = float(value)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{label} is not a boolean", "set true or false (or yes/no, on/off, 1/0)")
    elif spec.kind == "choice":
        choices = CHOICES[name]
        if not isinstance(value, str) or value.strip() not in choices:
            raise ConfigError(f"{label} is not one of {', '.join(choices)}", f"set one of them, e.g. {spec.example}")
        value = value.strip()
    elif spec.kind == "path":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{label} is not a {'URL' if name == 'registry_url' else 'path'}",
                              "set it as a string, or leave it unset")
        value = value or None
        if name == "registry_url" and value and not re.match(r"https?://[^/\s]+", value):
            raise ConfigError(f"{label} is not an http(s) URL", "set e.g. http://registry.example:8787")
    else:
        value = _checked_list(name, value, label, spec)
    return value


def _checked_list(name: str, value: Any, label: str, spec: _Spec) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{label} is not a list of strings",
                          f"write a YAML list of quoted strings, or {spec.example!r} in the environment")
    if name == "checkpoint_patterns":
        for pattern in value:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(f"{label}: pattern {pattern!r} is not a valid regular expression ({exc})",
                                  "fix it (Python re syntax, matched case-insensitively)") from None
    return tuple(value)


def split_list(text: str) -> tuple[str, ...]:
    """Split ``a,b,c`` into stripped non-empty items; a comma inside ``()``, ``{}``, ``[...]`` or
    after a backslash does not split (so regexes like ``\\d{1,3}`` survive)."""
    items: list[str] = []
    buf: list[str] = []
    depth, in_class, escaped = 0, False, False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch in "({":
            depth += 1
        elif ch in ")}" and depth:
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    items.append("".join(buf))
    return tuple(item.strip() for item in items if item.strip())


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text          # _checked reports it
