"""NVIDIA reference integrity manifests (RIMs): signed SWID tags.

A RIM is an ISO 19770-2 SWID tag with TCG RIM metadata and a Payload of
``Resource`` elements (golden measurements), signed with one enveloped
XML-DSig signature whose KeyInfo carries the signer chain up to the NVIDIA
CoRIM signing root.

Why our own XML-DSig code instead of signxml: NVIDIA RIMs use one narrow
profile (a single enveloped signature over the whole document, C14N 1.1,
ecdsa-sha384, sha384), and we need the signer chain checked against an
explicit root *as of an explicit time*; signxml checks chains against the
current time and accepts a far wider profile than we need. lxml (libxml2)
provides the canonicalization; everything else is a ~150-line allow-listed
profile that rejects anything outside it (other algorithms, several
signatures or references, DTDs, xml:base/xml:id on the signature's
ancestors, where C14N 1.0 and 1.1 would differ).

C14N 1.1 is computed with libxml2's C14N 1.0 (inclusive): the two differ only
in how ``xml:id``/``xml:base`` attributes are inherited into a document
subset. The reference covers the whole document (no inheritance), and the
SignedInfo subset is rejected when an ancestor carries those attributes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from lxml import etree

from attestation.errors import VerificationError
from attestation.nvidia.certs import verify_chain, verify_raw_ecdsa_p384
from attestation.nvidia.errors import NvidiaFormatError, RimError
from coco_common.b64 import b64_decode

__all__ = [
    "MAX_RIM_SIZE",
    "Rim",
    "RimEntry",
    "compare_measurements",
    "verify_rim",
]

#: Largest RIM accepted (real ones are ~20-26 KiB).
MAX_RIM_SIZE = 1024 * 1024

DS = "http://www.w3.org/2000/09/xmldsig#"
SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
XML_NS = "http://www.w3.org/XML/1998/namespace"

_C14N = {"http://www.w3.org/2006/12/xml-c14n11", "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"}
_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_SIG_ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
_DIGEST_SHA384 = {"http://www.w3.org/2001/04/xmldsig-more#sha384", "http://www.w3.org/2001/04/xmlenc#sha384"}
_HASH_ATTR = re.compile(r"^Hash(\d+)$")


@dataclass(frozen=True)
class RimEntry:
    """One golden measurement: SPDM block ``index + 1`` must equal one of ``alternatives``."""

    index: int
    name: str
    active: bool
    size: int
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class Rim:
    """A verified RIM."""

    tag_id: str
    product: str
    edition: str
    colloquial_version: str
    entries: tuple[RimEntry, ...]
    #: The KeyInfo chain, signer first (verified up to the RIM root).
    chain: tuple[x509.Certificate, ...]

    @property
    def signer(self) -> x509.Certificate:
        return self.chain[0]

    def active_entries(self) -> dict[int, RimEntry]:
        return {e.index: e for e in self.entries if e.active}


def _one(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.findall(tag)
    if len(found) != 1:
        raise RimError(f"RIM signature: expected exactly one {tag.split('}')[-1]}, found {len(found)}")
    return found[0]


def _alg(el: etree._Element) -> str:
    return str(el.get("Algorithm", ""))


def _b64(text: str | None, what: str) -> bytes:
    try:
        return b64_decode("".join((text or "").split()))
    except ValueError as exc:
        raise RimError(f"RIM signature: {what} is not base64") from exc


def _parse(untrusted_xml: bytes) -> etree._Element:
    if len(untrusted_xml) > MAX_RIM_SIZE:
        raise NvidiaFormatError(f"RIM is larger than {MAX_RIM_SIZE} bytes")
    if b"<!DOCTYPE" in untrusted_xml or b"<!ENTITY" in untrusted_xml:
        raise NvidiaFormatError("RIM must not contain a DTD")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=False
    )
    try:
        root = etree.fromstring(untrusted_xml, parser)
    except etree.XMLSyntaxError as exc:
        raise NvidiaFormatError(f"RIM is not well-formed XML: {exc.msg}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.system_url:
        raise NvidiaFormatError("RIM must not contain a DTD")
    if root.tag != f"{{{SWID}}}SoftwareIdentity":
        raise NvidiaFormatError("RIM is not a SWID SoftwareIdentity document")
    return root


def _c14n(el: etree._Element | etree._ElementTree) -> bytes:
    out = etree.tostring(el, method="c14n", exclusive=False, with_comments=False)
    return bytes(out)


def _verify_xmldsig(root: etree._Element) -> tuple[x509.Certificate, ...]:
    """Check the enveloped signature; return the KeyInfo chain (signer first).
    Detaches the Signature element from ``root``."""
    sigs = list(root.iter(f"{{{DS}}}Signature"))
    if len(sigs) != 1 or sigs[0].getparent() is not root:
        raise RimError("RIM must carry exactly one signature, as a child of the root element")
    sig = sigs[0]
    signed_info = _one(sig, f"{{{DS}}}SignedInfo")
    c14n_method = _alg(_one(signed_info, f"{{{DS}}}CanonicalizationMethod"))
    if c14n_method not in _C14N:
        raise RimError(f"RIM signature: unsupported canonicalization {c14n_method}")
    if _alg(_one(signed_info, f"{{{DS}}}SignatureMethod")) != _SIG_ECDSA_SHA384:
        raise RimError("RIM signature: only ecdsa-sha384 is accepted")
    ref = _one(signed_info, f"{{{DS}}}Reference")
    if ref.get("URI") != "":
        raise RimError('RIM signature: the reference must cover the whole document (URI="")')
    transforms = [_alg(t) for t in _one(ref, f"{{{DS}}}Transforms").findall(f"{{{DS}}}Transform")]
    if not transforms or transforms[0] != _ENVELOPED or any(t not in _C14N for t in transforms[1:]):
        raise RimError("RIM signature: unsupported transforms")
    if _alg(_one(ref, f"{{{DS}}}DigestMethod")) not in _DIGEST_SHA384:
        raise RimError("RIM signature: only sha384 digests are accepted")
    digest_value = _b64(_one(ref, f"{{{DS}}}DigestValue").text, "DigestValue")
    signature_value = _b64(_one(sig, f"{{{DS}}}SignatureValue").text, "SignatureValue")
    for anc in signed_info.iterancestors():
        if anc.get(f"{{{XML_NS}}}base") is not None or anc.get(f"{{{XML_NS}}}id") is not None:
            raise RimError("RIM signature: xml:base/xml:id on the signature's ancestors is not supported")

    # SignedInfo is canonicalized in place (it inherits the root's namespaces).
    signed_info_c14n = _c14n(signed_info)
    # Reference: the whole document minus the Signature element (its tail text
    # stays). The element is detached from the parsed tree, which is only read
    # afterwards (Payload, Meta), never re-serialized.
    tail = sig.tail or ""
    prev = sig.getprevious()
    if prev is not None:
        prev.tail = (prev.tail or "") + tail
    else:
        root.text = (root.text or "") + tail
    root.remove(sig)
    if hashlib.sha384(_c14n(root)).digest() != digest_value:
        raise RimError("RIM content does not match its signed digest (the RIM was modified)")

    key_info = _one(sig, f"{{{DS}}}KeyInfo")
    der_certs = [_b64(e.text, "X509Certificate") for e in key_info.iter(f"{{{DS}}}X509Certificate")]
    if not der_certs or len(der_certs) > 8:
        raise RimError("RIM signature: KeyInfo must carry the signer certificate chain")
    try:
        chain = tuple(x509.load_der_x509_certificate(d) for d in der_certs)
    except ValueError as exc:
        raise RimError("RIM signature: KeyInfo holds an unparsable certificate") from exc
    try:
        verify_raw_ecdsa_p384(chain[0], signature_value, signed_info_c14n)
    except VerificationError as exc:
        raise RimError("RIM signature does not verify") from exc
    return chain


def _parse_payload(root: etree._Element) -> tuple[RimEntry, ...]:
    payload = root.find(f"{{{SWID}}}Payload")
    if payload is None:
        raise NvidiaFormatError("RIM has no Payload")
    entries: list[RimEntry] = []
    seen: set[int] = set()
    for res in payload.findall(f"{{{SWID}}}Resource"):
        if res.get("type") != "Measurement":
            continue
        try:
            index = int(res.get("index", ""))
            size = int(res.get("size", ""))
            n_alt = int(res.get("alternatives", ""))
        except ValueError as exc:
            raise NvidiaFormatError("RIM Resource has a non-integer index/size/alternatives") from exc
        active_text = res.get("active", "")
        if active_text not in ("True", "False", "true", "false"):
            raise NvidiaFormatError(f"RIM Resource {index}: bad 'active' value")
        hashes: dict[int, bytes] = {}
        for attr, val in res.attrib.items():
            qn = etree.QName(attr)
            m = _HASH_ATTR.match(qn.localname)
            if qn.namespace == SHA384_NS and m:
                try:
                    hashes[int(m.group(1))] = bytes.fromhex(str(val))
                except ValueError as exc:
                    raise NvidiaFormatError(f"RIM Resource {index}: hash is not hex") from exc
        if sorted(hashes) != list(range(n_alt)) or n_alt < 1:
            raise NvidiaFormatError(f"RIM Resource {index}: {n_alt} alternatives declared, hashes differ")
        if index in seen:
            raise NvidiaFormatError(f"RIM Resource index {index} appears twice")
        seen.add(index)
        entries.append(
            RimEntry(
                index=index,
                name=str(res.get("name", "")),
                active=active_text.lower() == "true",
                size=size,
                alternatives=tuple(hashes[i] for i in range(n_alt)),
            )
        )
    if not entries:
        raise NvidiaFormatError("RIM has no measurements")
    return tuple(entries)


def verify_rim(untrusted_xml: bytes, *, root: x509.Certificate, now: datetime) -> Rim:
    """Verify a RIM's XML signature and its signer chain to ``root`` at ``now``
    and return its content. Raises RimError / EvidenceFormatError."""
    doc = _parse(untrusted_xml)
    chain = _verify_xmldsig(doc)
    try:
        verify_chain(chain, root=root, now=now, what="RIM signing certificate")
    except VerificationError as exc:
        raise RimError(str(exc)) from exc
    meta = doc.find(f"{{{SWID}}}Meta")
    if meta is None or not meta.get("colloquialVersion"):
        raise NvidiaFormatError("RIM has no Meta colloquialVersion")
    return Rim(
        tag_id=str(doc.get("tagId", "")),
        product=str(meta.get("product", doc.get("name", ""))),
        edition=str(meta.get("edition", "")),
        colloquial_version=str(meta.get("colloquialVersion")),
        entries=_parse_payload(doc),
        chain=chain,
    )


def compare_measurements(
    rims: Sequence[Rim], measurements: Mapping[int, bytes], *, nvdec0_disabled: bool
) -> int:
    """Compare runtime measurements (SPDM block index -> value) with the union
    of the RIMs' active golden entries. Returns how many entries matched;
    raises RimError listing the mismatching indexes."""
    golden: dict[int, RimEntry] = {}
    for rim in rims:
        for index, entry in rim.active_entries().items():
            if index in golden:
                raise RimError(f"measurement index {index} is active in more than one RIM")
            golden[index] = entry
    bad: list[int] = []
    matched = 0
    for index, entry in sorted(golden.items()):
        if index == 35 and nvdec0_disabled:
            continue
        value = measurements.get(index + 1)
        if value is None or len(value) != entry.size or value not in entry.alternatives:
            bad.append(index)
        else:
            matched += 1
    if bad:
        raise RimError(f"runtime measurements do not match the RIM at index {', '.join(map(str, bad))}")
    return matched
