"""Storage lifecycle on the real daemon and the real command line: retention (``angosd
prune``), online garbage collection measured on disk, and ``angosd scrub``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon
from tests.integration.ocihelpers import (
    OCI_INDEX,
    digest,
    image_manifest,
    index_manifest,
    push_blob,
    push_manifest,
    wait_for,
)

DAY = 86400
MiB = 1024 * 1024


# -- helpers shared with test_faults ---------------------------------------------------------


def angosd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The ``angosd`` command line as a child process."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "angosd", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Stdout lines of a command that must have succeeded."""
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout.splitlines()


def scrub_is_clean(config: str) -> str:
    """Run ``angosd scrub --dry-run`` and check it finds nothing to repair or quarantine."""
    lines = ok(angosd("scrub", "-c", config, "--dry-run"))
    summary = lines[-1]
    assert "0 to repair, 0 to quarantine" in summary, "\n".join(lines)
    return summary


def write_config(path: Path, root: Path, body: str = "") -> str:
    path.write_text(f'[blob_store.fs]\nroot_dir = "{root}"\n\n{body}')
    return str(path)


def mount_small_filesystem(directory: Path, size_mb: int = 64) -> Callable[[], None]:
    """Mount a ``size_mb`` tmpfs at ``directory`` (else an ext4 loop device); returns the unmount.

    Fails (never skips) with what went wrong when neither can be mounted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)],
                           capture_output=True, text=True, check=False)
    if tmpfs.returncode == 0:
        return lambda: subprocess.run(["umount", "-l", str(directory)], check=False)
    image = directory.parent / f"{directory.name}.img"
    with open(image, "wb") as sparse:
        sparse.truncate(size_mb * MiB)
    mkfs = subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], capture_output=True, text=True, check=False)
    loop = subprocess.run(["mount", "-o", "loop", str(image), str(directory)], capture_output=True, text=True,
                          check=False)
    if mkfs.returncode != 0 or loop.returncode != 0:
        pytest.fail(f"cannot mount a small filesystem: 'mount -t tmpfs' said {tmpfs.stderr.strip()!r}; "
                    f"mkfs.ext4 said {mkfs.stderr.strip()!r}; 'mount -o loop' said {loop.stderr.strip()!r}")
    return lambda: subprocess.run(["umount", "-l", str(directory)], check=False)


def remount(directory: Path, mode: str) -> None:
    """Remount a filesystem `mount_small_filesystem` mounted ``ro`` or ``rw``."""
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, f"cannot remount {directory} {mode}: {done.stderr.strip()}"


def write_json_atomic(path: Path, document: object) -> None:
    """Replace a store object the way the daemon does (temp file, rename)."""
    temp = path.parent / f".tmp-{uuid.uuid4().hex}"
    path.parent.mkdir(parents=True, exist_ok=True)
    temp.write_text(json.dumps(document))
    os.replace(temp, path)


def blob_sizes(root: Path) -> dict[str, int]:
    """Every stored blob's digest and data size (what garbage collection frees)."""
    found = {}
    for data in root.glob("blobs/*/*/*/data"):
        found[f"{data.parent.parent.parent.name}:{data.parent.name}"] = data.stat().st_size
    return found


def tree_bytes(directory: Path) -> int:
    """The sizes of every file below ``directory`` added up (data, markers, anything)."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


@dataclass
class Pushed:
    """An image pushed over HTTP: where, its manifest bytes and every blob it references."""

    namespace: str
    tag: str | None
    body: bytes
    blobs: list[bytes] = field(default_factory=list)
    media_type: str = "application/vnd.oci.image.manifest.v1+json"

    @property
    def digest(self) -> str:
        return digest(self.body)

    @property
    def blob_digests(self) -> set[str]:
        return {digest(blob) for blob in self.blobs}


def push_image(daemon: Daemon, namespace: str, tag: str | None, name: str, layers: Sequence[bytes] = (),
               subject: Pushed | None = None) -> Pushed:
    """Config (unique per ``name``) and layers, then the manifest by tag (or by digest when untagged)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "name": name}).encode()
    layers = list(layers) or [f"layer of {name}".encode() * 50]
    for blob in (config, *layers):
        push_blob(daemon, namespace, blob)
    body = image_manifest(config, layers, subject=subject.body if subject else None)
    push_manifest(daemon, namespace, tag or digest(body), body)
    return Pushed(namespace, tag, body, [config, *layers])


def push_index(daemon: Daemon, namespace: str, tag: str, children: Sequence[Pushed]) -> Pushed:
    body = index_manifest([child.body for child in children])
    push_manifest(daemon, namespace, tag, body, OCI_INDEX)
    return Pushed(namespace, tag, body, [], OCI_INDEX)


def readable(daemon: Daemon, pushed: Pushed, by_tag: bool = True) -> None:
    """The manifest (by tag, else digest) and every blob come back with their digests."""
    reference = pushed.tag if by_tag and pushed.tag else pushed.digest
    response = daemon.request("GET", f"/v2/{pushed.namespace}/manifests/{reference}",
                              headers={"Accept": pushed.media_type})
    assert response.status == 200, (pushed.namespace, reference, response.status)
    assert digest(response.body) == pushed.digest
    for blob in pushed.blobs:
        got = daemon.request("GET", f"/v2/{pushed.namespace}/blobs/{digest(blob)}")
        assert got.status == 200 and got.body == blob, (pushed.namespace, digest(blob), got.status)


def backdate(root: Path, pushed: Pushed, pushed_at: int | None = None, pulled_at: int | None = None) -> None:
    """Set a revision's push time and/or record a pull, as if they had happened then."""
    algorithm, hex_digest = pushed.digest.split(":")
    manifests = root / "repositories" / pushed.namespace / "_manifests"
    if pushed_at is not None:
        record_path = manifests / "revisions" / algorithm / hex_digest
        record = json.loads(record_path.read_text())
        record["pushed_at"] = pushed_at
        write_json_atomic(record_path, record)
    if pulled_at is not None:
        write_json_atomic(manifests / "pulls" / algorithm / hex_digest, {"last_pulled_at": pulled_at})


# -- retention, prune, garbage collection ----------------------------------------------------------

RETENTION = """
[global]
gc_grace_secs = 0

[global.retention_policy]
rules = [
  "image.tag != null && image.pushed_at > now() - days(7)",
  "image.last_pulled_at != null && image.last_pulled_at > now() - days(3)",
]

[repository."lc".retention_policy]
rules = ["top_pushed(1)"]

[repository."other"]
"""


@pytest.mark.slow
def test_prune_deletes_exactly_what_no_rule_keeps_and_gc_frees_exactly_those_bytes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    config = write_config(tmp_path / "angosd.toml", root, RETENTION)
    daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start()
    try:
        ns, other = "lc/app", "other/app"
        new = push_image(daemon, ns, "t-new", "new")
        kept_children = [push_image(daemon, ns, None, f"kept-child-{n}") for n in range(2)]
        multi = push_index(daemon, ns, "t-multi", kept_children)
        shared = b"shared layer " * 100
        old = push_image(daemon, ns, "t-old", "old", [shared, b"old layer" * 10])
        stale = push_image(daemon, ns, "t-stale", "stale", [shared, b"stale layer" * 10])
        old_children = [push_image(daemon, ns, None, f"old-child-{n}") for n in range(2)]
        old_multi = push_index(daemon, ns, "t-oldmulti", old_children)
        untagged = push_image(daemon, ns, None, "untagged")
        signature = push_image(daemon, ns, None, "signature", subject=new)
        kept_signature = push_image(daemon, ns, None, "kept-signature", subject=old)
        x = push_image(daemon, other, "t-x", "x")
        y = push_image(daemon, other, "t-y", "y")

        now = int(time.time())
        backdate(root, new, pushed_at=now - 8 * DAY)  # kept only by the repository's top_pushed(1)
        for child in kept_children:
            backdate(root, child, pushed_at=now - 9 * DAY)  # protected: children of a kept index
        backdate(root, multi, pushed_at=now - 9 * DAY, pulled_at=now - DAY)
        backdate(root, old, pushed_at=now - 10 * DAY)  # tag goes, revision protected by its kept referrer
        backdate(root, stale, pushed_at=now - 30 * DAY, pulled_at=now - 10 * DAY)
        for item in (*old_children, old_multi):
            backdate(root, item, pushed_at=now - 40 * DAY)
        backdate(root, untagged, pushed_at=now - DAY)
        backdate(root, signature, pushed_at=now - DAY)
        backdate(root, kept_signature, pushed_at=now - 20 * DAY, pulled_at=now - DAY)
        backdate(root, x, pushed_at=now - 10 * DAY)
        backdate(root, y, pushed_at=now - DAY)

        stale_upload = daemon.request("POST", f"/v2/{ns}/blobs/uploads/").headers["location"].rsplit("/", 1)[1]
        fresh_upload = daemon.request("POST", f"/v2/{ns}/blobs/uploads/").headers["location"].rsplit("/", 1)[1]
        info = root / "repositories" / ns / "_uploads" / stale_upload / "info"
        write_json_atomic(info, {**json.loads(info.read_text()), "started_at": now - 2 * 3600})

        deleted_tags = [(ns, "t-old", old), (ns, "t-oldmulti", old_multi), (ns, "t-stale", stale), (other, "t-x", x)]
        deleted = [stale, *old_children, old_multi, untagged, signature, x]
        expected = {f"would delete tag {n}:{t} ({p.digest})" for n, t, p in deleted_tags}
        expected |= {f"would delete manifest {p.namespace}@{p.digest}" for p in deleted}

        sizes_before = blob_sizes(root)
        files_before = sorted(str(p) for p in root.rglob("*"))
        lines = ok(angosd("prune", "-c", config, "--dry-run", "--uploads", "1h"))
        uploads = [line for line in lines if line.startswith("would delete upload")]
        assert uploads == [f"would delete upload {ns}/{stale_upload} (started {now - 2 * 3600}, 0 bytes)"]
        assert set(lines[:-1]) - set(uploads) == expected
        assert lines[-1] == "prune: would delete 4 tags, 7 manifests, 1 upload sessions (dry run, nothing changed)"
        assert sorted(str(p) for p in root.rglob("*")) == files_before

        lines = ok(angosd("prune", "-c", config, "--uploads", "1h"))
        assert {line.replace("deleted", "would delete", 1) for line in lines[:-1]} == expected | set(uploads)
        assert lines[-1].startswith("prune: deleted 4 tags, 7 manifests, 1 upload sessions;")
        assert os.listdir(root / "repositories" / ns / "_uploads") == [fresh_upload]

        # Garbage: the deleted manifests and the blobs only they used (not the shared layer,
        # not the config and layer of the kept "old" revision).
        remaining = [new, *kept_children, multi, old, kept_signature, y]
        still_needed = {p.digest for p in remaining} | set().union(*(p.blob_digests for p in remaining))
        garbage = ({p.digest for p in deleted} | set().union(*(p.blob_digests for p in deleted))) - still_needed
        assert digest(shared) not in garbage
        lengths = {p.digest: len(p.body) for p in (*remaining, *deleted)}
        lengths |= {digest(blob): len(blob) for p in (*remaining, *deleted) for blob in p.blobs}
        expected_freed = sum(lengths[d] for d in garbage)  # what the pushes put there, not what the disk says
        assert expected_freed == sum(sizes_before[d] for d in garbage) > 0
        store_before = tree_bytes(root / "blobs")
        wait_for(lambda: set(blob_sizes(root)) == set(sizes_before) - garbage, timeout=60)
        time.sleep(2.5)  # two more passes: nothing else goes
        assert set(blob_sizes(root)) == set(sizes_before) - garbage
        assert sum(sizes_before.values()) - sum(blob_sizes(root).values()) == expected_freed
        assert store_before - tree_bytes(root / "blobs") == expected_freed  # every file under blobs/
        reclaimed = re.findall(r"garbage collection: .* reclaimed \((\d+) bytes\)", daemon.log())
        assert sum(int(size) for size in reclaimed) == expected_freed, reclaimed  # the collector's own account
        print(f"retention: {len(garbage)} blobs, {expected_freed} bytes reclaimed of {sum(sizes_before.values())}")

        for pushed in (new, multi, y, *kept_children):
            readable(daemon, pushed)
        readable(daemon, old, by_tag=False)
        readable(daemon, kept_signature, by_tag=False)
        for namespace, tag, _pushed in deleted_tags:
            assert daemon.request("GET", f"/v2/{namespace}/manifests/{tag}").status == 404, tag
        for pushed in deleted:
            assert daemon.request("GET", f"/v2/{pushed.namespace}/manifests/{pushed.digest}").status == 404
        assert daemon.request("GET", f"/v2/{ns}/tags/list").json()["tags"] == ["t-multi", "t-new"]
        assert daemon.request("GET", f"/v2/{other}/tags/list").json()["tags"] == ["t-y"]
        referrers = daemon.request("GET", f"/v2/{ns}/referrers/{old.digest}").json()
        assert [m["digest"] for m in referrers["manifests"]] == [kept_signature.digest]
        scrub_is_clean(config)
    finally:
        daemon.stop()


def test_prune_without_rules_keeps_everything_and_bad_arguments_fail_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "store"
    config = write_config(tmp_path / "plain.toml", root)
    daemon = Daemon(str(tmp_path / "work"), str(root)).start()
    try:
        push_image(daemon, "ns/app", "v1", "one")
    finally:
        daemon.stop()
    assert ok(angosd("prune", "-c", config)) == ["prune: deleted 0 tags, 0 manifests, 0 upload sessions; "
                                                 "0 blobs released to garbage collection"]
    bad_rule = write_config(tmp_path / "bad.toml", root, '[global.retention_policy]\nrules = ["image.tag =="]\n')
    for args in (("prune", "-c", bad_rule), ("prune", "-c", config, "--uploads", "5 years"),
                 ("scrub", "-c", str(tmp_path / "missing.toml"))):
        result = angosd(*args)
        assert result.returncode == 1, result
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert result.stderr.startswith(f"angosd {args[0]}: "), result.stderr


# -- scrub ----------------------------------------------------------------------------------------


def test_scrub_repairs_and_quarantines_while_the_daemon_serves(tmp_path: Path) -> None:
    root = tmp_path / "store"
    config = write_config(tmp_path / "angosd.toml", root)
    daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start()
    try:
        healthy = push_image(daemon, "ns/app", "good", "good")
        damaged = push_image(daemon, "ns/app", "bad", "bad", [b"will rot" * 100])
        scrub_is_clean(config)

        rotten = digest(b"will rot" * 100).split(":")[1]
        (root / "blobs" / "sha256" / rotten[:2] / rotten / "data").write_bytes(b"rotted" * 100)
        (root / "repositories" / "ns/app" / "_manifests" / "tags" / "ghost").write_text(digest(b"nothing"))
        owner = root / "blobs" / "sha256" / damaged.digest.split(":")[1][:2] / damaged.digest.split(":")[1] / \
            "owners" / "ns+app"
        owner.unlink()

        dry = ok(angosd("scrub", "-c", config, "--dry-run"))
        assert "3 to repair, 1 to quarantine" in dry[-1], dry  # ownership of the rotten blob, ghost, owner
        assert any(line.startswith(f"would quarantine: blob sha256:{rotten}") for line in dry), dry
        assert (root / "repositories" / "ns/app" / "_manifests" / "tags" / "ghost").exists()

        done = ok(angosd("scrub", "-c", config))
        assert "1 quarantined" in done[-1], done
        notes = list((root / "_quarantine").glob("*/note.json"))
        assert len(notes) == 1 and "hash" in json.loads(notes[0].read_text())["reason"]
        assert owner.exists()
        scrub_is_clean(config)

        readable(daemon, healthy)
        assert daemon.request("GET", f"/v2/ns/app/blobs/{digest(b'will rot' * 100)}").status == 404
        assert daemon.request("GET", "/v2/ns/app/manifests/ghost").status == 404
        wait_for(lambda: daemon.request("GET", "/v2/ns/app/tags/list").json()["tags"] == ["bad", "good"])
    finally:
        daemon.stop()


def test_prune_and_scrub_report_progress_and_stop_in_one_line_when_the_store_is_read_only(tmp_path: Path) -> None:
    """Dry runs only read (they work on a read-only store); real runs that cannot write stop
    with exit status 1 and one line naming the reason, after printing what they found."""
    mount = tmp_path / "small"
    unmount = mount_small_filesystem(mount, 32)
    try:
        root = mount / "store"
        config = write_config(tmp_path / "angosd.toml", root,
                              "[global]\ngc_grace_secs = 0\n\n"
                              "[global.retention_policy]\nrules = ['image.tag == \"keep\"']\n")
        daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start(timeout=120)
        try:
            keep = push_image(daemon, "ro/app", "keep", "keep")
            drop = push_image(daemon, "ro/app", "drop", "drop")
            other = push_image(daemon, "ro/other", "drop", "other-drop")
        finally:
            daemon.stop()
        layer = digest(keep.blobs[1]).split(":")[1]
        (root / "blobs" / "sha256" / layer[:2] / layer / "owners" / "ro+app").unlink()  # for scrub to repair
        expected = [f"would delete tag ro/app:drop ({drop.digest})", f"would delete manifest ro/app@{drop.digest}",
                    f"would delete tag ro/other:drop ({other.digest})",
                    f"would delete manifest ro/other@{other.digest}"]

        remount(mount, "ro")
        try:
            dry = angosd("prune", "-c", config, "--dry-run")
            assert ok(dry) == [*expected, "prune: would delete 2 tags, 2 manifests, 0 upload sessions "
                                          "(dry run, nothing changed)"]
            assert dry.stderr.splitlines() == ["prune: 2 namespaces"]
            dry = angosd("scrub", "-c", config, "--dry-run")
            assert ok(dry)[0] == f"would repair: ro/app: reverse ownership record of sha256:{layer} recreated"
            assert "1 to repair, 0 to quarantine" in dry.stdout.splitlines()[-1]
            assert dry.stderr.splitlines() == ["verifying blobs: 100% 9/9 items", "checking namespaces: 100% 2/2 items",
                                               "collecting garbage: 100% 1/1 items"]

            for command, printed in (("prune", []), ("scrub", [f"repair: ro/app: reverse ownership record of "
                                                               f"sha256:{layer} recreated"])):
                failed = angosd(command, "-c", config)
                assert failed.returncode == 1, failed
                assert failed.stdout.splitlines() == printed, failed.stdout  # found before it failed; no summary
                reason = failed.stderr.splitlines()[-1]
                assert reason.startswith(f"angosd {command}: Read-only file system ("), failed.stderr
                assert "Traceback" not in failed.stderr and "unexpected" not in failed.stderr, failed.stderr
        finally:
            remount(mount, "rw")

        done = ok(angosd("prune", "-c", config))
        assert [line.replace("deleted", "would delete", 1) for line in done[:-1]] == expected
        assert ok(angosd("scrub", "-c", config))[0] == f"repair: ro/app: reverse ownership record of " \
                                                       f"sha256:{layer} recreated"
        scrub_is_clean(config)
    finally:
        unmount()
