"""EAR attestation tokens (reference §4): issue (ES256, ``jwk`` header,
optional ``x5c``) and verify (the KBS's own signing key, trusted certs, JWK
sets, or the insecure header-JWK mode), plus the TEE public key lookup in verified claims."""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from attestation._x509 import is_ca
from coco_common.b64 import b64url_decode
from coco_common.files import read_bounded
from kbs_protocol.errors import TeeKeyError, TokenError
from kbs_protocol.jwe import TeePubKey
from kbs_protocol.jws import (
    PublicVerifyKey,
    decode_unverified,
    jwk_to_public_key,
    public_key_to_jwk,
    sign,
    verify,
)

from .errors import KbsConfigError, TokenVerifierError
from .jwks import load_jwk_set

__all__ = [
    "TRUST_CLAIMS",
    "Appraisal",
    "EarBroker",
    "TokenVerifier",
    "ear_status",
    "extract_tee_pubkey",
    "tier",
]

TRUST_CLAIMS = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)
_TIERS = ("none", "affirming", "warning", "contraindicated")
LEEWAY_S = 60
#: own tokens remembered by TokenVerifier.remember_own: how many, and up to what size each
_REMEMBER_MAX = 1024
_REMEMBER_MAX_BYTES = 16 * 1024
#: largest PEM file (signer key, certificate chain, trusted certs) read
MAX_PEM_BYTES = 1024 * 1024
#: attestation token signature algorithms (ITA signs with PS384)
_TOKEN_ALGS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
DEFAULT_TEEKEY_PATHS = (
    "/tdx/attester_runtime_data/tee-pubkey",
    "/tdx/attester_user_data/tee-pubkey",
    "/customized_claims/runtime_data/tee-pubkey",
    "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey",
    "/tee-pubkey",
)


def tier(value: int) -> str:
    """AR4SI tier of one trustworthiness claim value; negative values as rust-ear's half-open
    ranges (-32 is affirming, -96 a warning)."""
    a = abs(value)
    shift = 1 if value < 0 else 0
    if a <= 1:
        return "none"
    if a <= 31 + shift:
        return "affirming"
    if a <= 95 + shift:
        return "warning"
    return "contraindicated"


def ear_status(vector: Mapping[str, int]) -> str:
    """The worst tier among the claims."""
    worst = 0
    for v in vector.values():
        worst = max(worst, _TIERS.index(tier(v)))
    return _TIERS[worst]


@dataclass(frozen=True)
class Appraisal:
    """One EAR submod: the result of appraising one device."""

    trust_vector: Mapping[str, int]
    annotated_evidence: Mapping[str, Any]
    policy_id: str = "default"
    extensions: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        # as rust-ear: only the claims the policy set are serialised (trustee's default policies
        # set all eight); ear.status is the worst tier among them
        vec = {k: int(self.trust_vector[k]) for k in TRUST_CLAIMS if k in self.trust_vector}
        out: dict[str, Any] = {
            "ear.status": ear_status(vec),
            "ear.trustworthiness-vector": vec,
            "ear.appraisal-policy-id": self.policy_id,
            "ear.veraison.annotated-evidence": dict(self.annotated_evidence),
        }
        if self.extensions:
            out.update(self.extensions)
        return out


class EarBroker:
    """Signs EAR tokens with an EC P-256 key (ephemeral unless configured)."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey | None = None,
        *,
        cert_chain_der: Sequence[bytes] = (),
        duration_min: int = 5,
        issuer: str = "CoCo-Attestation-Service",
        developer: str = "https://confidentialcontainers.org",
        build: str = "attestation-service 0.1.0 (coco-py)",
        profile: str = "tag:github.com,2024:confidential-containers/Trustee",
    ) -> None:
        self.key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self.key.curve, ec.SECP256R1):
            raise KbsConfigError("the EAR signing key must be EC P-256")
        jwk: dict[str, Any] = {**public_key_to_jwk(self.key.public_key()), "alg": "ES256"}
        if cert_chain_der:
            jwk["x5c"] = [base64.b64encode(c).decode() for c in cert_chain_der]
        self._jwk = jwk
        self._duration = duration_min * 60
        self._issuer = issuer
        self._verifier_id = {"build": build, "developer": developer}
        self._profile = profile

    @classmethod
    def from_files(cls, key_path: str, cert_path: str | None, **kw: Any) -> EarBroker:
        try:
            key = serialization.load_pem_private_key(read_bounded(key_path, MAX_PEM_BYTES), password=None)
            certs = (
                x509.load_pem_x509_certificates(read_bounded(cert_path, MAX_PEM_BYTES)) if cert_path else []
            )
        except (OSError, ValueError) as exc:
            raise KbsConfigError(f"cannot load the EAR signer: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KbsConfigError("the EAR signing key must be EC P-256")
        return cls(key, cert_chain_der=[c.public_bytes(serialization.Encoding.DER) for c in certs], **kw)

    @property
    def public_jwk(self) -> Mapping[str, Any]:
        return self._jwk

    def issue(self, submods: Mapping[str, Appraisal], *, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        claims = {
            "eat_profile": self._profile,
            "iat": iat,
            "ear.verifier-id": self._verifier_id,
            "submods": {name: a.to_json() for name, a in submods.items()},
            "exp": iat + self._duration,
            "iss": self._issuer,
        }
        return sign(claims, self.key, alg="ES256", header={"jwk": self._jwk})


class TokenVerifier:
    """Verifies attestation tokens as trustee's KBS does (reference §4), and also trusts a
    header ``jwk`` that is one of ``own_keys`` (the built-in attestation service's signing key),
    so the secure setup works without ``insecure_header_jwk`` or a signer certificate."""

    def __init__(
        self,
        *,
        trusted_certs: Sequence[x509.Certificate] = (),
        trusted_jwks: Mapping[str, PublicVerifyKey] | None = None,
        own_keys: Sequence[PublicVerifyKey] = (),
        insecure_header_jwk: bool = False,
    ) -> None:
        self._certs = list(trusted_certs)
        self._jwks = dict(trusted_jwks or {})
        #: the built-in attestation service's signing keys, as JWK members (kty, crv, x, y / n, e):
        #: a token whose header ``jwk`` is one of them is trusted without x5c or configuration
        self._own = [public_key_to_jwk(k) for k in own_keys]
        self._insecure = insecure_header_jwk
        #: tokens this process's own broker signed with a key in own_keys (remember_own), newest last
        self._signed: OrderedDict[str, None] = OrderedDict()
        if not self._certs and not self._jwks and not self._own and not insecure_header_jwk:
            raise KbsConfigError(
                "[attestation_token] has no trust material: set trusted_certs_paths, trusted_jwk_sets "
                "or insecure_header_jwk = true"
            )

    @classmethod
    def from_config(
        cls,
        certs_paths: Sequence[str],
        jwk_sets: Sequence[str],
        insecure_header_jwk: bool,
        *,
        own_keys: Sequence[PublicVerifyKey] = (),
    ) -> TokenVerifier:
        certs: list[x509.Certificate] = []
        for p in certs_paths:
            try:
                certs.extend(x509.load_pem_x509_certificates(read_bounded(p, MAX_PEM_BYTES)))
            except (OSError, ValueError) as exc:
                raise KbsConfigError(f"cannot load trusted cert {p}: {exc}") from exc
        jwks: dict[str, PublicVerifyKey] = {}
        for js in jwk_sets:
            jwks.update(load_jwk_set(js))
        return cls(
            trusted_certs=certs, trusted_jwks=jwks, own_keys=own_keys, insecure_header_jwk=insecure_header_jwk
        )

    def _chain_trusted(self, x5c: Any, key: PublicVerifyKey, now: float) -> None:
        if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c) or len(x5c) > 8:
            raise TokenVerifierError("token jwk has no usable x5c chain")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
        except ValueError as exc:
            raise TokenVerifierError("token x5c does not parse") from exc
        leaf_key = chain[0].public_key()
        if not isinstance(leaf_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            raise TokenVerifierError("token certificate key type is not supported")
        if public_key_to_jwk(leaf_key) != public_key_to_jwk(key):
            raise TokenVerifierError("token jwk does not match its certificate")
        ts = time.gmtime(now)
        if not all(_valid_at(c, ts) for c in chain):
            raise TokenVerifierError("token certificate outside its validity")
        for i, c in enumerate(chain):
            if c in self._certs:
                return
            if any(a.subject == c.issuer and _valid_at(a, ts) and _issued_by(c, a) for a in self._certs):
                return
            if i + 1 < len(chain) and is_ca(chain[i + 1]) and _issued_by(c, chain[i + 1]):
                continue  # only a CA certificate from the token may vouch for the next one
            raise TokenVerifierError("token certificate chain is broken")
        raise TokenVerifierError("token certificate chain does not end at a trusted certificate")

    def remember_own(self, token: str, signer_jwk: Mapping[str, Any]) -> None:
        """``token`` was just signed by this process's own EAR broker, whose header ``jwk`` is
        ``signer_jwk``: when that key is one this verifier trusts without a chain
        (``own_keys``), :meth:`verify` of the token can only pass the key and signature
        checks, so a later :meth:`verify` of it skips them (the claims are still parsed, and
        the time claims checked, on every use). Tokens from any other source must never be
        passed here."""
        if len(token) > _REMEMBER_MAX_BYTES or signer_jwk.get("alg") not in _TOKEN_ALGS:
            return
        if not any(all(signer_jwk.get(k) == v for k, v in own.items()) for own in self._own):
            return
        self._signed[token] = None
        while len(self._signed) > _REMEMBER_MAX:
            self._signed.popitem(last=False)

    def verify(self, untrusted_token: str, *, now: float | None = None) -> dict[str, Any]:
        t = time.time() if now is None else now
        if untrusted_token in self._signed:
            self._signed.move_to_end(untrusted_token)
            claims = _own_claims(untrusted_token)
        else:
            claims = self._verify_signed(untrusted_token, t)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenVerifierError("token has no numeric exp")
        if t > exp + LEEWAY_S:
            raise TokenVerifierError("token expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and t + LEEWAY_S < nbf:
            raise TokenVerifierError("token not yet valid")
        return claims

    def _verify_signed(self, untrusted_token: str, t: float) -> dict[str, Any]:
        try:
            header, _ = decode_unverified(untrusted_token)
            if isinstance(header.get("jwk"), Mapping):
                key = jwk_to_public_key(header["jwk"])
                if not self._insecure and public_key_to_jwk(key) not in self._own:
                    self._chain_trusted(header["jwk"].get("x5c"), key, t)
            elif isinstance(header.get("kid"), str) and header["kid"] in self._jwks:
                key = self._jwks[header["kid"]]
            else:
                raise TokenVerifierError("token names no trusted key")
            _, claims = verify(untrusted_token, key, algorithms=_TOKEN_ALGS)
        except TokenError as exc:
            raise TokenVerifierError(f"token verification failed: {exc}") from exc
        return claims


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _own_claims(token: str) -> dict[str, Any]:
    """The claims of a token this process's broker signed (see ``remember_own``): its own
    ``json.dumps`` output, which the C parser reads exactly as ``strict_loads`` would (a dict
    dumped has no duplicate members; NaN and Infinity are still refused); the header and the
    signature, checked when it was signed, are not decoded again."""
    try:
        doc = json.loads(b64url_decode(token.split(".")[1], allow_padding=False), parse_constant=_no_constant)
    except (ValueError, IndexError) as exc:  # cannot happen for a token this process signed
        raise TokenVerifierError("token verification failed: token is not valid base64url JSON") from exc
    if not isinstance(doc, dict):
        raise TokenVerifierError("token verification failed: token claims must be a JSON object")
    return doc


def _valid_at(cert: x509.Certificate, ts: time.struct_time) -> bool:
    return cert.not_valid_before_utc.timetuple() <= ts <= cert.not_valid_after_utc.timetuple()


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _pointer(doc: Any, ptr: str) -> Any:
    cur = doc
    for raw in ptr.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def extract_tee_pubkey(claims: Mapping[str, Any], extra_paths: Sequence[str] = ()) -> TeePubKey:
    for ptr in (*extra_paths, *DEFAULT_TEEKEY_PATHS):
        v = _pointer(claims, ptr)
        if v is not None:
            try:
                return TeePubKey.from_json(v)
            except TeeKeyError as exc:
                raise TokenVerifierError(f"tee-pubkey in the token is invalid: {exc}") from exc
    raise TokenVerifierError("no tee-pubkey in the token")
