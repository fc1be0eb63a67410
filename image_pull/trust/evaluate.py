"""Evaluate a containers-policy.json for one pull (the puller's policy hook).

:class:`TrustPolicy` is built once per puller from the policy bytes, the
registries.d directory and/or inline ``sigstore_config`` YAML, and a resource
getter for ``kbs://`` key locations. :meth:`TrustPolicy.check` runs for every
pull, cached images included, after the manifest was digest-verified and
before any layer becomes visible.

Which reference is which:

* scope selection and ``signedIdentity`` use the reference the caller asked for
  (the *logical* name, before registries.conf rewriting), as containers/image;
* signatures are fetched from where the image actually came from (mirror or
  rewritten location): cosign ``.sig`` tags and the registry extension from
  that registry, the lookaside path from that repository name.

A signature's ``docker-manifest-digest`` must match the platform manifest (by
hashing the manifest bytes with the signature's algorithm) or the image index
the tag named (image-rs accepts both). Signatures are looked up for both.

Sigstore attachments (cosign ``.sig`` tags) are read when registries.d says
``use-sigstore-attachments: true`` for the image, or when no registries.d /
sigstore configuration was given at all (image-rs always reads them).

Key locations (``keyPath``, ``caPath``, ``rekorPublicKeyPath``...) may be
``kbs:///...`` (through the resource getter), ``file:///...`` or plain paths.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from coco_common.files import FileTooLarge, read_bounded
from image_pull.errors import ImagePullError, InvalidReference
from image_pull.hooks import PolicyContext
from image_pull.ocicrypt.layer import provider_refusal
from image_pull.reference import Reference, parse_reference
from image_pull.trust.errors import InvalidPolicy, SignatureRejected
from image_pull.trust.policy import (
    IdentityRule,
    InsecureAcceptAnything,
    KeySource,
    MatchRepository,
    ParsedIdentity,
    Policy,
    Reject,
    Requirement,
    SignedBy,
    SigstoreSigned,
    identity_matches,
    parse_identity,
)
from image_pull.trust.signatures import cosign
from image_pull.trust.signatures.gpg import dearmor_keyring, verify_signed_message
from image_pull.trust.signatures.lookaside import fetch_lookaside, fetch_registry_extension
from image_pull.trust.signatures.payload import (
    COSIGN_TYPE,
    SIMPLE_SIGNING_TYPE,
    SignaturePayload,
    parse_payload,
)
from image_pull.trust.signatures.registries_d import RegistriesD

__all__ = ["MAX_KEY_BYTES", "Accepted", "TrustPolicy"]

log = logging.getLogger("image_pull.trust")

MAX_KEY_BYTES = 4 << 20
ResourceGetter = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class Accepted:
    """What the policy accepted, for logs and audit."""

    scope: str
    requirements: tuple[str, ...]  # requirement types, in order
    signers: tuple[str, ...]  # GPG fingerprints / "cosign key" / "fulcio:<email>"


class _Pull:
    """Per-check state: lazily fetched signatures, shared by all requirements."""

    def __init__(self, ctx: PolicyContext, tp: TrustPolicy) -> None:
        self.ctx = ctx
        self.tp = tp
        self.digests = [ctx.manifest_digest] + ([ctx.index_digest] if ctx.index_digest else [])
        self._simple: list[bytes] | None = None
        self._cosign: list[cosign.CosignSignature] | None = None

    def digest_matches(self, untrusted_digest: str) -> bool:
        algo, sep, _ = untrusted_digest.partition(":")
        if not sep:
            return False
        if algo in ("sha256", "sha512"):
            got = f"{algo}:{hashlib.new(algo, self.ctx.manifest_bytes).hexdigest()}"
            if got == untrusted_digest:
                return True
        return self.ctx.index_digest is not None and untrusted_digest == self.ctx.index_digest

    async def simple_signatures(self) -> list[bytes]:
        if self._simple is None:
            ref = self.ctx.reference
            out: list[bytes] = []
            base = self.tp.registries_d.lookaside_for(ref)
            for d in self.digests:
                if base is not None:
                    out += await fetch_lookaside(base, ref, d, self.ctx.registry.http)
                try:
                    out += await fetch_registry_extension(self.ctx.registry, ref, d)
                except SignatureRejected:
                    raise
                except ImagePullError as exc:
                    log.info("registry signature extension unavailable: %s", exc)
            self._simple = out
        return self._simple

    async def cosign_signatures(self) -> list[cosign.CosignSignature]:
        if self._cosign is None:
            ref = self.ctx.reference
            use = self.tp.registries_d.use_sigstore_attachments(ref)
            if use is None:
                use = not self.tp.has_registries_config
            out: list[cosign.CosignSignature] = []
            if use:
                for d in self.digests:
                    out += await cosign.fetch_cosign_signatures(self.ctx.registry, ref, d)
            self._cosign = out
        return self._cosign


class TrustPolicy:
    """A parsed policy plus where its signatures and keys come from."""

    def __init__(
        self,
        policy_json: bytes,
        *,
        registries_d: Path | None = None,
        sigstore_config: bytes | None = None,
        resource_getter: ResourceGetter | None = None,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.policy = Policy.from_json(policy_json)
        self.registries_d = RegistriesD.load(registries_d, sigstore_config)
        self.has_registries_config = registries_d is not None or sigstore_config is not None
        self.resource_getter = resource_getter
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    # ------------------------------------------------------------------ keys
    async def _key_bytes(self, src: KeySource) -> bytes:
        """Key material, read afresh for every check (keys may rotate; no stale cache)."""
        if src.data is not None:
            return src.data
        assert src.path is not None
        data = await self._fetch_key(src.path)
        if len(data) > MAX_KEY_BYTES:
            raise InvalidPolicy(f"key {src.path[:80]} is larger than 4 MiB")
        return data

    async def _fetch_key(self, location: str) -> bytes:
        if location.startswith("kbs:") or location.startswith("kbs+"):
            if self.resource_getter is None:
                raise InvalidPolicy(f"key {location[:80]} needs a KBS, but no resource getter is configured")
            try:
                return await self.resource_getter(location)
            except Exception as exc:  # another package's errors: translate at the seam
                why = provider_refusal(exc)  # keep a KBS refusal's reason (PolicyDeny), not secrets
                raise InvalidPolicy(f"cannot fetch key {location[:80]}: {why}") from exc
        path = location[len("file://") :] if location.startswith("file://") else location
        if not path.startswith("/"):
            raise InvalidPolicy(f"key path {location[:80]} must be absolute (or a kbs:// URI)")
        try:
            return read_bounded(path, MAX_KEY_BYTES)
        except FileTooLarge as exc:
            raise InvalidPolicy(f"key {location[:80]} is larger than 4 MiB") from exc
        except ValueError as exc:
            raise InvalidPolicy(f"cannot read key {path[:80]}: not a regular file") from exc
        except OSError as exc:
            raise InvalidPolicy(f"cannot read key {path[:80]}: {exc.strerror}") from exc

    # ------------------------------------------------------------------ check
    async def check(self, ctx: PolicyContext) -> Accepted:
        """Accept the image (return) or raise :class:`~image_pull.errors.PolicyRejected`."""
        try:
            logical = parse_reference(ctx.original_reference)
            intended = parse_identity(ctx.original_reference)
        except InvalidReference:
            logical = ctx.reference
            intended = ParsedIdentity(ctx.reference.name, ctx.reference.tag, ctx.reference.digest)
        if intended.name_only:
            intended = ParsedIdentity(logical.name, logical.tag, logical.digest)
        scope, reqs = self.policy.requirements_for(logical)
        st = _Pull(ctx, self)
        signers: list[str] = []
        for i, req in enumerate(reqs):
            try:
                signers += await self._requirement(req, st, intended)
            except SignatureRejected as exc:
                raise SignatureRejected(
                    f"{logical} rejected by policy scope {scope or '(transport default)'!r}, "
                    f"requirement {i + 1} ({_type_name(req)}): {exc}"
                ) from exc
        log.info("policy accepted %s (scope %r, %s)", logical, scope, ", ".join(signers) or "no signatures")
        return Accepted(scope, tuple(_type_name(r) for r in reqs), tuple(signers))

    async def _requirement(self, req: Requirement, st: _Pull, intended: ParsedIdentity) -> list[str]:
        if isinstance(req, InsecureAcceptAnything):
            return []
        if isinstance(req, Reject):
            raise SignatureRejected("the policy rejects this image")
        if isinstance(req, SignedBy):
            return [await self._signed_by(req, st, intended)]
        return [await self._sigstore_signed(req, st, intended)]

    def _check_payload(
        self, p: SignaturePayload, st: _Pull, req: SignedBy | SigstoreSigned, intended: ParsedIdentity
    ) -> str | None:
        if not st.digest_matches(p.manifest_digest):
            return "signature is for another manifest digest"
        if not identity_matches(req.signed_identity, intended, p.docker_reference):
            return _identity_mismatch(req.signed_identity, intended, p.docker_reference)
        return None

    async def _signed_by(self, req: SignedBy, st: _Pull, intended: ParsedIdentity) -> str:
        if req.key_type != "GPGKeys":
            # containers/image refuses signedByGPGKeys (keys *certified by* the keyring),
            # X509Certificates and signedByX509CAs as unimplemented: never treat one as the
            # weaker "signed directly by a keyring key"
            raise SignatureRejected(f"keyType {req.key_type} is not implemented (only GPGKeys is)")
        keyring = b"".join([dearmor_keyring(await self._key_bytes(k)) for k in req.keys])
        sigs = await st.simple_signatures()
        if not sigs:
            raise SignatureRejected(self._no_simple_signature(st.ctx.reference))
        reasons: list[str] = []
        for blob in sigs:
            try:
                msg = await asyncio.to_thread(verify_signed_message, blob, keyring)
                p = parse_payload(msg.payload, expected_type=SIMPLE_SIGNING_TYPE)
            except SignatureRejected as exc:
                reasons.append(str(exc))
                continue
            why = self._check_payload(p, st, req, intended)
            if why is None:
                return f"gpg:{msg.primary_fingerprint}"
            reasons.append(why)
        raise SignatureRejected(_summary(len(sigs), reasons))

    def _no_simple_signature(self, ref: Reference) -> str:
        where = f"{ref.registry}/{ref.repository}"
        base = self.registries_d.lookaside_for(ref)
        if base is None:
            return (
                f"a signature was required, but no signature exists: registries.d (--registries-d) "
                f"configures no lookaside for {where}, and the registry serves no signatures "
                "through its signature extension"
            )
        u = urlsplit(base)
        shown = f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"[:200]
        return (
            f"a signature was required, but no signature exists: none for {where} at the lookaside "
            f"{shown!r} nor through the registry's signature extension"
        )

    def _no_sigstore_signature(self, ref: Reference) -> str:
        where = f"{ref.registry}/{ref.repository}"
        use = self.registries_d.use_sigstore_attachments(ref)
        if use is False or (use is None and self.has_registries_config):
            return (
                "a signature was required, but no sigstore signature exists: sigstore attachments "
                f"are not read for {where} (set use-sigstore-attachments: true for it in registries.d)"
            )
        return (
            "a signature was required, but no sigstore signature exists: "
            f"the registry holds no sigstore attachment (.sig tag) for this image in {where}"
        )

    async def _sigstore_signed(self, req: SigstoreSigned, st: _Pull, intended: ParsedIdentity) -> str:
        keys: list[cosign.PublicKey] = []
        for k in req.keys:
            keys += cosign.load_public_keys(await self._key_bytes(k))
        rekor: list[cosign.PublicKey] = []
        for k in req.rekor_keys:
            rekor += cosign.load_public_keys(await self._key_bytes(k))
        sigs = await st.cosign_signatures()
        if not sigs:
            raise SignatureRejected(self._no_sigstore_signature(st.ctx.reference))
        reasons: list[str] = []
        for s in sigs:
            try:
                who = await self._verify_cosign(req, s, keys, rekor)
                p = parse_payload(s.payload, expected_type=COSIGN_TYPE)
            except (SignatureRejected, InvalidPolicy) as exc:
                if isinstance(exc, InvalidPolicy):
                    raise
                reasons.append(str(exc))
                continue
            why = self._check_payload(p, st, req, intended)
            if why is None:
                return who
            reasons.append(why)
        raise SignatureRejected(_summary(len(sigs), reasons))

    async def _verify_cosign(
        self,
        req: SigstoreSigned,
        s: cosign.CosignSignature,
        keys: list[cosign.PublicKey],
        rekor: list[cosign.PublicKey],
    ) -> str:
        if req.fulcio is not None or req.pki is not None:
            if s.certificate is None:
                raise SignatureRejected("sigstore signature carries no certificate")
            cert = cosign.certificate(s.certificate)
            at = self._now()
            if rekor:
                if s.bundle is None:
                    raise SignatureRejected("sigstore signature carries no Rekor bundle")
                entry = cosign.verify_rekor_set(
                    s.bundle, rekor, signature=s.signature, payload=s.payload, signer_cert=cert
                )
                at = dt.datetime.fromtimestamp(entry.integrated_time, dt.UTC)
            if req.fulcio is not None:
                ca = cosign.load_certificates(await self._key_bytes(req.fulcio.ca))
                key = cosign.verify_fulcio_certificate(
                    s.certificate,
                    s.chain,
                    ca=ca,
                    oidc_issuer=req.fulcio.oidc_issuer,
                    subject_email=req.fulcio.subject_email,
                    at=at,
                )
                who = f"fulcio:{req.fulcio.subject_email}"
            else:
                assert req.pki is not None
                roots = cosign.load_certificates(await self._key_bytes(req.pki.ca_roots))
                inter = (
                    cosign.load_certificates(await self._key_bytes(req.pki.ca_intermediates))
                    if req.pki.ca_intermediates is not None
                    else []
                )
                key = cosign.verify_pki_certificate(
                    s.certificate,
                    s.chain,
                    roots=roots,
                    intermediates=inter,
                    subject_hostname=req.pki.subject_hostname,
                    subject_email=req.pki.subject_email,
                    at=at,
                )
                who = "pki"
            cosign.verify_with_key(key, s.signature, s.payload)
            return who
        last: SignatureRejected | None = None
        for k in keys:
            try:
                cosign.verify_with_key(k, s.signature, s.payload)
            except SignatureRejected as exc:
                last = exc
                continue
            if rekor:
                if s.bundle is None:
                    raise SignatureRejected("sigstore signature carries no Rekor bundle")
                cosign.verify_rekor_set(
                    s.bundle, rekor, signature=s.signature, payload=s.payload, signer_key=k
                )
            return "cosign-key"
        raise last or SignatureRejected("no sigstore key configured")


def _type_name(r: Requirement) -> str:
    return {
        InsecureAcceptAnything: "insecureAcceptAnything",
        Reject: "reject",
        SignedBy: "signedBy",
        SigstoreSigned: "sigstoreSigned",
    }[type(r)]


def _identity_mismatch(rule: IdentityRule, intended: ParsedIdentity, untrusted_signed_reference: str) -> str:
    """Name both identities (the signed one is authenticated content, bounded and quoted)
    and, when only the tag differs, the policy change that accepts any tag of the repository."""
    signed = untrusted_signed_reference[:256]
    why = f"signature is for another identity: signed for {signed!r}, the image is {str(intended)!r}"
    try:
        same_repo = parse_identity(untrusted_signed_reference).name == intended.name
    except InvalidReference:
        same_repo = False
    if same_repo and not isinstance(rule, MatchRepository):
        why += (
            ' (to accept a signature for any tag of this repository, set "signedIdentity": '
            '{"type": "matchRepository"} in the requirement)'
        )
    return why


def _summary(n: int, reasons: list[str]) -> str:
    uniq = list(dict.fromkeys(reasons))
    return f"none of {n} signature(s) is acceptable: " + "; ".join(uniq[:4])[:600]
