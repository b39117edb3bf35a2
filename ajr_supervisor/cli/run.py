"""``ajr run [ajr options] [srun options] -- CMD ARGS``: supervise the training step."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ajr_supervisor.errors import UsageError

log = logging.getLogger("ajr_supervisor.run")

# ajr's own options come first; everything after them up to `--` goes to srun.
OWN_OPTIONS = {"--dry-run": 0, "--attach": 1, "--config": 1, "-h": 0, "--help": 0}


def split_own(args: list[str]) -> tuple[list[str], list[str]]:
    own: list[str] = []
    i = 0
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name not in OWN_OPTIONS:
            break
        takes = OWN_OPTIONS[name] if "=" not in args[i] else 0
        own.extend(args[i:i + 1 + takes])
        i += 1 + takes
    return own, args[i:]


def split_command(rest: list[str]) -> tuple[list[str], list[str]]:
    """``[-N2, --exclusive, --, python, x.py]`` -> ``([-N2, --exclusive], [python, x.py])``."""
    if "--" in rest:
        i = rest.index("--")
        srun_args, command = rest[:i], rest[i + 1:]
    elif rest and rest[0].startswith("-"):
        raise UsageError(f"cannot tell srun options from the command in {' '.join(rest)!r}",
                         "put -- before the training command: ajr run [srun options] -- CMD ARGS")
    else:
        srun_args, command = [], rest
    if not command:
        raise UsageError("no training command given", "usage: ajr run [srun options] -- CMD ARGS")
    return srun_args, command


class RunCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        own, rest = split_own(list(args))
        ctx.meta["ajr_rest"] = rest
        return super().parse_args(ctx, own)


@click.command("run", cls=RunCommand)
@click.option("--dry-run", is_flag=True, help="Decide and log 'would run: scontrol ...', change nothing "
              "(also APS_DRY_RUN=true).")
@click.option("--attach", "attach", type=click.Path(dir_okay=False), default=None,
              help="Follow a log that the script's own `srun --output=LOG` writes, instead of starting "
                   "the step (run it in the background before that srun).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="System config file (default: $AJR_CONFIG or /etc/ajr/ajr.yaml).")
@click.pass_context
def run(ctx: click.Context, dry_run: bool, attach: str | None, config_path: Path | None) -> None:
    """Run the training step under supervision, in place of `srun -l -u`.

    \b
    In an sbatch script enrolled with --comment='{"APS": {...}}':
        ajr run -- python train.py --resume-from-latest
        ajr run -N2 --ntasks-per-node=8 -- python train.py
    ajr's own options come first, then srun options, then -- and the command.
    """
    if attach:
        if ctx.meta["ajr_rest"]:
            raise UsageError("--attach takes no command", "the script's own srun runs it: "
                             "ajr run --attach LOG &  then  srun --output=LOG ...")
        srun_args, command = [], []
    else:
        srun_args, command = split_command(ctx.meta["ajr_rest"])
    from ajr_supervisor.config import ConfigError, load_config

    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise UsageError("not inside a Slurm job (SLURM_JOB_ID is not set)",
                         "call `ajr run` from an sbatch script, in place of `srun -l -u`")
    try:
        config = load_config(config_path, overrides={"dry_run": True} if dry_run else None)
    except ConfigError as exc:
        if attach:
            raise
        # A broken config never stops the training: run it as plain `srun -l -u` would.
        from ajr_supervisor.slurm import Slurm
        sys.exit(_unsupervised(Slurm(), job_id, os.environ.get("SLURM_JOB_NAME", "job"),
                               Path(os.environ.get("SLURM_LOG_DIR") or os.getcwd()), srun_args, command,
                               exc.one_line()))
    sys.exit(_run_in_job(job_id, config, srun_args, command, attach))


def _run_in_job(job_id: str, config, srun_args: list[str], command: list[str], attach: str | None = None) -> int:
    from ajr_supervisor.enroll import EnrollmentError, resolve
    from ajr_supervisor.errors import AjrError
    from ajr_supervisor.rules import RuleSet
    from ajr_supervisor.slurm import Slurm
    from ajr_supervisor.journal import open_journal
    from ajr_supervisor.state import StateStore
    from ajr_supervisor.supervisor import JobContext, Supervisor

    slurm = Slurm(timeout_s=config.slurm_timeout_s, dry_run=config.dry_run)
    log_dir = Path(config.log_dir or os.environ.get("SLURM_LOG_DIR") or os.getcwd())
    try:
        job = JobContext.from_slurm(slurm, job_id)
    except AjrError as exc:
        if attach:
            raise
        return _unsupervised(slurm, job_id, os.environ.get("SLURM_JOB_NAME", "job"), log_dir, srun_args,
                             command, f"cannot read the job from Slurm ({exc.one_line()})")
    try:
        enrollment = resolve(job.comment, job.partition, config.enroll_partitions)
    except EnrollmentError as exc:
        if attach:
            click.echo(f"ajr: job {job_id} is NOT supervised: {exc.one_line()}", err=True)
            return 0
        return _unsupervised(slurm, job_id, job.name, log_dir, srun_args, command, exc.one_line())
    if enrollment is None:
        if attach:
            click.echo(f"ajr: job {job_id} is NOT supervised: it is not enrolled", err=True)
            return 0
        return _unsupervised(slurm, job_id, job.name, log_dir, srun_args, command,
                             "the job is not enrolled; enrol it with --comment='{\"APS\": {}}'")
    if enrollment.deprecated_mode:
        log.warning("job %s: auto_resume_mode 'singleton_dependency' is deprecated in AJR; "
                    "prefer 'requeue'", job_id)
    try:
        rules = RuleSet.load(config.rules_files, config.checkpoint_patterns)
        store = StateStore(config.state_path(job.work_dir))
        journal = open_journal(config, job.work_dir, {"job_id": job.job_id, "job_name": job.name,
                                                      "user": job.user, "partition": job.partition})
        lemons = _lemons(config, journal) if config.exclude_lemons else []
        supervisor = Supervisor(job, config, enrollment, slurm=slurm, store=store, rules=rules, log_dir=log_dir,
                                journal=journal, lemons=lemons)
        try:
            if attach:
                return supervisor.attach(Path(attach).absolute())
            return supervisor.run(srun_args, command)
        finally:
            journal.close(flush_s=2.0)
    except AjrError as exc:
        if "supervisor" in locals() and getattr(supervisor, "_follower", None) is not None:
            raise  # the step is already running: a failure now is a real error
        return _unsupervised(slurm, job_id, job.name, log_dir, srun_args, command, exc.one_line())


def _lemons(config, journal) -> list[str]:
    """exclude_lemons: the registry's lemon nodes, read once at start (none when unknown)."""
    from ajr_supervisor.outbox import fetch_lemons

    outbox = journal.outbox
    nodes = fetch_lemons(config.registry_url, outbox.token if outbox is not None else None) or []
    if nodes:
        log.info("lemon nodes (registry), excluded on a requeue: %s", ",".join(nodes))
    return nodes


def _unsupervised(slurm, job_id: str, job_name: str, log_dir: Path, srun_args: list[str],
                  command: list[str], why: str) -> int:
    """Bad enrollment or no Slurm answer never stops the training: run it without supervision."""
    import time

    from ajr_supervisor.supervisor import log_file_name

    click.echo(f"ajr: job {job_id} runs WITHOUT supervision: {why}", err=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / log_file_name(job_name, job_id, time.time())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        proc = slurm.launch_step(srun_args, command, stdout=fd)
    finally:
        os.close(fd)
    return proc.wait()
