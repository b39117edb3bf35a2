"""Pattern rules: which log line means what, and which lines report a saved checkpoint.

Rules live in YAML files (the packaged default ``data/rules.yaml``, then any site files in order; a
later rule with the same id replaces the earlier one, ``disabled: true`` removes it). Every mistake
in a rule file is a :class:`RuleError` naming the file and the rule.

Matching is pure, fast and always means ``re.search(pattern, line, re.IGNORECASE)``. Two engines find
the candidate rules; the rules' own Python regexes then decide, so both give the same answers:

- ``python`` (always there): every pattern is reduced to literals one of which any match contains.
  One line costs a lower() and a few substring tests; a block of lines costs a lower() of the block
  and one ``bytes.find`` pass per *anchor* (a few substrings that together cover all literals), and
  only the lines holding an anchor are matched line by line.
- ``hyperscan`` (when the optional ``hyperscan`` module imports): every pattern is translated into a
  hyperscan expression that matches whatever the Python regex matches, and perhaps more (see
  :func:`_hs_expression`), all compiled into one database; one scan of a block finds the candidate
  lines. A pattern it cannot take (a lookaround, say) falls back to the python engine's literals.

Lines of a block are split at ``\\n`` only; bytes are decoded as UTF-8 with ``errors="replace"``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml


from .errors import UsageError
from .types import Action, Anomaly, CheckpointMatch, Component, RuleMatch, Trigger

from .matching import _HyperscanMatcher, _RegexMatcher, _combine, _hs

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
ENGINES = ("auto", "hyperscan", "python")
BLOCK_SIZE = 16 << 20  # bytes read at a time by scan_file and count_matching_lines


def hyperscan_available() -> bool:
    """Whether the ``hyperscan`` module imported (``engine="auto"`` then uses it)."""
    return _hs is not None


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


class RuleSet:
    """The loaded rules and checkpoint patterns, ready to match lines (text without the rank prefix)."""

    def __init__(self, rules: Iterable[Rule] = (), checkpoint_patterns: Iterable[str] = (),
                 sources: Iterable[str] = (), engine: str = "auto") -> None:
        self.engine: str = _resolve_engine(engine)
        """The engine that finds candidate rules: ``"hyperscan"`` or ``"python"`` (same answers)."""
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.checkpoint_patterns: tuple[str, ...] = tuple(dict.fromkeys(checkpoint_patterns))
        self.sources: tuple[str, ...] = tuple(sources)
        self._by_id = {rule.id: rule for rule in self.rules}
        if len(self._by_id) != len(self.rules):
            raise RuleError("duplicate rule ids in one rule set", "give every rule its own id")
        order = sorted(range(len(self.rules)), key=lambda i: (-self.rules[i].priority, i))
        self._results = [self.rules[i].to_match() for i in order]
        groups = [self.rules[i].patterns for i in order]
        self._matcher = _HyperscanMatcher(groups) if self.engine == "hyperscan" else _RegexMatcher(groups)
        self._checkpoints = _RegexMatcher([[p] for p in self.checkpoint_patterns])
        self._iteration = [re.compile(p, _FLAGS) for p in ITERATION_PATTERNS]

    @classmethod
    def load(cls, extra_files: Sequence[Path | str] = (), extra_checkpoint_patterns: Sequence[str] = (),
             include_default: bool = True, engine: str = "auto") -> RuleSet:
        """The packaged rules (unless ``include_default`` is false), then each extra file in order.

        ``engine``: ``"auto"`` (hyperscan when it imports, else python), ``"hyperscan"`` or ``"python"``.
        """
        engine = _resolve_engine(engine)  # a wrong engine is reported before the files are read
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
        return cls(rules.values(), checkpoints, [str(p) for p in paths], engine)

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

    def scan_text(self, text: str | bytes) -> list[tuple[int, RuleMatch]]:
        """Every line of ``text`` that a rule matches, as (1-based line number, :meth:`match` of it).

        Lines are split at ``\\n`` (nothing else); bytes are decoded as UTF-8 with
        ``errors="replace"``. One pass over the whole text finds the candidate lines, so this is much
        faster than calling :meth:`match` line by line, with the same answers.
        """
        if isinstance(text, str):
            return list(self._scan_buffer(text.encode("utf-8", "surrogatepass"), "surrogatepass"))
        return list(self._scan_buffer(bytes(text), "replace"))

    def scan_file(self, path: Path | str, block_size: int = BLOCK_SIZE) -> Iterator[tuple[int, RuleMatch]]:
        """:meth:`scan_text` of a file, read in blocks of about ``block_size`` bytes."""
        base = 0
        for block in _blocks(path, block_size):
            for number, found in self._scan_buffer(block, "replace"):
                yield base + number, found
            base += block.count(b"\n")

    def count_matching_lines(self, path: Path | str, block_size: int = BLOCK_SIZE) -> int:
        """How many lines of a file some rule matches (what ``grep -c`` counts for the rules)."""
        return sum(1 for block in _blocks(path, block_size) for _ in self._matching_starts(block, "replace"))

    def _matching_starts(self, buf: bytes, errors: str) -> Iterator[tuple[int, int]]:
        """(start offset, best group) of every line of ``buf`` that a rule matches, in order."""
        starts = self._matcher.candidate_starts(buf)
        if starts is None:  # some pattern needs no literal: every line is a candidate
            starts = [0] + [at + 1 for at in _newlines(buf)]
        find = buf.find
        for start in sorted(starts):
            end = find(b"\n", start)
            line = buf[start:end if end >= 0 else len(buf)].decode("utf-8", errors)
            best = next(self._matcher.matching(line), None)
            if best is not None:
                yield start, best

    def candidate_starts(self, buf: bytes) -> set[int] | None:
        """Start offsets of the lines of ``buf`` that a rule or a checkpoint pattern may match
        (a superset; None: every line may). One pass over the block, no per-line work."""
        rules = self._matcher.candidate_starts(buf)
        checkpoints = self._checkpoints.candidate_starts(buf) if rules is not None else None
        return None if checkpoints is None else rules | checkpoints

    @property
    def uses_hyperscan(self) -> bool:
        return isinstance(self._matcher, _HyperscanMatcher)

    def anchor_literals(self) -> tuple[bytes, ...] | None:
        """Lowercase substrings one of which every line (or joined fragment) a rule matches holds;
        None when some rule needs no literal."""
        exact = self._matcher._exact if isinstance(self._matcher, _HyperscanMatcher) else self._matcher
        return None if exact._always else exact.anchors

    def _scan_buffer(self, buf: bytes, errors: str) -> Iterator[tuple[int, RuleMatch]]:
        number, previous = 1, 0
        for start, best in self._matching_starts(buf, errors):
            number += buf.count(b"\n", previous, start)
            previous = start
            yield number, self._results[best]

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


def _resolve_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise RuleError(f"unknown matching engine {engine!r}", f"use one of {', '.join(ENGINES)}")
    if engine == "hyperscan" and _hs is None:
        raise RuleError("matching engine 'hyperscan' asked for, but the hyperscan module is not installed",
                        "pip install hyperscan, or use engine auto or python")
    if engine == "auto":
        return "hyperscan" if _hs is not None else "python"
    return engine


def _blocks(path: Path | str, block_size: int) -> Iterator[bytes]:
    """The file in blocks of whole lines (the last may lack its newline), each about ``block_size``."""
    with open(path, "rb", buffering=0) as f:
        carry = b""
        while True:
            chunk = f.read(block_size)
            if not chunk:
                break
            cut = chunk.rfind(b"\n")
            if cut < 0:
                carry += chunk
                continue
            yield carry + chunk[:cut + 1]
            carry = chunk[cut + 1:]
        if carry:
            yield carry


def _newlines(buf: bytes) -> Iterator[int]:
    at = buf.find(b"\n")
    while at >= 0:
        yield at
        at = buf.find(b"\n", at + 1)


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
