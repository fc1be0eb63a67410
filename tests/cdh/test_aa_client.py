"""AaClient against the real attestation-agent process: it reconnects after
the AA restarts, and reports ExtendRuntimeMeasurement results."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdh.aa import AaClient, MeasurementResult
from coco_rpc import RpcError
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
            assert await client.extend_runtime_measurement("d", "o", "c") is MeasurementResult.NOT_ENABLED
    finally:
        await client.close()
