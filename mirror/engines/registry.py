"""The registry engine (`copy.engine: registry`, the default): images from their registries into
the target over the OCI distribution API, digests and platforms preserved.

Rules (issue 3):
- manifests are copied byte for byte; an index with every child, or, when `copy.platforms`
  is set, only those children under a new index (the result's note says the digest changed);
- blobs before manifests, children before their index, the target tag last: a tag in the
  target means the whole image (and its signatures) is there;
- a blob the target repository has is skipped (HEAD); one the run has put in another
  repository of the target is mounted; each digest is transferred once per run, even when
  images sharing it run at the same time (a future per digest);
- blobs stream GET → PUT with bounded memory and their digest checked on the way (the last
  piece is held back until the digest matches, so a wrong blob is never committed);
- a source already in the target with the same digest costs one HEAD there;
- digest-only references get the tag `sha256-<hex>` in the target (ACR retention purges
  untagged manifests);
- referrers and cosign `.sig`/`.att`/`.sbom` tags come along when `copy.signatures`.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import ImageRef

from .. import retry
from ..registry.client import RegistryClient, Repository
from ..registry.credentials import Keychain
from ..registry.errors import RegistryError
from ..registry.media import OCI_INDEX, Descriptor, Manifest, digest_tag, filter_index, referrers_index
from ..settings import MirrorSettings
from .base import CopyResult, Engine, Progress

SIGNATURE_SUFFIXES = (".sig", ".att", ".sbom")
MAX_INDEX_DEPTH = 8  # an index of indexes this deep is a registry misbehaving (real images nest 2 at most)  # cosign's tags next to an image: sha256-<hex>.sig


@dataclass(frozen=True)
class _Plan:
    """What copying one mapping means, resolved before anything is written."""

    source_digest: str
    tag: str  # the tag written in the target
    target_digest: str  # the digest the target must hold under `tag`
    manifest: Manifest | None  # the source manifest when it had to be read already
    top: Manifest | None  # what is written under `tag` when it differs from the source (filtered index)
    kept: tuple[Descriptor, ...] | None  # children copied when platforms are filtered


class _Tally:
    """Counters of one image, updated from blob workers."""

    def __init__(self, result: CopyResult):
        self.result = result
        self.lock = threading.Lock()

    def add(self, outcome: str, size: int) -> None:
        with self.lock:
            if outcome == "copied":
                self.result.blobs_copied += 1
                self.result.bytes_moved += size
            elif outcome == "mounted":
                self.result.blobs_mounted += 1
            else:
                self.result.blobs_skipped += 1


class RegistryEngine(Engine):
    """Copies mappings (source ImageRef → target ImageRef). Thread-safe; one per run, so
    the knowledge of where each digest lives in the target is shared by all its images."""

    name = "registry"
    preserves_digests = True
    preserves_platforms = True

    def __init__(self, settings: MirrorSettings, *, keychain: Keychain | None = None,
                 progress: Progress | None = None):
        super().__init__(settings, keychain=keychain, progress=progress)
        self.copy_settings = settings.copy
        # Blob workers often just wait for another image's transfer of a shared layer, so there
        # are more of them than transfers; the per-host request limit bounds real transfers.
        self._blob_pool = ThreadPoolExecutor(max_workers=4 * self.copy_settings.concurrency,
                                             thread_name_prefix="blob")
        self._where: dict[tuple[str, str], set[str]] = {}  # (target host, digest) -> repositories holding it
        self._in_flight: dict[tuple[str, str], Future[str]] = {}
        self._manifests_done: set[tuple[str, str, str]] = set()  # (host, repository, digest) put this run
        self._source_tags: dict[tuple[str, str], Future[set[str]]] = {}

    # -- public API ---------------------------------------------------------------------------

    def status(self, mapping: Mapping) -> CopyResult:
        """Dry run: the source digest, and whether the target already holds it ("present") or
        would get it ("planned"). Reads only."""
        result = CopyResult(str(mapping.source), str(mapping.target))
        try:
            src = self._repo(mapping.source)
            dst = self._repo(mapping.target)
            plan = self._plan(mapping, src, result)
            result.status = "present" if self._present(dst, plan) else "planned"
            result.platforms = self._platforms(src, plan.manifest or src.get_manifest(plan.source_digest))
        except Exception as exc:
            result.status = "failed"
            result.error = self.describe(exc, f"check {mapping.source} against {mapping.target}")
        result.rate_limit = self._rate_limit(mapping)
        return result

    def verify(self, mapping: Mapping, digest: str | None = None) -> bool:
        """Whether the target holds `digest` (default: the source's current digest) under the
        mapping's target tag, or by digest for a digest-only target. Registry failures other
        than absence raise RegistryError."""
        dst = self._repo(mapping.target)
        if digest is None:
            digest = mapping.source.digest or self._source_digest(self._repo(mapping.source), mapping.source)
        if mapping.target.tag or not mapping.target.digest:
            info = dst.head_manifest(mapping.target.effective_tag)
            return info is not None and info.digest == digest
        return dst.head_manifest(digest) is not None

    def close(self) -> None:
        self._blob_pool.shutdown(wait=True)
        super().close()

    # -- one image ------------------------------------------------------------------------------

    def _repo(self, ref: ImageRef, *, push: bool = False) -> Repository:
        return self.client(ref.registry).repo(ref.repository, push=push)

    def _source_digest(self, src: Repository, ref: ImageRef) -> str:
        info = src.head_manifest(ref.reference)
        if info is None:
            raise RegistryError(f"HEAD manifest {ref}", 404, ("MANIFEST_UNKNOWN",), "not found at the source")
        return info.digest or src.get_manifest(ref.reference).digest  # a HEAD without Docker-Content-Digest

    def _plan(self, mapping: Mapping, src: Repository, result: CopyResult) -> _Plan:
        source, target = mapping.source, mapping.target
        digest = source.digest or self._source_digest(src, source)
        result.digest = digest
        tag = target.tag or (digest_tag(digest) if target.digest else "latest")
        manifest = top = None
        kept = None
        if self.copy_settings.platforms:
            manifest = src.get_manifest(digest)  # the new index's digest depends on its bytes
            if manifest.is_index:
                top, children = filter_index(manifest, self.copy_settings.platforms)
                if not top.platforms and manifest.platforms:
                    raise RegistryError(f"filter {source} to {', '.join(self.copy_settings.platforms)}",
                                        message=f"no such platform (it has {', '.join(manifest.platforms)})")
                kept = tuple(children)
                if top.digest == manifest.digest:
                    top = None
                else:
                    result.add_note(f"platforms filtered to {', '.join(top.platforms)}: the target holds a new "
                                    f"index {top.digest} instead of {digest}")
        result.target_digest = top.digest if top else digest
        return _Plan(digest, tag, result.target_digest, manifest, top, kept)

    def _platforms(self, src: Repository, manifest: Manifest) -> list[str]:
        """An index lists its platforms; a single image's platform is in its config blob (small)."""
        if manifest.is_index:
            return manifest.platforms
        if not manifest.blobs or "json" not in (manifest.blobs[0].media_type or ""):
            return []  # an artifact, or no config
        config = manifest.blobs[0]
        with src.open_blob(config.digest, config.size) as stream:
            data = json.loads(b"".join(stream.chunks()))
        if not isinstance(data, dict) or not data.get("os") or not data.get("architecture"):
            return []
        return ["/".join(str(x) for x in (data["os"], data["architecture"], data.get("variant")) if x)]

    def _present(self, dst: Repository, plan: _Plan) -> bool:
        info = dst.head_manifest(plan.tag)
        return info is not None and info.digest == plan.target_digest

    def _copy(self, mapping: Mapping, result: CopyResult) -> None:
        src = self._repo(mapping.source)
        dst = self._repo(mapping.target, push=True)
        plan = self._plan(mapping, src, result)
        if self._present(dst, plan):
            result.status = "present"
            return
        manifest = plan.manifest or src.get_manifest(plan.source_digest)
        top = plan.top or manifest
        result.platforms = list(top.platforms)
        tally = _Tally(result)
        self._copy_contents(tally, src, dst, manifest, plan.kept)
        if plan.top is not None:
            result.add_note("children and blobs of the source index outside the platforms were not copied")
        if self.copy_settings.signatures:
            companions = self._discover_companions(src, manifest, plan.kept, result)
            if companions:
                # The image by digest first: referrers may need their subject to exist.
                self._put(dst, top.digest, top)
                result.referrers += self._copy_companions(tally, src, dst, companions, plan.tag, result)
        self._put(dst, plan.tag, top)  # the tag last: its presence means the whole image is there
        result.status = "copied"

    def _put(self, dst: Repository, reference: str, manifest: Manifest) -> None:
        dst.put_manifest(reference, manifest.raw, manifest.media_type)
        with self._lock:
            self._manifests_done.add((dst.client.host, dst.name, manifest.digest))

    def _copy_contents(self, tally: _Tally, src: Repository, dst: Repository, manifest: Manifest,
                       children: Sequence[Descriptor] | None = None, depth: int = 0) -> None:
        """Everything `manifest` references (not the manifest itself): children or blobs."""
        if manifest.is_index:
            if depth >= MAX_INDEX_DEPTH:
                raise RegistryError(f"copy index {manifest.digest}",
                                    message=f"indexes nested more than {MAX_INDEX_DEPTH} levels deep; refused")
            for child in manifest.children if children is None else children:
                self._ensure_manifest(tally, src, dst, child, depth + 1)
            return
        blobs = [b for b in manifest.blobs if not b.urls]  # foreign layers stay where their URLs say
        if len(manifest.blobs) != len(blobs):
            tally.result.add_note("foreign layers (with urls) were not copied")
        self._emit("size", {"source": tally.result.source, "bytes": sum(b.size for b in blobs)})
        futures = [self._blob_pool.submit(self._ensure_blob, tally, src, dst, blob) for blob in blobs]
        errors = [f.exception() for f in futures]  # wait for all, so none runs on after a failure
        for error in errors:
            if error is not None:
                raise error

    def _ensure_manifest(self, tally: _Tally, src: Repository, dst: Repository, desc: Descriptor,
                         depth: int = 1) -> None:
        """A child manifest (by digest) with its contents, unless the target repository has it."""
        key = (dst.client.host, dst.name, desc.digest)
        with self._lock:
            if key in self._manifests_done:
                return
        if dst.head_manifest(desc.digest) is None:
            child = src.get_manifest(desc.digest)
            self._copy_contents(tally, src, dst, child, depth=depth)
            dst.put_manifest(desc.digest, child.raw, child.media_type)
        with self._lock:
            self._manifests_done.add(key)

    # -- blobs ------------------------------------------------------------------------------------

    def _ensure_blob(self, tally: _Tally, src: Repository, dst: Repository, desc: Descriptor) -> None:
        """Make the target repository hold the blob: skip, mount or transfer; once per digest."""
        key = (dst.client.host, desc.digest)
        while True:
            with self._lock:
                holders = set(self._where.get(key, ()))
                pending = self._in_flight.get(key)
                if dst.name in holders:
                    tally.add("skipped", desc.size)
                    self._emit("blob", {"source": tally.result.source, "digest": desc.digest, "size": desc.size,
                                        "outcome": "skipped", "target": f"{dst.client.host}/{dst.name}"})
                    return
                if pending is None:
                    mine: Future[str] = Future()
                    self._in_flight[key] = mine
                    break
            with contextlib.suppress(Exception):
                pending.result()  # then look again: mount from where it went, or claim it if it failed
        try:
            outcome = self._place_blob(src, dst, desc, sorted(holders), tally.result.source)
        except BaseException as exc:
            with self._lock:
                del self._in_flight[key]
            mine.set_exception(exc)
            raise
        with self._lock:  # one step, so a waiter sees either the transfer pending or its result
            self._where.setdefault(key, set()).add(dst.name)
            del self._in_flight[key]
        mine.set_result(outcome)
        tally.add(outcome, desc.size)
        self._emit("blob", {"source": tally.result.source, "digest": desc.digest, "size": desc.size,
                            "outcome": outcome, "target": f"{dst.client.host}/{dst.name}"})

    def _place_blob(self, src: Repository, dst: Repository, desc: Descriptor, holders: list[str],
                    source: str) -> str:
        if src.client is dst.client and src.name != dst.name:
            holders.append(src.name)  # same registry: mount straight from the source repository
        location = None
        if holders:
            location = self._retry(lambda: dst.start_upload(mount=desc.digest, from_repo=holders[0]), dst.client.host)
            if location is None:
                return "mounted"
        elif dst.head_blob(desc.digest) is not None:
            return "skipped"
        self._transfer(src, dst, desc, location, source)
        return "copied"

    def _transfer(self, src: Repository, dst: Repository, desc: Descriptor, location: str | None,
                  source: str) -> None:
        """Stream one blob GET → PUT; retried as a whole (a fresh upload each attempt)."""
        started = [location]

        def attempt() -> None:
            upload = started.pop() if started else None
            with _slots(src.client, dst.client), src.open_blob(desc.digest, desc.size) as blob:
                upload = upload or dst.start_upload()
                assert upload is not None
                try:
                    chunks = self._metered(source, desc.digest, desc.size, blob.chunks())  # "transfer", "bytes"
                    dst.upload_blob(desc.digest, blob.size, chunks, location=upload)
                except BaseException:
                    dst.cancel_upload(upload)
                    raise

        self._retry(attempt, src.client.host)

    def _retry(self, fn: Callable[[], Any], host: str) -> Any:
        return retry.call(fn, retries=self.copy_settings.retries,
                          on_wait=lambda exc, delay: self.waiting(host, exc, delay))

    # -- signatures and referrers ---------------------------------------------------------------

    def _tags_of(self, src: Repository) -> set[str]:
        """The source repository's tags, listed once per run."""
        key = (src.client.host, src.name)
        with self._lock:
            future = self._source_tags.get(key)
            owner = future is None
            if owner:
                future = self._source_tags[key] = Future()
        assert future is not None
        if owner:
            try:
                future.set_result(set(src.tags()))
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def _discover_companions(self, src: Repository, manifest: Manifest, kept: Sequence[Descriptor] | None,
                             result: CopyResult) -> list[str | tuple[str, list[Descriptor]]]:
        """Signature tags and referrers of the image and of its children copied: a tag name
        to copy as is, or (subject digest, referrers from the referrers API)."""
        children = manifest.children if kept is None else kept
        digests = [manifest.digest, *(c.digest for c in children)]
        try:
            tags = self._tags_of(src)
        except RegistryError as exc:
            result.add_note(f"signatures not looked for: {exc}")
            return []
        found: list[str | tuple[str, list[Descriptor]]] = []
        for digest in digests:
            base = digest_tag(digest)
            found += [base + s for s in SIGNATURE_SUFFIXES if base + s in tags]
            referrers = src.referrers(digest)
            if referrers:
                found.append((digest, referrers))
            elif referrers is None and base in tags:
                found.append(base)  # the tag schema: an index listing the referrers
        return found

    def _copy_companions(self, tally: _Tally, src: Repository, dst: Repository,
                         companions: list[str | tuple[str, list[Descriptor]]], image_tag: str,
                         result: CopyResult) -> int:
        copied = 0
        for item in companions:
            if isinstance(item, tuple):
                subject, referrers = item
                for referrer in referrers:
                    self._ensure_manifest(tally, src, dst, referrer)
                copied += len(referrers)
                if dst.referrers(subject) is None:  # the target has no referrers API: the tag schema
                    if digest_tag(subject) == image_tag:
                        result.add_note(f"referrers copied, but no index tagged {image_tag}: that tag pins the image")
                    else:
                        dst.put_manifest(digest_tag(subject), referrers_index(referrers), OCI_INDEX)
                continue
            manifest = src.get_manifest(item)
            self._copy_contents(tally, src, dst, manifest)
            if item == image_tag:
                # A digest-only image is pinned by the tag the referrers tag schema also uses;
                # the pin wins (ACR serves the referrers API and does not need the index).
                result.add_note(f"referrers copied, but their index is not tagged {item}: that tag pins the image")
            else:
                self._put(dst, item, manifest)
            copied += len(manifest.children) if manifest.is_index else 1
        return copied


@contextlib.contextmanager
def _slots(*clients: RegistryClient) -> Iterator[None]:
    """Request slots on several hosts, taken in one global order so two transfers in opposite
    directions cannot each hold one host and wait for the other."""
    with contextlib.ExitStack() as stack:
        for client in sorted(set(clients), key=lambda c: c.host):
            stack.enter_context(client.slot())
        yield
