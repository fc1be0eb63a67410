"""References, auth.json, challenges, manifests, configs, registries.conf: pure parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from image_pull.auth import AuthFile, parse_challenges, parse_token_response
from image_pull.errors import AuthError, InvalidReference, ManifestError, NoMatchingPlatform, PolicyRejected
from image_pull.manifest import Index, Manifest, Platform, parse_config, parse_manifest_document
from image_pull.reference import is_short_name, parse_reference
from image_pull.registries_conf import RegistryConfig
from image_pull.store import chain_ids

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


# ---------------------------------------------------------------------- references
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("index.docker.io/user/app", "docker.io/user/app:latest"),
        ("registry-1.docker.io/user/app:v1", "docker.io/user/app:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"),
        ("quay.io/ns/app@" + D1, "quay.io/ns/app@" + D1),
        ("quay.io/ns/app:tag@" + D1, "quay.io/ns/app:tag@" + D1),
        ("127.0.0.1:5000/x:1", "127.0.0.1:5000/x:1"),
        ("docker://quay.io/a:b", "quay.io/a:b"),
    ],
)
def test_reference_normalisation(text: str, want: str) -> None:
    assert str(parse_reference(text)) == want


def test_reference_fields_and_endpoint() -> None:
    r = parse_reference("busybox")
    assert (r.registry, r.repository, r.tag, r.digest) == ("docker.io", "library/busybox", "latest", None)
    assert r.endpoint == "registry-1.docker.io"
    d = parse_reference("quay.io/a/b:t@" + D1)
    assert d.reference == D1  # digest wins over the tag


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "UPPER/case",
        "a b",
        "app:",
        "app@sha256:abc",
        "app@sha256:" + "A" * 64,
        "app@md5:" + "0" * 32,
        "quay.io/a:" + "t" * 129,
        "a/../b",
        "x" * 5000,
        "host:99999999/a",
    ],
)
def test_bad_references_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(bad)


# ---------------------------------------------------------------------- auth.json
def _auth(user: str, pw: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_auth_json_longest_prefix_and_hub_aliases() -> None:
    doc = {
        "auths": {
            "reg.example": _auth("host", "p1"),
            "reg.example/team": _auth("team", "p2"),
            "reg.example/team/app": _auth("app", "p3"),
            "https://index.docker.io/v1/": _auth("hub", "p4:with:colons"),
            "helper.example": {"auth": ""},
        }
    }
    af = AuthFile.from_bytes(json.dumps(doc).encode())

    def user(ref: str) -> str | None:
        c = af.lookup(parse_reference(ref))
        return None if c is None else c.username

    assert user("reg.example/team/app:1") == "app"
    assert user("reg.example/team/other") == "team"
    assert user("reg.example/x/y") == "host"
    assert user("other.example/a") is None
    assert user("helper.example/a") is None  # credential-helper entries are not supported
    hub = af.lookup(parse_reference("busybox"))
    assert hub is not None and hub.username == "hub" and hub.password == "p4:with:colons"
    assert "p4" not in repr(af) and "p4" not in repr(hub)


@pytest.mark.parametrize(
    "bad",
    [b"not json", b"[]", b'{"auths": []}', b'{"auths": {"h": {"auth": "!!!"}}}', b'{"auths": {"h": 1}}'],
)
def test_bad_auth_files(bad: bytes) -> None:
    with pytest.raises(AuthError):
        AuthFile.from_bytes(bad)


def test_challenge_parsing() -> None:
    chs = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"',
            'Basic realm="x", Newauth realm="y", title="a \\"quoted\\" one"',
        ]
    )
    assert [c.scheme for c in chs] == ["bearer", "basic", "newauth"]
    assert chs[0].params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert chs[2].params["title"] == 'a "quoted" one'


def test_token_response_lifetimes() -> None:
    t = parse_token_response(b'{"token": "a", "expires_in": 10}', now_monotonic=100.0, now_wall=0.0)
    assert t.token == "a" and t.expires_at == 160.0  # never less than 60 s
    t2 = parse_token_response(b'{"access_token": "b", "expires_in": 600}', now_monotonic=0.0, now_wall=0.0)
    assert t2.token == "b" and t2.expires_at == 600.0 and "b" not in repr(t2)
    with pytest.raises(AuthError):
        parse_token_response(b'{"expires_in": 60}', now_monotonic=0.0, now_wall=0.0)


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"token": "a", "token": "b"}', b'{"token": "a", "expires_in": NaN}'],
    ids=["deep-nesting", "duplicate-token", "nan"],
)
def test_hostile_token_response_and_auth_file_are_auth_errors(body: bytes) -> None:
    """A token server's nesting bomb escaped as RecursionError (outside the error tree);
    which of two "token" members counts must not be a parser's choice."""
    with pytest.raises(AuthError):
        parse_token_response(body, now_monotonic=0.0, now_wall=0.0)
    with pytest.raises(AuthError):
        AuthFile.from_bytes(body.replace(b'"token"', b'"auths"'))


# ---------------------------------------------------------------------- manifests
def _desc(mt: str, digest: str = D1, size: int = 10, **extra: object) -> dict[str, object]:
    return {"mediaType": mt, "digest": digest, "size": size, **extra}


OCI_M = "application/vnd.oci.image.manifest.v1+json"
OCI_I = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def _manifest(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_M,
        "config": _desc(CONFIG),
        "layers": [_desc(LAYER, D2, 5)],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_manifest_parses() -> None:
    m = parse_manifest_document(_manifest(), OCI_M + "; charset=utf-8")
    assert isinstance(m, Manifest)
    assert m.config.digest == D1 and [layer.digest for layer in m.layers] == [D2]


@pytest.mark.parametrize(
    ("body", "ctype", "match"),
    [
        (_manifest(manifests=[]), OCI_M, "ambiguous"),
        (_manifest(mediaType=OCI_I), OCI_I, "index contains layers"),
        (_manifest(), OCI_I, "differs"),
        (_manifest(schemaVersion=1), OCI_M, "schemaVersion"),
        (_manifest(layers=[_desc(LAYER, "sha256:xyz")]), OCI_M, "digest"),
        (_manifest(layers=[_desc(LAYER, D2, -1)]), OCI_M, "negative"),
        (_manifest(layers=[_desc(LAYER, D2, True)]), OCI_M, "type"),
        (b'{"schemaVersion": 2, "schemaVersion": 2}', OCI_M, "duplicate"),
        (b'{"schemaVersion": NaN}', OCI_M, "constant"),
        (b"\xff\xfe", OCI_M, "JSON"),
        (json.dumps({"schemaVersion": 2, "mediaType": "application/x-foo"}).encode(), None, "unsupported"),
    ],
)
def test_bad_manifests(body: bytes, ctype: str | None, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest_document(body, ctype)


def _index() -> Index:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_I,
        "manifests": [
            _desc(OCI_M, D1, platform={"os": "linux", "architecture": "arm", "variant": "v7"}),
            _desc(OCI_M, D2, platform={"os": "linux", "architecture": "arm64"}),
            _desc(OCI_M, "sha256:" + "3" * 64, platform={"os": "linux", "architecture": "amd64"}),
            _desc(OCI_M, "sha256:" + "4" * 64, platform={"os": "unknown", "architecture": "unknown"}),
        ],
    }
    idx = parse_manifest_document(json.dumps(doc).encode(), OCI_I)
    assert isinstance(idx, Index)
    return idx


def test_platform_selection() -> None:
    idx = _index()
    assert idx.select(Platform("linux", "amd64")).digest.startswith("sha256:3")
    assert idx.select(Platform("linux", "arm64", "v8")).digest == D2  # arm64 defaults to v8
    assert idx.select(Platform("linux", "arm", "v7")).digest == D1
    with pytest.raises(NoMatchingPlatform, match="linux/s390x"):
        idx.select(Platform("linux", "s390x"))
    with pytest.raises(NoMatchingPlatform):
        idx.select(Platform("linux", "arm", "v6"))


def test_config_parsing() -> None:
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "Env": ["A=1"],
            "WorkingDir": "/w",
            "User": "1000:1000",
            "Volumes": {"/data": {}},
            "Labels": {"k": "v"},
        },
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
    }
    c = parse_config(json.dumps(cfg).encode())
    assert c.entrypoint == ("/bin/sh", "-c") and c.cmd == ("echo hi",)
    assert c.volumes == ("/data",) and c.diff_ids == (D1, D2) and c.user == "1000:1000"
    cfg["config"]["Env"] = "A=1"  # type: ignore[index]
    with pytest.raises(ManifestError, match="Env"):
        parse_config(json.dumps(cfg).encode())
    with pytest.raises(ManifestError, match="rootfs"):
        parse_config(b'{"os": "linux"}')


def test_chain_ids_follow_the_image_spec() -> None:
    import hashlib

    ids = chain_ids([D1, D2])
    assert ids[0] == D1
    assert ids[1] == "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()


# ---------------------------------------------------------------------- registries.conf
CONF = b"""
unqualified-search-registries = ["docker.io", "quay.io"]

[[registry]]
prefix = "docker.io/library"
location = "mirror.internal/hub"
[[registry.mirror]]
location = "fast.internal/hub"
insecure = true

[[registry]]
prefix = "blocked.example"
blocked = true

[[registry]]
prefix = "*.corp.example"
location = "proxy.corp.example/all"

[[registry]]
location = "plain.example:5000"
insecure = true
"""


def test_registries_conf_ordering() -> None:
    rc = RegistryConfig.from_toml(CONF)
    c = rc.candidates(parse_reference("busybox:1"), unqualified=True)
    got = [(str(x.reference), x.insecure, x.origin) for x in c]
    assert got == [
        ("fast.internal/hub/busybox:1", True, "mirror"),
        ("mirror.internal/hub/busybox:1", False, "remapped"),
        ("quay.io/busybox:1", False, "search"),  # library/ dropped for non-docker.io
    ]
    # a reference that names docker.io is never searched for elsewhere (quay.io/busybox is
    # someone else's image): only its mirrors and remapping apply
    for named in ("docker.io/library/busybox:1", "docker.io/busybox:1", "index.docker.io/busybox:1"):
        assert not is_short_name(named)
        got = [
            str(x.reference) for x in rc.candidates(parse_reference(named), unqualified=is_short_name(named))
        ]
        assert got == ["fast.internal/hub/busybox:1", "mirror.internal/hub/busybox:1"]
    assert is_short_name("busybox") and is_short_name("ns/app:1") and is_short_name("docker://busybox@" + D1)
    assert not is_short_name("localhost/app") and not is_short_name("reg:5000/app")
    assert [str(x.reference) for x in rc.candidates(parse_reference("a.corp.example/x/y:2"))] == [
        "proxy.corp.example/all/x/y:2"
    ]
    plain = rc.candidates(parse_reference("plain.example:5000/app@" + D1))
    assert plain[0].insecure and plain[0].reference.digest == D1
    # prefix must end at a boundary: docker.io/libraryX is not docker.io/library
    assert (
        str(rc.candidates(parse_reference("docker.io/libraryx/a"))[0].reference)
        == "docker.io/libraryx/a:latest"
    )
    with pytest.raises(PolicyRejected, match="blocked"):
        rc.candidates(parse_reference("blocked.example/a"))


@pytest.mark.parametrize(
    "bad",
    [
        b"[[registry]]\ninsecure = true\n",
        b'[[registry]]\nprefix = "*.x.example"\n',
        b'[[registry]]\nlocation = "a"\n[[registry.mirror]]\nlocation = ""\n',
        b'[[registry]]\nlocation = "a"\nunknown = 1\n',
        b'[[registry]]\nlocation = "a"\nblocked = "yes"\n',
        b"not toml = = =",
    ],
)
def test_bad_registries_conf(bad: bytes) -> None:
    with pytest.raises(PolicyRejected):
        RegistryConfig.from_toml(bad)


def test_tty_progress_line() -> None:
    import io

    from image_pull.progress import ProgressEvent, TtyProgress

    out = io.StringIO()
    tty = TtyProgress(out)
    tty(ProgressEvent("layer-start", 0, D1, 0, 2_000_000))
    tty(ProgressEvent("layer-cached", 1, D2, 0, 1_000_000))
    tty(ProgressEvent("layer-done", 0, D1, 2_000_000, 2_000_000, rate=4e6))
    tty(ProgressEvent("done", None, D1, 2_000_000, 3_000_000))
    text = out.getvalue()
    last = text.rstrip("\n").split("\r\x1b[K")[-1]
    assert last.startswith("layers 2/2  3.0/3.0 MB") and last.endswith("done")
    assert "4.0 MB/s" in text and text.endswith("\n")


def test_proxy_credentials_stay_out_of_the_config_repr(tmp_path: Path) -> None:
    from image_pull.puller import PullerConfig
    from image_pull.registries_conf import ProxyConfig

    proxy = ProxyConfig(https_proxy="http://alice:s3cret@proxy.example:3128", http_proxy="http://p:8080")
    text = repr(PullerConfig(work_dir=tmp_path, proxy=proxy))
    assert "s3cret" not in text and "alice" not in text
    assert "http://***@proxy.example:3128" in text and "http://p:8080" in text
