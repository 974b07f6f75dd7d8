"""Retention policies: CEL keep-rules, and pruning what no rule keeps.

Rules are *keep* rules, global ones and the namespace's repository's ones together: an
image is kept when any rule is true. No rule at all means keep everything. A rule that
fails or gives a non-boolean keeps the image (fail open: retention deletes data, so a
broken rule must not). Each rule sees:

``image.tag``             the tag judged, or null for an untagged revision
``image.pushed_at``       epoch seconds the revision was (last) pushed to the namespace;
                          a tag has no time of its own, so a tag reports its revision's
``image.last_pulled_at``  epoch seconds of the revision's last pull, null if never pulled
                          (or pull times are not recorded: ``update_pull_time``)
``now()``                 the current epoch seconds
``days(n)``, ``hours(n)``, ``minutes(n)``  seconds
``top_pushed(k)``         the tag is among the ``k`` most recently pushed tags of the
                          namespace (ties by tag name); false for untagged revisions
``top_pulled(k)``         the same by last pull, among tags that were pulled

Never-pulled images have a null ``last_pulled_at``; compare it only behind
``image.last_pulled_at != null &&`` (a comparison with null fails, which keeps).

Pruning a namespace (`Pruner`): pass 1 deletes every tag no rule keeps; pass 2 judges
every revision left untagged (including those pass 1 just untagged) with ``image.tag``
null and deletes those no rule keeps, except *protected* ones: the children of a kept
index and the subject of a kept referrer, transitively. So a whole orphaned index tree
goes in one run, and nothing a kept image needs goes at all. Deleting a revision also
revokes the namespace's ownership of the blobs it referenced that no remaining revision
of the namespace references, so that garbage collection can reclaim their bytes.

A plan is computed first (what ``--dry-run`` prints) and applied with re-checks, since
the daemon may serve meanwhile: a tag is deleted only if it still points where it did,
a revision only if it is still untagged, was not pushed again and no revision pushed
since the plan protects it.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from angosd.expressions import cel
from angosd.oci.digest import Digest
from angosd.oci.errors import BlobUnknown, ManifestUnknown, OciError
from angosd.oci.names import Reference
from angosd.registry import paths
from angosd.registry.gc import manifest_references
from angosd.registry.registry import Registry
from angosd.registry.uploads import UploadInfo, may_be_in_creation, session_created
from angosd.storage.errors import PathNotFound

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+)([smhdw])")


def parse_age(text: str) -> int:
    """Seconds in a duration such as ``30m``, ``1h``, ``2d`` or ``1h30m``; raises `ValueError`."""
    compact = text.strip().replace(" ", "")
    if not compact or _AGE.sub("", compact):
        raise ValueError(f"invalid duration {text!r} (examples: 30m, 1h, 2d)")
    return sum(int(number) * _UNITS[unit] for number, unit in _AGE.findall(compact))


class RetentionError(Exception):
    """A retention rule that does not compile; names where it came from."""


@dataclass(frozen=True, slots=True)
class Image:
    """One tag, or one untagged revision, as the rules see it."""

    namespace: str
    digest: Digest
    tag: str | None
    pushed_at: int
    last_pulled_at: int | None


@dataclass(frozen=True, slots=True)
class Ranking:
    """Positions of a namespace's tags by push time and by pull time (0 = most recent)."""

    pushed: dict[str, int]
    pulled: dict[str, int]

    @classmethod
    def of(cls, tagged: Sequence[Image]) -> Ranking:
        by_push = sorted(tagged, key=lambda image: (-image.pushed_at, image.tag or ""))
        pulled = [image for image in tagged if image.last_pulled_at is not None]
        by_pull = sorted(pulled, key=lambda image: (-(image.last_pulled_at or 0), image.tag or ""))
        return cls({image.tag or "": i for i, image in enumerate(by_push)},
                   {image.tag or "": i for i, image in enumerate(by_pull)})


@dataclass(frozen=True, slots=True)
class Verdict:
    keep: bool
    #: Why a rule could not decide (it failed or was not a boolean); None otherwise.
    problem: str | None = None


class RetentionRules:
    """Compiled keep-rules; `keeps` evaluates them for one image."""

    def __init__(self, rules: Sequence[tuple[str, Any]]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def compile(cls, rules: Sequence[str], where: str) -> RetentionRules:
        """Compile ``rules``; raises `RetentionError` naming ``where`` and the rule."""
        compiled = []
        for index, rule in enumerate(rules):
            try:
                compiled.append((rule, cel().compile(rule)))
            except (ValueError, RuntimeError) as exc:
                detail = " ".join(str(exc).split())[:300]
                raise RetentionError(f"{where}.rules[{index}]: rule {rule!r} does not compile: {detail}") from None
        return cls(compiled)

    def __add__(self, other: RetentionRules) -> RetentionRules:
        return RetentionRules(self.rules + other.rules)

    def keeps(self, image: Image, ranking: Ranking, now: int) -> Verdict:
        """Whether some rule keeps ``image``; a failing or non-boolean rule keeps it."""
        context = cel().Context()
        context.add_variable("image", {"tag": image.tag, "pushed_at": image.pushed_at,
                                       "last_pulled_at": image.last_pulled_at})
        context.add_function("now", lambda: now)
        context.add_function("days", lambda n: n * 86400)
        context.add_function("hours", lambda n: n * 3600)
        context.add_function("minutes", lambda n: n * 60)
        context.add_function("top_pushed", lambda k: _top(ranking.pushed, image.tag, k))
        context.add_function("top_pulled", lambda k: _top(ranking.pulled, image.tag, k))
        for text, program in self.rules:
            try:
                result = program.execute(context)
            except Exception as exc:
                return Verdict(True, f"rule {text!r} failed ({type(exc).__name__}: {str(exc)[:160]}); kept")
            if not isinstance(result, bool):
                return Verdict(True, f"rule {text!r} gave a {type(result).__name__}, not a boolean; kept")
            if result:
                return Verdict(True)
        return Verdict(False)


def _top(ranks: dict[str, int], tag: str | None, k: Any) -> bool:
    return tag is not None and tag in ranks and ranks[tag] < int(k)


class RetentionPolicy:
    """The global rules plus each repository's; ``repository_rules(namespace)`` gives the
    rules of the repository serving ``namespace`` (None: no repository, or none set)."""

    def __init__(self, global_rules: RetentionRules,
                 repository_rules: Callable[[str], RetentionRules | None] = lambda _namespace: None) -> None:
        self._global = global_rules
        self._repository = repository_rules

    def rules_for(self, namespace: str) -> RetentionRules | None:
        """The rules that apply to ``namespace``; None when there are none (keep everything)."""
        rules = self._global
        extra = self._repository(namespace)
        if extra is not None:
            rules = rules + extra
        return rules if rules.rules else None


# --------------------------------------------------------------------------- pruning


@dataclass(slots=True)
class Plan:
    """What pruning one namespace would delete, and what it saw when deciding."""

    namespace: str
    tags: list[tuple[str, Digest]] = field(default_factory=list)
    revisions: list[Digest] = field(default_factory=list)
    judged: set[Digest] = field(default_factory=set)
    pushed_at: dict[Digest, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Applied:
    """What applying a plan actually did."""

    tags: list[tuple[str, Digest]] = field(default_factory=list)
    revisions: list[Digest] = field(default_factory=list)
    revoked: list[Digest] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Pruner:
    """Plans and applies retention for one namespace at a time (see the module docstring)."""

    def __init__(self, registry: Registry, policy: RetentionPolicy, clock: IReactorTime) -> None:
        self._registry = registry
        self._policy = policy
        self._clock = clock

    async def plan(self, namespace: str) -> Plan:
        """What pruning ``namespace`` deletes now; empty when no rule applies to it."""
        plan = Plan(namespace)
        rules = self._policy.rules_for(namespace)
        if rules is None:
            return plan
        manifests = self._registry.manifests
        now = int(self._clock.seconds())
        records: dict[Digest, int] = {}
        subjects: dict[Digest, Digest] = {}
        for digest in await manifests.revisions(namespace):
            try:
                revision = await manifests.revision(namespace, digest)
            except ManifestUnknown:
                continue
            records[digest] = revision.pushed_at
            if revision.subject is not None:
                subjects[digest] = revision.subject
        plan.judged = set(records)
        plan.pushed_at = dict(records)
        pulled = await self._registry.pulls.last_pulled_many(namespace, records)
        tagged = [Image(namespace, digest, tag, records[digest], pulled[digest])
                  for digest, tags in (await manifests.tags_of(namespace)).items() if digest in records
                  for tag in tags]
        ranking = Ranking.of(tagged)

        still_tagged: set[Digest] = set()
        for image in sorted(tagged, key=lambda image: image.tag or ""):
            verdict = rules.keeps(image, ranking, now)
            if verdict.problem:
                plan.problems.append(f"{namespace}:{image.tag}: {verdict.problem}")
            if verdict.keep:
                still_tagged.add(image.digest)
            else:
                plan.tags.append((image.tag or "", image.digest))

        kept = set(still_tagged)
        for digest in sorted(set(records) - still_tagged, key=str):
            image = Image(namespace, digest, None, records[digest], pulled[digest])
            verdict = rules.keeps(image, ranking, now)
            if verdict.problem:
                plan.problems.append(f"{namespace}@{digest}: {verdict.problem}")
            if verdict.keep:
                kept.add(digest)
        try:
            kept = await self._protect(namespace, kept, set(records), subjects)
        except ValueError as exc:
            plan.problems.append(f"{namespace}: {exc}; no untagged revision deleted")
            return plan
        plan.revisions = sorted(set(records) - kept, key=str)
        return plan

    async def _protect(self, namespace: str, kept: set[Digest], revisions: set[Digest],
                       subjects: dict[Digest, Digest]) -> set[Digest]:
        """``kept`` plus, transitively, the children of kept indexes and the subjects of
        kept referrers that are revisions of ``namespace``. Raises `ValueError` when a
        kept manifest cannot be read (its children are unknown)."""
        protected = set(kept)
        queue = list(kept)
        while queue:
            digest = queue.pop()
            needed = set(await self._children(digest))
            if digest in subjects:
                needed.add(subjects[digest])
            for child in needed & revisions - protected:
                protected.add(child)
                queue.append(child)
        return protected

    async def _children(self, digest: Digest) -> list[Digest]:
        try:
            document = json.loads(await self._registry.blobs.read_small(digest))
        except BlobUnknown:
            return []  # the bytes are gone: nothing to protect through them (scrub reports it)
        except ValueError:
            raise ValueError(f"manifest {digest} is not readable JSON") from None
        entries = document.get("manifests") if isinstance(document, dict) else None
        children = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                children.append(Digest.parse(entry["digest"]))
            except (OciError, KeyError, TypeError):
                continue
        return children

    async def apply(self, plan: Plan, applied: Applied | None = None) -> Applied:
        """Delete what ``plan`` lists, re-checking each item against the store as it is now.

        Records what it did in ``applied`` (a new `Applied` if None) as it goes, so a caller
        that passes its own still knows what was deleted when a storage failure stops it.
        """
        if applied is None:
            applied = Applied()
        namespace = plan.namespace
        manifests = self._registry.manifests
        for tag, digest in plan.tags:
            try:
                current = await manifests.resolve(namespace, Reference(tag=tag))
            except ManifestUnknown:
                continue
            if current != digest:
                applied.skipped.append(f"{namespace}:{tag} moved to {current} meanwhile")
                continue
            await manifests.delete(namespace, Reference(tag=tag))
            applied.tags.append((tag, digest))
        if not plan.revisions:
            return applied

        current_revisions = set(await manifests.revisions(namespace))
        newer = current_revisions - plan.judged
        subjects: dict[Digest, Digest] = {}
        for digest in current_revisions:
            try:
                revision = await manifests.revision(namespace, digest)
            except ManifestUnknown:
                continue
            if revision.subject is not None:
                subjects[digest] = revision.subject
        tags_now = await manifests.tags_of(namespace)
        tagged_now = set(tags_now)
        protected = await self._protect(namespace, newer | tagged_now, current_revisions, subjects)
        dropped: set[Digest] = set()
        for digest in _parents_first(plan.revisions, subjects):
            if digest in protected:
                applied.skipped.append(f"{namespace}@{digest} is needed by a manifest pushed meanwhile")
                continue
            try:
                revision = await manifests.revision(namespace, digest)
            except ManifestUnknown:
                continue
            if revision.pushed_at != plan.pushed_at.get(digest):
                applied.skipped.append(f"{namespace}@{digest} was pushed again meanwhile")
                continue
            dropped |= await self._references(digest)
            with contextlib.suppress(ManifestUnknown, BlobUnknown):
                await manifests.delete(namespace, Reference(digest=digest), tags=tags_now.get(digest, ()))
            applied.revisions.append(digest)
        applied.revoked.extend(await self._revoke_unreferenced(namespace, dropped))
        return applied

    async def _references(self, digest: Digest) -> frozenset[Digest]:
        try:
            return manifest_references(await self._registry.blobs.read_small(digest))
        except (BlobUnknown, ValueError):
            return frozenset()

    async def _revoke_unreferenced(self, namespace: str, dropped: set[Digest]) -> list[Digest]:
        """Revoke ``namespace``'s ownership of ``dropped`` blobs no remaining revision needs."""
        remaining = set(await self._registry.manifests.revisions(namespace))
        needed = set(remaining)
        for digest in remaining:
            needed |= await self._references(digest)
        revoked = []
        for digest in sorted(dropped - needed, key=str):
            if await self._registry.driver.stat(paths.owned_blob(namespace, digest)) is None:
                continue
            try:
                await self._registry.blobs.revoke(namespace, digest)
            except BlobUnknown:
                continue
            revoked.append(digest)
        return revoked

    async def expired_uploads(self, namespace: str, max_age: int) -> list[UploadInfo | str]:
        """Upload sessions of ``namespace`` started at least ``max_age`` seconds ago, and
        sessions whose state cannot be read (as bare session ids) unless their id says they
        are younger than that (or than `SETTLE_SECS`: they may be being created now)."""
        now = int(self._clock.seconds())
        expired: list[UploadInfo | str] = []
        for session in await self._registry.driver.children(paths.uploads_dir(namespace)):
            try:
                record = json.loads(await self._registry.driver.read(paths.upload_info(namespace, session)))
                started_at = int(record["started_at"])
            except (PathNotFound, ValueError, KeyError, TypeError):
                created = session_created(session)
                if not may_be_in_creation(session, now) and (created is None or now - created >= max_age):
                    expired.append(session)
                continue
            if now - started_at >= max_age:
                size = await self._registry.driver.stat(paths.upload_data(namespace, session))
                expired.append(UploadInfo(namespace, session, started_at, record.get("algorithm"), size or 0))
        return expired

    async def remove_upload(self, namespace: str, session: str) -> None:
        """Remove one upload session and its bytes."""
        await self._registry.uploads.cancel(namespace, session)


def _parents_first(digests: Sequence[Digest], subjects: dict[Digest, Digest]) -> list[Digest]:
    """Referrers before their subjects; otherwise the given order."""
    return sorted(digests, key=lambda digest: 0 if digest in subjects else 1)
