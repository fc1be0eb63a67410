"""OpenPGP verification of simple-signing blobs with ``gpgv``.

Why ``gpgv`` (GnuPG's verify-only tool) in a subprocess rather than a Python
OpenPGP library: it is the reference OpenPGP implementation (the one skopeo and
podman signatures are made with), it has no trust database, no agent, no
network and no key-import side effects: it accepts exactly the keys in the
keyring file we hand it. Each verification runs with a throwaway ``--homedir``
holding only the policy's ``keyPath``/``keyData`` keys; ``python-gnupg`` would
drive the full ``gpg`` (trustdb, keyring state) for no gain. We read the machine
``--status-fd`` output, never the human text, and require exactly one good,
valid, unexpired signature (``GOODSIG`` + ``VALIDSIG``; any ``BADSIG``,
``ERRSIG``, ``EXPSIG``, ``EXPKEYSIG``, ``REVKEYSIG`` rejects).

Only OpenPGP *signed messages* are accepted: armored/cleartext-signed text,
literal-only and encrypted messages are rejected before gpgv runs.
"""

from __future__ import annotations

import base64
import binascii
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from image_pull.trust.errors import InvalidPolicy, SignatureRejected

__all__ = ["GPGV", "MAX_SIGNATURE_BYTES", "VerifiedMessage", "dearmor_keyring", "verify_signed_message"]

GPGV = "gpgv"
MAX_SIGNATURE_BYTES = 4 << 20
MAX_KEYRING_BYTES = 4 << 20
GPGV_TIMEOUT = 30.0
#: what gpgv may write besides the signed content: a few status lines per
#: signature and a few diagnostics; more means a hostile or broken message
MAX_STATUS_BYTES = 64 << 10
MAX_STDERR_BYTES = 64 << 10
_BAD_STATUS = frozenset(
    {
        "BADSIG",
        "ERRSIG",
        "EXPSIG",
        "EXPKEYSIG",
        "REVKEYSIG",
        "NO_PUBKEY",
        "NODATA",
        "BADARMOR",
        "DECRYPTION_FAILED",
    }
)


#: statuses showing gpgv reached a signature packet
_SIG_SEEN = frozenset({"NEWSIG", "GOODSIG", "BADSIG", "VALIDSIG", "ERRSIG"})
#: gpgv status codes, in the words an operator needs (first match wins)
_BAD_WORDS = (
    ("NODATA", "the signature is not an OpenPGP signature or is corrupt (no signature data in it)"),
    ("BADARMOR", "the signature is not an OpenPGP signature or is corrupt (damaged armor)"),
    ("BADSIG", "the GPG signature is BAD: the signed content or the signature was altered"),
    ("EXPSIG", "the GPG signature has expired"),
    ("EXPKEYSIG", "the GPG signature was made by a key that has expired"),
    ("REVKEYSIG", "the GPG signature was made by a key that was revoked"),
    ("DECRYPTION_FAILED", "the signature is an encrypted message, not a signed one"),
)


def _why_bad(bad: set[str] | frozenset[str]) -> str:
    for code, words in _BAD_WORDS:
        if code in bad:
            return words
    return "the GPG signature did not verify (it is corrupt or not by a trusted key)"


@dataclass(frozen=True)
class VerifiedMessage:
    payload: bytes = field(repr=False)
    fingerprint: str  # of the signing (sub)key, as VALIDSIG reports it
    primary_fingerprint: str


def dearmor_keyring(data: bytes) -> bytes:
    """Binary OpenPGP keyring from binary or ASCII-armored key material (several blocks allowed)."""
    if len(data) > MAX_KEYRING_BYTES:
        raise InvalidPolicy("GPG keyring larger than 4 MiB")
    if b"-----BEGIN PGP" not in data:
        if not data or not data[0] & 0x80:
            raise InvalidPolicy("GPG key material is neither a binary keyring nor ASCII armor")
        return data
    out = bytearray()
    lines = data.decode("ascii", errors="replace").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----"):
            i += 1
            while i < len(lines) and lines[i].strip() and ":" in lines[i]:
                i += 1  # armor headers
            b64: list[str] = []
            while i < len(lines) and not lines[i].startswith("-----END"):
                ln = lines[i].strip()
                if ln and not ln.startswith("="):
                    b64.append(ln)
                i += 1
            try:
                out += base64.b64decode("".join(b64), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidPolicy("GPG key armor is not valid base64") from exc
        i += 1
    if not out:
        raise InvalidPolicy("no PGP PUBLIC KEY BLOCK in the key material")
    return bytes(out)


def _packet_tag(first: int) -> int:
    if not first & 0x80:
        return -1
    return first & 0x3F if first & 0x40 else (first & 0x3C) >> 2


def _run_gpgv(argv: list[str], sig: str, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run gpgv on ``sig``: its exit status, ``--status-fd`` output and signed content.

    Nothing gpgv writes touches the disk or grows without bound: the signed
    content comes over stdout and the status lines over a pipe of their own, each
    read up to its limit; one byte more (a compression bomb, a flood of packets)
    stops gpgv and rejects the signature."""
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [*argv, "--status-fd", str(status_w), "--output", "-", "--", sig],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            env=env,
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    stdout, stderr = proc.stdout, proc.stderr
    if stdout is None or stderr is None:  # pragma: no cover - both are pipes above
        raise RuntimeError("gpgv pipes missing")
    content_fd = stdout.fileno()
    limits = {
        content_fd: (MAX_SIGNATURE_BYTES, "GPG signed content is larger than 4 MiB"),
        status_r: (MAX_STATUS_BYTES, "gpgv wrote more than 64 KiB of status output"),
        stderr.fileno(): (MAX_STDERR_BYTES, "gpgv wrote more than 64 KiB of diagnostics"),
    }
    with proc, open(status_r, "rb", buffering=0):
        try:
            deadline = time.monotonic() + GPGV_TIMEOUT
            out = _drain(limits, deadline)
            returncode = proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired as exc:
            raise SignatureRejected("gpgv timed out") from exc
        finally:
            if proc.returncode is None:  # stopped early: a limit, the deadline, an error
                proc.kill()
                proc.wait()
    return returncode, out[status_r], out[content_fd]


def _drain(limits: dict[int, tuple[int, str]], deadline: float) -> dict[int, bytes]:
    """Read every fd in ``limits`` to its end, each no further than its limit, by ``deadline``."""
    bufs = {fd: bytearray() for fd in limits}
    with selectors.DefaultSelector() as sel:
        for fd in limits:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise SignatureRejected("gpgv timed out")
            for key, _ in sel.select(left):
                limit, too_much = limits[key.fd]
                chunk = os.read(key.fd, min(1 << 16, limit + 1 - len(bufs[key.fd])))
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                bufs[key.fd] += chunk
                if len(bufs[key.fd]) > limit:
                    raise SignatureRejected(too_much)
    return {fd: bytes(buf) for fd, buf in bufs.items()}


def verify_signed_message(untrusted_blob: bytes, keyring: bytes, *, gpgv: str = GPGV) -> VerifiedMessage:
    """Verify an OpenPGP signed message against ``keyring`` (binary) and return its content."""
    if len(untrusted_blob) > MAX_SIGNATURE_BYTES:
        raise SignatureRejected("signature larger than 4 MiB")
    if not untrusted_blob or _packet_tag(untrusted_blob[0]) not in (2, 4, 8):
        raise SignatureRejected("signature is not an OpenPGP signed message")
    exe = shutil.which(gpgv)
    if exe is None:
        raise SignatureRejected("gpgv is not installed; cannot verify GPG signatures")
    with tempfile.TemporaryDirectory(prefix="coco-gpgv-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o700)
        (home / "trusted.gpg").write_bytes(keyring)
        (home / "sig").write_bytes(untrusted_blob)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C", "GNUPGHOME": tmp}
        argv = [exe, "--homedir", tmp, "--keyring", str(home / "trusted.gpg")]
        returncode, status_out, payload = _run_gpgv(argv, str(home / "sig"), env)
        status = [
            ln[9:].split(" ")
            for ln in status_out.decode("utf-8", "replace").splitlines()
            if ln.startswith("[GNUPG:] ")
        ]
        kinds = [s[0] for s in status]
        bad = _BAD_STATUS.intersection(kinds)
        if "NO_PUBKEY" in bad or ("ERRSIG" in bad and "BADSIG" not in bad and len(bad) <= 2):
            raise SignatureRejected("GPG signature is not by a trusted key")
        if bad:
            raise SignatureRejected(_why_bad(bad))
        if returncode != 0 and not _SIG_SEEN.intersection(kinds):
            # gpgv gave up before reaching any signature (e.g. "zlib inflate problem")
            raise SignatureRejected(_why_bad({"NODATA"}))
        valid = [s for s in status if s[0] == "VALIDSIG"]
        if returncode != 0 or kinds.count("GOODSIG") != 1 or len(valid) != 1 or kinds.count("NEWSIG") > 1:
            raise SignatureRejected("GPG signature did not verify with the trusted keys")
        if not payload:
            raise SignatureRejected("GPG signature carries no signed content")
        v = valid[0]
        primary = v[10] if len(v) > 10 else v[1]
        return VerifiedMessage(payload, v[1], primary)
