#!/usr/bin/env python3
"""Migrating a distribution store with ``angosd migrate`` versus re-pushing it with skopeo.

    python3 bench/migrate_bench.py [--repos 1000] [--tags 10000] [--total-gib 5] \\
        [--large 2] [--large-mib 1024] [--sample-repos 5] [--workdir DIR] [--keep]

1. Generates a CNCF distribution 2.x store (``docker/registry/v2``) directly on disk:
   ``--repos`` repositories with three revisions each and ``--tags`` tags spread over
   them; every revision has a unique config and a unique layer, and one of 20 base layers
   shared by many repositories; ``--large`` repositories also hold one layer of
   ``--large-mib``. Unique blob bytes come to ``--total-gib``.
2. Migrates it (``angosd migrate --from-distribution``, then a second run, which only
   checks) and measures wall time and the extra disk space (free space before and after,
   and ``du`` of the target counted after the source, which skips the shared hard links).
3. Re-pushes a sample of ``--sample-repos`` repositories (including one with a large
   layer, every tag of each) from ``docker-registry serve`` on that store to a fresh angosd
   with ``skopeo copy``, and extrapolates to the whole store: the time per tag of the small
   repositories times every tag, plus what a large layer adds, per large layer. A full
   re-push takes more than an hour on a small machine, so it is not run whole.

Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.daemon import REPO, Daemon
from tests.integration.upstreams import DockerRegistry

MiB = 1024 * 1024
V2 = "docker/registry/v2"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
BASES = 20
REVISIONS = 3


@dataclass
class Store:
    """What was generated: per repository, its tags and the bytes a re-push sends."""

    root: str
    tags: dict[str, list[str]] = field(default_factory=dict)
    push_bytes: dict[str, int] = field(default_factory=dict)
    unique_bytes: int = 0
    blobs: int = 0


class Generator:
    def __init__(self, root: str) -> None:
        self.root = root
        self.block = os.urandom(MiB)
        self.store = Store(root)

    def blob_bytes(self, seed: str, size: int) -> tuple[str, int]:
        """Write a blob of ``size`` bytes unique to ``seed`` (once); its digest and size."""
        hasher = hashlib.sha256()
        prefix = hashlib.sha256(seed.encode()).digest()
        temp = os.path.join(self.root, "tmp-blob")
        with open(temp, "wb") as out:
            remaining = size
            first = True
            while remaining:
                chunk = self.block[:min(remaining, MiB)]
                if first:
                    chunk = (prefix + chunk[len(prefix):])[:len(chunk)]
                    first = False
                out.write(chunk)
                hasher.update(chunk)
                remaining -= len(chunk)
        digest = hasher.hexdigest()
        self._place(temp, digest)
        return f"sha256:{digest}", size

    def blob(self, data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        temp = os.path.join(self.root, "tmp-blob")
        with open(temp, "wb") as out:
            out.write(data)
        self._place(temp, digest)
        return f"sha256:{digest}", len(data)

    def _place(self, temp: str, digest: str) -> None:
        directory = os.path.join(self.root, V2, "blobs", "sha256", digest[:2], digest)
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, "data")
        if os.path.exists(target):
            os.unlink(temp)
            return
        self.store.unique_bytes += os.path.getsize(temp)
        self.store.blobs += 1
        os.replace(temp, target)

    def link(self, path: str, digest: str) -> None:
        full = os.path.join(self.root, V2, "repositories", path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as out:
            out.write(digest)

    def generate(self, repos: int, tags: int, total: int, large: int, large_size: int) -> Store:
        base_size = max(64 * 1024, min(4 * MiB, total // 100 // BASES))
        bases = [self.blob_bytes(f"base-{i}", base_size) for i in range(BASES)]
        small = max(1024, (total - large * large_size - BASES * base_size) // (repos * REVISIONS))
        per_repo = [tags // repos + (1 if i < tags % repos else 0) for i in range(repos)]
        for index in range(repos):
            name = f"team{index % 50:02d}/app{index:04d}"
            revisions = []
            push = 0
            sent: set[str] = set()
            for revision in range(REVISIONS):
                config = self.blob(json.dumps({"architecture": "amd64", "os": "linux",
                                               "repo": name, "revision": revision}).encode())
                layers = [bases[(index + revision) % BASES], self.blob_bytes(f"{name}/{revision}", small)]
                if index < large and revision == 0:
                    layers.append(self.blob_bytes(f"large-{index}", large_size))
                for digest, size in (config, *layers):
                    self.link(f"{name}/_layers/sha256/{digest[7:]}/link", digest)
                    if digest not in sent:
                        sent.add(digest)
                        push += size
                manifest = json.dumps({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
                    "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
                }).encode()
                digest, _size = self.blob(manifest)
                self.link(f"{name}/_manifests/revisions/sha256/{digest[7:]}/link", digest)
                revisions.append(digest)
            names = []
            for number in range(per_repo[index]):
                tag = f"v{number}"
                target = revisions[number % REVISIONS]
                self.link(f"{name}/_manifests/tags/{tag}/index/sha256/{target[7:]}/link", target)
                self.link(f"{name}/_manifests/tags/{tag}/current/link", target)
                names.append(tag)
            self.store.tags[name] = names
            self.store.push_bytes[name] = push
        return self.store


def free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def du_after(first: str, second: str) -> int:
    """Bytes of ``second`` not shared (hard links) with ``first``: ``du`` counts a file once."""
    out = subprocess.run(["du", "-s", "-B1", first, second], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[1].split()[0])


def migrate(source: str, target: str) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "angosd", "migrate", "--from-distribution", source,
                           "--root", target], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO},
                          check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate failed: {done.stdout}{done.stderr}")
    return elapsed, done.stdout.strip().splitlines()[-1]


def repush(store: Store, source: str, workdir: str, sample: list[str]) -> dict[str, float]:
    """Re-push ``sample`` repositories (every tag) with skopeo; seconds per repository, and
    the bytes angosd then holds (under ``"stored"``)."""
    registry = DockerRegistry(Path(workdir) / "distribution")
    os.rmdir(registry.directory / "data")
    os.symlink(source, registry.directory / "data")
    registry.start()
    angosd_root = os.path.join(workdir, "repushed")
    daemon = Daemon(os.path.join(workdir, "daemon"), angosd_root).start()
    seconds: dict[str, float] = {}
    try:
        for name in sample:
            started = time.monotonic()
            for tag in store.tags[name]:
                subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                                "--dest-tls-verify=false", f"docker://{registry.host}/{name}:{tag}",
                                f"docker://{daemon.host}/{name}:{tag}"], check=True, capture_output=True)
            seconds[name] = time.monotonic() - started
    finally:
        daemon.stop()
        registry.stop()
    seconds["stored"] = int(subprocess.run(["du", "-s", "-B1", angosd_root], capture_output=True, text=True,
                                           check=True).stdout.split()[0])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--tags", type=int, default=10000)
    parser.add_argument("--total-gib", type=float, default=5.0)
    parser.add_argument("--large", type=int, default=2, help="repositories holding one large layer")
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--sample-repos", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="migrate-bench-")
    source = os.path.join(workdir, "distribution-data")
    target = os.path.join(workdir, "angosd")
    os.makedirs(source, exist_ok=True)
    try:
        started = time.monotonic()
        store = Generator(source).generate(args.repos, args.tags, int(args.total_gib * 1024 * MiB), args.large,
                                           args.large_mib * MiB)
        tags = sum(len(t) for t in store.tags.values())
        print(f"generated {len(store.tags)} repositories, {tags} tags, {store.blobs} blobs, "
              f"{store.unique_bytes / MiB / 1024:.2f} GiB unique in {time.monotonic() - started:.0f}s", flush=True)

        subprocess.run(["sync"], check=True)
        free = free_bytes(workdir)
        seconds, summary = migrate(source, target)
        subprocess.run(["sync"], check=True)
        extra = du_after(source, target)
        fell = free - free_bytes(workdir)
        print(f"migrate: {seconds:.1f}s, extra disk {extra / MiB:.1f} MiB (du of the target after the source; "
              f"free space fell by {fell / MiB:.0f} MiB, on a disk others write to)\n  {summary}", flush=True)
        seconds_again, summary_again = migrate(source, target)
        print(f"migrate again (nothing to do): {seconds_again:.1f}s\n  {summary_again}", flush=True)

        names = sorted(store.tags, key=lambda name: int(name.rsplit("app", 1)[1]))  # generation order
        large, small = names[:args.large], names[args.large:]
        sample = large[:1] + small[:max(1, args.sample_repos - 1)]
        timings = repush(store, source, workdir, sample)
        small_tags = sum(len(store.tags[name]) for name in sample[1 if large else 0:])
        per_tag = sum(timings[name] for name in sample[1 if large else 0:]) / small_tags
        lines = [f"re-push sample: {len(sample)} repositories, {sum(len(store.tags[n]) for n in sample)} tags, "
                 f"{sum(store.push_bytes[n] for n in sample) / MiB:.0f} MiB sent: "
                 f"{per_tag:.2f}s per tag of a small repository"]
        estimate = per_tag * tags
        if large:
            extra = timings[large[0]] - per_tag * len(store.tags[large[0]])
            estimate += extra * len(large)
            lines.append(f"{extra:.1f}s more for a repository with a {args.large_mib} MiB layer")
        print("; ".join(lines) + f"; angosd then held {timings['stored'] / MiB:.0f} MiB", flush=True)
        print(f"re-push whole store (extrapolated: {tags} tags at that rate, plus {len(large)} large layers): "
              f"{estimate / 60:.1f} min; extra disk: every unique blob again, "
              f"{store.unique_bytes / MiB / 1024:.2f} GiB", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
