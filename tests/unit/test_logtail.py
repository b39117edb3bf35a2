"""LogFollower (ajr_supervisor/logtail.py): byte offsets, partial lines, truncation, rank prefixes,
progress bars, inotify wake-up and the polling fallback. Real files in tmp_path; no timed assertions
beyond "returned before its timeout"."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ajr_supervisor.logtail import MAX_LINE_BYTES, LogFollower, split_rank

SRUN = Path(__file__).resolve().parents[1] / "data" / "srun"


@pytest.fixture
def follow(tmp_path):
    """A follower on tmp_path/unified.log (not yet created), closed at the end."""
    made = []

    def make(path: Path | None = None, **kw) -> LogFollower:
        kw.setdefault("inotify", False)
        kw.setdefault("clock", lambda: 42.0)
        f = LogFollower(path or tmp_path / "unified.log", **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def append(path: Path, data: bytes | str) -> None:
    with open(path, "ab") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def texts(lines):
    return [(x.rank, x.text) for x in lines]


# -- split_rank ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("3: loss 1.2", (3, "loss 1.2")),
    ("0: ", (0, "")),
    ("12: x: y", (12, "x: y")),
    (" 3: padded", (3, "padded")),            # srun -l pads ranks when there are 10 tasks or more
    ("  7: padded", (7, "padded")),
    ("loss 1.2", (None, "loss 1.2")),
    ("3:no space", (None, "3:no space")),
    ("x3: not a rank", (None, "x3: not a rank")),
    ("srun: error: node2: task 1: Killed", (None, "srun: error: node2: task 1: Killed")),
    ("", (None, "")),
])
def test_split_rank(line, expected):
    assert split_rank(line) == expected


def test_only_the_first_prefix_is_removed():
    assert split_rank("1: 2: text") == (1, "2: text")


# -- reading -------------------------------------------------------------------------------------

def test_missing_file_reads_nothing_then_appears_later(follow, tmp_path):
    f = follow()
    assert f.read_new() == [] and f.offset == 0
    append(tmp_path / "unified.log", "0: hello\n")
    [line] = f.read_new()
    assert (line.rank, line.text, line.offset, line.time) == (0, "hello", 0, 42.0)


def test_partial_line_is_completed_later(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    append(log, "0: first\n1: sec")
    assert texts(f.read_new()) == [(0, "first")]
    assert f.read_new() == []              # nothing new: the partial line waits
    append(log, "ond half")
    assert f.read_new() == []
    append(log, "\n")
    [line] = f.read_new()
    assert (line.rank, line.text, line.offset) == (1, "second half", len(b"0: first\n"))
    assert f.offset == log.stat().st_size


def test_several_lines_in_one_write(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    append(log, "0: a\n1: bb\nccc\n\n0: d\n")
    lines = f.read_new()
    assert texts(lines) == [(0, "a"), (1, "bb"), (None, "ccc"), (None, ""), (0, "d")]
    assert [x.offset for x in lines] == [0, 5, 11, 15, 16]


def test_offsets_are_byte_offsets_with_multibyte_text(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    first = "0: épreuve ✓ 損失 1.5\n"
    append(log, first + "1: next\n")
    a, b = f.read_new()
    assert a.text == "épreuve ✓ 損失 1.5"
    assert b.offset == len(first.encode()) != len(first)
    with open(log, "rb") as fh:                # the offset points at the line in the file
        fh.seek(b.offset)
        assert fh.readline() == b"1: next\n"


def test_multibyte_character_split_across_writes(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    data = "0: 損失\n".encode()
    append(log, data[:5])                    # cut inside the first character
    assert f.read_new() == []
    append(log, data[5:])
    assert texts(f.read_new()) == [(0, "損失")]


def test_invalid_utf8_is_replaced_not_fatal(follow, tmp_path):
    log = tmp_path / "unified.log"
    append(log, b"0: bad \xff\xfe byte\n")
    [line] = follow().read_new()
    assert line.text == "bad \ufffd\ufffd byte"


def test_starts_from_a_saved_offset(follow, tmp_path):
    log = tmp_path / "unified.log"
    append(log, "0: old\n0: new\n")
    f = follow(offset=len(b"0: old\n"))
    [line] = f.read_new()
    assert line.text == "new" and line.offset == 7


def test_truncation_restarts_from_zero(follow, tmp_path, caplog):
    log = tmp_path / "unified.log"
    f = follow()
    append(log, "0: one\n0: two\n0: part")
    assert len(f.read_new()) == 2
    log.write_text("0: new\n")               # truncated and rewritten, shorter than the offset
    with caplog.at_level("WARNING", logger="ajr_supervisor.logtail"):
        lines = f.read_new()
    assert texts(lines) == [(0, "new")] and lines[0].offset == 0
    assert "shrank" in caplog.text
    assert f.offset == log.stat().st_size


def test_final_flushes_the_unterminated_tail(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    append(log, "0: done\n1: no newline at the end")
    assert texts(f.read_new()) == [(0, "done")]
    [tail] = f.read_new(final=True)
    assert (tail.rank, tail.text, tail.offset) == (1, "no newline at the end", len(b"0: done\n"))
    assert f.read_new(final=True) == []      # flushed once


def test_final_on_an_empty_tail_adds_nothing(follow, tmp_path):
    append(tmp_path / "unified.log", "0: x\n")
    assert texts(follow().read_new(final=True)) == [(0, "x")]


def test_carriage_return_progress_bar_keeps_the_last_segment(follow, tmp_path):
    log = tmp_path / "unified.log"
    append(log, "0: 10%|#   |\r 50%|##  |\r100%|####|\n1: plain\r\n")
    assert texts(follow().read_new()) == [(0, "100%|####|"), (1, "plain")]


def test_real_srun_progress_bar_output(follow):
    """srun -l -u ends every '\\r' chunk with a newline of its own (tests/data/srun/progress_bar.log)."""
    lines = follow(SRUN / "progress_bar.log").read_new(final=True)
    assert [x.text for x in lines if x.rank == 0] == ["start", "progress 10%", "progress 20%", "progress 30%", "done"]
    assert all("\r" not in x.text for x in lines)


def test_runaway_line_without_newline_is_cut(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    big = b"x" * (MAX_LINE_BYTES + 10)
    append(log, b"0: " + big)
    [cut] = f.read_new()
    assert cut.rank == 0 and cut.text == big.decode() and cut.offset == 0
    append(log, b"tail\n")
    [rest] = f.read_new()
    assert rest.text == "tail" and rest.offset == MAX_LINE_BYTES + 13


def test_line_at_the_limit_is_still_buffered(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow()
    append(log, b"y" * MAX_LINE_BYTES)
    assert f.read_new() == []
    append(log, b"\n")
    [line] = f.read_new()
    assert len(line.text) == MAX_LINE_BYTES


def test_time_comes_from_the_injected_clock(follow, tmp_path):
    now = [1.0]
    f = follow(clock=lambda: now[0])
    append(tmp_path / "unified.log", "a\n")
    assert f.read_new()[0].time == 1.0
    now[0] = 7.5
    append(tmp_path / "unified.log", "b\n")
    assert f.read_new()[0].time == 7.5


# -- waiting -----------------------------------------------------------------------------------------

def _write_later(path: Path, text: str, delay: float = 0.2) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), append(path, text)), daemon=True)
    t.start()
    return t


def test_inotify_wait_returns_promptly_after_a_write(follow, tmp_path):
    log = tmp_path / "unified.log"
    append(log, "")
    f = follow(inotify=True)
    if not f.uses_inotify:
        pytest.skip("inotify (watchdog) unavailable here")
    writer = _write_later(log, "0: hello\n")
    t0 = time.monotonic()
    f.wait(5.0)
    assert time.monotonic() - t0 < 4.0      # woke on the write, not at the 5 s timeout
    writer.join()
    assert texts(f.read_new()) == [(0, "hello")]


def test_inotify_wakes_when_the_file_is_created(follow, tmp_path):
    log = tmp_path / "sub" / "unified.log"   # the directory does not exist yet either
    f = follow(log, inotify=True)
    if not f.uses_inotify:
        pytest.skip("inotify (watchdog) unavailable here")
    writer = _write_later(log, "0: born\n")
    t0 = time.monotonic()
    f.wait(5.0)
    assert time.monotonic() - t0 < 4.0
    writer.join()
    assert texts(f.read_new()) == [(0, "born")]


def test_writes_to_other_files_do_not_count(follow, tmp_path):
    log = tmp_path / "unified.log"
    append(log, "")
    f = follow(inotify=True)
    if not f.uses_inotify:
        pytest.skip("inotify (watchdog) unavailable here")
    append(tmp_path / "other.log", "noise\n")
    time.sleep(0.05)
    f.wait(0.01)                            # forget anything from the setup
    t0 = time.monotonic()
    f.wait(0.2)
    assert time.monotonic() - t0 >= 0.15    # slept its timeout: nothing relevant happened


def test_wake_ends_a_wait_early(follow):
    f = follow(inotify=True)
    threading.Timer(0.1, f.wake).start()
    t0 = time.monotonic()
    f.wait(5.0)
    assert time.monotonic() - t0 < 4.0


def test_polling_fallback(follow, tmp_path):
    log = tmp_path / "unified.log"
    f = follow(inotify=False)
    assert not f.uses_inotify
    t0 = time.monotonic()
    f.wait(5.0)                             # polling never sleeps the full timeout
    assert time.monotonic() - t0 < 4.0
    append(log, "0: polled\n")
    f.wait(5.0)
    assert texts(f.read_new()) == [(0, "polled")]


def test_close_is_idempotent(follow):
    f = follow(inotify=True)
    f.close()
    f.close()
    assert not f.uses_inotify


def test_watchdog_observer_is_the_fallback_without_libc_inotify(follow, tmp_path, monkeypatch):
    from ajr_supervisor import logtail

    monkeypatch.setattr(logtail._Inotify, "open", classmethod(lambda cls, path: None))
    log = tmp_path / "unified.log"
    append(log, "")
    f = follow(inotify=True)
    assert f.uses_inotify and f._inotify is None and f._observer is not None
    writer = _write_later(log, "0: via watchdog\n")
    t0 = time.monotonic()
    f.wait(5.0)
    assert time.monotonic() - t0 < 4.0
    writer.join()
    assert texts(f.read_new()) == [(0, "via watchdog")]
    f.close()


def test_min_interval_batches_bursts_of_writes_but_not_wake(follow, tmp_path):
    log = tmp_path / "unified.log"
    append(log, "")
    f = follow(inotify=True, min_interval_s=0.3)
    if not f.uses_inotify:
        pytest.skip("inotify unavailable here")
    append(log, "0: one\n")
    f.wait(5.0)
    first = time.monotonic()
    append(log, "0: two\n")
    f.wait(5.0)                              # a change right after a wake-up waits out the interval
    assert time.monotonic() - first >= 0.25
    assert texts(f.read_new()) == [(0, "one"), (0, "two")]
    append(log, "0: three\n")
    threading.Timer(0.05, f.wake).start()
    t0 = time.monotonic()
    f.wait(5.0)                              # wake() is never held back
    assert time.monotonic() - t0 < 0.25
