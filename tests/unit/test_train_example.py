"""slurm_examples/train.py, the stand-in training job, run as real processes with simulated Slurm env."""
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TRAIN = Path(__file__).resolve().parents[2] / "slurm_examples" / "train.py"
TS = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]"
MEGATRON = re.compile(
    rf"^ {TS} iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| "
    r"elapsed time per iteration \(ms\): (\d+\.\d) \| throughput per GPU \(TFLOP/s/GPU\): (\d+\.\d) \| "
    r"lm loss: (\d\.\d{6}E[+-]\d\d) \|$")
RANK_LINE = re.compile(rf"^{TS} rank (\d+) iteration (\d+) step_time_ms (\d+\.\d)$")
SAVE_CHECKPOINT = re.compile(r"SAVE_CHECKPOINT: iteration:.*, ckpt saving takes .* seconds", re.I)
AJR_CKPT_PATTERNS = [re.compile(p, re.I) for p in (
    r"save-checkpoint", r"SAVE_CHECKPOINT: iteration:.*, ckpt saving takes .* seconds", r"Saved checkpoint to")]
SEGFAULT_LINE = "Rank0: (1) segmentation fault: artificial segfault"


def slurm_env(rank=0, ntasks=1, node="node1", attempt=0, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks), SLURMD_NODENAME=node,
               SLURM_RESTART_COUNT=str(attempt), **extra)
    return env


def argv(ckpt, *args):
    return [sys.executable, str(TRAIN), "--ckpt-dir", str(ckpt), "--step-s", "0.01", *map(str, args)]


def train(ckpt, *args, timeout=10, **env):
    return subprocess.run(argv(ckpt, *args), env=slurm_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def megatron(out):
    return [MEGATRON.match(line) for line in out.splitlines() if MEGATRON.match(line)]


def iterations(out):
    return [int(m.group(1)) for m in megatron(out)]


class Running:
    """A train.py process whose merged output is read line by line in a thread."""

    def __init__(self, proc):
        self.proc, self.lines, self.seen = proc, queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for(self, text, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.next_line(deadline - time.monotonic())
            if line is not None and text in line:
                return line
        raise AssertionError(f"no line with {text!r} in {timeout} s; saw {self.seen[-5:]}")

    def silent_for(self, seconds):
        return self.next_line(seconds) is None and self.proc.poll() is None


@pytest.fixture
def spawn():
    procs = []

    def start(ckpt, *args, **env):
        proc = subprocess.Popen(argv(ckpt, *args), env=slurm_env(**env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(proc)
        return Running(proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        proc.stdout.close()


def test_rank0_prints_megatron_lines_and_finishes(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 12, "--ckpt-every", 5)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.match(rf"^{TS} rank 0 on node1: starting attempt 0 from iteration 0$", lines[0])
    found = megatron(r.stdout)
    assert [int(m.group(1)) for m in found] == list(range(1, 13))
    assert all(int(m.group(2)) == 12 for m in found)
    assert [int(m.group(3)) for m in found] == [32 * i for i in range(1, 13)]
    assert all(8.0 <= float(m.group(4)) < 200.0 for m in found)
    assert all(370.0 <= float(m.group(5)) <= 390.0 for m in found)
    losses = [float(m.group(6)) for m in found]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == 12
    assert "iteration        1/      12 | consumed samples:           32 |" in r.stdout
    assert re.match(rf"^{TS} training finished: 12 iterations$", lines[-1])


def test_checkpoints_are_saved_atomically_and_announced(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = train(ckpt, "--iters", 12, "--ckpt-every", 5)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["iter_0000005", "iter_0000010", "iter_0000012", "latest"]
    assert (ckpt / "latest").read_text().strip() == "12"
    state = json.loads((ckpt / "iter_0000010" / "state.json").read_text())
    assert state["iteration"] == 10 and state["loss"] > 0
    saves = [line for line in r.stdout.splitlines() if SAVE_CHECKPOINT.search(line)]
    assert [re.search(r"iteration: (\d+),", s).group(1) for s in saves] == ["5", "10", "12"]
    assert re.match(rf"^{TS} SAVE_CHECKPOINT: iteration: 5, ckpt saving takes \d+\.\d\d seconds$", saves[0])
    # exactly one line per save matches any of AJR's default checkpoint patterns
    assert len([ln for ln in r.stdout.splitlines() if any(p.search(ln) for p in AJR_CKPT_PATTERNS)]) == 3
    assert f"saving checkpoint at iteration 5 to {ckpt}" in r.stdout
    assert f"successfully saved checkpoint from iteration 5 to {ckpt}" in r.stdout


def test_a_requeued_attempt_resumes_from_the_latest_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = train(ckpt, "--iters", 20, "--ckpt-every", 5, "--fail-at", 13, "--fail-attempt", 0)
    assert first.returncode == 1
    assert "rank 0: injected failure, exiting with 1" in first.stdout
    assert iterations(first.stdout) == list(range(1, 13))
    assert (ckpt / "latest").read_text().strip() == "10"

    second = train(ckpt, "--iters", 20, "--ckpt-every", 5, "--fail-at", 13, "--fail-attempt", 0, attempt=1)
    assert second.returncode == 0, second.stderr
    assert re.search(rf"^{TS} rank 0 on node1: resuming from checkpoint iteration 10$", second.stdout, re.M)
    assert "rank 0 on node1: starting attempt 1 from iteration 10" in second.stdout
    assert iterations(second.stdout) == list(range(11, 21))
    assert second.stdout.splitlines()[-1].endswith("training finished: 20 iterations")

    # the resumed run continues the loss curve of an uninterrupted one
    whole = train(tmp_path / "other", "--iters", 20, "--ckpt-every", 5)
    assert megatron(whole.stdout)[-1].group(6) == megatron(second.stdout)[-1].group(6)

    again = train(ckpt, "--iters", 20, attempt=2)
    assert again.returncode == 0 and iterations(again.stdout) == []
    assert "resuming from checkpoint iteration 20" in again.stdout and "training finished: 20" in again.stdout


def test_no_ckpt_saves_nothing(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 6, "--ckpt-every", 2, "--no-ckpt")
    assert r.returncode == 0 and not SAVE_CHECKPOINT.search(r.stdout)
    assert not (tmp_path / "ckpt").exists()


def test_other_ranks_print_per_rank_lines(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 4, "--no-ckpt", rank=1, ntasks=2, node="node2")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert re.match(rf"^{TS} rank 1 on node2: starting attempt 0 from iteration 0$", lines[0])
    assert [int(RANK_LINE.match(ln).group(2)) for ln in lines[1:]] == [1, 2, 3, 4]
    assert not megatron(r.stdout) and "training finished" not in r.stdout


def test_two_ranks_share_checkpoints(tmp_path, spawn):
    ranks = [spawn(tmp_path / "ckpt", "--iters", 10, "--ckpt-every", 5, rank=r, ntasks=2, node=f"node{r + 1}")
             for r in (0, 1)]
    for r in ranks:
        assert r.proc.wait(timeout=10) == 0
        while r.next_line(1) is not None:
            pass
    assert "training finished: 10 iterations" in ranks[0].seen[-1]
    assert [int(RANK_LINE.match(ln).group(2)) for ln in ranks[1].seen if RANK_LINE.match(ln)] == list(range(1, 11))
    assert not any("timed out" in ln for ln in ranks[1].seen)


def test_fail_mode_exit_code(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 10, "--fail-at", 3, "--fail-mode", "exit:3")
    assert r.returncode == 3
    assert re.search(rf"^{TS} rank 0: injected failure, exiting with 3$", r.stdout, re.M)
    assert iterations(r.stdout) == [1, 2]


@pytest.mark.parametrize("name, signum", [("KILL", 9), ("SEGV", 11), ("SIGTERM", 15)])
def test_fail_mode_signal(tmp_path, name, signum):
    r = train(tmp_path / "ckpt", "--iters", 10, "--fail-at", 3, "--fail-mode", f"signal:{name}")
    assert r.returncode == -signum
    assert "rank 0: injected failure, killing itself with SIG" in r.stdout


@pytest.mark.parametrize("exc", ["ValueError", "ModuleNotFoundError"])
def test_fail_mode_traceback(tmp_path, exc):
    r = train(tmp_path / "ckpt", "--iters", 10, "--fail-at", 3, "--fail-mode", f"traceback:{exc}")
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):")
    assert r.stderr.rstrip().endswith(f"{exc}: injected failure on rank 0 at iteration 3")


def test_fail_mode_cuda_ecc(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 10, "--fail-at", 3, "--fail-mode", "cuda-ecc")
    assert r.returncode == 1
    assert "Traceback (most recent call last):" in r.stderr
    assert "RuntimeError: CUDA error: uncorrectable ECC error encountered" in r.stderr.splitlines()


def test_fail_mode_nccl_timeout(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 10, "--no-ckpt", "--fail-at", 3, "--fail-rank", 1,
              "--fail-mode", "nccl-timeout", rank=1, ntasks=2)
    assert r.returncode == 1
    assert ("[rank1]:[E ProcessGroupNCCL.cpp:563] [Rank 1] Watchdog caught collective operation timeout: "
            "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 "
            "milliseconds before timing out.") in r.stdout.splitlines()


def test_fail_mode_segfault_line_keeps_running(tmp_path, spawn):
    run = spawn(tmp_path / "ckpt", "--iters", 10, "--fail-at", 3, "--fail-mode", "segfault-line")
    assert run.wait_for("segmentation fault") == SEGFAULT_LINE
    assert run.silent_for(0.3)


def test_fail_mode_hang_goes_silent(tmp_path, spawn):
    run = spawn(tmp_path / "ckpt", "--iters", 10, "--fail-at", 3, "--fail-mode", "hang")
    assert re.match(rf"^{TS} rank 0: injected hang$", run.wait_for("injected hang"))
    assert iterations("\n".join(run.seen)) == [1, 2]
    assert run.silent_for(0.3)


def test_hang_stops_the_other_ranks_too(tmp_path, spawn):
    run = spawn(tmp_path / "ckpt", "--iters", 10, "--no-ckpt", "--fail-at", 3, "--fail-mode", "hang",
                rank=1, ntasks=2, node="node2")
    run.wait_for("rank 1 iteration 2 step_time_ms")
    assert run.silent_for(0.3)


def test_hang_on_a_node_outside_the_job_stops_nobody(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 5, "--fail-at", 3, "--fail-node", "node2", "--fail-mode", "hang",
              SLURM_JOB_NODELIST="node[1,3]")
    assert r.returncode == 0 and iterations(r.stdout) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("fail_attempt, attempt, code", [(None, 0, 5), (None, 2, 5), (0, 0, 5), (0, 1, 0), (1, 0, 0)])
def test_fail_attempt_gates_on_slurm_restart_count(tmp_path, fail_attempt, attempt, code):
    gate = [] if fail_attempt is None else ["--fail-attempt", fail_attempt]
    r = train(tmp_path / "ckpt", "--iters", 4, "--fail-at", 2, "--fail-mode", "exit:5", *gate, attempt=attempt)
    assert r.returncode == code


@pytest.mark.parametrize("node, code", [("node1", 0), ("node2", 4)])
def test_fail_node_gates_on_slurmd_nodename(tmp_path, node, code):
    r = train(tmp_path / "ckpt", "--iters", 4, "--no-ckpt", "--fail-at", 2, "--fail-node", "node2",
              "--fail-mode", "exit:4", rank=1, ntasks=2, node=node)
    assert r.returncode == code
    assert ("rank 1: injected failure, exiting with 4" in r.stdout) == (code == 4)


def test_fail_rank_only_fails_that_rank(tmp_path):
    r = train(tmp_path / "ckpt", "--iters", 4, "--fail-at", 2, "--fail-rank", 1, "--fail-mode", "exit:6")
    assert r.returncode == 0


def test_slow_node_is_slower_with_lower_throughput(tmp_path):
    r = train(tmp_path / "a", "--iters", 3, "--slow-node", "node1", "--slow-factor", 4)
    assert all(float(m.group(4)) >= 38.0 and float(m.group(5)) < 100.0 for m in megatron(r.stdout))
    r = train(tmp_path / "b", "--iters", 3, "--slow-node", "node2", "--slow-factor", 4)
    assert all(float(m.group(5)) > 300.0 for m in megatron(r.stdout))


@pytest.mark.parametrize("args", [
    [], ["--fail-mode", "exit:x"], ["--fail-mode", "exit:256"], ["--fail-mode", "signal:NOPE"],
    ["--fail-mode", "traceback:print"], ["--fail-mode", "traceback:NotAnException"], ["--fail-mode", "boom"],
    ["--fail-rank", "1", "--fail-node", "node1"], ["--iters", "x"], ["--fail-at", "0"], ["--ckpt-every", "0"],
])
def test_argument_errors_exit_2(tmp_path, args):
    cmd = [sys.executable, str(TRAIN)] + (["--ckpt-dir", str(tmp_path)] if args else []) + args
    r = subprocess.run(cmd, env=slurm_env(), capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_fail_after_fails_every_attempt_after_progress(tmp_path):
    """--fail-after N: each attempt runs N iterations from its checkpoint, then fails."""
    ck = tmp_path / "ck"
    cmd = [sys.executable, str(TRAIN), "--iters", "20", "--step-s", "0", "--ckpt-dir", str(ck),
           "--ckpt-every", "2", "--fail-after", "3", "--fail-mode", "exit:4"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert first.returncode == 4
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "SLURM_RESTART_COUNT": "1"})
    assert second.returncode == 4
    assert "resuming from checkpoint iteration 2" in second.stdout
    assert "iteration        5/" in second.stdout and "iteration        6/" not in second.stdout
