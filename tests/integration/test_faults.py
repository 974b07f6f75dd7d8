"""Fault tolerance of the real daemon: kill -9 during pushes, a full disk, concurrent pushes
of one tag and one blob, and garbage collection racing pushes and deletes."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, Response
from tests.integration.ocihelpers import OCI_INDEX, OCI_MANIFEST, digest, image_manifest, index_manifest, payload
from tests.integration.test_lifecycle import (
    MiB,
    Pushed,
    angosd,
    mount_small_filesystem,
    ok,
    push_image,
    readable,
    scrub_is_clean,
    write_config,
)

#: What a killed (or restarting) daemon does to a client.
TRANSIENT = (OSError, http.client.HTTPException)


def range_end(response: Response) -> int:
    """The offset an upload reports (``Range: 0-<last>``)."""
    last = int(response.headers["range"].split("-")[1])
    return 0 if last == 0 and response.headers["range"] == "0-0" else last + 1


#: How long a client waits for a killed daemon to come back (a loaded machine is slow to restart it).
PATIENCE = 180.0


class Persistent:
    """Requests to a daemon that may be killed and restarted at any moment: transient
    failures are retried (counted) for as long as one outage lasts up to ``patience``."""

    def __init__(self, daemon: Daemon, patience: float = PATIENCE) -> None:
        self.daemon = daemon
        self.patience = patience
        self.interrupted = 0
        self.resumed = 0
        self.completed_before_kill = 0

    def retry(self, attempt: Callable[[], Any]) -> Any:
        outage_began: float | None = None
        while True:
            try:
                return attempt()
            except TRANSIENT:
                self.interrupted += 1
                now = time.monotonic()
                outage_began = now if outage_began is None else outage_began
                assert now - outage_began < self.patience, f"the daemon did not come back in {self.patience}s"
                time.sleep(0.05)

    def monolithic(self, namespace: str, blob: bytes) -> None:
        def attempt() -> None:
            response = self.daemon.request("POST", f"/v2/{namespace}/blobs/uploads/?digest={digest(blob)}", blob,
                                           {"Content-Type": "application/octet-stream"})
            assert response.status == 201, (response.status, response.body[:300])

        self.retry(attempt)

    def chunked(self, namespace: str, blob: bytes, chunk: int) -> None:
        """POST, PATCH chunks, PUT; after an interruption, ask the session its offset and go on."""
        state: dict[str, Any] = {"location": None, "sent": 0}

        def attempt() -> None:
            if state["location"] is None:
                response = self.daemon.request("POST", f"/v2/{namespace}/blobs/uploads/")
                assert response.status == 202, response
                state["location"], offset = response.headers["location"], 0
            else:
                status = self.daemon.request("GET", state["location"])
                if status.status == 404:  # the PUT completed before the kill: the blob is there
                    head = self.daemon.request("HEAD", f"/v2/{namespace}/blobs/{digest(blob)}")
                    assert head.status == 200, ("upload lost", status, head)
                    assert int(head.headers["content-length"]) == len(blob)
                    self.completed_before_kill += 1
                    return
                assert status.status == 204, status
                offset = range_end(status)
                assert offset <= state["sent"], ("the upload claims bytes it was never sent", offset, state)
                self.resumed += 1
            while offset < len(blob):
                part = blob[offset:offset + chunk]
                state["sent"] = max(state["sent"], offset + len(part))
                response = self.daemon.request("PATCH", state["location"], part, {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(part) - 1}"})
                assert response.status == 202, response
                offset = range_end(response)
            done = self.daemon.request("PUT", f"{state['location']}?digest={digest(blob)}")
            assert done.status == 201, (done.status, done.body[:300])

        self.retry(attempt)

    def manifest(self, namespace: str, reference: str, body: bytes, media_type: str) -> None:
        def attempt() -> None:
            response = self.daemon.request("PUT", f"/v2/{namespace}/manifests/{reference}", body,
                                           {"Content-Type": media_type})
            assert response.status == 201, (response.status, response.body[:300])

        self.retry(attempt)


@dataclass
class PushPlan:
    """One push of the kill test: an image, or an index of two images, by a unique tag."""

    namespace: str
    tag: str
    images: list[Pushed] = field(default_factory=list)
    index: Pushed | None = None
    #: (blob, chunk size or 0 for monolithic)
    uploads: list[tuple[bytes, int]] = field(default_factory=list)

    @property
    def top(self) -> Pushed:
        return self.index or self.images[0]


def make_plans(rng: random.Random, count: int) -> list[PushPlan]:
    plans = []
    for n in range(count):
        plan = PushPlan(f"kill/ns{n % 4}", f"push-{n}")
        for child in range(2 if rng.random() < 0.3 else 1):
            config = json.dumps({"architecture": "amd64", "os": "linux", "push": n, "child": child}).encode()
            layers = [payload(rng.randint(1024, 3 * MiB), seed=n * 10 + child * 3 + k)
                      for k in range(rng.randint(1, 2))]
            for blob in (config, *layers):
                chunked = len(blob) > 64 * 1024 and rng.random() < 0.6
                plan.uploads.append((blob, rng.choice((64, 256, 512)) * 1024 if chunked else 0))
            body = image_manifest(config, layers)
            plan.images.append(Pushed(plan.namespace, None, body, [config, *layers]))
        if len(plan.images) == 2:
            plan.index = Pushed(plan.namespace, plan.tag, index_manifest([i.body for i in plan.images]), [],
                                OCI_INDEX)
        else:
            plan.images[0].tag = plan.tag
        plans.append(plan)
    return plans


def push_plan(client: Persistent, plan: PushPlan) -> None:
    for blob, chunk in plan.uploads:
        if chunk:
            client.chunked(plan.namespace, blob, chunk)
        else:
            client.monolithic(plan.namespace, blob)
    for image in plan.images:
        client.manifest(plan.namespace, image.tag or image.digest, image.body, OCI_MANIFEST)
    if plan.index is not None:
        client.manifest(plan.namespace, plan.tag, plan.index.body, OCI_INDEX)


# -- kill -9 --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_acknowledged_push(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    root = tmp_path / "store"
    config = write_config(tmp_path / "angosd.toml", root, "[global]\ngc_grace_secs = 1\n")
    daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start(timeout=120)
    plans = make_plans(rng, 100)
    acknowledged: list[PushPlan] = []
    errors: list[BaseException] = []
    clients: list[Persistent] = []
    queue = list(plans)
    lock = threading.Lock()

    def pusher() -> None:
        client = Persistent(daemon)
        clients.append(client)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    plan = queue.pop(0)
                push_plan(client, plan)
                with lock:
                    acknowledged.append(plan)
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=pusher, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    kills = 0
    try:
        while kills < 10 and any(t.is_alive() for t in threads):
            time.sleep(rng.uniform(0.1, 0.7))
            daemon.kill()
            kills += 1
            daemon.start(timeout=120)
        for thread in threads:
            thread.join(max(1.0, started + 900 - time.monotonic()))
        assert not any(t.is_alive() for t in threads), f"pushes still running after 900 s: {len(queue)} queued"
        assert not errors, errors
        assert len(acknowledged) == 100
        assert kills >= 5, "the pushes ended before most kills"
        assert sum(client.interrupted for client in clients) >= kills // 2
        for plan in acknowledged:
            for image in plan.images:
                readable(daemon, image, by_tag=plan.index is None)
            if plan.index is not None:
                readable(daemon, plan.index)
        # Nothing else is visible: exactly the acknowledged tags, in exactly the namespaces pushed to.
        assert daemon.request("GET", "/v2/_catalog").json()["repositories"] == [f"kill/ns{n}" for n in range(4)]
        for n in range(4):
            tags = daemon.request("GET", f"/v2/kill/ns{n}/tags/list").json()["tags"]
            assert sorted(tags) == sorted(p.tag for p in acknowledged if p.namespace == f"kill/ns{n}")
        assert sum(client.resumed for client in clients) >= 1, "no chunked upload was interrupted and resumed"
        leftovers = 0
        for session in root.glob("repositories/kill/*/_uploads/*"):
            status = daemon.request("GET", f"/v2/kill/{session.parent.parent.name}/blobs/uploads/{session.name}")
            if status.status == 204:  # an upload a kill interrupted and the client restarted: its true offset
                assert range_end(status) == (session / "data").stat().st_size
                leftovers += 1
            else:
                assert status.status == 404, status
        print(f"kill -9: {kills} kills, {sum(c.interrupted for c in clients)} interrupted requests, "
              f"{sum(c.resumed for c in clients)} chunked uploads resumed at their offset, "
              f"{sum(c.completed_before_kill for c in clients)} completed just before a kill, "
              f"{leftovers} abandoned sessions, {time.monotonic() - started:.1f} s")
    finally:
        daemon.stop()
    scrub_is_clean(config)


# -- full disk ----------------------------------------------------------------------------------


def fill(path: Path) -> int:
    """Write zeros into ``path`` until the filesystem is full; returns the bytes written."""
    written = 0
    block = b"\0" * MiB
    with open(path, "wb", buffering=0) as filler:
        while True:
            try:
                written += filler.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (64 * 1024, 4096, 1):  # the last partial pages
            while True:
                try:
                    written += filler.write(block[:size])
                except OSError:
                    break
    return written


def assert_full(response: Response) -> None:
    assert response.status == 507, (response.status, response.body[:300])
    message = response.json()["errors"][0]["message"]
    assert "disk is full" in message or "insufficient storage" in message, message


@pytest.mark.slow
def test_a_full_disk_refuses_writes_cleanly_and_recovers(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    unmount = mount_small_filesystem(mount)
    try:
        root = mount / "store"
        # Missing references allowed: the late manifest below must reach the full store.
        config = write_config(tmp_path / "angosd.toml", root,
                              "[global]\ngc_grace_secs = 0\nallow_missing_manifest_references = true\n")
        daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start()
        try:
            victim = push_image(daemon, "full/app", "victim", "victim", [payload(6 * MiB, seed=1)])
            keeper = push_image(daemon, "full/app", "keeper", "keeper")
            session = daemon.request("POST", "/v2/full/app/blobs/uploads/").headers["location"]
            # An upload whose bytes are all in before the disk fills: completing it is a rename.
            small = payload(300 * 1024, seed=4)
            whole = daemon.request("POST", "/v2/full/app/blobs/uploads/").headers["location"]
            assert daemon.request("PATCH", whole, small, {"Content-Type": "application/octet-stream"}).status == 202
            filler = mount / "filler"
            fill(filler)

            big = payload(2 * MiB, seed=2)
            assert_full(daemon.request("POST", f"/v2/full/app/blobs/uploads/?digest={digest(big)}", big,
                                       {"Content-Type": "application/octet-stream"}))
            assert daemon.request("HEAD", f"/v2/full/app/blobs/{digest(big)}").status == 404
            assert_full(daemon.request("PATCH", session, big, {"Content-Type": "application/octet-stream",
                                                                "Content-Range": f"0-{len(big) - 1}"}))
            offset = range_end(daemon.request("GET", session))
            stored = root / "repositories" / session.split("/v2/")[1].replace("blobs/uploads", "_uploads") / "data"
            assert offset == stored.stat().st_size
            config_blob = json.dumps({"architecture": "amd64", "os": "linux", "n": "late"}).encode()
            late_body = image_manifest(config_blob, [big])
            assert_full(daemon.request("PUT", "/v2/full/app/manifests/late", late_body,
                                       {"Content-Type": OCI_MANIFEST}))
            assert daemon.request("GET", "/v2/full/app/manifests/late").status == 404
            assert daemon.request("GET", f"/v2/full/app/manifests/{digest(late_body)}").status == 404
            assert daemon.request("POST", "/v2/full/app/blobs/uploads/").status in (202, 507)
            completed = daemon.request("PUT", f"{whole}?digest={digest(small)}")
            print(f"full disk: completing an upload whose bytes are all in answered {completed.status}")
            if completed.status == 507:  # no room even for its ownership records: the session keeps every byte
                assert_full(completed)
                assert range_end(daemon.request("GET", whole)) == len(small)
                assert daemon.request("HEAD", f"/v2/full/app/blobs/{digest(small)}").status == 404
            else:
                assert completed.status == 201, completed
                assert daemon.request("GET", f"/v2/full/app/blobs/{digest(small)}").body == small
            readable(daemon, keeper)
            scrub_is_clean(config)

            # Free space the registry's way: delete an image and its blobs, let GC reclaim them.
            for blob in victim.blobs:
                assert daemon.request("DELETE", f"/v2/full/app/blobs/{digest(blob)}").status == 202
            assert daemon.request("DELETE", f"/v2/full/app/manifests/{victim.digest}").status == 202
            victim_layer = root / "blobs" / "sha256" / digest(victim.blobs[1])[7:9] / digest(victim.blobs[1])[7:]
            deadline = time.monotonic() + 20
            while (victim_layer / "data").exists():
                assert time.monotonic() < deadline, "GC did not reclaim on a full disk"
                time.sleep(0.2)
            after = push_image(daemon, "full/app", "after-gc", "after-gc", [payload(MiB, seed=3)])
            readable(daemon, after)

            # And by removing the filler: the interrupted upload resumes from its true offset.
            filler.unlink()
            if completed.status == 507:
                assert daemon.request("PUT", f"{whole}?digest={digest(small)}").status == 201
            assert daemon.request("GET", f"/v2/full/app/blobs/{digest(small)}").body == small
            resumed = daemon.request("PATCH", session, big[offset:], {
                "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{len(big) - 1}"})
            assert resumed.status == 202, resumed
            assert daemon.request("PUT", f"{session}?digest={digest(big)}").status == 201
            late = push_image(daemon, "full/app", "late", "late", [big])
            readable(daemon, late)
            readable(daemon, keeper)
            assert "garbage collection pass failed" not in daemon.log()
        finally:
            daemon.stop()
        scrub_is_clean(config)
    finally:
        unmount()


# -- races --------------------------------------------------------------------------------------


def run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(n)`` in ``count`` threads started together; their results, or the first error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            barrier.wait()
            results[n] = work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 600
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not errors, errors[:3]
    assert not any(thread.is_alive() for thread in threads), "threads still working after 600 s"
    return results


def test_64_concurrent_pushes_of_one_tag_leave_one_of_them_whole(tmp_path: Path) -> None:
    root = tmp_path / "store"
    config = write_config(tmp_path / "angosd.toml", root)
    daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start(timeout=120)
    try:
        pushed: list[Pushed] = run_threads(64, lambda n: push_image(
            daemon, "race/tag", "contested", f"contender-{n}", [payload(4096 + n, seed=n)]))
        final = daemon.request("GET", "/v2/race/tag/manifests/contested", headers={"Accept": OCI_MANIFEST})
        assert final.status == 200
        winners = [p for p in pushed if p.digest == digest(final.body)]
        assert len(winners) == 1
        readable(daemon, winners[0])
        for contender in pushed:
            readable(daemon, contender, by_tag=False)
        assert daemon.request("GET", "/v2/race/tag/tags/list").json()["tags"] == ["contested"]

    finally:
        daemon.stop()
    scrub_is_clean(config)


def test_64_concurrent_pushes_of_one_blob_store_it_once_and_whole(tmp_path: Path) -> None:
    """64 clients upload the same blob at once, 16 into each of four namespaces, half
    monolithic and half in chunks: every upload gets its 201, the blob is stored once with
    the right bytes, each namespace owns it, and no upload session is left over."""
    root = tmp_path / "store"
    config = write_config(tmp_path / "angosd.toml", root)
    daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start(timeout=120)
    blob = payload(2 * MiB, seed=99)
    try:
        def same_blob(n: int) -> None:
            client = Persistent(daemon)
            namespace = f"race/blob{n % 4}"
            if n % 2:
                client.chunked(namespace, blob, 256 * 1024)
            else:
                client.monolithic(namespace, blob)
            assert client.interrupted == 0

        run_threads(64, same_blob)
        for n in range(4):
            got = daemon.request("GET", f"/v2/race/blob{n}/blobs/{digest(blob)}")
            assert got.status == 200 and hashlib.sha256(got.body).hexdigest() == digest(blob)[7:]
        stored = root / "blobs" / "sha256" / digest(blob)[7:9] / digest(blob)[7:]
        assert sorted(os.listdir(stored / "owners")) == [f"race+blob{n}" for n in range(4)]
        assert [p.name for p in root.glob("blobs/*/*/*")] == [digest(blob)[7:]]
        assert (stored / "data").stat().st_size == len(blob)
        assert [p for p in root.glob("repositories/race/*/_uploads/*")] == []
    finally:
        daemon.stop()
    scrub_is_clean(config)


@pytest.mark.slow
def test_gc_racing_pushes_and_deletes_loses_no_completed_push(tmp_path: Path) -> None:
    """Online GC every second with no grace, plus ``angosd scrub`` (another process, also
    collecting) in a loop, while four clients push images built from a small pool of
    shared layers and delete some of them again (making the same blobs garbage over and
    over). Every push that completed and was not deleted must stay whole."""
    root = tmp_path / "store"
    config = write_config(tmp_path / "angosd.toml", root, "[global]\ngc_grace_secs = 0\n")
    daemon = Daemon(str(tmp_path / "work"), str(root), configs=(config,)).start()
    pool = [payload(50_000 + k * 1000, seed=500 + k) for k in range(6)]
    stop = threading.Event()
    scrubs: list[str] = []

    def scrub_loop() -> None:
        while not stop.is_set():
            scrubs.append(ok(angosd("scrub", "-c", config))[-1])

    def client(n: int) -> list[Pushed]:
        rng = random.Random(n)
        namespace = f"gc/client{n}"
        live: list[Pushed] = []
        rounds = 0
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            rounds += 1
            try:
                pushed = push_image(daemon, namespace, f"r{rounds}", f"{n}-{rounds}", [rng.choice(pool)])
            except AssertionError as exc:  # a 503 when a grant met a sweep: retry, never a false 201
                assert "503" in str(exc), exc
                continue
            readable(daemon, pushed)
            live.append(pushed)
            if len(live) > 1 or rng.random() < 0.6:  # delete an image and its blobs: pool layers become garbage
                victim = live.pop(rng.randrange(len(live)))
                assert daemon.request("DELETE", f"/v2/{namespace}/manifests/{victim.digest}").status == 202
                for blob in victim.blobs:
                    daemon.request("DELETE", f"/v2/{namespace}/blobs/{digest(blob)}")
                for other in live:  # the namespace must own again what it still uses
                    for blob in other.blobs:
                        if daemon.request("HEAD", f"/v2/{namespace}/blobs/{digest(blob)}").status == 404:
                            push_blob_retrying(daemon, namespace, blob)
            time.sleep(rng.uniform(0, 0.02))
        return live

    scrubber = threading.Thread(target=scrub_loop, daemon=True)
    scrubber.start()
    try:
        survivors = run_threads(4, client)
        stop.set()
        scrubber.join(300)
        assert not scrubber.is_alive(), "a scrub did not finish"
        assert scrubs, "scrub never completed while pushing"
        time.sleep(2.5)  # two more online passes
        for live in survivors:
            for pushed in live:
                readable(daemon, pushed)
        reclaimed = re.findall(r"reclaimed \((\d+) bytes\)", daemon.log() + "\n".join(scrubs))
        assert sum(int(size) for size in reclaimed) > 2 * len(pool[0]), "pool layers were never reclaimed"
        print(f"gc race: {sum(len(live) for live in survivors)} images kept, {len(scrubs)} scrubs, "
              f"{sum(int(size) for size in reclaimed)} bytes reclaimed meanwhile")
        assert "garbage collection pass failed" not in daemon.log()
    finally:
        stop.set()
        daemon.stop()
    scrub_is_clean(config)


def push_blob_retrying(daemon: Daemon, namespace: str, blob: bytes) -> None:
    """Monolithic upload; a 503 (the blob was being reclaimed at that instant) is retried."""
    for _ in range(20):
        response = daemon.request("POST", f"/v2/{namespace}/blobs/uploads/?digest={digest(blob)}", blob,
                                  {"Content-Type": "application/octet-stream"})
        if response.status == 201:
            return
        assert response.status == 503, response
    raise AssertionError("blob upload kept failing")
