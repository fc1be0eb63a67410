"""containers-policy.json parsing (strict), scope selection and signedIdentity rules."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from image_pull.reference import parse_reference
from image_pull.trust.errors import InvalidPolicy
from image_pull.trust.policy import (
    ExactReference,
    ExactRepository,
    InsecureAcceptAnything,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    Policy,
    Reject,
    RemapIdentity,
    SignedBy,
    SigstoreSigned,
    docker_scopes,
    identity_matches,
    parse_identity,
)

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def p(doc: Any) -> Policy:
    return Policy.from_json(json.dumps(doc).encode())


def test_minimal_and_full_policies_parse() -> None:
    assert p({"default": REJECT}).default == (Reject(),)
    key = base64.b64encode(b"\x99keyring").decode()
    pol = p(
        {
            "default": REJECT,
            "transports": {
                "docker": {
                    "": ACCEPT,
                    "example.com:5000/ns/app:1": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": key}],
                    "*.example.org": [
                        {
                            "type": "sigstoreSigned",
                            "keyPaths": ["/a.pub", "kbs:///default/k/b"],
                            "signedIdentity": {"type": "matchRepository"},
                        }
                    ],
                    "quay.io/ns": [
                        {
                            "type": "sigstoreSigned",
                            "fulcio": {"caPath": "/ca.pem", "oidcIssuer": "https://i", "subjectEmail": "a@b"},
                            "rekorPublicKeyData": base64.b64encode(b"-----BEGIN PUBLIC KEY-----").decode(),
                        }
                    ],
                },
                "docker-daemon": {"": ACCEPT},
            },
        }
    )
    sb = pol.docker["example.com:5000/ns/app:1"][0]
    assert isinstance(sb, SignedBy) and sb.keys[0].data == b"\x99keyring"
    assert isinstance(sb.signed_identity, MatchRepoDigestOrExact)
    ss = pol.docker["*.example.org"][0]
    assert isinstance(ss, SigstoreSigned) and [k.path for k in ss.keys] == ["/a.pub", "kbs:///default/k/b"]
    assert isinstance(ss.signed_identity, MatchRepository) and ss.identity_given
    assert pol.other_transports == ("docker-daemon",)


@pytest.mark.parametrize(
    "doc,match",
    [
        ({}, "missing field 'default'"),
        ({"default": []}, "empty requirement list"),
        ({"default": ACCEPT, "transports": {"docker": {"example.com": []}}}, "empty requirement list"),
        ({"default": ACCEPT, "extra": 1}, "unknown field"),
        ({"default": [{"type": "reject", "x": 1}]}, "unknown field"),
        ({"default": [{"type": "acceptAll"}]}, "unknown requirement type"),
        ({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}, "exactly one of keyPath"),
        (
            {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/a", "keyData": "YQ=="}]},
            "exactly one",
        ),
        ({"default": [{"type": "signedBy", "keyPath": "/a"}]}, "missing field 'keyType'"),
        ({"default": [{"type": "signedBy", "keyType": "PGP", "keyPath": "/a"}]}, "unknown keyType"),
        (
            {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyData": "not base64!"}]},
            "not valid base64",
        ),
        ({"default": [{"type": "sigstoreSigned"}]}, "exactly one of keyPath"),
        (
            {
                "default": [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": "/a",
                        "fulcio": {"caPath": "/c", "oidcIssuer": "i", "subjectEmail": "e"},
                    }
                ]
            },
            "exactly one",
        ),
        (
            {
                "default": [
                    {
                        "type": "sigstoreSigned",
                        "fulcio": {"caPath": "/c", "oidcIssuer": "i", "subjectEmail": "e"},
                    }
                ]
            },
            "requires a rekorPublicKey",
        ),
        (
            {
                "default": [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": "/a",
                        "rekorPublicKeyPath": "/r",
                        "rekorPublicKeyData": "YQ==",
                    }
                ]
            },
            "at most one rekorPublicKey",
        ),
        (
            {
                "default": [
                    {
                        "type": "signedBy",
                        "keyType": "GPGKeys",
                        "keyPath": "/a",
                        "signedIdentity": {"type": "exactReference", "dockerReference": "example.com/a"},
                    }
                ]
            },
            "tag or digest",
        ),
        (
            {
                "default": [
                    {
                        "type": "signedBy",
                        "keyType": "GPGKeys",
                        "keyPath": "/a",
                        "signedIdentity": {"type": "exactRepository", "dockerRepository": "example.com/a:1"},
                    }
                ]
            },
            "without tag",
        ),
        (
            {
                "default": [
                    {
                        "type": "signedBy",
                        "keyType": "GPGKeys",
                        "keyPath": "/a",
                        "signedIdentity": {"type": "matchExact", "dockerReference": "example.com/a:1"},
                    }
                ]
            },
            "unexpected field",
        ),
        (
            {
                "default": [
                    {
                        "type": "signedBy",
                        "keyType": "GPGKeys",
                        "keyPath": "/a",
                        "signedIdentity": {"type": "matchSomething"},
                    }
                ]
            },
            "unknown signedIdentity",
        ),
        ({"default": ACCEPT, "transports": {"docker": {"ns/app": ACCEPT}}}, "fully expanded"),
        ({"default": ACCEPT, "transports": {"docker": {"example*.com": ACCEPT}}}, "invalid docker scope"),
        ({"default": ACCEPT, "transports": {"docker": {"Example.com/App": ACCEPT}}}, "invalid docker scope"),
        ({"default": ACCEPT, "transports": []}, "must be a JSON object"),
    ],
)
def test_strict_parsing_rejects(doc: Any, match: str) -> None:
    with pytest.raises(InvalidPolicy, match=match):
        p(doc)


@pytest.mark.parametrize(
    "raw,match",
    [
        (
            b'{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}',
            "duplicate key",
        ),
        (b'{"default": [{"type": "reject", "type": "insecureAcceptAnything"}]}', "duplicate key"),
        (b'{"default": NaN}', "non-standard JSON constant NaN"),
        (b"\xff", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b" " * (4 << 20) + b"{}", "larger than 4 MiB"),
    ],
)
def test_strict_json(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidPolicy, match=match):
        Policy.from_json(raw)


def test_scope_order_most_specific_first() -> None:
    ref = parse_reference("a.b.example.com:5000/ns1/ns2/repo:tag")
    assert docker_scopes(ref) == [
        "a.b.example.com:5000/ns1/ns2/repo:tag",
        "a.b.example.com:5000/ns1/ns2/repo",
        "a.b.example.com:5000/ns1/ns2",
        "a.b.example.com:5000/ns1",
        "a.b.example.com:5000",
        "*.b.example.com",
        "*.example.com",
        "*.com",
        "",
    ]
    d = "sha256:" + "a" * 64
    assert docker_scopes(parse_reference(f"busybox@{d}"))[:2] == [
        f"docker.io/library/busybox@{d}",
        "docker.io/library/busybox",
    ]


def test_most_specific_scope_wins_even_if_laxer() -> None:
    pol = p(
        {
            "default": REJECT,
            "transports": {
                "docker": {
                    "example.com": REJECT,
                    "example.com/ns/app": ACCEPT,
                    "*.example.com": ACCEPT,
                    "": REJECT,
                }
            },
        }
    )
    assert pol.requirements_for(parse_reference("example.com/ns/app:1")) == (
        "example.com/ns/app",
        (InsecureAcceptAnything(),),
    )
    assert pol.requirements_for(parse_reference("example.com/ns/other:1"))[0] == "example.com"
    assert pol.requirements_for(parse_reference("r.example.com/x:1"))[0] == "*.example.com"
    assert pol.requirements_for(parse_reference("quay.io/x:1"))[0] == ""
    assert p({"default": ACCEPT}).requirements_for(parse_reference("quay.io/x"))[0] == "default"


D = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    "rule,intended,signed,ok",
    [
        (MatchExact(), "example.com/a:1", "example.com/a:1", True),
        (MatchExact(), "example.com/a:1", "example.com/a:2", False),
        (MatchExact(), "example.com/a:1", "example.com/a", False),
        (MatchRepoDigestOrExact(), "example.com/a:1", "example.com/a:1", True),
        (MatchRepoDigestOrExact(), "example.com/a:1", "example.com/a:2", False),
        (MatchRepoDigestOrExact(), "example.com/a:1", "example.com/a", False),
        (MatchRepoDigestOrExact(), f"example.com/a@{D}", "example.com/a:anything", True),
        (MatchRepoDigestOrExact(), f"example.com/a@{D}", "example.com/b:1", False),
        (MatchRepoDigestOrExact(), "busybox", "docker.io/library/busybox:latest", True),
        (MatchRepository(), "example.com/a:1", "example.com/a", True),
        (MatchRepository(), "example.com/a:1", "example.com/a:7", True),
        (MatchRepository(), "example.com/a:1", "example.com/ab", False),
        (ExactReference("example.com/a:1"), "other.com/x:9", "example.com/a:1", True),
        (ExactReference("example.com/a:1"), "example.com/a:1", "example.com/a:2", False),
        (ExactRepository("example.com/a"), "other.com/x:9", "example.com/a:5", True),
        (ExactRepository("example.com/a"), "other.com/x:9", "example.com/b:5", False),
        (
            RemapIdentity("mirror.local/ns", "example.com/upstream"),
            "mirror.local/ns/app:1",
            "example.com/upstream/app:1",
            True,
        ),
        (
            RemapIdentity("mirror.local/ns", "example.com/upstream"),
            "mirror.local/ns/app:1",
            "mirror.local/ns/app:1",
            False,
        ),
        (
            RemapIdentity("mirror.local/ns", "example.com/upstream"),
            "mirror.local/nsx/app:1",
            "mirror.local/nsx/app:1",
            True,
        ),
        (RemapIdentity("*.mirror.local", "example.com"), "r1.mirror.local/app:1", "example.com/app:1", True),
        (MatchRepository(), "example.com/a:1", "not a ref!", False),
    ],
)
def test_identity_rules(rule: Any, intended: str, signed: str, ok: bool) -> None:
    ident = parse_identity(intended)
    if ident.name_only:
        r = parse_reference(intended)
        ident = type(ident)(r.name, r.tag, r.digest)
    assert identity_matches(rule, ident, signed) is ok


def test_parse_identity_keeps_name_only() -> None:
    assert parse_identity("example.com/a").name_only
    assert str(parse_identity("busybox:1")) == "docker.io/library/busybox:1"
    assert parse_identity("localhost:5000/a").tag is None
