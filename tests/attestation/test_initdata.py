"""Initdata: validation, digest over the raw bytes, annotation and disk-image encodings."""

from __future__ import annotations

import base64
import gzip
import hashlib
import struct
from pathlib import Path

import pytest

from attestation.initdata import (
    ANNOTATION,
    InitDataError,
    build_image,
    decode_annotation,
    encode_annotation,
    load_initdata,
    parse_image,
    parse_initdata,
    tee_digest,
)

TOML = (
    b'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n"aa.toml" = \'\'\'\n[token_configs.kbs]\n'
    b"url = \"http://10.0.2.2:8080\"\n'''\n\"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\n"
    b"url = \"http://10.0.2.2:8080\"\n'''\n"
)


def test_digest_is_over_raw_bytes_with_the_toml_algorithm() -> None:
    d = parse_initdata(TOML)
    assert d.version == "0.1.0" and d.algorithm == "sha384"
    assert d.digest() == hashlib.sha384(TOML).digest()
    assert set(d.data) == {"aa.toml", "cdh.toml"}
    assert d.data["aa.toml"].startswith("[token_configs.kbs]")
    # a semantically equal document with different bytes has a different digest
    spaced = TOML.replace(b'version = "0.1.0"', b'version   =   "0.1.0"')
    assert parse_initdata(spaced).digest() != d.digest()
    for alg, fn in (("sha256", hashlib.sha256), ("sha512", hashlib.sha512)):
        raw = TOML.replace(b"sha384", alg.encode())
        assert parse_initdata(raw).digest() == fn(raw).digest()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (TOML.replace(b'"0.1.0"', b'"9.9.9"'), "version"),
        (TOML.replace(b'version = "0.1.0"\n', b""), "version"),
        (TOML.replace(b'"sha384"', b'"md5"'), "algorithm"),
        (TOML.replace(b'"sha384"', b"384"), "algorithm"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\ndata = 3\n', "data"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\nx = 1\n', "data['x']"),
        (b"version = ", "TOML"),
        (b"\xff\xfe", "UTF-8"),
        (b'version = "0.1.0"\nversion = "0.1.0"\n', "TOML"),
    ],
)
def test_bad_initdata_is_rejected_naming_the_field(raw: bytes, needle: str) -> None:
    with pytest.raises(InitDataError, match=None) as ei:
        parse_initdata(raw)
    assert needle in str(ei.value)


def test_oversized_initdata() -> None:
    with pytest.raises(InitDataError, match="larger"):
        parse_initdata(b"#" * (2 << 20))


def test_annotation_round_trip_and_errors() -> None:
    value = base64.b64encode(gzip.compress(TOML)).decode()
    assert decode_annotation(value).raw == TOML
    assert decode_annotation(encode_annotation(TOML)).raw == TOML
    with pytest.raises(InitDataError, match="base64"):
        decode_annotation("!!notbase64!!")
    with pytest.raises(InitDataError, match="gzip"):
        decode_annotation(base64.b64encode(b"plain text").decode())
    bomb = base64.b64encode(gzip.compress(b"#" * (3 << 20))).decode()
    with pytest.raises(InitDataError, match="more than"):
        decode_annotation(bomb)
    with pytest.raises(InitDataError, match=ANNOTATION):
        decode_annotation("A" * ((1 << 20) + 4))


def test_annotation_base64_is_canonical_as_katas() -> None:
    """Stray trailing bits before the padding (which a lenient decoder drops) and
    missing padding are refused, as kata's STANDARD engine does; a trailing newline
    (a YAML block scalar) is not an error."""
    toml = next(t for t in (TOML + b"#" * n for n in range(64)) if len(gzip.compress(t, mtime=0)) % 3)
    value = encode_annotation(toml)
    assert value.endswith("=")
    body = value.rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stray = body[:-1] + alphabet[alphabet.index(body[-1]) + 1] + value[len(body) :]
    assert base64.b64decode(stray, validate=True) == base64.b64decode(value)  # what the lenient path took
    with pytest.raises(InitDataError, match="not standard base64"):
        decode_annotation(stray)
    with pytest.raises(InitDataError, match="not standard base64"):
        decode_annotation(body)
    assert decode_annotation(value + "\n").raw == decode_annotation(value).raw


def test_image_layout_is_byte_exact() -> None:
    gz = gzip.compress(TOML, mtime=0)
    img = build_image(gz)
    assert img[:8] == b"initdata"
    assert struct.unpack("<Q", img[8:16])[0] == len(gz)
    assert img[16 : 16 + len(gz)] == gz
    assert len(img) % 512 == 0 and len(img) - (16 + len(gz)) < 512
    assert set(img[16 + len(gz) :]) <= {0}
    assert parse_image(img).raw == TOML
    # an exact multiple of 512 gets no extra padding sector
    assert len(build_image(b"\x00" * (512 - 16))) == 512


def test_bad_images() -> None:
    with pytest.raises(InitDataError, match="magic"):
        parse_image(b"notinitd" + b"\0" * 100)
    with pytest.raises(InitDataError, match="length"):
        parse_image(b"initdata" + struct.pack("<Q", 10_000) + b"\0" * 100)


def test_digest_placement_per_tee() -> None:
    d = hashlib.sha384(TOML).digest()
    assert tee_digest(d, "snp") == d[:32]
    assert tee_digest(d, "tdx") == d
    assert tee_digest(hashlib.sha256(TOML).digest(), "tdx") == hashlib.sha256(TOML).digest() + b"\0" * 16
    assert tee_digest(d, "cca") == d + b"\0" * 16
    with pytest.raises(InitDataError):
        tee_digest(d, "sample")


def test_load_initdata(tmp_path: Path) -> None:
    (tmp_path / "i.toml").write_bytes(TOML)
    assert load_initdata(tmp_path / "i.toml").digest() == hashlib.sha384(TOML).digest()
    with pytest.raises(InitDataError, match="cannot read"):
        load_initdata(tmp_path / "missing.toml")
