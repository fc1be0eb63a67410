"""``rvps``: the reference value provider service as its own server, on trustee's RVPS gRPC
API (``ReferenceValueProviderService``: ``RegisterReferenceValue``, ``QueryReferenceValue``).

``rvps --config config.json --address 127.0.0.1:50003`` (trustee's flags and default address).
The config is trustee's RVPS one: ``storage`` (a storage backend table: ``storage_type`` and
``backends``), ``extractors`` (accepted; the ``sample`` extractor is the one served)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import load_document, parse_rvps_server_config
from .grpc_as import log as _as_log
from .grpc_as import rv_query, rvps_handler, serve_grpc, service_main
from .protos import reference_pb2 as rv_pb
from .rvps import ReferenceValues
from .storage import open_store

__all__ = ["main"]

log = _as_log.getChild("rvps")


async def _run(config_file: str | None, address: str) -> None:
    st, warnings = parse_rvps_server_config(load_document(config_file) if config_file else {})
    for w in warnings:
        log.warning("config: %s", w)
    store = open_store(st.storage_type, st)
    rvps = ReferenceValues(store)

    async def register(req: rv_pb.ReferenceValueRegisterRequest) -> rv_pb.ReferenceValueRegisterResponse:
        names = await rvps.register(req.message.encode("utf-8"))
        log.info("reference values registered", extra={"names": names})
        return rv_pb.ReferenceValueRegisterResponse()

    async def query(req: rv_pb.ReferenceValueQueryRequest) -> rv_pb.ReferenceValueQueryResponse:
        return await rv_query(rvps, req)

    try:
        await serve_grpc([rvps_handler(register, query)], address, "rvps")
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rvps", description="Reference value provider service (trustee gRPC API)"
    )
    p.add_argument("-c", "--config", help="RVPS config (JSON, TOML or YAML); default: in-memory storage")
    p.add_argument(
        "-a", "--address", default="127.0.0.1:50003", help="listen address (default 127.0.0.1:50003)"
    )
    return service_main(p, argv, lambda a: _run(a.config, a.address))


if __name__ == "__main__":
    sys.exit(main())
