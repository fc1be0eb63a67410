"""Expected launch measurements (sev-snp-measure) and KBS reference values.

The upstream OVMF fixtures (firmware binaries) are not in this repository, so
the tests synthesize a minimal OVMF image with the parts the measurement reads:
the GUIDed footer table (SEV-ES reset block, SEV metadata pointer, SEV hashes
table) and an ``ASEV`` metadata block (SNP_SEC_MEM, SNP_SECRETS, CPUID,
SNP_KERNEL_HASHES sections). The OVMF-only part of the digest is recomputed
independently here from the PAGE_INFO chain (evidence.md §1.6).
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from pathlib import Path

import pytest

from attestation.snp.errors import SnpFormatError
from attestation.snp.measure import (
    LaunchConfig,
    launch_digest,
    main,
    ovmf_hash,
    reference_value_message,
    reference_values,
)
from attestation.snp.policy import SnpPolicy, validate
from attestation.snp.report import AttestationReport, Product, TcbVersion
from attestation.snp.verify import verify_report

from .synth import NOW, SynthPki, build_report, endorsement, sign

FOOTER = "96b582de-1fb2-45f7-baea-a366c55a082d"
HASHES = "7255371f-3a3b-4b04-927b-1da6efa8d454"
RESET = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
META = "dc886566-984a-4798-a75e-5585a7bf67cc"
SIZE = 64 * 1024


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def synth_ovmf(path: Path, *, seed: int = 1) -> Path:
    img = bytearray(hashlib.shake_256(bytes([seed])).digest(SIZE))  # arbitrary "code"
    meta_off = 0x1000  # the metadata block sits 0x1000 bytes before the end
    sections = [
        (0x800000, 0x9000, 1),  # SNP_SEC_MEM
        (0x809000, 0x1000, 2),  # SNP_SECRETS
        (0x80A000, 0x1000, 3),  # CPUID
        (0x80B000, 0x1000, 0x10),  # SNP_KERNEL_HASHES
    ]
    meta = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<III", *s) for s in sections)
    img[SIZE - meta_off : SIZE - meta_off + len(meta)] = meta
    table = (
        _entry(RESET, struct.pack("<I", 0xFFFFF000))
        + _entry(META, struct.pack("<I", meta_off))
        + _entry(HASHES, struct.pack("<II", 0x80B000 + 0x400, 0x1000 - 0x400))
    )
    footer = struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER).bytes_le
    end = SIZE - 32
    img[end - 18 - len(table) : end] = table + footer
    path.write_bytes(bytes(img))
    return path


def _independent_ovmf_hash(data: bytes) -> bytes:
    ld = bytes(48)
    gpa = (1 << 32) - len(data)
    for off in range(0, len(data), 4096):
        contents = hashlib.sha384(data[off : off + 4096]).digest()
        info = ld + contents + struct.pack("<HBBBBBBQ", 0x70, 1, 0, 0, 0, 0, 0, gpa + off)
        assert len(info) == 0x70
        ld = hashlib.sha384(info).digest()
    return ld


def test_ovmf_hash_matches_an_independent_page_info_chain(tmp_path: Path) -> None:
    ovmf = synth_ovmf(tmp_path / "OVMF.fd")
    assert ovmf_hash(ovmf) == _independent_ovmf_hash(ovmf.read_bytes())


def test_launch_digest_inputs_matter(tmp_path: Path) -> None:
    ovmf = synth_ovmf(tmp_path / "OVMF.fd")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    base = LaunchConfig(ovmf)
    d = launch_digest(base)
    assert len(d) == 48 and launch_digest(base) == d
    variants = [
        LaunchConfig(ovmf, vcpus=4),
        LaunchConfig(ovmf, guest_features=0x1),
        LaunchConfig(ovmf, vcpu_type="EPYC-Milan"),
        LaunchConfig(ovmf, kernel=kernel, append="console=ttyS0"),
        LaunchConfig(ovmf, kernel=kernel, append="console=ttyS1"),
        LaunchConfig(synth_ovmf(tmp_path / "OVMF2.fd", seed=2)),
    ]
    digests = {launch_digest(v) for v in variants}
    assert d not in digests and len(digests) == len(variants)
    # a precomputed OVMF hash gives the same digest as hashing the image
    assert launch_digest(LaunchConfig(ovmf, ovmf_hash=ovmf_hash(ovmf))) == d


def test_bad_inputs(tmp_path: Path) -> None:
    ovmf = synth_ovmf(tmp_path / "OVMF.fd")
    with pytest.raises(SnpFormatError):
        launch_digest(LaunchConfig(ovmf, vcpus=0))
    with pytest.raises(SnpFormatError):
        launch_digest(LaunchConfig(ovmf, vcpu_type="Pentium"))
    with pytest.raises(SnpFormatError):
        launch_digest(LaunchConfig(ovmf, append="x"))
    with pytest.raises(SnpFormatError):
        launch_digest(LaunchConfig(tmp_path / "missing.fd"))


def test_reference_values_load_into_the_kbs_rvps_and_match_claims(tmp_path: Path) -> None:
    from kbs import rvps

    ovmf = synth_ovmf(tmp_path / "OVMF.fd")
    digest = launch_digest(LaunchConfig(ovmf, vcpus=2))
    values = reference_values([digest, digest])
    assert values == {"snp_launch_measurement": [digest.hex()]}
    msg = reference_value_message(values)
    assert rvps.parse_message(json.dumps(msg).encode()) == values
    # a report launched with that digest yields the same string in its claims
    pki = SynthPki.create(Product.GENOA)
    tcb = TcbVersion.build(bootloader=3, tee=0, snp=8, microcode=115)
    key, der = pki.leaf(tcb=tcb, hwid=bytes(range(64)))
    report = AttestationReport.from_bytes(
        sign(build_report(product=Product.GENOA, tcb=tcb, measurement=digest), key)
    )
    v = verify_report(report, endorsement(der), trust=pki.trust(), now=NOW)
    assert v.trustee_claims()["measurement"] in values["snp_launch_measurement"]
    validate(v, SnpPolicy(measurements=frozenset({digest})))
    with pytest.raises(SnpFormatError):
        reference_values([b"short"])


def test_module_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ovmf = synth_ovmf(tmp_path / "OVMF.fd")
    assert main(["--ovmf", str(ovmf), "--vcpus", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["measurement"] == launch_digest(LaunchConfig(ovmf, vcpus=2)).hex()
    assert out["reference_value_message"]["type"] == "sample"
    assert main(["--ovmf", str(tmp_path / "nope")]) == 1
