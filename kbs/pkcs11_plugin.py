"""trustee's ``pkcs11`` plugin: resources kept in a PKCS#11 token (an HSM; SoftHSM2 in tests)
and an RSA wrap key in it.

Routes as trustee's (``/kbs/v0/pkcs11/...``):

* ``resource/<repo>/<type>/<tag>``: GET (attestation token + resource policy, answer sealed to
  the TEE key) reads the object labelled ``<repo>/<type>/<tag>``; POST (admin) creates it as a
  generic secret (extractable, private); DELETE (admin) destroys it;
* ``wrap-key``: POST (admin) encrypts the body with the public key labelled ``lookup_label``;
  GET (token + policy, sealed) decrypts the body with the private key of that label.
  RSA-OAEP with SHA-256 / MGF1-SHA-256 (``rsa_mechanism = "RsaPkcsOaep"``, the default) or
  SHA-1 (``"RsaPkcsTest"``).

Config: ``[[plugins]] name = "pkcs11"``, ``module`` (the PKCS#11 library), ``slot_index``
(among slots with a token, default 0), ``pin`` (user PIN; never logged), ``rsa_mechanism``,
``lookup_label``. The library is blocking: every call runs in a worker thread, one at a time
(one session, as trustee)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kbs_protocol.errors import InvalidUri
from kbs_protocol.uri import parse_resource_segments

from .errors import KbsConfigError, PluginInternalError
from .external_plugin import PluginCall

__all__ = ["Pkcs11Plugin"]

#: largest resource or wrap-key body accepted
MAX_BODY = 1024 * 1024


def _fail(msg: str) -> PluginInternalError:
    return PluginInternalError(f"Plugin internal error: {msg}")


class Pkcs11Plugin:
    def __init__(self, session: Any, lookup_label: str, mechanism: str) -> None:
        self._session = session
        self._label = lookup_label
        self._mech = mechanism
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, options: Mapping[str, Any]) -> Pkcs11Plugin:
        module, pin = options.get("module"), options.get("pin")
        if not isinstance(module, str) or not isinstance(pin, str):
            raise KbsConfigError("plugins.pkcs11: module and pin are required strings")
        slot_index = options.get("slot_index", 0)
        mech = options.get("rsa_mechanism", "RsaPkcsOaep")
        if mech not in ("RsaPkcsOaep", "RsaPkcsTest"):
            raise KbsConfigError("plugins.pkcs11.rsa_mechanism must be RsaPkcsOaep or RsaPkcsTest")
        label = options.get("lookup_label", "")

        def _open() -> Any:
            import pkcs11

            lib = pkcs11.lib(module)
            slots = lib.get_slots(token_present=True)
            if not isinstance(slot_index, int) or not 0 <= slot_index < len(slots):
                raise KbsConfigError("plugins.pkcs11.slot_index: slot index out of range")
            return slots[slot_index].get_token().open(rw=True, user_pin=pin)

        try:
            session = await asyncio.to_thread(_open)
        except KbsConfigError:
            raise
        except Exception as exc:  # the module's own errors; the PIN is never part of them
            raise KbsConfigError(
                f"plugins.pkcs11: cannot open a session on the token: {type(exc).__name__}"
            ) from exc
        return cls(session, str(label), str(mech))

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, *args)
            except PluginInternalError:
                raise
            except Exception as exc:
                raise _fail(f"PKCS#11: {type(exc).__name__}") from exc

    # --- trustee's ClientPlugin -----------------------------------------------------------
    async def validate_auth(self, c: PluginCall) -> bool:
        if c.method == "GET":
            return False
        if c.method in ("POST", "DELETE"):
            return True
        raise _fail("invalid method")

    async def encrypted(self, c: PluginCall) -> bool:
        return True

    async def handle(self, c: PluginCall) -> bytes:
        if len(c.body) > MAX_BODY:
            raise _fail("body too large")
        if list(c.path) == ["wrap-key"]:
            if c.method == "POST":
                return bytes(await self._run(self._wrap, c.body))
            if c.method == "GET":
                return bytes(await self._run(self._unwrap, c.body))
            raise _fail("invalid method")
        if len(c.path) != 4 or c.path[0] != "resource":
            raise _fail("accessed path is invalid")
        try:
            label = "/".join(parse_resource_segments(c.path[1:]))
        except InvalidUri as exc:
            raise _fail("accessed path is invalid") from exc
        if c.method == "GET":
            return bytes(await self._run(self._read, label))
        if c.method == "POST":
            await self._run(self._write, label, c.body)
            return b""
        if c.method == "DELETE":
            await self._run(self._delete, label)
            return b""
        raise _fail("Illegal HTTP method. Only supports `GET`, `POST` and `DELETE`")

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._session.close)

    # --- in the worker thread --------------------------------------------------------------
    def _find(self, template: dict[Any, Any]) -> list[Any]:
        return list(self._session.get_objects(template))

    def _read(self, label: str) -> bytes:
        from pkcs11 import Attribute

        objs = self._find({Attribute.LABEL: label})
        if not objs:
            raise _fail(f"Could not find object with label {label}")
        return bytes(objs[0][Attribute.VALUE])

    def _write(self, label: str, data: bytes) -> None:
        from pkcs11 import Attribute, KeyType, ObjectClass

        # the attributes trustee sets (a session object, as there: CKA_TOKEN is not set)
        self._session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.EXTRACTABLE: True,
                Attribute.PRIVATE: True,
                Attribute.VALUE: bytes(data),
                Attribute.LABEL: label,
            }
        )

    def _delete(self, label: str) -> None:
        from pkcs11 import Attribute

        objs = self._find({Attribute.LABEL: label})
        if not objs:
            raise _fail(f"Could not find object with label {label}")
        objs[0].destroy()

    def _oaep(self) -> tuple[Any, Any]:
        from pkcs11 import MGF, Mechanism

        if self._mech == "RsaPkcsTest":
            return Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA_1, MGF.SHA1, None)
        return Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA256, MGF.SHA256, None)

    def _wrap(self, body: bytes) -> bytes:
        from pkcs11 import Attribute, ObjectClass

        keys = self._find({Attribute.LABEL: self._label, Attribute.CLASS: ObjectClass.PUBLIC_KEY})
        if not keys:
            raise _fail("unable to find public wrap key in PKCS11 module")
        mech, param = self._oaep()
        return bytes(keys[0].encrypt(body, mechanism=mech, mechanism_param=param))

    def _unwrap(self, body: bytes) -> bytes:
        from pkcs11 import Attribute, ObjectClass

        keys = self._find({Attribute.LABEL: self._label, Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        if not keys:
            raise _fail("unable to find private wrap key in PKCS11 module")
        mech, param = self._oaep()
        return bytes(keys[0].decrypt(body, mechanism=mech, mechanism_param=param))
