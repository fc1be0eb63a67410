"""Initdata end to end (Kata side), on top of :mod:`attestation.initdata`
(the one parser/digest implementation).

* runtime: annotation ``io.katacontainers.config.hypervisor.cc_init_data``
  (base64 of gzip TOML) → validated document → digest over the raw TOML →
  placement in the TEE field (QEMU ``sev-snp-guest host-data`` 32 bytes,
  ``tdx-guest mrconfigid`` 48, CCA ``personalization-value`` 64) and the
  initdata block image handed to the guest;
* agent: find the image on a block device (``/dev/vd*``, ``/dev/sd*``), write
  ``initdata.toml`` and the ``aa.toml`` / ``cdh.toml`` / ``policy.rego``
  entries under ``/run/confidential-containers/initdata/``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation.initdata import (
    ANNOTATION,
    DIGEST_LENGTHS,
    IMAGE_MAGIC,
    MAX_ANNOTATION_BYTES,
    InitData,
    InitDataError,
    build_image,
    decode_annotation_bytes,
    parse_image,
    parse_initdata,
    tee_digest,
)
from coco_common.files import read_bounded, write_atomic
from coco_common.strict_json import strict_object

__all__ = [
    "CONSUMED_ENTRIES",
    "INITDATA_DIR",
    "DecodedAnnotation",
    "decode_annotation_value",
    "extract",
    "find_initdata_device",
    "hypervisor_setting",
    "read_annotation_file",
    "summary",
]

INITDATA_DIR = Path("/run/confidential-containers/initdata")
#: entries of ``[data]`` the agent writes out (anything else is ignored, as Kata does)
CONSUMED_ENTRIES = ("aa.toml", "cdh.toml", "policy.rego")
_QEMU_PROPERTY = {"snp": "host-data", "tdx": "mrconfigid", "cca": "personalization-value"}
_DEVICE_READ = 2 * MAX_ANNOTATION_BYTES


@dataclass(frozen=True)
class DecodedAnnotation:
    initdata: InitData
    #: the gzip blob as carried in the annotation (reused for the block image)
    gzip_blob: bytes

    def image(self) -> bytes:
        return build_image(self.gzip_blob)


def decode_annotation_value(untrusted_value: str | bytes) -> DecodedAnnotation:
    gz, toml = decode_annotation_bytes(untrusted_value)
    return DecodedAnnotation(parse_initdata(toml), gz)


def read_annotation_file(path: str | Path) -> DecodedAnnotation:
    """A file holding the annotation value, or a JSON object of annotations
    containing ``io.katacontainers.config.hypervisor.cc_init_data``."""
    p = Path(path)
    try:
        raw = read_bounded(p, MAX_ANNOTATION_BYTES * 2)
    except OSError as exc:
        raise InitDataError(f"initdata: cannot read {p}: {exc.strerror}") from exc
    except ValueError as exc:  # too large, or not a regular file
        raise InitDataError(f"initdata: {exc}") from exc
    text = raw.strip()
    if text.startswith(b"{"):
        doc = strict_object(text, error=InitDataError, what=f"initdata: {p} is not valid JSON")
        value = doc.get(ANNOTATION)
        if not isinstance(value, str):
            raise InitDataError(f"initdata: {p} has no string annotation {ANNOTATION}")
        return decode_annotation_value(value)
    return decode_annotation_value(text)


def summary(decoded: DecodedAnnotation, tee: str | None = None) -> dict[str, Any]:
    d = decoded.initdata
    out: dict[str, Any] = {
        "version": d.version,
        "algorithm": d.algorithm,
        "digest": d.digest().hex(),
        "data": sorted(d.data),
    }
    if tee is not None:
        out["tee"] = hypervisor_setting(d, tee)
    return out


def hypervisor_setting(initdata: InitData, tee: str) -> dict[str, Any]:
    """Where the runtime puts the digest for ``tee`` (``snp``/``tdx``/``cca``)."""
    value = tee_digest(initdata.digest(), tee)
    b64 = base64.b64encode(value).decode()
    prop = _QEMU_PROPERTY[tee]
    return {
        "tee": tee,
        "length": DIGEST_LENGTHS[tee],
        "value_hex": value.hex(),
        "qemu": f'"{prop}":"{b64}"' if tee == "tdx" else f"{prop}={b64}",
    }


def extract(initdata: InitData, dest: Path = INITDATA_DIR) -> Mapping[str, Path]:
    """Write ``initdata.toml`` (raw bytes) and the consumed ``[data]`` entries."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: dict[str, Path] = {}
    write_atomic(dest / "initdata.toml", initdata.raw)
    written["initdata.toml"] = dest / "initdata.toml"
    for name in CONSUMED_ENTRIES:
        if name in initdata.data:
            write_atomic(dest / name, initdata.data[name].encode())
            written[name] = dest / name
    return written


def find_initdata_device(dev_dir: Path = Path("/dev")) -> tuple[Path, InitData] | None:
    """Scan ``vd*`` and ``sd*`` block devices for the initdata image."""
    try:
        names = sorted(n for n in os.listdir(dev_dir) if n.startswith(("vd", "sd")))
    except OSError:
        return None
    for name in names:
        path = dev_dir / name
        try:
            with path.open("rb") as f:
                head = f.read(len(IMAGE_MAGIC))
                if head != IMAGE_MAGIC:
                    continue
                data = head + f.read(_DEVICE_READ)
        except OSError:
            continue
        return path, parse_image(data)
    return None
