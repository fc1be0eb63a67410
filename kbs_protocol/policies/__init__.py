"""Built-in resource policies (trustee's ``allow_all``, ``deny_all``, ``affirming``, ``default``)."""

from __future__ import annotations

from importlib import resources

__all__ = ["BUILTIN_POLICIES", "builtin_policy"]

BUILTIN_POLICIES = ("allow_all", "deny_all", "affirming", "default")


def builtin_policy(name: str) -> bytes:
    if name not in BUILTIN_POLICIES:
        raise KeyError(name)
    return (resources.files(__package__) / f"{name}.rego").read_bytes()
