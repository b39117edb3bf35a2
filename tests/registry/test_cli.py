"""``ajr registry`` through click's CliRunner: tokens, migrate, and one-line errors."""

import click
import pytest
from click.testing import CliRunner

from ajr_supervisor.cli.registry import registry
from ajr_supervisor.registry.auth import authenticate, hash_token
from ajr_supervisor.registry.db import Database


def run(*args):
    return CliRunner().invoke(registry, list(args), catch_exceptions=False)


def test_token_create_prints_the_token_once(db_url):
    result = run("token", "create", "--role", "user", "--subject", "alice", "--name", "alice-laptop", "--db", db_url)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("ajr_") and len(token) > 40
    assert "shown only now" in result.stderr
    db = Database(db_url)
    who = authenticate(db, f"Bearer {token}")
    assert (who.name, who.role, who.subject) == ("alice-laptop", "user", "alice")
    with db.read() as conn:
        stored = conn.exec_driver_sql("SELECT token_hash FROM tokens").scalars().all()
    assert stored == [hash_token(token)]
    listed = run("token", "list", "--db", db_url)
    assert "alice-laptop" in listed.output and "active" in listed.output and token not in listed.output
    assert run("token", "revoke", "alice-laptop", "--db", db_url).output.strip() == "revoked token 'alice-laptop'"
    assert authenticate(db, f"Bearer {token}") is None
    assert "revoked" in run("token", "list", "--db", db_url).output
    db.dispose()


@pytest.mark.parametrize("args, message", [
    (["token", "create", "--role", "user"], "a user token needs --subject"),
    (["token", "revoke", "nobody"], "no token named 'nobody'"),
])
def test_errors_are_one_line(tmp_path, args, message):
    from ajr_supervisor.errors import AjrError

    with pytest.raises(AjrError) as err:
        CliRunner().invoke(registry, args + ["--db", str(tmp_path / "r.db")], catch_exceptions=False,
                           standalone_mode=False)
    assert message in err.value.one_line() and "\n" not in err.value.one_line()


def test_migrate_reports_the_revision(tmp_path):
    result = run("migrate", "--db", str(tmp_path / "r.db"))
    assert result.exit_code == 0
    assert result.output.strip() == f"sqlite:///{tmp_path}/r.db: schema at revision 0001"


def test_through_the_ajr_entry_point(tmp_path):
    """As installed: `ajr registry ...` prints one line and exits 2 on a bad config (no traceback)."""
    import subprocess
    import sys

    config = tmp_path / "registry.yaml"
    config.write_text("db: /tmp/x.db\nheld_timeout: 5\n")
    code = ("import sys, click; from ajr_supervisor.cli import cli, main; from ajr_supervisor.cli.registry import "
            "registry; cli.commands.setdefault('registry', registry); main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, "registry", "migrate", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ajr: error: {config}: unknown key 'held_timeout'; valid keys: " + ", ".join(
            __import__("ajr_supervisor.registry.settings", fromlist=["KEYS"]).KEYS) + " (did you mean 'held_timeout_s'?)"]


def test_every_command_has_help():
    def walk(group, path=()):
        for name, cmd in group.commands.items():
            yield path + (name,)
            if isinstance(cmd, click.Group):
                yield from walk(cmd, path + (name,))

    for path in walk(registry):
        assert run(*path, "--help").exit_code == 0
