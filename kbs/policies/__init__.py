"""Built-in attestation (EAR) policies per device class."""
