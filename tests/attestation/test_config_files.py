"""Files a KBS verifier's configuration names are read at start-up within a
limit for their kind, and a bad one is a typed error that names the file but
never shows its content (a private key may be in it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attestation.cca.kbs import CcaVerifier
from attestation.errors import ConfigFileError
from attestation.nvidia.kbs import NvidiaVerifier
from attestation.se.kbs import SeVerifier
from attestation.tdx.kbs import TdxVerifier
from attestation.tpm.kbs import TpmVerifier
from kbs.errors import KbsConfigError
from kbs.verifiers import VerifierRegistry

SECRET = b"-----BEGIN PRIVATE KEY-----\nTOP-SECRET-CONTENT\n"

#: TEE -> how to build its verifier with ``path`` as the file under test
BUILD: dict[str, Callable[[str], Any]] = {
    "se": lambda p: SeVerifier(measurement_key_private=p, host_key_documents=[], se_image_header=p),
    "tpm-ak-key": lambda p: TpmVerifier(trusted_ak_keys=[p]),
    "tpm-ak-ca": lambda p: TpmVerifier(ak_ca_pem=p),
    "tdx-root": lambda p: TdxVerifier(root_ca_pem=p),
    "tdx-collateral": lambda p: TdxVerifier(collateral_service=f"file://{p}"),
    "cca-ta": lambda p: CcaVerifier(ta_store=p),
    "cca-rv": lambda p: CcaVerifier(rv_store=p),
    "nvidia-root": lambda p: NvidiaVerifier(device_root_path=p),
    "nvidia-rim": lambda p: NvidiaVerifier(rim_files=[p]),
}


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_an_oversized_config_file_is_refused_unread(kind: str, tmp_path: Path) -> None:
    big = tmp_path / "huge.pem"
    with big.open("wb") as f:
        f.write(SECRET)
        f.truncate(64 << 20)  # sparse: 64 MiB that cost nothing to make
    with pytest.raises(ConfigFileError, match="larger than") as ei:
        BUILD[kind](str(big))
    assert str(big) in str(ei.value) and b"TOP-SECRET" not in str(ei.value).encode()


@pytest.mark.parametrize("kind", ["se", "tdx-root", "cca-ta"])
def test_a_missing_or_special_config_file_is_a_typed_error(kind: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"cannot read .*absent"):
        BUILD[kind](str(tmp_path / "absent"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a FIFO would block a plain read forever
    with pytest.raises(ConfigFileError, match="not a regular file"):
        BUILD[kind](str(fifo))


def test_the_kbs_reports_the_file_at_start_up(tmp_path: Path) -> None:
    big = tmp_path / "encrypt_key.pem"
    big.write_bytes(SECRET + b"A" * (1 << 20))
    opts = {
        "se": {"measurement_key_private": str(big), "host_key_documents": [], "se_image_header": str(big)}
    }
    with pytest.raises(
        KbsConfigError, match=r"verifier_config\.se: SE measurement-key wrapping key .*larger"
    ) as ei:
        VerifierRegistry(options=opts)
    assert "TOP-SECRET" not in str(ei.value)
