"""Image-set files, tag filters, bundle contents and state files (hostile input), and the sync schedule."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from angosd.archive.bundle import BundleContents, BundleError, StoreState, canonical
from angosd.oci.digest import Digest
from angosd.proxy.imageset import ImageSetError, parse_image_set
from angosd.proxy.sync import MirrorSchedule, SyncSummary, Timing
from angosd.proxy.tagfilter import SemverRange, TagFilter

D1 = Digest.of(b"one", "sha256")
D2 = Digest.of(b"two", "sha256")


# -- tag filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "yes", "no"), [
    (">=1.2, <2", ["1.2", "1.2.0", "v1.9.9"], ["1.1.9", "2.0.0", "1.5.0-rc.1", "latest"]),
    ("^1.2", ["1.2.0", "1.99"], ["2.0", "1.1"]),
    ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0"]),
    ("~1.2", ["1.2.0", "1.2.7"], ["1.3.0"]),
    ("1.x", ["1.0", "1.9.9"], ["2.0"]),
    ("<1 || >=3", ["0.9", "3.0"], ["1.0", "2.5"]),
    (">=2.0.0-rc.1 <2.1", ["2.0.0-rc.2", "2.0.5"], ["2.0.1-rc.1", "1.9"]),
    ("1.2 - 1.4", ["1.2.0", "1.4.9"], ["1.5.0"]),
])
def test_semver_ranges(text: str, yes: list[str], no: list[str]) -> None:
    rng = SemverRange.parse(text)
    assert [t for t in yes if not rng.matches(t)] == []
    assert [t for t in no if rng.matches(t)] == []


def test_newest_and_criteria() -> None:
    tags = ["1.0", "1.10", "1.9", "latest", "edge", "2.0-rc.1"]
    assert TagFilter.build(newest=2).select(tags) == ["2.0-rc.1", "1.10"]
    assert TagFilter.build(globs=["1.*"], exact=["latest"]).select(tags) == ["1.0", "1.10", "1.9", "latest"]
    assert TagFilter.build(regexes=["^e.*"]).select(tags) == ["edge"]
    assert TagFilter.build(newest=6).select(tags)[-2:] == ["latest", "edge"]  # non-versions are the oldest


@pytest.mark.parametrize("text", ["", ">=", "1.2.3.4", "^^1", "x.1", "1.2-rc", ">=a", "||", "1 ||", "<" * 600])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        SemverRange.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_ranges_never_crash(text: str) -> None:
    try:
        rng = SemverRange.parse(text)
    except ValueError:
        return
    rng.matches("1.2.3")


# -- set files -----------------------------------------------------------------------------------


def test_set_file() -> None:
    image_set = parse_image_set(b'upstream = "hub"\nplatforms = ["linux/amd64"]\n'
                                b'[[image]]\nname = "library/alpine"\nglob = "3.*"\nnewest = 2\n'
                                b'[[image]]\nname = "x/y"\nupstream = "quay"\nreferrers = false\nplatforms = "all"\n')
    first, second = image_set.images
    assert first.namespace == "hub/library/alpine" and first.platforms == ("linux/amd64",) and first.referrers
    assert first.tags.select(["3.1", "3.2", "3.3", "4.0"]) == ["3.3", "3.2"]
    assert second.namespace == "quay/x/y" and second.platforms == ("all",) and not second.referrers


@pytest.mark.parametrize(("text", "problem"), [
    (b"[[image]]\nname = 'a'\n", "upstream: not set"),
    (b"upstream = 'hub'\n", "no [[image]]"),
    (b"upstream = 'hub'\nbogus = 1\n[[image]]\nname='a'\n", "unknown key 'bogus'"),
    (b"upstream = 'hub'\n[[image]]\nname='A B'\n", "name:"),
    (b"upstream = 'hub'\n[[image]]\nname='a'\nregex=['(']\n", "invalid regex"),
    (b"upstream = 'hub'\n[[image]]\nname='a'\nsemver='>=a'\n", "image[0]"),
    (b"upstream = 'hub'\n[[image]]\nname='a'\nnewest=0\n", "newest"),
    (b"upstream = 'hub'\n[[image]]\nname='a'\nplatforms=['linux']\n", "platforms"),
    (b"upstream = 'hub'\n[[image]]\nname='a'\n[[image]]\nname='a'\n", "listed twice"),
    (b"upstream = \n", "not valid TOML"),
    (b"\xff\xfe", "not UTF-8"),
    (b"image = 3\n", "expected [[image]] tables"),
])
def test_bad_set_files(text: bytes, problem: str) -> None:
    with pytest.raises(ImageSetError) as caught:
        parse_image_set(text, "set.toml")
    assert problem in str(caught.value) and str(caught.value).startswith("set.toml: ")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_set_file_parser_raises_only_its_error(data: bytes) -> None:
    with contextlib.suppress(ImageSetError):
        parse_image_set(data)


# -- bundle contents and state files -------------------------------------------------------------


def contents_document() -> dict:  # type: ignore[type-arg]
    return {"format": "angosd-bundle/1", "volumes": 2, "created": 1,
            "base": {"state": None, "blobs": [str(D2)]},
            "blobs": [[str(D1), 3, 1]],
            "manifests": [["apps/web", str(D1), "application/vnd.oci.image.manifest.v1+json"]],
            "owned": {"apps/web": [str(D1), str(D2)]},
            "tags": [["apps/web", "v1", str(D1)]]}


def test_contents_round_trip() -> None:
    parsed = BundleContents.parse(canonical(contents_document()))
    assert parsed.in_volume(1) == {D1: 3} and parsed.base == (D2,)
    assert BundleContents.parse(parsed.to_json()).to_json() == parsed.to_json()


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d.update(volumes=0), "volumes"),
    (lambda d: d["blobs"].append([str(D1), 3, 1]), "listed twice"),
    (lambda d: d["blobs"][0].__setitem__(2, 3), "volume of"),
    (lambda d: d["blobs"][0].__setitem__(1, -1), "size of"),
    (lambda d: d["tags"][0].__setitem__(2, str(D2)), "does not store"),
    (lambda d: d["tags"][0].__setitem__(1, "bad tag"), "invalid tag"),
    (lambda d: d["owned"].update({"apps/web": ["sha256:00"]}), "invalid digest"),
    (lambda d: d["owned"].update({"x": [str(Digest.of(b"3", "sha256"))]}), "neither carried nor in the base"),
    (lambda d: d["manifests"][0].__setitem__(0, "../x"), "invalid namespace"),
    (lambda d: d.update(format="other"), "unsupported format"),
])
def test_bad_contents(change, problem: str) -> None:  # type: ignore[no-untyped-def]
    document = contents_document()
    change(document)
    with pytest.raises(BundleError) as caught:
        BundleContents.parse(canonical(document))
    assert problem in str(caught.value)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "volumes", "created", "base", "blobs", "manifests", "owned",
                                        "tags"]), json_values))
def test_contents_parser_raises_only_its_error(document: dict) -> None:  # type: ignore[type-arg]
    document.setdefault("format", "angosd-bundle/1")
    for parse in (BundleContents.parse, StoreState.parse):
        with contextlib.suppress(BundleError):
            parse(json.dumps(document).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_contents_parser_on_bytes(data: bytes) -> None:
    with pytest.raises(BundleError):
        BundleContents.parse(data)


def test_state_round_trip_and_merge() -> None:
    a = StoreState(frozenset({D1}), {"a/b": frozenset({D1})}, {"a/b": {"v1": D1}})
    b = StoreState(frozenset({D2}), {"a/b": frozenset({D2})}, {"a/b": {"v1": D2}})
    assert StoreState.parse(a.to_json()) == a
    merged = a.merged(b)
    assert merged.blobs == {D1, D2} and merged.tags["a/b"]["v1"] == D2 and merged.id != a.id


# -- the schedule --------------------------------------------------------------------------------


class FakeRuns:
    """Sync runs whose outcomes the test decides (the sync itself is covered by integration tests)."""

    def __init__(self, outcomes: list[int | Exception]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    async def __call__(self) -> SyncSummary:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return SyncSummary(images=3, failed=outcome, bytes_fetched=10)


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[bool, float]] = []

    def record(self, summary: SyncSummary | None, succeeded: bool, finished_at: float) -> None:
        self.records.append((succeeded, finished_at))


def test_schedule_interval_jitter_and_backoff() -> None:
    clock = Clock()
    runs = FakeRuns([0, 1, RuntimeError("set file unreadable"), 1, 0, 0])
    recorder = Recorder()
    timing = Timing(interval=1000, jitter=100, backoff_initial=10, backoff_max=40, first_delay=5)
    schedule = MirrorSchedule(runs, timing, clock, recorder, draw=lambda: 0.5)
    schedule.startService()
    assert schedule.next_run == 55  # first delay + half the jitter
    clock.advance(55)
    assert runs.calls == 1 and recorder.records == [(True, 55)]
    assert schedule.next_run == 55 + 1050
    clock.advance(1050)  # a run with a failure: backoff 10 (+ jitter scaled by 10/1000)
    assert runs.calls == 2 and schedule.failures == 1
    assert schedule.next_run == pytest.approx(1105 + 10 + 0.5)
    clock.advance(10.5)  # an exception is a failure too: 20
    assert runs.calls == 3 and schedule.failures == 2
    assert schedule.next_run == pytest.approx(1115.5 + 20 + 1)
    clock.advance(21)
    assert schedule.failures == 3 and schedule.next_run == pytest.approx(1136.5 + 40 + 2)  # capped at 40
    clock.advance(42)
    assert schedule.failures == 0 and schedule.next_run == pytest.approx(1178.5 + 1050)
    assert [ok for ok, _ in recorder.records] == [True, False, False, False, True]
    schedule.stopService()
    assert schedule.next_run is None
    clock.advance(5000)
    assert runs.calls == 5


def test_runs_never_overlap_and_stop_cancels() -> None:
    from twisted.internet.defer import Deferred

    clock = Clock()
    pending: list[Deferred[None]] = []

    async def slow() -> SyncSummary:
        waiting: Deferred[None] = Deferred()
        pending.append(waiting)
        await waiting
        return SyncSummary()

    schedule = MirrorSchedule(slow, Timing(interval=10), clock, draw=lambda: 0.0)
    schedule.startService()
    clock.advance(0)
    clock.advance(100)
    assert len(pending) == 1 and schedule.next_run is None  # the next run is scheduled when this one ends
    pending[0].callback(None)
    assert schedule.next_run == 110
    schedule.stopService()
    assert schedule.next_run is None


# -- mirror figures ------------------------------------------------------------------------------


def test_mirror_figures_travel_through_the_status_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry, generate_latest

    from angosd.observability.mirror import MirrorCollector, MirrorRecorder, MirrorStatus, status_file_reader

    path = str(tmp_path / "status.json")
    registry = CollectorRegistry()
    registry.register(MirrorCollector(status_file_reader(path)))
    assert b"angosd_mirror_last_success_timestamp_seconds 0.0" in generate_latest(registry)  # before any run
    recorder = MirrorRecorder(lambda: path)
    recorder.record(SyncSummary(images=4, changed=1, blobs_fetched=3, bytes_fetched=700), True, 1000.0)
    recorder.record(None, False, 2000.0)
    text = generate_latest(registry).decode()
    for line in ('angosd_mirror_runs_total{result="success"} 1.0', 'angosd_mirror_runs_total{result="failure"} 1.0',
                 "angosd_mirror_last_success_timestamp_seconds 1000.0",
                 "angosd_mirror_last_run_timestamp_seconds 2000.0", "angosd_mirror_images_synced_total 4.0",
                 "angosd_mirror_images_changed_total 1.0", "angosd_mirror_bytes_fetched_total 700.0"):
        assert line in text
    for junk in (b"", b"[]", b'{"runs_succeeded": -1}', b"\xff", b'{"runs_succeeded": true}'):
        assert MirrorStatus.from_json(junk) is None


def test_mirror_and_bundle_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from angosd.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('[mirror]\nset_file = "/s.toml"\ninterval_secs = 600\n[bundle]\ntrusted_keys = ["/k.pub"]\n')
    config = load_config([str(path)])
    assert config.mirror.set_file == "/s.toml" and config.mirror.interval_secs == 600
    assert config.mirror.jitter_secs == 300 and config.bundle.trusted_keys == ("/k.pub",)
    for text, problem in (("[mirror]\ninterval_secs = 1\n", "mirror.interval_secs"),
                          ("[mirror]\nbackoff_initial_secs = 100\nbackoff_max_secs = 10\n", "backoff_max_secs"),
                          ("[bundle]\ntrusted_keys = 3\n", "bundle.trusted_keys")):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config([str(path)])
        assert problem in str(caught.value)


# -- volume planning -----------------------------------------------------------------------------


def test_volumes_hold_at_most_their_size_and_manifests_come_first() -> None:
    from angosd.commands.bundles import Walk, plan_bundle, volume_paths
    from angosd.commands.mirror import CommandFailed

    walk = Walk()
    manifest = Digest.of(b"manifest", "sha256")
    walk.media_types[manifest] = "application/vnd.oci.image.manifest.v1+json"
    walk.bodies[manifest] = b"manifest"
    layers = {Digest.of(str(i).encode(), "sha256"): 100_000 + i for i in range(12)}
    walk.owned["apps/web"] = {manifest: 8, **layers}
    walk.order.append(("apps/web", manifest))
    walk.tags.append(("apps/web", "v1", manifest))
    contents = plan_bundle(walk, None, 400_000, 1)
    assert contents.blobs[0].digest == manifest and contents.blobs[0].volume == 1
    per_volume = [sum(contents.in_volume(n).values()) + 3 * 512 * len(contents.in_volume(n))
                  for n in range(1, contents.volumes + 1)]
    assert contents.volumes >= 4 and max(per_volume) <= 400_000
    assert {b.digest for b in contents.blobs} == {manifest, *layers}
    since = StoreState(frozenset(list(layers)[:10]))
    increment = plan_bundle(walk, since, None, 2)
    assert {b.digest for b in increment.blobs} == {manifest, *list(layers)[10:]}
    assert set(increment.base) == set(list(layers)[:10]) and increment.base_state == since.id
    with pytest.raises(CommandFailed, match="does not fit"):
        plan_bundle(walk, None, 150_000, 1)
    assert volume_paths("/m/week.tar", 1) == ["/m/week.tar"]
    assert volume_paths("/m/week.tar", 3) == ["/m/week.001.tar", "/m/week.002.tar", "/m/week.003.tar"]
