"""``ajr outbox status|flush``: the registry events waiting on disk, and sending them now.

DIR defaults to the config's outbox_path for the current directory (``<state dir>/outbox``, that
is ``./.ajr/outbox`` when run from the job's WorkDir).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from ajr_supervisor.errors import AjrError

_DIR = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
                    help="The outbox directory (default: outbox_dir from the config, else "
                         "<state_dir>/outbox, else ./.ajr/outbox).")
_CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                       default=None, help="The ajr config file (default: $AJR_CONFIG, else /etc/ajr/ajr.yaml).")


@click.group("outbox")
def outbox() -> None:
    """Registry events waiting on disk: show them, or send them now."""


@outbox.command("status")
@_DIR
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@_CONFIG
def status(directory: Path | None, as_json: bool, config_path: Path | None) -> None:
    """How many events wait, how old the oldest is, and how many the registry rejected."""
    from ajr_supervisor.config import load_config
    from ajr_supervisor.outbox import Outbox

    config = load_config(config_path)
    box = Outbox(directory or config.outbox_path(os.getcwd()), url=config.registry_url, token=None)
    info = _summary(box)
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    age = info["oldest_age_s"]
    click.echo(f"outbox:   {info['directory']}")
    click.echo(f"registry: {info['registry_url'] or 'not configured (set registry_url in the ajr config)'}")
    click.echo(f"pending:  {info['pending']}" + (f" (oldest {_age(age)} old)" if age is not None else ""))
    click.echo(f"rejected: {info['rejected']}"
               + (f" (see {Path(info['directory']) / 'rejected'})" if info["rejected"] else ""))


@outbox.command("flush")
@_DIR
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Give up after this many seconds.")
@_CONFIG
def flush(directory: Path | None, timeout_s: float, config_path: Path | None) -> None:
    """Send every waiting event now; exit 1 with the reason when some are left."""
    from ajr_supervisor.config import load_config
    from ajr_supervisor.outbox import from_config

    config = load_config(config_path)
    box = from_config(config, os.getcwd(), directory=directory)
    result = box.flush(timeout_s)
    moved = result.sent or result.duplicates or result.rejected
    done = f"sent {result.sent} events ({result.duplicates} already there, {result.rejected} rejected)"
    if result.left:
        why = result.error or (f"another process is delivering {box.directory}" if result.busy
                               else f"not done within {timeout_s:g} s")
        raise AjrError(f"{result.left} events still wait in {box.directory}: {why}"
                       + (f" ({done})" if moved else ""))
    click.echo(done if moved else f"nothing waits in {box.directory}")


def _summary(box) -> dict:
    """Directory, registry URL, pending and rejected counts, age of the oldest event (s or None)."""
    from ajr_supervisor.outbox import REJECTED_DIR

    pending = box.pending()
    stamp = pending[0].name.split("-", 1)[0] if pending else ""
    try:
        rejected = sum(1 for p in (box.directory / REJECTED_DIR).iterdir() if p.suffix == ".json")
    except OSError:
        rejected = 0
    age = max(0.0, time.time() - int(stamp) / 1e9) if stamp.isdigit() else None
    return {"directory": str(box.directory), "registry_url": box.url, "pending": len(pending),
            "rejected": rejected, "oldest_age_s": age}


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
