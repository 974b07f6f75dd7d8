"""Retention rules and pruning over the memory driver with a fake clock."""

from __future__ import annotations

import json

import pytest

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.registry.pulls import pull_record
from angosd.registry.retention import (
    Image,
    Plan,
    Pruner,
    Ranking,
    RetentionError,
    RetentionPolicy,
    RetentionRules,
    parse_age,
)
from angosd.registry.uploads import SETTLE_SECS, UploadInfo, new_session_id
from tests.unit.helpers import fired, run
from tests.unit.test_gc import START, Store, image, index

DAY = 86400


def policy(*rules: str, repository: dict[str, list[str]] | None = None) -> RetentionPolicy:
    per_repository = {name: RetentionRules.compile(rules, name) for name, rules in (repository or {}).items()}
    return RetentionPolicy(RetentionRules.compile(rules, "global"),
                           lambda namespace: per_repository.get(namespace.split("/")[0]))


def pulled(store: Store, namespace: str, digest: Digest, at: int) -> None:
    fired(store.driver.write(pull_record(namespace, digest), json.dumps({"last_pulled_at": at}).encode()))


def keeps(rules: RetentionRules, tag: str | None = "v1", pushed_at: int = START, last_pulled_at: int | None = None,
          ranking: Ranking | None = None) -> bool:
    judged = Image("ns", Digest.of(b"x"), tag, pushed_at, last_pulled_at)
    return rules.keeps(judged, ranking or Ranking({}, {}), START + DAY).keep


# Rules -----------------------------------------------------------------------------------------


def test_parse_age() -> None:
    assert parse_age("30m") == 1800
    assert parse_age("1h") == 3600
    assert parse_age("2d") == 2 * DAY
    assert parse_age("1h30m") == 5400
    assert parse_age("45s") == 45
    for bad in ("", "1", "h", "1y", "-1h", "1h x"):
        with pytest.raises(ValueError):
            parse_age(bad)


def test_rules_see_the_image_and_the_time_functions() -> None:
    rules = RetentionRules.compile(["image.pushed_at > now() - days(1) + hours(1) - minutes(60)"], "r")
    assert keeps(rules, pushed_at=START + 1)
    assert not keeps(rules, pushed_at=START)
    tag_rule = RetentionRules.compile(["image.tag != null && image.tag.startsWith('release-')"], "r")
    assert keeps(tag_rule, tag="release-1")
    assert not keeps(tag_rule, tag="dev")
    assert not keeps(tag_rule, tag=None)


def test_never_pulled_is_null_and_a_failing_or_non_boolean_rule_keeps() -> None:
    guarded = RetentionRules.compile(["image.last_pulled_at != null && image.last_pulled_at > now() - days(7)"], "r")
    assert not keeps(guarded, last_pulled_at=None)
    assert keeps(guarded, last_pulled_at=START)
    unguarded = RetentionRules.compile(["image.last_pulled_at > now() - days(7)"], "r")
    verdict = unguarded.keeps(Image("ns", Digest.of(b"x"), "v1", START, None), Ranking({}, {}), START)
    assert verdict.keep and verdict.problem and "failed" in verdict.problem
    assert keeps(RetentionRules.compile(["image.tag"], "r"))


def test_top_pushed_and_top_pulled_rank_tags_of_the_namespace() -> None:
    tagged = [Image("ns", Digest.of(b"a"), "a", 10, None), Image("ns", Digest.of(b"b"), "b", 30, 5),
              Image("ns", Digest.of(b"c"), "c", 20, 50)]
    ranking = Ranking.of(tagged)
    assert ranking.pushed == {"b": 0, "c": 1, "a": 2}
    assert ranking.pulled == {"c": 0, "b": 1}
    top2 = RetentionRules.compile(["top_pushed(2)"], "r")
    assert [keeps(top2, tag=t, ranking=ranking) for t in "abc"] == [False, True, True]
    assert not keeps(top2, tag=None, ranking=ranking)
    pulled1 = RetentionRules.compile(["top_pulled(1)"], "r")
    assert [keeps(pulled1, tag=t, ranking=ranking) for t in "abc"] == [False, False, True]


def test_a_rule_that_does_not_compile_is_named() -> None:
    with pytest.raises(RetentionError, match=r"global\.retention_policy\.rules\[1\]"):
        RetentionRules.compile(["true", "image.tag =="], "global.retention_policy")


def test_global_and_repository_rules_combine_and_no_rules_keep_everything() -> None:
    combined = policy("image.tag == 'a'", repository={"team": ["image.tag == 'b'"]})
    rules = combined.rules_for("team/app")
    assert rules is not None and len(rules.rules) == 2
    only_global = combined.rules_for("other")
    assert only_global is not None and len(only_global.rules) == 1
    assert policy().rules_for("anything") is None
    assert policy(repository={"team": ["true"]}).rules_for("other") is None


# Pruning ---------------------------------------------------------------------------------------


def aged_store() -> tuple[Store, dict[str, Digest]]:
    """Tags pushed 10, 5, 3 and 1 days before "now", one pulled yesterday, one untagged revision."""
    store = Store()
    digests = {}
    for name, age in (("old", 10), ("mid", 5), ("recent", 3), ("new", 1)):
        store.clock.rightNow = START - age * DAY
        digests[name] = store.image("app", name, f"layer-{name}".encode())
    store.clock.rightNow = START - 8 * DAY
    digests["untagged"] = store.image("app", str(Digest.of(image(b"layer-untagged"))), b"layer-untagged")
    store.clock.rightNow = START
    pulled(store, "app", digests["old"], START - DAY)
    return store, digests


def test_plan_lists_exactly_what_no_rule_keeps() -> None:
    store, digests = aged_store()
    pruner = Pruner(store.registry, policy(
        "image.tag != null && image.pushed_at > now() - days(4)",
        "image.last_pulled_at != null && image.last_pulled_at > now() - days(2)"), store.clock)
    plan = run(pruner.plan("app"))
    assert plan.tags == [("mid", digests["mid"])]
    assert set(plan.revisions) == {digests["mid"], digests["untagged"]}
    assert plan.problems == []


def test_no_rules_plan_nothing() -> None:
    store, _ = aged_store()
    assert run(Pruner(store.registry, policy(), store.clock).plan("app")) == Plan("app")


def test_apply_deletes_tags_then_revisions_and_releases_their_blobs() -> None:
    store, digests = aged_store()
    pruner = Pruner(store.registry, policy("top_pushed(2)"), store.clock)
    plan = run(pruner.plan("app"))
    assert sorted(tag for tag, _ in plan.tags) == ["mid", "old"]
    applied = run(pruner.apply(plan))
    assert sorted(tag for tag, _ in applied.tags) == ["mid", "old"]
    assert set(applied.revisions) == {digests["old"], digests["mid"], digests["untagged"]}
    assert run(store.registry.manifests.tags("app")) == ["new", "recent"]
    released = {Digest.of(b"layer-old"), Digest.of(b"layer-mid"), Digest.of(b"layer-untagged")}
    assert set(applied.revoked) == released  # the shared config stays owned
    for digest in released:
        assert not run(store.registry.blobs.owns("app", digest))
    assert run(store.registry.blobs.owns("app", Digest.of(b"{}")))

    before = store.blob_bytes()
    reclaimed = store.collect_twice()
    expected = sum(len(image(f"layer-{n}".encode())) + len(f"layer-{n}") for n in ("old", "mid", "untagged"))
    assert reclaimed.reclaimed_bytes == expected == before - store.blob_bytes()


def test_children_of_a_kept_index_and_subjects_of_kept_referrers_stay() -> None:
    store = Store()
    child = image(b"child")
    child_digest = store.image("app", str(Digest.of(child)), b"child")
    store.manifest("app", "multi", index(child), mt.OCI_INDEX)
    subject = image(b"subject")
    subject_digest = store.image("app", str(Digest.of(subject)), b"subject")
    signature = store.image("app", "sig", b"signature", subject=subject)
    pruner = Pruner(store.registry, policy("image.tag != null"), store.clock)
    plan = run(pruner.plan("app"))
    assert (plan.tags, plan.revisions) == ([], [])
    assert {child_digest, subject_digest, signature} <= plan.judged


def test_an_orphaned_index_tree_goes_in_one_run() -> None:
    store = Store()
    leaf = image(b"leaf")
    leaf_digest = store.image("app", str(Digest.of(leaf)), b"leaf")
    inner = index(leaf)
    inner_digest = store.manifest("app", str(Digest.of(inner)), inner, mt.OCI_INDEX)
    outer_digest = store.manifest("app", "old", index(inner), mt.OCI_INDEX)
    store.image("app", "keep", b"kept")
    pruner = Pruner(store.registry, policy("image.tag == 'keep'"), store.clock)
    applied = run(pruner.apply(run(pruner.plan("app"))))
    assert set(applied.revisions) == {outer_digest, inner_digest, leaf_digest}
    assert run(store.registry.manifests.tags("app")) == ["keep"]


def test_apply_rechecks_what_changed_since_the_plan() -> None:
    store, digests = aged_store()
    pruner = Pruner(store.registry, policy("image.tag == 'new'"), store.clock)
    plan = run(pruner.plan("app"))
    # Meanwhile: "old" moves to another manifest, "mid"'s revision is tagged again,
    # and a new index protects the untagged revision.
    moved = store.image("app", "old", b"moved")
    run(store.registry.manifests.put("app", Reference(tag="again"), mt.OCI_MANIFEST,
                                     fired(store.driver.read(paths.blob_data(digests["mid"])))))
    store.manifest("app", "fresh-index", index(image(b"layer-untagged")), mt.OCI_INDEX)
    applied = run(pruner.apply(plan))
    assert ("old", digests["old"]) not in applied.tags
    assert digests["mid"] not in applied.revisions and digests["untagged"] not in applied.revisions
    assert len(applied.skipped) >= 3
    assert run(store.registry.manifests.resolve("app", Reference(tag="old"))) == moved
    assert run(store.registry.manifests.resolve("app", Reference(tag="again"))) == digests["mid"]


def test_a_failing_rule_keeps_and_is_reported() -> None:
    store, _ = aged_store()
    plan = run(Pruner(store.registry, policy("image.last_pulled_at > 0"), store.clock).plan("app"))
    assert plan.tags == [] and plan.revisions == []  # never-pulled: the rule fails, so it keeps
    assert plan.problems


def test_expired_uploads_by_age_and_unreadable() -> None:
    store = Store()
    store.clock.rightNow = START - 2 * 3600
    old = run(store.registry.uploads.start("app"))
    store.clock.rightNow = START
    fresh = run(store.registry.uploads.start("app"))
    fired(store.driver.write(paths.upload_data("app", "broken"), b""))
    pruner = Pruner(store.registry, policy(), store.clock)
    expired = run(pruner.expired_uploads("app", 3600))
    sessions = {item.session if isinstance(item, UploadInfo) else item for item in expired}
    assert sessions == {old, "broken"}
    for session in sessions:
        run(pruner.remove_upload("app", session))
    assert fired(store.driver.children(paths.uploads_dir("app"))) == [fresh]


def test_an_unreadable_upload_session_younger_than_its_id_says_is_left_alone() -> None:
    store = Store()
    being_created = new_session_id(START - 60)  # its directory is there, its info not yet
    abandoned = new_session_id(START - SETTLE_SECS - 3600)
    for session in (being_created, abandoned):
        fired(store.driver.write(paths.upload_data("app", session), b""))
    pruner = Pruner(store.registry, policy(), store.clock)
    assert run(pruner.expired_uploads("app", 0)) == [abandoned]
    assert run(pruner.expired_uploads("app", 2 * 3600 + SETTLE_SECS)) == []  # younger than AGE
