"""The registry config file: defaults, one-line errors naming the key, unknown keys listed."""

import pytest

from ajr_supervisor.registry.settings import Settings, SettingsError, db_url, load_settings


def write(tmp_path, text):
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return path


def test_defaults_and_file(tmp_path):
    assert Settings().held_timeout_s == 600 and Settings().metrics_open is False
    s = load_settings(write(tmp_path, "db: /srv/r.db\nport: 9000\nheld_timeout_s: 60\nmetrics_open: true\n"
                                      "admins: [ops@example.org]\nkpi_success_at: first_step\n"
                                      "lemon_min_failures: 5\nslurm_confs: {lab: /etc/slurm/slurm.conf}\n"),
                      port=9100)
    assert (s.db, s.port, s.held_timeout_s, s.metrics_open, s.admins) == ("/srv/r.db", 9100, 60.0, True,
                                                                          ("ops@example.org",))
    assert s.kpi_success_at == "first_step" and s.lemon_min_failures == 5 and s.slurm_confs == {
        "lab": "/etc/slurm/slurm.conf"}


@pytest.mark.parametrize("text, expected", [
    ("prot: 1\nheld: 2\n", "unknown keys 'held', 'prot'"),
    ("port: 0\n", "port=0 is not a whole number from 1 to 65535"),
    ("held_timeout_s: -1\n", "held_timeout_s=-1 is not a number of seconds greater than 0"),
    ("metrics_open: maybe\n", "metrics_open='maybe' is not a boolean"),
    ("kpi_success_at: never\n", "kpi_success_at='never' is not one of checkpoint, first_step"),
    ("notifications: {channels: [{name: x, kind: pager}]}\n", "notifications.channels[0] (x).kind is 'pager'"),
    ("- a\n", "the top level is a list"),
    ("port: [\n", "not valid YAML"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    line = err.value.one_line()
    assert expected in line and str(path) in line and "\n" not in line


def test_missing_file(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_db_urls():
    assert db_url("/var/lib/ajr/registry.db") == "sqlite:////var/lib/ajr/registry.db"
    assert db_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    with pytest.raises(SettingsError, match="unsupported database URL"):
        db_url("mysql://u@h/d")


def test_etc_registry_yaml_lists_every_key_with_its_default():
    from dataclasses import fields
    from pathlib import Path

    import yaml

    from ajr_supervisor.registry.settings import Settings, load_settings

    path = Path(__file__).parents[2] / "etc" / "registry.yaml"
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in fields(Settings)}
    assert load_settings(path) == Settings()
