"""Authenticity of an SE attestation response against the challenge that
was issued for it: user data begins with the expected report data, the
HMAC-SHA512 measurement over the attestation items verifies with the issued
measurement key, and the request was unpacked with one of the configured host
keys (the additional data carries the image and attestation host-key hashes)."""

from __future__ import annotations

import hmac
from collections.abc import Collection
from dataclasses import dataclass

from attestation._binding import resize
from attestation.se.arcb import additional_data_phkhs, measurement
from attestation.se.errors import SeVerificationError
from attestation.se.evidence import SeResponse

__all__ = ["IssuedChallenge", "VerifiedSeResponse", "verify_response"]

_REPORT_DATA_SIZE = 64


@dataclass
class IssuedChallenge:
    """What the verifier keeps of a challenge it issued (never sent back to it)."""

    measurement_key: bytes
    nonce: bytes
    tags: bytes
    encr_nonce: bytes
    expires: float


@dataclass(frozen=True)
class VerifiedSeResponse:
    response: SeResponse
    tags: bytes
    image_phkh: bytes
    attestation_phkh: bytes


def verify_response(
    resp: SeResponse,
    issued: IssuedChallenge,
    *,
    expected_report_data: bytes,
    host_key_hashes: Collection[bytes],
) -> VerifiedSeResponse:
    """Raise SeVerificationError unless ``resp`` answers ``issued`` authentically."""
    expected = resize(expected_report_data, _REPORT_DATA_SIZE)
    if not hmac.compare_digest(resp.user_data[: len(expected)], expected):
        raise SeVerificationError("USER_DATA in the SE response does not match the expected report data")
    want = measurement(
        issued.measurement_key, issued.tags, resp.cuid, resp.user_data, issued.nonce, resp.additional_data
    )
    if not hmac.compare_digest(want, resp.measurement):
        raise SeVerificationError("the SE attestation measurement does not verify")
    image_phkh, attest_phkh = additional_data_phkhs(resp.additional_data)
    if attest_phkh not in host_key_hashes:
        raise SeVerificationError("the SE request was unpacked with a host key this KBS did not use")
    return VerifiedSeResponse(resp, issued.tags, image_phkh, attest_phkh)
