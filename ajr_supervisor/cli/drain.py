"""``ajr drain``: the nodes ajr drained (admin mode), and resuming them."""

from __future__ import annotations

import time
from pathlib import Path

import click


def _drainer(config_path: Path | None):
    from ajr_supervisor.config import load_config
    from ajr_supervisor.drain import Drainer
    from ajr_supervisor.slurm import Slurm

    config = load_config(config_path)
    return Drainer(Slurm(timeout_s=config.slurm_timeout_s, dry_run=config.dry_run), config.drain_ledger,
                   max_per_hour=config.drain_max_per_hour, max_fraction=config.drain_max_fraction)


CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)


@click.group("drain")
def drain() -> None:
    """Nodes that ajr drained in admin mode (drain: true), and resuming them."""


@drain.command("list")
@CONFIG
def list_cmd(config_path: Path | None) -> None:
    """List ajr's drains, newest first (active ones marked *)."""
    entries = sorted(_drainer(config_path).entries(), key=lambda e: -e["at"])
    if not entries:
        click.echo("ajr has drained no node")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        mark = "*" if e.get("active") else " "
        click.echo(f"{mark} {e['node']:<12} {when}  job {e['job_id']:<8} {e['reason']}"
                   + ("" if e.get("active") else f"  ({e.get('closed', 'closed')})"))


@drain.command("resume")
@click.argument("node")
@CONFIG
def resume_cmd(node: str, config_path: Path | None) -> None:
    """Resume NODE, only if ajr drained it and Slurm still shows ajr's reason."""
    click.echo(_drainer(config_path).resume(node))
