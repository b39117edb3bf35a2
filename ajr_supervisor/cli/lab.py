"""``ajr lab``: a real Slurm cluster on this machine (install, up, down, status, env)."""

from __future__ import annotations

import json
from pathlib import Path

import click

DIR_OPTION = click.option(
    "--dir", "root", type=click.Path(file_okay=False, path_type=Path), envvar="AJR_LAB_DIR",
    default="/var/lib/ajr/lab", show_default=True, help="Where the lab keeps config, logs and state.")


@click.group("lab")
def lab() -> None:
    """A real multi-node Slurm cluster on this one machine (for demos, tests, benchmarks)."""


@lab.command("install")
@click.option("--accounting", is_flag=True, help="Also install slurmdbd and MariaDB (for sacct).")
def install_cmd(accounting: bool) -> None:
    """Install Debian's Slurm and munge with apt (does nothing when already installed)."""
    from ajr_supervisor.lab import install

    installed = install(accounting=accounting)
    click.echo(f"installed: {' '.join(installed)}" if installed else "already installed")


@lab.command("up")
@DIR_OPTION
@click.option("--nodes", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--accounting", is_flag=True, help="Add slurmdbd with a local MariaDB so sacct works.")
@click.option("--name", default="ajr", show_default=True,
              help="Prefix of the lab's namespaces and links, and its ClusterName.")
@click.option("--subnet", default="10.77.0", show_default=True, help="First three octets of the lab network.")
@click.option("--ctld-port", type=click.IntRange(1024, 65535), default=6817, show_default=True)
@click.option("--dbd-port", type=click.IntRange(1024, 65535), default=6819, show_default=True)
@click.option("--db-port", type=click.IntRange(1024, 65535), default=3317, show_default=True)
@click.option("--cred-expire", type=click.IntRange(5, 3600), default=5, show_default=True,
              help="Slurm's cred_expire: a requeued job waits this + 1 s before it may start.")
def up_cmd(root: Path, nodes: int, accounting: bool, name: str, subnet: str, ctld_port: int,
           dbd_port: int, db_port: int, cred_expire: int) -> None:
    """Start munge, slurmctld and one slurmd per node (each in its own network namespace)."""
    from ajr_supervisor.lab import Lab, LabSpec

    spec = LabSpec(root=root.absolute(), name=name, nodes=nodes, subnet=subnet, ctld_port=ctld_port,
                   dbd_port=dbd_port, db_port=db_port, accounting=accounting, cred_expire_s=cred_expire)
    lab_ = Lab(spec)
    seconds = lab_.up()
    if seconds == 0.0:
        click.echo(f"lab already up: {nodes} nodes")
    else:
        click.echo(f"lab up: {nodes} nodes idle in {seconds:.2f} s"
                   + (" (with slurmdbd + MariaDB)" if accounting else ""))
    click.echo(f"  config:  {spec.slurm_conf}")
    click.echo(f"  logs:    {spec.log_dir}")
    click.echo(f"  state:   {spec.state_dir}")
    click.echo(f"  use it:  export SLURM_CONF={spec.slurm_conf}   (or: eval \"$(ajr lab env)\")")


@lab.command("down")
@DIR_OPTION
def down_cmd(root: Path) -> None:
    """Stop what `up` started and remove the lab's namespaces and links."""
    from ajr_supervisor.lab import Lab

    stopped = Lab.load(root.absolute()).down()
    click.echo("lab down" + (f": stopped {', '.join(stopped)}" if stopped else ": nothing was running"))


@lab.command("status")
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(root: Path, as_json: bool) -> None:
    """Show the lab's daemons and nodes (exit 1 when something is down)."""
    from ajr_supervisor.lab import Lab

    info = Lab.load(root.absolute()).status()
    healthy = all(d["running"] for d in info["daemons"]) and not info["error"] and all(
        n["state"] in ("idle", "mixed", "allocated", "completing") for n in info["nodes"])
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"lab at {info['root']} (SLURM_CONF={info['slurm_conf']})")
        for d in info["daemons"]:
            click.echo(f"  {d['name']:<16} {'running' if d['running'] else 'STOPPED':<8} pid {d['pid'] or '-'}")
        if info["error"]:
            click.echo(f"  slurmctld: {info['error']}")
        for n in info["nodes"]:
            reason = f"  ({n['reason']})" if n["reason"] else ""
            click.echo(f"  {n['node']:<8} {n['partition']:<6} {n['state']}{reason}")
    if not healthy:
        raise SystemExit(1)


@lab.command("env")
@DIR_OPTION
def env_cmd(root: Path) -> None:
    """Print `export SLURM_CONF=...` for the lab (use: eval "$(ajr lab env)")."""
    from ajr_supervisor.lab import Lab

    click.echo(f"export SLURM_CONF={Lab.load(root.absolute()).spec.slurm_conf}")
