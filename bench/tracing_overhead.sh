#!/bin/sh
# The cost of tracing: angosd in one process (bench/targets/angosd-1worker.toml) with tracing
# off, on with 10% of the traces sampled, and on with every trace sampled, exporting over
# OTLP/HTTP to bench/otlp_sink.py (which reads and discards). Tracing is turned on by the
# standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER_ARG).
#
#   bench/tracing_overhead.sh /path/to/bench/registry_bench.py OUT_PREFIX [more harness options]
#
# Writes OUT_PREFIX.json (every sample) and OUT_PREFIX.md (the table).
set -eu
harness=$(readlink -f "$1"); out=$(readlink -f "$2"); shift 2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 "$here/otlp_sink.py" "$port" &
sink=$!
trap 'kill "$sink"' EXIT
angosd="exec env PYTHONPATH=$repo"
serve="twistd -n --pidfile= angosd --root {datadir} --listen tcp:{port}:interface={host} -c $here/targets/angosd-1worker.toml"
traced="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port"
cd "$(dirname "$(dirname "$harness")")"
python3 "$harness" \
  --target off="$angosd $serve" \
  --target sampled-10="$angosd $traced OTEL_TRACES_SAMPLER_ARG=0.1 $serve" \
  --target sampled-100="$angosd $traced OTEL_TRACES_SAMPLER_ARG=1 $serve" \
  --scenarios manifest_get_rps,blob_head_rps,small_push_workflow --rounds 3 \
  --out "$out.json" --markdown "$out.md" "$@"
