"""The coco_common edge kit: strict JSON, typed fields, bounded reads, atomic writes,
strict base64 and the HTTP client factory."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from coco_common.b64 import b64_decode, b64_encode, b64url_decode, b64url_encode
from coco_common.fields import Fields
from coco_common.files import FileTooLarge, read_bounded, write_atomic
from coco_common.http import async_client, sync_client
from coco_common.strict_json import strict_loads, strict_object


class MyError(Exception):
    pass


# -- strict JSON -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": NaN}', "non-standard JSON constant NaN"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b'"\xff"', "not valid UTF-8"),
        ("{", "not valid JSON"),
    ],
)
def test_strict_loads_refuses_with_the_callers_error_and_keeps_the_cause(doc: str, reason: str) -> None:
    with pytest.raises(MyError, match=f"^sealed secret: .*{reason[:20]}") as info:
        strict_loads(doc, error=MyError, what="sealed secret")
    assert isinstance(info.value.__cause__, ValueError)


def test_strict_loads_without_error_raises_the_value_error_itself() -> None:
    with pytest.raises(json.JSONDecodeError):
        strict_loads("{")
    with pytest.raises(ValueError, match="duplicate key"):
        strict_loads('{"k": 1, "k": 1}')


def test_limit_is_checked_before_parsing_and_counts_encoded_bytes() -> None:
    assert strict_loads('"' + "é" * 10 + '"', limit=22) == "é" * 10
    with pytest.raises(MyError, match="larger than 21 bytes"):
        strict_loads('"' + "é" * 10 + '"', limit=21, error=MyError)  # 22 bytes of UTF-8
    with pytest.raises(MyError, match="larger than 4 bytes"):
        strict_loads(b"[1,2,3]", limit=4, error=MyError)


def test_strict_object_wants_an_object() -> None:
    assert strict_object('{"a": []}') == {"a": []}
    with pytest.raises(MyError, match="policy: expected a JSON object, not an array"):
        strict_object("[]", error=MyError, what="policy")


# -- fields ------------------------------------------------------------------------
def test_fields_reads_typed_values_and_names_the_dotted_key() -> None:
    f = Fields(
        {"url": "http://k", "n": 3, "on": True, "sub": {"hex": "00ff"}}, error=MyError, label="aa config"
    )
    assert f.str("url", required=True) == "http://k"
    assert f.int("n", min=1, max=3) == 3
    assert f.bool("on") is True
    assert f.str("absent", "dflt") == "dflt"
    sub = f.sub("sub")
    assert sub is not None and sub.hex("hex", size=2) == b"\x00\xff"
    with pytest.raises(MyError, match=r"^aa config: sub.hex must be 4 bytes \(8 hex digits\), not 2$"):
        sub.hex("hex", size=4)
    with pytest.raises(MyError, match=r"^aa config: n must be a string, not int$"):
        f.str("n")
    with pytest.raises(MyError, match="n is 3, above the maximum 2"):
        f.int("n", max=2)


def test_bool_is_never_an_int_and_list_items_are_checked() -> None:
    f = Fields({"n": True, "l": ["a", 1]}, error=MyError)
    with pytest.raises(MyError, match=r"^n must be an integer, not a boolean$"):
        f.int("n")
    with pytest.raises(MyError, match=r"l\[1\] must be a string"):
        f.list("l", str)


def test_required_key_points_at_a_likely_typo() -> None:
    f = Fields({"dir_pth": "/x"}, error=MyError, where="repository_config", label="kbs config")
    with pytest.raises(
        MyError, match=r"repository_config.dir_path is required \(found unknown key repository_config.dir_pth"
    ):
        f.str("dir_path", required=True)


def test_unknown_keys_are_collected_with_a_suggestion_or_refused() -> None:
    f = Fields({"url": "u", "tee_key_algoritm": "x", "t": {"levl": 1}}, error=MyError, label="c")
    f.str("url")
    f.str("tee_key_algorithm")
    t = f.sub("t")
    assert t is not None
    t.int("level")
    t.done()
    f.done()
    assert f.unknown == ["t.levl", "tee_key_algoritm"]
    assert "unknown key tee_key_algoritm in the top level (did you mean tee_key_algorithm?)" in f.notes
    assert "unknown key t.levl in [t] (did you mean level?)" in f.notes
    strict = Fields({"typ": "x"}, error=MyError, unknown="error")
    strict.str("type")
    with pytest.raises(MyError, match=r"unknown key typ in the top level \(did you mean type\?\)"):
        strict.done()


def test_a_non_table_is_refused() -> None:
    with pytest.raises(MyError, match=r"^c: \[kbs\] must be a table$"):
        Fields("x", error=MyError, where="kbs", label="c")
    f = Fields({"kbs": "x"}, error=MyError)
    with pytest.raises(MyError, match="kbs must be a table"):
        f.sub("kbs")


# -- files -------------------------------------------------------------------------
def test_read_bounded(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10)
    assert read_bounded(p, 10) == b"x" * 10
    with pytest.raises(FileTooLarge) as info:
        read_bounded(p, 9)
    assert info.value.limit == 9
    with pytest.raises(ValueError, match="not a regular file"):
        read_bounded("/dev/zero", 10)
    link = tmp_path / "l"
    link.symlink_to(p)
    assert read_bounded(link, 10) == b"x" * 10
    with pytest.raises(OSError):
        read_bounded(link, 10, follow_symlinks=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_bounded(fifo, 10)  # would block forever if opened for a blocking read


def test_write_atomic_replaces_with_mode_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    p = tmp_path / "secret"
    p.write_bytes(b"old")
    write_atomic(p, b"new", mode=0o640)
    assert p.read_bytes() == b"new"
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["secret"]

    # a failure mid-write (here: data that is not bytes-like) leaves the old file and no temp file
    with pytest.raises(TypeError):
        write_atomic(p, 12345)  # type: ignore[arg-type]
    assert p.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["secret"]
    # a missing directory fails before anything is written
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no" / "f", b"x")


def test_write_atomic_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target = tmp_path / "out"
    target.symlink_to(victim)
    write_atomic(target, b"data")
    assert victim.read_bytes() == b"keep"  # the link itself was replaced, not its target
    assert not target.is_symlink() and target.read_bytes() == b"data"


# -- base64 ------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(0, 7))
def test_b64_round_trips(n: int) -> None:
    data = bytes(range(250, 250 - n, -1))
    assert b64url_decode(b64url_encode(data)) == data
    assert b64url_decode(b64url_encode(data), allow_padding=False) == data
    assert b64url_decode(base64.urlsafe_b64encode(data).decode()) == data
    assert b64_decode(b64_encode(data)) == data


@pytest.mark.parametrize("bad", ["a", "ab+c", "ab/c", "ab c", "AB==", "AQ=", "AQ===", "é"])
def test_b64url_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(bad)


def test_b64url_padding_can_be_forbidden_and_trailing_bits_must_be_zero() -> None:
    assert b64url_decode("AQ==") == b"\x01"
    with pytest.raises(ValueError):
        b64url_decode("AQ==", allow_padding=False)
    with pytest.raises(ValueError, match="non-canonical"):
        b64url_decode("AR")  # 0x01 with a stray low bit set


@pytest.mark.parametrize("bad", ["AQ", "AR==", "A-_=", "AQ==\n", "====", "AQ=="[:3]])
def test_b64_std_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        b64_decode(bad)


# -- HTTP client factory -----------------------------------------------------------
def test_clients_ignore_the_environment_and_redirects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with sync_client(timeout=5) as c:
        assert c.trust_env is False and c.follow_redirects is False
        assert c.timeout == httpx.Timeout(5.0)
    a = async_client(timeout=7, connect_timeout=2, headers={"x-a": "1"})
    assert a.trust_env is False and a.follow_redirects is False
    assert a.timeout.connect == 2 and a.timeout.read == 7 and a.headers["x-a"] == "1"
    assert sync_client(trust_env=True).trust_env is True
