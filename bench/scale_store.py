#!/usr/bin/env python3
"""Write a large registry store directly on disk, in angosd's layout and in distribution's.

    python3 bench/scale_store.py OUT --tags 10000 --repos 1000 [--big-tags 10000] [--referrers 1000]

Writes, below ``OUT``:

- ``angosd/``: an angosd filesystem store (the daemon's ``--root``): blob bytes under
  ``blobs/<alg>/<hh>/<hex>/data`` with their reverse ownership markers (``owners/``),
  and per namespace the ownership markers (``_blobs``), revision records, tags, the tags'
  back-references, the ``linked`` marker and referrer entries, exactly as a push through
  angosd leaves them (`angosd.registry.paths`).
- ``distribution/``: the same content as a CNCF distribution 2.x store (the
  ``rootdirectory`` of ``docker-registry``): ``docker/registry/v2/blobs`` (hard links to
  the same bytes when both sit on one filesystem) and per repository ``_layers``,
  ``_manifests/revisions`` and ``_manifests/tags/<tag>/{current,index}`` link files.
- ``store.json``: what was written (counts, the large repository, the referrers' subject,
  samples for manifest GETs and blob HEADs), for benchmarks to read back.

The content: ``--tags`` tags in ``--repos`` repositories named ``org<g>/app<i>`` over
``--groups`` first components. One of them, ``org000/big``, holds ``--big-tags`` tags (at
most half of all tags) over one revision per ten tags; another, ``org000/signed``, holds
one image with ``--referrers`` signature manifests whose subject it is (untagged; they
count as revisions, not tags). The other repositories share the remaining tags, three
revisions each. Every revision has its own config and its own small layer, plus one of
``--bases`` base layers shared across repositories. Everything is derived from the names,
so two runs write the same digests. Figures only: this is a benchmark fixture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SIGNATURE = "application/vnd.example.signature.v1+json"
V2 = "docker/registry/v2"
BIG = "org000/big"
SIGNED = "org000/signed"
#: Revisions of each ordinary repository.
REVISIONS = 3
#: Tags of the large repository per revision.
TAGS_PER_REVISION = 10
#: A fixed push time (epoch seconds), so the store does not depend on when it was written.
PUSHED_AT = 1_750_000_000


@dataclass
class Summary:
    """What a generated store holds; written to ``store.json``."""

    tags: int = 0
    repositories: int = 0
    revisions: int = 0
    blobs: int = 0
    groups: int = 0
    big: str = BIG
    big_tags: int = 0
    signed: str = SIGNED
    subject: str = ""
    referrers: int = 0
    #: (namespace, tag, manifest digest, layer digest) of a spread of images.
    samples: list[tuple[str, str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Whether the angosd store has the tags' back-references and each namespace's ``linked``
    #: marker (a store generated before them gets them from `ensure`).
    linked: bool = False


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}


def _compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


class StoreWriter:
    """Writes both layouts at once; each object is written once, directories made once."""

    def __init__(self, out: str) -> None:
        self.angosd = os.path.join(out, "angosd")
        self.distribution = os.path.join(out, "distribution", V2)
        self._made: set[str] = set()
        self._blobs: dict[str, int] = {}
        self._owned: set[tuple[str, str]] = set()
        self._hard_links = True

    def _file(self, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        if directory not in self._made:
            os.makedirs(directory, exist_ok=True)
            self._made.add(directory)
        with open(path, "wb") as out:
            out.write(data)

    def blob(self, data: bytes) -> tuple[str, int]:
        """Store bytes in both layouts (once); their hex digest and size."""
        digest = _sha256(data)
        if digest not in self._blobs:
            self._blobs[digest] = len(data)
            mine = os.path.join(self.angosd, "blobs", "sha256", digest[:2], digest, "data")
            self._file(mine, data)
            theirs = os.path.join(self.distribution, "blobs", "sha256", digest[:2], digest, "data")
            if self._hard_links:
                os.makedirs(os.path.dirname(theirs), exist_ok=True)
                try:
                    os.link(mine, theirs)
                    return digest, len(data)
                except OSError:
                    self._hard_links = False
            self._file(theirs, data)
        return digest, len(data)

    def own(self, namespace: str, digest: str) -> None:
        """``namespace`` may read the blob: angosd's two markers, distribution's layer link."""
        if (namespace, digest) in self._owned:
            return
        self._owned.add((namespace, digest))
        marker = namespace.replace("/", "+")
        self._file(os.path.join(self.angosd, "blobs", "sha256", digest[:2], digest, "owners", marker), b"")
        self._file(os.path.join(self.angosd, "repositories", namespace, "_blobs", "sha256", digest), b"")

    def _layer_link(self, namespace: str, digest: str) -> None:
        self._file(os.path.join(self.distribution, "repositories", namespace, "_layers", "sha256", digest, "link"),
                   f"sha256:{digest}".encode())

    def manifest(self, namespace: str, config: bytes, layers: list[bytes], config_type: str = OCI_CONFIG,
                 subject: tuple[str, int] | None = None, artifact_type: str | None = None) -> tuple[str, int, str]:
        """Push an image: its blobs and their ownership, then the manifest and its records.

        Returns the manifest's hex digest, its size, and the hex digest of its last layer.
        """
        config_digest, config_size = self.blob(config)
        described = [self.blob(layer) for layer in layers]
        for digest, _size in (config_digest, config_size), *described:
            if (namespace, digest) not in self._owned:
                self._layer_link(namespace, digest)
            self.own(namespace, digest)
        document: dict[str, object] = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": _descriptor(config_type, config_digest, config_size),
            "layers": [_descriptor(OCI_LAYER, digest, size) for digest, size in described],
        }
        if subject is not None:
            document["subject"] = _descriptor(OCI_MANIFEST, *subject)
        if artifact_type is not None:
            document["artifactType"] = artifact_type
        body = _compact(document)
        digest, size = self.blob(body)
        self.own(namespace, digest)
        # What `ManifestStore.put` records: the referrer's artifact type, else the config's media type.
        recorded_type = artifact_type if artifact_type is not None else (
            config_type if config_type != OCI_EMPTY else None)
        record = {"media_type": OCI_MANIFEST, "pushed_at": PUSHED_AT,
                  "subject": f"sha256:{subject[0]}" if subject is not None else None,
                  "artifact_type": recorded_type}
        base = os.path.join(self.angosd, "repositories", namespace)
        self._file(os.path.join(base, "_manifests", "linked"), b"")
        self._file(os.path.join(base, "_manifests", "revisions", "sha256", digest), json.dumps(record).encode())
        if subject is not None:
            entry = {"mediaType": OCI_MANIFEST, "digest": f"sha256:{digest}", "size": size}
            if recorded_type is not None:
                entry["artifactType"] = recorded_type
            self._file(os.path.join(base, "_referrers", "sha256", subject[0], f"sha256-{digest}"),
                       json.dumps(entry).encode())
        self._file(os.path.join(self.distribution, "repositories", namespace, "_manifests", "revisions", "sha256",
                                digest, "link"), f"sha256:{digest}".encode())
        return digest, size, described[-1][0] if described else config_digest

    def tag(self, namespace: str, tag: str, digest: str) -> None:
        """Point ``tag`` at a revision in both layouts."""
        self._file(os.path.join(self.angosd, "repositories", namespace, "_manifests", "tags", tag),
                   f"sha256:{digest}".encode())
        self._file(os.path.join(self.angosd, "repositories", namespace, "_manifests", "tagged", "sha256", digest,
                                tag), b"")
        base = os.path.join(self.distribution, "repositories", namespace, "_manifests", "tags", tag)
        link = f"sha256:{digest}".encode()
        self._file(os.path.join(base, "index", "sha256", digest, "link"), link)
        self._file(os.path.join(base, "current", "link"), link)

    @property
    def blob_count(self) -> int:
        return len(self._blobs)


def _image(writer: StoreWriter, namespace: str, revision: int, bases: list[bytes]) -> tuple[str, str]:
    """One revision of ``namespace``: its manifest digest and its unique layer's digest."""
    seed = f"{namespace}@{revision}"
    config = _compact({"architecture": "amd64", "os": "linux", "config": {"Labels": {"revision": seed}}})
    unique = hashlib.sha256(seed.encode()).digest() * 16  # 512 bytes, unique to the revision
    base = bases[int(_sha256(seed.encode())[:8], 16) % len(bases)]
    digest, _size, layer = writer.manifest(namespace, config, [base, unique])
    return digest, layer


def generate(out: str, tags: int, repos: int, big_tags: int = 10_000, referrers: int = 1_000, groups: int = 20,
             bases: int = 50, samples: int = 200) -> Summary:
    """Write a store of ``tags`` tags in ``repos`` repositories below ``out`` (see the module
    docstring); ``out`` must not hold a store yet. Returns (and writes) its summary."""
    started = time.monotonic()
    if repos < 3:
        raise ValueError("at least 3 repositories: the large one, the signed one and one more")
    groups = max(1, min(groups, repos))
    big_tags = max(1, min(big_tags, tags // 2))
    writer = StoreWriter(out)
    summary = Summary(groups=groups, big_tags=big_tags, referrers=referrers)
    base_layers = [hashlib.sha256(f"base-{i}".encode()).digest() * 128 for i in range(bases)]  # 4 KiB each

    # The large repository: one revision per TAGS_PER_REVISION tags.
    big_revisions = [_image(writer, BIG, r, base_layers) for r in range(-(-big_tags // TAGS_PER_REVISION))]
    for number in range(big_tags):
        writer.tag(BIG, f"v{number:05d}", big_revisions[number // TAGS_PER_REVISION][0])
    summary.revisions += len(big_revisions)
    summary.samples.append((BIG, "v00000", big_revisions[0][0], big_revisions[0][1]))

    # The signed image and its referrers.
    subject, subject_layer = _image(writer, SIGNED, 0, base_layers)
    writer.tag(SIGNED, "latest", subject)
    subject_size = os.path.getsize(os.path.join(writer.angosd, "blobs", "sha256", subject[:2], subject, "data"))
    empty = b"{}"
    for number in range(referrers):
        signature = _compact({"signature": f"{SIGNED}#{number}"})
        writer.manifest(SIGNED, empty, [signature], config_type=OCI_EMPTY, subject=(subject, subject_size),
                        artifact_type=SIGNATURE)
    summary.subject = f"sha256:{subject}"
    summary.revisions += 1 + referrers
    summary.samples.append((SIGNED, "latest", subject, subject_layer))

    # The ordinary repositories share the remaining tags.
    others = repos - 2
    remaining = tags - big_tags - 1
    every = max(1, others // max(1, samples - 2))
    for index in range(others):
        namespace = f"org{index % groups:03d}/app{index:05d}"
        count = remaining // others + (1 if index < remaining % others else 0)
        revisions = [_image(writer, namespace, r, base_layers) for r in range(min(REVISIONS, max(1, count)))]
        summary.revisions += len(revisions)
        for number in range(count):
            writer.tag(namespace, f"v{number}", revisions[number % len(revisions)][0])
        if index % every == 0 and count:
            summary.samples.append((namespace, "v0", revisions[0][0], revisions[0][1]))
    summary.tags = tags
    summary.repositories = repos
    summary.blobs = writer.blob_count
    summary.seconds = round(time.monotonic() - started, 2)
    summary.linked = True
    with open(os.path.join(out, "store.json"), "w") as handle:
        json.dump(asdict(summary), handle, indent=1)
    return summary


def load(out: str) -> Summary:
    """The summary of the store generated below ``out``."""
    with open(os.path.join(out, "store.json")) as handle:
        data = json.load(handle)
    data["samples"] = [tuple(sample) for sample in data["samples"]]
    return Summary(**data)


def link(out: str, summary: Summary) -> None:
    """Add to a store generated before them the tags' back-references and the namespaces'
    ``linked`` markers, as pushes through angosd write them."""
    for directory, _subdirectories, files in os.walk(os.path.join(out, "angosd", "repositories")):
        if not directory.endswith(os.path.join("_manifests", "tags")):
            continue
        manifests = os.path.dirname(directory)
        for tag in files:
            with open(os.path.join(directory, tag)) as handle:
                algorithm, hex_digest = handle.read().strip().split(":", 1)
            tagged = os.path.join(manifests, "tagged", algorithm, hex_digest)
            os.makedirs(tagged, exist_ok=True)
            open(os.path.join(tagged, tag), "wb").close()
    for directory, subdirectories, _files in os.walk(os.path.join(out, "angosd", "repositories")):
        if os.path.basename(directory) == "_manifests" and "revisions" in subdirectories:
            open(os.path.join(directory, "linked"), "wb").close()
    summary.linked = True
    with open(os.path.join(out, "store.json"), "w") as handle:
        json.dump(asdict(summary), handle, indent=1)


def ensure(out: str, tags: int, repos: int, **options: int) -> Summary:
    """The store below ``out``, generated unless one of the same size is already there."""
    if os.path.exists(os.path.join(out, "store.json")):
        summary = load(out)
        if summary.tags == tags and summary.repositories == repos:
            if not summary.linked:
                link(out, summary)
            return summary
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    return generate(out, tags, repos, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="directory to write (must not exist, or be empty)")
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--repos", type=int, default=100)
    parser.add_argument("--big-tags", type=int, default=10_000, help="tags of the large repository (at most half)")
    parser.add_argument("--referrers", type=int, default=1_000)
    parser.add_argument("--groups", type=int, default=20, help="first name components")
    args = parser.parse_args()
    if os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"{args.out} is not empty")
    os.makedirs(args.out, exist_ok=True)
    summary = generate(args.out, args.tags, args.repos, args.big_tags, args.referrers, args.groups)
    print(f"{summary.tags} tags in {summary.repositories} repositories ({summary.revisions} revisions, "
          f"{summary.blobs} blobs; {summary.big} has {summary.big_tags} tags, {summary.signed} "
          f"{summary.referrers} referrers) in {summary.seconds:.1f}s")


if __name__ == "__main__":
    main()
