"""Enrollment from the job's --comment (AJR's APS JSON) and from enrolled partitions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ajr_supervisor.enroll import (MODES, VALID_KEYS, Enrollment, EnrollmentError,
                                   effective_max_requeues, parse_comment, resolve)
from ajr_supervisor.errors import UsageError


def error_of(comment: str) -> str:
    with pytest.raises(EnrollmentError) as info:
        parse_comment(comment)
    line = info.value.one_line()
    assert "\n" not in line
    return line


# --- AJR's documented comments --------------------------------------------------------------------

def test_ajr_documented_full_comment():
    got = parse_comment('{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}')
    assert got == Enrollment(mode="requeue", max_requeue_times=10, hang_timeout_s=None, source="comment")
    assert not got.deprecated_mode


def test_ajr_minimal_comment():
    assert parse_comment('{"APS": {}}') == Enrollment()


def test_ajr_singleton_dependency_is_supported_but_deprecated():
    got = parse_comment('{"APS": {"auto_resume_mode": "singleton_dependency", "max_requeue_times": 3}}')
    assert got.mode == "singleton_dependency" and got.deprecated_mode and got.max_requeue_times == 3


def test_hang_timeout_extension():
    assert parse_comment('{"APS": {"hang_timeout_s": 300}}').hang_timeout_s == 300.0
    assert parse_comment('{"APS": {"hang_timeout_s": 0.5}}').hang_timeout_s == 0.5


def test_other_top_level_keys_are_ignored():
    got = parse_comment('{"owner": "team-a", "APS": {"max_requeue_times": 2}, "tags": [1, 2]}')
    assert got.max_requeue_times == 2


def test_whitespace_and_newlines_around_the_json():
    assert parse_comment('  {\n "APS": {}\n}\n ') == Enrollment()


def test_null_values_mean_not_given():
    got = parse_comment('{"APS": {"auto_resume_mode": null, "max_requeue_times": null, '
                        '"hang_timeout_s": null}}')
    assert got == Enrollment()


def test_constants():
    assert VALID_KEYS == ("auto_resume_mode", "max_requeue_times", "hang_timeout_s")
    assert MODES == ("requeue", "singleton_dependency")


def test_enrollment_rejects_nonsense_fields():
    with pytest.raises(ValueError):
        Enrollment(mode="restart")
    with pytest.raises(ValueError):
        Enrollment(source="magic")


# --- numeric strings (shell quoting) --------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [('"3"', 3), ('" 3 "', 3), ('"0"', 0), ("0", 0), ("25", 25)])
def test_max_requeue_times_accepted(value, expected):
    assert parse_comment(f'{{"APS": {{"max_requeue_times": {value}}}}}').max_requeue_times == expected


def test_hang_timeout_numeric_string_accepted():
    assert parse_comment('{"APS": {"hang_timeout_s": "90"}}').hang_timeout_s == 90.0


# --- every error path -----------------------------------------------------------------------------

@pytest.mark.parametrize("comment", ["", "   ", "(null)"])
def test_no_comment(comment):
    assert error_of(comment) == "job has no --comment; enrol it with --comment='{\"APS\": {}}'"


def test_not_json_says_where_and_shows_an_excerpt():
    line = error_of('{"APS": {"auto_resume_mode": "requeue" "max_requeue_times": 10}}')
    assert line.startswith("job --comment is not valid JSON at character 40 (Expecting ',' delimiter), "
                           'near `...me_mode": "requeue" ^"max_requeue_times":...`')
    assert '; fix the JSON, e.g. --comment=\'{"APS": {"auto_resume_mode": "requeue", ' in line


def test_single_quotes_get_the_double_quote_hint():
    line = error_of("{'APS': {}}")
    assert line.startswith("job --comment is not valid JSON at character 2 "
                           "(Expecting property name enclosed in double quotes), near `{^'APS': {}}`")
    assert "; JSON needs double quotes, e.g. --comment='{\"APS\":" in line


def test_truncated_json():
    line = error_of('{"APS": {')
    assert "is not valid JSON at character 10" in line and 'near `{"APS": {^`' in line


def test_deeply_nested_json():
    deep = "[" * 100_000 + "]" * 100_000
    assert error_of(deep).startswith("job --comment is JSON nested too deeply; simplify it")
    assert resolve(deep, "cpu", ()) is None


@pytest.mark.parametrize("comment, kind", [("[]", "a list"), ('"APS"', "a string"), ("3", "a number"),
                                           ("null", "null"), ("true", "a boolean")])
def test_json_that_is_not_an_object(comment, kind):
    assert error_of(comment) == (f"job --comment is JSON but not an object (it is {kind}); "
                                 "write an object, e.g. --comment='{\"APS\": {}}'")


def test_no_aps_key_lists_the_keys():
    assert error_of('{"owner": "me", "x": 1}') == (
        'job --comment has no "APS" key (its keys: "owner", "x"); add "APS": {} to it '
        "(other keys may stay), e.g. --comment='{\"APS\": {}}'")
    assert 'no "APS" key (its keys: none)' in error_of("{}")


def test_wrong_case_aps_key():
    assert error_of('{"aps": {}}') == (
        'job --comment has no "APS" key (its keys: "aps"); the key is "APS" in upper case: '
        'rename "aps" to "APS"')


@pytest.mark.parametrize("value, kind", [('"requeue"', "a string"), ("[]", "a list"), ("null", "null"),
                                         ("1", "a number"), ("true", "a boolean")])
def test_aps_not_an_object(value, kind):
    line = error_of(f'{{"APS": {value}}}')
    assert line.startswith(f'"APS" in the job --comment is {kind}, not an object; write "APS": {{}} '
                           "or a full object, e.g. --comment=")


def test_unknown_key_in_aps():
    assert error_of('{"APS": {"max_requeue": 3}}') == (
        'unknown key "max_requeue" in "APS" of the job --comment; valid keys: auto_resume_mode, '
        'max_requeue_times, hang_timeout_s (did you mean "max_requeue_times"?)')
    assert error_of('{"APS": {"a": 1, "zzz": 2}}') == (
        'unknown keys "a", "zzz" in "APS" of the job --comment; valid keys: auto_resume_mode, '
        "max_requeue_times, hang_timeout_s")


@pytest.mark.parametrize("value", ['"restart"', '"Requeue"', "1", "[]", '""'])
def test_bad_mode(value):
    assert error_of(f'{{"APS": {{"auto_resume_mode": {value}}}}}') == (
        f'"auto_resume_mode": {value} in "APS" of the job --comment is not a valid mode; '
        'use "requeue" (or the deprecated "singleton_dependency")')


@pytest.mark.parametrize("value, problem", [
    ("-1", "is negative"), ('"-2"', "is negative"), ("2.5", "is not a whole number"),
    ("3.0", "is not a whole number"), ('"3.5"', "is not a whole number"), ('"three"', "is not a whole number"),
    ("true", "is not a whole number"), ("false", "is not a whole number"), ("[3]", "is not a whole number"),
    ('""', "is not a whole number"), ('"1_000"', "is not a whole number"),
])
def test_bad_max_requeue_times(value, problem):
    assert error_of(f'{{"APS": {{"max_requeue_times": {value}}}}}') == (
        f'"max_requeue_times": {value} in "APS" of the job --comment {problem}; '
        'use a whole number of 0 or more, e.g. "max_requeue_times": 10')


@pytest.mark.parametrize("value, shown, problem", [
    ("0", "0", "is not positive"), ("-3", "-3", "is not positive"), ('"0"', '"0"', "is not positive"),
    ('"abc"', '"abc"', "is not a number"), ("true", "true", "is not a number"),
    ("NaN", "NaN", "is not a number"), ("Infinity", "Infinity", "is not a number"),
    ("{}", "{}", "is not a number"),
])
def test_bad_hang_timeout(value, shown, problem):
    assert error_of(f'{{"APS": {{"hang_timeout_s": {value}}}}}') == (
        f'"hang_timeout_s": {shown} in "APS" of the job --comment {problem}; '
        'use a number of seconds greater than 0, e.g. "hang_timeout_s": 120')


def test_enrollment_error_is_a_usage_error():
    assert issubclass(EnrollmentError, UsageError) and EnrollmentError("x").exit_code == 2


# --- resolve --------------------------------------------------------------------------------------

AJR = '{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 10}}'


@pytest.mark.parametrize("comment, partition, enrolled, expected", [
    (AJR, "cpu", (), Enrollment(max_requeue_times=10)),
    (AJR, "gpu", ("gpu",), Enrollment(max_requeue_times=10)),          # the comment wins
    ("", "gpu", ("gpu",), Enrollment(source="partition")),
    ("(null)", "gpu", ("gpu", "batch"), Enrollment(source="partition")),
    ("", "cpu", ("gpu",), None),
    ("", "cpu", (), None),
    ('{"owner": "me"}', "cpu", ("gpu",), None),                           # another tool's JSON
    ('{"owner": "me"}', "gpu", ("gpu",), Enrollment(source="partition")),
    ("nightly run, see wiki", "cpu", ("gpu",), None),                     # free text
    ("nightly run, see wiki", "gpu", ("gpu",), Enrollment(source="partition")),
    ("fix gaps in maps", "cpu", (), None),                               # 'aps' inside words
    ("[1, 2]", "cpu", (), None),
    ("42", "gpu", ("gpu",), Enrollment(source="partition")),
    ("", "cpu,gpu", ("gpu",), Enrollment(source="partition")),           # Slurm's partition list
    ("", "gpu-large", ("gpu",), None),
])
def test_resolve(comment, partition, enrolled, expected):
    assert resolve(comment, partition, enrolled) == expected


@pytest.mark.parametrize("comment, partition, enrolled, fragment", [
    ('{"APS": {"max_requeue_times": -1}}', "cpu", (), "is negative"),
    ('{"APS": {"max_requeue_times": -1}}', "gpu", ("gpu",), "is negative"),  # enrolled, still raised
    ('{"APS": []}', "gpu", ("gpu",), "not an object"),
    ('{"APS": {"foo": 1}}', "cpu", (), 'unknown key "foo"'),
    ("{'APS': {}}", "cpu", (), "JSON needs double quotes"),                  # not JSON, but tries
    ("{'APS': {}}", "gpu", ("gpu",), "JSON needs double quotes"),
    ("APS", "cpu", (), "is not valid JSON"),
    ('"APS"', "cpu", (), "not an object"),
    ('{"aps": {}}', "cpu", (), 'the key is "APS" in upper case'),
    ('{" APS ": {}}', "gpu", ("gpu",), 'rename " APS " to "APS"'),
])
def test_resolve_raises_on_attempted_enrollments(comment, partition, enrolled, fragment):
    with pytest.raises(EnrollmentError) as info:
        resolve(comment, partition, enrolled)
    assert fragment in info.value.one_line()


# --- effective limit ------------------------------------------------------------------------------

@pytest.mark.parametrize("system, job, expected", [(10, None, 10), (10, 3, 3), (3, 10, 3), (5, 0, 0),
                                                   (0, 7, 0)])
def test_effective_max_requeues(system, job, expected):
    assert effective_max_requeues(system, Enrollment(max_requeue_times=job)) == expected


# --- properties -----------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)
non_aps_keys = st.text(max_size=8).filter(lambda key: key.strip().lower() != "aps")


@given(st.dictionaries(non_aps_keys, json_values, max_size=5), st.text(max_size=8))
def test_json_objects_without_aps_are_not_enrolled(obj, partition):
    comment = json.dumps(obj)
    assert resolve(comment, partition, ()) is None
    assert resolve(comment, "gpu", ("gpu",)) == Enrollment(source="partition")


@given(mode=st.sampled_from(MODES) | st.none(),
       max_requeues=st.integers(min_value=0, max_value=10**6) | st.none(),
       hang=st.floats(min_value=1e-3, max_value=1e6) | st.none(),
       others=st.dictionaries(non_aps_keys, json_values, max_size=3),
       as_text=st.booleans())
def test_valid_enrollments_round_trip(mode, max_requeues, hang, others, as_text):
    aps: dict[str, object] = {}
    if mode is not None:
        aps["auto_resume_mode"] = mode
    if max_requeues is not None:
        aps["max_requeue_times"] = str(max_requeues) if as_text else max_requeues
    if hang is not None:
        aps["hang_timeout_s"] = hang
    comment = json.dumps({**others, "APS": aps})
    expected = Enrollment(mode=mode or "requeue", max_requeue_times=max_requeues, hang_timeout_s=hang)
    assert parse_comment(comment) == expected
    assert resolve(comment, "any", ()) == expected
