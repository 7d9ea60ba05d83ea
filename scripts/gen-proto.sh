#!/usr/bin/env bash
# Regenerates the Python code of the CSI protocol from
# driver/src/directpv_csi/csi/proto/csi.proto with grpcio-tools (see docs/CSI.md).
#
# Layout: protoc runs with `-I driver/src` and the proto addressed as
# `directpv_csi/csi/proto/csi.proto`, so the generated csi_pb2_grpc.py imports
# `from directpv_csi.csi.proto import csi_pb2` (a package import that works
# wherever the package is installed) instead of a bare `import csi_pb2`.
# No sed is needed. Outputs: csi_pb2.py, csi_pb2.pyi, csi_pb2_grpc.py (committed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc \
  -I driver/src \
  --python_out=driver/src \
  --pyi_out=driver/src \
  --grpc_python_out=driver/src \
  directpv_csi/csi/proto/csi.proto directpv_csi/csi/proto/pluginregistration.proto
echo "gen-proto: regenerated driver/src/directpv_csi/csi/proto/{csi,pluginregistration}_pb2{,_grpc}.py and *_pb2.pyi"
