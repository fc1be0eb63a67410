"""CCEL / TCG2 parsing reproduces trustee's expected outputs; replay known answers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from attestation.eventlog.aael import EL_END_FLAG, EL_HEADER, encode_aael_record, trim_ccel
from attestation.eventlog.errors import EventLogFormatError, EventLogReplayError
from attestation.eventlog.tcg import parse_event_log

from ._data import EL, TDX

GOLDEN = [
    (TDX / "trustee/CCEL_data", EL / "CCEL_data_out.json"),
    (TDX / "trustee/CCEL_data_ovmf", EL / "CCEL_data_ovmf_out.json"),
    (EL / "CCEL_data_grub", EL / "CCEL_data_grub_out.json"),
    (EL / "CCEL_data_grub_gke", EL / "CCEL_data_grub_gke_out.json"),
    (EL / "CCEL_AAEL_alibabacloud", EL / "CCEL_AAEL_alibabacloud_out.json"),
    (EL / "CCEL_data_csv", EL / "CCEL_data_csv_out.json"),
]


@pytest.mark.parametrize(("log", "expected"), GOLDEN, ids=lambda p: p.name)
def test_parsed_output_equals_trustee(log: Path, expected: Path) -> None:
    got = parse_event_log(log.read_bytes()).to_trustee_json()
    want = json.loads(expected.read_text())["uefi_event_logs"]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"event {i}"


# trustee deps/eventlog test_rtmr_integrity known answers (RTMR0..3 = CC MR 1..4)
Z = "00" * 48
REPLAY = [
    (
        "trustee/CCEL_data",
        [
            "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
            "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf",
            Z,
            Z,
        ],
    ),
    (
        "trustee/CCEL_data_ovmf",
        [
            "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
            "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
            "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a",
            Z,
        ],
    ),
    (
        "trustee-eventlog/CCEL_data_grub",
        [
            "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
            "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
            "08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e",
            Z,
        ],
    ),
    (
        "trustee-eventlog/CCEL_data_gcp",
        [
            "3300980705adf09d28b707b79699d9874892164280832be2c386a715b6e204e0897fb564a064f810659207ba862b304f",
            "204d49f78d29918fe7b2f694e76653861a0c2a018987d2c3a54266eff737232524cf0af68c4d180e2f8c2c0937f21967",
            Z,
            Z,
        ],
    ),
    (
        "trustee-eventlog/CCEL_data_grub_gke",
        [
            "bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
            "c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
            "334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d",
            Z,
        ],
    ),
]


@pytest.mark.parametrize(("log", "rtmrs"), REPLAY, ids=[r[0] for r in REPLAY])
def test_replay_known_answers(log: str, rtmrs: list[str]) -> None:
    parsed = parse_event_log((TDX / log).read_bytes())
    parsed.check_registers({i + 1: bytes.fromhex(v) for i, v in enumerate(rtmrs)})


def test_replay_mismatch_names_the_register() -> None:
    parsed = parse_event_log((TDX / "trustee/CCEL_data").read_bytes())
    bad = bytes.fromhex(
        "2fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf"
    )
    with pytest.raises(EventLogReplayError, match="CC MR 2"):
        parsed.check_registers({2: bad})


def test_truncated_and_garbage_logs() -> None:
    raw = (TDX / "trustee/CCEL_data_ovmf").read_bytes()
    end = len(trim_ccel(raw))
    for cut in (0, 10, 40, 80, 200, end - 1):
        with pytest.raises(EventLogFormatError):
            parse_event_log(raw[:cut])
    bad = bytearray(raw)
    bad[4:8] = struct.pack("<I", 0x4)  # first event not EV_NO_ACTION
    with pytest.raises(EventLogFormatError):
        parse_event_log(bytes(bad))


def test_upstream_fallback_header_with_aael_events() -> None:
    rec, digest = encode_aael_record("coco.com op some-content", ccmr=4, hash_algorithm="sha384")
    parsed = parse_event_log(EL_HEADER + rec + EL_END_FLAG)
    (e,) = parsed.entries
    assert e.digest_matches_event and e.index == 4 and e.type_name == "EV_EVENT_TAG"
    assert e.details == {
        "string": "coco.com op some-content",
        "unicode_name": "AAEL",
        "data": {"domain": "coco.com", "operation": "op", "content": "some-content"},
    }
    import hashlib

    assert parsed.replay(4) == hashlib.sha384(bytes(48) + digest).digest()


@pytest.mark.parametrize(
    ("content", "parsed"),
    [
        ('{"image":"x","n":1}', {"image": "x", "n": 1}),
        ('{"n": NaN}', '{"n": NaN}'),  # not JSON: kept as text, never a NaN in the claims
        ('{"a":1,"a":2}', '{"a":1,"a":2}'),  # duplicate keys: kept as text
        ("[" * 5000, "[" * 5000),  # too deep: kept as text
    ],
)
def test_aael_content_is_strict_json_or_text(content: str, parsed: object) -> None:
    rec, _ = encode_aael_record(f"coco.com op {content}", ccmr=4, hash_algorithm="sha384")
    (e,) = parse_event_log(EL_HEADER + rec + EL_END_FLAG).entries
    assert e.details["data"]["content"] == parsed
    json.dumps(e.details, allow_nan=False)


def test_trim_ccel_stops_at_the_end_marker() -> None:
    raw = (TDX / "trustee/CCEL_data").read_bytes()
    trimmed = trim_ccel(raw)
    assert len(trimmed) < len(raw) and raw[len(trimmed) : len(trimmed) + 8] in (b"\xff" * 8, bytes(8))
    assert len(parse_event_log(trimmed + EL_END_FLAG).entries) == 5
