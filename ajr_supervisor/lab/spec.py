"""What a lab cluster is: its parameters, its paths and the config files it runs on (pure)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ajr_supervisor.errors import UsageError

MAX_NODES = 16
HOOKS = {"prolog": "prolog", "epilog": "node-epilog", "epilog_slurmctld": "epilog"}


@dataclass(frozen=True)
class LabSpec:
    """One local Slurm cluster. ``name`` prefixes its network namespaces and links and is its
    ClusterName, so two labs with different names, subnets and ports can coexist."""

    root: Path
    name: str = "ajr"
    nodes: int = 4
    cpus_per_node: int = 2
    subnet: str = "10.77.0"
    ctld_port: int = 6817
    slurmd_port: int = 6818
    dbd_port: int = 6819
    db_port: int = 3317
    accounting: bool = False
    cred_expire_s: int = 5
    python: str = sys.executable

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", self.name):
            raise UsageError(f"lab name {self.name!r} is invalid",
                             "use 1-8 lower-case letters and digits, starting with a letter")
        if not 1 <= self.nodes <= MAX_NODES:
            raise UsageError(f"--nodes {self.nodes} is out of range", f"use 1 to {MAX_NODES}")
        if not re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", self.subnet) or any(
                int(x) > 255 for x in self.subnet.split(".")):
            raise UsageError(f"subnet {self.subnet!r} is invalid", "give the first three octets, e.g. 10.77.0")
        if self.cred_expire_s < 5:
            raise UsageError(f"cred_expire {self.cred_expire_s} is too small",
                             "Slurm rejects values below 5 and silently uses 120")

    # -- names and addresses ----------------------------------------------------------------
    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def node_addr(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    @property
    def ctl_addr(self) -> str:
        return f"{self.subnet}.1"

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    def netns(self, i: int) -> str:
        return f"{self.name}-n{i}"

    def veth_host(self, i: int) -> str:
        return f"{self.name}-h{i}"

    def veth_node(self, i: int) -> str:
        return f"{self.name}-v{i}"

    @property
    def partition(self) -> str:
        return "lab"

    # -- paths ------------------------------------------------------------------------------
    @property
    def slurm_conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def ajr_conf(self) -> Path:
        """The ajr system config the lab's hooks read (the lab's stand-in for /etc/ajr/ajr.yaml)."""
        return self.root / "etc" / "ajr.yaml"

    @property
    def slurmdbd_conf(self) -> Path:
        return self.root / "etc" / "slurmdbd.conf"

    @property
    def spec_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def hooks_dir(self) -> Path:
        return self.root / "hooks"

    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.run_dir / "munge.socket"

    @property
    def mysql_dir(self) -> Path:
        return self.root / "mysql"

    @property
    def hook_log(self) -> Path:
        return self.log_dir / "hooks.log"

    def pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.bgpid"

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        data["root"] = str(self.root)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LabSpec":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["root"] = Path(data["root"])
        return cls(**data)


def render_slurm_conf(spec: LabSpec) -> str:
    """The lab's slurm.conf. Each key's reason is in the comments here and in docs/design.md ("The lab")."""
    lines = [
        "# Written by `ajr lab up`; regenerated on every fresh start. Do not edit.",
        f"ClusterName={spec.name}",
        f"SlurmctldHost=ctl({spec.ctl_addr})",
        f"SlurmctldPort={spec.ctld_port}",
        f"SlurmdPort={spec.slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire: a requeued job is held back for cred_expire+1 s (default 120).
        f"AuthInfo=socket={spec.munge_socket},cred_expire={spec.cred_expire_s}",
        f"StateSaveLocation={spec.state_dir}",
        f"SlurmdSpoolDir={spec.spool_dir}/%n",
        f"SlurmctldPidFile={spec.run_dir}/slurmctld.pid",
        f"SlurmdPidFile={spec.run_dir}/slurmd.%n.pid",
        f"SlurmctldLogFile={spec.log_dir}/slurmctld.log",
        f"SlurmdLogFile={spec.log_dir}/slurmd.%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # No cgroups: several slurmd share one kernel and the host's /sys/fs/cgroup.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1,sched_interval=2",
        "JobRequeue=1",
        "ReturnToService=2",
        "SlurmdTimeout=10",
        "SlurmctldTimeout=10",
        "MessageTimeout=5",
        "KillWait=5",
        "InactiveLimit=0",
        "MinJobAge=600",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "MailProg=/bin/true",
        "PrologFlags=Alloc",
        f"Prolog={spec.hooks_dir}/prolog",
        f"Epilog={spec.hooks_dir}/epilog",
        f"EpilogSlurmctld={spec.hooks_dir}/epilog_slurmctld",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={spec.log_dir}/jobcomp.log",
    ]
    if spec.accounting:
        lines += [
            "AccountingStorageType=accounting_storage/slurmdbd",
            f"AccountingStorageHost={spec.ctl_addr}",
            f"AccountingStoragePort={spec.dbd_port}",
            # For slurmdbd with munge this names the munge socket to authenticate with.
            f"AccountingStoragePass={spec.munge_socket}",
        ]
    for i, node in enumerate(spec.node_names, start=1):
        lines.append(f"NodeName={node} NodeAddr={spec.node_addr(i)} NodeHostname={node} "
                     f"CPUs={spec.cpus_per_node} State=UNKNOWN")
    lines.append(f"PartitionName={spec.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def render_slurmdbd_conf(spec: LabSpec, db_password: str) -> str:
    return "\n".join([
        "# Written by `ajr lab up --accounting`. Do not edit.",
        "AuthType=auth/munge",
        f"AuthInfo=socket={spec.munge_socket}",
        "DbdHost=ctl",
        f"DbdAddr={spec.ctl_addr}",
        f"DbdPort={spec.dbd_port}",
        "SlurmUser=root",
        f"LogFile={spec.log_dir}/slurmdbd.log",
        f"PidFile={spec.run_dir}/slurmdbd.pid",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={spec.db_port}",
        "StorageUser=slurm",
        f"StoragePass={db_password}",
        "StorageLoc=slurm_acct_db",
        "DebugLevel=info",
    ]) + "\n"


def render_hook(spec: LabSpec, command: str) -> str:
    """A hook wrapper: Slurm runs hooks with no PATH and no SLURM_CONF, so the lab supplies both."""
    return (
        "#!/bin/sh\n"
        "# Written by `ajr lab up`: Slurm runs hooks with a bare environment.\n"
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH\n"
        f"SLURM_CONF={spec.slurm_conf}; export SLURM_CONF\n"
        f"AJR_HOOK_LOG={spec.hook_log}; export AJR_HOOK_LOG\n"
        f"AJR_CONFIG={spec.ajr_conf}; export AJR_CONFIG\n"
        f"exec {spec.python} -m ajr_supervisor {command} \"$@\"\n"
    )
