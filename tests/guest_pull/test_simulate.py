"""coco-guest-pull simulate: host side → agent side → CDH → AA → reference KBS,
all real processes on loopback, pulling from a real registry (docker-registry
with htpasswd; credentials served by the KBS to CDH)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.registry import OciLayout, RegistryServer, layer_tar, registry  # noqa: F401

pytestmark = pytest.mark.slow
GP = str(Path(sys.executable).parent / "coco-guest-pull")
INITDATA = b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"aa.toml" = "[token_configs.kbs]"\n'


def _b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _sealed(tmp: Path) -> tuple[str, list[str]]:
    """A vault sealed secret (ES256, key served by the KBS) and the --resource args it needs."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    sk = ec.generate_private_key(ec.SECP256R1())
    n = sk.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64u(n.x.to_bytes(32, "big")),
        "y": _b64u(n.y.to_bytes(32, "big")),
    }
    (tmp / "jwk").write_text(json.dumps(jwk))
    (tmp / "secret").write_bytes(b"s3cret-value")
    vault = {"version": "0.1.0", "type": "vault", "name": "kbs:///default/sim/secret", "provider": "kbs",
             "provider_settings": {}, "annotations": {}}  # fmt: skip
    h = _b64u(json.dumps({"alg": "ES256", "kid": "kbs:///default/sim/sealkey"}).encode())
    p = _b64u(json.dumps(vault).encode())
    r, s_ = decode_dss_signature(sk.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256())))
    sig = _b64u(r.to_bytes(32, "big") + s_.to_bytes(32, "big"))
    args = [
        "--resource",
        f"default/sim/sealkey={tmp / 'jwk'}",
        "--resource",
        f"default/sim/secret={tmp / 'secret'}",
    ]
    return f"sealed.{h}.{p}.{sig}", args


def _pod(image: str, **extra_ann: str) -> dict[str, object]:
    ann = {
        "io.katacontainers.config.hypervisor.cc_init_data": base64.b64encode(gzip.compress(INITDATA)).decode()
    }
    ann.update(extra_ann)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sim", "annotations": ann},
        "spec": {
            "runtimeClassName": "kata-qemu-coco-dev",
            "containers": [{"name": "app", "image": image, "env": [{"name": "PLAIN", "value": "x"}]}],
        },
    }


def test_simulate_coco_dev(registry: RegistryServer, tmp_path: Path) -> None:  # noqa: F811
    lay = OciLayout(tmp_path / "layout")
    tar = layer_tar([("etc", "dir", None, 0o755), ("etc/motd", "file", b"guest pulled\n", 0o644)])
    desc = lay.image([(tar, "gzip")], tag="v1")
    registry.push(f"{lay.path}:v1", "sim/hello:v1")
    image = f"{registry.host}/sim/hello:v1"
    pod = _pod(image)
    sealed, resource_args = _sealed(tmp_path)
    pod["spec"]["containers"][0]["env"].append({"name": "SECRET", "value": sealed})  # type: ignore[index]
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    (tmp_path / "auth.json").write_text(json.dumps(registry.auth_json()))
    work = tmp_path / "work"
    cp = subprocess.run(
        [GP, "simulate", "--runtime-class", "kata-qemu-coco-dev", "--insecure-registry", registry.host,
         "--auth-json", str(tmp_path / "auth.json"), "--workdir", str(work), *resource_args,
         str(tmp_path / "pod.yaml")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = "".join(
        (work / n).read_text(errors="replace")[-1500:] for n in ("aa.log", "cdh.log") if (work / n).exists()
    )
    assert cp.returncode == 0, cp.stderr + logs
    out = json.loads(cp.stdout)
    assert out["primary_attester"] == "sample"
    assert out["initdata"]["digest"] == hashlib.sha384(INITDATA).hexdigest()
    pause, app = out["containers"]
    assert pause["storage"]["source"] == "pause" and pause["rootfs_entries"] == ["pause"]
    assert app["storage"]["source"] == image
    assert app["storage"]["driver"] == "image_guest_pull" and app["storage"]["fstype"] == "overlay"
    assert app["manifest_digest"] == desc["digest"]
    assert "etc" in app["rootfs_entries"]
    assert app["env_unsealed"] == ["SECRET"]  # unsealed through CDH with the KBS-held key
    assert "s3cret-value" not in cp.stdout + cp.stderr
    assert out["eventlog_bytes"] > 0  # CDH measured the pull through AA
    # everything was stopped and unmounted
    assert not Path(app["rootfs"]).is_mount()


def test_simulate_refuses_a_tee_class_without_hardware(tmp_path: Path) -> None:
    pod = _pod("example.com/x:1")
    pod["spec"]["runtimeClassName"] = "kata-qemu-snp"  # type: ignore[index]
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    cp = subprocess.run([GP, "simulate", "--runtime-class", "kata-qemu-snp", str(tmp_path / "pod.yaml")],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cp.returncode == 2 and "cannot be simulated here" in cp.stderr
    cp = subprocess.run([GP, "simulate", "--runtime-class", "kata-qemu-coco-dev", str(tmp_path / "pod.yaml")],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cp.returncode == 2 and "runtimeClassName" in cp.stderr
