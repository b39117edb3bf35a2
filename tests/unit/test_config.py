"""The system config: defaults, file, environment, overrides; every error is one clear line."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ajr_supervisor import config as config_mod
from ajr_supervisor.config import (FIELD_NAMES, NON_CONFIG_ENV, Config, ConfigError, load_config,
                                   split_list)
from ajr_supervisor.errors import UsageError


@pytest.fixture(autouse=True)
def no_system_file(tmp_path, monkeypatch):
    """Never read the real /etc/ajr/ajr.yaml: the default path points into tmp_path (absent)."""
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", tmp_path / "etc-ajr" / "ajr.yaml")


def write(tmp_path: Path, text: str, name: str = "ajr.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return info.value.one_line()


# --- defaults -------------------------------------------------------------------------------------

def test_defaults_are_the_documented_ones():
    cfg = Config()
    assert cfg.max_requeue_times == 10
    assert cfg.crash_loop_attempts == 3
    assert cfg.hang_timeout_s == 120.0
    assert cfg.settle_s == 1.0
    assert cfg.stop_grace_s == 10.0
    assert cfg.log_dir is None and cfg.state_dir is None
    assert cfg.enroll_partitions == () and cfg.checkpoint_patterns == () and cfg.rules_files == ()
    assert cfg.fast_restart is False and cfg.dry_run is False
    assert cfg.slurm_timeout_s == 30.0 and cfg.poll_interval_s == 0.5
    assert cfg.srun_kill_on_bad_exit is False


def test_field_names_are_the_keys():
    assert set(FIELD_NAMES) == {f.name for f in dataclasses.fields(Config)}
    assert list(FIELD_NAMES) == sorted(FIELD_NAMES)


def test_no_file_no_env_gives_defaults():
    assert load_config(env={}) == Config()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().dry_run = True  # type: ignore[misc]


# --- the file -------------------------------------------------------------------------------------

def test_file_values_are_read_and_typed(tmp_path):
    path = write(tmp_path, """
max_requeue_times: 4
crash_loop_attempts: 2
hang_timeout_s: 30          # an int becomes a float
settle_s: 0
log_dir: /scratch/logs
enroll_partitions: [gpu, batch]
checkpoint_patterns:
  - 'saved checkpoint at iteration (\\d+)'
rules_files: [/etc/ajr/rules.d/site.yaml]
fast_restart: true
srun_kill_on_bad_exit: yes
""")
    cfg = load_config(path, env={})
    assert cfg.max_requeue_times == 4 and cfg.crash_loop_attempts == 2
    assert cfg.hang_timeout_s == 30.0 and isinstance(cfg.hang_timeout_s, float)
    assert cfg.settle_s == 0.0
    assert cfg.log_dir == "/scratch/logs"
    assert cfg.enroll_partitions == ("gpu", "batch")
    assert cfg.checkpoint_patterns == (r"saved checkpoint at iteration (\d+)",)
    assert cfg.rules_files == ("/etc/ajr/rules.d/site.yaml",)
    assert cfg.fast_restart is True and cfg.srun_kill_on_bad_exit is True


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n"), env={}) == Config()


def test_quoted_numbers_and_string_lists_in_the_file(tmp_path):
    path = write(tmp_path, "hang_timeout_s: '45'\nmax_requeue_times: '7'\nenroll_partitions: gpu, batch\n")
    cfg = load_config(path, env={})
    assert (cfg.hang_timeout_s, cfg.max_requeue_times) == (45.0, 7)
    assert cfg.enroll_partitions == ("gpu", "batch")


def test_default_file_is_read_when_it_exists(tmp_path, monkeypatch):
    path = write(tmp_path, "max_requeue_times: 2\n", "system.yaml")
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", path)
    assert load_config(env={}).max_requeue_times == 2


def test_missing_default_file_is_fine(tmp_path):
    assert not config_mod.DEFAULT_CONFIG_PATH.exists()
    assert load_config(env={}) == Config()


def test_ajr_config_names_the_file(tmp_path):
    path = write(tmp_path, "max_requeue_times: 5\n")
    assert load_config(env={"AJR_CONFIG": str(path)}).max_requeue_times == 5


def test_explicit_path_beats_ajr_config(tmp_path):
    explicit = write(tmp_path, "max_requeue_times: 1\n", "a.yaml")
    other = write(tmp_path, "max_requeue_times: 2\n", "b.yaml")
    assert load_config(explicit, env={"AJR_CONFIG": str(other)}).max_requeue_times == 1


def test_missing_explicit_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    line = error_of(path=missing, env={})
    assert line == f"{missing}: config file not found; create it, or name an existing file"


def test_missing_ajr_config_file_names_the_variable(tmp_path):
    missing = tmp_path / "nope.yaml"
    line = error_of(env={"AJR_CONFIG": str(missing)})
    assert line.startswith(f"AJR_CONFIG='{missing}': config file not found;")


def test_empty_ajr_config_means_the_default(tmp_path):
    assert load_config(env={"AJR_CONFIG": ""}) == Config()


def test_unknown_key_lists_the_valid_ones(tmp_path):
    path = write(tmp_path, "hang_timout_s: 30\n")
    line = error_of(path=path, env={})
    assert line.startswith(f"{path}: unknown key 'hang_timout_s'; valid keys: checkpoint_patterns, "
                           "cluster_name, crash_loop_attempts, drain, drain_ledger, drain_max_fraction, drain_max_per_hour, dry_run,")
    assert "srun_kill_on_bad_exit" in line
    assert "did you mean 'hang_timeout_s'?" in line


def test_non_string_key_is_unknown(tmp_path):
    line = error_of(path=write(tmp_path, "1: 2\n"), env={})
    assert "unknown key 1; valid keys:" in line


def test_yaml_syntax_error_says_the_line(tmp_path):
    path = write(tmp_path, "max_requeue_times: 3\nenroll_partitions: [gpu, batch\nsettle_s: 1\n")
    line = error_of(path=path, env={})
    assert line.startswith(f"{path}: not valid YAML at line 3, column 9:")
    assert "; fix the syntax there" in line
    assert "\n" not in line and "Traceback" not in line


def test_yaml_bad_indentation(tmp_path):
    path = write(tmp_path, "max_requeue_times: 3\n  settle_s: 1\n")
    line = error_of(path=path, env={})
    assert line.startswith(f"{path}: not valid YAML at line 2,")


def test_yaml_python_tags_are_refused(tmp_path):
    path = write(tmp_path, "log_dir: !!python/object/apply:os.getcwd []\n")
    line = error_of(path=path, env={})
    assert line.startswith(f"{path}: not valid YAML at line 1,")


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"),
                                        ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = write(tmp_path, text)
    assert error_of(path=path, env={}) == (f"{path}: the top level is a {kind}, not a mapping; "
                                           "write one 'key: value' per line, e.g. 'hang_timeout_s: 120'")


def test_unreadable_file(tmp_path):
    line = error_of(path=tmp_path, env={})    # a directory
    assert line.startswith(f"{tmp_path}: cannot read the config file (")


def test_file_not_utf8(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"dry_run: \xff\xfe\n")
    assert error_of(path=path, env={}).startswith(f"{path}: cannot read the config file (not UTF-8 text)")


@pytest.mark.parametrize("text, expected", [
    ("hang_timeout_s: abc\n", "hang_timeout_s='abc' is not a number; set a number of seconds, e.g. 120"),
    ("hang_timeout_s: 0\n", "hang_timeout_s=0 is zero; set a number of seconds greater than 0, e.g. 120"),
    ("hang_timeout_s: -5\n", "hang_timeout_s=-5 is negative; set a number of seconds greater than 0"),
    ("hang_timeout_s: .nan\n", "hang_timeout_s=nan is not a finite number"),
    ("settle_s: -1\n", "settle_s=-1 is negative; set a number of seconds 0 or more, e.g. 1"),
    ("poll_interval_s: 0\n", "poll_interval_s=0 is zero; set a number of seconds greater than 0"),
    ("slurm_timeout_s: true\n", "slurm_timeout_s=True is not a number"),
    ("max_requeue_times: -1\n", "max_requeue_times=-1 is negative; set a whole number of at least 0, e.g. 10"),
    ("max_requeue_times: 1.5\n", "max_requeue_times=1.5 is not a whole number; set a whole number, e.g. 10"),
    ("max_requeue_times: true\n", "max_requeue_times=True is not a whole number"),
    ("max_requeue_times:\n", "max_requeue_times=None has no value; give it a value, or remove it"),
    ("crash_loop_attempts: 0\n", "crash_loop_attempts=0 is too small; set a whole number of at least 1"),
    ("dry_run: maybe\n", "dry_run='maybe' is not a boolean; set true or false (or yes/no, on/off, 1/0)"),
    ("dry_run: 2\n", "dry_run=2 is not a boolean"),
    ("log_dir: 5\n", "log_dir=5 is not a path; set it as a string, or leave it unset"),
    ("enroll_partitions: [gpu, 3]\n", "enroll_partitions=['gpu', 3] is not a list of strings"),
    ("enroll_partitions: {a: 1}\n", "enroll_partitions={'a': 1} is not a list of strings"),
    ("checkpoint_patterns: ['saved (']\n",
     "checkpoint_patterns=['saved (']: pattern 'saved (' is not a valid regular expression (missing ), "
     "unterminated subpattern at position 6); fix it (Python re syntax, matched case-insensitively)"),
])
def test_bad_values_in_the_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    line = error_of(path=path, env={})
    assert line.startswith(f"{path}: {expected}"), line


def test_null_path_fields_mean_default(tmp_path):
    cfg = load_config(write(tmp_path, "log_dir: null\nstate_dir: ''\n"), env={})
    assert cfg.log_dir is None and cfg.state_dir is None


# --- the environment ------------------------------------------------------------------------------

def test_env_values_are_parsed():
    cfg = load_config(env={"AJR_HANG_TIMEOUT_S": "30", "AJR_MAX_REQUEUE_TIMES": " 4 ",
                           "AJR_DRY_RUN": "true", "AJR_FAST_RESTART": "On",
                           "AJR_SRUN_KILL_ON_BAD_EXIT": "1", "AJR_LOG_DIR": "/logs",
                           "AJR_STATE_DIR": "/state", "AJR_SETTLE_S": "1.5e0"})
    assert cfg.hang_timeout_s == 30.0 and cfg.max_requeue_times == 4
    assert cfg.dry_run is True and cfg.fast_restart is True and cfg.srun_kill_on_bad_exit is True
    assert (cfg.log_dir, cfg.state_dir, cfg.settle_s) == ("/logs", "/state", 1.5)


def test_env_tuples_are_comma_separated():
    cfg = load_config(env={"AJR_ENROLL_PARTITIONS": "gpu,batch",
                           "AJR_RULES_FILES": " /a.yaml , ,/b.yaml ",
                           "AJR_CHECKPOINT_PATTERNS": r"iter \d{1,3} saved,ckpt [,;] done,(a|b,c)"})
    assert cfg.enroll_partitions == ("gpu", "batch")
    assert cfg.rules_files == ("/a.yaml", "/b.yaml")
    assert cfg.checkpoint_patterns == (r"iter \d{1,3} saved", "ckpt [,;] done", "(a|b,c)")


def test_empty_env_values_clear_tuples_and_paths(tmp_path):
    path = write(tmp_path, "enroll_partitions: [gpu]\nlog_dir: /x\n")
    cfg = load_config(path, env={"AJR_ENROLL_PARTITIONS": "", "AJR_LOG_DIR": ""})
    assert cfg.enroll_partitions == () and cfg.log_dir is None


def test_env_error_names_the_variable_and_the_fix():
    assert error_of(env={"AJR_HANG_TIMEOUT_S": "abc"}) == (
        "AJR_HANG_TIMEOUT_S='abc' is not a number; set a number of seconds, e.g. 120")
    assert error_of(env={"AJR_MAX_REQUEUE_TIMES": "ten"}) == (
        "AJR_MAX_REQUEUE_TIMES='ten' is not a whole number; set a whole number, e.g. 10")
    assert error_of(env={"AJR_FAST_RESTART": "sure"}).startswith(
        "AJR_FAST_RESTART='sure' is not a boolean; set true or false")
    assert error_of(env={"AJR_CHECKPOINT_PATTERNS": "ok,bad["}).startswith(
        "AJR_CHECKPOINT_PATTERNS='ok,bad[': pattern 'bad[' is not a valid regular expression")


def test_unknown_ajr_variable_is_an_error():
    line = error_of(env={"AJR_HANG_TIMOUT_S": "30"})
    assert line.startswith("AJR_HANG_TIMOUT_S is not an ajr configuration variable; unset it or fix "
                           "its name (did you mean AJR_HANG_TIMEOUT_S?); valid: AJR_CHECKPOINT_PATTERNS,")


def test_env_names_are_case_sensitive():
    assert "AJR_hang_timeout_s is not an ajr configuration variable" in error_of(
        env={"AJR_hang_timeout_s": "30"})


def test_non_config_ajr_variables_are_allowed():
    env = {name: "whatever" for name in NON_CONFIG_ENV}
    assert load_config(env={**env, "AJR_CONFIG": ""}) == Config()
    assert {"AJR_CONFIG", "AJR_DEBUG", "AJR_LAB_DIR", "AJR_HOOK_LOG", "AJR_KEEP_LAB", "AJR_TEST_LAB_DIR",
            "AJR_NVML_FAKE", "AJR_REGISTRY_TOKEN", "AJR_EPILOG_AT"} == set(NON_CONFIG_ENV)


def test_other_variables_are_ignored():
    env = {"PATH": "/bin", "SLURM_JOB_ID": "7", "APS_SOMETHING": "x", "XAJR_FOO": "1"}
    assert load_config(env=env) == Config()


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True), ("on", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False), ("off", False),
])
def test_aps_dry_run(value, expected):
    assert load_config(env={"APS_DRY_RUN": value}).dry_run is expected


def test_aps_dry_run_invalid_names_the_variable():
    assert error_of(env={"APS_DRY_RUN": "maybe"}) == (
        "APS_DRY_RUN='maybe' is not a boolean; set true or false (or yes/no, on/off, 1/0)")


def test_ajr_dry_run_beats_aps_dry_run():
    assert load_config(env={"APS_DRY_RUN": "true", "AJR_DRY_RUN": "false"}).dry_run is False
    assert load_config(env={"APS_DRY_RUN": "false", "AJR_DRY_RUN": "true"}).dry_run is True


def test_default_env_is_os_environ(monkeypatch):
    for name in [n for n in os.environ if n.startswith(("AJR_", "APS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AJR_MAX_REQUEUE_TIMES", "6")
    assert load_config().max_requeue_times == 6


# --- precedence and overrides ---------------------------------------------------------------------

def test_precedence_defaults_file_env_overrides(tmp_path):
    path = write(tmp_path, "max_requeue_times: 1\nhang_timeout_s: 11\nsettle_s: 3\ndry_run: true\n")
    env = {"AJR_HANG_TIMEOUT_S": "22", "AJR_SETTLE_S": "4"}
    cfg = load_config(path, env=env, overrides={"settle_s": 5.0})
    assert cfg.max_requeue_times == 1      # file over default
    assert cfg.hang_timeout_s == 22.0      # env over file
    assert cfg.settle_s == 5.0             # override over env
    assert cfg.dry_run is True             # file kept where nothing later sets it
    assert cfg.crash_loop_attempts == 3    # default


def test_aps_dry_run_beats_the_file_and_loses_to_overrides(tmp_path):
    path = write(tmp_path, "dry_run: false\n")
    assert load_config(path, env={"APS_DRY_RUN": "yes"}).dry_run is True
    assert load_config(path, env={"APS_DRY_RUN": "yes"}, overrides={"dry_run": False}).dry_run is False


def test_none_overrides_are_not_given():
    cfg = load_config(env={"AJR_HANG_TIMEOUT_S": "9"}, overrides={"hang_timeout_s": None, "dry_run": None})
    assert cfg.hang_timeout_s == 9.0 and cfg.dry_run is False


def test_overrides_accept_text_and_tuples():
    cfg = load_config(env={}, overrides={"max_requeue_times": "3", "enroll_partitions": ["a", "b"],
                                         "dry_run": "yes"})
    assert cfg.max_requeue_times == 3 and cfg.enroll_partitions == ("a", "b") and cfg.dry_run is True


def test_path_overrides_may_be_path_objects(tmp_path):
    assert load_config(env={}, overrides={"log_dir": tmp_path}).log_dir == str(tmp_path)


def test_override_errors():
    assert error_of(env={}, overrides={"hang_timeout": 3}).startswith(
        "unknown option 'hang_timeout'; valid keys: checkpoint_patterns,")
    assert error_of(env={}, overrides={"hang_timeout_s": -1}) == (
        "option hang_timeout_s=-1 is negative; set a number of seconds greater than 0, e.g. 120")


# --- Config itself --------------------------------------------------------------------------------

def test_config_validates_and_normalises():
    cfg = Config(enroll_partitions=["gpu"], hang_timeout_s=5, log_dir="")  # type: ignore[arg-type]
    assert cfg.enroll_partitions == ("gpu",) and cfg.hang_timeout_s == 5.0 and cfg.log_dir is None
    with pytest.raises(ConfigError) as info:
        Config(max_requeue_times=-2)
    assert info.value.one_line().startswith("Config max_requeue_times=-2 is negative;")
    with pytest.raises(ConfigError, match="is not a valid regular expression"):
        Config(checkpoint_patterns=("(",))
    with pytest.raises(ConfigError, match="is not a whole number"):
        Config(max_requeue_times="3")  # type: ignore[arg-type]   (no text parsing in the constructor)
    with pytest.raises(ConfigError, match="is not a finite number"):
        Config(settle_s=math.inf)


def test_config_error_is_a_usage_error():
    assert issubclass(ConfigError, UsageError) and ConfigError("x").exit_code == 2


def test_log_and_state_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Config().log_path(env={}) == tmp_path
    assert Config().log_path(env={"SLURM_LOG_DIR": "/logs"}) == Path("/logs")
    assert Config(log_dir="/mine").log_path(env={"SLURM_LOG_DIR": "/logs"}) == Path("/mine")
    assert Config().state_path("/home/u/run") == Path("/home/u/run/.ajr")
    assert Config(state_dir="/st").state_path("/home/u/run") == Path("/st")


# --- split_list -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("", ()), (" , ,", ()), ("a", ("a",)), ("a,b", ("a", "b")), (" a , b ", ("a", "b")),
    (r"x{1,2},y", (r"x{1,2}", "y")), ("[,],z", ("[,]", "z")), (r"a\,b,c", (r"a\,b", "c")),
    ("(a,b),c", ("(a,b)", "c")), ("[(],d", ("[(]", "d")),
])
def test_split_list(text, expected):
    assert split_list(text) == expected


@given(st.lists(st.from_regex(r"[A-Za-z0-9_.\-/]+", fullmatch=True), max_size=6))
def test_split_list_round_trips_plain_names(names):
    assert split_list(",".join(names)) == tuple(names)


def test_registry_url_must_be_http(tmp_path):
    line = error_of(path=write(tmp_path, "registry_url: registry:8787\n"), env={})
    assert "registry_url" in line and "is not an http(s) URL; set e.g. http://" in line
    assert load_config(path=write(tmp_path, "registry_url: http://reg:8787\n"), env={}).registry_url == "http://reg:8787"


def test_outbox_and_cluster_defaults(tmp_path):
    c = Config()
    assert c.outbox_path("/w") == Path("/w/.ajr/outbox")
    assert Config(outbox_dir="/spool").outbox_path("/w") == Path("/spool")
    assert c.cluster({"SLURM_CLUSTER_NAME": "lab"}) == "lab"
    assert c.cluster({}) == "default"
    assert Config(cluster_name="eos").cluster({"SLURM_CLUSTER_NAME": "lab"}) == "eos"
