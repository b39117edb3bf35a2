"""How fast the rule matcher scans a big training log, next to GNU grep with the same rules.

    python3 benchmarks/matcher.py [--mb 220] [--keep PATH] [--engines hyperscan,python]

Writes a realistic log of about ``--mb`` MB into a temporary file (Megatron iteration lines and
NCCL INFO lines behind srun's rank prefix, some tqdm progress bars with non-ASCII characters, and
every example line of the default rules at known positions), then times, in this one process:

- ``grep -E -i -c -f PATTERNS LOG`` with the rules' patterns translated to POSIX ERE (GNU
  extensions ``\\b``/``\\B`` allowed), in the environment's locale and with ``LC_ALL=C``;
- ``RuleSet.count_matching_lines(LOG)`` with each available engine (hyperscan, python);
- for scale, ``RuleSet.match`` line by line and one case-insensitive alternation of all patterns
  searched line by line with Python ``re``, both on the first few MB only.

A pattern that has no ERE form (a lookaround, say) is left out of both sides and named. All counts
must agree (they are printed; a disagreement exits 1). Only figures are printed: timings depend on
the machine, the page cache and the CPU's mood, so nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from re import _parser as sre

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ajr_supervisor.rules import RuleSet, hyperscan_available  # noqa: E402

SAMPLE_MB = 8  # the slow per-line baselines only read this much


# ---------------------------------------------------------------- the log

def write_log(path: Path, megabytes: int, fatal: list[str], seed: int = 1) -> int:
    """Write about ``megabytes`` MB of training log with ``fatal`` lines spread evenly; return its lines."""
    rng = random.Random(seed)
    target = megabytes * 1_000_000
    step = target // (len(fatal) + 1)  # the i-th fatal line goes in once (i + 1) * step bytes are written
    written = lines = placed = 0
    chunk: list[str] = []
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            lines += 1
            rank = rng.randrange(128)
            node = f"dgx{rank // 8:03d}"
            pick = rng.random()
            if placed < len(fatal) and written >= (placed + 1) * step:
                text = f"{rank}: {fatal[placed]}"
                placed += 1
            elif pick < 0.55:
                it = lines // 128
                text = (f"{rank}:  [2024-04-06 02:{it // 60 % 60:02d}:{it % 60:02d}] iteration {it:8d}/ 500000 | "
                        f"consumed samples: {it * 1024:12d} | elapsed time per iteration (ms): "
                        f"{5000 + rng.random() * 500:.1f} | throughput per GPU (TFLOP/s/GPU): "
                        f"{230 + rng.random() * 10:.1f} | learning rate: {rng.random() * 1e-4:.6E} | global batch "
                        f"size:  1024 | lm loss: {1 + rng.random():.6E} | loss scale: 1.0 | grad norm: "
                        f"{rng.random() * 2:.3f} | number of skipped iterations:   0 | number of nan iterations:   0 |")
            elif pick < 0.90:
                channel = rng.randrange(32)
                text = (f"{rank}: {node}:{12000 + rank}:{13000 + rank} [{rank % 8}] NCCL INFO Channel "
                        f"{channel:02d}/0 : {rank}[{rank % 8}] -> {(rank + 8) % 128}[{rank % 8}] [send] via "
                        f"NET/IB/{rank % 8}/GDRDMA")
            elif pick < 0.97:
                text = (f"{rank}: {node}:{12000 + rank}:{13000 + rank} [{rank % 8}] NCCL INFO comm "
                        f"0x{rng.getrandbits(40):x} rank {rank} nranks 128 cudaDev {rank % 8} busId "
                        f"{rng.choice(['18000', '2a000', '3a000', '5d000'])} - Init COMPLETE")
            else:
                done = rng.randrange(45743)
                bar = "\u2588" * (done * 10 // 45743)
                text = (f"{rank}: Epoch 0: {done * 100 // 45743:3d}%|{bar:<10}| {done}/45743 "
                        f"[13:13:43<68:36:00,  6.44s/it, train_loss: 0.084, avg_loss: 0.080]")
            chunk.append(text)
            written += len(text.encode("utf-8")) + 1
            if len(chunk) >= 20_000:
                out.write("\n".join(chunk) + "\n")
                chunk.clear()
        out.write("\n".join(chunk) + "\n" if chunk else "")
    assert placed == len(fatal), (placed, len(fatal))
    return lines


# ---------------------------------------------------------------- Python regex -> POSIX ERE

class NoERE(Exception):
    """The pattern has no ERE form."""


_ERE_SPECIAL = set(".[]()*+?{}|^$\\")
_ERE_CLASS = {sre.CATEGORY_DIGIT: "0-9", sre.CATEGORY_WORD: "[:alnum:]_", sre.CATEGORY_SPACE: "[:space:]"}
_ERE_NOT = {sre.CATEGORY_NOT_DIGIT: "0-9", sre.CATEGORY_NOT_WORD: "[:alnum:]_", sre.CATEGORY_NOT_SPACE: "[:space:]"}


def to_ere(pattern: str) -> str:
    """``pattern`` (Python re, matched case-insensitively) as a GNU grep -E pattern matching the same lines."""
    return _ere_items(sre.parse(pattern, re.IGNORECASE).data)


def _ere_items(items) -> str:
    return "".join(_ere_item(op, arg) for op, arg in items)


def _ere_item(op, arg) -> str:
    if op is sre.LITERAL:
        ch = chr(arg)
        if ch == "\n" or (arg < 32 and ch != "\t"):
            raise NoERE(f"control character {arg}")
        return "\\" + ch if ch in _ERE_SPECIAL else ch
    if op is sre.NOT_LITERAL:
        return "[^" + _bracket_items([(sre.LITERAL, arg)]) + "]"
    if op is sre.ANY:
        return "."
    if op is sre.IN:
        negate = bool(arg) and arg[0][0] is sre.NEGATE
        items = arg[1:] if negate else arg
        if len(items) == 1 and items[0][0] is sre.CATEGORY and items[0][1] in _ERE_NOT:
            # \S is [^[:space:]]; [^\S] is [[:space:]]
            return ("[" if negate else "[^") + _ERE_NOT[items[0][1]] + "]"
        body = _bracket_items(items)
        if body == "^" and not negate:
            return "\\^"
        return "[" + ("^" if negate else "") + body + "]"
    if op is sre.AT:
        if arg in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return "^"
        if arg in (sre.AT_END, sre.AT_END_STRING):
            return "$"
        if arg is sre.AT_BOUNDARY:
            return "\\b"
        if arg is sre.AT_NON_BOUNDARY:
            return "\\B"
        raise NoERE(str(arg))
    if op is sre.SUBPATTERN:
        return "(" + _ere_items(arg[-1].data) + ")"
    if op is sre.ATOMIC_GROUP:
        return "(" + _ere_items(arg.data) + ")"
    if op is sre.BRANCH:
        return "(" + "|".join(_ere_items(b.data) for b in arg[1]) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, item = arg
        inner = _ere_items(item.data)
        atom = inner if len(item.data) == 1 and item.data[0][0] in (sre.LITERAL, sre.ANY, sre.IN,
                                                                       sre.SUBPATTERN, sre.NOT_LITERAL) \
            else "(" + inner + ")"
        if high is sre.MAXREPEAT:
            return atom + ("*" if low == 0 else "+" if low == 1 else f"{{{low},}}")
        if (low, high) == (0, 1):
            return atom + "?"
        return atom + (f"{{{low}}}" if low == high else f"{{{low},{high}}}")
    raise NoERE(f"{op} has no ERE form")


def _bracket_items(items) -> str:
    """The inside of an ERE bracket expression (``]`` first, ``-`` last, ``^`` not first)."""
    chars: list[str] = []
    ranges: list[str] = []
    for op, arg in items:
        if op is sre.LITERAL:
            if arg == 10 or arg < 32 and arg != 9:
                raise NoERE(f"control character {arg} in a class")
            chars.append(chr(arg))
        elif op is sre.RANGE:
            low, high = map(chr, arg)
            if "]" in (low, high) or "-" in (low, high) or "^" == low:
                raise NoERE("awkward range")
            ranges.append(f"{low}-{high}")
        elif op is sre.CATEGORY and arg in _ERE_CLASS:
            ranges.append(_ERE_CLASS[arg])
        else:
            raise NoERE(f"{op} {arg} inside a class")
    head = "]" if "]" in chars else ""
    tail = "-" if "-" in chars else ""
    # no "[:", "[." or "[=" may open a class name by accident: those characters go after the ranges
    plain = [c for c in chars if c not in "]-^:.="]
    middle = ranges + plain + [c for c in chars if c in ":.="] + (["^"] if "^" in chars else [])
    return head + "".join(middle) + tail  # only "^" alone can open it: the caller sees to that


def grep_accepts(ere: str) -> bool:
    done = subprocess.run(["grep", "-E", "-i", "-c", "-e", ere, "/dev/null"], capture_output=True)
    return done.returncode in (0, 1)


# ---------------------------------------------------------------- timing

def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=220, help="size of the generated log in MB (default 220)")
    parser.add_argument("--keep", type=Path, help="write the log here and keep it (default: a temp file)")
    parser.add_argument("--engines", default="hyperscan,python", help="engines to time, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timing; the best counts (default 3)")
    args = parser.parse_args()

    rules = RuleSet.load(engine="python")
    kept, excluded, ere_lines = [], [], []
    for rule in rules.rules:
        patterns = []
        for pattern in rule.patterns:
            try:
                ere = to_ere(pattern)
            except NoERE as exc:
                excluded.append((rule.id, pattern, str(exc)))
                continue
            if not grep_accepts(ere):
                excluded.append((rule.id, pattern, f"grep rejects {ere!r}"))
                continue
            patterns.append(pattern)
            ere_lines.append(ere)
        if patterns:
            kept.append(type(rule)(**{**rule.__dict__, "patterns": tuple(patterns)}))
    fatal = [example for rule in rules.rules for example in rule.examples]

    workdir = Path(tempfile.mkdtemp(prefix="ajr-matcher-"))
    try:
        log = args.keep or workdir / "train.log"
        pattern_file = workdir / "patterns.ere"
        pattern_file.write_text("\n".join(ere_lines) + "\n", encoding="utf-8")
        _, took = timed(lambda: write_log(log, args.mb, fatal))
        size = log.stat().st_size
        mb = size / 1e6
        print(f"log: {log} ({mb:.1f} MB, written in {took:.1f} s); rules: {len(rules.rules)} "
              f"({sum(len(r.patterns) for r in rules.rules)} patterns), {len(fatal)} example lines spread in it")
        print(f"patterns with no ERE form, left out of both sides: {len(excluded)}")
        for rule_id, pattern, why in excluded:
            print(f"  {rule_id}: {pattern!r} ({why})")
        with open(log, "rb") as f:  # into the page cache before anything is timed
            while f.read(64 << 20):
                pass

        counts: dict[str, int] = {}
        speeds: dict[str, float] = {}
        grep = shutil.which("grep") or "grep"
        version = subprocess.run([grep, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        for label, env in ((f"grep -E -i -c ({os.environ.get('LC_ALL') or os.environ.get('LANG') or 'C'})", None),
                           ("grep -E -i -c (LC_ALL=C)", {**os.environ, "LC_ALL": "C"})):
            best, count = float("inf"), None
            for _ in range(args.repeat):
                done, took = timed(lambda: subprocess.run([grep, "-E", "-i", "-c", "-f", str(pattern_file), str(log)],
                                                          capture_output=True, text=True, env=env))
                if done.returncode not in (0, 1):
                    print(f"{label}: failed: {done.stderr.strip()}")
                    return 1
                count, best = int(done.stdout), min(best, took)
            counts[label], speeds[label] = count, mb / best
        for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
            if engine == "hyperscan" and not hyperscan_available():
                print("engine hyperscan: not installed (pip install hyperscan), skipped")
                continue
            ruleset = RuleSet(kept, engine=engine)
            _, setup = timed(lambda: ruleset.match(""))  # hyperscan compiles its databases on first use
            print(f"engine {engine}: set up in {setup * 1000:.0f} ms (not in the timings below)")
            best, count = float("inf"), None
            for _ in range(args.repeat):
                count, took = timed(lambda: ruleset.count_matching_lines(log))
                best = min(best, took)
            counts[f"ajr {engine}"], speeds[f"ajr {engine}"] = count, mb / best

        with open(log, "rb") as f:
            sample = f.read(SAMPLE_MB * 1_000_000)
        sample = sample[:sample.rfind(b"\n") + 1]
        sample_lines = sample.decode("utf-8", "replace").split("\n")[:-1]
        sample_mb = len(sample) / 1e6
        per_line = RuleSet(kept, engine="python")
        count, took = timed(lambda: sum(1 for line in sample_lines if per_line.match(line) is not None))
        speeds[f"RuleSet.match per line (first {sample_mb:.0f} MB)"] = sample_mb / took
        alternation = re.compile("|".join(f"(?:{p})" for r in kept for p in r.patterns), re.IGNORECASE)
        count2, took = timed(lambda: sum(1 for line in sample_lines if alternation.search(line)))
        speeds[f"re alternation per line (first {sample_mb:.0f} MB)"] = sample_mb / took
        if count != count2:
            print(f"per-line baselines disagree on the sample: {count} != {count2}")
            return 1

        print(f"{version}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; best of {args.repeat}")
        print(f"{'':44s} {'MB/s':>8s} {'lines':>8s}")
        for label, speed in speeds.items():
            print(f"{label:44s} {speed:8.1f} {counts.get(label, ''):>8}")
        grep_best = max(v for k, v in speeds.items() if k.startswith("grep"))
        for label in speeds:
            if label.startswith("ajr "):
                ratios = ", ".join(f"{speeds[label] / speeds[g]:.2f}x {g.split('(')[1].rstrip(')')}"
                                   for g in speeds if g.startswith("grep"))
                print(f"ratio {label} / grep: {ratios} (vs the faster grep: {speeds[label] / grep_best:.2f}x)")
        expected = sum(1 for line in fatal if RuleSet(kept, engine="python").match(line) is not None)
        print(f"example lines placed: {len(fatal)}, of which the compared rules match {expected}")
        full = set(counts.values())
        print("counts agree" if len(full) == 1 and full == {expected} else f"COUNTS DISAGREE: {counts}")
        return 0 if len(full) == 1 and full == {expected} else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
