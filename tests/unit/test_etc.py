"""The shipped example files stay true to the code."""

from dataclasses import fields
from pathlib import Path

import yaml

from ajr_supervisor.config import Config, load_config
from ajr_supervisor.rules import DEFAULT_RULES, RuleSet

ETC = Path(__file__).resolve().parents[2] / "etc"


def test_example_config_lists_every_key_with_its_default():
    assert load_config(ETC / "ajr.yaml", env={}) == Config()
    keys = set(yaml.safe_load((ETC / "ajr.yaml").read_text()))
    assert keys == {f.name for f in fields(Config)}


def test_etc_rules_is_the_packaged_rule_file():
    assert (ETC / "rules.yaml").resolve() == DEFAULT_RULES.resolve()
    assert RuleSet.load(include_default=False, extra_files=[ETC / "rules.yaml"]).rules


def test_hook_wrappers_exec_the_ajr_hook_commands():
    wrappers = {p.name: p.read_text() for p in (ETC / "slurm").iterdir()}
    assert wrappers["ajr-prolog"].rstrip().endswith('exec ajr prolog "$@"')
    assert wrappers["ajr-node-epilog"].rstrip().endswith('exec ajr node-epilog "$@"')
    assert wrappers["ajr-epilog-slurmctld"].rstrip().endswith('exec ajr epilog "$@"')
