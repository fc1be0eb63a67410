"""`make demo`: the kata-qemu-coco-dev guest-pull story, end to end on loopback.

1. A real docker-registry (htpasswd auth, TLS with a throwaway CA) on
   127.0.0.1, and a small test image built with umoci and pushed with skopeo.
2. The reference KBS (`kbs --config-file`), which by default refuses the
   sample TEE; the operator seeds it with `kbs-client`: an allow-all resource
   policy and the registry credentials at kbs:///default/credentials/test.
3. The Attestation Agent and the Confidential Data Hub as real processes on
   Unix sockets (ttRPC), configured with aa.toml and cdh.toml.
4. `cdh-oneshot pull-image` asks CDH to pull: CDH gets an attestation token
   from AA (sample evidence, RCAR 0.4.0), fetches the credentials from the
   KBS, pulls from the registry, checks digests, unpacks the bundle.
5. Shows the bundle, stops everything, prints `demo: OK ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Appended, not prepended: the test helpers come from the checkout, the product
# from wherever this interpreter has it installed (the wheel, in CI's check).
sys.path.append(str(REPO))

from tests.support.kbs import start_kbs  # noqa: E402
from tests.support.registry import RegistryServer, layer_tar, umoci_image  # noqa: E402

BIN = Path(sys.executable).parent  # the console scripts installed beside this interpreter
T0 = time.monotonic()


def step(msg: str) -> None:
    print(f"demo [{time.monotonic() - T0:5.1f}s] {msg}", flush=True)


def run(*args: str, show: bool = True) -> str:
    if show:
        shown = " ".join(Path(a).name if a.startswith(str(BIN)) else a for a in args)
        print(f"  $ {shown}", flush=True)
    cp = subprocess.run(list(args), capture_output=True, text=True, timeout=300)
    if cp.returncode != 0:
        raise SystemExit(f"demo: FAILED: {args[0]} exited {cp.returncode}: {(cp.stderr or cp.stdout)[-800:]}")
    return cp.stdout


def wait_socket(path: Path, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"demo: FAILED: {name} did not create {path}: {log.read_text(errors='replace')[-800:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="demo.py", description="The kata-qemu-coco-dev guest-pull story, end to end on loopback."
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's directory (KBS config, admin token, aa.toml, cdh.toml, logs) to read afterwards",
    )
    opts = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="coco-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    registry = None
    try:
        step("starting docker-registry (htpasswd auth, TLS) on 127.0.0.1")
        registry = RegistryServer(tmp / "registry", auth="htpasswd", tls=True)
        print(f"  registry at https://{registry.host}")
        step("building a two-layer test image with umoci and pushing it with skopeo")
        app = b"#!/bin/sh\necho hello from a confidential container\n"
        layers = [
            layer_tar(
                [
                    ("bin", "dir", None, 0o755),
                    ("bin/app", "file", app, 0o755),
                    ("etc", "dir", None, 0o755),
                    ("etc/motd", "file", b"pulled inside the guest\n", 0o644),
                ]
            ),
            layer_tar(
                [
                    ("etc", "dir", None, 0o755),
                    ("etc/.wh.motd", "file", b"", 0o644),
                    ("etc/release", "file", b"coco-demo 1\n", 0o644),
                ]
            ),
        ]
        ref = umoci_image(tmp, "demo", layers, cmd="/bin/app", env=("DEMO=1",))
        registry.push(
            ref,
            "demo/app:v1",
            extra=["--dest-cert-dir", str(registry.ca_pem.parent)] if registry.ca_pem else [],
        )
        image = f"{registry.host}/demo/app:v1"

        step("starting the reference KBS (default policy: the sample TEE is refused)")
        with start_kbs(tmp / "kbs", policy=None) as kbs:
            print(f"  $ kbs --config-file {kbs.config_path}   -> {kbs.url}")
            kc = [str(BIN / "kbs-client"), "--url", kbs.url]
            admin = [*kc, "config", "--admin-token-file", str(kbs.admin_token_file)]
            (tmp / "auth.json").write_text(json.dumps(registry.auth_json()))
            step("operator seeds the registry credentials with kbs-client")
            run(
                *admin,
                "set-resource",
                "--path",
                "default/credentials/test",
                "--resource-file",
                str(tmp / "auth.json"),
            )
            refused = subprocess.run(
                [*kc, "get-resource", "--path", "default/credentials/test"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert refused.returncode != 0, "the default policy must refuse the sample TEE"
            print(
                f"  a sample-TEE client is refused by the default policy: "
                f"{(refused.stderr or refused.stdout).strip().splitlines()[-1][:100]}"
            )
            step("operator allows it")
            run(*admin, "set-resource-policy", "--allow-all")

            step("starting attestation-agent and confidential-data-hub on Unix sockets (ttRPC)")
            aa_sock, cdh_sock = tmp / "aa.sock", tmp / "cdh.sock"
            (tmp / "aa.toml").write_text(f'[token_configs.kbs]\nurl = "{kbs.url}"\n')
            ca = registry.ca_pem.read_text() if registry.ca_pem else ""
            (tmp / "cdh.toml").write_text(
                f'socket = "unix://{cdh_sock}"\n'
                f'[aa]\naa_socket = "unix://{aa_sock}"\n'
                f'[kbc]\nname = "cc_kbc"\nurl = "{kbs.url}"\n'
                f'[image]\nwork_dir = "{tmp / "image-work"}"\n'
                'authenticated_registry_credentials_uri = "kbs:///default/credentials/test"\n'
                f"extra_root_certificates = [{json.dumps(ca)}]\n"
            )
            env = dict(os.environ, OCICRYPT_KEYPROVIDER_CONFIG=str(tmp / "ocicrypt.json"))
            for name, args, sock in (
                (
                    "attestation-agent",
                    [
                        str(BIN / "attestation-agent"),
                        "--attestation_sock",
                        f"unix://{aa_sock}",
                        "-c",
                        str(tmp / "aa.toml"),
                    ],
                    aa_sock,
                ),
                (
                    "confidential-data-hub",
                    [str(BIN / "confidential-data-hub"), "-c", str(tmp / "cdh.toml")],
                    cdh_sock,
                ),
            ):
                log = tmp / f"{name}.log"
                print(f"  $ {' '.join(Path(a).name if a.startswith(str(BIN)) else a for a in args)}")
                p = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
                procs.append(p)
                wait_socket(sock, p, name, log)

            step(
                "pulling through CDH (PullImage over ttRPC): attest, fetch credentials, pull, verify, unpack"
            )
            bundle = tmp / "bundle"
            t = time.monotonic()
            out = run(str(BIN / "cdh-oneshot"), "--socket", f"unix://{cdh_sock}", "pull-image",
                      "--image-url", image, "--bundle-path", str(bundle))  # fmt: skip
            found = re.search(r"sha256:[0-9a-f]{64}", out)
            digest = found.group(0) if found else ""
            pull_s = time.monotonic() - t
            print(f"  manifest digest: {digest}  ({pull_s:.2f}s)")

            step("the bundle")
            rootfs = bundle / "rootfs"
            for p in sorted(rootfs.rglob("*")):
                kind = "l" if p.is_symlink() else "d" if p.is_dir() else "-"
                print(f"  {kind} {p.relative_to(bundle)}")
            config = json.loads((bundle / "config.json").read_text())
            print(f"  config.json process.args={config['process']['args']} env={config['process']['env']}")
            assert (rootfs / "bin/app").read_bytes() == app, "bin/app differs from what was pushed"
            assert not (rootfs / "etc/motd").exists(), "the whiteout in layer 2 was not applied"
            assert digest.startswith("sha256:"), "no manifest digest"
            step("stopping AA, CDH, KBS and the registry")
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)
            procs.clear()
            subprocess.run(["umount", "-R", str(rootfs)], capture_output=True)
        if opts.keep:
            print(f"demo: kept {tmp}: kbs/kbs-config-*.toml, kbs/admin-token, aa.toml, cdh.toml, *.log")
        print(
            f"demo: OK {digest} pulled through CDH in {pull_s:.2f}s; whole demo {time.monotonic() - T0:.1f}s"
        )
        return 0
    finally:
        for p in procs:
            p.kill()
        if registry is not None:
            registry.stop()
        subprocess.run(["umount", "-R", str(tmp / "bundle" / "rootfs")], capture_output=True)
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
