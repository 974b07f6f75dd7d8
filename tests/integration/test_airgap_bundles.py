"""Air-gapped sites end to end: image-set sync, signed incremental bundles, a disconnected import.

Real components: Debian's ``docker-registry`` as the upstream, the ``angosd`` command line,
an angosd daemon syncing on a schedule, and on the disconnected side the import, a daemon
and skopeo all inside a network namespace without network (``unshare -n``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon
from tests.integration.images import SKOPEO, build_image, build_index, skopeo
from tests.integration.upstreams import DockerRegistry, require_tool, wait_for

UNSHARE = "/usr/bin/unshare"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool(SKOPEO, "skopeo")
    require_tool(UNSHARE, "util-linux")
    if subprocess.run([UNSHARE, "-n", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot create a network namespace here (unshare -n needs privileges)")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def angosd(*args: str, offline: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``angosd`` command line; ``offline`` runs it in a network namespace with no network."""
    command = [sys.executable, "-m", "angosd", *args]
    if offline:
        command = [UNSHARE, "-n", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(), check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stderr


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"{result.args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("angosd import: bundle refused: "), result.stderr
    return last


def push(upstream: DockerRegistry, layout_ref: str, target: str, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *extra, layout_ref, f"docker://{upstream.host}/{target}")


SET_FILE = """
upstream = "hub"
referrers = true

[[image]]
name = "apps/web"
glob = ["v1.*"]

[[image]]
name = "apps/db"
semver = ">=2.0, <3"
newest = 2
"""


def connected_config(path: Path, store: Path, upstream: DockerRegistry, extra: str = "") -> str:
    path.write_text(f'[blob_store.fs]\nroot_dir = {json.dumps(str(store))}\n'
                    f'[repository."hub"]\n[[repository."hub".upstream]]\nurl = {json.dumps(upstream.url)}\n'
                    f'connect_timeout_secs = 2\nread_timeout_secs = 15\n{extra}')
    return str(path)


def disconnected_config(path: Path, store: Path, public_key: Path) -> str:
    path.write_text(f'[blob_store.fs]\nroot_dir = {json.dumps(str(store))}\n'
                    f'[bundle]\ntrusted_keys = [{json.dumps(str(public_key))}]\n')
    return str(path)


def tags_of(store: Path) -> dict[str, str]:
    """namespace:tag -> digest, read from the store's files."""
    found = {}
    root = store / "repositories"
    for directory, _subdirs, files in os.walk(root):
        if directory.endswith("/_manifests/tags"):
            namespace = os.path.relpath(directory, root)[: -len("/_manifests/tags")]
            for tag in files:
                found[f"{namespace}:{tag}"] = (Path(directory) / tag).read_text()
    return found


def stored(store: Path) -> int:
    """How many blobs' bytes are in ``store``."""
    return len(list((store / "blobs").rglob("data"))) if (store / "blobs").exists() else 0


def visible(store: Path) -> list[str]:
    """What the API could show of ``store``: tags, manifest revisions, blob ownership (files)."""
    found = []
    for directory, _subdirs, files in os.walk(store):
        relative = os.path.relpath(directory, store)
        if any(part in relative.split("/") for part in ("_manifests", "_blobs", "_referrers", "owners")):
            found += [os.path.join(relative, name) for name in files]
    return sorted(found)


def offline_pull(store: Path, config: str, refs: list[str], into: Path) -> None:
    """Start a daemon on ``store`` inside a network namespace with no network and copy each of
    ``refs`` (namespace:tag) out of it with skopeo, inside the same namespace."""
    script = into / "pull.sh"
    log = into / "daemon.log"
    copies = "\n".join(f'{SKOPEO} copy --all --src-tls-verify=false docker://127.0.0.1:$PORT/{ref} '
                       f'oci:{into / ref.replace("/", "_").replace(":", "_")}:x || exit 1' for ref in refs)
    script.write_text(f"""set -u
ip link set lo up
[ "$(ip -o link show | wc -l)" = 1 ] || exit 3  # loopback only: no network at all
{sys.executable} -c 'from twisted.scripts.twistd import run; run()' -n --pidfile= angosd \\
    --listen tcp:0:interface=127.0.0.1 --workers 1 -c {config} >{log} 2>&1 &
DAEMON=$!
for i in $(seq 300); do
  PORT=$(sed -n 's/.*RegistrySite starting on \\([0-9]*\\).*/\\1/p' {log} | head -1)
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || {{ kill $DAEMON; exit 2; }}
{copies}
STATUS=$?
kill $DAEMON; wait $DAEMON
exit $STATUS
""")
    result = subprocess.run([UNSHARE, "-n", "sh", str(script)], capture_output=True, text=True, env=env(),
                            timeout=600, check=False)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{log.read_text() if log.exists() else ''}"


def assert_identical(pulled: Path, upstream_root: Path) -> None:
    """Every blob skopeo pulled hashes to its name and equals the upstream's bytes."""
    blobs = sorted((pulled / "blobs" / "sha256").iterdir())
    assert blobs
    data_root = upstream_root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    for blob in blobs:
        upstream_copy = data_root / blob.name[:2] / blob.name / "data"
        assert upstream_copy.read_bytes() == blob.read_bytes(), blob.name


@pytest.fixture
def sites(tmp_path: Path):  # type: ignore[no-untyped-def]
    upstream = DockerRegistry(tmp_path / "upstream").start()
    source = tmp_path / "images"
    push(upstream, build_image(str(source / "web"), "v1.0", layer_sizes=(4096, 200_000), seed=1).ref,
         "apps/web:v1.0")
    push(upstream, build_image(str(source / "web"), "v1.1", layer_sizes=(4096, 150_000), seed=2).ref,
         "apps/web:v1.1")
    push(upstream, build_image(str(source / "web"), "v2.0", seed=3).ref, "apps/web:v2.0")  # not selected
    for seed, tag in enumerate(("1.9", "2.0", "2.1", "2.2"), start=10):
        push(upstream, build_image(str(source / "db"), tag, layer_sizes=(8192,), seed=seed).ref, f"apps/db:{tag}")
    key = tmp_path / "signing.pem"
    ok(angosd("keygen", "-o", str(key)))
    set_file = tmp_path / "images.toml"
    set_file.write_text(SET_FILE)
    try:
        yield upstream, source, key, set_file
    finally:
        upstream.stop()


def test_weekly_workflow_full_then_incremental(tmp_path: Path, sites) -> None:  # type: ignore[no-untyped-def]
    upstream, source, key, set_file = sites
    connected = tmp_path / "connected"
    offline = tmp_path / "offline"
    config = connected_config(tmp_path / "connected.toml", connected, upstream)
    offline_config = disconnected_config(tmp_path / "offline.toml", offline, Path(f"{key}.pub"))

    ok(angosd("mirror", "-c", config, "--set", str(set_file)))
    assert sorted(tags_of(connected)) == ["hub/apps/db:2.1", "hub/apps/db:2.2", "hub/apps/web:v1.0",
                                          "hub/apps/web:v1.1"]

    week1 = tmp_path / "week1.tar"
    ok(angosd("export", "-c", config, "--set", str(set_file), "--sign-key", str(key), "-o", str(week1)))
    # a full single-volume bundle is an OCI layout skopeo reads
    skopeo("copy", f"oci-archive:{week1}:hub/apps/web:v1.0", f"oci:{tmp_path / 'direct'}:x")
    ok(angosd("import", "-c", offline_config, "--state", str(tmp_path / "offline-state.json"), str(week1),
              offline=True))
    assert tags_of(offline) == tags_of(connected)

    # upstream: a new tag, a newer db version, and a new platform of an existing tag
    web12 = build_image(str(source / "web"), "v1.2", layer_sizes=(120_000, 100_000), seed=5)
    push(upstream, web12.ref, "apps/web:v1.2")
    push(upstream, build_image(str(source / "db"), "2.3", layer_sizes=(8192,), seed=6).ref, "apps/db:2.3")
    multi = build_index(str(source / "multi"), "v1.1", seed=7)
    push(upstream, multi.ref, "apps/web:v1.1", "--all")
    ok(angosd("mirror", "-c", config, "--set", str(set_file)))

    week2 = tmp_path / "week2.tar"
    out = ok(angosd("export", "-c", config, "--set", str(set_file), "--sign-key", str(key), "--since",
                    str(tmp_path / "offline-state.json"), "--max-volume-size", "256KiB", "-o", str(week2)))
    assert "incremental bundle" in out
    volumes = sorted(tmp_path.glob("week2.*.tar"))
    assert len(volumes) >= 2
    assert all(path.stat().st_size <= 256 * 1024 for path in volumes)
    full_size = week1.stat().st_size
    assert sum(path.stat().st_size for path in volumes) < full_size + 400_000  # nothing of week 1 again
    layer_v10 = json.loads(subprocess.run(["tar", "-xOf", str(week1), "angosd-bundle.json"], capture_output=True,
                                          check=True).stdout)["blobs"]
    carried2 = set()
    for path in volumes:
        listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout
        carried2 |= {line.split("/")[-1] for line in listing.splitlines() if line.startswith("blobs/sha256/")}
    assert not carried2 & {entry[0].split(":")[1] for entry in layer_v10}

    # each volume can be checked on its own (e.g. right after copying it to the media)
    before = visible(offline)
    checked = ok(angosd("import", "-c", offline_config, "--check", str(volumes[1]), offline=True))
    others = [str(n) for n in range(1, len(volumes) + 1) if n != 2]
    assert "verified, signed by signing.pem.pub" in checked
    assert f"not given: volume{'s' if len(others) > 1 else ''} {', '.join(others)} of {len(volumes)}" in checked
    assert visible(offline) == before  # --check writes nothing
    # one volume missing: named; then all of them in reverse order
    result = refused(angosd("import", "-c", offline_config, *map(str, volumes[1:]), offline=True))
    assert "missing volume 1 of" in result
    ok(angosd("import", "-c", offline_config, "--state", str(tmp_path / "offline-state.json"),
              *map(str, reversed(volumes)), offline=True))
    assert tags_of(offline) == tags_of(connected)
    assert not [path for path in visible(offline) if path.endswith("/_bundle-import")]  # staging markers gone

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    offline_pull(offline, offline_config, ["hub/apps/web:v1.1", "hub/apps/web:v1.2", "hub/apps/db:2.3"], pulled)
    for name in ("hub_apps_web_v1.1", "hub_apps_web_v1.2", "hub_apps_db_2.3"):
        assert_identical(pulled / name, upstream.directory)
    index = json.loads((pulled / "hub_apps_web_v1.1" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == multi.digest  # the new platforms came along


def _bundle(tmp_path: Path, sites, name: str = "b.tar") -> tuple[str, Path, Path]:  # type: ignore[no-untyped-def]
    upstream, _source, key, set_file = sites
    connected = tmp_path / "connected"
    config = connected_config(tmp_path / "connected.toml", connected, upstream)
    ok(angosd("mirror", "-c", config, "--set", str(set_file)))
    bundle = tmp_path / name
    ok(angosd("export", "-c", config, "--set", str(set_file), "--sign-key", str(key), "-o", str(bundle)))
    return config, bundle, connected


def _rewrite(bundle: Path, out: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Copy the tar ``bundle`` to ``out`` with ``change(name, data)`` applied (None drops a member)."""
    import tarfile

    with tarfile.open(bundle) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as target:
        for member in source:
            data = source.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            if data is not None:
                data = change(member.name, data)
                if data is None:
                    continue
                member.size = len(data)
            import io
            target.addfile(member, io.BytesIO(data) if data is not None else None)


def test_tampered_bundles_are_refused_and_nothing_shows(tmp_path: Path, sites) -> None:  # type: ignore[no-untyped-def]
    _config, bundle, _connected = _bundle(tmp_path, sites)
    key = sites[2]
    offline = tmp_path / "offline"
    offline_config = disconnected_config(tmp_path / "offline.toml", offline, Path(f"{key}.pub"))
    contents = json.loads(subprocess.run(["tar", "-xOf", str(bundle), "angosd-bundle.json"], capture_output=True,
                                         check=True).stdout)
    big = max(contents["blobs"], key=lambda entry: entry[1])
    member = "blobs/sha256/" + big[0].split(":")[1]

    def flip(name: str, data: bytes) -> bytes | None:
        if name != member:
            return data
        return data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]

    def remove(name: str, data: bytes) -> bytes | None:
        return None if name == member else data

    def edit_tag(name: str, data: bytes) -> bytes | None:
        if name != "angosd-bundle.json":
            return data
        document = json.loads(data)
        document["tags"][0][2] = document["tags"][-1][2]
        document["tags"][0][0] = document["tags"][-1][0]
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    cases = {"flipped": (flip, f"blob {big[0]} is corrupt"), "removed": (remove, f"lacks blob {big[0]}"),
             "edited": (edit_tag, "signature of angosd-bundle.json does not verify")}
    for name, (change, message) in cases.items():
        tampered = tmp_path / f"{name}.tar"
        _rewrite(bundle, tampered, change)
        assert message in refused(angosd("import", "-c", offline_config, str(tampered), offline=True)), name
        if name == "flipped":
            assert message in refused(angosd("import", "-c", offline_config, "--check", str(tampered)))
        assert visible(offline) == [], name

    other = tmp_path / "other.pem"
    ok(angosd("keygen", "-o", str(other)))
    untrusted = tmp_path / "untrusted.tar"
    ok(angosd("export", "-c", _config, "--set", str(sites[3]), "--sign-key", str(other), "-o", str(untrusted)))
    assert "untrusted key" in refused(angosd("import", "-c", offline_config, str(untrusted), offline=True))
    assert visible(offline) == []

    # an increment made for a base this store does not hold
    since = tmp_path / "since.json"
    ok(angosd("state", "-c", _config, "-o", str(since)))  # the connected store's own state as the base
    push(sites[0], build_image(str(sites[1] / "web"), "v1.5", layer_sizes=(5000,), seed=40).ref, "apps/web:v1.5")
    ok(angosd("mirror", "-c", _config, "--set", str(sites[3])))
    increment = tmp_path / "increment.tar"
    ok(angosd("export", "-c", _config, "--set", str(sites[3]), "--sign-key", str(key), "--since", str(since),
              "-o", str(increment)))
    message = refused(angosd("import", "-c", offline_config, str(increment), offline=True))
    assert "this store lacks" in message and "import the bundles before this one first" in message
    assert visible(offline) == []
    # the right order works
    ok(angosd("import", "-c", offline_config, str(bundle), offline=True))
    ok(angosd("import", "-c", offline_config, str(increment), offline=True))
    assert "hub/apps/web:v1.5" in tags_of(offline)
    assert any("/_blobs/" in path for path in visible(offline))  # what the checks above would have seen


def test_killed_import_resumes_to_the_same_state(tmp_path: Path, sites) -> None:  # type: ignore[no-untyped-def]
    upstream, source, key, _set_file = sites
    big = build_image(str(source / "big"), "v1.7", layer_sizes=(3_000_000, 3_000_000, 3_000_000, 2_000_000), seed=70)
    push(upstream, big.ref, "apps/web:v1.7")  # some weight, so that kills land inside the import
    _config, bundle, _connected = _bundle(tmp_path, sites)
    reference = tmp_path / "reference"
    ok(angosd("import", "-c", disconnected_config(tmp_path / "ref.toml", reference, Path(f"{key}.pub")),
              str(bundle)))
    expected = tags_of(reference)
    expected_blobs = sorted(p.relative_to(reference) for p in (reference / "blobs").rglob("data"))
    rng = random.Random(20)
    interrupted = partial = resumed = 0
    for attempt in range(3):
        store = tmp_path / f"killed{attempt}"
        config = disconnected_config(tmp_path / f"k{attempt}.toml", store, Path(f"{key}.pub"))
        for _kill in range(2):
            # kill once a random number of blobs is in the store: a random point inside the import
            target = rng.randrange(1, len(expected_blobs))
            process = subprocess.Popen([sys.executable, "-m", "angosd", "import", "-c", config, str(bundle)],
                                       env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while process.poll() is None and stored(store) < target:
                time.sleep(0.002)
            if process.poll() is None:
                interrupted += 1
            process.send_signal(signal.SIGKILL)
            process.wait()
            if stored(store) and tags_of(store) != expected:
                partial += 1
                assert set(tags_of(store)) <= set(expected)  # a tag, if any, only with its content
        staged_before = stored(store)
        final = ok(angosd("import", "-c", config, str(bundle)))
        already = int(re.search(r"(\d+) already in the store", final)[1])  # type: ignore[index]
        resumed += already > 0
        assert not [path for path in visible(store) if path.endswith("/_bundle-import")]
        assert already <= staged_before  # what a killed run verified and stored is not read again
        assert tags_of(store) == expected
        blobs = sorted(p.relative_to(store) for p in (store / "blobs").rglob("data"))
        assert blobs == expected_blobs
        for path in blobs:
            assert (store / path).read_bytes() == (reference / path).read_bytes()
        shutil.rmtree(store)
    assert interrupted >= 2 and partial >= 1 and resumed >= 1, (interrupted, partial, resumed)


def test_daemon_syncs_the_set_file_on_a_schedule(tmp_path: Path, sites) -> None:  # type: ignore[no-untyped-def]
    upstream, _source, _key, set_file = sites
    store = tmp_path / "scheduled"
    config = connected_config(tmp_path / "scheduled.toml", store, upstream,
                              f"[mirror]\nset_file = {json.dumps(str(set_file))}\ninterval_secs = 10\n"
                              "jitter_secs = 0\nfirst_run_delay_secs = 0\n")
    daemon = Daemon(str(tmp_path / "work"), str(store), configs=(config,), workers=1).start()
    try:
        wait_for(lambda: "hub/apps/db:2.2" in tags_of(store), 60, "the first scheduled sync")
        wait_for(lambda: 'angosd_mirror_runs_total{result="success"} 1.0' in
                 daemon.request("GET", "/metrics").body.decode(), 10, "the first run's figures")
        metrics = daemon.request("GET", "/metrics").body.decode()
        assert "angosd_mirror_last_success_timestamp_seconds 0.0" not in metrics
        assert "angosd_mirror_images_synced_total 4.0" in metrics
        push(upstream, build_image(str(tmp_path / "late"), "v1.9", seed=50).ref, "apps/web:v1.9")
        wait_for(lambda: "hub/apps/web:v1.9" in tags_of(store), 60, "the second scheduled sync")
        wait_for(lambda: 'angosd_mirror_runs_total{result="success"} 2.0' in
                 daemon.request("GET", "/metrics").body.decode(), 10, "the second run's figures")
        assert "hub/apps/web:v1.9" in daemon.log() and "1 changed" in daemon.log()
    finally:
        daemon.stop()


def test_with_workers_the_sync_runs_once_per_store(tmp_path: Path, sites) -> None:  # type: ignore[no-untyped-def]
    upstream, _source, _key, set_file = sites
    store = tmp_path / "scheduled"
    config = connected_config(tmp_path / "scheduled.toml", store, upstream,
                              f"[mirror]\nset_file = {json.dumps(str(set_file))}\ninterval_secs = 3600\n"
                              "jitter_secs = 0\nfirst_run_delay_secs = 0\n")
    daemon = Daemon(str(tmp_path / "work"), str(store), configs=(config,), workers=2).start()
    try:
        wait_for(lambda: "hub/apps/db:2.2" in tags_of(store), 60, "the first scheduled sync")
        # every worker reports the supervisor's single run
        for _ in range(6):
            wait_for(lambda: 'angosd_mirror_runs_total{result="success"} 1.0' in
                     daemon.request("GET", "/metrics").body.decode(), 10, "the run's figures")
        time.sleep(2)
    finally:
        daemon.stop()
    runs = [line for line in daemon.log().splitlines() if "mirror sync of" in line and "next run in" in line]
    assert len(runs) == 1, runs
    tag_lists = [(m, p) for m, p, _s in upstream.requests() if p.endswith("/tags/list")]
    assert len(tag_lists) == 2, tag_lists  # one listing per image of the set, not one per process
