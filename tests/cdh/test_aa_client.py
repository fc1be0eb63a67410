"""AaClient against the real attestation-agent process: it reconnects after
the AA restarts, and reports ExtendRuntimeMeasurement results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cdh.aa import AaClient, MeasurementResult
from coco_rpc import Code, RpcError
from tests.support.aa import start_aa


async def test_reconnects_after_aa_restart(tmp_path: Path) -> None:
    client = AaClient(f"unix://{tmp_path}/aa.sock", measure_timeout=60)  # slack for a loaded CI box
    try:
        with start_aa(tmp_path):
            # the AA's event log is off by default: NOT_ENABLED (CDH only warns on it)
            assert await client.extend_runtime_measurement("d", "o", "c") is MeasurementResult.NOT_ENABLED
            with pytest.raises(RpcError):
                await client.get_token("no-such-type")
        with pytest.raises(RpcError):
            await client.extend_runtime_measurement("d", "o", "c")
        with start_aa(tmp_path):
            # start_aa returns once the socket file exists; a stale file left by a slow-to-die
            # old AA can make the first connect race the new bind, so allow a few reconnects
            for _ in range(50):
                try:
                    res = await client.extend_runtime_measurement("d", "o", "c")
                    break
                except RpcError as exc:
                    assert exc.code == Code.UNAVAILABLE
                    await asyncio.sleep(0.1)
            assert res is MeasurementResult.NOT_ENABLED
    finally:
        await client.close()
