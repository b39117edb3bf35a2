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
def epilog() -> None:
    """Slurm EpilogSlurmctld hook: the backstop that finishes a recovery the supervisor left undone."""
    _hook("epilog")


COMMANDS = [prolog, node_epilog, epilog]
