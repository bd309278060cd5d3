"""Media types and the little of a manifest's structure the copy needs.

Manifests are parsed only to find what they point at (children of an index, config and
layers of an image, the subject of a referrer); the bytes that are copied are always the
original ones. The one exception, an index filtered to some platforms, is built by
`filter_index` and its new digest is reported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from manifests_rewriter.reference import digest_problem

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"  # OCI 1.1 rc, still served by some registries

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST, OCI_ARTIFACT, DOCKER_V1_SIGNED, DOCKER_V1})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES
# Every type we can copy, preferred first; a registry picks one and must not convert.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, OCI_ARTIFACT,
                    DOCKER_V1_SIGNED, DOCKER_V1])

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the limit distribution and ACR enforce
# Docker's attestation manifests inside an index point at the child they describe.
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_tag(digest: str) -> str:
    """The tag of the OCI referrers tag schema, also used to pin digest-only images: sha256-<hex>."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"[:128]


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None  # "os/arch[/variant]" for children of an index
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    urls: tuple[str, ...] = ()  # foreign layers (Windows base layers) live elsewhere

    @classmethod
    def from_json(cls, data: Any, where: str) -> Descriptor:
        """A descriptor from a manifest: its digest checked (a registry's manifest is untrusted
        input, and the digest goes into URLs), its size an integer."""
        if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
            raise ValueError(f"{where}: descriptor without a digest")
        problem = digest_problem(data["digest"])
        if problem:
            raise ValueError(f"{where}: descriptor with an {problem}")
        size = data.get("size", -1)
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"{where}: descriptor {data['digest']} has an invalid size")
        platform = data.get("platform")
        annotations = data.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        urls = data.get("urls")
        urls = urls if isinstance(urls, list) else []
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=data["digest"],
            size=size,
            platform=platform_string(platform) if isinstance(platform, dict) else None,
            artifact_type=data.get("artifactType"),
            annotations={str(k): str(v) for k, v in annotations.items()},
            urls=tuple(str(u) for u in urls),
        )


def platform_string(platform: dict[str, Any]) -> str:
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    if platform.get("variant"):
        text += f"/{platform['variant']}"
    return text


def platform_matches(platform: str | None, wanted: str) -> bool:
    """linux/arm64 matches linux/arm64/v8; linux/arm/v7 matches only itself."""
    if platform is None:
        return False
    have, want = platform.split("/"), wanted.split("/")
    if have[:2] != want[:2]:
        return False
    return len(want) < 3 or (have[2:3] or [""])[0] == want[2]


@dataclass(frozen=True)
class Manifest:
    """A manifest's original bytes and what it references."""

    raw: bytes
    media_type: str
    digest: str
    children: tuple[Descriptor, ...] = ()  # manifests of an index
    blobs: tuple[Descriptor, ...] = ()  # config then layers of an image manifest
    subject: Descriptor | None = None
    artifact_type: str | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def platforms(self) -> list[str]:
        return [c.platform for c in self.children if c.platform and not c.platform.startswith("unknown/")]


def parse_manifest(raw: bytes, media_type: str | None = None, digest: str | None = None) -> Manifest:
    """Parse manifest bytes; the media type is the body's own, else the Content-Type given."""
    digest = digest or sha256_digest(raw)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"manifest {digest} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"manifest {digest} is not a JSON object")
    body_type = data.get("mediaType")
    kind = body_type if isinstance(body_type, str) and body_type else (media_type or "").split(";")[0].strip()
    if not kind:
        # An OCI manifest or index may omit mediaType; tell them apart by shape.
        kind = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    where = f"manifest {digest}"
    subject = Descriptor.from_json(data["subject"], where) if isinstance(data.get("subject"), dict) else None
    artifact_type = data.get("artifactType") if isinstance(data.get("artifactType"), str) else None
    if kind in INDEX_TYPES or "manifests" in data:
        entries = data.get("manifests") or []
        if not isinstance(entries, list):
            raise ValueError(f"{where}: 'manifests' is not a list")
        children = tuple(Descriptor.from_json(e, where) for e in entries)
        return Manifest(raw, kind, digest, children=children, subject=subject, artifact_type=artifact_type)
    if kind in (DOCKER_V1, DOCKER_V1_SIGNED):
        layers = [{"digest": x.get("blobSum"), "size": -1} for x in data.get("fsLayers") or [] if isinstance(x, dict)]
        blobs = tuple(dict.fromkeys(Descriptor.from_json(x, where) for x in layers))
        return Manifest(raw, kind, digest, blobs=blobs)
    parts: list[Any] = []
    if isinstance(data.get("config"), dict):
        parts.append(data["config"])
    for key in ("layers", "blobs"):  # "blobs": the OCI artifact manifest of the 1.1 rc
        if isinstance(data.get(key), list):
            parts.extend(data[key])
    blobs = tuple(dict.fromkeys(Descriptor.from_json(p, where) for p in parts))  # a blob listed twice is copied once
    return Manifest(raw, kind, digest, blobs=blobs, subject=subject, artifact_type=artifact_type)


def filter_index(index: Manifest, platforms: tuple[str, ...]) -> tuple[Manifest, list[Descriptor]]:
    """A new index holding only the children for `platforms` (and the attestations of those
    children); returns it with the kept children. The original is returned when all are kept."""
    keep = [c for c in index.children if any(platform_matches(c.platform, p) for p in platforms)]
    kept_digests = {c.digest for c in keep}
    keep += [c for c in index.children
             if c.annotations.get(REFERENCE_DIGEST) in kept_digests and c.digest not in kept_digests]
    if len(keep) == len(index.children):
        return index, list(index.children)
    data = json.loads(index.raw)
    kept = {c.digest for c in keep}
    data["manifests"] = [e for e in data["manifests"] if e.get("digest") in kept]
    raw = json.dumps(data, indent=3).encode()  # the indentation containerd and buildkit write
    return parse_manifest(raw, index.media_type), [c for c in index.children if c.digest in kept]


def referrers_index(descriptors: list[Descriptor]) -> bytes:
    """An OCI index listing referrers, for a registry without the referrers API (tag schema)."""
    manifests = []
    for d in descriptors:
        entry: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
        if d.artifact_type:
            entry["artifactType"] = d.artifact_type
        if d.annotations:
            entry["annotations"] = d.annotations
        manifests.append(entry)
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
