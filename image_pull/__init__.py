"""Pull, verify, decrypt and unpack OCI images into bundles, plus the
Kata guest-pull glue. Usable as a plain library with no KBS at all."""
