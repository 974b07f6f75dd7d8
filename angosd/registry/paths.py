"""Storage keys of the registry's objects. Pure functions; names are validated upstream.

    blobs/<alg>/<hh>/<hex>/data                     content-addressed bytes (blobs and manifests)
    blobs/<alg>/<hh>/<hex>/owners/<ns with / as +>  reverse ownership index (for mounts and GC)
    repositories/<ns>/_blobs/<alg>/<hex>            the namespace may read this blob
    repositories/<ns>/_manifests/revisions/<alg>/<hex>   revision record (JSON)
    repositories/<ns>/_manifests/summaries/<alg>/<hex>   what listings need of the manifest (JSON)
    repositories/<ns>/_manifests/tags/<tag>         the digest the tag points at
    repositories/<ns>/_manifests/tagged/<alg>/<hex>/<tag>    back-reference: the tag was set to it
    repositories/<ns>/_manifests/parents/<alg>/<hex>/<alg>-<hex>  back-reference: an index lists it
    repositories/<ns>/_manifests/linked             every tag and index child has its back-reference
    repositories/<ns>/_referrers/<alg>/<hex>/<alg>-<hex> referrer descriptor (JSON)
    repositories/<ns>/_uploads/<uuid>/{data,info}   an upload session
    _gc/marks/<alg>/<hex>                           GC candidate mark (JSON: since, token)
    _gc/trash/<alg>-<hex>-<token>                   a blob directory being reclaimed
    _quarantine/<stamp>-<id>/{object,note.json}     what scrub could not repair

Namespace components never start with ``_``, so the ``_``-prefixed directories cannot
collide with a nested namespace.
"""

from __future__ import annotations

from angosd.oci.digest import Digest

REPOSITORIES = "repositories"
BLOBS = "blobs"
GC_MARKS = "_gc/marks"
GC_TRASH = "_gc/trash"
SCRUB_ASIDE = "_gc/scrub"
QUARANTINE = "_quarantine"


def blob_dir(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def blob_owners(digest: Digest) -> str:
    return f"{blob_dir(digest)}/owners"


def blob_owner(digest: Digest, namespace: str) -> str:
    return f"{blob_owners(digest)}/{namespace.replace('/', '+')}"


def owner_namespace(marker: str) -> str:
    return marker.replace("+", "/")


def namespace_dir(namespace: str) -> str:
    return f"{REPOSITORIES}/{namespace}"


def owned_blobs_dir(namespace: str) -> str:
    return f"{namespace_dir(namespace)}/_blobs"


def owned_blob(namespace: str, digest: Digest) -> str:
    return f"{namespace_dir(namespace)}/_blobs/{digest.algorithm}/{digest.hex}"


def revisions_dir(namespace: str) -> str:
    return f"{namespace_dir(namespace)}/_manifests/revisions"


def revision(namespace: str, digest: Digest) -> str:
    return f"{revisions_dir(namespace)}/{digest.algorithm}/{digest.hex}"


def summary(namespace: str, digest: Digest) -> str:
    return f"{namespace_dir(namespace)}/_manifests/summaries/{digest.algorithm}/{digest.hex}"


def tags_dir(namespace: str) -> str:
    return f"{namespace_dir(namespace)}/_manifests/tags"


def tag(namespace: str, name: str) -> str:
    return f"{tags_dir(namespace)}/{name}"


def tagged_dir(namespace: str, digest: Digest) -> str:
    return f"{namespace_dir(namespace)}/_manifests/tagged/{digest.algorithm}/{digest.hex}"


def tagged(namespace: str, digest: Digest, tag: str) -> str:
    return f"{tagged_dir(namespace, digest)}/{tag}"


def parents_dir(namespace: str, digest: Digest) -> str:
    return f"{namespace_dir(namespace)}/_manifests/parents/{digest.algorithm}/{digest.hex}"


def parent(namespace: str, child: Digest, index: Digest) -> str:
    return f"{parents_dir(namespace, child)}/{index.algorithm}-{index.hex}"


def linked(namespace: str) -> str:
    return f"{namespace_dir(namespace)}/_manifests/linked"


def referrers_dir(namespace: str, subject: Digest) -> str:
    return f"{namespace_dir(namespace)}/_referrers/{subject.algorithm}/{subject.hex}"


def referrer(namespace: str, subject: Digest, manifest: Digest) -> str:
    return f"{referrers_dir(namespace, subject)}/{manifest.algorithm}-{manifest.hex}"


def uploads_dir(namespace: str) -> str:
    return f"{namespace_dir(namespace)}/_uploads"


def upload_dir(namespace: str, session: str) -> str:
    return f"{uploads_dir(namespace)}/{session}"


def upload_data(namespace: str, session: str) -> str:
    return f"{upload_dir(namespace, session)}/data"


def upload_info(namespace: str, session: str) -> str:
    return f"{upload_dir(namespace, session)}/info"


def upload_hash_state(namespace: str, session: str) -> str:
    return f"{upload_dir(namespace, session)}/hashstate"


def gc_mark(digest: Digest) -> str:
    return f"{GC_MARKS}/{digest.algorithm}/{digest.hex}"


def gc_trash(digest: Digest, token: str) -> str:
    return f"{GC_TRASH}/{digest.algorithm}-{digest.hex}-{token}"
