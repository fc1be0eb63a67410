"""Errors of the Kata guest-pull glue (rooted in :class:`image_pull.errors.ImagePullError`)."""

from __future__ import annotations

from image_pull.errors import ImagePullError

__all__ = ["AgentError", "GlueError", "HostStorageError", "KernelParamError", "ProfileError", "VolumeError"]


class GlueError(ImagePullError):
    """Root of the guest-pull glue's errors. Messages name the offending field."""


class VolumeError(GlueError):
    """A ``io.katacontainers.volume=`` option is malformed (base64, JSON, type, fields)."""


class HostStorageError(GlueError):
    """The host side cannot build a Storage (no image name, bad container id, oversized annotations)."""


class AgentError(GlueError):
    """The agent side cannot handle a Storage (driver options, pause bundle, CDH call)."""


class KernelParamError(GlueError):
    """A kernel/agent parameter has a value of the wrong form."""


class ProfileError(GlueError):
    """Unknown runtime class."""
