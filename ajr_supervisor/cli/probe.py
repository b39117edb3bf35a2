"""``ajr probe``: this node's health (host, kernel Xids, NVML) as three-state checks."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("probe")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
@click.option("--path", "paths", multiple=True, help="A directory whose file system must have room (repeatable).")
@click.option("--since", type=float, default=None, help="Only kernel-log events after this Unix time.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def probe(as_json: bool, paths: tuple[str, ...], since: float | None, config_path: Path | None) -> None:
    """Probe this node: memory, swap, /dev/shm, disk, OOM kills, NVIDIA Xids, NVML (ECC, row remapping,
    recovery action, NVLink, throttling). Each check is GOOD, BAD or UNKNOWN; exit 1 when any is BAD."""
    from ajr_supervisor.config import load_config
    from ajr_supervisor.health import State
    from ajr_supervisor.health.probe import probe_node

    config = load_config(config_path)
    health = probe_node(paths=paths, since=since, kernel_log=config.kernel_log, nvml_timeout_s=config.nvml_timeout_s)
    if as_json:
        click.echo(json.dumps(health.to_dict(), sort_keys=True, default=str))
    else:
        click.echo(f"{health.node}: {health.state.value}")
        for c in health.checks:
            click.echo(f"  {c.state.value:<7} {c.name:<28} {c.detail}")
    if health.state == State.BAD:
        raise SystemExit(1)
