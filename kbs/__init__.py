"""A reference Key Broker Service, wire-compatible with trustee 0.4.0.

Start it with ``kbs --config-file kbs-config.toml`` (trustee v0.21 format).
Layers, from the wire inwards:

* :mod:`kbs.server` - aiohttp API (``/kbs/v0/...``, ``/healthz``, ``/metrics``),
  trustee status codes and RFC 7807 bodies (:mod:`kbs.errors`, rooted at ``KbsError``);
* :mod:`kbs.app` - the services wired from a parsed :mod:`kbs.config` (start-up only);
* :mod:`kbs.sessions` - RCAR sessions (``kbs-session-id``);
* :mod:`kbs.attestation_service` - evidence binding and verification
  (:mod:`kbs.verifiers`: the registry of every TEE's ``attestation.<tee>.kbs``
  verifier, ``sample``/``sampledevice`` only when enabled), EAR appraisal (:mod:`kbs.policy`, :mod:`kbs.rvps`)
  and tokens (:mod:`kbs.ear`);
* :mod:`kbs.admin_auth` - bearer-JWT identity providers with regex ACLs, and the
  older Ed25519 persona keys (``[admin] type = "Simple"`` / ``auth_public_key``);
* :mod:`kbs.storage` - Memory, LocalFs (trustee's layout) and Redis.

Config keys beyond trustee's (all optional):
``[storage_backend.backends.redis] url``,
``[storage_backend.encryption] key_path`` (32-byte key: resources sealed at rest),
``[attestation_service] verifier_config.<tee>`` (keyword arguments for that verifier);
trustee's own ``verifier_config`` sections (``snp_verifier``, ``dcap_verifier``,
``tpm_verifier``, ``nvidia_verifier``) are applied too (:mod:`kbs.trustee_verifiers`).
Where trustee is lenient and this KBS is not: an ``[admin]`` without
``authorization_mode`` is DenyAll (trustee: InsecureAllowAll); /auth and /attest
bodies with duplicate or unknown keys are refused (still 401, as trustee).
"""
