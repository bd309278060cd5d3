"""The ACR import engine (`copy.engine: acr-import`): each image is copied server-side by Azure,
an ARM `importImage` operation on the target registry, polled to its end. No image byte passes
through the machine running acr-mirror.

For one mapping:
1. the source digest: as written, else a HEAD at the source (the import is then pinned to it, so
   what is verified is what was imported even if the tag moves meanwhile);
2. a HEAD of the target tag: the same digest there is "present" (no import); another digest
   with `azure.import_mode: NoForce` fails here, saying how to overwrite;
3. `importImage`: the source by URI (`docker.io`, any registry) with the source's credentials
   from the keychain (a username and password: Docker Hub's too), or another ACR of the
   subscription by resource id (no credentials: ARM's caller must be allowed to read it);
   `targetTags` as the registry engine names them (a digest-only reference gets the tag
   `sha256-<hex>`); every platform, the source's digest;
4. verification through the registry API (RegistryEngine.verify): the target tag must hold the
   source's digest before anything may be rewritten to it.

At most `azure.import_concurrency` imports are in flight at once (copy.concurrency images are
handled at a time). `copy.platforms` and `copy.signatures` cannot apply: an import takes every
platform and no referrers. A dry run (`status`) contacts nothing, neither ARM nor a registry: it
describes the request it would send.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from manifests_rewriter.model import Mapping

from ..azure.arm import AcrRegistry, Arm, ArmError, ImportRequest, SourceCredentials
from ..registry.client import RegistryClient
from ..registry.credentials import Keychain, is_azure_container_registry
from ..registry.errors import RegistryError
from ..registry.media import digest_tag
from ..settings import MirrorSettings
from .base import CopyResult, Engine, Progress
from .registry import RegistryEngine

ACR_TOKEN_USERNAME = "00000000-0000-0000-0000-000000000000"  # ACR: a refresh token as password goes with this


class ImportFailed(RegistryError):
    """An import that ARM reported done but the registry does not show."""


class AcrImportEngine(Engine):
    name = "acr-import"
    preserves_digests = True
    preserves_platforms = True
    doing: ClassVar[str] = " (ACR import)"

    def __init__(self, settings: MirrorSettings, *, keychain: Keychain | None = None,
                 progress: Progress | None = None, arm: Arm | None = None):
        super().__init__(settings, keychain=keychain, progress=progress)
        self.azure = settings.azure
        self._arm = arm
        self._arm_lock = threading.Lock()
        self._imports = threading.BoundedSemaphore(self.azure.import_concurrency)
        self._targets: dict[str, AcrRegistry | ArmError] = {}  # login server -> registry, or why not (once)
        # Reads (source digest, target tag) and verification are the registry engine's.
        self._reader = RegistryEngine(settings, keychain=self.keychain)

    @property
    def arm(self) -> Arm:
        with self._arm_lock:
            if self._arm is None:
                self._arm = Arm(self.azure, retries=self.settings.copy.retries, timeout=self.settings.copy.timeout)
            return self._arm

    def client(self, host: str) -> RegistryClient:
        self._reader.pacer = self.pacer
        return self._reader.client(host)

    # -- what the pipeline calls ------------------------------------------------------------------

    def status(self, mapping: Mapping) -> CopyResult:
        """Dry run: the import request this mapping would become. Contacts nothing."""
        result = CopyResult(str(mapping.source), str(mapping.target), status="planned", digest=mapping.source.digest)
        registry_id = self.azure.registry_id or f"(the registry of {mapping.target.registry}, found in ARM)"
        try:
            request = self._request(mapping, mapping.source.digest, registry_id, result, lookup=False)
        except Exception as exc:
            result.status = "failed"
            result.error = self.describe(exc, f"plan the import of {mapping.source}")
            return result
        result.add_note(request.describe())
        self._platform_note(result)
        return result

    def verify(self, mapping: Mapping, digest: str | None = None) -> bool:
        self._reader.pacer = self.pacer
        return self._reader.verify(mapping, digest)

    def close(self) -> None:
        self._reader.close()
        with self._arm_lock:
            arm, self._arm = self._arm, None
        if arm is not None:
            arm.close()
        super().close()

    # -- one image --------------------------------------------------------------------------------

    def _copy(self, mapping: Mapping, result: CopyResult) -> None:
        source, target = mapping.source, mapping.target
        self._platform_note(result)
        src = self.client(source.registry).repo(source.repository)
        digest = source.digest
        if digest is None:
            info = src.head_manifest(source.reference)
            if info is None:
                raise RegistryError(f"HEAD manifest {source}", 404, ("MANIFEST_UNKNOWN",), "not found at the source")
            digest = info.digest or src.get_manifest(source.reference).digest
        result.digest = result.target_digest = digest
        tag = self._tag(mapping)
        there = self.client(target.registry).repo(target.repository).head_manifest(tag)
        if there is not None and there.digest == digest:
            result.status = "present"
            return
        if there is not None and self.azure.import_mode == "NoForce":
            raise RegistryError(f"import {source} to {target.registry}/{target.repository}:{tag}",
                                message=f"the target tag holds {there.digest}, not the source's {digest}; set "
                                        f"azure.import_mode: Force to overwrite it")
        registry = self._target(target.registry)
        request = self._request(mapping, digest, registry.id, result, lookup=True)
        with self._imports:
            self._emit("import", {"source": result.source, "target": result.target, "request": request.describe()})
            self.arm.import_image(registry, request, timeout=self.azure.import_timeout)
        if not self.verify(mapping, digest):
            raise ImportFailed(f"verify the import of {source} in {target.registry}/{target.repository}:{tag}",
                               message=f"ARM reported success but the target does not hold {digest}")
        result.status = "copied"

    def _target(self, host: str) -> AcrRegistry:
        """The target registry in ARM, looked up once per run (a failure too: every image says it)."""
        with self._arm_lock:
            found = self._targets.get(host)
        if found is None:
            try:
                found = self.arm.registry(host)
            except ArmError as exc:
                found = exc
            with self._arm_lock:
                found = self._targets.setdefault(host, found)
        if isinstance(found, ArmError):
            raise found
        return found

    @staticmethod
    def _tag(mapping: Mapping) -> str:
        """The tag written in the target, as the registry engine names it: as mapped; `sha256-<hex>`
        for a digest-only reference (ACR's retention purges untagged manifests)."""
        target = mapping.target
        return target.tag or (digest_tag(target.digest) if target.digest else "latest")

    def _request(self, mapping: Mapping, digest: str | None, registry_id: str, result: CopyResult, *,
                 lookup: bool) -> ImportRequest:
        source, target = mapping.source, mapping.target
        image = f"{source.repository}@{digest}" if digest else f"{source.repository}:{source.effective_tag}"
        tag = self._tag(mapping)
        acr = self._source_acr(source.registry) if lookup else None
        if acr is not None:  # another ACR: by resource id, ARM's caller needs read access to it
            return ImportRequest(registry_id, image, (f"{target.repository}:{tag}",), self.azure.import_mode,
                                 resource_id=acr.id)
        return ImportRequest(registry_id, image, (f"{target.repository}:{tag}",), self.azure.import_mode,
                             registry_uri=source.registry, credentials=self._credentials(source.registry, result))

    def _source_acr(self, host: str) -> AcrRegistry | None:
        """The source as a registry of the configured subscription, when it is one (one listing per run)."""
        if not (is_azure_container_registry(host) or self.azure.subscription) or not self.azure.locates_registry:
            return None
        try:
            return self.arm.find(host)
        except ArmError:
            return None  # not listable: import by its URI with the keychain's credentials instead

    def _credentials(self, host: str, result: CopyResult) -> SourceCredentials | None:
        """The keychain's credentials for the source, as an import takes them (user and password)."""
        found = self.keychain.resolve(host)
        if found.basic is not None and not found.identity_token:
            return SourceCredentials(found.basic.username, found.basic.password, found.source)
        if found.identity_token and is_azure_container_registry(host):
            return SourceCredentials(ACR_TOKEN_USERNAME, found.identity_token, found.source)
        if not found.anonymous:
            result.add_note(f"the {found.kind} credentials for {host} ({found.source}) cannot be passed to an import, "
                            f"which takes a username and password: importing anonymously")
        return None

    def _platform_note(self, result: CopyResult) -> None:
        if self.settings.copy.platforms:
            result.add_note("copy.platforms does not apply to acr-import: ACR imports every platform")
