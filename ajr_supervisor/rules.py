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
import threading
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from re import _parser as _sre_parser  # the regex parser (Python >= 3.11), to find required literals

from .errors import UsageError
from .types import Action, Anomaly, CheckpointMatch, Component, RuleMatch, Trigger

try:  # the optional multi-pattern engine (pip install hyperscan; the "fast" extra)
    import hyperscan as _hs
except Exception:  # ImportError, or a wheel whose native library does not load here  # pragma: no cover
    _hs = None

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


class _RegexMatcher:
    """Which of several pattern groups match a line: the ``python`` engine (and the exact check of both).

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
        self._anchors: tuple[bytes, ...] | None = None

    def matching(self, text: str) -> Iterator[int]:
        """Indices of the groups matching ``text``, in increasing order."""
        folded = text.lower() if text.isascii() else text.translate(_ASCII_FOLD).lower()
        candidates = {i for literal, owners in self._by_literal.items() if literal in folded for i in owners}
        for index in sorted(candidates | self._always):
            if self._regexes[index].search(text):
                yield index

    def search(self, index: int, text: str) -> bool:
        return self._regexes[index].search(text) is not None

    @property
    def anchors(self) -> tuple[bytes, ...]:
        """Few substrings such that every literal contains one of them (see :func:`_anchors`)."""
        if self._anchors is None:
            self._anchors = tuple(a.encode("ascii") for a in _anchors(self._by_literal))
        return self._anchors

    def candidate_starts(self, buf: bytes, folds: bool = True) -> set[int] | None:
        """Start offsets of the lines of ``buf`` that may match (None: every line may).

        ``folds``: also the lines holding a non-ASCII letter that folds to ASCII (``ſ``, ``K``...),
        which ``bytes.lower`` leaves alone.
        """
        if self._always:
            return None
        starts = _anchor_starts(buf.lower(), self.anchors) if self._by_literal else set()
        return starts | _fold_starts(buf) if folds else starts


class _HyperscanMatcher:
    """The same answers as :class:`_RegexMatcher`, with hyperscan finding the candidates.

    Each pattern becomes a hyperscan expression that matches every line the Python regex matches
    (:func:`_hs_expression`); a candidate group is then confirmed with its Python regex. Patterns
    that hyperscan cannot take are left to a :class:`_RegexMatcher` of their own. The databases are
    compiled on first use (a rule set that never matches costs nothing), one scratch per thread.
    """

    def __init__(self, groups: Sequence[Sequence[str]]) -> None:
        self._groups = [tuple(group) for group in groups]
        self._exact = _RegexMatcher(groups)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ready = False

    def _prepare(self) -> None:
        with self._lock:
            if self._ready:
                return
            translated: list[tuple[int, str, bytes]] = []  # (group, pattern, expression)
            leftover: list[tuple[int, str]] = []              # (group, pattern) hyperscan cannot take
            for index, group in enumerate(self._groups):
                for pattern in group:
                    try:
                        translated.append((index, pattern, _hs_expression(pattern).encode("ascii")))
                    except _Untranslatable:
                        leftover.append((index, pattern))
            if translated and _hs_database([e for _, _, e in translated], _HS_BLOCK) is None:
                rejected = [t for t in translated if _hs_database([t[2]], _HS_BLOCK) is None]
                leftover += [(index, pattern) for index, pattern, _ in rejected]
                translated = [t for t in translated if t not in rejected]
            expressions = [e for _, _, e in translated]
            self._owner = [i for i, _, _ in translated]
            self._line_db = _hs_database(expressions, _HS_LINE) if expressions else None
            folds = [b"".join(b"\\x%02x" % byte for byte in seq) for seq in _ASCII_FOLD_UTF8]
            self._block_db = _hs_database(expressions + folds, _HS_BLOCK)  # a fold: a line for re
            self._rest_owner = [i for i, _ in leftover]
            self._rest = _RegexMatcher([[p] for _, p in leftover])
            self._rest_groups = set(self._rest_owner)
            self._ready = True

    def _scratch(self, which: str) -> Any:
        scratch = getattr(self._local, which, None)
        if scratch is None:
            scratch = _hs.Scratch(self._block_db if which == "block" else self._line_db)
            setattr(self._local, which, scratch)
        return scratch

    def matching(self, text: str) -> Iterator[int]:
        """Indices of the groups matching ``text``, in increasing order (as :class:`_RegexMatcher`)."""
        if not self._ready:
            self._prepare()
        if not text.isascii() and any(ch in text for ch in _ASCII_FOLD_CHARS):
            yield from self._exact.matching(text)  # a letter that folds to ASCII: leave it to re
            return
        candidates = set(self._rest_groups)
        if self._line_db is not None:
            owner = self._owner
            self._line_db.scan(text.encode("utf-8", "surrogatepass"), scratch=self._scratch("line"),
                               match_event_handler=lambda i, _f, _t, _fl, _c: candidates.add(owner[i]))
        for index in sorted(candidates):
            if self._exact.search(index, text):
                yield index

    def candidate_starts(self, buf: bytes) -> set[int] | None:
        """Start offsets of the lines of ``buf`` that may match (None: every line may).

        The database also looks for the letters that fold to ASCII (their lines go to ``re``).
        """
        if not self._ready:
            self._prepare()
        starts = self._rest.candidate_starts(buf, folds=False)
        if starts is None:
            return None
        if self._block_db is None:  # hyperscan rejected even the fold letters (it does not)
            return starts | _fold_starts(buf)
        ends: list[int] = []
        self._block_db.scan(buf, scratch=self._scratch("block"),
                            match_event_handler=lambda _i, _f, to, _fl, _c: ends.append(to))
        rfind = buf.rfind
        starts.update(rfind(b"\n", 0, to) + 1 for to in ends)
        return starts


# Non-ASCII characters that re.IGNORECASE matches with an ASCII letter (checked by a unit test).
_ASCII_FOLD = {0x130: "i", 0x131: "i", 0x17F: "s", 0x212A: "k"}
_ASCII_FOLD_CHARS = tuple(chr(c) for c in _ASCII_FOLD)
_ASCII_FOLD_UTF8 = tuple(chr(c).encode("utf-8") for c in _ASCII_FOLD)


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


# ---------------------------------------------------------------- block scanning (both engines)

_ANCHOR_MIN = 5  # shortest anchor cut out of a longer literal: shorter ones recur in normal lines
# Lines every training log is full of. An anchor found in them would make most lines candidates, so
# anchors are chosen among the substrings that do not occur here (a literal itself always may).
_COMMON_LINES = """\
 [2024-04-06 02:59:36] iteration       43/     100 | consumed samples:         5504 | elapsed time per \
iteration (ms): 5444.9 | throughput per GPU (TFLOP/s/GPU): 239.8 | learning rate: 8.600000E-06 | global \
batch size:   128 | lm loss: 1.825991E+00 | loss scale: 1.0 | grad norm: 1.426 | num zeros: 0.0 | \
number of skipped iterations:   0 | number of nan iterations:   0 |
 iteration      100/   10000 | elapsed time per iteration (ms): 1234.5 | learning rate: 1.0E-04 | \
lm loss: 9.5E+00 | loss scale: 65536.0 | params norm: 250.1 | time (ms) | forward-compute: 300.2 | \
backward-compute: 600.3 | optimizer: 20.1 | batch-generator: 1.2 | save-checkpoint: 6193.66
 saving checkpoint at iteration    1000 to /checkpoints/gpt
 successfully saved checkpoint from iteration    1000 to /checkpoints/gpt
node001:12345:23456 [0] NCCL INFO Bootstrap : Using ib0:10.0.0.1<0>
node001:12345:23456 [0] NCCL INFO NET/Plugin : No plugin found (libnccl-net.so), using internal implementation
node001:12345:23456 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>
node001:12345:23456 [0] NCCL INFO Using network IB
node001:12345:23456 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC/read
node001:12345:23456 [0] NCCL INFO Channel 01/0 : 7[7] -> 8[0] [send] via NET/IB/0/GDRDMA
node001:12345:23456 [0] NCCL INFO Trees [0] 1/-1/-1->0->-1 [1] 1/-1/-1->0->-1
node001:12345:23456 [0] NCCL INFO Connected all rings
node001:12345:23456 [0] NCCL INFO comm 0x55d5aa8ca00 rank 0 nranks 16 cudaDev 0 nvmlDev 0 busId 18000 - Init COMPLETE
node001:12345:23456 [0] NCCL INFO Setting affinity for GPU 0 to ffffffff,ffffffff
Epoch 0:  16%|#5        | 7395/45743 [13:13:43<68:36:00,  6.44s/it, loss=0.084, v_num=0, train_loss=0.080]
{'loss': 1.2345, 'grad_norm': 0.987, 'learning_rate': 2e-05, 'epoch': 0.5}
[NeMo I 2024-04-19 21:40:27 indexed_dataset:454]     reading sizes...
[2024-04-19 21:40:27,123] [INFO] [logging.py:96:log_dist] [Rank 0] step=100, skipped=0, lr=[0.0001], mom=[(0.9, 0.95)]
[2024-04-19 21:40:27,123] [INFO] [timer.py:260:stop] epoch=0/micro_step=100/global_step=100, RunningAvgSamplesPerSec=10
"""


def _anchors(literals: Iterable[str], common: str = _COMMON_LINES) -> list[str]:
    """A small set of substrings such that every literal contains one of them (greedy cover).

    Each ``bytes.find`` pass over a block costs about the same, so fewer anchors scan faster; an
    anchor that also occurs in normal lines costs a line check per occurrence, so an anchor is at
    least :data:`_ANCHOR_MIN` characters (or a whole shorter literal), does not occur in
    :data:`_COMMON_LINES` (unless it is a whole literal) and, among those covering the most
    literals, is the longest. E.g. ``"error"`` covers ``"cuda error: "``, ``"ncclsystemerror"``...
    """
    common = common.lower()
    remaining = set(literals)
    chosen: list[str] = []
    while remaining:
        covers: dict[str, int] = {}
        for literal in remaining:
            shortest = min(_ANCHOR_MIN, len(literal))
            subs = {literal[i:j] for i in range(len(literal)) for j in range(i + shortest, len(literal) + 1)}
            for sub in subs:
                if sub == literal or sub not in common:
                    covers[sub] = covers.get(sub, 0) + 1
        best = max(sorted(covers), key=lambda sub: (covers[sub], len(sub)))
        chosen.append(best)
        remaining = {literal for literal in remaining if best not in literal}
    return sorted(chosen)


def _anchor_starts(folded: bytes, anchors: Iterable[bytes]) -> set[int]:
    """Start offsets of the lines of ``folded`` (a lowercased block) that contain one of ``anchors``."""
    starts: set[int] = set()
    find, rfind = folded.find, folded.rfind
    for anchor in anchors:
        at = find(anchor)
        while at >= 0:
            starts.add(rfind(b"\n", 0, at) + 1)
            end = find(b"\n", at)
            if end < 0:
                break
            at = find(anchor, end)
    return starts


def _fold_starts(buf: bytes) -> set[int]:
    """Start offsets of the lines holding a non-ASCII letter that re.IGNORECASE folds to ASCII."""
    starts: set[int] = set()
    if buf.isascii():
        return starts
    for seq in _ASCII_FOLD_UTF8:
        if buf.find(seq[-1:]) < 0:  # one memchr() first: its last byte is rare in text
            continue
        at = buf.find(seq)
        while at >= 0:
            starts.add(buf.rfind(b"\n", 0, at) + 1)
            at = buf.find(seq, at + len(seq))
    return starts


# ---------------------------------------------------------------- hyperscan expressions

class _Untranslatable(Exception):
    """A pattern that has no hyperscan expression (it stays with the python engine)."""


_HS_HIGH = r"[\x80-\xff]+"  # the UTF-8 bytes of one non-ASCII character (or of an invalid run)
_CATEGORY_SOURCE = {_sre_parser.CATEGORY_DIGIT: r"\d", _sre_parser.CATEGORY_NOT_DIGIT: r"\D",
                    _sre_parser.CATEGORY_SPACE: r"\s", _sre_parser.CATEGORY_NOT_SPACE: r"\S",
                    _sre_parser.CATEGORY_WORD: r"\w", _sre_parser.CATEGORY_NOT_WORD: r"\W"}
_AT_START = {_sre_parser.AT_BEGINNING, _sre_parser.AT_BEGINNING_STRING, _sre_parser.AT_BEGINNING_LINE}
_AT_END = {_sre_parser.AT_END, _sre_parser.AT_END_STRING, _sre_parser.AT_END_LINE}
_REPEATS = (_sre_parser.MAX_REPEAT, _sre_parser.MIN_REPEAT, _sre_parser.POSSESSIVE_REPEAT)


def _hs_expression(pattern: str) -> str:
    """A hyperscan expression (bytes, caseless, multiline) that matches every line ``pattern`` matches.

    It may match more lines (each candidate is confirmed with the Python regex), never fewer:
    a character matcher becomes the ASCII characters it accepts (asked of Python ``re`` itself, so
    ``\\w``, ``[^x]`` and case folding mean what they mean there) or, unless it only accepts ASCII,
    any run of non-ASCII bytes (the UTF-8 of one character, whatever hyperscan would call a letter);
    ``\\b``, ``\\B`` and lookarounds are dropped; ``\\A``/``\\Z`` become ``^``/``$`` (a block is
    scanned as lines); lazy, possessive and atomic forms become plain ones. Lines holding a non-ASCII
    letter that folds to ASCII (``ſ``, ``K``...) are left to ``re`` by the callers.
    """
    expression = _hs_items(_sre_parser.parse(pattern, _FLAGS).data)
    if not expression:
        raise _Untranslatable(pattern)
    return expression


def _hs_items(items: Iterable[tuple[Any, Any]]) -> str:
    return "".join(_hs_item(op, arg) for op, arg in items)


def _hs_item(op: Any, arg: Any) -> str:
    P = _sre_parser
    if op in (P.LITERAL, P.NOT_LITERAL, P.ANY, P.IN):
        return _hs_char(op, arg)
    if op is P.AT:
        return "^" if arg in _AT_START else "$" if arg in _AT_END else ""
    if op is P.SUBPATTERN:
        inner = _hs_items(arg[-1].data)
        return f"(?:{inner})" if inner else ""
    if op is P.ATOMIC_GROUP:
        inner = _hs_items(arg.data)
        return f"(?:{inner})" if inner else ""
    if op is P.BRANCH:
        return "(?:" + "|".join(_hs_items(branch.data) for branch in arg[1]) + ")"
    if op is P.GROUPREF_EXISTS:
        _, yes, no = arg
        return "(?:" + _hs_items(yes.data) + "|" + (_hs_items(no.data) if no is not None else "") + ")"
    if op in _REPEATS:
        low, high, item = arg
        inner = _hs_items(item.data)
        if not inner:
            return ""
        if high is P.MAXREPEAT:
            quantifier = "*" if low == 0 else "+" if low == 1 else f"{{{low},}}"
        elif (low, high) == (0, 1):
            quantifier = "?"
        else:
            quantifier = f"{{{low}}}" if low == high else f"{{{low},{high}}}"
        return f"(?:{inner}){quantifier}" if quantifier != "{1}" else f"(?:{inner})"
    if op in (P.ASSERT, P.ASSERT_NOT):
        return ""
    raise _Untranslatable(str(op))


def _hs_char(op: Any, arg: Any) -> str:
    """One character matcher: the ASCII bytes Python accepts there, or a run of non-ASCII bytes."""
    P = _sre_parser
    if op is P.LITERAL and arg < 128:
        return _hs_byte(arg)  # HS_FLAG_CASELESS folds an ASCII letter exactly as re.IGNORECASE does
    regex = re.compile(_char_source(op, arg), _FLAGS)
    accepted = [c for c in range(128) if c != 10 and regex.fullmatch(chr(c))]  # "\n" never is in a line
    ascii_only = op is P.IN and all((o is P.LITERAL and a < 128) or (o is P.RANGE and a[1] < 128)
                                    for o, a in arg)
    parts = ([_hs_class(accepted)] if accepted else []) + ([] if ascii_only else [_HS_HIGH])
    if not parts:
        raise _Untranslatable("a character class that accepts no character of a line")
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _char_source(op: Any, arg: Any) -> str:
    """A Python regex for one parsed character matcher."""
    P = _sre_parser
    if op is P.LITERAL:
        return re.escape(chr(arg))
    if op is P.NOT_LITERAL:
        return f"[^\\U{arg:08x}]"
    if op is P.ANY:
        return "."
    items = []
    for item_op, item_arg in arg:
        if item_op is P.NEGATE:
            items.insert(0, "^")
        elif item_op is P.LITERAL:
            items.append(f"\\U{item_arg:08x}")
        elif item_op is P.RANGE:
            items.append(f"\\U{item_arg[0]:08x}-\\U{item_arg[1]:08x}")
        elif item_op is P.CATEGORY and item_arg in _CATEGORY_SOURCE:
            items.append(_CATEGORY_SOURCE[item_arg])
        else:
            raise _Untranslatable(str(item_op))
    return "[" + "".join(items) + "]"


def _hs_byte(code: int) -> str:
    return chr(code) if chr(code).isalnum() else f"\\x{code:02x}"


def _hs_class(codes: list[int]) -> str:
    """A hyperscan character class of ASCII ``codes`` (sorted), runs written as ranges."""
    parts, start = [], 0
    while start < len(codes):
        end = start
        while end + 1 < len(codes) and codes[end + 1] == codes[end] + 1:
            end += 1
        first, last = codes[start], codes[end]
        parts.append(f"\\x{first:02x}" if first == last else f"\\x{first:02x}-\\x{last:02x}")
        start = end + 1
    return "[" + "".join(parts) + "]"


_HS_BLOCK = "block"
_HS_LINE = "line"


def _hs_database(expressions: list[bytes], kind: str) -> Any:
    """A compiled hyperscan block-mode database, or None when hyperscan rejects the expressions."""
    flags = _hs.HS_FLAG_CASELESS | _hs.HS_FLAG_MULTILINE
    if kind == _HS_LINE:
        flags |= _hs.HS_FLAG_SINGLEMATCH  # one report per expression: a line only asks which match
    database = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    try:
        database.compile(expressions=expressions, ids=list(range(len(expressions))),
                         elements=len(expressions), flags=flags)
    except _hs.error:
        return None
    return database


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
