from __future__ import annotations

import pytest

from kbs_protocol.errors import InvalidUri
from kbs_protocol.uri import ResourceUri, parse_resource_path, parse_resource_segments


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("kbs:///default/key/k1", "/kbs/v0/resource/default/key/k1"),
        ("kbs://kbs.example:8080/default/key/k1", "/kbs/v0/resource/default/key/k1"),
        ("kbs://10.0.0.1/a/b/c?version=2", "/kbs/v0/resource/a/b/c?version=2"),
        ("kbs+sample:///a/b", "/kbs/v0/sample/a/b"),
        ("kbs+nebula-ca:///credential?ip=1.2.3.4", "/kbs/v0/nebula-ca/credential?ip=1.2.3.4"),
        ("default/key/k1", "/kbs/v0/resource/default/key/k1"),
        ("/default/key/k1", "/kbs/v0/resource/default/key/k1"),
        ("a_b/c-d/e.f", "/kbs/v0/resource/a_b/c-d/e.f"),
    ],
)
def test_valid(text: str, path: str) -> None:
    u = ResourceUri.parse(text)
    assert u.kbs_path() == path
    assert ResourceUri.parse(str(u)) == u


@pytest.mark.parametrize(
    "text",
    [
        "kbs:///a/b",
        "kbs:///a/b/c/d",
        "kbs:///.well-known/b/c",
        "kbs:///a/../c",
        "kbs:///a//c",
        "http:///a/b/c",
        "kbs+auth:///x",
        "kbs+Bad:///x",
        "kbs://bad host/a/b/c",
        "kbs:///a/b/c#frag",
        "kbs:///a/b/c?x=<y>",
        "kbs+p:///../x",
        "kbs:" + "/" * 3 + "a/b/" + "c" * 5000,
        "kbs://",
        "",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidUri):
        ResourceUri.parse(text)


def test_resource_path_segments() -> None:
    assert parse_resource_path("r/t/g") == ("r", "t", "g")
    with pytest.raises(InvalidUri):
        parse_resource_path("r/t/g/")


@pytest.mark.parametrize(
    "text",
    [
        "kbs:///repo/type/tag\n",
        "kbs:///repo/type\n/tag",
        "kbs:///repo/type/tag?a=b\n",
        "kbs://host:8080\n/repo/type/tag",
        "kbs+plugin\n:///x/y",
    ],
)
def test_trailing_newline_in_a_part_is_refused(text: str) -> None:
    # `$` in a regex matches before a final newline; each part must match whole.
    with pytest.raises(InvalidUri):
        ResourceUri.parse(text)


@pytest.mark.parametrize(
    "segs",
    [["a", "b"], ["a", "b", "c", "d"], ["a", "", "c"], ["a", "..", "c"], ["a", ".b", "c"], ["a", "b", "c\n"]],
)
def test_segments_grammar_refuses(segs: list[str]) -> None:
    """The KBS checks the segments it was routed with (no re-split on "/"): the same grammar."""
    with pytest.raises(InvalidUri):
        parse_resource_segments(segs)


def test_segments_are_not_re_split() -> None:
    with pytest.raises(InvalidUri):
        parse_resource_segments(["a/b", "c"])  # two segments, whatever a join would make of them
    assert parse_resource_segments(["A-1", "_t", "x.y"]) == ("A-1", "_t", "x.y")
