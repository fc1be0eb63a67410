"""CoCo runtime classes (kata-deploy) as data: which TEE, which attesters AA
should find, where the initdata digest goes, and the runtime defaults that
matter for guest pull (``kata:tools/packaging/kata-deploy/helm-chart``,
``kata:src/runtime/config/*.toml.in``; reference guest-components.md §7.5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from guest_pull.errors import ProfileError

__all__ = ["PROFILES", "RuntimeClassProfile", "profile"]


@dataclass(frozen=True)
class RuntimeClassProfile:
    name: str
    #: hypervisor TEE the shim configures ("" for none)
    tee: str
    #: what AA's primary detection should report inside the guest
    primary_attester: str
    additional_attesters: tuple[str, ...] = ()
    confidential_guest: bool = True
    #: TEE init-data field the initdata digest goes into, and its length
    initdata_field: str | None = None
    initdata_field_length: int | None = None
    snapshotter: str = "nydus"
    force_guest_pull: bool = False
    shared_fs: str = "none"
    launch_process_timeout: int = 6
    kernel_params: tuple[str, ...] = ()


_P = RuntimeClassProfile
PROFILES: Mapping[str, RuntimeClassProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            _P("kata-qemu-coco-dev", "", "sample", confidential_guest=False),
            _P("kata-qemu-snp", "snp", "snp", initdata_field="HOSTDATA", initdata_field_length=32),
            _P("kata-qemu-tdx", "tdx", "tdx", initdata_field="MRCONFIGID", initdata_field_length=48),
            _P(
                "kata-qemu-nvidia-gpu-snp",
                "snp",
                "snp",
                ("nvidia",),
                initdata_field="HOSTDATA",
                initdata_field_length=32,
                launch_process_timeout=15,
                kernel_params=("nvrc.smi.srs=1",),
            ),
            _P(
                "kata-qemu-nvidia-gpu-tdx",
                "tdx",
                "tdx",
                ("nvidia",),
                initdata_field="MRCONFIGID",
                initdata_field_length=48,
                launch_process_timeout=15,
                kernel_params=("nvrc.smi.srs=1",),
            ),
        )
    }
)


def profile(name: str) -> RuntimeClassProfile:
    try:
        return PROFILES[name]
    except KeyError as exc:
        raise ProfileError(f"unknown runtime class {name!r} (known: {', '.join(PROFILES)})") from exc
