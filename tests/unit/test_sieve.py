"""The block sieve keeps every line a detector acts on: same findings as feeding every line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ajr_supervisor import matching
from ajr_supervisor.detect.analyzer import LogAnalyzer
from ajr_supervisor.detect.progress import parse_progress
from ajr_supervisor.detect.sieve import interesting_lines, wanted_starts
from ajr_supervisor.logtail import make_line
from ajr_supervisor.rules import RuleSet

LOGS = sorted((Path(__file__).parents[1] / "data" / "logs").glob("*.log"))


def all_lines(buf: bytes):
    pos, out = 0, []
    for raw in buf.split(b"\n")[:-1] if buf.endswith(b"\n") else buf.split(b"\n"):
        out.append(make_line(raw, pos, 0.0))
        pos += len(raw) + 1
    return out


def summary(analyzer: LogAnalyzer):
    return ([(f.rule_id, f.rank, f.offset, f.line) for f in analyzer.all_findings()],
            [(c.line.offset, c.iteration) for c in analyzer.checkpoints], dict(analyzer.rank_nodes))


@pytest.fixture(scope="module", params=["hyperscan", "python"])
def rules(request):
    if request.param == "hyperscan" and matching._hs is None:
        pytest.skip("hyperscan is not installed")
    return RuleSet.load(engine=request.param)


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.name)
def test_same_findings_as_every_line_on_the_corpus(path, rules):
    buf = path.read_bytes()
    full = LogAnalyzer(rules).feed_all(all_lines(buf))
    kept = interesting_lines(buf, 0, 0.0, rules)
    sieved = LogAnalyzer(rules).feed_all(kept)
    assert summary(sieved) == summary(full)
    progress = [parse_progress(line.text, line.rank) for line in all_lines(buf)]
    assert [p for p in progress if p] == [p for p in (parse_progress(x.text, x.rank) for x in kept) if p]


FRAGMENTS = (b"0: step 1 done with a long enough line to count as a whole line of output, not a fragment\n"
             b"1: ModuleNotFoundError\n1: : \n1: No module named 'apex'\n"
             b"0: another long line of ordinary output that no rule and no detector is interested in\n")


def test_fragments_around_a_candidate_are_kept_for_the_rejoin(rules):
    kept = interesting_lines(FRAGMENTS, 100, 5.0, rules)
    assert [(x.rank, x.text) for x in kept] == [(1, "ModuleNotFoundError"), (1, ": "), (1, "No module named 'apex'")]
    assert kept[0].offset == 100 + FRAGMENTS.index(b"1: Module") and kept[0].time == 5.0
    found = LogAnalyzer(rules).feed_all(kept).findings
    assert any("No module named 'apex'" in (f.line or "") for f in found)


def test_noise_is_dropped_and_progress_is_kept(rules):
    buf = (b"3: NCCL INFO Channel 00/0 : 3 -> 4 via P2P/IPC/read\n"
           b"3: [rank3]: grad norm 1.2 loss scale 65536.0 skipped iterations 0\n"
           b"0:  iteration       10/     100 | elapsed time per iteration (ms): 812.5 |\n"
           b"2: [ajr-telemetry] ts=x rank=2 event=iteration iteration=10 step_time_ms=800\n"
           b"1: [ajr] rank 1 node node2 pid 77\n"
           b"1: Saving checkpoint to /ckpt/iter_10\n"
           b"srun: error: node2: task 1: Exited with exit code 1\n")
    kept = [x.text for x in interesting_lines(buf, 0, 0.0, rules)]
    wanted = [" iteration       10/     100 | elapsed time per iteration (ms): 812.5 |",
              "[ajr-telemetry] ts=x rank=2 event=iteration iteration=10 step_time_ms=800",
              "[ajr] rank 1 node node2 pid 77", "Saving checkpoint to /ckpt/iter_10",
              "srun: error: node2: task 1: Exited with exit code 1"]
    assert [t for t in kept if t in wanted] == wanted
    assert "NCCL INFO Channel 00/0 : 3 -> 4 via P2P/IPC/read" not in kept


def test_hyperscan_and_python_pick_the_same_lines(monkeypatch):
    if matching._hs is None:
        pytest.skip("hyperscan is not installed")
    buf = b"".join(path.read_bytes() for path in LOGS)
    with_hs = wanted_starts(buf)
    monkeypatch.setattr(matching, "_hs", None)
    assert wanted_starts(buf) <= with_hs
