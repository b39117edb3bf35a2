"""Tests for the pattern rules: the packaged rules, real log excerpts, overrides, errors, matching."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ajr_supervisor.errors import UsageError
from ajr_supervisor.rules import _ASCII_FOLD, DEFAULT_RULES, NodeScope, Rule, RuleError, RuleSet
from ajr_supervisor.types import Action, Anomaly, Component, Trigger

LOGS = Path(__file__).parent.parent / "data" / "logs"
RANK_PREFIX = re.compile(r"^\s*\d+: ")  # what `srun -l` puts before each line of a task
DEFAULT = RuleSet.load()


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rule_yaml(rule_id: str = "my-rule", patterns: str = "['disk quota exceeded']",
              examples: str = "['OSError: [Errno 122] Disk quota exceeded']", extra: str = "") -> str:
    return (f"version: 1\nrules:\n  - id: {rule_id}\n    description: Quota\n    patterns: {patterns}\n"
            f"    anomaly: CRASH\n    component: STORAGE\n    action: STOP\n    trigger: at_exit\n"
            f"    examples: {examples}\n{extra}")


def read_log(path: Path) -> tuple[dict[str, str], list[str]]:
    """A test log excerpt: its `# key: value` header and its lines without the srun rank prefix."""
    lines = path.read_text().splitlines()
    header = {}
    while lines and re.match(r"# (source|expect|line): ", lines[0]):
        key, value = lines.pop(0)[2:].split(": ", 1)
        header[key] = value.strip()
    return header, [RANK_PREFIX.sub("", line, count=1) for line in lines]


# ---------------------------------------------------------------- the packaged rules

def test_default_rules_file_is_packaged_and_loads():
    assert DEFAULT_RULES.is_file()
    assert DEFAULT_RULES.parent.name == "data" and DEFAULT_RULES.parent.parent.name == "ajr_supervisor"
    assert len(DEFAULT.rules) >= 25
    assert DEFAULT.sources == (str(DEFAULT_RULES),)
    assert DEFAULT.checkpoint_patterns == (
        "save-checkpoint", "SAVE_CHECKPOINT: iteration:.*, ckpt saving takes .* seconds", "Saved checkpoint to")


@pytest.mark.parametrize("rule", DEFAULT.rules, ids=lambda r: r.id)
def test_every_example_resolves_to_its_own_rule(rule: Rule):
    assert rule.examples
    for example in rule.examples:
        found = DEFAULT.match(example)
        assert found is not None and found.rule_id == rule.id, (example, found)


@pytest.mark.parametrize("rule", DEFAULT.rules, ids=lambda r: r.id)
def test_stop_rules_wait_for_the_exit_unless_the_line_proves_death(rule: Rule):
    if rule.action is Action.STOP and rule.trigger is Trigger.IMMEDIATE:
        assert rule.id in {"python_missing_script", "argparse_error"}
    if rule.id == "python_traceback":
        assert rule.trigger is Trigger.AT_EXIT and rule.priority == 0


def test_the_default_rules_classify_as_designed():
    expected = {
        "segfault": ("CRASH", "APPLICATION", "REQUEUE", "immediate"),
        "python_traceback": ("CRASH", "APPLICATION", "REQUEUE", "at_exit"),
        "cuda_ecc_uncorrectable": ("CRASH", "GPU", "EXCLUDE_NODE_AND_REQUEUE", "immediate"),
        "cuda_devices_unavailable": ("CRASH", "GPU", "EXCLUDE_NODE_AND_REQUEUE", "immediate"),
        "cuda_illegal_memory_access": ("CRASH", "APPLICATION", "REQUEUE", "immediate"),
        "cuda_device_assert": ("CRASH", "APPLICATION", "STOP", "at_exit"),
        "nccl_watchdog_timeout": ("HANG", "NETWORK", "REQUEUE", "immediate"),
        "nccl_ib_completion_error": ("CRASH", "NETWORK", "EXCLUDE_NODE_AND_REQUEUE", "immediate"),
        "cuda_oom": ("CRASH", "APPLICATION", "STOP", "at_exit"),
        "python_missing_script": ("CRASH", "APPLICATION", "STOP", "immediate"),
        "python_import_error": ("CRASH", "APPLICATION", "STOP", "at_exit"),
    }
    for rule_id, (anomaly, component, action, trigger) in expected.items():
        rule = DEFAULT.get(rule_id)
        assert rule is not None, rule_id
        assert (rule.anomaly, rule.component, rule.action, rule.trigger) == (
            Anomaly(anomaly), Component(component), Action(action), Trigger(trigger))
        assert rule.node_scope is NodeScope.RANK


@pytest.mark.parametrize("line, winner, loser", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", "cuda_oom", None),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "cuda_ecc_uncorrectable", "cuda_error"),
    ("RuntimeError: CUDA error: device-side assert triggered", "cuda_device_assert", "cuda_error"),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", "cuda_illegal_memory_access",
     "cuda_error"),
    ("RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:825, unhandled system error, NCCL version 2.7.8",
     "nccl_system_error", "nccl_error"),
    ("NCCL error: remote process exited or there was a network error, NCCL version 2.20.5  ncclRemoteError: A "
     "call failed possibly due to a network error or a remote process exiting prematurely. Last error: NET/IB : "
     "Got completion from peer 172.21.17.89<38536> with error 5, opcode 48, len 32710, vendor err 249",
     "nccl_ib_completion_error", "nccl_remote_error"),
])
def test_priorities_pick_the_specific_rule(line, winner, loser):
    ranked = [m.rule_id for m in DEFAULT.match_all(line)]
    assert ranked[0] == winner == DEFAULT.match(line).rule_id
    if loser:
        assert loser in ranked[1:]


@pytest.mark.parametrize("line", [
    "Warning: TORCH_NCCL_ASYNC_ERROR_HANDLING is deprecated",
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
    "UserWarning: CUDA initialization: CUDA unknown error - this may be due to an incorrectly set up environment",
    "",
])
def test_harmless_lines_match_nothing(line):
    assert DEFAULT.match(line) is None
    assert DEFAULT.match_all(line) == []


def test_match_returns_the_rule_fields():
    found = DEFAULT.match("Segmentation fault (core dumped)")
    assert (found.rule_id, found.anomaly, found.component, found.action, found.trigger) == (
        "segfault", Anomaly.CRASH, Component.APPLICATION, Action.REQUEUE, Trigger.IMMEDIATE)
    assert found.description == DEFAULT.get("segfault").description


# ---------------------------------------------------------------- real log excerpts

LOG_FILES = sorted(LOGS.glob("*.log"))


def test_there_are_enough_log_excerpts_and_each_is_cited():
    assert len(LOG_FILES) >= 15
    assert sum(read_log(p)[0]["expect"] == "NONE" for p in LOG_FILES) >= 4
    sources = (LOGS / "SOURCES.md").read_text()
    for path in LOG_FILES:
        header, _ = read_log(path)
        assert path.name in sources and header["source"] in sources, path.name
        assert header["source"].startswith("https://")


@pytest.mark.parametrize("path", LOG_FILES, ids=lambda p: p.name)
def test_log_excerpt_resolves_as_expected(path: Path):
    header, lines = read_log(path)
    if header["expect"] == "NONE":
        assert [(n, DEFAULT.match(line)) for n, line in enumerate(lines, 1) if DEFAULT.match(line)] == []
    else:
        line = lines[int(header["line"]) - 1]
        found = DEFAULT.match(line)
        assert found is not None and found.rule_id == header["expect"], (line, found)


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("line, pattern, iteration", [
    ("saved checkpoint to /ckpt/iter_0000100", "Saved checkpoint to", 100),
    ("[2024-05-01 10:00:00] SAVE_CHECKPOINT: iteration: 100, ckpt saving takes 12.5 seconds",
     "SAVE_CHECKPOINT: iteration:.*, ckpt saving takes .* seconds", 100),
    ("    save-checkpoint ................................: (6193.66, 6193.89)", "save-checkpoint", None),
    ("save-checkpoint global_step=2500 done", "save-checkpoint", 2500),
    ("Saved checkpoint to /ckpt/model step 300", "Saved checkpoint to", 300),
])
def test_checkpoint_lines_and_their_iteration(line, pattern, iteration):
    found = DEFAULT.checkpoint(line)
    assert found is not None and (found.pattern, found.iteration) == (pattern, iteration)


def test_iteration_lines_are_not_checkpoints():
    _, lines = read_log(LOGS / "megatron_iterations.log")
    assert all(DEFAULT.checkpoint(line) is None for line in lines)


def test_extra_checkpoint_patterns_from_arguments_and_files(tmp_path):
    megatron = "  successfully saved checkpoint from iteration     845 to /ckpt/gpt"
    assert DEFAULT.checkpoint(megatron) is None
    by_arg = RuleSet.load(extra_checkpoint_patterns=["successfully saved checkpoint from iteration"])
    assert by_arg.checkpoint(megatron).iteration == 845
    site = write(tmp_path, "version: 1\ncheckpoint_patterns: ['saving model to']\n")
    by_file = RuleSet.load([site])
    found = by_file.checkpoint("Epoch 0, global step 500: saving model to '/ckpt/epoch=0-step=500.ckpt'")
    assert (found.pattern, found.iteration) == ("saving model to", 500)
    assert by_file.checkpoint("Saved checkpoint to /x") is not None  # the defaults stay


# ---------------------------------------------------------------- site files

def test_a_later_file_replaces_a_rule_by_id_and_keeps_its_place(tmp_path):
    site = write(tmp_path, rule_yaml("segfault", "['segmentation fault']", "['Segmentation fault (core dumped)']",
                                     "    priority: 50\n"))
    rules = RuleSet.load([site])
    assert [r.id for r in rules.rules] == [r.id for r in DEFAULT.rules]
    replaced = rules.get("segfault")
    assert (replaced.action, replaced.component, replaced.source) == (Action.STOP, Component.STORAGE, str(site))
    assert rules.match("Segmentation fault (core dumped)").action is Action.STOP
    assert rules.match("SIGSEGV") is None  # the replacement has only its own patterns


def test_disabled_removes_a_rule_and_added_rules_match(tmp_path):
    first = write(tmp_path, "version: 1\nrules:\n  - id: python_traceback\n    disabled: true\n", "a.yaml")
    second = write(tmp_path, rule_yaml(), "b.yaml")
    rules = RuleSet.load([first, second])
    assert rules.get("python_traceback") is None
    assert rules.match("Traceback (most recent call last):") is None
    assert rules.match("OSError: [Errno 122] Disk quota exceeded").rule_id == "my-rule"
    assert rules.sources == (str(DEFAULT_RULES), str(first), str(second))


def test_without_the_default_only_the_given_files_count(tmp_path):
    rules = RuleSet.load([write(tmp_path, rule_yaml())], include_default=False)
    assert [r.id for r in rules.rules] == ["my-rule"] and rules.checkpoint_patterns == ()
    assert rules.match("Segmentation fault") is None and rules.checkpoint("Saved checkpoint to /x") is None
    assert RuleSet.load(include_default=False).match("anything") is None


def test_ties_go_to_the_first_rule_in_file_order(tmp_path):
    text = ("version: 1\nrules:\n" + "".join(
        f"  - id: {rid}\n    description: d\n    patterns: ['{pat}']\n    anomaly: CRASH\n"
        f"    component: UNKNOWN\n    action: REQUEUE\n    trigger: immediate\n    node_scope: none\n"
        f"    priority: {prio}\n    examples: ['disk full now']\n"
        for rid, pat, prio in [("low", "disk", 1), ("first", "full", 5), ("second", "now", 5)]))
    rules = RuleSet.load([write(tmp_path, text)], include_default=False)
    assert [m.rule_id for m in rules.match_all("disk full now")] == ["first", "second", "low"]
    assert rules.get("low").node_scope is NodeScope.NONE


def test_patterns_without_a_required_literal_still_match_exactly(tmp_path):
    text = rule_yaml("odd", r"['\d{3}x?', '(?:foo|bar\w*)baz|qux']", "['404', 'barbazz', 'QUX']")
    rules = RuleSet.load([write(tmp_path, text)], include_default=False)
    assert [rules.match(t) is not None for t in ("error 404", "BARBAZ", "quxx", "ba", "foo")] == [
        True, True, True, False, False]


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("text, expected", [
    (rule_yaml(extra="    colour: red\n"), "rule 'my-rule': unknown field(s) colour; known fields: id,"),
    (rule_yaml().replace("    trigger: at_exit\n", ""), "rule 'my-rule': missing required field(s) trigger"),
    (rule_yaml(patterns="['foo(']"),
     "rule 'my-rule': invalid regex 'foo(' in patterns (missing ), unterminated subpattern at position 3)"),
    (rule_yaml().replace("action: STOP", "action: KILL"), "rule 'my-rule': invalid action 'KILL'; use one of"),
    (rule_yaml().replace("trigger: at_exit", "trigger: later"), "invalid trigger 'later'; use one of immediate"),
    (rule_yaml(extra="    node_scope: job\n"), "rule 'my-rule': invalid node_scope 'job'; use one of rank, none"),
    (rule_yaml(examples="['nothing like it']"),
     "rule 'my-rule': example 'nothing like it' does not match any of the rule's patterns"),
    (rule_yaml() + rule_yaml().split("rules:\n", 1)[1], "rule 'my-rule': duplicate id in this file"),
    (rule_yaml("My Rule"), "rule #1: missing or invalid id 'My Rule'"),
    (rule_yaml(extra="    priority: high\n"), "rule 'my-rule': priority must be an integer, got 'high'"),
    (rule_yaml(patterns="'disk quota exceeded'"), "rule 'my-rule': patterns must be a non-empty list"),
    (rule_yaml(patterns="['(?P<what>disk) quota']"), "uses a named group or a backreference"),
    (rule_yaml(patterns=r"['(disk) \1']"), "uses a named group or a backreference"),
    (rule_yaml(patterns="['(?i)disk quota']"), "cannot be combined with others"),
    (rule_yaml(patterns="['x*']"), "matches an empty line"),
    (rule_yaml(extra="    disabled: maybe\n"), "rule 'my-rule': disabled must be true or false"),
    (rule_yaml().replace("version: 1", "version: 2"), "unsupported or missing version 2; set 'version: 1'"),
    ("version: 1\nrulez: []\n", "unknown top-level field(s) rulez"),
    ("version: 1\nrules:\n  - just a string\n", "rule #1: expected a mapping of fields, got str"),
    ("version: 1\ncheckpoint_patterns: ['[unclosed']\n", "invalid regex '[unclosed' in checkpoint_patterns"),
    ("", "expected a mapping with 'version: 1' and 'rules:', got an empty file"),
    ("version: 1\nrules: [\n", "invalid YAML at line 3, column 1"),
    ("version: 1\nversion: 1\n", "invalid YAML at line 2, column 1: duplicate key 'version'"),
    (rule_yaml().replace("    trigger: at_exit\n", "    trigger: at_exit\n    trigger: immediate\n"),
     "duplicate key 'trigger'"),
])
def test_rule_file_mistakes_are_one_line_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(RuleError) as info:
        RuleSet.load([path])
    line = info.value.one_line()
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    assert line.startswith(f"{path}: ") and expected in line and "\n" not in line


def test_the_documented_regex_error_message(tmp_path):
    path = write(tmp_path, rule_yaml(patterns="['foo(']"))
    with pytest.raises(RuleError) as info:
        RuleSet.load([path])
    assert info.value.one_line() == (f"{path}: rule 'my-rule': invalid regex 'foo(' in patterns "
                                     "(missing ), unterminated subpattern at position 3)")


def test_disabling_an_unknown_rule_is_an_error(tmp_path):
    path = write(tmp_path, "version: 1\nrules:\n  - id: no-such-rule\n    disabled: true\n")
    with pytest.raises(RuleError, match="rule 'no-such-rule': disabled, but no earlier rule file defines it"):
        RuleSet.load([path])


def test_a_missing_file_and_a_bad_extra_pattern_are_errors(tmp_path):
    with pytest.raises(RuleError, match=r"nope\.yaml: cannot read rule file \(No such file or directory\)"):
        RuleSet.load([tmp_path / "nope.yaml"])
    with pytest.raises(RuleError, match=r"extra checkpoint pattern: invalid regex 'a\(' in checkpoint patterns"):
        RuleSet.load(extra_checkpoint_patterns=["a("])


def test_rule_sets_built_by_hand_reject_duplicate_ids():
    rule = DEFAULT.get("segfault")
    with pytest.raises(RuleError, match="duplicate rule ids"):
        RuleSet([rule, rule])


# ---------------------------------------------------------------- the literal prefilter is exact

def test_the_ascii_fold_table_lists_every_non_ascii_letter_that_ignorecase_matches_ascii():
    letter = re.compile("[a-z]", re.IGNORECASE)
    found = {cp for cp in range(0x80, sys.maxunicode + 1) if letter.fullmatch(chr(cp))}
    assert found == set(_ASCII_FOLD)
    for cp, ascii_letter in _ASCII_FOLD.items():
        assert re.fullmatch(ascii_letter, chr(cp), re.IGNORECASE)


FRAGMENTS = sorted({piece for rule in DEFAULT.rules for ex in rule.examples for piece in re.split(r"(?<=\s)", ex)}
                   | {"\u0130", "\u0131", "\u017f", "\u212a", "█", "SEGMENTATİON FAULT", "ſigſegv", "nccl ERROR"})


def brute_force(rules: RuleSet, text: str) -> list[str]:
    ranked = sorted(range(len(rules.rules)), key=lambda i: (-rules.rules[i].priority, i))
    return [rules.rules[i].id for i in ranked
            if any(re.search(p, text, re.IGNORECASE) for p in rules.rules[i].patterns)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=12))
def test_match_all_equals_searching_every_pattern(pieces):
    text = "".join(pieces)
    assert [m.rule_id for m in DEFAULT.match_all(text)] == brute_force(DEFAULT, text)


def test_non_ascii_spellings_that_ignorecase_accepts_still_match():
    assert DEFAULT.match("SEGMENTATİON FAULT").rule_id == "segfault"
    assert DEFAULT.match("ſigſegv").rule_id == "segfault"
