"""Interop with a real Go ttRPC peer: containerd's ttrpc (Debian's
golang-github-containerd-ttrpc-dev 1.1.1, built offline in GOPATH mode) with
messages built from guest-components' own protos
(tests/fixtures/guest-components, via a protoc descriptor set), calling the
project's attestation-agent and confidential-data-hub processes over their
Unix sockets. Status codes and messages are asserted as ttrpc-rust 0.9.0 and
upstream's AA/CDH give them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import tests.cdh.conftest  # noqa: F401 (first: test_sealed_secret imports it back)
from tests.cdh.stack import Stack, start_stack
from tests.cdh.test_sealed_secret import jwk_of, seal, vault
from tests.support.stall import StallServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "tests" / "fixtures" / "guest-components" / "protos"
CLIENT_SRC = Path(__file__).resolve().parent / "ttrpc_client"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages install sources
MAX = 4194304
PAD = 5 << 20  # an oversized request: 5 MiB in an unknown field

SECRET = os.urandom(33)
KEK = os.urandom(32)
SIGNER = ec.generate_private_key(ec.SECP256R1())
AA = "attestation_agent.AttestationAgentService"


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip(
            "go is not installed (scripts/install-deps.sh installs golang-go and the Go ttrpc package)"
        )
    out = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": GOPATH,
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(out / "cache")  # else Go's own build cache (faster reruns)
    build = subprocess.run(
        [go, "build", "-o", str(out / "ttrpc_client"), "."],
        cwd=CLIENT_SRC,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, f"building the Go client failed:\n{build.stderr[-3000:]}"
    desc = out / "upstream.pb"
    protoc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            "--include_imports",
            f"--descriptor_set_out={desc}",
            "attestation-agent.proto",
            "api.proto",
            "keyprovider.proto",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert protoc.returncode == 0, protoc.stderr
    return [str(out / "ttrpc_client"), "-descriptors", str(desc)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, StallServer]]:
    tmp = tmp_path_factory.mktemp("stack")
    registry = StallServer(16)
    with start_stack(tmp, cdh=False) as s:
        s.start_cdh(f'[image]\nwork_dir = "{tmp / "images"}"\n')
        s.set_resource("default/cdh/secret", SECRET)
        s.set_resource("default/cdh/sealkey", jwk_of(SIGNER))
        s.set_resource("default/image-kek/k1", KEK)
        yield s, registry
    registry.close()


@pytest.fixture(scope="module")
def stalled_aa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An attestation-agent whose KBS accepts connections and never answers."""
    kbs = StallServer(16)
    s = Stack(tmp_path_factory.mktemp("stalled-aa"), kbs_url=f"http://127.0.0.1:{kbs.port}")
    try:
        s.start_aa()
        yield s
    finally:
        s.close()
        kbs.close()


def test_attestation_agent_deadlines(go_client: list[str], stalled_aa: Stack) -> None:
    sock = str(stalled_aa.aa_sock)
    token = {"socket": sock, "service": AA, "method": "GetToken", "request": {"TokenType": "kbs"}}
    res = _run(
        go_client,
        [
            {"id": "client-deadline", **token, "timeout_ms": 1000},
            {"id": "after", "socket": sock, "service": AA, "method": "GetTeeType", "request": {}},
            {"id": "server-deadline", **token, "raw_timeout_nano": 1_000_000_000},
        ],
    )
    (r,) = res["client-deadline"]
    assert r["code"] == 4 or "deadline exceeded" in r.get("local_error", ""), r
    assert _ok(res["after"]) == {"tee": "sample"}
    assert res["server-deadline"][0]["code"] == 4, res["server-deadline"]


def _run(go_client: list[str], specs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    cp = subprocess.run(
        go_client,
        input="".join(json.dumps(s) + "\n" for s in specs),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    results: dict[str, list[dict[str, Any]]] = {}
    for line in cp.stdout.splitlines():
        r = json.loads(line)
        results.setdefault(r["id"], []).append(r)
    assert set(results) == {s["id"] for s in specs}, cp.stderr[-2000:]
    return results


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ok(r: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(r) == 1 and r[0]["code"] == 0, r
    return dict(r[0].get("response") or {})


def _status(r: list[dict[str, Any]]) -> tuple[int, str]:
    assert len(r) == 1, r
    return r[0]["code"], r[0]["message"]


def _error_paths(
    sock: str, service: str, method: str, request: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Unknown service, unknown method, an oversized request, then a normal
    call on the same connection."""
    pkg = service.split(".")[0]
    return [
        {"id": "nosvc", "socket": sock, "service": f"{pkg}.Nope", "method": method},
        {"id": "nomethod", "socket": sock, "service": service, "method": "Nope"},
        {"id": "oversize", "socket": sock, "service": service, "method": method, "pad": PAD},
        {"id": "after", "socket": sock, "service": service, "method": method, "request": request or {}},
    ]


def _assert_error_paths(res: dict[str, list[dict[str, Any]]], service: str) -> None:
    pkg = service.split(".")[0]
    assert _status(res["nosvc"]) == (3, f"{pkg}.Nope service does not exist")
    assert _status(res["nomethod"]) == (12, "Nope method")
    code, msg = _status(res["oversize"])
    assert code == 3
    n = int(msg.split()[2])
    assert PAD < n < PAD + 200  # the padded request in its ttRPC envelope
    assert msg == f"message length {n} exceed maximum message size of {MAX}"
    assert res["after"][0]["code"] == 0


def test_attestation_agent_every_method_and_error_path(go_client: list[str], stack: Any) -> None:
    s, _ = stack
    sock = str(s.aa_sock)
    rd = _b64(b"\x07" * 32)

    def c(id_: str, method: str, request: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return {"id": id_, "socket": sock, "service": AA, "method": method, "request": request or {}, **kw}

    res = _run(
        go_client,
        [
            c("tee", "GetTeeType"),
            c("evidence", "GetEvidence", {"RuntimeData": rd}),
            c("additional", "GetAdditionalEvidence", {"RuntimeData": rd}),
            c("tees", "GetAdditionalTees"),
            c("token", "GetToken", {"TokenType": "kbs"}),
            c("badtoken", "GetToken", {"TokenType": "nope"}),
            c("extend", "ExtendRuntimeMeasurement", {"Domain": "d", "Operation": "o", "Content": "c"}),
            c("bind", "BindInitData", {"Digest": _b64(b"\x01" * 32)}),
            c("parallel", "GetEvidence", {"RuntimeData": rd}, parallel=32),
            *_error_paths(sock, AA, "GetTeeType"),
        ],
    )
    assert _ok(res["tee"]) == {"tee": "sample"}
    evidence = json.loads(base64.b64decode(_ok(res["evidence"])["Evidence"]))
    assert base64.b64decode(evidence["report_data"])[:32] == b"\x07" * 32
    _ok(res["additional"])
    _ok(res["tees"])
    token = json.loads(base64.b64decode(_ok(res["token"])["Token"]))
    assert token["token"].count(".") == 2
    code, msg = _status(res["badtoken"])
    assert code == 13 and msg.startswith("[ERROR:attestation-agent]")
    assert res["extend"][0]["code"] in (0, 13)  # sample TEE: no runtime measurement register
    assert _status(res["bind"]) == (5, f"/{AA}/BindInitData is not supported")
    assert len(res["parallel"]) == 32
    assert all(r["code"] == 0 and r["response"]["Evidence"] for r in res["parallel"])
    _assert_error_paths(res, AA)


def test_confidential_data_hub_every_method_and_error_path(go_client: list[str], stack: Any) -> None:
    s, registry = stack
    sock = str(s.cdh_sock)
    good = seal(vault(), SIGNER, "kbs:///default/cdh/sealkey")
    iv = os.urandom(12)
    opts = b'{"cipher":"AES_256_CTR_HMAC_SHA256","key":"c2VjcmV0"}'
    packet = {
        "kid": "kbs:///default/image-kek/k1",
        "wrapped_data": _b64(AESGCM(KEK).encrypt(iv, opts, None)),
        "iv": _b64(iv),
        "wrap_type": "A256GCM",
    }
    unwrap = {
        "op": "keyunwrap",
        "keywrapparams": {},
        "keyunwrapparams": {"dc": None, "annotation": _b64(json.dumps(packet).encode())},
    }
    image = f"127.0.0.1:{registry.port}/stalled/image:1"
    bundle = str(s.tmp / "bundle")

    def c(id_: str, service: str, method: str, request: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return {"id": id_, "socket": sock, "service": service, "method": method, "request": request, **kw}

    get = {"ResourcePath": "kbs:///default/cdh/secret"}
    res = _run(
        go_client,
        [
            c("get", "api.GetResourceService", "GetResource", get),
            c(
                "missing",
                "api.GetResourceService",
                "GetResource",
                {"ResourcePath": "kbs:///default/cdh/nope"},
            ),
            c("unseal", "api.SealedSecretService", "UnsealSecret", {"secret": _b64(good)}),
            c("unseal-bad", "api.SealedSecretService", "UnsealSecret", {"secret": _b64(b"sealed.x.y.z")}),
            c(
                "unwrap",
                "keyprovider.KeyProviderService",
                "UnWrapKey",
                {"KeyProviderKeyWrapProtocolInput": _b64(json.dumps(unwrap).encode())},
            ),
            c("wrap", "keyprovider.KeyProviderService", "WrapKey", {}),
            c(
                "mount-bad",
                "api.SecureMountService",
                "SecureMount",
                {"volume_type": "nope", "mount_point": str(s.tmp / "never")},
            ),
            # the client's deadline travels as timeout_nano: the pull from a
            # registry that never answers ends at it, and the connection stays usable
            c(
                "pull-deadline",
                "api.ImagePullService",
                "PullImage",
                {"image_url": image, "bundle_path": bundle},
                timeout_ms=1000,
            ),
            c("after-deadline", "api.GetResourceService", "GetResource", get),
            # the server's own deadline, with no deadline on the client side
            c(
                "pull-server-deadline",
                "api.ImagePullService",
                "PullImage",
                {"image_url": image, "bundle_path": bundle},
                raw_timeout_nano=1_000_000_000,
            ),
            c("parallel", "api.GetResourceService", "GetResource", get, parallel=32),
            *_error_paths(sock, "api.GetResourceService", "GetResource", get),
        ],
    )
    assert base64.b64decode(_ok(res["get"])["Resource"]) == SECRET
    code, msg = _status(res["missing"])
    assert code == 13 and msg.startswith("[CDH] [ERROR]: Get Resource failed")
    assert base64.b64decode(_ok(res["unseal"])["plaintext"]) == SECRET
    code, msg = _status(res["unseal-bad"])
    assert code == 13 and msg.startswith("[CDH] [ERROR]:")
    body = json.loads(base64.b64decode(_ok(res["unwrap"])["KeyProviderKeyWrapProtocolOutput"]))
    assert bytes(body["keyunwrapresults"]["optsdata"]) == opts
    assert _status(res["wrap"]) == (5, "/keyprovider.KeyProviderService/WrapKey is not supported")
    code, msg = _status(res["mount-bad"])
    assert code == 13 and msg.startswith("[CDH] [ERROR]:")
    (pull,) = res["pull-deadline"]
    assert pull["code"] == 4 or "deadline exceeded" in pull.get("local_error", ""), pull
    assert base64.b64decode(_ok(res["after-deadline"])["Resource"]) == SECRET
    assert res["pull-server-deadline"][0]["code"] == 4, res["pull-server-deadline"]
    assert len(res["parallel"]) == 32
    assert all(
        r["code"] == 0 and base64.b64decode(r["response"]["Resource"]) == SECRET for r in res["parallel"]
    )
    _assert_error_paths(res, "api.GetResourceService")
