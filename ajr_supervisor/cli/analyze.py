"""``ajr analyze LOG``: offline post-mortem of a unified log (or a pasted excerpt)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ajr_supervisor.errors import UsageError


@click.command("analyze")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--kernel-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A node's kernel log (dmesg, journalctl -k): its Xids count as that node's health.")
@click.option("--node", default="the-kernel-log-node", show_default=True,
              help="The node the --kernel-log comes from.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def analyze(log: Path, as_json: bool, kernel_log: Path | None, node: str, config_path: Path | None) -> None:
    """What happened in LOG: the anomaly, the component, the nodes and ranks, what ajr would do, and why.

    LOG may be a unified log (`srun -l` rank prefixes, `[ajr] rank` marks) or a plain excerpt as people
    paste them into issues. `-` reads standard input.
    """
    from ajr_supervisor.analysis import analyze_lines
    from ajr_supervisor.config import load_config
    from ajr_supervisor.rules import RuleSet

    config = load_config(config_path)
    if str(log) == "-":
        text = click.get_text_stream("stdin").read()
    else:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            raise UsageError(f"{log}: no such file", "give the path of a log file, or - for standard input") from None
        except OSError as exc:
            raise UsageError(f"{log}: cannot read it ({exc.strerror})") from None
    health = []
    if kernel_log is not None:
        from ajr_supervisor.analysis import xid_faults
        from ajr_supervisor.health.xid import read_kernel_log

        health = xid_faults(read_kernel_log(str(kernel_log)), node)
    result = analyze_lines(text.splitlines(), RuleSet.load(config.rules_files, config.checkpoint_patterns), health)
    if as_json:
        click.echo(json.dumps(result.to_dict(), sort_keys=True))
        return
    d = result.to_dict()
    click.echo(f"anomaly:    {d['anomaly']}")
    click.echo(f"component:  {d['component']}")
    click.echo(f"action:     {d['action']}" + (f" (nodes {', '.join(d['nodes'])})" if d["nodes"] else ""))
    if d["ranks"]:
        click.echo(f"ranks:      {', '.join(map(str, d['ranks']))}")
    click.echo(f"confidence: {d['confidence']}")
    click.echo(f"why:        {d['reason']}")
    for e in d["evidence"]:
        where = f"line {e['line']}" if e["line"] is not None else "health"
        click.echo(f"  {where}: {e['text']}" + (f"   [{e['rule']}]" if e["rule"] else ""))
