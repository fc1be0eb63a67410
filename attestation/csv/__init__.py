"""Hygon CSV: SM2/SM3 signatures (SM2 with the signer's user ID), the Hygon
certificate formats (HRK/HSK "CA" certificates, CEK/PEK "CSV" certificates),
attestation reports v1/v2, and the ``csv`` verifier (HRK → HSK → CEK → PEK →
report), as trustee's ``csv`` verifier."""

__all__: list[str] = []
