"""Errors of the Kata guest-pull glue, all under :class:`GlueError`.

The glue does not pull: CDH does, in its own process, so an image pull's
failure reaches the glue as a ttRPC error (kept as the cause of a
:class:`PullFailed`), never as one of ``image_pull``'s errors.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "GlueError",
    "HostStorageError",
    "KernelParamError",
    "ProfileError",
    "PullFailed",
    "VolumeError",
]


class GlueError(Exception):
    """Root of the guest-pull glue's errors. Messages name the offending field."""


class VolumeError(GlueError):
    """A ``io.katacontainers.volume=`` option is malformed (base64, JSON, type, fields)."""


class HostStorageError(GlueError):
    """The host side cannot build a Storage (no image name, bad container id, oversized annotations)."""


class AgentError(GlueError):
    """The agent side cannot handle a Storage (driver options, pause bundle, CDH call)."""


class PullFailed(AgentError):
    """CDH's ``PullImage`` of :attr:`image` failed (the ttRPC error is the cause)."""

    def __init__(self, message: str, *, image: str) -> None:
        super().__init__(message)
        self.image = image


class KernelParamError(GlueError):
    """A kernel/agent parameter has a value of the wrong form."""


class ProfileError(GlueError):
    """Unknown runtime class."""
