"""Manifest and index validation on push."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from angosd.oci import media_types as mt
from angosd.oci.digest import Digest
from angosd.oci.errors import ManifestInvalid
from angosd.oci.manifest import Descriptor, Manifest, parse_manifest

CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(b"{}")), "size": 2}
LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": str(Digest.of(b"layer")), "size": 5}
CHILD = {
    "mediaType": mt.OCI_MANIFEST,
    "digest": str(Digest.of(b"child")),
    "size": 5,
    "platform": {"architecture": "amd64", "os": "linux"},
}
SUBJECT = {"mediaType": mt.OCI_MANIFEST, "digest": str(Digest.of(b"subject")), "size": 7}
EMPTY_CONFIG = {"mediaType": mt.OCI_EMPTY, "digest": str(Digest.of(b"{}")), "size": 2}
DOCKER_CONFIG = {**CONFIG, "mediaType": "application/vnd.docker.container.image.v1+json"}
DOCKER_LAYER = {**LAYER, "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}
DOCKER_CHILD = {**CHILD, "mediaType": mt.DOCKER_MANIFEST}


def image(**fields: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": CONFIG, "layers": [LAYER], **fields}


def index(**fields: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [CHILD], **fields}


def docker_image() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST, "config": DOCKER_CONFIG, "layers": [DOCKER_LAYER]}


def docker_list() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST, "manifests": [DOCKER_CHILD]}


def encode(document: Any) -> bytes:
    return json.dumps(document, indent=3).encode()


def descriptor(value: dict[str, Any]) -> Descriptor:
    return Descriptor(value["mediaType"], Digest.parse(value["digest"]), value["size"])


def without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        pytest.param(image(), mt.OCI_MANIFEST, id="oci-image"),
        pytest.param(docker_image(), mt.DOCKER_MANIFEST, id="docker-image"),
        pytest.param(image(), None, id="oci-image-no-content-type"),
        pytest.param(without(image(), "mediaType"), mt.OCI_MANIFEST, id="oci-image-type-from-header"),
        pytest.param(without(image(), "mediaType"), None, id="oci-image-type-guessed"),
        pytest.param(image(), mt.OCI_MANIFEST + "; charset=utf-8", id="content-type-parameters"),
        pytest.param(image(), " Application/VND.oci.image.manifest.v1+json ;q=1", id="content-type-case"),
        pytest.param(without(image(), "layers"), None, id="no-layers"),
    ],
)
def test_image_manifests(document: dict[str, Any], content_type: str | None) -> None:
    body = encode(document)
    manifest = parse_manifest(body, content_type)
    assert manifest.media_type == document.get("mediaType", mt.OCI_MANIFEST)
    assert manifest.digest == Digest.of(body)
    assert manifest.size == len(body)
    assert not manifest.is_index
    assert manifest.config == descriptor(document["config"])
    assert manifest.layers == tuple(descriptor(layer) for layer in document.get("layers", []))
    assert manifest.manifests == ()
    assert manifest.referenced_blobs() == (manifest.config, *manifest.layers)
    assert manifest.subject is None and manifest.artifact_type is None


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        pytest.param(index(), mt.OCI_INDEX, id="oci-index"),
        pytest.param(docker_list(), mt.DOCKER_MANIFEST_LIST, id="docker-list"),
        pytest.param(index(), None, id="oci-index-no-content-type"),
        pytest.param(without(index(), "mediaType"), None, id="oci-index-type-guessed"),
        pytest.param(index(manifests=[]), mt.OCI_INDEX, id="empty-index"),
    ],
)
def test_indexes(document: dict[str, Any], content_type: str | None) -> None:
    body = encode(document)
    manifest = parse_manifest(body, content_type)
    assert manifest.media_type == document.get("mediaType", mt.OCI_INDEX)
    assert manifest.is_index
    assert manifest.digest == Digest.of(body)
    assert manifest.config is None and manifest.layers == ()
    assert manifest.manifests == tuple(descriptor(child) for child in document["manifests"])
    assert manifest.referenced_blobs() == ()
    for parsed, child in zip(manifest.manifests, document["manifests"], strict=True):
        assert parsed.platform == child["platform"]


def test_digest_is_of_the_exact_bytes() -> None:
    compact, pretty = json.dumps(image()).encode(), encode(image())
    assert parse_manifest(compact, None).digest != parse_manifest(pretty, None).digest
    assert parse_manifest(pretty, None, "sha512").digest == Digest.of(pretty, "sha512")


def test_subject_artifact_type_and_annotations() -> None:
    annotations = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    layer = {**LAYER, "annotations": {"org.opencontainers.image.title": "a.txt"}, "artifactType": "text/plain"}
    body = encode(image(subject=SUBJECT, artifactType="application/x-sbom", annotations=annotations, layers=[layer]))
    manifest = parse_manifest(body, mt.OCI_MANIFEST)
    assert manifest.subject == descriptor(SUBJECT)
    assert manifest.artifact_type == "application/x-sbom"
    assert manifest.annotations == annotations
    assert manifest.layers[0].annotations == layer["annotations"]
    assert manifest.layers[0].artifact_type == "text/plain"
    assert manifest.layers[0].to_json() == layer


def test_index_with_subject() -> None:
    manifest = parse_manifest(encode(index(subject=SUBJECT, artifactType="application/x-sig")), None)
    assert manifest.subject == descriptor(SUBJECT)
    assert manifest.artifact_type == "application/x-sig"


def test_null_subject_is_no_subject() -> None:
    assert parse_manifest(encode(image(subject=None)), None).subject is None


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(image(artifactType="application/x-sbom"), "application/x-sbom", id="artifact-type"),
        pytest.param(image(artifactType="application/x-sbom", config=EMPTY_CONFIG), "application/x-sbom", id="both"),
        pytest.param(image(), CONFIG["mediaType"], id="config-media-type"),
        pytest.param(image(config=EMPTY_CONFIG), None, id="empty-config"),
        pytest.param(index(), None, id="index"),
        pytest.param(index(artifactType="application/x-sig"), "application/x-sig", id="index-artifact-type"),
    ],
)
def test_as_referrer(document: dict[str, Any], expected: str | None) -> None:
    annotations = {"org.example": "value"}
    body = encode({**document, "subject": SUBJECT, "annotations": annotations})
    manifest = parse_manifest(body, None)
    referrer = manifest.as_referrer()
    assert referrer == Descriptor(manifest.media_type, Digest.of(body), len(body), expected)
    assert referrer.annotations == annotations
    expected_json = {"mediaType": manifest.media_type, "digest": str(Digest.of(body)), "size": len(body)}
    if expected is not None:
        expected_json["artifactType"] = expected
    assert referrer.to_json() == {**expected_json, "annotations": annotations}


def _bad_descriptor(**changes: Any) -> dict[str, Any]:
    return image(layers=[{k: v for k, v in {**LAYER, **changes}.items() if v is not ...}])


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"", None, id="empty-body"),
        pytest.param(b"{", None, id="truncated-json"),
        pytest.param(b"not json", mt.OCI_MANIFEST, id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", None, id="not-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, None, id="deeply-nested-arrays"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, None, id="deeply-nested-objects"),
        pytest.param(b"1" * 5000, None, id="huge-integer"),
        pytest.param(
            encode(_bad_descriptor(size=0)).replace(b'"size": 0', b'"size": ' + b"9" * 5000), None, id="huge-size"
        ),
        pytest.param(b"[]", None, id="array"),
        pytest.param(b'"manifest"', None, id="string"),
        pytest.param(b"null", None, id="null"),
        pytest.param(b"2", None, id="number"),
        pytest.param(encode(without(image(), "schemaVersion")), None, id="no-schema-version"),
        pytest.param(encode(image(schemaVersion=1)), None, id="schema-version-1"),
        pytest.param(encode(image(schemaVersion=True)), None, id="schema-version-true"),
        pytest.param(encode(image(schemaVersion="2")), None, id="schema-version-string"),
        pytest.param(encode(image(schemaVersion=None)), None, id="schema-version-null"),
        pytest.param(encode(image()), mt.OCI_INDEX, id="content-type-mismatch"),
        pytest.param(encode(index()), mt.OCI_MANIFEST, id="content-type-mismatch-index"),
        pytest.param(encode(docker_image()), mt.OCI_MANIFEST, id="docker-vs-oci"),
        pytest.param(encode(image()), "application/json", id="generic-content-type"),
        pytest.param(encode(image(mediaType="application/json")), None, id="unsupported-media-type"),
        pytest.param(encode(image(mediaType="application/json")), "application/json", id="unsupported-both"),
        pytest.param(
            encode(image(mediaType="application/vnd.docker.distribution.manifest.v1+json")), None, id="schema1-type"
        ),
        pytest.param(encode(image(mediaType=7)), None, id="media-type-not-string"),
        pytest.param(encode(image(mediaType=["x"])), None, id="media-type-list"),
        pytest.param(encode(index(layers=[LAYER])), None, id="index-with-layers"),
        pytest.param(encode(index(config=CONFIG)), None, id="index-with-config"),
        pytest.param(encode(image(manifests=[CHILD])), None, id="image-with-manifests"),
        pytest.param(encode(without(index(), "manifests")), None, id="index-without-manifests"),
        pytest.param(encode(index(manifests={"a": CHILD})), None, id="manifests-not-list"),
        pytest.param(encode(without(image(), "config")), None, id="image-without-config"),
        pytest.param(encode(image(config=None)), None, id="config-null"),
        pytest.param(encode(image(config=[CONFIG])), None, id="config-list"),
        pytest.param(encode(image(layers=LAYER)), None, id="layers-not-list"),
        pytest.param(encode(image(layers=None)), None, id="layers-null"),
        pytest.param(encode(image(layers=["sha256:abc"])), None, id="layer-not-object"),
        pytest.param(encode(_bad_descriptor(digest="sha256:abc")), None, id="short-digest"),
        pytest.param(encode(_bad_descriptor(digest="SHA256:" + "a" * 64)), None, id="uppercase-digest"),
        pytest.param(encode(_bad_descriptor(digest=12)), None, id="digest-not-string"),
        pytest.param(encode(_bad_descriptor(digest=...)), None, id="missing-digest"),
        pytest.param(encode(_bad_descriptor(size=-1)), None, id="negative-size"),
        pytest.param(encode(_bad_descriptor(size=True)), None, id="bool-size"),
        pytest.param(encode(_bad_descriptor(size=1.5)), None, id="float-size"),
        pytest.param(encode(_bad_descriptor(size="5")), None, id="string-size"),
        pytest.param(encode(_bad_descriptor(size=...)), None, id="missing-size"),
        pytest.param(encode(_bad_descriptor(mediaType=...)), None, id="missing-media-type"),
        pytest.param(encode(_bad_descriptor(mediaType="")), None, id="empty-media-type"),
        pytest.param(encode(_bad_descriptor(mediaType=1)), None, id="media-type-number"),
        pytest.param(encode(_bad_descriptor(artifactType=1)), None, id="descriptor-artifact-type-number"),
        pytest.param(encode(_bad_descriptor(platform="linux/amd64")), None, id="platform-not-object"),
        pytest.param(encode(_bad_descriptor(annotations={"a": 1})), None, id="descriptor-annotation-value"),
        pytest.param(encode(image(annotations={"a": None})), None, id="annotation-null-value"),
        pytest.param(encode(image(annotations={"a": {"b": "c"}})), None, id="annotation-nested"),
        pytest.param(encode(image(annotations=["a", "b"])), None, id="annotations-list"),
        pytest.param(encode(image(annotations="a=b")), None, id="annotations-string"),
        pytest.param(encode(image(subject="sha256:" + "a" * 64)), None, id="subject-string"),
        pytest.param(encode(image(subject={**SUBJECT, "size": -5})), None, id="subject-bad-size"),
        pytest.param(encode(image(artifactType=5)), None, id="artifact-type-number"),
        pytest.param(encode(index(manifests=[{**CHILD, "digest": "md5:" + "a" * 32}])), None, id="child-bad-digest"),
    ],
)
def test_rejects_invalid_manifests(body: bytes, content_type: str | None) -> None:
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(body, content_type)
    assert json.loads(caught.value.body())["errors"][0]["code"] == "MANIFEST_INVALID"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)
DESCRIPTOR_KEYS = ("mediaType", "digest", "size", "artifactType", "platform", "annotations")
MANIFEST_KEYS = (
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "subject",
    "artifactType",
    "annotations",
)
#: Valid descriptors with up to two fields replaced by arbitrary JSON.
hostile_descriptors = st.builds(
    lambda base, changes: {**base, **changes},
    st.sampled_from([CONFIG, LAYER, CHILD, EMPTY_CONFIG]),
    st.dictionaries(st.sampled_from(DESCRIPTOR_KEYS), json_values, max_size=2),
)
#: Valid documents with some fields replaced by hostile values, so the deep checks are reached.
hostile_documents = st.builds(
    lambda base, changes: {**base, **changes},
    st.sampled_from([image(), index(), docker_image(), docker_list(), without(image(), "mediaType")]),
    st.dictionaries(
        st.sampled_from(MANIFEST_KEYS),
        json_values
        | hostile_descriptors
        | st.lists(hostile_descriptors, max_size=3)
        | st.sampled_from(sorted(mt.MANIFESTS)),
        max_size=3,
    ),
)
content_types = st.none() | st.sampled_from(sorted(mt.MANIFESTS)) | st.text()


def parses_or_is_invalid(body: bytes, content_type: str | None) -> Manifest | None:
    """The no-500 guarantee: a manifest comes back or ManifestInvalid is raised, nothing else."""
    try:
        manifest = parse_manifest(body, content_type)
    except ManifestInvalid:
        return None
    assert manifest.media_type in mt.MANIFESTS
    assert manifest.digest == Digest.of(body)
    assert manifest.size == len(body)
    return manifest


@given(body=st.binary(), content_type=content_types)
@example(body=b"\xef\xbb\xbf{}", content_type=None)
@example(body=b"\xff\xfe{\x00}\x00", content_type=None)
@example(body=b"[" * 100_000, content_type=None)
@example(body=b"NaN", content_type=None)
def test_arbitrary_bytes_never_escape_as_other_errors(body: bytes, content_type: str | None) -> None:
    parses_or_is_invalid(body, content_type)


@given(document=json_values, content_type=content_types)
def test_arbitrary_json_never_escapes_as_other_errors(document: Any, content_type: str | None) -> None:
    parses_or_is_invalid(json.dumps(document).encode(), content_type)


@given(document=hostile_documents, content_type=st.none() | st.sampled_from(sorted(mt.MANIFESTS)))
@example(document=image(config={**CONFIG, "digest": "sha256:" + "\u00e9" * 64}), content_type=None)
def test_hostile_manifest_fields_never_escape_as_other_errors(
    document: dict[str, Any], content_type: str | None
) -> None:
    manifest = parses_or_is_invalid(json.dumps(document).encode(), content_type)
    if manifest is not None:
        assert document["schemaVersion"] == 2
        assert (manifest.config is None) == manifest.is_index


# -- large bodies (parsed on a thread pool) ------------------------------------------------


def _large_index(entries: int) -> bytes:
    manifests = [{"mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": i,
                  "platform": {"architecture": "amd64", "os": "linux", "os.features": ["a"]},
                  "annotations": {"n": str(i), "quote": 'say "[{"'}} for i in range(entries)]
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests,
                       "annotations": {"big": "x" * 1000}}).encode()


def test_a_large_parse_describes_the_manifest_as_an_inline_one() -> None:
    body = _large_index(2000)
    assert len(body) > 64 * 1024
    large, inline = parse_manifest(body, mt.OCI_INDEX, large=True), parse_manifest(body, mt.OCI_INDEX)
    assert large == inline
    assert [d.platform for d in large.manifests] == [d.platform for d in inline.manifests]
    assert [d.annotations for d in large.manifests] == [d.annotations for d in inline.manifests]


@pytest.mark.parametrize("body", [
    b"[" + b"[]," * 40_000 + b"[]]",
    b'{"schemaVersion":2,"layers":[' + b"{}," * 40_000 + b"{}]}",
    b'{"schemaVersion":2,"a":' + b"[" * 60_000 + b"]" * 60_000 + b"}",
    b'{"schemaVersion":2,"layers":[' + b"1," * 60_000 + b"1]}",
    b'{"schemaVersion":2,"annotations":{' + b'"a":"",' * 20_000 + b'"b":""}}',
], ids=["lists", "objects", "deep", "numbers", "tiny annotations"])
def test_a_large_body_denser_than_a_manifest_is_refused_before_decoding(body: bytes) -> None:
    assert len(body) > 64 * 1024
    with pytest.raises(ManifestInvalid, match="too many JSON values"):
        parse_manifest(body, mt.OCI_MANIFEST, large=True)


def test_brackets_inside_strings_of_a_sparse_large_body_are_accepted() -> None:
    document = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_EMPTY, "digest": f"sha256:{0:064x}", "size": 2},
                "layers": [], "annotations": {"text": "[" * 2000 + "x" * 100_000,
                                              **{f"k{i}": "v" for i in range(2000)}}}
    manifest = parse_manifest(json.dumps(document).encode(), mt.OCI_MANIFEST, large=True)
    assert manifest.annotations == document["annotations"]


def test_deep_nesting_is_manifest_invalid_in_both_decoders() -> None:
    body = b'{"schemaVersion":2,"a":' + b"[" * 5000 + b"]" * 5000 + b"}"  # small: not refused for density
    for large in (False, True):
        with pytest.raises(ManifestInvalid, match="not valid JSON"):
            parse_manifest(body, mt.OCI_MANIFEST, large=large)
