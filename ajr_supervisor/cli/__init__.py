"""The ``ajr`` command: builds the real objects and hands them to the library.

Errors the user can fix (:class:`~ajr_supervisor.errors.AjrError`) print one line and exit with
their code; click's own usage errors exit 2; Ctrl-C exits 130; a closed pipe exits quietly.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ajr_supervisor import __version__
from ajr_supervisor.errors import AjrError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="ajr")
@click.option("--debug", is_flag=True, envvar="AJR_DEBUG", help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """ajr-supervisor: autonomous job recovery for AI training on Slurm.

    In an sbatch script, enrol the job with
    --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'.
    """
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s ajr %(levelname)s %(message)s", stream=sys.stderr)


def _register() -> None:
    from ajr_supervisor.cli import analyze, drain, hooks, lab, outbox, probe, registry_client, run, status
    from ajr_supervisor.cli import registry as registry_cmd

    cli.add_command(run.run)
    cli.add_command(analyze.analyze)
    cli.add_command(drain.drain)
    cli.add_command(probe.probe)
    cli.add_command(status.status)
    cli.add_command(lab.lab)
    cli.add_command(outbox.outbox)
    cli.add_command(registry_cmd.registry)
    for command in registry_client.COMMANDS:
        cli.add_command(command)
    for command in hooks.COMMANDS:
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv or sys.argv[1:]) or os.environ.get("AJR_DEBUG") not in (None, "", "0")
    try:
        cli.main(args=argv, prog_name="ajr", standalone_mode=False)
    except AjrError as exc:
        if debug:
            raise
        click.echo(f"ajr: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("ajr: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # Output went to a pipe that closed (`ajr ... | head`): not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        finally:
            sys.exit(0)
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        click.echo(f"ajr: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
                   "traceback, and please report it)", err=True)
        sys.exit(70)
    sys.exit(0)
