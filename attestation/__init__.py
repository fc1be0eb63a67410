"""Evidence on SEV-SNP, TDX, NVIDIA GPUs and the ``sample`` dev platform:
collect (attesters), parse, verify against trust roots, and the Attestation
Agent service (:mod:`attestation.aa`)."""
