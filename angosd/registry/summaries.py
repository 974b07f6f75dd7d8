"""What listings need to know about a manifest, computed once from its bytes.

A summary is written beside the revision record when a manifest is pushed, so listings
(``_revisions``, the web UI) read a few hundred bytes instead of parsing every stored
manifest. It depends only on the manifest's bytes, so it never goes stale; one that is
missing (a manifest stored before summaries existed) or unreadable is computed again from
the bytes and written (`angosd.registry.manifests.ManifestStore.summary`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from angosd.oci.digest import Digest
from angosd.oci.errors import OciError
from angosd.oci.manifest import Descriptor, Manifest

__all__ = ["SUMMARY_VERSION", "ManifestSummary"]

#: The format of the stored summary; another value is recomputed.
SUMMARY_VERSION = 1


@dataclass(frozen=True, slots=True)
class ManifestSummary:
    """A manifest's media type, size, subject, ``artifactType``, config media type,
    annotations and child manifests (an index's entries). ``parsed`` is False for stored
    bytes that do not parse (then only the media type and size are known)."""

    media_type: str
    size: int
    subject: Digest | None = None
    artifact_type: str | None = None
    config_media_type: str | None = None
    annotations: dict[str, str] | None = field(default=None, hash=False, compare=False)
    children: tuple[Descriptor, ...] = ()
    parsed: bool = True

    @classmethod
    def of(cls, manifest: Manifest) -> ManifestSummary:
        return cls(manifest.media_type, manifest.size,
                   manifest.subject.digest if manifest.subject is not None else None, manifest.artifact_type,
                   manifest.config.media_type if manifest.config is not None else None, manifest.annotations,
                   manifest.manifests)

    def to_json(self) -> bytes:
        return json.dumps({
            "version": SUMMARY_VERSION, "media_type": self.media_type, "size": self.size,
            "subject": str(self.subject) if self.subject is not None else None,
            "artifact_type": self.artifact_type, "config_media_type": self.config_media_type,
            "annotations": self.annotations, "children": [child.to_json() for child in self.children],
            "parsed": self.parsed,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ManifestSummary:
        """The summary stored as ``data``; raises `ValueError` for anything else (malformed,
        truncated, another version)."""
        try:
            record = json.loads(data)
            if not isinstance(record, dict) or record.get("version") != SUMMARY_VERSION:
                raise ValueError("not a manifest summary of this version")
            subject = record["subject"]
            summary = cls(_text(record["media_type"]), _count(record["size"]),
                          Digest.parse(subject) if subject is not None else None,
                          _optional_text(record["artifact_type"]), _optional_text(record["config_media_type"]),
                          _strings(record["annotations"]), tuple(_child(c) for c in record["children"]),
                          record["parsed"] is True)
        except (KeyError, TypeError, AttributeError, RecursionError, ValueError, OciError) as exc:
            raise ValueError(f"unreadable manifest summary: {exc}") from None
        return summary


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("expected a count")
    return value


def _strings(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("expected strings by string")
    return value


def _child(value: Any) -> Descriptor:
    if not isinstance(value, dict):
        raise ValueError("expected a descriptor")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ValueError("expected a platform object")
    return Descriptor(_text(value["mediaType"]), Digest.parse(_text(value["digest"])), _count(value["size"]),
                      _optional_text(value.get("artifactType")), _strings(value.get("annotations")), platform)
