"""Trusted pulls: ``coco-image pull`` with a signature policy / layer decryption against
``skopeo copy`` (same policy / same key) + ``umoci unpack``, from one local docker-registry.

Builds an image of ``--size-mb`` (compressible text + random bytes, 4 layers),
pushes it GPG-signed (skopeo --sign-by, file:// lookaside) and JWE-encrypted
(skopeo --encryption-key), then measures ``--reps`` times each (fresh work dirs):

* plain:     coco-image pull (no policy)                         vs  skopeo copy + umoci unpack (baseline)
* signed:    coco-image pull --policy (signedBy) --registries-d   vs  skopeo copy --policy ... + umoci unpack
* encrypted: coco-image pull --decryption-key                      vs  skopeo copy --decryption-key ... + umoci unpack

Reports median wall seconds and the ratio coco / (skopeo + umoci). Usage:

    .venv/bin/python bench/trusted_pull_vs_skopeo.py [--size-mb 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.image_pull.trust.helpers import gpg_key, lookaside_dirs, run, skopeo_copy  # noqa: E402
from tests.support.registry import PASSWORD, USER, RegistryServer, layer_tar, umoci_image  # noqa: E402


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    cp = subprocess.run(args, capture_output=True, env={**os.environ, **(env or {})}, timeout=1800)
    if cp.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {cp.stderr.decode(errors='replace')[-400:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-trust-", dir="/var/tmp"))
    reg = RegistryServer(tmp / "reg")
    try:
        rnd = random.Random(7)
        per = a.size_mb * (1 << 20) // 4
        layers = []
        for i in range(4):
            text = b" ".join(
                rnd.choice([b"alpha", b"beta", b"layer", b"digest", b"python"]) for _ in range(per // 12)
            )
            layers.append(
                layer_tar(
                    [
                        (f"d{i}", "dir", None, 0o755),
                        (f"d{i}/text", "file", text[: per // 2], 0o644),
                        (f"d{i}/rand", "file", os.urandom(per // 2), 0o644),
                    ]
                )
            )
        img = umoci_image(tmp, "img", layers)
        key = gpg_key(tmp / "gpg")
        _store, write_d, read_d = lookaside_dirs(tmp)
        skopeo_copy(
            reg, f"oci:{img}", "b/signed:1", ["--registries.d", str(write_d), "--sign-by", key.fpr], key.env
        )
        priv, pub = tmp / "k.pem", tmp / "k.pub"
        run(["openssl", "genrsa", "-out", str(priv), "2048"])
        run(["openssl", "rsa", "-in", str(priv), "-pubout", "-out", str(pub)])
        skopeo_copy(reg, f"oci:{img}", "b/enc:1", ["--encryption-key", f"jwe:{pub}"])
        pol = tmp / "policy.json"
        pol.write_text(
            json.dumps(
                {
                    "default": [{"type": "reject"}],
                    "transports": {
                        "docker": {
                            reg.host: [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(key.pub)}]
                        }
                    },
                }
            )
        )
        coco = str(Path(sys.executable).parent / "coco-image")
        creds = ["--src-tls-verify=false", "--src-creds", f"{USER}:{PASSWORD}"]
        results: dict[str, tuple[list[float], list[float]]] = {}
        cases = {
            "plain": ([], [], "b/signed:1"),
            "signed": (
                ["--policy", str(pol), "--registries-d", str(read_d)],
                ["--policy", str(pol), "--registries.d", str(read_d), "--remove-signatures"],
                "b/signed:1",
            ),
            "encrypted": (["--decryption-key", str(priv)], ["--decryption-key", str(priv)], "b/enc:1"),
        }
        for name, (ours, theirs, ref) in cases.items():
            mine, peer = [], []
            for r in range(a.reps):
                w = tmp / f"run-{name}-{r}"
                mine.append(
                    timed(
                        [
                            coco,
                            "pull",
                            f"{reg.host}/{ref}",
                            "--plain-http",
                            reg.host,
                            "--auth-file",
                            str(reg.authfile),
                            "--snapshotter",
                            "copy",
                            "--work-dir",
                            str(w / "work"),
                            "--bundle",
                            str(w / "bundle"),
                            *ours,
                        ]
                    )
                )
                t1 = timed(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        *creds,
                        *theirs,
                        f"docker://{reg.host}/{ref}",
                        f"oci:{w / 'oci'}:x",
                    ]
                )
                t2 = timed(["umoci", "unpack", "--image", f"{w / 'oci'}:x", str(w / "umoci")])
                peer.append(t1 + t2)
                shutil.rmtree(w, ignore_errors=True)
            results[name] = (mine, peer)
        print(f"trusted pull of a {a.size_mb} MB image (4 layers), median of {a.reps}:")
        for name, (mine, peer) in results.items():
            m, p = statistics.median(mine), statistics.median(peer)
            print(f"  {name:9s} coco-image {m:6.2f} s   skopeo+umoci {p:6.2f} s   ratio {m / p:.2f}")
    finally:
        reg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
