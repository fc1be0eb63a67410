"""CSV endorsements: a chip's HSK and CEK certificates (Hygon's per-chip
certificates) from ``<hsk_cek_dir>/<chip ID>/hsk_cek.cert``, trustee's offline
layout (HSK 832 bytes + CEK 2084 bytes, as Hygon's KDS serves them; the KDS
itself is never contacted)."""

from __future__ import annotations

from pathlib import Path

from attestation.csv.certs import CA_CERT_SIZE, CSV_CERT_SIZE, CaCertificate, CsvCertificate
from attestation.csv.errors import CsvFormatError, CsvVerificationError
from coco_common.files import FileTooLarge, read_bounded

__all__ = ["load_hsk_cek"]


def load_hsk_cek(hsk_cek_dir: Path | None, chip: str) -> tuple[CaCertificate, CsvCertificate]:
    """The HSK and CEK for ``chip`` (a validated chip ID); raise
    CsvVerificationError when none is configured or the file is unreadable."""
    if hsk_cek_dir is None:
        raise CsvVerificationError(
            f"no HSK/CEK for CSV chip {chip}: configure hsk_cek_dir (Hygon's KDS is not contacted)"
        )
    path = hsk_cek_dir / chip / "hsk_cek.cert"
    try:
        # the chip ID (from the evidence) picks the file: read no more than a pair
        raw = read_bounded(path, CA_CERT_SIZE + CSV_CERT_SIZE)
    except FileTooLarge as exc:
        raise CsvFormatError(f"hsk_cek.cert for CSV chip {chip} is not an HSK and a CEK") from exc
    except (OSError, ValueError) as exc:
        raise CsvVerificationError(f"no HSK/CEK for CSV chip {chip} in hsk_cek_dir") from exc
    return CaCertificate.from_bytes(raw[:CA_CERT_SIZE]), CsvCertificate.from_bytes(raw[CA_CERT_SIZE:])
