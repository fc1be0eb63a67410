"""containers-policy.json: strict model, ``docker:`` scope selection, signedIdentity matching.

Semantics follow containers/image (``containers-policy.json(5)``,
``signature/policy_config.go``, ``policy_eval.go``, ``policy_reference_match.go``):

* ``default`` is mandatory; ``transports`` optional. Unknown members, duplicate
  keys and wrong types reject the whole file (:class:`InvalidPolicy`).
* Scope for a ``docker`` reference ``host[:port]/ns/repo:tag`` (most specific
  wins, and *only* that list applies): the exact reference, then
  ``host[:port]/ns/repo``, ``host[:port]/ns``, ``host[:port]``, then wildcard
  domains of the port-less host (``*.b.example.com``, ``*.example.com``,
  ``*.com``), then the transport default ``""``, then the global ``default``.
* All requirements of the selected list must be satisfied.
* What containers/image does not implement never means something weaker here:
  ``signedBy`` with ``keyType`` ``signedByGPGKeys``, ``X509Certificates`` or
  ``signedByX509CAs`` parses (as there) but rejects every image it applies to;
  requirement types it does not implement (``signedBaseLayer``) and unknown
  members are refused when the policy is loaded.

**Deliberate difference from image-rs (fail closed):** an empty requirement list
is *rejected* (as containers/image rejects it at parse time, "List of
verification policy requirements must not be empty"). image-rs accepts any image
when the selected list is empty. We refuse to load such a policy at all, so a
typo can never turn into "accept anything". Also unlike image-rs, ``transports``
may be absent (containers/image makes it optional).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from coco_common.b64 import b64_decode
from coco_common.cli import closest
from coco_common.strict_json import strict_loads
from image_pull.errors import InvalidReference
from image_pull.reference import Reference, join_reference, parse_reference
from image_pull.trust.errors import InvalidPolicy

__all__ = [
    "MAX_POLICY_BYTES",
    "ExactReference",
    "ExactRepository",
    "FulcioConfig",
    "IdentityRule",
    "InsecureAcceptAnything",
    "KeySource",
    "MatchExact",
    "MatchRepoDigestOrExact",
    "MatchRepository",
    "ParsedIdentity",
    "PkiConfig",
    "Policy",
    "Reject",
    "RemapIdentity",
    "Requirement",
    "SignedBy",
    "SigstoreSigned",
    "docker_scopes",
    "identity_matches",
    "parse_identity",
]

MAX_POLICY_BYTES = 4 << 20
MAX_REQUIREMENTS = 64
MAX_KEYS = 64


# ---------------------------------------------------------------------- strict JSON helpers
def _strict_loads(untrusted: bytes) -> Any:
    if len(untrusted) > MAX_POLICY_BYTES:
        raise InvalidPolicy("policy is larger than 4 MiB")
    try:
        return strict_loads(untrusted)
    except ValueError as exc:
        raise InvalidPolicy(f"policy is not valid JSON: {str(exc)[:80]}") from exc


def _obj(v: Any, what: str, allowed: set[str], required: Set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InvalidPolicy(f"{what} must be a JSON object")
    unknown = set(v) - allowed
    if unknown:
        raise InvalidPolicy(f"{what}: unknown field {sorted(unknown)[0][:40]!r}")
    missing = required - set(v)
    if missing:
        raise InvalidPolicy(f"{what}: missing field {sorted(missing)[0]!r}")
    return v


def _str(v: Any, what: str, *, empty: bool = False) -> str:
    if not isinstance(v, str) or (not empty and not v):
        raise InvalidPolicy(f"{what} must be a non-empty string")
    return v


def _b64(v: Any, what: str) -> bytes:
    s = _str(v, what)
    try:
        return b64_decode(s)
    except ValueError as exc:
        raise InvalidPolicy(f"{what} is not valid base64") from exc


# ---------------------------------------------------------------------- model
@dataclass(frozen=True)
class KeySource:
    """One trusted key (or keyring): a location (``kbs://``, ``file://`` or a path) or inline bytes."""

    path: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class MatchExact:
    pass


@dataclass(frozen=True)
class MatchRepoDigestOrExact:
    pass


@dataclass(frozen=True)
class MatchRepository:
    pass


@dataclass(frozen=True)
class ExactReference:
    docker_reference: str


@dataclass(frozen=True)
class ExactRepository:
    docker_repository: str


@dataclass(frozen=True)
class RemapIdentity:
    prefix: str
    signed_prefix: str


IdentityRule = (
    MatchExact | MatchRepoDigestOrExact | MatchRepository | ExactReference | ExactRepository | RemapIdentity
)


@dataclass(frozen=True)
class InsecureAcceptAnything:
    pass


@dataclass(frozen=True)
class Reject:
    pass


@dataclass(frozen=True)
class SignedBy:
    key_type: str
    keys: tuple[KeySource, ...]
    signed_identity: IdentityRule


@dataclass(frozen=True)
class FulcioConfig:
    ca: KeySource
    oidc_issuer: str
    subject_email: str


@dataclass(frozen=True)
class PkiConfig:
    ca_roots: KeySource
    ca_intermediates: KeySource | None
    subject_hostname: str | None
    subject_email: str | None


@dataclass(frozen=True)
class SigstoreSigned:
    keys: tuple[KeySource, ...]  # empty when fulcio/pki is used
    fulcio: FulcioConfig | None
    pki: PkiConfig | None
    rekor_keys: tuple[KeySource, ...]
    signed_identity: IdentityRule
    identity_given: bool  # False: signedIdentity absent (defaults to matchRepoDigestOrExact)


Requirement = InsecureAcceptAnything | Reject | SignedBy | SigstoreSigned


# ---------------------------------------------------------------------- identity parsing
_HOST_RE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?"
)
_WILDCARD_RE = re.compile(
    r"\*\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class ParsedIdentity:
    """A docker reference as a policy or a signature spells it (name-only allowed)."""

    name: str  # host/repo, normalised
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return join_reference(self.name, self.tag, self.digest)

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None


def parse_identity(untrusted: str) -> ParsedIdentity:
    """Parse and normalise a docker reference without adding a default tag."""
    ref = parse_reference(untrusted)
    rest = untrusted.split("@", 1)[0]
    has_tag = rest.rfind(":") > rest.rfind("/")
    return ParsedIdentity(ref.name, ref.tag if has_tag else None, ref.digest)


def _parse_identity_rule(v: Any, what: str) -> IdentityRule:
    o = _obj(v, what, {"type", "dockerReference", "dockerRepository", "prefix", "signedPrefix"}, {"type"})
    t = o["type"]

    def only(*keys: str) -> None:
        extra = set(o) - {"type", *keys}
        if extra:
            raise InvalidPolicy(f"{what} ({t}): unexpected field {sorted(extra)[0]!r}")
        for k in keys:
            if k not in o:
                raise InvalidPolicy(f"{what} ({t}): missing field {k!r}")

    try:
        if t == "matchExact":
            only()
            return MatchExact()
        if t == "matchRepoDigestOrExact":
            only()
            return MatchRepoDigestOrExact()
        if t == "matchRepository":
            only()
            return MatchRepository()
        if t == "exactReference":
            only("dockerReference")
            r = parse_identity(_str(o["dockerReference"], f"{what}.dockerReference"))
            if r.name_only:
                raise InvalidPolicy(f"{what}: dockerReference must carry a tag or digest")
            return ExactReference(str(r))
        if t == "exactRepository":
            only("dockerRepository")
            r = parse_identity(_str(o["dockerRepository"], f"{what}.dockerRepository"))
            if not r.name_only:
                raise InvalidPolicy(f"{what}: dockerRepository must be a repository without tag or digest")
            return ExactRepository(r.name)
        if t == "remapIdentity":
            only("prefix", "signedPrefix")
            p = _validate_prefix(_str(o["prefix"], f"{what}.prefix"), f"{what}.prefix")
            s = _validate_prefix(_str(o["signedPrefix"], f"{what}.signedPrefix"), f"{what}.signedPrefix")
            return RemapIdentity(p, s)
    except InvalidReference as exc:
        raise InvalidPolicy(f"{what}: {exc}") from exc
    raise InvalidPolicy(f"{what}: unknown signedIdentity type {str(t)[:40]!r}")


def _validate_prefix(p: str, what: str) -> str:
    if _WILDCARD_RE.fullmatch(p):
        return p
    try:
        r = parse_identity(p)
    except InvalidReference as exc:
        raise InvalidPolicy(f"{what}: {p[:80]!r} is not a host[:port], namespace or repository") from exc
    if not r.name_only or r.name != p:
        raise InvalidPolicy(f"{what}: {p[:80]!r} must be a fully expanded name without tag or digest")
    return p


# ---------------------------------------------------------------------- requirements
def _keys(
    o: Mapping[str, Any],
    what: str,
    single: str,
    plural: str | None,
    data: str,
    datas: str | None,
    *,
    data_is_pem: bool,
) -> tuple[KeySource, ...]:
    out: list[KeySource] = []
    if single in o:
        out.append(KeySource(path=_str(o[single], f"{what}.{single}")))
    if plural is not None and plural in o:
        lst = o[plural]
        if not isinstance(lst, list) or not lst or len(lst) > MAX_KEYS:
            raise InvalidPolicy(f"{what}.{plural} must be a non-empty list")
        out += [KeySource(path=_str(x, f"{what}.{plural}[]")) for x in lst]
    if data in o:
        out.append(KeySource(data=_key_data(o[data], f"{what}.{data}", data_is_pem)))
    if datas is not None and datas in o:
        lst = o[datas]
        if not isinstance(lst, list) or not lst or len(lst) > MAX_KEYS:
            raise InvalidPolicy(f"{what}.{datas} must be a non-empty list")
        out += [KeySource(data=_key_data(x, f"{what}.{datas}[]", data_is_pem)) for x in lst]
    return tuple(out)


def _key_data(v: Any, what: str, pem_ok: bool) -> bytes:
    s = _str(v, what)
    if pem_ok and s.lstrip().startswith("-----BEGIN"):
        return s.encode()  # image-rs writes sigstore keyData as raw PEM text
    return _b64(s, what)


def _count(o: Mapping[str, Any], names: tuple[str, ...]) -> int:
    return sum(1 for n in names if n in o)


def _signed_identity(o: Mapping[str, Any], what: str) -> IdentityRule:
    if "signedIdentity" in o:
        return _parse_identity_rule(o["signedIdentity"], f"{what}.signedIdentity")
    return MatchRepoDigestOrExact()


def _insecure_accept_anything(v: dict[str, Any], what: str) -> Requirement:
    _obj(v, what, {"type"})
    return InsecureAcceptAnything()


def _reject(v: dict[str, Any], what: str) -> Requirement:
    _obj(v, what, {"type"})
    return Reject()


def _signed_by(v: dict[str, Any], what: str) -> Requirement:
    o = _obj(v, what, {"type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"}, {"keyType"})
    key_type = _str(o["keyType"], f"{what}.keyType")
    if key_type not in ("GPGKeys", "signedByGPGKeys", "X509Certificates", "signedByX509CAs"):
        raise InvalidPolicy(f"{what}: unknown keyType {key_type[:40]!r}")
    if _count(o, ("keyPath", "keyPaths", "keyData")) != 1:
        raise InvalidPolicy(f"{what}: exactly one of keyPath, keyPaths and keyData is required")
    keys = _keys(o, what, "keyPath", "keyPaths", "keyData", None, data_is_pem=False)
    return SignedBy(key_type, keys, _signed_identity(o, what))


def _fulcio(v: Any, what: str) -> FulcioConfig:
    f = _obj(v, what, {"caPath", "caData", "oidcIssuer", "subjectEmail"}, {"oidcIssuer", "subjectEmail"})
    if _count(f, ("caPath", "caData")) != 1:
        raise InvalidPolicy(f"{what}: exactly one of caPath and caData is required")
    ca = _keys(f, what, "caPath", None, "caData", None, data_is_pem=True)[0]
    return FulcioConfig(ca, _str(f["oidcIssuer"], "oidcIssuer"), _str(f["subjectEmail"], "subjectEmail"))


_PKI_FIELDS = {
    "caRootsPath",
    "caRootsData",
    "caIntermediatesPath",
    "caIntermediatesData",
    "subjectHostname",
    "subjectEmail",
}


def _pki(v: Any, what: str) -> PkiConfig:
    p = _obj(v, what, _PKI_FIELDS)
    if _count(p, ("caRootsPath", "caRootsData")) != 1:
        raise InvalidPolicy(f"{what}: exactly one of caRootsPath and caRootsData is required")
    if _count(p, ("caIntermediatesPath", "caIntermediatesData")) > 1:
        raise InvalidPolicy(f"{what}: at most one of caIntermediatesPath and caIntermediatesData")
    if _count(p, ("subjectHostname", "subjectEmail")) == 0:
        raise InvalidPolicy(f"{what}: subjectHostname or subjectEmail is required")
    roots = _keys(p, what, "caRootsPath", None, "caRootsData", None, data_is_pem=True)[0]
    inter = _keys(p, what, "caIntermediatesPath", None, "caIntermediatesData", None, data_is_pem=True)
    return PkiConfig(
        roots,
        inter[0] if inter else None,
        _str(p["subjectHostname"], "subjectHostname") if "subjectHostname" in p else None,
        _str(p["subjectEmail"], "subjectEmail") if "subjectEmail" in p else None,
    )


_SIGSTORE_KEY_FIELDS = ("keyPath", "keyPaths", "keyData", "keyDatas")
_REKOR_FIELDS = ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas")


def _sigstore_signed(v: dict[str, Any], what: str) -> Requirement:
    o = _obj(v, what, {"type", *_SIGSTORE_KEY_FIELDS, "fulcio", "pki", *_REKOR_FIELDS, "signedIdentity"})
    if _count(o, (*_SIGSTORE_KEY_FIELDS, "fulcio", "pki")) != 1:
        raise InvalidPolicy(f"{what}: exactly one of keyPath(s), keyData(s), fulcio and pki is required")
    if _count(o, _REKOR_FIELDS) > 1:
        raise InvalidPolicy(f"{what}: at most one rekorPublicKey* field is allowed")
    keys = _keys(o, what, *_SIGSTORE_KEY_FIELDS, data_is_pem=True)
    rekor = _keys(o, what, *_REKOR_FIELDS, data_is_pem=True)
    fulcio = _fulcio(o["fulcio"], f"{what}.fulcio") if "fulcio" in o else None
    if fulcio is not None and not rekor:
        raise InvalidPolicy(f"{what}: fulcio requires a rekorPublicKey*")
    pki = _pki(o["pki"], f"{what}.pki") if "pki" in o else None
    return SigstoreSigned(keys, fulcio, pki, rekor, _signed_identity(o, what), "signedIdentity" in o)


#: requirement ``type`` -> its parser (containers-policy.json(5))
_REQUIREMENT_PARSERS: dict[str, Callable[[dict[str, Any], str], Requirement]] = {
    "insecureAcceptAnything": _insecure_accept_anything,
    "reject": _reject,
    "signedBy": _signed_by,
    "sigstoreSigned": _sigstore_signed,
}


def _parse_requirement(v: Any, what: str) -> Requirement:
    if not isinstance(v, dict) or "type" not in v:
        raise InvalidPolicy(f"{what} must be an object with a type")
    t = v["type"]
    parser = _REQUIREMENT_PARSERS.get(t) if isinstance(t, str) else None
    if parser is None:
        raise InvalidPolicy(f"{what}: unknown requirement type {str(t)[:40]!r}{_type_hint(t)}")
    return parser(v, what)


_REQUIREMENT_TYPES = tuple(_REQUIREMENT_PARSERS)


def _type_hint(t: Any) -> str:
    """`` (did you mean 'signedBy'?)`` for a misspelled or miscased requirement type."""
    if not isinstance(t, str):
        return ""
    folded = {k.lower(): k for k in _REQUIREMENT_TYPES}
    hint = folded.get(t.lower()) or closest(t[:40], _REQUIREMENT_TYPES)
    return f" (did you mean {hint!r}?)" if hint else ""


def _parse_list(v: Any, what: str) -> tuple[Requirement, ...]:
    if not isinstance(v, list):
        raise InvalidPolicy(f"{what} must be a list of requirements")
    if not v:
        # containers/image: "List of verification policy requirements must not be empty".
        # image-rs would accept every image here; we fail closed.
        raise InvalidPolicy(f"{what}: an empty requirement list is not allowed (it would accept anything)")
    if len(v) > MAX_REQUIREMENTS:
        raise InvalidPolicy(f"{what}: too many requirements")
    return tuple(_parse_requirement(x, f"{what}[{i}]") for i, x in enumerate(v))


def _validate_docker_scope(scope: str) -> None:
    if scope == "" or _WILDCARD_RE.fullmatch(scope):
        return
    if "/" not in scope:
        if not _HOST_RE.fullmatch(scope):
            raise InvalidPolicy(f"invalid docker scope {scope[:80]!r}")
        return
    try:
        r = parse_identity(scope)
    except InvalidReference as exc:
        raise InvalidPolicy(f"invalid docker scope {scope[:80]!r}") from exc
    host = scope.split("/", 1)[0]
    if "/" in scope and not ("." in host or ":" in host or host == "localhost"):
        raise InvalidPolicy(f"docker scope {scope[:80]!r} must be fully expanded (start with a host)")
    if str(r) != scope and r.name != scope:
        raise InvalidPolicy(f"docker scope {scope[:80]!r} is not in normalised form")


# ---------------------------------------------------------------------- the policy
@dataclass(frozen=True)
class Policy:
    default: tuple[Requirement, ...]
    docker: Mapping[str, tuple[Requirement, ...]]
    other_transports: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, untrusted_policy: bytes) -> Policy:
        doc = _strict_loads(untrusted_policy)
        o = _obj(doc, "policy", {"default", "transports"}, {"default"})
        default = _parse_list(o["default"], "default")
        docker: dict[str, tuple[Requirement, ...]] = {}
        others: list[str] = []
        tr = o.get("transports", {})
        if not isinstance(tr, dict):
            raise InvalidPolicy("transports must be a JSON object")
        for tname, scopes in tr.items():
            if not isinstance(scopes, dict):
                raise InvalidPolicy(f"transports.{tname[:40]} must be a JSON object")
            parsed = {
                s: _parse_list(reqs, f"transports.{tname[:40]}[{s[:80]!r}]") for s, reqs in scopes.items()
            }
            if tname == "docker":
                for s in parsed:
                    _validate_docker_scope(s)
                docker = parsed
            else:
                others.append(tname)
        return cls(default, docker, tuple(others))

    def requirements_for(self, ref: Reference) -> tuple[str, tuple[Requirement, ...]]:
        """(scope that matched, its requirements) for a docker reference."""
        for scope in docker_scopes(ref):
            if scope in self.docker:
                return scope, self.docker[scope]
        return "default", self.default


def docker_scopes(ref: Reference) -> list[str]:
    """Scopes from most to least specific (containers/image ``DockerReferenceNamespaces``)."""
    out: list[str] = []
    if ref.digest is not None:
        out.append(f"{ref.name}@{ref.digest}")
    if ref.tag is not None:
        out.append(f"{ref.name}:{ref.tag}")
    name = ref.name
    while True:
        out.append(name)
        cut = name.rfind("/")
        if cut < 0:
            break
        name = name[:cut]
    host = ref.registry.split(":", 1)[0] if not ref.registry.startswith("[") else ""
    while "." in host:
        host = host.split(".", 1)[1]
        out.append(f"*.{host}")
    out.append("")
    return out


# ---------------------------------------------------------------------- identity matching
def _matches_prefix(s: str, prefix: str) -> bool:
    if prefix.startswith("*."):
        host = s.split("/", 1)[0].split(":", 1)[0]
        return host.endswith(prefix[1:])
    if not s.startswith(prefix):
        return False
    return len(s) == len(prefix) or s[len(prefix)] in "/:@"


def _repo_digest_or_exact(intended: ParsedIdentity, sig: ParsedIdentity) -> bool:
    if intended.tag is not None:
        return str(sig) == str(intended)
    if intended.digest is not None:
        return sig.name == intended.name
    return False


def identity_matches(rule: IdentityRule, intended: ParsedIdentity, untrusted_signed_reference: str) -> bool:
    """Does a signature's ``docker-reference`` satisfy ``rule`` for the pulled image ``intended``?"""
    try:
        sig = parse_identity(untrusted_signed_reference)
    except InvalidReference:
        return False
    if isinstance(rule, MatchExact):
        if intended.name_only or sig.name_only:
            return False
        return str(sig) == str(intended)
    if isinstance(rule, MatchRepoDigestOrExact):
        return _repo_digest_or_exact(intended, sig)
    if isinstance(rule, MatchRepository):
        return sig.name == intended.name
    if isinstance(rule, ExactReference):
        return str(sig) == rule.docker_reference
    if isinstance(rule, ExactRepository):
        return sig.name == rule.docker_repository
    if isinstance(rule, RemapIdentity):
        s = str(intended)
        if _matches_prefix(s, rule.prefix):
            if rule.prefix.startswith("*."):
                # a wildcard prefix replaces the whole host
                host_len = len(s.split("/", 1)[0])
                s = rule.signed_prefix + s[host_len:]
            else:
                s = rule.signed_prefix + s[len(rule.prefix) :]
            try:
                intended = parse_identity(s)
            except InvalidReference:
                return False
        return _repo_digest_or_exact(intended, sig)
    return False
