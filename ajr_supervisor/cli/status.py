"""``ajr status JOBID``: what happened to a job, attempt by attempt."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ajr_supervisor.errors import AjrError, UsageError


@click.command("status")
@click.argument("job_id")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the state files are (default: the config's state_dir, else <job WorkDir>/.ajr, "
                   "else ./.ajr).")
@click.option("--json", "as_json", is_flag=True, help="The raw state record.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def status(job_id: str, state_dir: Path | None, as_json: bool, config_path: Path | None) -> None:
    """Show a job's attempts, anomalies, decisions and actions as a timeline."""
    from ajr_supervisor.config import load_config
    from ajr_supervisor.report import render_timeline
    from ajr_supervisor.slurm import Slurm
    from ajr_supervisor.state import StateStore

    if not job_id.replace("_", "").isdigit():
        raise UsageError(f"{job_id!r} is not a job id", "give the numeric Slurm job id, e.g. ajr status 1234")
    config = load_config(config_path)
    candidates: list[Path] = []
    if state_dir:
        candidates.append(state_dir)
    elif config.state_dir:
        candidates.append(Path(config.state_dir))
    else:
        try:
            work = Slurm(timeout_s=config.slurm_timeout_s).show_job(job_id).fields.get("WorkDir")
            if work:
                candidates.append(config.state_path(work))
        except AjrError:
            pass
        candidates.append(config.state_path(Path.cwd()))
    for d in candidates:
        record = StateStore(d).load(job_id)
        if record is not None:
            click.echo(json.dumps(record.to_dict(), indent=2, sort_keys=True) if as_json else render_timeline(record))
            return
    raise AjrError(f"no ajr state for job {job_id} in {', '.join(map(str, candidates))}",
                   "pass --state-dir, or run it from the job's directory")
