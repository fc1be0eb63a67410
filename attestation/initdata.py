"""Initdata: the TOML document a pod hands to its confidential guest, its
digest, and the encodings that carry it (one implementation, used by the
Attestation Agent and by the Kata guest-pull glue).

Format (trustee initdata spec, ``kata:src/libs/kata-types/src/initdata.rs``)::

    version = "0.1.0"                 # the only accepted value
    algorithm = "sha384"              # sha256 | sha384 | sha512
    [data]
    "aa.toml" = '''...'''
    "cdh.toml" = '''...'''
    "policy.rego" = '''...'''

The digest is ``H_algorithm(raw TOML bytes)`` — the exact bytes, never a
re-serialisation. The digest is placed into the TEE's init-data field resized
(truncated or zero-padded) to that field's length: SNP ``HOSTDATA`` 32 bytes,
TDX ``MRCONFIGID`` 48, Arm CCA personalization value 64.

Carriers:

* the pod annotation ``io.katacontainers.config.hypervisor.cc_init_data``:
  standard base64 of gzip(TOML);
* the initdata block device image: ``b"initdata"`` ‖ u64 little-endian length
  of the gzip blob ‖ gzip blob ‖ zero padding to a multiple of 512 bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import struct
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from attestation._binding import resize
from attestation.errors import AttestationError
from coco_common.b64 import b64_decode, b64_encode
from coco_common.cli import closest

log = logging.getLogger(__name__)

__all__ = [
    "ALGORITHMS",
    "ANNOTATION",
    "DIGEST_LENGTHS",
    "IMAGE_MAGIC",
    "MAX_ANNOTATION_BYTES",
    "MAX_INITDATA_BYTES",
    "SUPPORTED_VERSION",
    "InitData",
    "InitDataError",
    "build_image",
    "decode_annotation",
    "decode_annotation_bytes",
    "encode_annotation",
    "load_initdata",
    "parse_image",
    "parse_initdata",
    "tee_digest",
]

SUPPORTED_VERSION = "0.1.0"
ALGORITHMS: Mapping[str, str] = MappingProxyType({"sha256": "sha256", "sha384": "sha384", "sha512": "sha512"})
ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
IMAGE_MAGIC = b"initdata"
SECTOR = 512
#: Largest decompressed initdata TOML accepted.
MAX_INITDATA_BYTES = 1 << 20
#: Largest annotation value (base64 text) accepted.
MAX_ANNOTATION_BYTES = 1 << 20
#: Init-data field length per TEE.
DIGEST_LENGTHS: Mapping[str, int] = MappingProxyType({"snp": 32, "tdx": 48, "cca": 64})


class InitDataError(AttestationError):
    """Initdata is malformed, oversized, or uses an unsupported version/algorithm.
    The message names the offending field."""


@dataclass(frozen=True)
class InitData:
    """A validated initdata document. ``raw`` is the exact TOML bytes."""

    raw: bytes
    version: str
    algorithm: str
    data: Mapping[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8")

    def digest(self) -> bytes:
        """``H_algorithm(raw TOML bytes)``."""
        return hashlib.new(ALGORITHMS[self.algorithm], self.raw).digest()

    def digest_for(self, tee: str) -> bytes:
        """The digest resized for ``tee``'s init-data field."""
        return tee_digest(self.digest(), tee)


_TOP_KEYS = ("version", "algorithm", "data")
#: the data entries the guest components read (others are kept for the workload)
_DATA_KEYS = ("aa.toml", "cdh.toml", "policy.rego")


def parse_initdata(untrusted_toml: bytes) -> InitData:
    """Validate initdata TOML bytes (size, UTF-8, TOML, version, algorithm, data)."""
    if len(untrusted_toml) > MAX_INITDATA_BYTES:
        raise InitDataError(f"initdata: larger than {MAX_INITDATA_BYTES} bytes")
    try:
        text = untrusted_toml.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InitDataError("initdata: not UTF-8 text") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InitDataError(f"initdata: not valid TOML: {exc}") from exc
    version = doc.get("version")
    if not isinstance(version, str):
        raise InitDataError("initdata: field 'version' is missing or not a string")
    if version != SUPPORTED_VERSION:
        raise InitDataError(f"initdata: unsupported version {version!r} (want {SUPPORTED_VERSION!r})")
    algorithm = doc.get("algorithm")
    if not isinstance(algorithm, str):
        raise InitDataError("initdata: field 'algorithm' is missing or not a string")
    if algorithm not in ALGORITHMS:
        raise InitDataError(
            f"initdata: unsupported algorithm {algorithm!r} (want one of {', '.join(ALGORITHMS)})"
        )
    for key in doc:
        if key not in _TOP_KEYS:
            hint = closest(key, _TOP_KEYS)
            log.warning(
                "initdata: unknown key %s at the top level: ignored%s",
                key[:64],
                f" (did you mean {hint}?)" if hint else "",
            )
    raw_data = doc.get("data", {})
    if not isinstance(raw_data, dict):
        raise InitDataError("initdata: field 'data' must be a table")
    for key in raw_data:
        hint = closest(key, _DATA_KEYS) if key not in _DATA_KEYS else None
        if hint:
            log.warning("initdata: data.%s is not a file the guest reads (did you mean %s?)", key[:64], hint)
    data: dict[str, str] = {}
    for key, value in raw_data.items():
        if not isinstance(value, str):
            raise InitDataError(f"initdata: data[{key!r}] must be a string")
        data[key] = value
    return InitData(bytes(untrusted_toml), version, algorithm, MappingProxyType(data))


def load_initdata(path: str | Path) -> InitData:
    """Read and validate an initdata TOML file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_INITDATA_BYTES + 1)
    except OSError as exc:
        raise InitDataError(f"initdata: cannot read {p}: {exc.strerror}") from exc
    return parse_initdata(raw)


def _gunzip(untrusted_gz: bytes, what: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(untrusted_gz)) as f:
            out = f.read(MAX_INITDATA_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InitDataError(f"{what}: not valid gzip data") from exc
    if len(out) > MAX_INITDATA_BYTES:
        raise InitDataError(f"{what}: decompresses to more than {MAX_INITDATA_BYTES} bytes")
    return out


def decode_annotation_bytes(untrusted_value: str | bytes) -> tuple[bytes, bytes]:
    """Base64-decode the annotation value; returns ``(gzip blob, TOML bytes)``."""
    # surrounding whitespace goes (a YAML block scalar leaves a newline): kata's Go
    # runtime decodes the annotation with encoding/base64, which skips newlines
    if isinstance(untrusted_value, str):
        try:
            raw = untrusted_value.strip().encode("ascii")
        except UnicodeEncodeError as exc:
            raise InitDataError(f"annotation {ANNOTATION}: not base64") from exc
    else:
        raw = bytes(untrusted_value).strip()
    if len(raw) > MAX_ANNOTATION_BYTES:
        raise InitDataError(f"annotation {ANNOTATION}: larger than {MAX_ANNOTATION_BYTES} bytes")
    try:  # as kata's STANDARD engine: canonical padding, no stray trailing bits
        gz = b64_decode(raw)
    except ValueError as exc:
        raise InitDataError(f"annotation {ANNOTATION}: not standard base64") from exc
    return gz, _gunzip(gz, f"annotation {ANNOTATION}")


def decode_annotation(untrusted_value: str | bytes) -> InitData:
    """Decode ``io.katacontainers.config.hypervisor.cc_init_data`` (base64 of gzip TOML)."""
    return parse_initdata(decode_annotation_bytes(untrusted_value)[1])


def encode_annotation(toml_bytes: bytes) -> str:
    """The annotation value for ``toml_bytes`` (deterministic gzip, mtime 0)."""
    return b64_encode(gzip.compress(toml_bytes, mtime=0))


def build_image(gzip_blob: bytes) -> bytes:
    """The initdata block-device image for an already-gzipped TOML."""
    body = IMAGE_MAGIC + struct.pack("<Q", len(gzip_blob)) + gzip_blob
    return body + b"\0" * (-len(body) % SECTOR)


def parse_image(untrusted_image: bytes) -> InitData:
    """Parse an initdata block-device image (what the agent does with the disk)."""
    header = len(IMAGE_MAGIC) + 8
    if len(untrusted_image) < header or not untrusted_image.startswith(IMAGE_MAGIC):
        raise InitDataError("initdata image: missing 'initdata' magic")
    (length,) = struct.unpack_from("<Q", untrusted_image, len(IMAGE_MAGIC))
    if length > MAX_ANNOTATION_BYTES or header + length > len(untrusted_image):
        raise InitDataError(f"initdata image: length field {length} exceeds the image")
    return parse_initdata(_gunzip(untrusted_image[header : header + length], "initdata image"))


def tee_digest(digest: bytes, tee: str) -> bytes:
    """``digest`` resized for ``tee``'s init-data field (``snp`` 32, ``tdx`` 48, ``cca`` 64)."""
    try:
        return resize(digest, DIGEST_LENGTHS[tee])
    except KeyError as exc:
        raise InitDataError(f"initdata: no init-data field known for TEE {tee!r}") from exc
