"""AMD SEV-SNP: parse attestation reports, collect them in the guest
(configfs-tsm, /dev/sev-guest), verify them against the pinned AMD roots, and
validate them against a policy.

Entry points: :class:`attestation.snp.attester.SnpAttester` (guest side),
:class:`attestation.snp.kbs.SnpVerifier` (KBS side),
:func:`attestation.snp.verify.verify_report` and
:func:`attestation.snp.policy.validate` (library), ``coco-verify snp`` (CLI).
"""

__all__: list[str] = []
