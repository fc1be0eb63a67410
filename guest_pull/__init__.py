"""The Kata Containers guest-pull glue: how a container image pulled inside
the confidential guest travels from the host runtime to CDH.

* host side (:mod:`.host`): nydus-snapshotter ``KataVirtualVolume`` options /
  ``experimental_force_guest_pull`` → the ``Storage`` the runtime sends;
* agent side (:mod:`.agent`): ``Storage`` → pause bundle or CDH ``PullImage``;
  sealed secrets through CDH ``UnsealSecret``;
* initdata (:mod:`.initdata`), kernel parameters (:mod:`.kernel_params`),
  runtime-class profiles (:mod:`.profiles`);
* ``coco-guest-pull`` (:mod:`.cli`).
"""

from __future__ import annotations

from guest_pull.agent import CdhClient, ImagePullHandler, image_pull_volume, unseal_env
from guest_pull.errors import (
    AgentError,
    GlueError,
    HostStorageError,
    KernelParamError,
    ProfileError,
    PullFailed,
    VolumeError,
)
from guest_pull.host import guest_pull_storages, image_guest_pull_storage
from guest_pull.kernel_params import KernelParams, parse_kernel_params
from guest_pull.profiles import PROFILES, RuntimeClassProfile, profile
from guest_pull.storage import Storage
from guest_pull.volume import KataVirtualVolume, decode_volume_option, parse_volume

__all__ = [
    "PROFILES",
    "AgentError",
    "CdhClient",
    "GlueError",
    "HostStorageError",
    "ImagePullHandler",
    "KataVirtualVolume",
    "KernelParamError",
    "KernelParams",
    "ProfileError",
    "PullFailed",
    "RuntimeClassProfile",
    "Storage",
    "VolumeError",
    "decode_volume_option",
    "guest_pull_storages",
    "image_guest_pull_storage",
    "image_pull_volume",
    "parse_kernel_params",
    "parse_volume",
    "profile",
    "unseal_env",
]
