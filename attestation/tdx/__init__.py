"""Intel TDX: DCAP quote parsing (v3/v4/v5), verification against the Intel SGX
Root CA with explicit time and collateral, TCB status, the guest attester
(configfs-tsm, /dev/tdx_guest, RTMR sysfs) and ``coco-verify tdx``.

Entry points: :class:`attestation.tdx.attester.TdxAttester` (guest side),
:class:`attestation.tdx.kbs.TdxVerifier` (KBS side),
:func:`attestation.tdx.verify.verify_quote`,
:func:`attestation.tdx.tcb.evaluate_tcb` and
:class:`attestation.tdx.policy.TdxPolicy` (library), ``coco-verify tdx`` (CLI).
Modules follow the TEE vocabulary: ``quote``/``tdreport`` parse, ``evidence``
the JSON envelope, ``device``/``attester``/``registers`` collect,
``endorsements`` fetch and cache collateral, ``collateral`` model and check it,
``verify`` authenticity, ``tcb`` TCB status, ``policy``, ``kbs``, ``errors``.
"""

__all__: list[str] = []
