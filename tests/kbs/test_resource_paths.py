"""The KBS accepts exactly the resource paths its client can send: one grammar
(:func:`kbs_protocol.uri.parse_resource_segments`) on both sides, and what it
refuses is trustee's ``PluginInternalError`` "invalid resource path"."""

from __future__ import annotations

import httpx
import pytest

from kbs_client.rcar import attest
from kbs_client.resources import get_resource
from kbs_client.sample import SampleEvidenceSource
from kbs_protocol.errors import InvalidUri
from kbs_protocol.uri import ResourceUri

from .conftest import Kbs

ERR = "https://github.com/confidential-containers/kbs/errors/"


@pytest.mark.parametrize(
    "path",
    [
        "default/key/.hidden",
        "default/%2e%2e/k1",
        "default/key/a%20b",
        "default/key/%C3%A4",
        "default/key",
        "default/key/k1/extra",
    ],
)
async def test_kbs_refuses_what_the_client_cannot_send(kbs: Kbs, http: httpx.AsyncClient, path: str) -> None:
    r = await http.post(f"{kbs.url}/kbs/v0/resource/{path}", content=b"v", headers=kbs.admin_headers())
    assert r.status_code == 401 and r.json()["type"] == ERR + "PluginInternalError", r.text
    with pytest.raises(InvalidUri):
        ResourceUri.parse(httpx.URL(f"http://x/{path}").path.removeprefix("/"))


async def test_kbs_serves_every_path_the_client_sends(kbs: Kbs, http: httpx.AsyncClient) -> None:
    await kbs.policy(http, "allow_all")
    paths = ["default/key/k1", "A-b_c/9.x/-lead", "r/t/tag.with.dots", "_/_/_"]
    for p in paths:
        await kbs.seed(http, p, p.encode())
    att = await attest(http, kbs.url, SampleEvidenceSource(), attempts=1)
    for p in paths:
        uri = ResourceUri.parse(f"kbs:///{p}")
        assert await get_resource(http, kbs.url, uri, token=att.token, key=att.key) == p.encode()
