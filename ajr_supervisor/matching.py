"""The matching engines behind :class:`~ajr_supervisor.rules.RuleSet` (pure).

Both find *candidate* patterns for a line or a block of lines; the rules' own Python regexes then
decide, so the engines give the same answers (see the docstring of :mod:`ajr_supervisor.rules`):

- ``_RegexMatcher`` (always there): literals every match must contain, anchors for block scans.
- ``_HyperscanMatcher`` (when the optional ``hyperscan`` module imports): each Python pattern is
  translated into a hyperscan expression that matches at least what it matches.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from re import _parser as _sre_parser  # the regex parser (Python >= 3.11), to find required literals
from typing import Any

try:  # the optional multi-pattern engine (pip install hyperscan; the "fast" extra)
    import hyperscan as _hs
except Exception:  # ImportError, or a wheel whose native library does not load here  # pragma: no cover
    _hs = None

_FLAGS = re.IGNORECASE


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
        starts = anchor_starts(buf.lower(), self.anchors) if self._by_literal else set()
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


def anchor_starts(folded: bytes, anchors: Iterable[bytes]) -> set[int]:
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


def _combine(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), _FLAGS)
