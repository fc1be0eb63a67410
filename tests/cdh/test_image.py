"""[image] -> image_pull PullerConfig, and the measurement content."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cdh.config import CdhImageConfig
from cdh.errors import CdhConfigError, ImagePullFailed
from cdh.image import ImagePullService, measurement_content
from image_pull.puller import ImagePuller
from image_pull.registries_conf import Mirror, ProxyConfig, RegistryConfig, RegistryRule
from image_pull.trust import InvalidPolicy, TrustPolicy
from tests.cdh.conftest import DictResources

AUTH = json.dumps({"auths": {"r.example": {"auth": "dTpw"}}}).encode()
REGCONF = b"""
unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "r.example/foo"
location = "mirror.local:5000/foo"
insecure = true
"""


def test_measurement_content_bytes() -> None:
    assert measurement_content("docker.io/library/busybox:latest", "sha256:00") == (
        '{"image":"docker.io/library/busybox:latest", "digest":"sha256:00"}'
    )


async def test_build_config_fetches_from_kbs_and_files(tmp_path: Path) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    cfg = CdhImageConfig(
        work_dir=tmp_path / "w",
        authenticated_registry_credentials_uri="kbs:///default/credential/test",
        image_security_policy_uri=f"file://{pol}",
        registry_configuration_uri="kbs:///default/registry-configuration/test",
        max_concurrent_layer_downloads_per_image=7,
        extra_root_certificates=("PEM-A",),
        image_pull_proxy=ProxyConfig.from_list("http://p:1", None, "a.local, b.local"),
    )
    res = DictResources(
        {"kbs:///default/credential/test": AUTH, "kbs:///default/registry-configuration/test": REGCONF}
    )
    pc = await ImagePullService(cfg, resources=res, aa=None).build_config()
    assert pc.work_dir == tmp_path / "w" and pc.auth_json == AUTH
    assert isinstance(pc.signature_policy, TrustPolicy)  # parsed when the client is set up
    assert pc.max_concurrent_layers == 7 and pc.extra_root_certs == (b"PEM-A",)
    assert pc.proxy is not None and pc.proxy.https_proxy == "http://p:1"
    assert pc.proxy.no_proxy == ("a.local", "b.local")
    # the registry configuration's insecure rule, applied once (by image_pull), to the host
    assert pc.registry_config is not None and pc.insecure_registries == frozenset()
    async with ImagePuller(dataclasses.replace(pc, extra_root_certs=())) as puller:
        assert puller.registry.scheme_for("mirror.local:5000") == "http"
        assert puller.registry.scheme_for("r.example") == "https"
    getter = pc.signature_policy.resource_getter  # kbs:// keys of the policy come through the KBC
    assert getter is not None and await getter("kbs:///default/credential/test") == AUTH


async def test_inline_registry_config_and_policy_win(tmp_path: Path) -> None:
    cfg = CdhImageConfig(
        work_dir=tmp_path,
        image_security_policy='{"default":[{"type":"reject"}]}',
        registry_configuration_uri="kbs:///never/fetched/x",
        registry_config=RegistryConfig(
            ("docker.io",), (RegistryRule("a", "a", mirrors=(Mirror("m:1", insecure=True),)),)
        ),
    )
    res = DictResources()
    pc = await ImagePullService(cfg, resources=res, aa=None).build_config()
    assert isinstance(pc.signature_policy, TrustPolicy)
    assert pc.registry_config is not None and pc.registry_config.insecure_hosts() == {"m:1"}
    assert res.calls == []


async def test_a_bad_policy_fails_the_set_up_with_its_reason(tmp_path: Path) -> None:
    """The policy is parsed when the image client is set up: a bad one is refused there,
    naming what is wrong, before any registry is contacted."""
    cfg = CdhImageConfig(work_dir=tmp_path, image_security_policy='{"default":[{"type":"signedby"}]}')
    h = ImagePullService(cfg, resources=None, aa=None)
    with pytest.raises(InvalidPolicy, match="did you mean 'signedBy'"):
        await h.build_config()
    with pytest.raises(ImagePullFailed, match=r"cannot set up the image client: .*did you mean 'signedBy'"):
        await h.pull("127.0.0.1:9/x:1", str(tmp_path / "b"))


async def test_build_failures_are_clear(tmp_path: Path) -> None:
    h = ImagePullService(
        CdhImageConfig(work_dir=tmp_path, authenticated_registry_credentials_uri="kbs:///no/such/auth"),
        resources=DictResources(),
        aa=None,
    )
    with pytest.raises(ImagePullFailed, match="cannot set up the image client"):
        await h.pull("r/x:1", str(tmp_path / "b"))
    bad = ImagePullService(
        CdhImageConfig(work_dir=tmp_path, registry_configuration_uri="kbs:///r/c/t"),
        resources=DictResources({"kbs:///r/c/t": b"[[[not toml"}),
        aa=None,
    )
    with pytest.raises(CdhConfigError, match="not valid TOML"):
        await bad.build_config()
    with pytest.raises(ImagePullFailed, match="absolute"):
        await h.pull("r/x:1", "relative/bundle")


async def test_only_image_pull_errors_reach_the_message(tmp_path: Path) -> None:
    """Text of arbitrary exceptions (which may carry credentials) stays out of the
    error that becomes the RPC message and the log line; image_pull's own errors,
    written to be shown, pass through."""
    from image_pull.errors import NotFound

    class Puller:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        async def pull(self, image_ref: str, bundle_dir: Path) -> None:
            raise self.exc

    def handler(factory: object) -> ImagePullService:
        return ImagePullService(
            CdhImageConfig(work_dir=tmp_path), resources=None, aa=None, puller_factory=factory
        )  # type: ignore[arg-type]

    leak = RuntimeError("proxy http://user:hunter2@proxy:3128 refused")
    with pytest.raises(ImagePullFailed) as ei:
        await handler(lambda cfg: Puller(leak)).pull("r/x:1", str(tmp_path / "b"))
    assert "hunter2" not in str(ei.value) and "RuntimeError" in str(ei.value)

    def broken_factory(cfg: object) -> None:
        raise ValueError('auth_json=b\'{"auths": {"r": {"auth": "hunter2"}}}\'')

    with pytest.raises(ImagePullFailed, match="cannot set up the image client") as ei:
        await handler(broken_factory).pull("r/x:1", str(tmp_path / "b"))
    assert "hunter2" not in str(ei.value) and "ValueError" in str(ei.value)

    with pytest.raises(ImagePullFailed, match="manifest unknown"):
        await handler(lambda cfg: Puller(NotFound("manifest unknown"))).pull("r/x:1", str(tmp_path / "b"))
