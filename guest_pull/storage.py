"""The agent protocol's ``Storage`` message (``kata:src/libs/protocols/protos/agent.proto``)::

    message Storage { string driver = 1; repeated string driver_options = 2; string source = 3;
                      string fstype = 4; repeated string options = 5; string mount_point = 6;
                      FSGroup fs_group = 7; bool shared = 8; }
    message FSGroup { uint32 group_id = 2; FSGroupChangePolicy group_change_policy = 3; }

:meth:`Storage.to_protobuf` gives the wire bytes the Kata runtime sends;
:meth:`Storage.to_json` a JSON view with every field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guest_pull.errors import AgentError

__all__ = ["FSGroup", "Storage"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


@dataclass(frozen=True)
class FSGroup:
    group_id: int
    group_change_policy: int = 0  # 0 Always, 1 OnRootMismatch

    def to_protobuf(self) -> bytes:
        out = b""
        if self.group_id:
            out += _varint(2 << 3) + _varint(self.group_id)
        if self.group_change_policy:
            out += _varint(3 << 3) + _varint(self.group_change_policy)
        return out


@dataclass(frozen=True)
class Storage:
    driver: str
    driver_options: tuple[str, ...]
    source: str
    fstype: str
    options: tuple[str, ...]
    mount_point: str
    fs_group: FSGroup | None = None
    shared: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "driver_options": list(self.driver_options),
            "source": self.source,
            "fstype": self.fstype,
            "options": list(self.options),
            "mount_point": self.mount_point,
            "fs_group": None
            if self.fs_group is None
            else {
                "group_id": self.fs_group.group_id,
                "group_change_policy": self.fs_group.group_change_policy,
            },
            "shared": self.shared,
        }

    @classmethod
    def from_json(cls, untrusted: Any) -> Storage:
        if not isinstance(untrusted, dict):
            raise AgentError("Storage: must be a JSON object")
        allowed = {
            "driver",
            "driver_options",
            "source",
            "fstype",
            "options",
            "mount_point",
            "fs_group",
            "shared",
        }
        extra = sorted(set(untrusted) - allowed)
        if extra:
            raise AgentError(f"Storage: unknown field {extra[0]}")

        def s(key: str) -> str:
            v = untrusted.get(key, "")
            if not isinstance(v, str):
                raise AgentError(f"Storage: {key} must be a string")
            return v

        def lst(key: str) -> tuple[str, ...]:
            v = untrusted.get(key) or []
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise AgentError(f"Storage: {key} must be a list of strings")
            return tuple(v)

        fsg = untrusted.get("fs_group")
        group = None
        if fsg is not None:
            if not isinstance(fsg, dict) or not isinstance(fsg.get("group_id", 0), int):
                raise AgentError("Storage: fs_group must be an object with an integer group_id")
            group = FSGroup(int(fsg.get("group_id", 0)), int(fsg.get("group_change_policy", 0)))
        shared = untrusted.get("shared", False)
        if not isinstance(shared, bool):
            raise AgentError("Storage: shared must be a boolean")
        return cls(
            s("driver"),
            lst("driver_options"),
            s("source"),
            s("fstype"),
            lst("options"),
            s("mount_point"),
            group,
            shared,
        )

    def to_protobuf(self) -> bytes:
        """proto3 wire encoding (empty scalars omitted, fields in number order)."""
        out = b""
        if self.driver:
            out += _len_field(1, self.driver.encode())
        for o in self.driver_options:
            out += _len_field(2, o.encode())
        if self.source:
            out += _len_field(3, self.source.encode())
        if self.fstype:
            out += _len_field(4, self.fstype.encode())
        for o in self.options:
            out += _len_field(5, o.encode())
        if self.mount_point:
            out += _len_field(6, self.mount_point.encode())
        if self.fs_group is not None:
            out += _len_field(7, self.fs_group.to_protobuf())
        if self.shared:
            out += _varint(8 << 3) + _varint(1)
        return out
