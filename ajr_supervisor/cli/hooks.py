"""Slurm hook commands: ``ajr prolog`` (node Prolog), ``ajr node-epilog`` (node Epilog) and
``ajr epilog`` (EpilogSlurmctld). They never fail: a failing Prolog would drain the node."""

from __future__ import annotations

import os

import click


def _hook(context: str) -> None:
    from ajr_supervisor.hooks import run_hook

    run_hook(context, dict(os.environ))


@click.command("prolog")
def prolog() -> None:
    """Slurm node Prolog hook (slurm.conf: Prolog=...). Records the attempt's start on this node."""
    _hook("prolog")


@click.command("node-epilog")
def node_epilog() -> None:
    """Slurm node Epilog hook (slurm.conf: Epilog=...)."""
    _hook("node-epilog")


@click.command("epilog")
@click.option("--finish", is_flag=True, hidden=True, help="Internal: the detached child's work.")
def epilog(finish: bool) -> None:
    """Slurm EpilogSlurmctld hook: the backstop that finishes a recovery the supervisor left undone.

    With fast_restart set in the ajr config it also releases requeued jobs with StartTime=now+1
    (about 1.5 s to the next attempt instead of cred_expire + 1 s).
    """
    from ajr_supervisor import hooks

    env = dict(os.environ)
    if finish:
        hooks.finish(env)
    else:
        hooks.epilog(env)


COMMANDS = [prolog, node_epilog, epilog]
