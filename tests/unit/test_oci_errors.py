"""The OCI error classes: codes, HTTP statuses and the JSON error envelope."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from angosd.oci import errors
from angosd.oci.errors import OciError

ERROR_TABLE = [
    (errors.BlobUnknown, "BLOB_UNKNOWN", 404),
    (errors.BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 400),
    (errors.BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404),
    (errors.DigestInvalid, "DIGEST_INVALID", 400),
    (errors.ManifestInvalid, "MANIFEST_INVALID", 400),
    (errors.ManifestUnknown, "MANIFEST_UNKNOWN", 404),
    (errors.NameInvalid, "NAME_INVALID", 400),
    (errors.NameUnknown, "NAME_UNKNOWN", 404),
    (errors.SizeInvalid, "SIZE_INVALID", 400),
    (errors.TagInvalid, "TAG_INVALID", 400),
    (errors.TagImmutable, "TAG_IMMUTABLE", 409),
    (errors.Unauthorized, "UNAUTHORIZED", 401),
    (errors.Denied, "DENIED", 403),
    (errors.Unsupported, "UNSUPPORTED", 415),
]
ERROR_CLASSES = [cls for cls, _, _ in ERROR_TABLE]


def _only_entry(error: OciError) -> dict:
    document = json.loads(error.body())
    assert set(document) == {"errors"}
    assert isinstance(document["errors"], list) and len(document["errors"]) == 1
    return document["errors"][0]


@pytest.mark.parametrize(("cls", "code", "status"), ERROR_TABLE, ids=[code for _, code, _ in ERROR_TABLE])
def test_code_and_status(cls: type[OciError], code: str, status: int) -> None:
    assert issubclass(cls, OciError)
    assert cls.code == code
    assert cls.status == status
    error = cls("some detail")
    assert (error.code, error.status) == (code, status)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.code)
def test_body_envelope_with_detail(cls: type[OciError]) -> None:
    entry = _only_entry(cls({"digest": "sha256:abc"}))
    assert entry == {"code": cls.code, "message": cls.message, "detail": {"digest": "sha256:abc"}}
    assert isinstance(entry["message"], str) and entry["message"]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.code)
def test_body_envelope_without_detail(cls: type[OciError]) -> None:
    error = cls()
    assert _only_entry(error) == {"code": cls.code, "message": cls.message}
    assert str(error) == cls.message


# Not parametrized: pytest-twisted re-wraps a shared ``hypothesis.inner_test`` per
# parametrized item, which breaks @given + parametrize; draw the class instead.
@given(cls=st.sampled_from(ERROR_CLASSES), detail=st.text())
def test_body_is_json_for_any_text_detail(cls: type[OciError], detail: str) -> None:
    """Details often echo client input (names, digests): any text must still encode."""
    entry = _only_entry(cls(detail))
    assert entry["code"] == cls.code
    assert entry["detail"] == detail


def test_headers_are_copied() -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="x"'}
    error = errors.Unauthorized(headers=headers)
    headers["WWW-Authenticate"] = "changed"
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="x"'}
    assert errors.Denied().headers == {}


def test_codes_are_distinct() -> None:
    assert len({cls.code for cls in ERROR_CLASSES}) == len(ERROR_CLASSES)
