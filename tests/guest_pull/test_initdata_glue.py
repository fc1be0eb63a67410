"""Initdata end to end on the Kata side: annotation, digest placement, block image, extraction."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from attestation.initdata import ANNOTATION, InitDataError
from guest_pull.initdata import (
    decode_annotation_value,
    extract,
    find_initdata_device,
    read_annotation_file,
    summary,
)

TOML = (
    b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = """\n[token_configs.kbs]\n'
    b'url = "http://10.0.2.2:8080"\n"""\n'
)
# gzip(TOML) with mtime 0, as carried in the annotation (fixed bytes, not recomputed)
GZ = bytes.fromhex(
    "1f8b0800000000000203158c5b0a84300c00ff7b0ac901622cb888e0494424bb3e5aac8db4d1f3affd9d61e65953f612aba102c2"
    "06090c875d92577716961ddbf603665c587932c08c2a6780e2e0c52ac71ae79fc4cdef198f6f9ecc9d42b14ef5eaebba2124b468fb"
    "8eba775ea23f459aeef373000000"
)


def test_golden_image_bytes() -> None:
    assert gzip.decompress(GZ) == TOML
    dec = decode_annotation_value(base64.b64encode(GZ).decode())
    img = dec.image()
    header = bytes.fromhex("696e6974646174617700000000000000")  # "initdata" + u64 LE 119
    assert img == header + GZ + b"\0" * (512 - 16 - 119)
    assert len(img) == 512


def test_summary_and_placement() -> None:
    dec = decode_annotation_value(base64.b64encode(GZ))
    s = summary(dec, "snp")
    digest = hashlib.sha256(TOML).digest()
    assert s["version"] == "0.1.0" and s["algorithm"] == "sha256"
    assert s["digest"] == digest.hex() and s["data"] == ["aa.toml"]
    assert s["tee"]["qemu"] == "host-data=" + base64.b64encode(digest).decode()
    tdx = summary(dec, "tdx")["tee"]
    assert tdx["length"] == 48 and tdx["value_hex"] == (digest + b"\0" * 16).hex()
    assert tdx["qemu"] == '"mrconfigid":"' + base64.b64encode(digest + b"\0" * 16).decode() + '"'
    assert summary(dec, "cca")["tee"]["qemu"].startswith("personalization-value=")


def test_read_annotation_file_forms(tmp_path: Path) -> None:
    (tmp_path / "v").write_text(base64.b64encode(GZ).decode() + "\n")
    assert read_annotation_file(tmp_path / "v").initdata.raw == TOML
    (tmp_path / "a.json").write_text(json.dumps({ANNOTATION: base64.b64encode(GZ).decode(), "x": "y"}))
    assert read_annotation_file(tmp_path / "a.json").initdata.raw == TOML
    (tmp_path / "b.json").write_text(json.dumps({"x": "y"}))
    with pytest.raises(InitDataError, match=ANNOTATION):
        read_annotation_file(tmp_path / "b.json")


def test_extract_and_device_scan(tmp_path: Path) -> None:
    toml = TOML + b'"cdh.toml" = "[kbc]"\n"policy.rego" = "package agent_policy"\n"other" = "ignored"\n'
    gz = gzip.compress(toml, mtime=0)
    dec = decode_annotation_value(base64.b64encode(gz))
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "vda").write_bytes(b"\0" * 1024)  # the root disk
    (dev / "vdb").write_bytes(dec.image())
    (dev / "null").write_bytes(b"initdata")  # not a vd*/sd* device
    path, found = find_initdata_device(dev) or (None, None)
    assert path == dev / "vdb" and found is not None and found.raw == toml
    written = extract(found, tmp_path / "out")
    assert sorted(written) == ["aa.toml", "cdh.toml", "initdata.toml", "policy.rego"]
    assert (tmp_path / "out" / "initdata.toml").read_bytes() == toml
    assert (tmp_path / "out" / "cdh.toml").read_text() == "[kbc]"
    assert not (tmp_path / "out" / "other").exists()
    assert find_initdata_device(tmp_path / "missing") is None


def test_extract_failure_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dec = decode_annotation_value(base64.b64encode(gzip.compress(TOML, mtime=0)))

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(OSError):
        extract(dec.initdata, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
