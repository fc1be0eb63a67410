"""Host side: KataVirtualVolume decoding and the exact Storage Kata sends."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from guest_pull.errors import HostStorageError, VolumeError
from guest_pull.host import guest_pull_storages, image_guest_pull_storage, load_annotations
from guest_pull.storage import FSGroup, Storage
from guest_pull.volume import (
    KataVirtualVolume,
    decode_volume_option,
    encode_volume_option,
    parse_volume,
)

CID = "cb0b47276ea66ee9f44cc53afa94d7980b57a52c3f306f68cb034e58d9fbd3c6"
CONTAINERD = {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.image-name": "quay.io/kata-containers/confidential-containers:unsigned",
    "io.kubernetes.cri.sandbox-name": "pod-1",
    "io.katacontainers.pkg.oci.container_type": "pod_container",
}


def _opt(doc: object) -> str:
    return "io.katacontainers.volume=" + base64.b64encode(json.dumps(doc).encode()).decode()


NYDUS = _opt(
    {
        "volume_type": "image_guest_pull",
        "source": "overlay",
        "options": ["containerd.io/snapshot/nydus-proxy-mode=true"],
        "image_pull": {"metadata": {"containerd.io/snapshot/nydus-proxy-mode": "true", "a&b": "<x>"}},
    }
)

GOLDEN_DRIVER_OPTION = (
    'image_guest_pull={"metadata":{"a\\u0026b":"\\u003cx\\u003e",'
    '"containerd.io/snapshot/nydus-proxy-mode":"true",'
    '"io.katacontainers.pkg.oci.container_type":"pod_container",'
    '"io.kubernetes.cri.container-type":"container",'
    '"io.kubernetes.cri.image-name":"quay.io/kata-containers/confidential-containers:unsigned",'
    '"io.kubernetes.cri.sandbox-name":"pod-1"}}'
)


def test_nydus_volume_to_storage_golden() -> None:
    (s,) = guest_pull_storages(CID, CONTAINERD, ["ro", NYDUS])
    assert s.to_json() == {
        "driver": "image_guest_pull",
        "driver_options": [GOLDEN_DRIVER_OPTION],
        "source": "quay.io/kata-containers/confidential-containers:unsigned",
        "fstype": "overlay",
        "options": [],
        "mount_point": f"/run/kata-containers/{CID}/rootfs",
        "fs_group": None,
        "shared": False,
    }


def _storage_class() -> type:
    """agent.proto's Storage built with the protobuf runtime (an independent encoder)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="test_agent_storage.proto", package="grpc", syntax="proto3")
    fsg = fdp.message_type.add(name="FSGroup")
    fsg.field.add(name="group_id", number=2, type=13, label=1)
    fsg.field.add(name="group_change_policy", number=3, type=5, label=1)
    m = fdp.message_type.add(name="Storage")
    for name, num, typ, label in [
        ("driver", 1, 9, 1),
        ("driver_options", 2, 9, 3),
        ("source", 3, 9, 1),
        ("fstype", 4, 9, 1),
        ("options", 5, 9, 3),
        ("mount_point", 6, 9, 1),
        ("shared", 8, 8, 1),
    ]:
        m.field.add(name=name, number=num, type=typ, label=label)
    m.field.add(name="fs_group", number=7, type=11, label=1, type_name=".grpc.FSGroup")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return GetMessageClass(pool.FindMessageTypeByName("grpc.Storage"))


def test_protobuf_bytes_match_the_protobuf_runtime() -> None:
    (s,) = guest_pull_storages(CID, CONTAINERD, [NYDUS])
    cls = _storage_class()
    ref = cls(
        driver=s.driver,
        driver_options=list(s.driver_options),
        source=s.source,
        fstype=s.fstype,
        mount_point=s.mount_point,
    )
    assert s.to_protobuf() == ref.SerializeToString(deterministic=True)
    s2 = Storage("d", ("x", "y"), "src", "ext4", ("ro",), "/m", FSGroup(1000, 1), True)
    ref2 = cls(
        driver="d",
        driver_options=["x", "y"],
        source="src",
        fstype="ext4",
        options=["ro"],
        mount_point="/m",
        shared=True,
    )
    ref2.fs_group.group_id = 1000
    ref2.fs_group.group_change_policy = 1
    assert s2.to_protobuf() == ref2.SerializeToString(deterministic=True)
    assert Storage.from_json(s2.to_json()) == s2


def test_crio_and_sandbox_and_fallback() -> None:
    crio = {
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ImageName": "docker.io/library/busybox:1",
    }
    (s,) = guest_pull_storages(CID, crio, [NYDUS])
    assert s.source == "docker.io/library/busybox:1"
    sandbox = dict(
        CONTAINERD,
        **{
            "io.katacontainers.pkg.oci.container_type": "pod_sandbox",
            "io.kubernetes.cri.container-type": "sandbox",
        },
    )
    (s,) = guest_pull_storages(CID, sandbox, [], force_guest_pull=True)
    assert s.source == "pause"
    assert json.loads(s.driver_options[0].split("=", 1)[1])["metadata"] == sandbox
    # no CRI key: the container_type annotation does not count (Kata), image name is the fallback
    nerdctl = {
        "io.katacontainers.pkg.oci.container_type": "pod_sandbox",
        "io.kubernetes.cri.image-name": "img:1",
    }
    (s,) = guest_pull_storages(CID, nerdctl, [], force_guest_pull=True)
    assert s.source == "img:1"


def test_force_by_sandbox_annotation_and_not_guest_pull() -> None:
    ann = dict(CONTAINERD, **{"io.katacontainers.config.runtime.experimental_force_guest_pull": "true"})
    (s,) = guest_pull_storages(CID, ann, [])
    assert json.loads(s.driver_options[0].split("=", 1)[1])["metadata"] == ann
    assert guest_pull_storages(CID, CONTAINERD, ["ro", "lowerdir=/x"]) == []
    # non-guest-pull virtual volumes produce no Storage
    direct = _opt({"volume_type": "direct_block", "source": "/dev/vdb", "direct_volume": {"metadata": {}}})
    assert guest_pull_storages(CID, CONTAINERD, [direct]) == []


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("io.katacontainers.volume=!!notbase64!!", "base64"),
        ("io.katacontainers.volume=" + base64.b64encode(b"{not json").decode(), "JSON"),
        (_opt({"volume_type": "magic_type"}), "unknown volume_type"),
        (_opt({"source": "x"}), "volume_type is required"),
        (_opt({"volume_type": "image_guest_pull"}), "image_pull.metadata"),
        (_opt({"volume_type": "image_guest_pull", "image_pull": {"metadata": None}}), "image_pull.metadata"),
        (_opt({"volume_type": "image_guest_pull", "image_pull": {"metadata": {"a": 1}}}), "metadata['a']"),
        (
            _opt({"volume_type": "image_guest_pull", "image_pull": {"metadata": {}}, "surprise": 1}),
            "surprise",
        ),
        (
            _opt({"volume_type": "image_guest_pull", "image_pull": {"metadata": {}}, "options": "ro"}),
            "options",
        ),
        (_opt({"volume_type": "image_nydus_fs", "nydus_image": {}}), "nydus_image"),
        (_opt({"volume_type": "layer_raw_block", "dm_verity": {"hashtype": "md5"}}), "dm_verity.hashtype"),
    ],
)
def test_bad_volumes(option: str, needle: str) -> None:
    with pytest.raises(VolumeError) as ei:
        guest_pull_storages(CID, CONTAINERD, [option])
    assert needle in str(ei.value)


def test_duplicate_keys_rejected() -> None:
    raw = '{"volume_type":"image_guest_pull","volume_type":"direct_block","image_pull":{"metadata":{}}}'
    with pytest.raises(VolumeError, match="duplicate"):
        parse_volume(raw)


def test_deeply_nested_json_is_a_typed_error(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(VolumeError, match="KataVirtualVolume: JSON nested too deeply"):
        parse_volume(deep)
    (tmp_path / "deep.json").write_text(deep)
    with pytest.raises(HostStorageError, match="not valid JSON"):
        load_annotations(tmp_path / "deep.json")


def test_all_volume_types_parse_and_round_trip() -> None:
    vols = [
        {
            "volume_type": "direct_block",
            "source": "/dev/vdb",
            "fs_type": "ext4",
            "options": ["ro"],
            "direct_volume": {"metadata": {"k": "v"}},
        },
        {"volume_type": "image_raw_block", "source": "/dev/vdc"},
        {
            "volume_type": "layer_raw_block",
            "source": "/dev/vdd",
            "dm_verity": {
                "hashtype": "sha256",
                "hash": "ab" * 32,
                "blocknum": 16,
                "blocksize": 4096,
                "hashsize": 4096,
                "offset": 65536,
            },
        },
        {"volume_type": "image_nydus_block", "nydus_image": {"config": "{}", "snapshot_dir": ""}},
        {"volume_type": "layer_nydus_block", "source": "/dev/vde"},
        {"volume_type": "image_nydus_fs", "nydus_image": {"config": "", "snapshot_dir": "/snap"}},
        {"volume_type": "layer_nydus_fs", "source": "/x"},
        {"volume_type": "image_guest_pull", "image_pull": {"metadata": {}}},
    ]
    for doc in vols:
        v = decode_volume_option(_opt(doc))
        assert decode_volume_option(encode_volume_option(v)) == v
    bad = dict(vols[2])
    bad["dm_verity"] = dict(bad["dm_verity"], offset=100)  # type: ignore[arg-type]
    with pytest.raises(VolumeError, match="offset"):
        decode_volume_option(_opt(bad))


def test_missing_image_name_and_bad_ids() -> None:
    with pytest.raises(HostStorageError, match=r"io\.kubernetes\.cri\.image-name"):
        guest_pull_storages(CID, {"io.kubernetes.cri.container-type": "container"}, [NYDUS])
    with pytest.raises(HostStorageError, match=r"io\.kubernetes\.cri-o\.ImageName"):
        guest_pull_storages(CID, {"io.kubernetes.cri-o.ContainerType": "container"}, [NYDUS])
    for bad in ("../etc", "a/b", "", "-x"):
        with pytest.raises(HostStorageError, match="container id"):
            image_guest_pull_storage(bad, CONTAINERD, KataVirtualVolume("image_guest_pull", image_pull={}))


def test_annotation_files(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text(json.dumps(CONTAINERD))
    assert load_annotations(tmp_path / "ok.json") == CONTAINERD
    (tmp_path / "big.json").write_text(json.dumps({"a": "x" * (300 * 1024)}))
    with pytest.raises(HostStorageError, match="exceed"):
        load_annotations(tmp_path / "big.json")
    (tmp_path / "num.json").write_text('{"a": 1}')
    with pytest.raises(HostStorageError, match="'a' must be a string"):
        load_annotations(tmp_path / "num.json")
    (tmp_path / "dup.json").write_text('{"a": "1", "a": "2"}')
    with pytest.raises(HostStorageError, match="duplicate"):
        load_annotations(tmp_path / "dup.json")
