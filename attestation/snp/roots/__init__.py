"""Package data: pinned AMD ARK/ASK/ASVK certificates (see README.md)."""
