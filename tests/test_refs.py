"""Reference grammar at its edges: what a hostile or careless string must not slip past."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from adapterhub.cli.main import cli
from adapterhub.errors import InvalidName, InvalidReference
from adapterhub.refs import parse_reference, validate_name, validate_tag


@pytest.mark.parametrize("name", ["name\n", "name\r", "na\x00me", "\nname", "..", "a..b", "-a", "a" * 129, "",
                                  "a/b/c", "/a", "a/", "a//b", "a\\b", "a/..", "../a", "org/-a", "org/a\n"])
def test_names_with_control_characters_or_escapes_are_refused(name):
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("tag", ["prod\n", "12", "sha256x", "p\tq", ""])
def test_bad_tags_are_refused(tag):
    with pytest.raises(InvalidName):
        validate_tag(tag)


@pytest.mark.parametrize("ref", ["x@\u00b2", "x@" + "9" * 5000, "x@0", "x@1\n", "x@sha256:abcdef\n", "x@sha256:abc",
                                 "x:prod\n", "x\n:prod", "@1", ""])
def test_malformed_references_are_one_clear_error(ref):
    with pytest.raises(InvalidReference):
        parse_reference(ref)


def test_org_names_take_one_slash_between_two_plain_parts():
    assert validate_name("org/name.v1") == "org/name.v1"
    assert parse_reference("org/name@3").name == "org/name" and parse_reference("org/name@3").version == 3
    assert parse_reference("org/name:prod").tag == "prod"
    with pytest.raises(InvalidReference):
        parse_reference("org/name:a/b")


def test_well_formed_references_parse():
    assert parse_reference("x@12").version == 12
    assert parse_reference("x@sha256:abcdef").digest == "abcdef"
    assert parse_reference("x:prod").tag == "prod"
    assert parse_reference("x").bare


def test_cli_answers_a_superscript_version_with_one_line():
    result = CliRunner().invoke(cli, ["show", "x@\u00b2"])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "invalid reference" in result.output and len(result.output.strip().splitlines()) == 1
