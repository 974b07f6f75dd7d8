"""Namespace, tag and reference grammars."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from angosd.oci.digest import Digest
from angosd.oci.errors import DigestInvalid, NameInvalid, TagInvalid
from angosd.oci.names import MAX_NAME_LENGTH, Reference, is_valid_name, validate_name, validate_tag

COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
NAME_GRAMMAR = rf"{COMPONENT}(/{COMPONENT})*"
TAG_GRAMMAR = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
DIGEST = "sha256:" + "0" * 64

grammar_names = st.from_regex(NAME_GRAMMAR, fullmatch=True)
#: The same grammar with bounded repetitions: much cheaper to draw several per example.
short_components = st.from_regex(r"[a-z0-9]{1,8}((\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}", fullmatch=True)
#: Text over the characters that matter to the grammar, so that many draws are accepted.
name_like_text = st.text(alphabet="ab09._-/A\x00\n%", max_size=40)
valid_tags = st.from_regex(TAG_GRAMMAR, fullmatch=True)


@settings(max_examples=50)  # drawing from the unbounded grammar costs ~0.1s per example
@given(grammar_names)
def test_grammar_names_are_accepted_up_to_the_length_limit(name: str) -> None:
    if len(name) <= MAX_NAME_LENGTH:
        assert validate_name(name) == name
        assert is_valid_name(name)
    else:
        with pytest.raises(NameInvalid):
            validate_name(name)
        assert not is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    ["a", "library/ubuntu", "a.b_c__d---e/f0/9z", "x" * MAX_NAME_LENGTH, "/".join(["ab"] * 85)],
)
def test_accepts_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param(".", id="dot"),
        pytest.param("..", id="dotdot"),
        pytest.param("a/..", id="dotdot-component"),
        pytest.param("../a", id="leading-dotdot"),
        pytest.param("a/./b", id="dot-component"),
        pytest.param("/a", id="leading-slash"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("a/", id="trailing-slash"),
        pytest.param("a//b", id="empty-component"),
        pytest.param("Library/ubuntu", id="uppercase"),
        pytest.param("_x", id="leading-underscore"),
        pytest.param("x_", id="trailing-underscore"),
        pytest.param("a___b", id="triple-underscore"),
        pytest.param("a..b", id="double-dot-separator"),
        pytest.param("a._b", id="mixed-separators"),
        pytest.param("-a", id="leading-dash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("a b", id="space"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("a\nb", id="inner-newline"),
        pytest.param("%2e%2e", id="percent-encoded-dotdot"),
        pytest.param("a/%2e%2e/b", id="percent-encoded-dotdot-component"),
        pytest.param("caf\u00e9", id="unicode"),
        pytest.param("\uff41", id="fullwidth"),
        pytest.param("x" * (MAX_NAME_LENGTH + 1), id="too-long"),
        pytest.param("/".join(["ab"] * 86), id="too-long-components"),
    ],
)
def test_rejects_hostile_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        validate_name(name)
    assert not is_valid_name(name)


@given(st.one_of(st.text(), name_like_text))
@example("a\n")
@example("library/ubuntu\n")
@example("a/../b")
def test_accepted_names_are_safe_relative_paths(name: str) -> None:
    """Whatever text is accepted splits into non-empty, non-dot components of the grammar."""
    try:
        validate_name(name)
    except NameInvalid:
        assert not is_valid_name(name)
        return
    assert is_valid_name(name)
    assert len(name) <= MAX_NAME_LENGTH
    for component in name.split("/"):
        assert component not in ("", ".", "..")
        assert component.isascii() and component.isprintable()
        assert component[0].isalnum() and component[-1].isalnum()


@given(
    prefix=st.lists(short_components, max_size=2),
    bad=st.sampled_from(["", ".", "..", "_x", "x_", "-x", "A", "a\x00", "a\n", "a b", "%2e"]),
    suffix=st.lists(short_components, max_size=2),
)
def test_names_with_a_bad_component_are_rejected(prefix: list[str], bad: str, suffix: list[str]) -> None:
    name = "/".join([*prefix, bad, *suffix])
    with pytest.raises(NameInvalid):
        validate_name(name)


@given(valid_tags)
def test_grammar_tags_are_accepted(tag: str) -> None:
    assert validate_tag(tag) == tag
    reference = Reference.parse(tag)
    assert reference == Reference(tag=tag)
    assert str(reference) == tag


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("", id="empty"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("a/b", id="slash"),
        pytest.param("..", id="dotdot"),
        pytest.param("v1 ", id="trailing-space"),
        pytest.param("latest\n", id="trailing-newline"),
        pytest.param("a\x00", id="nul"),
        pytest.param("caf\u00e9", id="unicode"),
        pytest.param("a+b", id="plus"),
    ],
)
def test_rejects_bad_tags(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)
    with pytest.raises(TagInvalid):
        Reference.parse(tag)


@pytest.mark.parametrize("tag", ["latest", "_", "v1.2.3-rc_1", "A" * 128, "0"])
def test_accepts_good_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("text", [DIGEST, "sha512:" + "f" * 128])
def test_reference_with_colon_is_a_digest(text: str) -> None:
    reference = Reference.parse(text)
    assert reference == Reference(digest=Digest.parse(text))
    assert reference.tag is None
    assert str(reference) == text


@pytest.mark.parametrize(
    "text", [":", "latest:", "v1:2", "sha256:abc", DIGEST.upper(), DIGEST + "\n", "md5:" + "0" * 32]
)
def test_reference_with_bad_digest(text: str) -> None:
    with pytest.raises(DigestInvalid):
        Reference.parse(text)


@given(st.text())
@example("latest\n")
@example(DIGEST + "\n")
def test_reference_parse_is_a_tag_a_digest_or_a_documented_error(text: str) -> None:
    try:
        reference = Reference.parse(text)
    except DigestInvalid:
        assert ":" in text
        return
    except TagInvalid:
        assert ":" not in text
        return
    assert (reference.tag is None) != (reference.digest is None)
    assert str(reference) == text
    assert (reference.digest is not None) == (":" in text)
