#!/bin/sh
# Run the side-by-side harness (registry_bench.py) on Debian's docker-registry (CNCF
# distribution), angosd as configured by default (workers = "auto": one per core) and angosd
# in one process (workers = 1): every scenario, 3 interleaved rounds of 1 GiB blobs.
#
#   bench/side_by_side.sh /path/to/bench/registry_bench.py OUT_PREFIX [more harness options]
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
  --target-tls angosd="$angosd -c {config}" \
  --target-tls-config angosd="$here/targets/angosd-tls.toml.tmpl" \
  --target angosd-1worker="$angosd -c $here/targets/angosd-1worker.toml" \
  --target-tls angosd-1worker="$angosd -c {config}" \
  --target-tls-config angosd-1worker="$here/targets/angosd-1worker-tls.toml.tmpl" \
  --scenarios all --rounds 3 --size-mb 1024 --out "$out.json" --markdown "$out.md" "$@"
