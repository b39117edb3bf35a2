"""Evidence gathered before a decision, from inside the allocation: node health and hang stacks.

:class:`NodeProbe` runs ``ajr probe --json`` on every node of the allocation through ``srun
--overlap`` in a background thread (started during the settle after a fatal line, so it costs no
time) and parses the answers; a failed or partial probe leaves the missing nodes UNKNOWN.
:func:`capture_stacks` takes ``py-spy dump`` of every rank before a hang's kill. Both go through
:mod:`ajr_supervisor.slurm`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ajr_supervisor.errors import AjrError
from ajr_supervisor.health import NodeHealth
from ajr_supervisor.slurm import Slurm

MAX_STACK_CHARS = 8000          # per rank, kept in the state file


class NodeProbe:
    def __init__(self, slurm: Slurm, job_id: str, nodes: Sequence[str], *, since: float, log_dir: Path,
                 timeout_s: float, info: Callable[..., None]) -> None:
        self.slurm, self.job_id, self.nodes = slurm, job_id, list(nodes)
        self.since, self.log_dir, self.timeout_s, self.info = since, log_dir, timeout_s, info
        self.health: dict[str, NodeHealth] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the probe (a second call does nothing)."""
        if self._thread is None and self.nodes:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def result(self) -> dict[str, NodeHealth]:
        """The nodes' health once the probe is done (waits at most its timeout); {} if never started."""
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)
        return dict(self.health)

    def _run(self) -> None:
        argv = [sys.executable, "-m", "ajr_supervisor", "probe", "--json", "--since", f"{self.since:.0f}",
                "--path", str(self.log_dir)]
        try:
            result = self.slurm.overlap(self.job_id, self.nodes, argv, timeout_s=self.timeout_s)
        except AjrError as exc:
            self.info("node probe failed (%s): node health UNKNOWN", exc.one_line())
            return
        health = parse_probe_output(result.stdout)
        if len(health) < len(self.nodes):
            self.info("node probe answered for %d of %d nodes (exit %d): %s", len(health), len(self.nodes),
                      result.returncode, " ".join((result.stderr or result.stdout).split())[:300])
        bad = [f"{n}: {c.name}" for n, h in sorted(health.items()) for c in h.bad]
        self.info("node health: %s", "; ".join(bad) if bad else
                  f"no BAD check on {len(health)} of {len(self.nodes)} nodes")
        self.health = health


def capture_stacks(slurm: Slurm, job_id: str, rank_pids: Mapping[int, int], rank_nodes: Mapping[int, str],
                   info: Callable[..., None]) -> dict[str, str]:
    """Hang evidence before the kill: ``py-spy dump`` of every rank, run on each node through
    ``srun --overlap`` (the allocation is still ours). Ranks map to pids by the [ajr] marks."""
    by_node: dict[str, list[tuple[int, int]]] = {}
    for rank, pid in sorted(rank_pids.items()):
        node = rank_nodes.get(rank)
        if node:
            by_node.setdefault(node, []).append((rank, pid))
    if not by_node:
        return {}
    nodes = sorted(by_node)
    # one shell per node: dump the ranks that run there (the node's ranks are passed as r:pid pairs)
    script = ('for rp in $(eval echo \\$AJR_RANKS_$(echo "$SLURMD_NODENAME" | tr -c "A-Za-z0-9\n" _)); do '
              'r=${rp%%:*}; p=${rp#*:}; echo "=== rank $r pid $p"; '
              'timeout 10 "$AJR_PYSPY" dump --pid "$p" 2>&1 || echo "(py-spy failed: is py-spy installed on the node?)"; '
              'done')
    env_pairs = {f"AJR_RANKS_{''.join(c if c.isalnum() else '_' for c in n)}":
                 " ".join(f"{r}:{p}" for r, p in by_node[n]) for n in nodes}
    beside = Path(sys.executable).with_name("py-spy")
    env_pairs["AJR_PYSPY"] = shutil.which("py-spy") or (str(beside) if beside.exists() else "py-spy")
    info("capturing stacks of %d ranks with py-spy on %s", len(rank_pids), ",".join(nodes))
    try:
        result = slurm.overlap(job_id, nodes, ["/bin/sh", "-c", script], timeout_s=20, extra_env=env_pairs)
    except AjrError as exc:
        info("could not capture stacks: %s", exc.one_line())
        return {}
    return parse_stack_dumps(result.stdout)


def parse_probe_output(output: str) -> dict[str, NodeHealth]:
    """``srun -l`` output of ``ajr probe --json`` on each node -> {node: NodeHealth}.

    Each task prints one JSON object, but srun labels every chunk it forwards, so a long line comes
    back cut into several ``N: ...`` pieces: the pieces of each task are joined before parsing."""
    pieces: dict[str, list[str]] = {}
    for line in output.splitlines():
        task, sep, text = line.partition(": ")
        if sep and task.strip().isdigit():
            pieces.setdefault(task.strip(), []).append(text)
    found: dict[str, NodeHealth] = {}
    for parts in pieces.values():
        text = "".join(parts).strip()
        try:
            health = NodeHealth.from_dict(json.loads(text[text.index("{"):]))
        except (ValueError, KeyError, TypeError):
            continue
        found[health.node] = health
    return found


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_stack_dumps(output: str) -> dict[str, str]:
    """``srun -l`` output of the dump script -> {training rank: py-spy text}. Each node's task (its
    srun prefix) announces the rank it dumps next; tasks' lines interleave, so track each prefix."""
    current: dict[str, str] = {}
    dumps: dict[str, list[str]] = {}
    for line in _ANSI.sub("", output).splitlines():
        task, sep, text = line.partition(": ")
        if not sep:
            continue
        if text.startswith("=== rank "):
            current[task] = text.split()[2]
            dumps[current[task]] = []
        elif task in current:
            dumps[current[task]].append(text)
    return {rank: "\n".join(lines).strip()[-MAX_STACK_CHARS:] for rank, lines in dumps.items()}
