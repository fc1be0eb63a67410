"""Trust anchors shipped with :mod:`attestation.nvidia` (see README.md here)."""
