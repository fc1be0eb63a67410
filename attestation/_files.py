"""Files a verifier's configuration names (keys, certificates, stores), read
at start-up within a limit per kind of file."""

from __future__ import annotations

from pathlib import Path

from attestation.errors import ConfigFileError
from coco_common.files import FileTooLarge, read_bounded

__all__ = ["PEM_BUNDLE_LIMIT", "PEM_LIMIT", "read_config_file"]

#: one PEM key or certificate (a 16384-bit RSA key is under 13 KiB)
PEM_LIMIT = 64 << 10
#: a PEM file of several CA certificates
PEM_BUNDLE_LIMIT = 1 << 20


def read_config_file(path: str | Path, limit: int, what: str) -> bytes:
    """The content of the configured file ``path`` (a ``what``), at most ``limit``
    bytes; :class:`ConfigFileError` naming the file otherwise."""
    try:
        return read_bounded(path, limit)
    except FileTooLarge as exc:
        raise ConfigFileError(f"{what} {path} is larger than {limit} bytes") from exc
    except ValueError as exc:  # a FIFO, a device, a directory
        raise ConfigFileError(f"{what} {path} is not a regular file") from exc
    except OSError as exc:
        raise ConfigFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
