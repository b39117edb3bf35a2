"""``ajr lab``: a real multi-node Slurm cluster on one machine.

munged, slurmctld (in its own UTS namespace, hostname ``ctl``) and one slurmd per node, each in its
own network and UTS namespace with its own hostname and address on a private bridge; optionally a
MariaDB + slurmdbd for ``sacct``. Everything lives under one directory; ``down`` stops exactly the
processes whose pids ``up`` recorded (and checks that they are still ours before signalling).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

from ajr_supervisor.errors import AjrError, UsageError
from ajr_supervisor.lab import host
from ajr_supervisor.lab.spec import (HOOKS, LabSpec, render_hook, render_slurm_conf,
                                     render_slurmdbd_conf)
from ajr_supervisor.slurm import Slurm, SlurmError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/lib/ajr/lab")
SLURM_PACKAGES = ("slurm-wlm", "munge")
ACCOUNTING_PACKAGES = ("slurmdbd", "mariadb-server")
UP_TIMEOUT_S = 60.0


class LabError(AjrError):
    pass


@dataclass
class Daemon:
    key: str          # pid file name: munged, mariadbd, slurmdbd, slurmctld, slurmd.node1
    comm: str         # expected /proc/PID/comm
    pid: int | None
    running: bool


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, daemons)", "run it as root, e.g. with sudo")


def missing_packages(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for pkg in packages:
        proc = host.run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def install(accounting: bool = False) -> list[str]:
    """Install Debian's Slurm and munge (and MariaDB + slurmdbd); returns what was installed."""
    require_root()
    wanted = SLURM_PACKAGES + (ACCOUNTING_PACKAGES if accounting else ())
    missing = missing_packages(wanted)
    if not missing:
        return []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    host.run(["apt-get", "update", "-qq"], env=env, timeout_s=600)
    host.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, timeout_s=1200)
    return missing


class Lab:
    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.slurm = Slurm(str(spec.slurm_conf), timeout_s=10)

    @classmethod
    def load(cls, root: Path) -> "Lab":
        """The lab that ``up`` recorded under ``root``."""
        try:
            return cls(LabSpec.from_json((root / "lab.json").read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab at {root}", "start one with `ajr lab up`") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{root / 'lab.json'} is unreadable ({exc})",
                           "remove it and run `ajr lab up` again") from None

    # -- environment ------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment for anything that talks to the lab (always carries SLURM_CONF)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.spec.slurm_conf)
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    # -- daemons ----------------------------------------------------------------------------
    def expected_daemons(self) -> list[tuple[str, str]]:
        out = [("munged", "munged")]
        if self.spec.accounting:
            out += [("mariadbd", "mariadbd"), ("slurmdbd", "slurmdbd")]
        out.append(("slurmctld", "slurmctld"))
        out += [(f"slurmd.{n}", "slurmd") for n in self.spec.node_names]
        return out

    def _read_pid(self, key: str) -> int | None:
        try:
            return int(self.spec.pid_file(key).read_text().strip())
        except (OSError, ValueError):
            return None

    def _ours(self, pid: int, expected_comm: str) -> bool:
        """The pid is alive and is the daemon we started (not a recycled pid)."""
        if not host.alive(pid) or host.comm(pid) != expected_comm:
            return False
        args = " ".join(host.cmdline(pid))
        return str(self.spec.root) in args or host.environ_has(pid, f"SLURM_CONF={self.spec.slurm_conf}")

    def daemons(self) -> list[Daemon]:
        out = []
        for key, comm in self.expected_daemons():
            pid = self._read_pid(key)
            out.append(Daemon(key, comm, pid, pid is not None and self._ours(pid, comm)))
        return out

    def _start(self, key: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        pid = host.start_daemon(argv, self.spec.log_dir / f"{key}.out", env or self.env())
        self.spec.pid_file(key).write_text(f"{pid}\n")
        return pid

    def _check_alive(self, key: str, pid: int, log_file: Path) -> None:
        if not host.alive(pid):
            raise LabError(f"{key} died at start: {host.tail(log_file)}",
                           f"see {log_file}")

    # -- up ---------------------------------------------------------------------------------
    def is_up(self) -> bool:
        if not self.spec.spec_file.exists():
            return False
        if not all(d.running for d in self.daemons()):
            return False
        try:
            return self.slurm.ping()
        except SlurmError:
            return False

    def up(self, timeout_s: float = UP_TIMEOUT_S) -> float:
        """Bring the lab up (or find it up); returns seconds until every node was idle."""
        require_root()
        self._require_binaries()
        if self.spec.spec_file.exists():
            recorded = Lab.load(self.spec.root)
            if recorded.is_up():
                differs = [f.name for f in fields(LabSpec)
                           if getattr(recorded.spec, f.name) != getattr(self.spec, f.name)]
                if not differs:
                    return 0.0
                if differs != ["python"]:   # another interpreter only: restart, so the hooks run this one
                    shown = ", ".join(f"{k}={getattr(recorded.spec, k)}" for k in differs)
                    raise LabError(f"a different lab is up at {self.spec.root} ({shown})", "run `ajr lab down` first")
            recorded.cleanup()
        self.cleanup()
        t0 = time.monotonic()
        self._check_ports()
        self._rotate_logs()
        try:
            self._write_files()
            self._net_up()
            self._start_munge()
            if self.spec.accounting:
                self._start_accounting()
            self._start_slurmctld()
            self._start_slurmds()
            self._wait_idle(t0, timeout_s)
        except BaseException:
            self.cleanup()  # leave nothing half up; the logs stay for the post-mortem
            raise
        return time.monotonic() - t0

    def _require_binaries(self) -> None:
        need = ["munged", "slurmctld", "slurmd", "sinfo", "ip", "unshare", "nsenter"]
        if self.spec.accounting:
            need += ["slurmdbd", "mariadbd", "mariadb-install-db", "sacctmgr"]
        missing = [b for b in need if not shutil.which(b, path=self.env()["PATH"])]
        if missing:
            flag = " --accounting" if self.spec.accounting else ""
            raise LabError(f"{', '.join(missing)} not installed", f"run `ajr lab install{flag}` first")

    def _check_ports(self) -> None:
        ports = {"slurmctld": self.spec.ctld_port}
        if self.spec.accounting:
            ports.update(slurmdbd=self.spec.dbd_port, mariadb=self.spec.db_port)
        for what, port in ports.items():
            if host.port_in_use(port):
                raise LabError(f"port {port} (for {what}) is already in use",
                               "stop whatever listens there (`ss -ltnp`) or start the lab with other ports")

    def _rotate_logs(self) -> None:
        """A fresh lab starts from job id 1: keep the previous run's logs apart, in ``log.prev``."""
        log_dir = self.spec.log_dir
        if log_dir.is_dir():
            prev = log_dir.with_name("log.prev")
            shutil.rmtree(prev, ignore_errors=True)
            log_dir.rename(prev)

    def _write_files(self) -> None:
        s = self.spec
        for d in (s.root, s.log_dir, s.run_dir, s.state_dir, s.hooks_dir, s.slurm_conf.parent):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        for node in s.node_names:
            (s.spool_dir / node).mkdir(parents=True, exist_ok=True)
        s.munge_dir.mkdir(parents=True, exist_ok=True)
        s.munge_dir.chmod(0o700)
        key = s.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        s.slurm_conf.write_text(render_slurm_conf(s))
        if not s.ajr_conf.exists():
            s.ajr_conf.write_text("# ajr system config for this lab's hooks (see `ajr run --help`).\n"
                                  "# fast_restart: true\n")
        for script, command in HOOKS.items():
            path = s.hooks_dir / script
            path.write_text(render_hook(s, command))
            path.chmod(0o755)
        s.spec_file.write_text(s.to_json())

    def _net_up(self) -> None:
        s = self.spec
        host.ip("link", "add", s.bridge, "type", "bridge")
        host.ip("addr", "add", f"{s.ctl_addr}/24", "dev", s.bridge)
        host.ip("link", "set", s.bridge, "up")
        for i in range(1, s.nodes + 1):
            ns, h, v = s.netns(i), s.veth_host(i), s.veth_node(i)
            host.ip("netns", "add", ns)
            host.ip("link", "add", h, "type", "veth", "peer", "name", v)
            host.ip("link", "set", h, "master", s.bridge)
            host.ip("link", "set", h, "up")
            host.ip("link", "set", v, "netns", ns)
            host.ip("-n", ns, "link", "set", "lo", "up")
            host.ip("-n", ns, "addr", "add", f"{s.node_addr(i)}/24", "dev", v)
            host.ip("-n", ns, "link", "set", v, "up")

    def _start_munge(self) -> None:
        s = self.spec
        pid = self._start("munged", [
            "munged", "--foreground", "--force", f"--socket={s.munge_socket}",
            f"--key-file={s.munge_dir / 'munge.key'}", f"--pid-file={s.run_dir / 'munged.pid'}",
            f"--log-file={s.log_dir / 'munged.log'}", f"--seed-file={s.munge_dir / 'munged.seed'}",
        ])
        self._wait_for(lambda: s.munge_socket.exists(), 10, "munged", pid, s.log_dir / "munged.out")

    def _start_accounting(self) -> None:
        s = self.spec
        data = s.mysql_dir / "data"
        s.mysql_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(s.mysql_dir, "mysql", "mysql")
        if not data.exists():
            host.run(["mariadb-install-db", "--user=mysql", f"--datadir={data}",
                      "--auth-root-authentication-method=socket", "--skip-test-db"], timeout_s=120)
        sock = s.mysql_dir / "mysqld.sock"
        pid = self._start("mariadbd", [
            "mariadbd", "--user=mysql", f"--datadir={data}", f"--socket={sock}",
            f"--port={s.db_port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
            f"--pid-file={s.mysql_dir / 'mariadbd.pid'}", f"--log-error={s.log_dir / 'mariadb.log'}",
            "--innodb-buffer-pool-size=64M",
        ])
        self._wait_for(lambda: sock.exists(), 30, "mariadbd", pid, s.log_dir / "mariadb.log")
        password = secrets.token_hex(12)
        sql = ("CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
               f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
               f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
        host.run(["mariadb", f"--socket={sock}", "-u", "root", "-e", sql])
        s.slurmdbd_conf.write_text(render_slurmdbd_conf(s, password))
        s.slurmdbd_conf.chmod(0o600)
        pid = self._start("slurmdbd", ["unshare", "--uts", "sh", "-c", "hostname ctl; exec slurmdbd -D"])
        self._wait_for(lambda: host.port_in_use(s.dbd_port), 30, "slurmdbd", pid, s.log_dir / "slurmdbd.log")
        for argv in (["sacctmgr", "-i", "add", "cluster", s.name],
                     ["sacctmgr", "-i", "add", "account", "lab", f"Cluster={s.name}"],
                     ["sacctmgr", "-i", "add", "user", "root", "Account=lab", f"Cluster={s.name}"]):
            proc = host.run(argv, env=self.env(), check=False)
            if proc.returncode != 0 and "Nothing new added" not in proc.stdout + proc.stderr:
                raise LabError(f"`{' '.join(argv)}` failed: {' '.join(proc.stderr.split())[:200]}")

    def _start_slurmctld(self) -> None:
        pid = self._start("slurmctld", ["unshare", "--uts", "sh", "-c", "hostname ctl; exec slurmctld -D -i"])
        self._wait_for(lambda: self._ping(), 30, "slurmctld", pid, self.spec.log_dir / "slurmctld.log")

    def _ping(self) -> bool:
        try:
            return self.slurm.ping()
        except SlurmError:
            return False

    def _start_slurmds(self) -> None:
        for node in self.spec.node_names:
            self.start_slurmd(node)

    def _node_index(self, node: str) -> int:
        if node not in self.spec.node_names:
            raise UsageError(f"no node {node!r} in this lab", f"nodes: {', '.join(self.spec.node_names)}")
        return self.spec.node_names.index(node) + 1

    def start_slurmd(self, node: str) -> int:
        """Start (or restart) one node's slurmd in its network namespace; returns its pid."""
        i = self._node_index(node)
        return self._start(f"slurmd.{node}", [
            "nsenter", f"--net=/run/netns/{self.spec.netns(i)}", "unshare", "--uts", "sh", "-c",
            f"hostname {node}; exec slurmd -D -N {node}"])

    def kill_slurmd(self, node: str, sig: int = 9) -> int | None:
        """Fault injection: kill one node's slurmd (SIGKILL by default); job steps live on."""
        self._node_index(node)
        pid = self._read_pid(f"slurmd.{node}")
        if pid is not None and self._ours(pid, "slurmd"):
            os.kill(pid, sig)
            return pid
        return None

    def set_link(self, node: str, up: bool) -> None:
        """Fault injection: cut (or restore) one node's network link."""
        i = self._node_index(node)
        host.ip("-n", self.spec.netns(i), "link", "set", self.spec.veth_node(i), "up" if up else "down")

    def _wait_for(self, ready, timeout_s: float, key: str, pid: int, log_file: Path) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            self._check_alive(key, pid, log_file)
            time.sleep(0.02)
        raise LabError(f"{key} did not become ready within {timeout_s:g} s: {host.tail(log_file)}",
                       f"see {log_file}")

    def _wait_idle(self, t0: float, timeout_s: float) -> None:
        s = self.spec
        deadline = t0 + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for i, node in enumerate(s.node_names, start=1):
                pid = self._read_pid(f"slurmd.{node}")
                if pid is None or not host.alive(pid):
                    raise LabError(f"slurmd on {node} died at start: "
                                   f"{host.tail(s.log_dir / f'slurmd.{node}.log')}",
                                   f"see {s.log_dir / f'slurmd.{node}.log'}")
            try:
                states = {r.node: r.state for r in self.slurm.sinfo()}
            except SlurmError:
                states = {}
            if states and all(states.get(n) == "idle" for n in s.node_names):
                return
            time.sleep(0.05)
        raise LabError(f"nodes not idle after {timeout_s:g} s: {states}",
                       f"see {s.log_dir}/slurmctld.log")

    # -- down -------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop what ``up`` started and remove its namespaces and links; returns what it stopped."""
        require_root()
        return self.cleanup()

    def cleanup(self) -> list[str]:
        """Stop our daemons and stray job steps, remove our namespaces and links, wipe state."""
        stopped: list[str] = []
        order = ["slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"]
        daemons = self.daemons() if self.spec.spec_file.exists() else self._leftover_daemons()
        for comm in order:
            batch = [d for d in daemons if d.comm == comm and d.running and d.pid]
            host.stop_pids([d.pid for d in batch])
            stopped += [f"{d.key} (pid {d.pid})" for d in batch]
        steps = [p for p in host.all_pids()
                 if host.comm(p) == "slurmstepd" and host.environ_has(p, f"SLURM_CONF={self.spec.slurm_conf}")]
        if steps:
            host.stop_pids(host.descendants(steps) + steps, timeout_s=3)
            stopped.append(f"{len(steps)} stray slurmstepd")
        self._net_down()
        s = self.spec
        for d in (s.state_dir, s.spool_dir, s.run_dir, s.mysql_dir):
            shutil.rmtree(d, ignore_errors=True)
        s.spec_file.unlink(missing_ok=True)
        return stopped

    def _leftover_daemons(self) -> list[Daemon]:
        """Without lab.json we cannot know the node list: look at every pid file we may have written."""
        out = []
        if self.spec.run_dir.is_dir():
            for f in self.spec.run_dir.glob("*.bgpid"):
                key = f.name[:-len(".bgpid")]
                comm = key.split(".", 1)[0]
                pid = self._read_pid(key)
                out.append(Daemon(key, comm, pid, pid is not None and self._ours(pid, comm)))
        return out

    def _net_down(self) -> None:
        s = self.spec
        prefix = f"{s.name}-"
        for ns in host.netns_list():
            if ns.startswith(prefix + "n") and ns[len(prefix) + 1:].isdigit():
                host.ip("netns", "del", ns, check=False)
        for link in host.link_names():
            if link == s.bridge or (link.startswith(prefix + "h") and link[len(prefix) + 1:].isdigit()):
                host.ip("link", "del", link, check=False)

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        daemons = self.daemons()
        info: dict = {"root": str(self.spec.root), "slurm_conf": str(self.spec.slurm_conf),
                      "daemons": [{"name": d.key, "pid": d.pid, "running": d.running} for d in daemons],
                      "nodes": [], "error": None}
        try:
            info["nodes"] = [{"node": r.node, "partition": r.partition, "state": r.state,
                              "cpus": r.cpus, "reason": r.reason} for r in self.slurm.sinfo()]
        except SlurmError as exc:
            info["error"] = exc.one_line()
        return info
