"""`make vm-test`: boot a coco-dev guest under QEMU (TCG) and pull onto LUKS2 inside it.

The host side of issue 12:

1. builds (or reuses) the guest with ``vm/build_guest.py`` (cached under
   ``/var/cache/coco-py-vm`` by content hash);
2. starts a real ``docker-registry`` (htpasswd auth, plain HTTP), a signature
   lookaside (HTTP) and the reference KBS on 127.0.0.1; makes the test images
   with real tools: ``umoci`` builds, ``skopeo --encryption-key jwe:`` encrypts
   (the layer keys are then re-wrapped into ``provider.attestation-agent``
   packets naming a KBS key, the coco-keyprovider step), ``skopeo --sign-by``
   signs with gnupg; and seeds the KBS with the ``kbs-client`` CLI: registry
   credentials, the containers-policy.json and its GPG key, the registries.d
   lookaside config, the key-encryption keys, a probe resource, and a resource
   policy that releases everything except paths naming ``denied``;
3. boots the guest (``-accel tcg``, user-mode networking: the guest reaches
   the host's loopback services at QEMU's host alias 10.0.2.2, a blank
   virtio disk with serial ``trusted_store`` that the guest init links to
   ``/dev/trusted_store``) and reads ``coco-guest: RESULT`` lines from the
   serial console with a bounded timeout (the scenario config goes in through
   QEMU's fw_cfg, ``opt/org.coco-py/cfg``);
   The guest also gets a ``swtpm`` vTPM (``tpm-tis``), provisioned on the host
   with tpm2-tools before boot: an RSA AK the KBS trusts
   (``verifier_config.tpm.trusted_ak_keys``) and an ECC AK it does not;
4. checks the results: attestation (sample for the coco-dev AA, ``tpm`` for an
   AA that finds the vTPM: its token's claims name the provisioned AK, quote all
   24 PCRs, agree with the guest kernel's PCR values, the firmware event log
   replays; the untrusted AK gets no token), the dm-crypt + dm-integrity mapping under
   the image work dir, the pulled file (its sha256 against what was pushed),
   the verified signature, the pulled container run by runc in the guest
   (its exit status and stdout), the second pull from the layer store, and the
   negatives (a signature replayed onto a tampered manifest, a layer key and
   registry credentials the KBS refuses: each pull fails and leaves nothing).

``python -m tests.integration.vm_harness`` ends with ``vm: OK {json}`` (exit
0) or ``vm: FAILED <reason>`` (exit 1); ``vm: SKIPPED <reason>`` (exit 0)
where QEMU cannot run. :func:`run_scenario` is the API ``test_vm.py`` uses.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from guest_pull.host import guest_pull_storages  # noqa: E402
from image_pull.ocicrypt import jwe_decrypt, load_private_key  # noqa: E402
from tests.image_pull.trust import helpers as reg_api  # noqa: E402
from tests.support.kbs import start_kbs  # noqa: E402
from tests.support.registry import RegistryServer, layer_tar, umoci_image  # noqa: E402
from vm import build_guest  # noqa: E402

__all__ = ["HOST_ALIAS", "VmScenarioError", "run_scenario", "skip_reason"]

BIN = REPO / ".venv" / "bin"
HOST_ALIAS = "10.0.2.2"  # QEMU user-mode networking: the host's loopback, seen from the guest
VM_TIMEOUT_S = float(os.environ.get("COCO_VM_TIMEOUT", "600"))
TRUSTED_STORE_MB = 768
DENY_POLICY = b"""package policy

import rego.v1

default allow := false

# Release resources to the (sample) guest, except those whose path names "denied".
allow if {
	data.plugin == "resource"
	not "denied" in data["resource-path"]
}
"""
# The app image's entrypoint: shell builtins only (busybox sh), so its output
# shows the pulled file, the container's own PID namespace and UTS name.
APP_SCRIPT = b"""#!/bin/sh
echo "hello from a confidential container"
while IFS= read -r line; do echo "$line"; done < /etc/coco-vm.txt
read -r host < /proc/sys/kernel/hostname
echo "pid $$ on $host"
"""
TOOLS = (
    "qemu-system-x86_64",
    "busybox",
    "docker-registry",
    "skopeo",
    "umoci",
    "gpg",
    "mkfs.ext4",
    "cpio",
    "debootstrap",
    "swtpm",
    "swtpm_ioctl",
    "tpm2_createprimary",
    "tpm2_evictcontrol",
    "tpm2_readpublic",
)

Say = Callable[[str], None]


class VmScenarioError(Exception):
    """The guest scenario did not produce the expected results."""


def skip_reason() -> str | None:
    """None when this machine can run the VM scenario, else why not."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (make deps-vm installs them)"
    if not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")) and not os.environ.get("COCO_VM_KERNEL"):
        return "no Debian cloud kernel in /boot (make deps-vm installs linux-image-cloud-amd64)"
    if os.geteuid() != 0:
        return "building the guest image needs root (debootstrap, chroot)"
    probe = subprocess.run(
        ["qemu-system-x86_64", "-accel", "help"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0 or "tcg" not in probe.stdout:
        return "qemu-system-x86_64 has no TCG accelerator"
    return None


def _busybox() -> str:
    """A static busybox for the app image (busybox-static, installed by make deps-vm)."""
    path = shutil.which("busybox") or "/bin/busybox"
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise VmScenarioError(f"{path} is not a 64-bit ELF executable")
        phoff, phentsize, phnum = (
            int.from_bytes(head[32:40], "little"),
            int.from_bytes(head[54:56], "little"),
            int.from_bytes(head[56:58], "little"),
        )
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    if any(int.from_bytes(table[i : i + 4], "little") == 3 for i in range(0, len(table), phentsize)):
        raise VmScenarioError(f"{path} is dynamically linked (PT_INTERP): install busybox-static")
    return path


def _kbs_client(
    kbs_url: str, *args: str, admin_token: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "kbs-client"), "--url", kbs_url]
    if admin_token is not None:
        cmd += ["config", "--admin-token-file", str(admin_token)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def _seed(kbs_url: str, token: Path, args: list[str]) -> None:
    cp = _kbs_client(kbs_url, *args, admin_token=token)
    if cp.returncode != 0:
        raise VmScenarioError(f"kbs-client {args[0]} failed: {(cp.stderr or cp.stdout)[-300:]}")


JWE_ANNOTATION = "org.opencontainers.image.enc.keys.jwe"
PROVIDER_ANNOTATION = "org.opencontainers.image.enc.keys.provider.attestation-agent"


@dataclasses.dataclass(frozen=True)
class _Signer:
    env: dict[str, str]
    fingerprint: str
    public_key: bytes  # binary OpenPGP public key (gpg --export)


def _gpg_signer(home: Path) -> _Signer:
    home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str) -> bytes:
        cp = subprocess.run(["gpg", "--batch", *args], env=env, capture_output=True, timeout=120)
        if cp.returncode != 0:
            raise VmScenarioError(f"gpg {args[0]} failed: {cp.stderr.decode(errors='replace')[-300:]}")
        return cp.stdout

    gpg("--passphrase", "", "--quick-gen-key", "coco-vm@example.invalid", "ed25519", "sign", "never")
    out = gpg("--with-colons", "--list-secret-keys").decode()
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    return _Signer(env, fpr, gpg("--export", fpr))


def _skopeo(
    registry: RegistryServer, src: str, dst_repo_tag: str, extra: list[str], env: dict[str, str] | None = None
) -> None:
    user, pw = next(iter(registry.users.items()))
    cp = subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
         "--src-creds", f"{user}:{pw}", "--dest-creds", f"{user}:{pw}", *extra, src,
         f"docker://{registry.host}/{dst_repo_tag}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    if cp.returncode != 0:
        raise VmScenarioError(f"skopeo copy to {dst_repo_tag} failed: {cp.stderr[-400:]}")


def _rewrap_for_kbs(manifest: dict[str, Any], rsa_pem: bytes, kek: bytes, kid: str) -> dict[str, Any]:
    """Turn skopeo's JWE recipients into key-provider packets for ``kid`` (what
    coco-keyprovider emits): the layer options, wrapped with the KEK (AES-256-GCM)."""
    key = load_private_key(rsa_pem)
    out: dict[str, Any] = json.loads(json.dumps(manifest))
    for layer in out["layers"]:
        ann = layer.get("annotations", {})
        opts = jwe_decrypt(base64.b64decode(ann.pop(JWE_ANNOTATION)), [key])
        iv = os.urandom(12)
        packet = {
            "kid": kid,
            "wrapped_data": base64.b64encode(AESGCM(kek).encrypt(iv, opts, None)).decode(),
            "iv": base64.b64encode(iv).decode(),
            "wrap_type": "A256GCM",
        }
        ann[PROVIDER_ANNOTATION] = base64.b64encode(json.dumps(packet).encode()).decode()
    return out


def _manifest_digest(registry: RegistryServer, repo: str, tag: str) -> str:
    return "sha256:" + hashlib.sha256(reg_api.get_manifest(registry, repo, tag)).hexdigest()


def _lookaside_server(root: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


AK_HANDLE = 0x81010002  # the tpm attester's default (AA_TPM_AK_HANDLE)
UNTRUSTED_AK_HANDLE = 0x81010003  # an ECC AK in the same vTPM that the KBS is not told about
AK_ATTRS = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"


@dataclasses.dataclass
class _Vtpm:
    """A swtpm vTPM for the guest: provisioned on the host first (tpm2-tools create
    restricted signing keys, AKs: RSA-2048 persistent at :data:`AK_HANDLE`, the one
    the KBS trusts, and ECC P-256 at :data:`UNTRUSTED_AK_HANDLE`), then served to
    QEMU's ``tpm-tis`` device over swtpm's control socket."""

    dir: Path
    ak_pem: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ctrl(self) -> Path:
        return self.dir / "qemu.ctrl"

    def qemu_args(self) -> list[str]:
        return [
            "-chardev", f"socket,id=chrtpm,path={self.ctrl}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip

    def ak_spki_b64(self) -> str:
        key = serialization.load_pem_public_key(self.ak_pem.read_bytes())
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(500):
        if path.exists():
            return
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise VmScenarioError(f"{what} exited with {proc.returncode}: {err[-300:]}")
        time.sleep(0.02)
    raise VmScenarioError(f"{what} did not create {path}")


def _start_vtpm(say: Say) -> _Vtpm:
    # A short directory: Unix socket paths are limited to 107 bytes.
    vt = _Vtpm(Path(tempfile.mkdtemp(prefix="coco-vtpm-")), Path())
    vt.ak_pem = vt.dir / "ak.pem"
    try:
        sock = vt.dir / "prov.sock"
        prov = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={vt.dir}",
             "--server", f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _wait_for(Path(f"{sock}.ctrl"), prov, "swtpm (provisioning)")
            _wait_for(sock, prov, "swtpm (provisioning)")
            env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:path={sock}"}
            for args in (
                ["tpm2_createprimary", "-C", "o", "-G", "rsa2048:rsassa-sha256:null", "-a", AK_ATTRS,
                 "-c", "ak.ctx"],
                ["tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", f"{AK_HANDLE:#x}"],
                ["tpm2_flushcontext", "-t"],
                ["tpm2_createprimary", "-C", "o", "-G", "ecc256:ecdsa-sha256:null", "-a", AK_ATTRS,
                 "-c", "ak2.ctx"],
                ["tpm2_evictcontrol", "-C", "o", "-c", "ak2.ctx", f"{UNTRUSTED_AK_HANDLE:#x}"],
                ["tpm2_flushcontext", "-t"],
                ["tpm2_readpublic", "-c", f"{AK_HANDLE:#x}", "-f", "pem", "-o", str(vt.ak_pem)],
            ):  # fmt: skip
                cp = subprocess.run(args, env=env, cwd=vt.dir, capture_output=True, text=True, timeout=60)
                if cp.returncode != 0:
                    raise VmScenarioError(f"{args[0]} failed: {cp.stderr[-300:]}")
            # an orderly TPM shutdown: the persistent AK is in the state file the guest's TPM loads
            subprocess.run(["swtpm_ioctl", "--unix", f"{sock}.ctrl", "-s"], capture_output=True, timeout=30)
            prov.wait(30)
        finally:
            if prov.poll() is None:
                prov.kill()
                prov.wait()
        vt.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={vt.dir}",
             "--ctrl", f"type=unixio,path={vt.ctrl}", "--terminate",
             "--log", f"file={vt.dir / 'swtpm.log'},level=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _wait_for(vt.ctrl, vt.proc, "swtpm")
    except BaseException:
        vt.stop()
        raise
    say(
        f"vm: swtpm vTPM in {vt.dir}: AKs persistent at {AK_HANDLE:#x} (RSA-2048) and {UNTRUSTED_AK_HANDLE:#x} (ECC P-256)"
    )
    return vt


@dataclasses.dataclass(frozen=True)
class _TrustedImages:
    signer: _Signer
    policy: dict[str, Any]
    kek: bytes
    app_digest: str
    tampered_digest: str
    encrypted_layers: int  # layers of the signed app image encrypted to a KBS key


def _trusted_images(
    workdir: Path,
    registry: RegistryServer,
    app_layout: str,
    broken_layout: str,
    guest_registry: str,
    say: Say,
) -> _TrustedImages:
    """Encrypt the app image with skopeo (JWE), re-wrap its layer keys for the KBS
    (key-provider annotations), sign it with skopeo + gnupg into a lookaside, and
    derive the negative cases: a signature replayed onto a tampered manifest, and
    an image whose key the KBS will refuse."""
    signer = _gpg_signer(workdir / "gnupg")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    rsa_pub = workdir / "jwe-pub.pem"
    rsa_pub.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    kek = os.urandom(32)
    sigstore = workdir / "sigstore"
    regd = workdir / "registries.d"
    regd.mkdir()
    (regd / "default.yaml").write_text(f"default-docker:\n  lookaside-staging: file://{sigstore}\n")

    say("vm: skopeo: encrypting the app image (JWE), re-wrapping its layer keys for the KBS, signing (gnupg)")
    _skopeo(registry, f"oci:{app_layout}", "coco/app-jwe:v1", ["--encryption-key", f"jwe:{rsa_pub}"])
    jwe_manifest = json.loads(reg_api.get_manifest(registry, "coco/app-jwe", "v1"))
    for tag, kid in (("kbs", "kbs:///default/image-kek/app"), ("denied", "kbs:///default/image-kek/denied")):
        reg_api.push_manifest(registry, "coco/app-jwe", tag, _rewrap_for_kbs(jwe_manifest, rsa_pem, kek, kid))

    def sign_copy(src_tag: str, dst: str) -> None:
        _skopeo(
            registry, f"docker://{registry.host}/coco/app-jwe:{src_tag}", dst,
            ["--registries.d", str(regd), "--sign-by", signer.fingerprint,
             "--sign-identity", f"{guest_registry}/{dst}"],
            env=signer.env,
        )  # fmt: skip

    sign_copy("kbs", "coco/app:v1")
    # A signed image whose bundle runc refuses (its entrypoint does not exist): a failed pull.
    _skopeo(
        registry, f"oci:{broken_layout}", "coco/broken:v1",
        ["--registries.d", str(regd), "--sign-by", signer.fingerprint,
         "--sign-identity", f"{guest_registry}/coco/broken:v1"],
        env=signer.env,
    )  # fmt: skip
    sign_copy("denied", "coco/app-denied:v1")
    sign_copy("kbs", "coco/tampered:orig")  # a valid signature naming coco/tampered:v1 ...
    orig = _manifest_digest(registry, "coco/tampered", "orig")
    # ... replayed onto a manifest whose first layer was swapped for altered bytes
    man = json.loads(reg_api.get_manifest(registry, "coco/tampered", "orig"))
    blob = bytearray(reg_api.get_blob(registry, "coco/tampered", man["layers"][0]["digest"]))
    blob[len(blob) // 2] ^= 0x01
    pushed = reg_api.push_blob(registry, "coco/tampered", bytes(blob))
    man["layers"][0]["digest"], man["layers"][0]["size"] = pushed["digest"], pushed["size"]
    tampered = reg_api.push_manifest(registry, "coco/tampered", "v1", man)
    src_dir = sigstore / f"coco/tampered@sha256={orig.split(':')[1]}"
    shutil.copytree(src_dir, sigstore / f"coco/tampered@sha256={tampered.split(':')[1]}")

    policy = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                f"{guest_registry}/coco": [
                    {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "kbs:///default/gpg-key/signer"}
                ]
            }
        },
    }
    app = json.loads(reg_api.get_manifest(registry, "coco/app", "v1"))
    encrypted = sum(
        1
        for d in app["layers"]
        if d["mediaType"].endswith("+encrypted") and PROVIDER_ANNOTATION in d.get("annotations", {})
    )
    return _TrustedImages(
        signer, policy, kek, _manifest_digest(registry, "coco/app", "v1"), tampered, encrypted
    )


@dataclasses.dataclass
class _Console:
    lines: list[str] = dataclasses.field(default_factory=list)
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


def _boot(cmd: list[str], console_log: Path, say: Say, timeout: float) -> tuple[_Console, int, float]:
    """Run QEMU, stream the serial console, stop at poweroff or the timeout."""
    con = _Console()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    stdout = proc.stdout

    def reader() -> None:
        with console_log.open("w") as logf:
            for raw in iter(stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
                logf.write(line + "\n")
                logf.flush()
                con.lines.append(line)
                idx = line.find("coco-guest: ")
                if idx < 0:
                    continue
                msg = line[idx + len("coco-guest: ") :]
                if msg.startswith("RESULT "):
                    try:
                        con.results.append(json.loads(msg[len("RESULT ") :]))
                    except json.JSONDecodeError:
                        say(f"  [{time.monotonic() - t0:6.1f}s] unparsable RESULT line: {msg[:200]}")
                        continue
                say(f"  [{time.monotonic() - t0:6.1f}s] guest: {msg}")
        con.done.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        th.join(5)
        tail = "\n".join(con.lines[-30:])
        raise VmScenarioError(
            f"the guest did not power off within {timeout:.0f}s; console tail:\n{tail}"
        ) from None
    finally:  # interrupted (Ctrl-C, pytest-timeout): never leave QEMU behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    th.join(10)
    return con, rc, time.monotonic() - t0


def _one(results: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
    for r in results:
        if r.get("kind") == kind and all(r.get(k) == v for k, v in match.items()):
            return r
    raise VmScenarioError(f"the guest reported no {kind} result {match or ''}")


def run_scenario(workdir: Path, *, say: Say = print, timeout: float = VM_TIMEOUT_S) -> dict[str, Any]:
    """Run the whole scenario; returns the summary (the ``vm: OK`` JSON) or raises VmScenarioError."""
    t_start = time.monotonic()
    say("vm: building or reusing the guest image (vm/build_guest.py)")
    images = build_guest.build()
    say(
        f"  kernel {images.kernel}\n  rootfs {images.rootfs}\n  project disk {images.project} ({images.built_seconds}s)"
    )
    registry = RegistryServer(workdir / "registry")  # htpasswd auth, plain HTTP
    try:
        guest_registry = f"{HOST_ALIAS}:{registry.port}"
        nonce = os.urandom(8).hex()
        file_body = f"pulled inside the coco-dev guest onto LUKS2 (run {nonce})\n".encode()
        say(
            f"vm: docker-registry on 127.0.0.1:{registry.port} (guest: {guest_registry}); pushing test images"
        )
        app_layers = [
            layer_tar([
                ("bin", "dir", None, 0o755),
                ("bin/busybox", "file", Path(_busybox()).read_bytes(), 0o755),
                ("bin/sh", "symlink", "busybox", 0o777),
                ("bin/app", "file", APP_SCRIPT, 0o755),
                ("etc", "dir", None, 0o755),
                ("etc/motd", "file", b"removed by the next layer\n", 0o644),
                ("work", "dir", None, 0o755),
            ]),
            layer_tar([
                ("etc", "dir", None, 0o755),
                ("etc/.wh.motd", "file", b"", 0o644),
                ("etc/coco-vm.txt", "file", file_body, 0o644),
            ]),
        ]  # fmt: skip
        app_ref = umoci_image(workdir, "app", app_layers, cmd="/bin/app")
        broken_ref = umoci_image(workdir, "broken", app_layers[:1], cmd="/bin/absent")
        trusted = _trusted_images(workdir, registry, app_ref, broken_ref, guest_registry, say)
        lookaside = _lookaside_server(workdir / "sigstore")
        guest_lookaside = f"http://{HOST_ALIAS}:{lookaside.server_address[1]}"
        say(f"vm: signature lookaside on 127.0.0.1:{lookaside.server_address[1]} (guest: {guest_lookaside})")
        vtpm = _start_vtpm(say)
        ak_spki = vtpm.ak_spki_b64()
        try:
            # The KBS trusts the vTPM's AK by configuration (the tpm verifier's trusted_ak_keys).
            tpm_cfg = f'[attestation_service.verifier_config.tpm]\ntrusted_ak_keys = ["{vtpm.ak_pem}"]\n'
            with start_kbs(workdir / "kbs", policy=None, extra_toml=tpm_cfg) as kbs:
                guest_kbs = f"http://{HOST_ALIAS}:{kbs.port}"
                say(f"vm: reference KBS on {kbs.url} (guest: {guest_kbs}); seeding with kbs-client")
                files = {
                    "default/credentials/test": json.dumps(registry.auth_json(key=guest_registry)).encode(),
                    "default/credentials/denied": json.dumps(registry.auth_json(key=guest_registry)).encode(),
                    "default/test/probe": b"released to the guest after sample attestation " + nonce.encode(),
                    "default/security-policy/test": json.dumps(trusted.policy).encode(),
                    "default/gpg-key/signer": trusted.signer.public_key,
                    "default/sigstore-config/test": f"default-docker:\n  lookaside: {guest_lookaside}\n".encode(),
                    "default/image-kek/app": trusted.kek,
                    "default/image-kek/denied": trusted.kek,
                }
                seeds = workdir / "seeds"
                for path, data in files.items():
                    seed = seeds / path
                    seed.parent.mkdir(parents=True, exist_ok=True)
                    seed.write_bytes(data)
                    _seed(
                        kbs.url,
                        kbs.admin_token_file,
                        ["set-resource", "--path", path, "--resource-file", str(seed)],
                    )
                policy = workdir / "resource-policy.rego"
                policy.write_bytes(DENY_POLICY)
                _seed(kbs.url, kbs.admin_token_file, ["set-resource-policy", "--policy-file", str(policy)])
                # The policy as seen by a sample-TEE client on the host, before the guest relies on it.
                if _kbs_client(kbs.url, "get-resource", "--path", "default/test/probe").returncode != 0:
                    raise VmScenarioError("the KBS refuses the probe resource to a sample TEE on the host")
                if _kbs_client(kbs.url, "get-resource", "--path", "default/image-kek/denied").returncode == 0:
                    raise VmScenarioError("the KBS releases default/image-kek/denied despite the policy")

                def image_toml(creds: str) -> str:
                    return (
                        f'authenticated_registry_credentials_uri = "kbs:///default/credentials/{creds}"\n'
                        'image_security_policy_uri = "kbs:///default/security-policy/test"\n'
                        'sigstore_config_uri = "kbs:///default/sigstore-config/test"\n'
                        f'[[image.registry_config.registry]]\nlocation = "{guest_registry}"\ninsecure = true\n'
                    )

                app = f"{guest_registry}/coco/app:v1"
                # The first pull goes the Kata way: the host runtime turns the container into a
                # Storage{driver=image_guest_pull}; the agent glue in the guest hands it to CDH.
                cid = nonce * 4
                # Init-data for the TPM AA (SHA-256: the tpm attester extends it into PCR 8).
                tpm_initdata = (
                    'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n'
                    f'"aa.toml" = """\n[token_configs.kbs]\nurl = "{guest_kbs}"\n"""\n'
                )
                init_digest = hashlib.sha256(tpm_initdata.encode()).digest()
                storage = guest_pull_storages(
                    cid,
                    {
                        "io.kubernetes.cri.container-type": "container",
                        "io.kubernetes.cri.image-name": app,
                        "io.katacontainers.pkg.oci.container_type": "pod_container",
                    },
                    force_guest_pull=True,
                )[0]
                f_ = "etc/coco-vm.txt"
                cfg = {
                    "kbs_url": guest_kbs,
                    "probe_resource": "kbs:///default/test/probe",
                    "image_toml": image_toml("test"),
                    "pulls": [
                        {"label": "first", "image": app, "file": f_, "cid": cid, "storage": storage.to_json(),
                         "run": True},
                        {"label": "again", "image": app, "file": f_},
                        {"label": "tampered", "image": f"{guest_registry}/coco/tampered:v1", "expect": "fail", "file": f_},
                        {"label": "key-denied", "image": f"{guest_registry}/coco/app-denied:v1", "expect": "fail", "file": f_},
                        {"label": "runc-refused", "image": f"{guest_registry}/coco/broken:v1", "expect": "fail", "file": f_,
                         "cid": "refused", "run": True},
                    ],
                    "deny": {"image": app, "file": f_, "image_toml": image_toml("denied")},
                    "tpm": {
                        "ak_handle": f"{AK_HANDLE:#x}",
                        "untrusted_ak_handle": f"{UNTRUSTED_AK_HANDLE:#x}",
                        "initdata_toml": tpm_initdata,
                    },
                }  # fmt: skip
                cfg_file = workdir / "guest-config.json"
                cfg_file.write_text(json.dumps(cfg))
                blank = workdir / "trusted_store.img"
                with blank.open("wb") as f:
                    f.truncate(TRUSTED_STORE_MB << 20)
                cmd = [
                    "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
                    "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
                    "-kernel", str(images.kernel), "-initrd", str(images.initramfs),
                    "-append", "console=ttyS0 quiet panic=-1",
                    "-fw_cfg", f"name=opt/org.coco-py/cfg,file={cfg_file}",
                    "-drive", f"file={images.rootfs},if=none,id=root,format=raw,readonly=on",
                    "-device", "virtio-blk-pci,drive=root",
                    "-drive", f"file={images.project},if=none,id=proj,format=raw,readonly=on",
                    "-device", "virtio-blk-pci,drive=proj,serial=cocoproject",
                    "-drive", f"file={blank},if=none,id=ts,format=raw,cache=unsafe",
                    "-device", "virtio-blk-pci,drive=ts,serial=trusted_store",
                    "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
                    *vtpm.qemu_args(),
                ]  # fmt: skip
                say(f"vm: booting the guest (TCG, 2 vCPUs, 2 GiB; timeout {timeout:.0f}s)")
                con, qemu_rc, vm_seconds = _boot(cmd, workdir / "console.log", say, timeout)
                refused = sorted(
                    set(re.findall(r"/kbs/v0/resource/[\w./-]+", "\n".join(
                        line for line in kbs.log_text().splitlines() if "request refused" in line
                    )))
                )  # fmt: skip
                say(f"vm: the KBS refused: {', '.join(refused) or 'nothing'}")
                ak_rejections = [
                    line[line.index("attestation rejected") :].split('"')[0]
                    for line in kbs.log_text().splitlines()
                    if "attestation rejected" in line and "tpm" in line
                ]
        finally:
            vtpm.stop()
            lookaside.shutdown()
            lookaside.server_close()
        return _summarise(
            con.results,
            qemu_rc,
            vm_seconds,
            file_body,
            t_start,
            trusted,
            refused,
            ak_spki,
            ak_rejections,
            init_digest,
        )
    finally:
        registry.stop()


def _summarise(
    results: list[dict[str, Any]],
    qemu_rc: int,
    vm_seconds: float,
    file_body: bytes,
    t_start: float,
    trusted: _TrustedImages,
    kbs_refused: list[str],
    ak_spki: str,
    ak_rejections: list[str],
    init_digest: bytes,
) -> dict[str, Any]:
    if qemu_rc != 0:
        raise VmScenarioError(f"qemu exited with {qemu_rc}")
    done = _one(results, "done")
    boot = _one(results, "boot")
    att = _one(results, "attest")
    sm = _one(results, "secure_mount")
    first = _one(results, "pull", label="first")
    again = _one(results, "pull", label="again")
    bad = _one(results, "pull", label="tampered")
    key_denied = _one(results, "pull", label="key-denied")
    refused = _one(results, "pull", label="runc-refused")
    deny = _one(results, "deny")
    tpm = _one(results, "tpm_attest")
    problems = []
    if not tpm.get("ok"):
        problems.append(f"TPM attestation in the guest failed: {tpm.get('error')}")
    else:
        tclaims = tpm["claims"]
        if tpm["tee"] != "tpm" or tpm["attester"] != "tpm":
            problems.append(
                f"the guest's second AA attested as {tpm['attester']}, the token says {tpm['tee']}"
            )
        if tclaims.get("ak_public") != ak_spki or tclaims.get("ak_trust") != "configured":
            problems.append("the token's TPM claims name another AK than the one provisioned in the vTPM")
        if sorted(tpm["pcrs_quoted"]) != list(range(24)):
            problems.append(f"the token quotes PCRs {tpm['pcrs_quoted']}, not 0-23")
        mismatched = [i for i, v in tpm["guest_pcrs"].items() if tclaims.get(f"pcr{int(i):02d}") != v]
        if not tpm["guest_pcrs"] or mismatched:
            problems.append(f"the token's PCRs differ from the guest kernel's view of its TPM: {mismatched}")
        if 0 not in tpm["pcrs_measured"]:
            problems.append("PCR 0 is unmeasured: the firmware measured nothing into the vTPM")
        pcr8 = hashlib.sha256(bytes(32) + init_digest).hexdigest()  # one extend from reset
        if tpm["init_data"] != init_digest.hex() or tpm["init_data_pcr"] != pcr8 or tclaims["pcr08"] != pcr8:
            problems.append(
                f"init-data not bound: KBS digest {tpm['init_data']}, PCR 8 {tclaims.get('pcr08')}, want {pcr8}"
            )
        if tpm["event_log_events"] < 1:
            problems.append("the KBS replayed no event log against the quoted PCRs")
        if "untrusted_ak_error" not in tpm:
            problems.append("no attestation with an untrusted AK was tried")
        if not any("neither configured nor certified" in line for line in ak_rejections):
            problems.append(f"the KBS log shows no untrusted-AK rejection: {ak_rejections}")
    if att.get("tee") != "sample":
        problems.append(f"the coco-dev AA attested as {att.get('tee')}, not sample")
    if done.get("rc") != 0:
        problems.append(f"the guest scenario failed (rc {done.get('rc')})")
    if not sm["work_dir_on_mapper"]:
        problems.append("the work dir's file system is not on the dm-crypt device")
    if "aes" not in sm["cipher"].lower():
        problems.append(f"work dir not on AES dm-crypt: {sm['cipher']}")
    if "hmac" not in sm["integrity"].lower():
        problems.append(f"no dm-integrity on the work dir: {sm['integrity']}")
    for p in (first, again):
        if not p["ok"]:
            problems.append(f"pull {p['label']} failed: {p.get('error')}")
        elif p["file_sha256"] != hashlib.sha256(file_body).hexdigest():
            problems.append(f"pull {p['label']}: {p['file']} differs from what was pushed")
        elif not (p["upper_on_work_dir"] and p["store_on_work_dir"]):
            problems.append(f"pull {p['label']}: the bundle's layers are not on the work dir")
    if first.get("ok"):
        want = f"hello from a confidential container\n{file_body.decode()}pid 1 on coco\n"
        if first.get("container_exit") != 0:
            problems.append(f"the pulled container exited {first.get('container_exit')}: "
                            f"{first.get('container_stderr', '')[-200:]}")  # fmt: skip
        elif first.get("container_stdout") != want:
            problems.append(f"the pulled container printed {first.get('container_stdout', '')[:200]!r}")
    for p in (first, again):
        if p.get("ok") and p["manifest_digest"] != trusted.app_digest:
            problems.append(
                f"pull {p['label']} resolved {p['manifest_digest']}, not the signed {trusted.app_digest}"
            )
        if p.get("ok") and trusted.signer.fingerprint[-16:].lower() not in p.get("signature", "").lower():
            problems.append(
                f"pull {p['label']}: CDH did not report a signature by {trusted.signer.fingerprint}"
            )
    for p in (bad, key_denied, refused):
        if p["ok"] or p["leftover"] or p["mounted"]:
            problems.append(f"{p['label']}: ok={p['ok']} leftover={p['leftover']} mounted={p['mounted']}")
    # ... and each for the intended reason
    for p, why in (
        (bad, "another manifest digest"), (key_denied, "unwrap"), (deny, "PolicyDeny"), (refused, "runc create"),
    ):  # fmt: skip
        if not p["ok"] and why not in p.get("error", ""):
            problems.append(f"{p['label']} failed for another reason than {why!r}: {p['error'][:200]}")
    if deny["ok"] or deny["leftover"] or deny["mounted"] or deny["new_mounts"]:
        problems.append(
            f"KBS denial: ok={deny['ok']} leftover={deny['leftover']} new_mounts={deny['new_mounts']}"
        )
    if first.get("ok") and again.get("ok") and not (first["new_layers"] >= 1 and again["new_layers"] == 0):
        problems.append(
            f"layer store: first pull committed {first['new_layers']} layers, the second {again['new_layers']}"
        )
    for path in ("default/image-kek/denied", "default/credentials/denied"):
        if f"/kbs/v0/resource/{path}" not in kbs_refused:
            problems.append(f"the KBS log shows no refusal of {path}")
    if trusted.encrypted_layers < 1:
        problems.append("the app image has no layer encrypted to a KBS key")
    if problems:
        raise VmScenarioError("; ".join(problems))
    return {
        "mapper": sm["mapper"],
        "dm_device": sm["dm_device"],
        "backing": sm["backing"],
        "cipher": sm["cipher"],
        "keysize": sm["keysize"],
        "integrity": sm["integrity"],
        "dm_targets": sm["dm_targets"],
        "mount_point": sm["mount_point"],
        "manifest_digest": first["manifest_digest"],
        "file": first["file"],
        "file_text": first["file_text"],
        "file_sha256": first["file_sha256"],
        "container_exit": first["container_exit"],
        "container_stdout": first["container_stdout"],
        "container_seconds": first["container_seconds"],
        "boot_seconds": boot["boot_seconds"],
        "components_up_seconds": boot["components_up_seconds"],
        "attestation": att["submods"],
        "attestation_tee": att["tee"],
        "secure_mount_seconds": sm["seconds"],
        "first_pull_seconds": first["seconds"],
        "first_pull_via": first["via"],
        "second_pull_seconds": again["seconds"],
        "store_layers_after_first": first["store_layers"],
        "new_layers_second_pull": again["new_layers"],
        "signature": first["signature"],
        "signer_fingerprint": trusted.signer.fingerprint,
        "encrypted_layers": trusted.encrypted_layers,
        "tampered_error": bad["error"],
        "key_denied_error": key_denied["error"],
        "runc_refused_error": refused["error"],
        "kbs_refused": kbs_refused,
        "kbs_denied_error": deny["error"],
        "tpm": {
            "tee": tpm["tee"],
            "device": tpm["device"],
            "ak_trust": tpm["claims"]["ak_trust"],
            "ak_matches_provisioned": tpm["claims"]["ak_public"] == ak_spki,
            "pcrs_quoted": tpm["pcrs_quoted"],
            "pcrs_measured": tpm["pcrs_measured"],
            "pcr00": tpm["claims"]["pcr00"],
            "event_log_events": tpm["event_log_events"],
            "init_data": tpm["init_data"],
            "pcr08": tpm["claims"]["pcr08"],
            "untrusted_ak_error": tpm.get("untrusted_ak_error", ""),
            "kbs_untrusted_ak_log": ak_rejections[-1][:200] if ak_rejections else "",
            "ear_status": tpm["ear_status"],
            "token_seconds": tpm["token_seconds"],
        },
        "vm_seconds": round(vm_seconds, 1),
        "total_seconds": round(time.monotonic() - t_start, 1),
    }


def main() -> int:
    reason = skip_reason()
    if reason:
        print(f"vm: SKIPPED {reason}")
        return 0
    keep = os.environ.get("COCO_VM_KEEP")
    workdir = Path(tempfile.mkdtemp(prefix="coco-vm-"))
    try:
        summary = run_scenario(workdir)
    except VmScenarioError as exc:
        print(f"vm: FAILED {exc}")
        print(f"vm: console log in {workdir / 'console.log'}")
        keep = "1"
        return 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("vm: OK " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
