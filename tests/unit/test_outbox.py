"""The event outbox (ajr_supervisor/outbox.py) against a real local HTTP server playing the registry:
durable puts, delivery, retries with the same ids, every registry answer, poison events, two
deliverers on one directory, the Deliverer's backoff and final flush."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ajr_supervisor import outbox as outbox_mod
from ajr_supervisor.config import Config
from ajr_supervisor.events import make_event
from ajr_supervisor.outbox import Deliverer, DeliveryResult, Outbox, from_config

TOKEN = "s3cret-supervisor-token"


class FakeRegistry:
    """A registry on 127.0.0.1 that records what it is sent. ``status``: answer every POST with it;
    ``reject``: event id -> error; ``max_events``: answer 413 to larger batches; ``stop``/``start``
    (the same port again) to be down and back."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.accepted: list[str] = []        # ids in the order they were first accepted
        self.known: set[str] = set()
        self.duplicates = 0
        self.status = 200
        self.reply: bytes | None = None      # a raw 200 body instead of the real answer
        self.reject: dict[str, str] = {}
        self.max_events: int | None = None
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with registry.lock:
                    registry.bodies.append(body)
                    registry.headers.append(dict(self.headers))
                    status, answer = registry.answer(self.path, body)
                data = json.dumps(answer).encode()
                if status == 200 and registry.reply is not None:
                    data = registry.reply
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path != "/api/v1/events":
            return 404, {"detail": "Not Found"}
        if self.status != 200:
            return self.status, {"detail": {401: "invalid token", 403: "token lacks the supervisor role"}
                                 .get(self.status, "database unavailable")}
        if self.max_events is not None and len(body["events"]) > self.max_events:
            return 413, {"detail": "request entity too large"}
        accepted, rejected = 0, []
        for event in body["events"]:
            if event["id"] in self.reject:
                rejected.append({"id": event["id"], "error": self.reject[event["id"]]})
            elif event["id"] in self.known:
                self.duplicates += 1
            else:
                self.accepted.append(event["id"])
                self.known.add(event["id"])
                accepted += 1
        dups = len(body["events"]) - accepted - len(rejected)
        return 200, {"accepted": accepted, "duplicates": dups, "rejected": rejected}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def sent_ids(self) -> list[str]:
        return [e["id"] for b in self.bodies for e in b["events"]]


@pytest.fixture
def closed_port():
    """A local port nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def open_dir():
    """A directory other users can reach (pytest's tmp_path is under a 0700 directory of root)."""
    with tempfile.TemporaryDirectory(prefix="ajr-outbox-test-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


def event(i: int = 0, **data) -> dict:
    return make_event("progress", cluster="lab", job_id="1234", attempt=0, when=1000.0 + i,
                      data={"iteration": i, **data})


def fill(box: Outbox, n: int, start: int = 0) -> list[str]:
    events = [event(i) for i in range(start, start + n)]
    assert all(box.put(e) for e in events)
    return [e["id"] for e in events]


def make_box(tmp_path, url, **kw) -> Outbox:
    return Outbox(tmp_path / "outbox", url=url, token=kw.pop("token", TOKEN), **kw)


# -- put -----------------------------------------------------------------------------------------

def test_put_writes_one_file_per_event_oldest_first(tmp_path):
    box = make_box(tmp_path, None)          # the directory is created on first put
    ids = fill(box, 3)
    files = box.pending()
    assert [p.name.split("-", 1)[1] for p in files] == [f"{i}.json" for i in ids]
    assert [json.loads(p.read_text())["id"] for p in files] == ids
    assert box.backlog() == 3 and box.pending(2) == files[:2]
    assert not [p for p in (tmp_path / "outbox").iterdir() if p.name.endswith(".tmp")]


def test_put_keeps_put_order_even_with_a_coarse_clock(tmp_path):
    box = make_box(tmp_path, None, clock=lambda: 1000.0)
    ids = fill(box, 5)
    assert [json.loads(p.read_text())["id"] for p in box.pending()] == ids


def test_put_refuses_an_invalid_event_without_raising(tmp_path, caplog):
    box = make_box(tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="ajr_supervisor.outbox"):
        assert box.put({"type": "nonsense"}) is False
        assert box.put(event(0, blob="x" * 70_000)) is False
    assert box.backlog() == 0
    assert "dropped an invalid event: event is missing 'id'" in caplog.text
    assert "the registry takes at most" in caplog.text


def test_an_odd_id_is_kept_but_not_used_raw_in_the_file_name(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    assert box.put(event(1) | {"id": "../../etc/x y"})
    (path,) = box.pending()
    assert path.parent == tmp_path / "outbox" and path.name.endswith("-.._.._etc_x_y.json")
    box.deliver_once()
    assert registry.accepted == ["../../etc/x y"]


def test_put_turns_nan_into_null(tmp_path):
    box = make_box(tmp_path, None)
    assert box.put(event(1, step_time_s=float("nan"), tflops=float("inf")))
    data = json.loads(box.pending()[0].read_text())["data"]
    assert data["step_time_s"] is None and data["tflops"] is None


def test_put_on_a_disk_error_returns_false_and_warns_once(tmp_path, monkeypatch, caplog):
    box = make_box(tmp_path, None)
    fill(box, 1)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outbox_mod.os, "fsync", full)
    with caplog.at_level(logging.INFO, logger="ajr_supervisor.outbox"):
        assert [box.put(event(i)) for i in range(5)] == [False] * 5
        monkeypatch.undo()
        assert box.put(event(9))
    assert caplog.text.count("No space left on device") == 1
    assert "writable again (5 events were dropped)" in caplog.text
    assert box.backlog() == 2
    assert not [p for p in (tmp_path / "outbox").iterdir() if p.name.endswith(".tmp")]


def as_nobody(fn) -> str:
    """``fn()`` in a child process running as an unprivileged user (root ignores file modes)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:       # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, repr(fn()).encode())
        except BaseException as exc:
            os.write(write, f"raised {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return answer


def test_put_never_raises_on_a_read_only_directory(tmp_path, open_dir):
    directory = open_dir / "outbox"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        if os.geteuid() == 0:
            writable = open_dir / "writable"
            writable.mkdir(mode=0o777)
            writable.chmod(0o777)
            assert as_nobody(lambda: Outbox(writable, url=None, token=None).put(event(1))) == "True"
            assert as_nobody(lambda: Outbox(directory, url=None, token=None).put(event(1))) == "False"
        else:
            assert Outbox(directory, url=None, token=None).put(event(1)) is False
        assert list(directory.iterdir()) == []
        # and a directory that cannot be created (its parent is a file)
        (tmp_path / "file").write_text("")
        assert Outbox(tmp_path / "file" / "outbox", url=None, token=None).put(event(2)) is False
    finally:
        directory.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the epilog's case)")
def test_as_root_files_go_to_the_directory_owner(tmp_path, registry):
    parent = tmp_path / "state"
    parent.mkdir()
    os.chown(parent, 4242, 4343)
    box = Outbox(parent / "outbox", url=registry.url, token=TOKEN)
    registry.reject = {}
    ids = fill(box, 2)
    registry.reject = {ids[0]: "bad"}
    box.deliver_once()
    for path in [parent / "outbox", *box.pending(), parent / "outbox" / ".deliver.lock",
                 parent / "outbox" / "rejected", *(parent / "outbox" / "rejected").iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343), path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to be two users")
def test_a_lock_file_of_another_user_still_locks(open_dir, registry):
    directory = open_dir / "outbox"
    box = Outbox(directory, url=registry.url, token=TOKEN)
    ids = fill(box, 2)
    directory.chmod(0o777)
    box.deliver_once()                                 # root made .deliver.lock (0644)
    ids += fill(box, 1, start=2)
    answer = as_nobody(lambda: Outbox(directory, url=registry.url, token=TOKEN).deliver_once().sent)
    assert answer == "1" and registry.accepted == ids and box.backlog() == 0


# -- deliver_once --------------------------------------------------------------------------------

def test_deliver_posts_the_batch_and_deletes_it(tmp_path, registry):
    box = make_box(tmp_path, registry.url + "/")
    ids = fill(box, 3)
    result = box.deliver_once()
    assert result == DeliveryResult(sent=3, duplicates=0, rejected=0, left=0, error=None)
    assert box.backlog() == 0
    (body,) = registry.bodies
    assert [e["id"] for e in body["events"]] == ids
    assert body["host"] == socket.gethostname() and body["backlog"] == 3
    assert body["events"][0] == json.loads(json.dumps(event(0) | {"id": ids[0]}))
    assert registry.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    assert registry.headers[0]["Content-Type"] == "application/json"
    assert box.deliver_once() == DeliveryResult()     # nothing left: no request
    assert len(registry.bodies) == 1


def test_batches_are_the_oldest_first_and_at_most_batch_max(tmp_path, registry):
    box = make_box(tmp_path, registry.url, batch_max=4)
    ids = fill(box, 10)
    assert box.deliver_once().left == 6
    assert [e["id"] for e in registry.bodies[0]["events"]] == ids[:4]
    assert registry.bodies[0]["backlog"] == 10
    assert box.flush(10.0).left == 0
    assert registry.accepted == ids and [len(b["events"]) for b in registry.bodies] == [4, 4, 2]


def test_5xx_keeps_everything_and_a_retry_sends_the_same_ids(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    ids = fill(box, 3)
    registry.status = 503
    result = box.deliver_once()
    assert result.error == "registry answered 503: database unavailable" and result.left == 3
    assert box.backlog() == 3
    registry.status = 200
    assert box.deliver_once().sent == 3
    first, second = registry.bodies
    assert first["events"] == second["events"] and registry.accepted == ids


def test_a_lost_answer_resends_and_the_registry_counts_duplicates(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    ids = fill(box, 2)
    registry.known.add(ids[0])            # the registry stored one before its answer got lost
    result = box.deliver_once()
    assert (result.sent, result.duplicates, result.left) == (1, 1, 0)


def test_registry_down_then_up_delivers_everything_once_in_order(tmp_path, registry):
    registry.stop()
    box = make_box(tmp_path, registry.url, batch_max=3)
    ids = fill(box, 4)
    result = box.deliver_once()
    assert result.error == f"cannot reach the registry at {registry.url}: connection refused"
    assert result.left == 4 and box.backlog() == 4
    ids += fill(box, 4, start=4)              # the training goes on; the events pile up
    registry.start()
    assert box.flush(10.0) == DeliveryResult(sent=8, left=0)
    assert registry.accepted == ids and registry.duplicates == 0 and len(registry.sent_ids()) == 8


def test_a_timeout_keeps_everything(tmp_path):
    silent = socket.socket()            # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        box = make_box(tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3)
        fill(box, 2)
        result = box.deliver_once()
        assert result.error.endswith("no answer in time") and box.backlog() == 2
    finally:
        silent.close()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_keeps_everything_with_a_clear_line(tmp_path, registry, status):
    box = make_box(tmp_path, registry.url)
    fill(box, 2)
    registry.status = status
    result = box.deliver_once()
    assert result.error.startswith(f"registry refused the token: {status} ")
    assert "check the token in registry_token_file" in result.error and "\n" not in result.error
    assert box.backlog() == 2


def test_no_token_says_how_to_configure_one(tmp_path, registry):
    box = make_box(tmp_path, registry.url, token=None)
    fill(box, 1)
    registry.status = 401
    assert "set registry_token_file in the ajr config" in box.deliver_once().error
    assert "Authorization" not in registry.headers[0]


def test_413_halves_the_batch_until_it_fits(tmp_path, registry):
    box = make_box(tmp_path, registry.url, batch_max=10)
    ids = fill(box, 10)
    registry.max_events = 3
    result = box.deliver_once()
    assert (result.sent, result.left, result.error) == (2, 8, None)
    assert [len(b["events"]) for b in registry.bodies] == [10, 5, 2]
    assert box.batch_max == 2                     # kept for later rounds
    assert box.flush(10.0).left == 0 and registry.accepted == ids


def test_a_single_event_too_large_for_the_registry_is_set_aside(tmp_path, registry):
    box = make_box(tmp_path, registry.url, batch_max=1)
    ids = fill(box, 2)
    registry.max_events = 0
    result = box.deliver_once()
    assert (result.rejected, result.left, result.error) == (2, 0, None) and registry.accepted == []
    reason = (tmp_path / "outbox" / "rejected" / f"{box_name(tmp_path, ids[0])}.reason").read_text()
    assert "registry answered 413: request entity too large" in reason


def box_name(tmp_path: Path, event_id: str) -> str:
    (match,) = [p.stem for p in (tmp_path / "outbox" / "rejected").glob(f"*-{event_id}.json")]
    return match


def test_rejected_events_move_aside_while_the_others_are_delivered(tmp_path, registry, caplog):
    box = make_box(tmp_path, registry.url)
    ids = fill(box, 4)
    registry.reject = {ids[1]: "unknown job_id format"}
    with caplog.at_level(logging.WARNING, logger="ajr_supervisor.outbox"):
        result = box.deliver_once()
    assert (result.sent, result.rejected, result.left) == (3, 1, 0)
    aside = tmp_path / "outbox" / "rejected"
    stem = box_name(tmp_path, ids[1])
    assert json.loads((aside / f"{stem}.json").read_text())["id"] == ids[1]
    assert "registry rejected it: unknown job_id format" in (aside / f"{stem}.reason").read_text()
    assert "unknown job_id format" in caplog.text
    assert box.deliver_once() == DeliveryResult()   # the poison never comes back


def test_corrupt_files_move_aside_and_the_rest_is_delivered(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    ids = fill(box, 2)
    directory = tmp_path / "outbox"
    (directory / "00000000000000000001-torn.json").write_text('{"id": "torn", "ty')
    (directory / "00000000000000000002-nan.json").write_text(json.dumps(event(5)).replace("1005.0", "NaN"))
    (directory / "00000000000000000003-schema.json").write_text('{"id": "x", "type": "nope"}')
    result = box.deliver_once()
    assert (result.sent, result.rejected, result.left) == (2, 3, 0)
    assert registry.accepted == ids
    reasons = sorted(p.read_text() for p in (directory / "rejected").glob("*.reason"))
    assert all("unreadable event file" in r for r in reasons) and len(reasons) == 3


def test_an_unexpected_200_body_keeps_everything(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    fill(box, 2)
    registry.reply = b"<html>captive portal</html>"
    result = box.deliver_once()
    assert "unexpected body" in result.error and box.backlog() == 2


def test_a_wrong_path_is_a_kept_error(tmp_path, registry):
    box = make_box(tmp_path, registry.url + "/prefix")
    fill(box, 1)
    assert box.deliver_once().error == "registry answered 404: Not Found" and box.backlog() == 1


def test_without_a_url_nothing_is_sent_and_events_wait(tmp_path):
    box = make_box(tmp_path, None)
    fill(box, 2)
    result = box.deliver_once()
    assert result.left == 2 and "no registry configured (registry_url)" in result.error
    assert box.backlog() == 2
    assert Deliverer(box).run_once() == 10.0        # the thread just idles


def test_a_held_lock_skips_the_round(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    fill(box, 2)
    fd = os.open(tmp_path / "outbox" / ".deliver.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert box.deliver_once() == DeliveryResult(left=2, busy=True)
        assert registry.bodies == []
    finally:
        os.close(fd)
    assert box.deliver_once().sent == 2


def test_a_filesystem_without_flock_still_delivers(tmp_path, registry, monkeypatch, caplog):
    box = make_box(tmp_path, registry.url)
    ids = fill(box, 2)

    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(outbox_mod.fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING, logger="ajr_supervisor.outbox"):
        assert box.deliver_once().sent == 2
        fill(box, 1, start=2)
        assert box.deliver_once().sent == 1
    assert registry.accepted[:2] == ids and caplog.text.count("delivering without the lock") == 1


def test_an_outbox_not_made_yet_has_nothing_to_deliver(tmp_path, registry):
    assert make_box(tmp_path, registry.url).deliver_once() == DeliveryResult()
    assert not (tmp_path / "outbox").exists() and registry.bodies == []


def test_two_outboxes_delivering_one_directory_lose_nothing(tmp_path, registry):
    writer = make_box(tmp_path, None)
    a = make_box(tmp_path, registry.url, batch_max=7)
    b = make_box(tmp_path, registry.url, batch_max=5)
    ids: list[str] = []
    done = threading.Event()

    def deliver(box: Outbox) -> None:
        while not done.is_set() or box.backlog():
            if not box.deliver_once().sent:
                time.sleep(0.002)

    threads = [threading.Thread(target=deliver, args=(box,)) for box in (a, b)]
    for t in threads:
        t.start()
    for i in range(300):
        ids += fill(writer, 1, start=i)
    done.set()
    for t in threads:
        t.join(30)
    assert sorted(registry.accepted) == sorted(ids) and registry.duplicates == 0
    assert writer.backlog() == 0


# -- Deliverer -----------------------------------------------------------------------------------

def test_backoff_doubles_with_jitter_caps_and_resets(tmp_path, registry, caplog):
    port = registry.port
    registry.stop()
    box = make_box(tmp_path, f"http://127.0.0.1:{port}")
    fill(box, 3)
    now = [0.0]
    d = Deliverer(box, min_backoff_s=0.5, max_backoff_s=8.0, interval_s=10.0, clock=lambda: now[0],
                  rng=lambda: 1.0)
    with caplog.at_level(logging.INFO, logger="ajr_supervisor.outbox"):
        delays = []
        for _ in range(7):
            delays.append(d.run_once())
            now[0] += delays[-1]
        assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        d.rng = lambda: 0.0
        assert d.run_once() == 4.0                   # jitter: between half and all of the step
        assert caplog.text.count("connection refused") == 1          # the first failure only
        assert "3 events wait in" in caplog.text
        registry.start()
        fill(box, 2, start=3)
        assert d.run_once() == 10.0 and d.failures == 0
    assert "registry delivery recovered after 32 s: sent 5 events" in caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2
    registry.stop()
    fill(box, 1, start=5)
    d.rng = lambda: 1.0
    assert d.run_once() == 0.5 and d.failures == 1            # the steps start over


def test_a_changed_error_is_logged_once_more(tmp_path, registry, caplog):
    box = make_box(tmp_path, registry.url)
    fill(box, 1)
    registry.status = 500
    d = Deliverer(box, rng=lambda: 1.0)
    with caplog.at_level(logging.WARNING, logger="ajr_supervisor.outbox"):
        d.run_once(), d.run_once()
        registry.status = 401
        d.run_once(), d.run_once()
    assert len(caplog.records) == 2 and "refused the token" in caplog.records[1].getMessage()


def test_notify_does_not_cut_a_backoff_short(tmp_path):
    d = Deliverer(make_box(tmp_path, "http://127.0.0.1:9"))
    d.notify()
    assert d._wake.is_set()
    d._wake.clear()
    d.failures = 2
    d.notify()
    assert not d._wake.is_set()


def test_run_once_never_raises(tmp_path, registry, monkeypatch, caplog):
    box = make_box(tmp_path, registry.url)
    fill(box, 1)
    monkeypatch.setattr(box, "deliver_once", lambda **kw: 1 / 0)
    with caplog.at_level(logging.WARNING, logger="ajr_supervisor.outbox"):
        assert Deliverer(box, rng=lambda: 1.0).run_once() == 0.5
    assert "outbox delivery failed: ZeroDivisionError" in caplog.text


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_the_thread_delivers_soon_after_a_put(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    d = Deliverer(box, interval_s=3600).start()
    try:
        ids = fill(box, 3)
        assert wait_for(lambda: len(registry.accepted) == 3)
        assert registry.accepted == ids
    finally:
        assert d.stop(1.0) == DeliveryResult()
    assert box.on_put is None


def test_a_burst_of_puts_goes_out_as_one_batch(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    d = Deliverer(box, interval_s=3600, linger_s=0.5).start()
    try:
        ids = fill(box, 5)
        assert wait_for(lambda: len(registry.accepted) == 5)
    finally:
        d.stop(1.0)
    assert [[e["id"] for e in b["events"]] for b in registry.bodies] == [ids]


def test_stop_flushes_what_is_left(tmp_path, registry):
    registry.stop()
    box = make_box(tmp_path, registry.url, batch_max=4)
    d = Deliverer(box, min_backoff_s=60, interval_s=3600).start()
    ids = fill(box, 10)
    assert wait_for(lambda: d.failures == 1)      # down: the thread now backs off for 30-60 s
    registry.start()
    started = time.monotonic()
    result = d.stop(5.0)
    assert time.monotonic() - started < 5
    assert result == DeliveryResult(sent=10, left=0) and registry.accepted == ids


def test_stop_with_the_registry_down_returns_in_time(tmp_path, closed_port):
    box = make_box(tmp_path, f"http://127.0.0.1:{closed_port}")
    fill(box, 2)
    d = Deliverer(box, min_backoff_s=60).start()
    started = time.monotonic()
    result = d.stop(1.0)
    assert time.monotonic() - started < 2
    assert result.left == 2 and "connection refused" in result.error


def test_stop_without_start_flushes_inline(tmp_path, registry):
    box = make_box(tmp_path, registry.url)
    fill(box, 2)
    assert Deliverer(box).stop(2.0).sent == 2


# -- from_config ---------------------------------------------------------------------------------

def test_from_config_reads_the_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    config = Config(registry_url="http://reg:8787", registry_token_file=str(token_file))
    box = from_config(config, tmp_path / "work", env={"AJR_REGISTRY_TOKEN": "from-env"})
    assert box.token == TOKEN and box.url == "http://reg:8787"
    assert box.directory == tmp_path / "work" / ".ajr" / "outbox"


def test_from_config_with_an_unreadable_token_file_warns_and_uses_the_environment(tmp_path, caplog):
    config = Config(registry_url="http://reg:8787", registry_token_file=str(tmp_path / "missing"),
                    outbox_dir=str(tmp_path / "spool"))
    with caplog.at_level(logging.WARNING, logger="ajr_supervisor.outbox"):
        box = from_config(config, tmp_path, env={"AJR_REGISTRY_TOKEN": "from-env"})
    assert box.token == "from-env" and box.directory == tmp_path / "spool"
    assert "cannot read the registry token file" in caplog.text
    assert from_config(Config(), tmp_path, env={}).token is None
    assert from_config(Config(), tmp_path, env={}).url is None


def test_fetch_lemons_reads_the_registrys_list_and_never_raises(closed_port):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ajr_supervisor.outbox import fetch_lemons

    answers = {"/api/v1/lemons": (200, b'{"nodes": ["n9", "n2"]}')}
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            status, body = answers.get(self.path, (404, b'{"detail": "Not Found"}'))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert fetch_lemons(url + "/", "tok") == ["n9", "n2"] and seen == ["Bearer tok"]
        answers["/api/v1/lemons"] = (403, b'{"detail": "a user token may not do this"}')
        assert fetch_lemons(url, "tok") is None
        answers["/api/v1/lemons"] = (200, b"not json")
        assert fetch_lemons(url, "tok") is None
        assert fetch_lemons(f"http://127.0.0.1:{closed_port}", "tok", timeout_s=1) is None
        assert fetch_lemons(None, "tok") is None
    finally:
        server.shutdown()
        server.server_close()
