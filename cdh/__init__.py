"""The Confidential Data Hub: resources, sealed secrets, secure mounts,
the ocicrypt key provider and image pull, over ttRPC and gRPC.

Modules:

* :mod:`cdh.config` — ``cdh.toml`` (current and legacy keys), kernel-cmdline
  fallback, environment overrides, ocicrypt key-provider config.
* :mod:`cdh.kbc` — resource URIs, ``cc_kbc`` (an adapter over
  :class:`kbs_client.resources.ResourceClient` with the token from AA), ``offline_fs_kbc``.
* :mod:`cdh.sealed_secret` — ``sealed.`` ES256 JWS secrets (vault/envelope).
* :mod:`cdh.secure_mount` — LUKS2 block-device mounts via cryptsetup.
* :mod:`cdh.keyprovider` — ocicrypt ``UnWrapKey``.
* :mod:`cdh.image` — PullImage via :mod:`image_pull` + AAEL measurement.
* :mod:`cdh.hub` — :class:`~cdh.hub.Hub` and the five RPC services.
* :mod:`cdh.cli`, :mod:`cdh.oneshot`, :mod:`cdh.api_server_rest` — commands.
* :mod:`cdh.crypto`, :mod:`cdh.files` — strict JSON/base64, AES unwrapping, bounded file reads.

Where we differ from upstream on purpose (none of it is on the wire):

* one KBS token is reused across resource fetches until it expires or the
  KBS rejects it (upstream attests again for every resource);
* SecureMount with ``sourceType=empty`` refuses a device that already holds a
  LUKS header or already has a detached header, instead of reformatting it;
* the KBS connection takes its trust anchors (``[kbc] kbs_cert``, else the
  default CA bundle) and its route from the configuration only: ``SSL_CERT_FILE`` and the
  ``*_PROXY`` variables are ignored;
* unknown configuration keys are reported in a warning (upstream ignores them);
* sealed-secret JSON is parsed strictly (duplicate or unknown keys refused).
"""

from cdh.errors import CdhError

__all__ = ["CdhError"]
