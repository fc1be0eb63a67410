#!/usr/bin/env bash
# Regenerates coco_rpc/protos/*_pb2.py(i) and kbs/protos/*_pb2.py(i) from the .proto files beside them.
# The generated modules are checked in, so a checkout needs no protoc.
set -euo pipefail
cd "$(dirname "$0")/../coco_rpc/protos"
py=${PYTHON:-../../.venv/bin/python}
"$py" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. ./*.proto
# protoc emits top-level imports between generated modules; none of ours import each other.
# trustee's attestation-service and RVPS gRPC APIs (kbs/protos, provenance in its MANIFEST)
cd ../../kbs/protos
"$py" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. ./*.proto
