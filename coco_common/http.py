"""The one way product code builds an HTTP client.

Every outbound client (KBS, registries, KDS/PCCS, RIM/OCSP, IMDS, JWKS, ITA)
comes from here, so they share safe defaults: redirects are not followed
(a caller that wants them follows them itself, deciding what credentials go
along) and the environment's proxy and ``SSL_CERT_*`` variables are ignored
unless a caller asks for them (``trust_env=True``) or passes its own proxy
settings, so a guest never routes secrets through a proxy it was not configured
for. Keyword arguments pass through to httpx (``proxy``, ``mounts``,
``headers``, ``limits``, ``transport`` ...). httpx is imported on first use:
daemons that never make a request do not pay for it at start-up."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = ["async_client", "sync_client"]


def _options(
    verify: bool | str | ssl.SSLContext,
    timeout: float,
    connect_timeout: float | None,
    trust_env: bool,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    import httpx

    options: dict[str, Any] = {
        "verify": verify,
        "timeout": httpx.Timeout(
            timeout, connect=connect_timeout if connect_timeout is not None else timeout
        ),
        "trust_env": trust_env,
        "follow_redirects": False,
    }
    options.update(kwargs)
    return options


def async_client(
    *,
    verify: bool | str | ssl.SSLContext = True,
    timeout: float = 30.0,
    connect_timeout: float | None = None,
    trust_env: bool = False,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` with the project's defaults (see the module)."""
    import httpx

    return httpx.AsyncClient(**_options(verify, timeout, connect_timeout, trust_env, kwargs))


def sync_client(
    *,
    verify: bool | str | ssl.SSLContext = True,
    timeout: float = 30.0,
    connect_timeout: float | None = None,
    trust_env: bool = False,
    **kwargs: Any,
) -> httpx.Client:
    """An :class:`httpx.Client` with the project's defaults (see the module)."""
    import httpx

    return httpx.Client(**_options(verify, timeout, connect_timeout, trust_env, kwargs))
