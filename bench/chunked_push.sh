#!/bin/sh
# Chunked pushes side by side: Debian's docker-registry (CNCF distribution) and angosd as
# configured by default (workers = "auto"), scenario blob_push_chunked of the side-by-side
# harness (one curl per PATCH, so consecutive chunks land on different workers), 3
# interleaved rounds, 64 MiB chunks. Extra --target options add more angosd trees (e.g. an
# older checkout for a before/after figure).
#
#   bench/chunked_push.sh /path/to/bench/registry_bench.py OUT_PREFIX [--size-mb 1024] [more harness options]
#
# Writes OUT_PREFIX.json (every sample) and OUT_PREFIX.md (the table).
set -eu
harness=$(readlink -f "$1"); out=$(readlink -f "$2"); shift 2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
angosd="exec env PYTHONPATH=$repo twistd -n --pidfile= angosd --root {datadir} --listen tcp:{port}:interface={host}"
cd "$(dirname "$(dirname "$harness")")"
exec python3 "$harness" \
  --target distribution='docker-registry serve {config}' \
  --target angosd="$angosd -c $here/targets/angosd.toml" \
  --scenarios blob_push_chunked --chunk-mb 64 --rounds 3 --size-mb 1024 \
  --out "$out.json" --markdown "$out.md" "$@"
