"""Air-gap figures: full vs incremental bundle (size, time), and import throughput vs skopeo.

    python3 bench/airgap_bench.py [--images 50] [--layer-kib 1024] [--changed 0.05]

Synthetic images (pseudo-random layers) are loaded into a store; a set file selects them
all; a full signed bundle is exported, then ``--changed`` of the images get a new tag with
new layers and an incremental bundle is exported ``--since`` the full one's record. The
full bundle is then imported into an empty store (``angosd import``) and, for comparison,
every image is copied from the same archive into an empty angosd daemon with
``skopeo copy oci-archive:``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)

from tests.daemon import Daemon  # noqa: E402
from tests.integration.images import build_image  # noqa: E402


def angosd(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": REPO}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "angosd", *args], capture_output=True, text=True, env=env,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"angosd {' '.join(args)} failed:\n{result.stderr}")
    return time.monotonic() - start


def load(store: Path, layout: Path, work: Path, name: str) -> None:
    archive = work / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    angosd("import", "--root", str(store), str(archive))


def sizes(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--layer-kib", type=int, default=1024)
    parser.add_argument("--changed", type=float, default=0.05)
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        store = work / "connected"
        layout = work / "layout"
        for index in range(args.images):
            build_image(str(layout), f"hub/bench/img{index:03d}:v1", seed=index,
                        layer_sizes=(args.layer_kib * 1024, 64 * 1024))
        load(store, layout, work, "initial")
        set_file = work / "set.toml"
        set_file.write_text('upstream = "hub"\n' + "".join(f'[[image]]\nname = "bench/img{i:03d}"\n'
                                                            for i in range(args.images)))
        key = work / "key.pem"
        angosd("keygen", "-o", str(key))
        full = work / "full.tar"
        full_time = angosd("export", "--root", str(store), "--set", str(set_file), "--sign-key", str(key), "-o",
                           str(full))
        changed = max(1, math.ceil(args.images * args.changed))
        changes = work / "changes"
        for index in range(changed):
            build_image(str(changes), f"hub/bench/img{index:03d}:v2", seed=10_000 + index,
                        layer_sizes=(args.layer_kib * 1024, 64 * 1024))
        load(store, changes, work, "changes")
        increment = work / "increment.tar"
        increment_time = angosd("export", "--root", str(store), "--set", str(set_file), "--sign-key", str(key),
                                "--since", f"{full}.state.json", "-o", str(increment))
        print(f"images: {args.images}, layer {args.layer_kib} KiB + 64 KiB each; {changed} changed "
              f"({100 * changed / args.images:.0f}%)")
        print(f"full bundle:        {sizes([full]) / mib:8.1f} MiB in {full_time:6.2f} s")
        print(f"incremental bundle: {sizes([increment]) / mib:8.1f} MiB in {increment_time:6.2f} s")

        keys = work / "trusted.toml"
        keys.write_text(f'[bundle]\ntrusted_keys = ["{key}.pub"]\n')
        import_time = angosd("import", "-c", str(keys), "--root", str(work / "imported"), str(full))
        print(f"angosd import:      {sizes([full]) / mib / import_time:8.1f} MiB/s ({import_time:.2f} s, "
              "signature and every digest verified)")

        daemon = Daemon(str(work / "daemon"), str(work / "skopeo-store"), workers=1).start()
        try:
            start = time.monotonic()
            for index in range(args.images):
                ref = f"hub/bench/img{index:03d}:v1"
                subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci-archive:{full}:{ref}",
                                f"docker://{daemon.host}/{ref}"], check=True, capture_output=True)
            skopeo_time = time.monotonic() - start
        finally:
            daemon.stop()
        print(f"skopeo oci-archive: {sizes([full]) / mib / skopeo_time:8.1f} MiB/s ({skopeo_time:.2f} s, "
              f"{args.images} copies into the daemon)")


if __name__ == "__main__":
    main()
