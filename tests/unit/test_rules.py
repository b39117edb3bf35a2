"""Tests for the pattern rules: the packaged rules, real log excerpts, overrides, errors, matching."""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ajr_supervisor import rules as rules_module
from ajr_supervisor.errors import UsageError
from ajr_supervisor.matching import _ASCII_FOLD, _COMMON_LINES, _hs_expression
from ajr_supervisor.rules import DEFAULT_RULES, NodeScope, Rule, RuleError, RuleSet, hyperscan_available
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


# ---------------------------------------------------------------- the rules added for the corpus

NEW_RULES = {
    "gpu_xid_fatal": ("CRASH", "GPU", "EXCLUDE_NODE_AND_REQUEUE", "immediate"),
    "gpu_lost": ("CRASH", "GPU", "EXCLUDE_NODE_AND_REQUEUE", "immediate"),
    "gpu_xid": ("CRASH", "GPU", "REQUEUE", "at_exit"),
    "nccl_ib_async_event": ("CRASH", "NETWORK", "EXCLUDE_NODE_AND_REQUEUE", "immediate"),
    "ib_transport_retry_exceeded": ("CRASH", "NETWORK", "REQUEUE", "immediate"),
    "slurm_cgroup_oom": ("CRASH", "NODE_MEMORY", "STOP", "at_exit"),
    "host_oom_killer": ("CRASH", "NODE_MEMORY", "REQUEUE", "at_exit"),
    "shm_bus_error": ("CRASH", "NODE_MEMORY", "REQUEUE", "immediate"),
    "shm_exhausted": ("CRASH", "NODE_MEMORY", "REQUEUE", "at_exit"),
    "dataloader_worker_killed": ("CRASH", "NODE_MEMORY", "REQUEUE", "at_exit"),
    "storage_io_error": ("CRASH", "STORAGE", "REQUEUE", "at_exit"),
    "storage_stale_handle": ("CRASH", "STORAGE", "REQUEUE", "at_exit"),
    "storage_no_space": ("CRASH", "STORAGE", "STOP", "at_exit"),
    "storage_quota_exceeded": ("CRASH", "STORAGE", "STOP", "at_exit"),
    "lustre_error": ("CRASH", "STORAGE", "REQUEUE", "at_exit"),
    "gpfs_error": ("CRASH", "STORAGE", "REQUEUE", "at_exit"),
    "torch_elastic_child_failed": ("CRASH", "APPLICATION", "REQUEUE", "at_exit"),
    "nan_grad_norm": ("CRASH", "APPLICATION", "REQUEUE", "at_exit"),
    "lightning_misconfiguration": ("CRASH", "APPLICATION", "STOP", "at_exit"),
}


@pytest.mark.parametrize("rule_id", NEW_RULES)
def test_the_added_rules_classify_as_designed(rule_id):
    anomaly, component, action, trigger = NEW_RULES[rule_id]
    rule = DEFAULT.get(rule_id)
    assert (rule.anomaly, rule.component, rule.action, rule.trigger) == (
        Anomaly(anomaly), Component(component), Action(action), Trigger(trigger))
    assert rule.node_scope is NodeScope.RANK


def test_wrappers_and_errno_lines_yield_to_specific_rules():
    assert DEFAULT.get("torch_elastic_child_failed").priority < min(
        r.priority for r in DEFAULT.rules if r.id not in {"python_traceback", "torch_elastic_child_failed"}
        and r.priority >= 0)
    errno_rules = ["storage_io_error", "storage_stale_handle", "storage_no_space", "storage_quota_exceeded"]
    assert all(DEFAULT.get(r).priority < 0 for r in errno_rules)


@pytest.mark.parametrize("line, winner, loser", [
    ("mt-l-x86:202016:202235 [0] misc/shmutils.cc:132 NCCL WARN Error while creating shared memory segment "
     "/dev/shm/nccl-WU88OE (size 9637888), error: No space left on device (28)", "shm_exhausted", "storage_no_space"),
    ("May 15 23:09:27 host kernel: [  514.682838] Memory cgroup out of memory: Killed process 15617 (python3) "
     "total-vm:11892kB", "slurm_cgroup_oom", "host_oom_killer"),
    ("RuntimeError: DataLoader worker (pid 3216) is killed by signal: Bus error. It is possible that dataloader's "
     "workers are out of shared memory.", "shm_bus_error", None),
    ("NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus", "gpu_xid_fatal", "gpu_xid"),
    ("kernel: NVRM: Xid (PCI:0000:dc:00): 45, pid=1818990, name=python3, Ch 00000001 caused by previous Xid 149",
     "gpu_xid", None),
    ("RuntimeError: DataLoader worker (pid 19597) is killed by signal: Killed.", "dataloader_worker_killed", None),
    ("OSError: [Errno 28] No space left on device", "storage_no_space", None),
])
def test_priorities_pick_the_specific_rule_among_the_added(line, winner, loser):
    ranked = [m.rule_id for m in DEFAULT.match_all(line)]
    assert ranked[0] == winner
    if loser:
        assert loser in ranked[1:]


@pytest.mark.parametrize("line", [
    "Trainer was signaled to stop but required minimum epochs (100) or minimum steps (None) has not been met.",
    "node001:12345:23456 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB ; OOB ib0:10.0.0.1<0>",
    "NET/IB : Got async event : port active",
    " iteration 10/ 100 | lm loss: 2.5E+00 | number of skipped iterations:   0 | number of nan iterations:   0 |",
    "srun: error: sdumont6156: task 0: Out Of Memory",  # srun's own line: detect/srun.py reads it
    "[NeMo I 2023-04-19 21:40:27 indexed_dataset:454]     reading sizes...",
])
def test_more_harmless_lines_match_nothing(line):
    assert DEFAULT.match(line) is None


# ---------------------------------------------------------------- the corpus and its labels

def test_the_corpus_has_at_least_40_excerpts_and_one_for_every_added_rule():
    assert len(LOG_FILES) >= 40
    expected = {read_log(p)[0]["expect"] for p in LOG_FILES}
    assert set(NEW_RULES) <= expected
    assert sum(read_log(p)[0]["expect"] == "NONE" for p in LOG_FILES) >= 8


def read_labels() -> list[dict[str, str]]:
    lines = (LOGS / "LABELS.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header == ["file", "anomaly", "component", "action", "node", "rank", "rule"]
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def test_labels_list_every_excerpt_once_and_agree_with_the_rules():
    labels = read_labels()
    assert sorted(row["file"] for row in labels) == [p.name for p in LOG_FILES]
    for row in labels:
        header, _ = read_log(LOGS / row["file"])
        assert row["rule"] == header["expect"], row
        assert row["node"] == "-" or re.fullmatch(r"[\w.-]+", row["node"]), row
        assert row["rank"] == "-" or row["rank"].isdigit(), row
        if row["rule"] == "NONE":
            assert (row["anomaly"], row["component"], row["action"]) == ("-", "-", "NONE"), row
        else:
            rule = DEFAULT.get(row["rule"])
            assert (row["anomaly"], row["component"], row["action"]) == (
                rule.anomaly.value, rule.component.value, rule.action.value), row
    actions = {row["action"] for row in labels}
    assert {"NONE", "REQUEUE", "EXCLUDE_NODE_AND_REQUEUE", "STOP"} <= actions
    assert any(row["node"] != "-" for row in labels if row["action"] == "EXCLUDE_NODE_AND_REQUEUE")


# ---------------------------------------------------------------- engines: same answers, found faster

_ENGINE_CACHE: dict[str, RuleSet] = {}


def engine_rules(engine: str) -> RuleSet:
    """The default rules on ``engine`` (the hyperscan tests are skipped where it is not installed)."""
    if engine == "hyperscan":
        pytest.importorskip("hyperscan")
    if engine not in _ENGINE_CACHE:
        _ENGINE_CACHE[engine] = RuleSet.load(engine=engine)
    return _ENGINE_CACHE[engine]


ENGINES = ["python", "hyperscan"]


def test_engine_selection(monkeypatch):
    assert RuleSet.load(engine="python").engine == "python"
    assert DEFAULT.engine == ("hyperscan" if hyperscan_available() else "python")
    with pytest.raises(RuleError) as info:
        RuleSet.load(engine="grep")
    assert info.value.one_line() == "unknown matching engine 'grep'; use one of auto, hyperscan, python"
    monkeypatch.setattr(rules_module, "_hs", None)
    assert not hyperscan_available() and RuleSet.load().engine == "python"
    with pytest.raises(RuleError) as info:
        RuleSet.load(engine="hyperscan")
    assert "pip install hyperscan" in info.value.one_line()


def test_every_default_pattern_goes_into_the_hyperscan_database():
    rules = engine_rules("hyperscan")
    for rule in rules.rules:
        for pattern in rule.patterns:
            assert _hs_expression(pattern)
    assert rules.match("Segmentation fault (core dumped)").rule_id == "segfault"
    assert rules._matcher._rest_owner == []  # nothing was left to the python engine


def expected_lines(text: str) -> list[tuple[int, str]]:
    """(line number, best rule) for every line of ``text`` that a rule matches, by brute force."""
    found = []
    for number, line in enumerate(text.split("\n"), 1):
        ranked = brute_force(DEFAULT, line)
        if ranked:
            found.append((number, ranked[0]))
    return found


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("path", LOG_FILES, ids=lambda p: p.name)
def test_both_engines_give_the_same_matches_on_every_excerpt(engine, path):
    rules = engine_rules(engine)
    text = path.read_text()
    expected = expected_lines(text)
    assert [(n, m.rule_id) for n, m in rules.scan_text(text)] == expected
    assert [(n, m.rule_id) for n, m in rules.scan_text(text.encode())] == expected
    _, lines = read_log(path)
    for line in lines:
        assert [m.rule_id for m in rules.match_all(line)] == brute_force(DEFAULT, line), line


@pytest.mark.parametrize("engine", ENGINES)
def test_files_are_scanned_in_blocks_across_line_boundaries(engine, tmp_path):
    rules = engine_rules(engine)
    text = "".join(p.read_text() for p in LOG_FILES) + "tail without a newline: SIGSEGV"
    path = tmp_path / "train.log"
    path.write_bytes(text.encode())
    expected = [(n, m) for n, m in enumerate((rules.match(line) for line in text.split("\n")), 1) if m]
    for block_size in (5, 97, 4096, 1 << 20):
        assert list(rules.scan_file(path, block_size)) == expected
        assert rules.count_matching_lines(path, block_size) == len(expected)
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert list(rules.scan_file(empty)) == [] and rules.count_matching_lines(empty) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_scan_text_splits_at_newlines_only(engine):
    rules = engine_rules(engine)
    text = "ok\r\nSegmentation fault\r\n\n\x0bCUDA error: x\u2028NCCL error\nSIGSEGV"
    assert [(n, m.rule_id) for n, m in rules.scan_text(text)] == [(2, "segfault"), (4, "nccl_error"), (5, "segfault")]
    bad = b"\xff\xfeSIGSEGV\n\xc3(ok\nNCCL error \xe2\x82\n"
    assert [(n, m.rule_id) for n, m in rules.scan_text(bad)] == [(1, "segfault"), (3, "nccl_error")]


PIECES = FRAGMENTS + ["\n", "\r", "\u2588", "\udc80", "é", "É", "\x1c", "\t"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=16))
def test_block_scanning_equals_line_by_line_matching(pieces):
    text = "".join(pieces)
    expected = expected_lines(text)
    for engine in ENGINES:
        if engine == "hyperscan" and not hyperscan_available():
            continue
        rules = engine_rules(engine)
        assert [(n, m.rule_id) for n, m in rules.scan_text(text)] == expected
        lines = text.split("\n")
        assert [[m.rule_id for m in rules.match_all(line)] for line in lines] == [
            brute_force(DEFAULT, line) for line in lines]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([p.encode("utf-8", "surrogatepass") for p in PIECES]),
                          st.binary(max_size=4)), max_size=16))
def test_bytes_are_decoded_per_line_with_replacement(chunks):
    data = b"".join(chunks)
    expected = expected_lines(data.decode("utf-8", "replace"))
    for engine in ENGINES:
        if engine == "hyperscan" and not hyperscan_available():
            continue
        assert [(n, m.rule_id) for n, m in engine_rules(engine).scan_text(data)] == expected


def test_hyperscan_engine_is_safe_from_several_threads():
    rules = engine_rules("hyperscan")
    text = "\n".join(p.read_text() for p in LOG_FILES)
    expected = rules.scan_text(text)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: (rules.scan_text(text), rules.match("SIGSEGV")), range(16)))
    assert all(found == expected and match.rule_id == "segfault" for found, match in results)


# Constructs hyperscan lacks or spells differently: each must still give exactly what re gives.
ODD_PATTERNS = [r"(?<!no )error\b", r"\bfoo(?=bar)", r"^start", r"end$", r"\Aabc", r"xyz\Z", r"caf[ée]",
                r"[^\s\d]{3}\d", r"a.b", r"(?>ab|a)c", r"x++y", r"\w+@\w+", r"ſ\w", "[\u212a]elvin",
                r"(?:colou?r|hue)s?", r"(a)?(?(1)b|c)d", r"\d{3}x?", r"a{1,100000}b", r"[^x]yz", r"(?s:q.r)",
                r"(?-i:CaSe)", r"\bİ", r"é+t", r"\S+\s\S", r"(?m:^m$)"]
ODD_PIECES = ["error", "no ", "foo", "bar", "start", "end", "abc", "xyz", "caf", "é", "É", "E", " ", "1", "ab",
              "c", "x", "y", "@", "ſ", "K", "k", "elvin", "colour", "hue", "s", "a", "b", "d", "123", "\n",
              "q", "r", "CaSe", "case", "İ", "i", "t", "\t", "\x1c", "m", "\u2588"]


def odd_rules(engine: str) -> RuleSet:
    if engine == "hyperscan":
        pytest.importorskip("hyperscan")
    key = f"odd-{engine}"
    if key not in _ENGINE_CACHE:
        _ENGINE_CACHE[key] = RuleSet([Rule(f"odd{i}", "odd", (p,), Anomaly.CRASH, Component.UNKNOWN,
                                           Action.REQUEUE, Trigger.AT_EXIT) for i, p in enumerate(ODD_PATTERNS)],
                                     engine=engine)
    return _ENGINE_CACHE[key]


def test_patterns_hyperscan_cannot_take_fall_back_to_re():
    rules = odd_rules("hyperscan")
    rules.match("")
    assert "a{1,100000}b" in [ODD_PATTERNS[i] for i in rules._matcher._rest_owner]
    assert "odd17" in [m.rule_id for m in rules.match_all("xaab")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(ODD_PIECES), st.text(max_size=3)), max_size=14))
def test_odd_patterns_match_exactly_as_re_on_both_engines(pieces):
    text = "".join(pieces)
    for engine in ENGINES:
        if engine == "hyperscan" and not hyperscan_available():
            continue
        rules = odd_rules(engine)
        lines = text.split("\n")
        assert [[m.rule_id for m in rules.match_all(line)] for line in lines] == [
            brute_force(rules, line) for line in lines]
        assert [(n, m.rule_id) for n, m in rules.scan_text(text)] == [
            (n, brute_force(rules, line)[0]) for n, line in enumerate(lines, 1) if brute_force(rules, line)]


def test_python_anchors_cover_every_literal_and_avoid_common_lines():
    rules = engine_rules("python")
    literals = rules._matcher._by_literal
    anchors = [a.decode() for a in rules._matcher.anchors]
    assert len(anchors) < len(literals) / 2
    assert all(any(a in literal for a in anchors) for literal in literals)
    common = _COMMON_LINES.lower()
    assert all(a not in common or a in literals for a in anchors)
