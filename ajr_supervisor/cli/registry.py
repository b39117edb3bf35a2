"""``ajr registry``: run the central registry (serve), migrate its database, manage its tokens.

Every command takes ``--config FILE`` (the registry's YAML, default /etc/ajr/registry.yaml when it
exists) and ``--db URL`` (a SQLite path or postgresql+psycopg://...; overrides the file's ``db``).
The database is migrated before anything else, so a new database needs no separate step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

log = logging.getLogger("ajr_supervisor.registry")

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="Registry config (YAML); default /etc/ajr/registry.yaml if it exists.")
DB = click.option("--db", default=None, metavar="URL",
                  help="SQLite file path, sqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB.")


def _settings(config_path: Path | None, **overrides):
    from ajr_supervisor.registry.settings import load_settings

    return load_settings(config_path, **overrides)


def _database(config_path: Path | None, db: str | None):
    from ajr_supervisor.registry.db import Database, migrate

    database = Database(_settings(config_path, db=db).db)
    migrate(database)
    return database


def _slurm(settings):
    from ajr_supervisor.slurm import Slurm

    if settings.slurm_confs:
        return {name: Slurm(conf, timeout_s=settings.slurm_timeout_s, dry_run=settings.dry_run)
                for name, conf in settings.slurm_confs.items()}
    return Slurm(timeout_s=settings.slurm_timeout_s, dry_run=settings.dry_run)


@click.group("registry")
def registry() -> None:
    """The central registry: events from every supervisor, jobs, actions, KPIs, nodes (HTTP API)."""


@registry.command("serve")
@CONFIG
@DB
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8787).")
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve(config_path: Path | None, db: str | None, host: str | None, port: int | None, access_log: bool) -> None:
    """Run the registry service (FastAPI on uvicorn); migrates the database first."""
    import uvicorn

    from ajr_supervisor.registry.app import create_app
    from ajr_supervisor.registry.db import safe_url

    settings = _settings(config_path, db=db, host=host, port=port)
    app = create_app(settings, slurm=_slurm(settings))
    log.info("registry on http://%s:%d, database %s", settings.host, settings.port,
             safe_url(app.state.ctx.db.url))
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=access_log,
                loop=_best("uvloop", "auto"), http=_best("httptools", "auto"), server_header=False)


def _best(module: str, fallback: str) -> str:
    import importlib.util

    return module if importlib.util.find_spec(module) else fallback


@registry.command("migrate")
@CONFIG
@DB
def migrate_cmd(config_path: Path | None, db: str | None) -> None:
    """Create or upgrade the registry's tables (serve does this too)."""
    from ajr_supervisor.registry.db import current_revision, safe_url

    database = _database(config_path, db)
    click.echo(f"{safe_url(database.url)}: schema at revision {current_revision(database)}")


@registry.group("token")
def token() -> None:
    """Bearer tokens: create (shown once), list, revoke."""


@token.command("create")
@click.option("--role", required=True, type=click.Choice(["supervisor", "user", "admin"]),
              help="supervisor: send events; user: read own jobs; admin: everything.")
@click.option("--subject", default=None, help="The Unix user whose jobs a user token reads.")
@click.option("--name", default=None, help="A name for the audit and for revoking (default: generated).")
@CONFIG
@DB
def token_create(role: str, subject: str | None, name: str | None, config_path: Path | None, db: str | None) -> None:
    """Create a token and print it; it is stored hashed and cannot be shown again."""
    from ajr_supervisor.registry.auth import create_token

    secret, row = create_token(_database(config_path, db), role, subject=subject, name=name)
    click.echo(f"token {row['name']!r} (role {role}{', subject ' + subject if subject else ''}); "
               "shown only now, keep it:", err=True)
    click.echo(secret)


@token.command("list")
@CONFIG
@DB
def token_list(config_path: Path | None, db: str | None) -> None:
    """The tokens (never their secrets)."""
    from ajr_supervisor.registry.auth import list_tokens

    rows = list_tokens(_database(config_path, db))
    if not rows:
        click.echo("no tokens; create one with `ajr registry token create --role admin`")
        return
    click.echo(f"{'ID':>4}  {'NAME':<28} {'ROLE':<10} {'SUBJECT':<12} {'CREATED':<19}  STATUS")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        status = "active" if r["revoked_at"] is None else "revoked " + time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(r["revoked_at"]))
        click.echo(f"{r['id']:>4}  {r['name']:<28} {r['role']:<10} {r['subject'] or '-':<12} {created}  {status}")


@token.command("revoke")
@click.argument("name")
@CONFIG
@DB
def token_revoke(name: str, config_path: Path | None, db: str | None) -> None:
    """Revoke the token NAME (or its numeric id): it stops working at once."""
    from ajr_supervisor.registry.auth import revoke_token

    row = revoke_token(_database(config_path, db), name)
    click.echo(f"revoked token {row['name']!r}")
