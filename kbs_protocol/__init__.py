"""The KBS protocol's shared wire code, used by the KBS (:mod:`kbs`) and its
client (:mod:`kbs_client`) alike, as trustee's ``kbs-types`` crate is:

* :mod:`kbs_protocol.uri`: ``kbs://`` resource URIs and the ``repo/type/tag`` path grammar;
* :mod:`kbs_protocol.jwe`: the JWE of resource answers (ECDH-ES+A256KW, RSA-OAEP-256, RSA1_5);
* :mod:`kbs_protocol.jws`: JWS / JWT signing and verification (tokens, admin tokens);
* :mod:`kbs_protocol.jcs`: JCS canonical JSON and the report-data hashes;
* :mod:`kbs_protocol.policies`: trustee's built-in resource policies (Rego);
* :mod:`kbs_protocol.errors`: the error tree and the RFC 7807 error-type prefix.

Base64 is :mod:`coco_common.b64` (unpadded base64url on the JOSE members:
``b64url_decode(text, allow_padding=False)``). Nothing here does I/O; nothing
here imports :mod:`kbs` or :mod:`kbs_client`.
"""

from __future__ import annotations

__all__: list[str] = []
