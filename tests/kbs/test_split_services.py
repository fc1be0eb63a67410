"""trustee's split deployment across processes: a KBS with ``coco_as_grpc`` talks to a separate
``grpc-as`` (our attestation service on trustee's attestation-service gRPC API), which asks a
separate ``rvps`` (trustee's RVPS gRPC API) for reference values. Each pairing is exercised:
KBS -> AS (evaluate, set policy), KBS -> AS -> RVPS (register, query), KBS (built-in AS) -> RVPS."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from kbs.app import build_state
from kbs.config import parse_config
from kbs.grpc_api import RvpsClient
from kbs.server import make_app
from kbs.storage import NS_REPOSITORY
from kbs_client.sample import SAMPLE_SVN
from kbs_client.tee_key import TeeKeyPair
from kbs_protocol.policies import builtin_policy
from tests.support.kbs import free_port, self_signed

from .conftest import admin_material, config_doc
from .test_api import attest_body, do_attest, handshake

#: the reference values trustee's default CPU policy needs for sample hardware = 2
SAMPLE_HW_RVS = {"svn": [SAMPLE_SVN], "major_version": 1, "minimum_minor_version": 0}


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-800:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not listen in time")


@contextmanager
def _serve(tmp: Path, name: str, argv: list[str], port: int) -> Iterator[Path]:
    log = tmp / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


@pytest.fixture
def split(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``rvps`` and ``grpc-as`` as separate processes, the AS using the RVPS over gRPC."""
    rvps_port, as_port = free_port(), free_port()
    (tmp_path / "rvps.json").write_text(json.dumps({
        "storage": {"storage_type": "LocalJson", "backends": {"local_json": {"file_dir_path": str(tmp_path / "rvps")}}},
    }))  # fmt: skip
    kp, cp = self_signed(tmp_path, "as", common_name="grpc-as signer", ca=True)
    (tmp_path / "as.json").write_text(json.dumps({
        "work_dir": "/var/lib/attestation-service/",
        "rvps_config": {"type": "GrpcRemote", "address": f"http://127.0.0.1:{rvps_port}"},
        "attestation_token_broker": {"duration_min": 5, "signer": {"key_path": str(kp), "cert_path": str(cp)}},
        "storage_backend": {"storage_type": "Memory"},
        "security": {"dev_verifiers": ["sample"]},  # the test attests with the unsigned sample TEE
    }))  # fmt: skip
    with (
        _serve(tmp_path, "rvps", ["kbs.rvps_server", "-c", str(tmp_path / "rvps.json"), "-a", f"127.0.0.1:{rvps_port}"], rvps_port),
        _serve(tmp_path, "grpc-as", ["kbs.grpc_as", "--config-file", str(tmp_path / "as.json"), "--socket", f"127.0.0.1:{as_port}"], as_port) as as_log,
    ):  # fmt: skip
        yield {"rvps_port": rvps_port, "as_port": as_port, "as_cert": cp, "as_log": as_log, "tmp": tmp_path}


async def test_kbs_separate_as_separate_rvps_complete_rcar(split: dict[str, Any]) -> None:
    tmp = split["tmp"]
    _, pub = admin_material(tmp)
    doc = config_doc(tmp, pub)
    doc["attestation_service"] = {"type": "coco_as_grpc", "as_addr": f"http://127.0.0.1:{split['as_port']}"}
    # the separate AS signs with its own key: the KBS trusts it by certificate, as trustee's would
    doc["attestation_token"] = {"trusted_certs_paths": [str(split["as_cert"])]}
    state = await build_state(parse_config(doc, str(tmp)))
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    try:
        secret = os.urandom(16)
        await state.store.set(NS_REPOSITORY, "default/key/split", secret)
        await state.resource_policy.set(builtin_policy("allow_all"))
        key = TeeKeyPair.generate()
        async with httpx.AsyncClient(timeout=60) as http:
            sid, nonce = await handshake(http, url)
            r = await do_attest(http, url, sid, attest_body(nonce, key))
            assert r.status_code == 200, r.text
            before = _claims(r.json()["token"])["submods"]["cpu0"]
            assert before["ear.trustworthiness-vector"]["hardware"] == 97  # no svn reference value yet
            assert (
                "x5c" in json.loads(base64.urlsafe_b64decode(r.json()["token"].split(".")[0] + "=="))["jwk"]
            )
            r = await http.get(
                f"{url}/kbs/v0/resource/default/key/split", headers={"Cookie": f"kbs-session-id={sid}"}
            )
            assert r.status_code == 200, r.text
            assert key.decrypt(r.json()) == secret

            # KBS -> AS -> RVPS: register through the KBS admin API, it lands in the separate RVPS
            payload = base64.b64encode(json.dumps(SAMPLE_HW_RVS).encode()).decode()
            rvps_direct = RvpsClient(f"http://127.0.0.1:{split['rvps_port']}")
            try:
                await state.rvps.register(
                    json.dumps({"version": "0.1.0", "type": "sample", "payload": payload}).encode()
                )
                assert await rvps_direct.query("svn") == [SAMPLE_SVN]
                assert await rvps_direct.query("absent") is None
            finally:
                await rvps_direct.close()
            assert json.loads((tmp / "rvps" / "reference_value").read_text())  # trustee's LocalJson file
            # and the AS now uses it: same evidence, the hardware claim is affirmed
            sid, nonce = await handshake(http, url)
            r = await do_attest(http, url, sid, attest_body(nonce, key))
            assert r.status_code == 200, r.text
            assert (
                _claims(r.json()["token"])["submods"]["cpu0"]["ear.trustworthiness-vector"]["hardware"] == 2
            )

            # KBS -> AS: an attestation policy set through the KBS governs the separate AS
            rego = b'package policy\nimport rego.v1\ntrust_claims := {"executables": 2, "hardware": 2, "configuration": 2, "instance-identity": 77}\n'
            await state.service.policies.set("default_cpu", rego)
            sid, nonce = await handshake(http, url)
            r = await do_attest(http, url, sid, attest_body(nonce, key))
            assert (
                _claims(r.json()["token"])["submods"]["cpu0"]["ear.trustworthiness-vector"][
                    "instance-identity"
                ]
                == 77
            )

            # a forged evidence (report data bound to another key) is refused by the separate AS
            sid, nonce = await handshake(http, url)
            r = await do_attest(
                http, url, sid, attest_body(nonce, key, bound_jwk=TeeKeyPair.generate().public_jwk())
            )
            assert r.status_code == 401 and r.json()["type"].endswith("/AttestationError")
    finally:
        await server.close()
        for c in state.closers:
            await c()
    assert "attestation rejected" in split["as_log"].read_text()


async def test_builtin_as_with_separate_rvps(split: dict[str, Any]) -> None:
    tmp = split["tmp"]
    _, pub = admin_material(tmp)
    doc = config_doc(tmp, pub)
    doc["attestation_service"] = {
        "type": "CoCoASBuiltIn",
        "rvps_config": {"type": "GrpcRemote", "address": f"http://127.0.0.1:{split['rvps_port']}"},
    }
    state = await build_state(parse_config(doc, str(tmp)))
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    try:
        payload = base64.b64encode(json.dumps(SAMPLE_HW_RVS).encode()).decode()
        await state.rvps.register(json.dumps({"type": "sample", "payload": payload}).encode())
        assert await state.rvps.get("svn") == [SAMPLE_SVN]
        key = TeeKeyPair.generate()
        async with httpx.AsyncClient(timeout=60) as http:
            sid, nonce = await handshake(http, url)
            r = await do_attest(http, url, sid, attest_body(nonce, key))
            assert r.status_code == 200, r.text
            assert (
                _claims(r.json()["token"])["submods"]["cpu0"]["ear.trustworthiness-vector"]["hardware"] == 2
            )
    finally:
        await server.close()
        for c in state.closers:
            await c()


def test_console_scripts_are_declared() -> None:
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    assert scripts["grpc-as"] == "kbs.grpc_as:main" and scripts["rvps"] == "kbs.rvps_server:main"
