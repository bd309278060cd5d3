"""Test images without a Docker engine: OCI image layouts written here, pushed with skopeo.

Layers are gzip'd tars of seeded random bytes, so every layer is unique, incompressible and the
same on every run (same digests), and tests can ask for exact sizes.  Images, multi-platform
indexes, cosign-style signature tags and OCI 1.1 referrers are built as bytes here and written to
an OCI layout (``WORKDIR/oci``); ``push`` copies them byte for byte with
``skopeo copy --all --preserve-digests``, so the digest at the registry is the one built here
(a referrers index is the one exception, PUT directly: see ``push``).

skopeo keeps a blob-info cache (``/var/lib/containers/cache`` as root) that remembers where blobs
were seen and changes what it sends on later runs.  Each skopeo call here gets a fresh, private
cache (a private mount namespace as root, ``XDG_DATA_HOME`` otherwise), so runs do not leak into
each other; where that is impossible (no ``unshare``), the shared cache is accepted: it changes
request patterns, never results, because digests are preserved.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.registries import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SBOM_ARTIFACT_TYPE = "application/vnd.example.sbom.v1+json"
CREATED = "2024-01-01T00:00:00Z"  # fixed, so configs (and digests) are the same on every run
SKOPEO_TIMEOUT = 120
SYSTEM_BLOB_CACHE = Path("/var/lib/containers/cache")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def cosign_tag(digest: str) -> str:
    """The tag cosign stores a signature of ``digest`` under: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-") + ".sig"


def referrers_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag-schema fallback tag for ``digest``: ``sha256-<hex>``."""
    return digest.replace(":", "-")


# --------------------------------------------------------------------------- blobs and layers


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = field(repr=False)

    @functools.cached_property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer(Blob):
    diff_id: str = ""  # sha256 of the uncompressed tar, for the config's rootfs.diff_ids


def make_layer(content: bytes | int, seed: str = "layer") -> Layer:
    """A gzip'd tar with one file: ``content``, or that many random bytes from ``seed``.

    The tar and gzip headers carry no time or owner, so the same arguments give the same digest.
    """
    data = random.Random(seed).randbytes(content) if isinstance(content, int) else content
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{hashlib.sha256(seed.encode()).hexdigest()[:16]}.bin")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    uncompressed = raw.getvalue()
    return Layer(OCI_LAYER_GZIP, gzip.compress(uncompressed, compresslevel=6, mtime=0), sha256(uncompressed))


# --------------------------------------------------------------------------- OCI layout


_LAYOUT_LOCK = threading.Lock()


def _layout(workdir: Path) -> Path:
    layout = Path(workdir) / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return layout


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not path.exists():
        path.write_bytes(data)
    return digest


def _add_ref(layout: Path, ref_name: str, descriptor: dict[str, Any]) -> None:
    """Name ``descriptor`` in the layout's index.json (``oci:DIR:REF_NAME`` for skopeo)."""
    with _LAYOUT_LOCK:
        index_file = layout / "index.json"
        index = (
            json.loads(index_file.read_text())
            if index_file.exists()
            else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        )
        entry = {**descriptor, "annotations": {"org.opencontainers.image.ref.name": ref_name}}
        index["manifests"] = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != ref_name
        ] + [entry]
        index_file.write_text(json.dumps(index, indent=1))


@dataclass
class OciImage:
    """A manifest or index written to an OCI layout, with what tests assert on."""

    layout: Path
    ref_name: str  # the name inside the layout: ``oci:LAYOUT:REF_NAME``
    media_type: str
    manifest: bytes = field(repr=False)
    manifest_digest: str
    layer_digests: list[str]  # in order; for an index, every child's, each once
    total_bytes: int  # every distinct blob and manifest it references, its own manifest included
    platforms: list[str] = field(default_factory=list)  # "linux/amd64", ...; [] for artifacts
    config_digest: str | None = None
    children: list[OciImage] = field(default_factory=list, repr=False)
    artifact_type: str | None = None

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.ref_name}"

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        desc = {"mediaType": self.media_type, "digest": self.manifest_digest, "size": len(self.manifest)}
        return {**desc, **extra}


def _platform(text: str) -> dict[str, str]:
    os_name, arch, *variant = text.split("/")
    platform = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant[0]
    return platform


def _write_manifest(
    workdir: Path,
    manifest: dict[str, Any],
    blobs: Sequence[Blob],
    *,
    platforms: list[str],
    config: Blob | None = None,
    artifact_type: str | None = None,
) -> OciImage:
    layout = _layout(workdir)
    for blob in ([config] if config else []) + list(blobs):
        _write_blob(layout, blob.data)
    data = canonical_json(manifest)
    digest = _write_blob(layout, data)
    ref_name = digest.split(":", 1)[1][:32]
    _add_ref(layout, ref_name, {"mediaType": manifest["mediaType"], "digest": digest, "size": len(data)})
    distinct = {b.digest: b.size for b in ([config] if config else []) + list(blobs)}
    return OciImage(
        layout=layout,
        ref_name=ref_name,
        media_type=manifest["mediaType"],
        manifest=data,
        manifest_digest=digest,
        layer_digests=[b.digest for b in blobs],
        total_bytes=len(data) + sum(distinct.values()),
        platforms=platforms,
        config_digest=config.digest if config else None,
        artifact_type=artifact_type,
    )


def build_image(
    workdir: Path,
    *,
    layers: Sequence[bytes | int | Layer],
    platform: str = "linux/amd64",
    seed: str = "image",
    annotations: dict[str, str] | None = None,
) -> OciImage:
    """A single-platform OCI image; ``layers`` are content, sizes (random bytes from ``seed``) or shared Layers."""
    built = [
        item if isinstance(item, Layer) else make_layer(item, f"{seed}/layer-{i}") for i, item in enumerate(layers)
    ]
    config = Blob(
        OCI_CONFIG,
        canonical_json(
            {
                **_platform(platform),
                "created": CREATED,
                "config": {"Cmd": ["/bin/true"], "Labels": {"acr-mirror.test/seed": seed}},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
                "history": [
                    {"created": CREATED, "created_by": f"acr-mirror test layer {i}"} for i in range(len(built))
                ],
            }
        ),
    )
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in built],
    }
    if annotations:
        manifest["annotations"] = annotations
    return _write_manifest(workdir, manifest, built, platforms=[platform], config=config)


def build_index(
    workdir: Path,
    platforms: Iterable[str] = ("linux/amd64", "linux/arm64"),
    shared_layers: Sequence[bytes | int | Layer] = (16 * 1024,),
    *,
    unique_layer: int = 8 * 1024,
    seed: str = "index",
) -> OciImage:
    """A multi-platform OCI index: per platform, ``shared_layers`` (same blobs) plus one unique layer."""
    shared = [
        item if isinstance(item, Layer) else make_layer(item, f"{seed}/shared-{i}")
        for i, item in enumerate(shared_layers)
    ]
    children = [build_image(workdir, layers=[*shared, unique_layer], platform=p, seed=f"{seed}/{p}") for p in platforms]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [c.descriptor(platform=_platform(c.platforms[0])) for c in children],
    }
    return _index_image(workdir, index, children)


def _index_image(workdir: Path, index: dict[str, Any], children: list[OciImage]) -> OciImage:
    layout = _layout(workdir)
    data = canonical_json(index)
    digest = _write_blob(layout, data)
    ref_name = digest.split(":", 1)[1][:32]
    _add_ref(layout, ref_name, {"mediaType": OCI_INDEX, "digest": digest, "size": len(data)})
    layer_digests = list(dict.fromkeys(d for c in children for d in c.layer_digests))
    sizes: dict[str, int] = {}
    for child in children:
        sizes[child.manifest_digest] = len(child.manifest)
        child_index = json.loads(child.manifest)
        for desc in [child_index.get("config", {})] + child_index.get("layers", []):
            if desc:
                sizes[desc["digest"]] = desc["size"]
    return OciImage(
        layout=layout,
        ref_name=ref_name,
        media_type=OCI_INDEX,
        manifest=data,
        manifest_digest=digest,
        layer_digests=layer_digests,
        total_bytes=len(data) + sum(sizes.values()),
        platforms=[p for c in children for p in c.platforms],
        children=children,
    )


def build_cosign_signature(workdir: Path, subject: OciImage, docker_reference: str) -> OciImage:
    """A cosign-style signature manifest (push it under ``cosign_tag(subject.manifest_digest)``).

    The shape is cosign's: one ``simplesigning`` layer with the payload, the signature in an
    annotation.  The signature bytes are random: nothing here verifies them, and no key exists.
    """
    payload = canonical_json(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": subject.manifest_digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    )
    layer = Layer(COSIGN_SIMPLESIGNING, payload, sha256(payload))
    config = Blob(
        OCI_CONFIG,
        canonical_json(
            {
                "architecture": "",
                "os": "",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }
        ),
    )
    signature = random.Random(subject.manifest_digest).randbytes(64)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [
            layer.descriptor(annotations={"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()})
        ],
    }
    return _write_manifest(workdir, manifest, [layer], platforms=[], config=config)


def build_referrer(
    workdir: Path,
    subject: OciImage,
    *,
    artifact_type: str = SBOM_ARTIFACT_TYPE,
    payload: bytes | None = None,
) -> OciImage:
    """An OCI 1.1 artifact manifest whose ``subject`` is ``subject`` (an SBOM, say); push it by digest."""
    payload = payload or canonical_json({"sbom": "acr-mirror test", "subject": subject.manifest_digest})
    blob = Blob(artifact_type, payload)
    empty = Blob(OCI_EMPTY, b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.descriptor(),
        "layers": [blob.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": CREATED},
    }
    return _write_manifest(workdir, manifest, [blob], platforms=[], config=empty, artifact_type=artifact_type)


def build_referrers_index(workdir: Path, referrers: Sequence[OciImage]) -> OciImage:
    """The index a registry without the referrers API keeps under the fallback tag ``sha256-<hex>``."""
    entries = []
    for ref in referrers:
        manifest = json.loads(ref.manifest)
        extra = {"artifactType": ref.artifact_type} if ref.artifact_type else {}
        if manifest.get("annotations"):
            extra["annotations"] = manifest["annotations"]
        entries.append(ref.descriptor(**extra))
    return _index_image(workdir, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, list(referrers))


# --------------------------------------------------------------------------- skopeo


@functools.lru_cache(maxsize=1)
def _private_namespaces() -> bool:
    """Whether skopeo can run in a private mount namespace (root with ``unshare``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        SYSTEM_BLOB_CACHE.mkdir(parents=True, exist_ok=True)  # skopeo would create it anyway
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run skopeo with a private blob-info cache, no stored credentials and no trust policy file.

    Output stays bytes: ``inspect --raw`` must come back exactly as the registry sent it.
    """
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not on PATH")
    with tempfile.TemporaryDirectory(prefix="skopeo-") as private:
        auth_file = Path(private) / "auth.json"
        auth_file.write_text('{"auths": {}}')
        cache = Path(private) / "cache"
        cache.mkdir()
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth_file), "XDG_DATA_HOME": str(cache)}
        command = ["skopeo", "--insecure-policy", *args]
        if _private_namespaces():
            mount = 'mount --bind "$0" /var/lib/containers/cache && exec "$@"'
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(cache), *command]
        result = subprocess.run(command, capture_output=True, env=env, timeout=SKOPEO_TIMEOUT)
    if check and result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"skopeo {' '.join(args[:1])} failed ({result.returncode}): {stderr}")
    return result


def registry_options(registry: Registry, prefix: str = "") -> list[str]:
    """skopeo's TLS and credential options for ``registry``; ``prefix`` is "src-", "dest-" or ""."""
    opts = [f"--{prefix}cert-dir={registry.cert_dir}"] if registry.tls else [f"--{prefix}tls-verify=false"]
    if registry.credentials:
        opts.append(f"--{prefix}creds={registry.username}:{registry.password}")
    else:
        opts.append(f"--{prefix}no-creds")
    return opts


def _docker_ref(registry: Registry, ref: str) -> str:
    return "docker://" + (ref if ref.startswith(registry.host + "/") else registry.ref(ref))


def push(image: OciImage, registry: Registry, repository: str, tag: str | None = None) -> str:
    """Copy ``image`` (all platforms, byte for byte) to ``registry``; ``tag=None`` pushes by digest.

    Returns the digest skopeo reports, which is ``image.manifest_digest`` (checked).  An index
    whose entries carry ``artifactType`` (a referrers index) goes by a direct PUT after its
    children: skopeo 1.9 re-serializes indexes through an image-spec 1.0 type that drops that
    field, and then refuses to change the bytes under ``--preserve-digests``.
    """
    ref = f"{repository}@{image.manifest_digest}" if tag is None else f"{repository}:{tag}"
    if image.media_type == OCI_INDEX and any("artifactType" in m for m in json.loads(image.manifest)["manifests"]):
        for child in image.children:
            push(child, registry, repository)
        return put_manifest(registry, repository, tag or image.manifest_digest, image.manifest, image.media_type)
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        digest_file = Path(tmp) / "digest"
        skopeo(
            "copy", "--all", "--preserve-digests", "--retry-times=2", f"--digestfile={digest_file}",
            *registry_options(registry, "dest-"), image.oci_ref, _docker_ref(registry, ref),
        )  # fmt: skip
        digest = digest_file.read_text().strip()
    if digest != image.manifest_digest:
        raise RuntimeError(f"pushing {ref}: skopeo reports {digest}, built {image.manifest_digest}")
    return digest


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', params))


def put_manifest(registry: Registry, repository: str, reference: str, data: bytes, media_type: str) -> str:
    """PUT one manifest as is (basic or token auth as the registry asks); returns its digest."""
    url = f"{registry.url}/v2/{repository}/manifests/{reference}"
    headers = {"Content-Type": media_type}
    verify = ssl.create_default_context(cafile=registry.ca_file) if registry.ca_file else True
    with httpx.Client(verify=verify, timeout=30) as client:
        response = client.put(url, content=data, headers=headers)
        if response.status_code == 401:
            scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
            creds = registry.credentials
            if scheme == "bearer":
                query = {"service": params.get("service", ""), "scope": f"repository:{repository}:pull,push"}
                token = client.get(params["realm"], params=query, auth=creds).raise_for_status().json()
                headers["Authorization"] = "Bearer " + (token.get("token") or token["access_token"])
                response = client.put(url, content=data, headers=headers)
            elif creds:
                response = client.put(url, content=data, headers=headers, auth=creds)
        if response.status_code != 201:
            raise RuntimeError(f"putting manifest {repository}:{reference}: {response.status_code} {response.text}")
    digest = response.headers.get("Docker-Content-Digest", "")
    if digest != sha256(data):
        raise RuntimeError(f"putting manifest {repository}:{reference}: registry reports {digest}, sent {sha256(data)}")
    return digest


def inspect_raw(ref: str, registry: Registry) -> bytes:
    """The manifest bytes the registry serves for ``ref`` (``repo:tag`` or ``repo@digest``), via skopeo."""
    result = skopeo("inspect", "--raw", *registry_options(registry), _docker_ref(registry, ref))
    return result.stdout


# --------------------------------------------------------------------------- the standard set


STANDARD_IMAGES = [
    "library/nginx:1.25",
    "library/redis:7.2",
    "library/busybox:1.36",
    "team/api:1.0",
    "team/api:1.1",
    "team/web:2.0",
    "team/worker:3.1",
    "tools/kubectl:1.29",
    "tools/debug:latest",
    "deep/nested/path/app:0.1",
]
STANDARD_INDEX = "multi/app:1.0"
SIGNED_IMAGE = "team/api:1.0"
REFERRED_IMAGE = "team/web:2.0"
BASE_LAYER_SIZES = (32 * 1024, 16 * 1024, 8 * 1024)


def _split(ref: str) -> tuple[str, str]:
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def seed_standard_set(registry: Registry, workdir: Path) -> dict[str, Any]:
    """Push the images most tests share; the same digests on every run.

    - ``images``: ref → digest for 10 single-platform images (``STANDARD_IMAGES``), each the 3
      shared base layers (``base_layers``: 32, 16, 8 KiB) plus one unique layer (4 KiB and up);
    - ``index``: a linux/amd64 + linux/arm64 index (``ref``, ``digest``, ``platforms``: name → digest);
    - ``signature``: a cosign-style ``sha256-<hex>.sig`` tag signing ``team/api:1.0``;
    - ``referrer``: an SBOM artifact whose subject is ``team/web:2.0``, pushed by digest, and the
      referrers fallback tag ``sha256-<hex>`` (``fallback_ref``/``fallback_digest``) listing it;
    - ``refs``: every reference pushed; ``oci``: ref → OciImage, for sizes and manifests.
    """
    base = [make_layer(size, f"standard/base-{i}") for i, size in enumerate(BASE_LAYER_SIZES)]
    built: dict[str, OciImage] = {}
    for i, ref in enumerate(STANDARD_IMAGES):
        built[ref] = build_image(workdir, layers=[*base, 4 * 1024 + 512 * i], seed=f"standard/{ref}")
    index = build_index(workdir, shared_layers=[base[0]], seed="standard/multi")
    built[STANDARD_INDEX] = index

    signed = built[SIGNED_IMAGE]
    sig_ref = f"{_split(SIGNED_IMAGE)[0]}:{cosign_tag(signed.manifest_digest)}"
    built[sig_ref] = build_cosign_signature(workdir, signed, registry.ref(_split(SIGNED_IMAGE)[0]))

    subject = built[REFERRED_IMAGE]
    web_repo = _split(REFERRED_IMAGE)[0]
    referrer = build_referrer(workdir, subject)
    referrer_ref = f"{web_repo}@{referrer.manifest_digest}"
    fallback_ref = f"{web_repo}:{referrers_tag(subject.manifest_digest)}"
    built[fallback_ref] = build_referrers_index(workdir, [referrer])

    def push_ref(ref: str) -> str:
        return push(built[ref], registry, *_split(ref))

    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = dict(zip(built, pool.map(push_ref, built), strict=True))
    built[referrer_ref] = referrer  # pushed by digest, before the fallback index that lists it

    return {
        "registry": registry.host,
        "images": {ref: digests[ref] for ref in STANDARD_IMAGES},
        "base_layers": [layer.digest for layer in base],
        "index": {
            "ref": STANDARD_INDEX,
            "digest": digests[STANDARD_INDEX],
            "platforms": {c.platforms[0]: c.manifest_digest for c in index.children},
        },
        "signature": {
            "ref": sig_ref,
            "digest": digests[sig_ref],
            "subject": SIGNED_IMAGE,
            "subject_digest": signed.manifest_digest,
        },
        "referrer": {
            "ref": referrer_ref,
            "digest": referrer.manifest_digest,
            "artifact_type": referrer.artifact_type,
            "subject": REFERRED_IMAGE,
            "subject_digest": subject.manifest_digest,
            "fallback_ref": fallback_ref,
            "fallback_digest": digests[fallback_ref],
        },
        "refs": [*built],
        "oci": built,
    }
