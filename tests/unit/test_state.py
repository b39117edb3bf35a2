"""StateStore (ajr_supervisor/state.py): create, round trip, atomic writes, the lock, corrupt files."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from ajr_supervisor import state as state_mod
from ajr_supervisor.state import SCHEMA_VERSION, Attempt, JobRecord, StateError, StateStore


def full_record(rec: JobRecord) -> None:
    rec.job_name, rec.user, rec.partition, rec.work_dir = "train", "alice", "gpu", "/home/alice/run"
    rec.enrollment = {"mode": "requeue", "max_requeue_times": 3, "hang_timeout_s": None, "source": "comment"}
    rec.excluded_nodes = ["node2"]
    rec.notes.append("hello")
    rec.attempts.append(Attempt(
        attempt=0, started_at=100.5, nodes=["node1", "node2"], log_path="/logs/t_7.log", host="node1",
        supervisor_pid=4242, ended_at=160.0, exit_code=None, end_reason="requeued",
        anomalies=[{"anomaly": "CRASH", "nodes": ["node2"]}], checkpoints=[{"time": 150.0, "iteration": 4}],
        decision={"verdict": "EXCLUDE_AND_REQUEUE", "exclude": ["node2"], "by": "supervisor"},
        actions=[{"action": "requeuehold", "ok": True, "at": 160.0, "error": None}],
        log_offset=1234, rank_nodes={"0": "node1", "1": "node2"}))
    rec.attempts.append(Attempt(attempt=1, started_at=170.0, nodes=["node3", "node4"]))


def test_update_creates_the_record(tmp_path):
    store = StateStore(tmp_path / "state")          # the directory is created on first use
    rec = store.update("7", lambda r: r.notes.append("first"))
    assert rec.job_id == "7" and rec.notes == ["first"] and rec.version == SCHEMA_VERSION
    assert store.path("7") == tmp_path / "state" / "job_7.json"
    data = json.loads(store.path("7").read_text())
    assert data["job_id"] == "7" and data["notes"] == ["first"]


def test_load_of_a_missing_record_is_none(tmp_path):
    assert StateStore(tmp_path).load("404") is None


def test_round_trip(tmp_path):
    store = StateStore(tmp_path)
    written = store.update("7", full_record)
    loaded = store.load("7")
    assert loaded == written
    assert loaded.to_dict() == written.to_dict()
    assert loaded.attempt(0).rank_nodes == {"0": "node1", "1": "node2"}
    assert loaded.attempt(1).running and not loaded.attempt(0).running
    assert loaded.last.attempt == 1 and loaded.attempt(5) is None


def test_update_reads_the_previous_state(tmp_path):
    store = StateStore(tmp_path)
    store.update("7", full_record)
    store.update("7", lambda r: r.attempt(1).checkpoints.append({"iteration": 9}))
    rec = store.load("7")
    assert rec.attempt(1).checkpoints == [{"iteration": 9}] and rec.excluded_nodes == ["node2"]


def test_job_ids_with_slash_and_array_ids(tmp_path):
    store = StateStore(tmp_path)
    store.update("12_3", lambda r: None)
    store.update("a/b", lambda r: None)
    assert {p.name for p in tmp_path.glob("*.json")} == {"job_12_3.json", "job_a_b.json"}
    assert store.load("a/b").job_id == "a/b"


def test_from_dict_ignores_unknown_fields_and_normalises_the_job_id():
    rec = JobRecord.from_dict({"job_id": 7, "future_field": 1,
                               "attempts": [{"attempt": 0, "started_at": 1.0, "future": "x"}]})
    assert rec.job_id == "7" and rec.attempts == [Attempt(attempt=0, started_at=1.0)]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    store = StateStore(tmp_path)
    for i in range(5):
        store.update("7", lambda r, i=i: r.notes.append(str(i)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job_7.json", "job_7.lock"]
    assert store.load("7").notes == ["0", "1", "2", "3", "4"]


def test_a_failing_change_writes_nothing(tmp_path):
    store = StateStore(tmp_path)
    store.update("7", lambda r: r.notes.append("kept"))
    before = store.path("7").read_bytes()

    def boom(rec):
        rec.notes.append("lost")
        raise RuntimeError("change failed")

    with pytest.raises(RuntimeError):
        store.update("7", boom)
    assert store.path("7").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_write_error_is_a_state_error_and_cleans_up(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.update("7", lambda r: r.notes.append("kept"))

    def no_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_mod.os, "replace", no_replace)
    with pytest.raises(StateError, match="cannot write .*job_7.json: No space left on device"):
        store.update("7", lambda r: r.notes.append("lost"))
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    assert store.load("7").notes == ["kept"]


def test_an_unusable_state_directory_is_a_state_error_with_a_hint(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(StateError) as info:
        StateStore(blocker).update("7", lambda r: None)
    assert "cannot use the state directory" in info.value.one_line()
    assert "state_dir" in info.value.one_line()


@pytest.mark.parametrize("garbage", ["{not json", "", '{"no_job_id": true}',
                                     '{"job_id": "7", "attempts": [{"attempt": 0}]}'])
def test_a_corrupt_file_is_set_aside_and_a_new_record_starts(tmp_path, garbage, caplog):
    store = StateStore(tmp_path)
    store.path("7").write_text(garbage)
    with caplog.at_level("WARNING", logger="ajr_supervisor.state"):
        assert store.load("7") is None
    [aside] = list(tmp_path.glob("job_7.json.corrupt-*"))
    assert aside.read_text() == garbage                  # kept as it was
    assert aside.name.split("corrupt-")[1].isdigit()
    assert "unreadable" in caplog.text and str(aside) in caplog.text
    assert not store.path("7").exists()
    rec = store.update("7", lambda r: r.notes.append("fresh"))
    assert rec.notes == ["fresh"] and store.load("7").notes == ["fresh"]


def test_a_corrupt_file_is_set_aside_by_update_too(tmp_path):
    store = StateStore(tmp_path)
    store.path("7").write_text("{truncated")
    rec = store.update("7", lambda r: r.notes.append("new"))
    assert rec.notes == ["new"]
    assert len(list(tmp_path.glob("job_7.json.corrupt-*"))) == 1


@pytest.mark.parametrize("garbage", ["null", "[1, 2]", "3", '{"job_id": "7", "attempts": [1]}'])
def test_valid_json_that_is_not_a_record_is_set_aside(tmp_path, garbage):
    store = StateStore(tmp_path)
    store.path("7").write_text(garbage)
    assert store.load("7") is None
    assert len(list(tmp_path.glob("job_7.json.corrupt-*"))) == 1


def test_corrupt_files_set_aside_in_the_same_second_are_all_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(state_mod.time, "time", lambda: 1_700_000_000.25)
    store = StateStore(tmp_path)
    store.path("7").write_text("{first")
    assert store.load("7") is None
    store.path("7").write_text("{second")
    assert store.load("7") is None
    kept = sorted(p.read_text() for p in tmp_path.glob("job_7.json.corrupt-*"))
    assert kept == ["{first", "{second"]


def _append_many(directory: str, worker: int, count: int) -> None:
    store = StateStore(directory)
    for i in range(count):
        store.update("99", lambda rec: rec.notes.append(f"{worker}-{i}"))


def test_concurrent_updates_from_several_processes_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    notes = StateStore(tmp_path).load("99").notes
    assert len(notes) == 100
    assert sorted(notes) == sorted(f"{w}-{i}" for w in range(4) for i in range(25))
    for w in range(4):                        # each worker's own appends stay in its order
        mine = [n for n in notes if n.startswith(f"{w}-")]
        assert mine == [f"{w}-{i}" for i in range(25)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_attempt_done():
    a = Attempt(attempt=0, started_at=0.0, actions=[
        {"action": "requeuehold", "ok": True},
        {"action": "exclude", "ok": False, "error": "boom"},
        {"action": "release"},                             # no "ok" key: not done
    ])
    assert a.done("requeuehold")
    assert not a.done("exclude")
    assert not a.done("release")
    assert not a.done("update")
    a.actions.append({"action": "exclude", "ok": True})
    assert a.done("exclude")


def test_lock_file_is_a_sibling_and_reused(tmp_path):
    store = StateStore(tmp_path)
    store.update("5", lambda r: None)
    lock = tmp_path / "job_5.lock"
    inode = lock.stat().st_ino
    store.update("5", lambda r: None)
    store.load("5")
    assert lock.stat().st_ino == inode
    assert os.stat(lock).st_size == 0
