"""Pattern rules: which log line means what, and which lines report a saved checkpoint.

Rules live in YAML files (the packaged default ``data/rules.yaml``, then any site files in order; a
later rule with the same id replaces the earlier one, ``disabled: true`` removes it). Every mistake
in a rule file is a :class:`RuleError` naming the file and the rule. Matching is pure and fast: the
common line (an iteration line that matches nothing) costs a lower() and a few substring tests, no
regex; :class:`_RegexMatcher` is the one place that knows how patterns are matched, so another
engine (hyperscan) can replace it.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from re import _parser as _sre_parser  # the regex parser (Python >= 3.11), to find required literals

from .errors import UsageError
from .types import Action, Anomaly, CheckpointMatch, Component, RuleMatch, Trigger

DEFAULT_RULES = Path(__file__).resolve().parent / "data" / "rules.yaml"

# How the iteration number is read from a checkpoint line, tried in this order.
ITERATION_PATTERNS = (r"\biteration[: =]+(\d+)", r"\biter(?:ation)?[ _:=]+(\d+)",
                      r"\bglobal_step[ _:=]+(\d+)", r"\bstep[ _:=]+(\d+)")

_FLAGS = re.IGNORECASE
_ID = re.compile(r"[a-z0-9_.-]+\Z")
_BACKREF = re.compile(r"\\[1-9]|\\g<|\(\?P=")
_TOP_KEYS = ("version", "checkpoint_patterns", "rules")
_REQUIRED = ("id", "description", "patterns", "anomaly", "component", "action", "trigger", "examples")
_OPTIONAL = ("node_scope", "priority", "disabled")


class RuleError(UsageError):
    """A rule file (or an extra pattern) that cannot be used as written."""


class NodeScope(str, Enum):
    """How the node a matching line points at is found."""

    RANK = "rank"  # the srun ``-l`` rank prefix of the line -> that rank's node
    NONE = "none"  # the line names no node


@dataclass(frozen=True)
class Rule:
    """One pattern rule; ``source`` is the file that defined it."""

    id: str
    description: str
    patterns: tuple[str, ...]
    anomaly: Anomaly
    component: Component
    action: Action
    trigger: Trigger
    node_scope: NodeScope = NodeScope.RANK
    priority: int = 0
    examples: tuple[str, ...] = ()
    source: str = ""

    def to_match(self) -> RuleMatch:
        return RuleMatch(self.id, self.anomaly, self.component, self.action, self.trigger, self.description)


class _RegexMatcher:
    """Which of several pattern groups match a line; the one place that knows the matching engine.

    Every pattern is reduced to literals one of which any match must contain (lowercase ASCII). A
    line is searched with regexes only when one of those literals is in it, and then only with the
    groups owning a literal found, so the common line (one that matches nothing) costs a lower() and
    a few substring tests. Matching stays exactly ``re.search(pattern, text, re.IGNORECASE)``.
    """

    def __init__(self, groups: Sequence[Sequence[str]]) -> None:
        self._regexes = [_combine(group) for group in groups]
        self._by_literal: dict[str, set[int]] = {}
        self._always: set[int] = set()  # groups with a pattern that needs no literal
        for index, group in enumerate(groups):
            for pattern in group:
                literals = _required_literals(_sre_parser.parse(pattern, _FLAGS).data)
                if literals is None:
                    self._always.add(index)
                for literal in literals or ():
                    self._by_literal.setdefault(literal, set()).add(index)

    def matching(self, text: str) -> Iterator[int]:
        """Indices of the groups matching ``text``, in increasing order."""
        folded = text.lower() if text.isascii() else text.translate(_ASCII_FOLD).lower()
        candidates = {i for literal, owners in self._by_literal.items() if literal in folded for i in owners}
        for index in sorted(candidates | self._always):
            if self._regexes[index].search(text):
                yield index


# Non-ASCII characters that re.IGNORECASE matches with an ASCII letter (checked by a unit test).
_ASCII_FOLD = {0x130: "i", 0x131: "i", 0x17F: "s", 0x212A: "k"}


def _required_literals(items: Sequence[tuple[Any, Any]]) -> set[str] | None:
    """Lowercase ASCII strings one of which every match of the parsed pattern contains (None: unknown)."""
    options: list[set[str]] = []
    run: list[str] = []
    for op, arg in list(items) + [(None, None)]:
        if op is _sre_parser.LITERAL and arg < 128:
            run.append(chr(arg).lower())
            continue
        if run:
            options.append({"".join(run)})
            run = []
        inner: set[str] | None = None
        if op is _sre_parser.SUBPATTERN:
            inner = _required_literals(arg[-1].data)
        elif op is _sre_parser.BRANCH:
            alternatives = [_required_literals(branch.data) for branch in arg[1]]
            inner = set().union(*alternatives) if all(alternatives) else None
        elif op in (_sre_parser.MAX_REPEAT, _sre_parser.MIN_REPEAT) and arg[0] >= 1:
            inner = _required_literals(arg[2].data)
        if inner:
            options.append(inner)
    return max(options, key=lambda o: (min(map(len, o)), -len(o)), default=None)


class RuleSet:
    """The loaded rules and checkpoint patterns, ready to match lines (text without the rank prefix)."""

    def __init__(self, rules: Iterable[Rule] = (), checkpoint_patterns: Iterable[str] = (),
                 sources: Iterable[str] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.checkpoint_patterns: tuple[str, ...] = tuple(dict.fromkeys(checkpoint_patterns))
        self.sources: tuple[str, ...] = tuple(sources)
        self._by_id = {rule.id: rule for rule in self.rules}
        if len(self._by_id) != len(self.rules):
            raise RuleError("duplicate rule ids in one rule set", "give every rule its own id")
        order = sorted(range(len(self.rules)), key=lambda i: (-self.rules[i].priority, i))
        self._results = [self.rules[i].to_match() for i in order]
        self._matcher = _RegexMatcher([self.rules[i].patterns for i in order])
        self._checkpoints = _RegexMatcher([[p] for p in self.checkpoint_patterns])
        self._iteration = [re.compile(p, _FLAGS) for p in ITERATION_PATTERNS]

    @classmethod
    def load(cls, extra_files: Sequence[Path | str] = (), extra_checkpoint_patterns: Sequence[str] = (),
             include_default: bool = True) -> RuleSet:
        """The packaged rules (unless ``include_default`` is false), then each extra file in order."""
        paths = ([DEFAULT_RULES] if include_default else []) + [Path(f) for f in extra_files]
        rules: dict[str, Rule] = {}
        checkpoints: list[str] = []
        for path in paths:
            file_rules, disabled, file_checkpoints = _parse_file(path)
            for rule_id in disabled:
                if rules.pop(rule_id, None) is None:
                    raise RuleError(f"{path}: rule {rule_id!r}: disabled, but no earlier rule file defines it",
                                    "check the id against the default rules (ajr_supervisor/data/rules.yaml)")
            for rule in file_rules:
                rules[rule.id] = rule  # a replaced rule keeps its place in file order
            checkpoints += file_checkpoints
        for pattern in extra_checkpoint_patterns:
            checkpoints.append(_check_pattern(pattern, "extra checkpoint pattern", "checkpoint patterns"))
        return cls(rules.values(), checkpoints, [str(p) for p in paths])

    def get(self, rule_id: str) -> Rule | None:
        """The rule with this id (for its ``node_scope`` and ``priority``), or None."""
        return self._by_id.get(rule_id)

    def match(self, text: str) -> RuleMatch | None:
        """The highest-priority rule matching ``text`` (the first in file order on a tie), or None."""
        for index in self._matcher.matching(text):
            return self._results[index]
        return None

    def match_all(self, text: str) -> list[RuleMatch]:
        """Every rule matching ``text``, best first (the order :meth:`match` decides by)."""
        return [self._results[index] for index in self._matcher.matching(text)]

    def checkpoint(self, text: str) -> CheckpointMatch | None:
        """A checkpoint-saved line: the first pattern it matches and its iteration (None if it names none)."""
        index = next(self._checkpoints.matching(text), None)
        if index is None:
            return None
        pattern = self.checkpoint_patterns[index]
        for regex in self._iteration:
            found = regex.search(text)
            if found:
                return CheckpointMatch(int(found.group(1)), pattern)
        return CheckpointMatch(None, pattern)


def _combine(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), _FLAGS)


def _check_pattern(pattern: Any, where: str, field: str) -> str:
    """Return ``pattern`` if it is a usable regex; the error says what to change otherwise."""
    if not isinstance(pattern, str) or not pattern:
        raise RuleError(f"{where}: {field} must be non-empty strings, got {pattern!r}")
    try:
        regex = re.compile(pattern, _FLAGS)
    except re.error as exc:
        raise RuleError(f"{where}: invalid regex {pattern!r} in {field} ({exc})") from None
    if regex.groupindex or _BACKREF.search(pattern):
        raise RuleError(f"{where}: regex {pattern!r} in {field} uses a named group or a backreference",
                        "use plain or (?:...) groups; patterns are combined into one regex")
    try:
        re.compile(f"x|(?:{pattern})", _FLAGS)
    except re.error as exc:
        raise RuleError(f"{where}: regex {pattern!r} in {field} cannot be combined with others ({exc})",
                        "remove inline flags such as (?i); matching is already case-insensitive") from None
    if regex.search(""):
        raise RuleError(f"{where}: regex {pattern!r} in {field} matches an empty line, so it would match "
                        "every line", "make it require some text")
    return pattern


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key != "<<":
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read rule file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise RuleError(f"{path}: invalid YAML{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: invalid YAML: {exc}") from None


def _parse_file(path: Path) -> tuple[list[Rule], list[str], list[str]]:
    """One rule file -> (rules, ids it disables, checkpoint patterns)."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise RuleError(f"{path}: expected a mapping with 'version: 1' and 'rules:', got "
                        f"{type(data).__name__ if data is not None else 'an empty file'}")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise RuleError(f"{path}: unknown top-level field(s) {', '.join(unknown)}",
                        f"known fields: {', '.join(_TOP_KEYS)}")
    if type(data.get("version")) is not int or data["version"] != 1:
        raise RuleError(f"{path}: unsupported or missing version {data.get('version')!r}", "set 'version: 1'")
    checkpoints = data.get("checkpoint_patterns") or []
    if not isinstance(checkpoints, list):
        raise RuleError(f"{path}: checkpoint_patterns must be a list of regexes")
    checkpoints = [_check_pattern(p, str(path), "checkpoint_patterns") for p in checkpoints]
    entries = data.get("rules") or []
    if not isinstance(entries, list):
        raise RuleError(f"{path}: rules must be a list of rules")
    rules: list[Rule] = []
    disabled: list[str] = []
    for index, entry in enumerate(entries):
        rule_id, rule = _parse_rule(path, index, entry)
        if rule_id in disabled or any(r.id == rule_id for r in rules):
            raise RuleError(f"{path}: rule {rule_id!r}: duplicate id in this file", "give every rule its own id")
        if rule is None:
            disabled.append(rule_id)
        else:
            rules.append(rule)
    return rules, disabled, checkpoints


def _parse_rule(path: Path, index: int, entry: Any) -> tuple[str, Rule | None]:
    """One entry of ``rules:`` -> (id, rule), or (id, None) for ``disabled: true``."""
    if not isinstance(entry, dict):
        raise RuleError(f"{path}: rule #{index + 1}: expected a mapping of fields, got {type(entry).__name__}")
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise RuleError(f"{path}: rule #{index + 1}: missing or invalid id {rule_id!r}",
                        "use lowercase letters, digits, '_', '.' and '-'")
    where = f"{path}: rule {rule_id!r}"
    unknown = sorted(str(k) for k in entry if k not in _REQUIRED + _OPTIONAL)
    if unknown:
        raise RuleError(f"{where}: unknown field(s) {', '.join(unknown)}",
                        f"known fields: {', '.join(_REQUIRED + _OPTIONAL)}")
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise RuleError(f"{where}: disabled must be true or false, got {disabled!r}")
    if disabled:
        return rule_id, None
    missing = [f for f in _REQUIRED if f not in entry]
    if missing:
        raise RuleError(f"{where}: missing required field(s) {', '.join(missing)}")
    description = entry["description"]
    if not isinstance(description, str) or not description.strip():
        raise RuleError(f"{where}: description must be a non-empty string")
    patterns = _string_list(entry["patterns"], where, "patterns")
    examples = _string_list(entry["examples"], where, "examples")
    for pattern in patterns:
        _check_pattern(pattern, where, "patterns")
    priority = entry.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise RuleError(f"{where}: priority must be an integer, got {priority!r}")
    rule = Rule(rule_id, description.strip(), patterns, _enum(Anomaly, entry["anomaly"], where, "anomaly"),
                _enum(Component, entry["component"], where, "component"),
                _enum(Action, entry["action"], where, "action"),
                _enum(Trigger, entry["trigger"], where, "trigger"),
                _enum(NodeScope, entry.get("node_scope", "rank"), where, "node_scope"),
                priority, examples, str(path))
    own = _combine(patterns)
    for example in examples:
        if not own.search(example):
            raise RuleError(f"{where}: example {example!r} does not match any of the rule's patterns",
                            "fix the pattern or the example")
    return rule_id, rule


def _string_list(value: Any, where: str, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RuleError(f"{where}: {field} must be a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)


def _enum(kind: type[Enum], value: Any, where: str, field: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise RuleError(f"{where}: invalid {field} {value!r}", f"use one of {allowed}") from None
