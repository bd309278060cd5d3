"""The Docker-engine copy path (`copy.engine: docker`): pull, tag and push through a Docker Engine API.

Teams that mirror with `docker pull` / `docker tag` / `docker push` get the same workflow here,
driven through the Docker Engine API of dockerd or podman's compatible service (the `docker`
package is used in this module only), with the same credentials as the registry engine passed
per call (`auth_config`; no config.json is written). What this path costs, and says so per image
before copying (the result's `note` and an "image-warning" progress event):

- a multi-platform index keeps one platform: the daemon's own (or the first of `copy.platforms`
  the index has);
- the image is re-serialized: both daemons recompress layers on push, dockerd also converts OCI
  to Docker v2 schema 2, so the digest at the target differs from the source's. A digest-pinned
  reference therefore cannot be rewritten to the same digest (rewriting it by tag is the user's
  choice: `docker.allow_digest_change`);
- `registries.<host>.endpoint` is honoured by pulling from the endpoint's host name: a daemon
  names images by the host it pulls from, so it cannot keep the original host name;
- referrers and signatures are not copied (a daemon pulls images only).

What survives the trip, and what verification compares: the platform, the config blob (its digest
is the image ID; both daemons push it unchanged) and with it the layer diff IDs. `verify()` is
true only when the target holds an image whose config digest equals the source's, for the
platform this engine chooses.

Both daemons report a failed pull or push inside an HTTP 200 stream (`{"error": ...}`), where
docker-py's high-level `images.pull()` raises a misleading ImageNotFound and `push()` raises
nothing; so the low-level streams are read item by item and any error item fails the copy with
the daemon's own message. Local names the copy created (the pulled reference, the target tag) are
removed afterwards; an image that was already present locally keeps its names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from manifests_rewriter.errors import AcrMirrorError
from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import DOCKER_HUB, ImageRef, is_digest

from .. import retry
from ..registry.client import Repository
from ..registry.credentials import Credentials, Keychain
from ..registry.errors import RegistryError
from ..registry.media import DOCKER_MANIFEST, Descriptor, Manifest, digest_tag, platform_matches
from ..settings import DockerSettings, MirrorSettings
from .base import BYTES_EVERY, CopyResult, Engine, Progress

log = logging.getLogger(__name__)

ACR_TOKEN_USERNAME = "00000000-0000-0000-0000-000000000000"  # `az acr login`: refresh token as identity token
MAX_PARALLEL = 4  # images in flight at once: a daemon serializes much of the work anyway
STREAM_TIMEOUT = 900.0  # seconds a daemon call may stay silent (podman reports a push only when it ends)
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_PUSHED_DIGEST = re.compile(r"digest: (\S+)")  # "1.0: digest: sha256:... size: 734" (both daemons)
_PULLED_DIGEST = re.compile(r"^Digest: (\S+)")  # dockerd's pull stream
_PLAIN_HTTP = ("server gave HTTP response to HTTPS client", "http: server gave HTTP response")


class DockerEngineError(AcrMirrorError):
    """One step of the Docker-engine path failed; the message reads "doing what: cause"."""

    names_operation = True


class PlatformError(DockerEngineError):
    """The index has no platform this path may copy."""


# --------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class ImageFacts:
    """What the Docker path keeps and can therefore be compared: platform, config digest
    (the image ID) and layer diff IDs; plus where they were read."""

    platform: str  # os/arch[/variant]
    config_digest: str
    diff_ids: tuple[str, ...]
    manifest_digest: str | None = None  # the image manifest (the index child, for an index)
    media_type: str | None = None
    layer_sizes: tuple[int, ...] = ()  # compressed sizes, in manifest order
    config_size: int = 0
    manifest_size: int = 0

    def differences(self, other: ImageFacts) -> list[str]:
        found = []
        if self.platform != other.platform:
            found.append(f"platform {other.platform}, expected {self.platform}")
        if self.config_digest != other.config_digest:
            found.append(f"config (image ID) {other.config_digest}, expected {self.config_digest}")
        if self.diff_ids != other.diff_ids:
            found.append(f"layer diff IDs {_short_list(other.diff_ids)}, expected {_short_list(self.diff_ids)}")
        return found


@dataclass(frozen=True)
class SourceImage:
    """The source as its registry serves it, and the one image this path will copy from it."""

    digest: str  # the manifest or index digest (what a pinned reference names)
    media_type: str
    is_index: bool
    platforms: tuple[str, ...]  # every platform the source offers
    image: ImageFacts  # the chosen platform's image


@dataclass
class _Plan:
    mapping: Mapping
    pull_name: str  # the repository as the daemon names it (endpoint host applied)
    pull_reference: str  # a digest (sha256:...) or a tag
    pull_platform: str | None  # passed to the daemon only for an index
    push_name: str
    push_tag: str
    source: SourceImage | None  # None when the source could not be read over HTTP
    warnings: list[str] = field(default_factory=list)

    @property
    def pull_ref(self) -> str:
        separator = "@" if is_digest(self.pull_reference) else ":"
        return f"{self.pull_name}{separator}{self.pull_reference}"

    @property
    def push_ref(self) -> str:
        return f"{self.push_name}:{self.push_tag}"


@dataclass
class _Stream:
    """What a pull or push stream told, besides progress."""

    digest: str | None = None
    layers: dict[str, str] = field(default_factory=dict)  # layer id (12 hex) -> last status


class _LayerBytes:
    """A pull or push stream's per-layer byte counts (progressDetail.current of "Downloading" or
    "Pushing") as the progress protocol's "transfer" and "bytes" events, BYTES_EVERY at a time."""

    MOVING = {"pull": "Downloading", "push": "Pushing"}
    MOVED = {"pull": "Download complete", "push": "Pushed"}

    def __init__(self, engine: Engine, action: str, source: str):
        self.emit, self.action, self.source = engine._emit, action, source
        self.reported: dict[str, int] = {}  # layer -> bytes reported so far
        self.current: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def update(self, layer: str, status: str, detail: Any) -> None:
        key = f"{self.action} {layer}"  # the daemon names layers, not digests
        if status == self.MOVING[self.action] and isinstance(detail, dict) and isinstance(detail.get("current"), int):
            current = detail["current"]
            if layer not in self.reported or current < self.reported[layer]:  # new, or restarted by the daemon
                total = detail.get("total")
                self.total[layer] = total if isinstance(total, int) and total > 0 else 0
                self.emit("transfer", {"source": self.source, "digest": key, "size": self.total[layer] or None})
                self.reported[layer] = 0
            self.current[layer] = current
            if current - self.reported[layer] >= BYTES_EVERY:
                self._report(layer, key)
        elif status == self.MOVED[self.action] and layer in self.current:
            # the daemon reports progress in steps: a finished layer moved all of its bytes
            self.current[layer] = max(self.current[layer], self.total[layer])
            self._report(layer, key)

    def _report(self, layer: str, key: str) -> None:
        n = self.current[layer] - self.reported[layer]
        if n > 0:
            self.emit("bytes", {"source": self.source, "digest": key, "n": n})
            self.reported[layer] = self.current[layer]


class _PullGate:
    """Pulls share the gate; removing a local image waits until no pull is in flight, and holds new
    pulls back meanwhile. A pull in progress reuses layers it found locally before its image exists,
    so deleting another image that shares them can pull them from under it (podman: "layer not
    known"); committed images keep their layers, so pushes need no gate."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pulls = 0
        self._removals = 0  # waiting or running

    @contextlib.contextmanager
    def pull(self) -> Any:
        with self._cond:
            while self._removals:
                self._cond.wait()
            self._pulls += 1
        try:
            yield
        finally:
            with self._cond:
                self._pulls -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def removal(self) -> Any:
        with self._cond:
            self._removals += 1
            while self._pulls:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._removals -= 1
                self._cond.notify_all()


@dataclass(frozen=True)
class DaemonInfo:
    kind: str  # dockerd | podman | docker (another Docker Engine API)
    version: str
    platform: str  # os/arch of the daemon: what it pulls from an index unless told otherwise
    api_version: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.version}".strip()

    @classmethod
    def from_version(cls, data: dict[str, Any]) -> DaemonInfo:
        names = [str(c.get("Name", "")) for c in data.get("Components") or [] if isinstance(c, dict)]
        names.append(str((data.get("Platform") or {}).get("Name", "")))
        if any("podman" in n.lower() for n in names):
            kind = "podman"
        elif any(n == "Engine" for n in names) or "Docker" in " ".join(names):
            kind = "dockerd"
        else:
            kind = "docker"
        platform = f"{data.get('Os') or 'linux'}/{data.get('Arch') or 'amd64'}"
        return cls(kind, str(data.get("Version", "")), platform, str(data.get("ApiVersion", "")))


# --------------------------------------------------------------------------- the engine


class DockerEngine(Engine):
    """Copies mappings through a Docker Engine API; the same interface as `mirror.copy.CopyEngine`.

    `config.docker` chooses the daemon (`host`, else `DOCKER_HOST`; `tls_verify`, `cert_path`, else
    `DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`). `credentials(host)` returns the credentials for a
    registry host (default: `mirror.registry.credentials.credentials_for` with that host's settings),
    passed to the daemon per call. `progress(event, info)` receives "start", "image-warning",
    "pull", "push", "blob-done" and "done" (the CopyResult's fields) per image, as CopyEngine does.
    `client` may be a ready `docker.APIClient` (else one is made on first use). Thread-safe.
    """

    name = "docker"
    preserves_digests = False  # daemons re-serialize manifests and recompress layers on push
    preserves_platforms = False  # one platform of an index
    doing = " with the Docker engine"
    max_parallel = MAX_PARALLEL

    def __init__(self, settings: MirrorSettings, *, keychain: Keychain | None = None,
                 progress: Progress | None = None, client: Any = None):
        super().__init__(settings, keychain=keychain, progress=progress)
        self.docker: DockerSettings = settings.docker
        self._api = client
        self._daemon: DaemonInfo | None = None
        self._api_lock = threading.Lock()
        self._sources: dict[tuple[str, str, str], SourceImage] = {}  # (host, repository, digest) -> source
        self._pull_locks: dict[str, threading.Lock] = {}
        self._gate = _PullGate()

    # -- public API ---------------------------------------------------------------------------

    @property
    def daemon(self) -> DaemonInfo:
        """The connected daemon (connects on first use)."""
        self.api()
        assert self._daemon is not None
        return self._daemon

    def api(self) -> Any:
        """The low-level `docker.APIClient`, connected on first use."""
        with self._api_lock:
            if self._daemon is None:
                self._connect()
            return self._api

    def status(self, mapping: Mapping) -> CopyResult:
        """Dry run: the source digest and whether the target already holds the same image
        ("present") or would get it ("planned"), with the warnings a copy would give. Reads only."""
        result = CopyResult(str(mapping.source), str(mapping.target))
        try:
            plan = self._plan(mapping, require_source=True)
            assert plan.source is not None
            result.digest = plan.source.digest
            result.platforms = [plan.source.image.platform]
            held = self._target_image(mapping.target, plan.push_tag, plan.source.image.platform)
            if held is not None and held.config_digest == plan.source.image.config_digest:
                result.status = "present"
                result.target_digest = held.manifest_digest
                result.add_note(f"the target holds the same image (config {held.config_digest})")
            else:
                result.status = "planned"
                for warning in plan.warnings:
                    result.add_note(warning)
        except Exception as exc:
            result.status = "failed"
            result.error = self.describe(exc, f"check {mapping.source} against {mapping.target} for the Docker engine")
        result.rate_limit = self._rate_limit(mapping)
        return result

    def verify(self, mapping: Mapping, digest: str | None = None) -> bool:
        """Whether the target tag holds an image whose config digest (image ID) equals the source's
        for the platform this engine copies. `digest`: the source manifest digest to compare with
        (default: the source reference's digest, else what its tag names now).

        A target reference pinned to a digest is verified only if the target holds that very digest,
        unless `docker.allow_digest_change` (then the rewrite goes by tag). Absence is False;
        other registry failures raise RegistryError, as `CopyEngine.verify` does."""
        try:
            source = self._source(mapping.source, digest)
        except RegistryError as exc:
            if exc.status == 404:
                return False  # no source image, so the target cannot hold it
            raise
        held = self._target_image(mapping.target, self._push_tag(mapping), source.image.platform)
        if held is None or held.config_digest != source.image.config_digest:
            return False
        pinned = mapping.target.digest
        if pinned and not self.docker.allow_digest_change:
            return held.manifest_digest == pinned or self._repo(mapping.target).head_manifest(pinned) is not None
        return True

    def written_target(self, target: ImageRef) -> ImageRef:
        """Daemons re-serialize manifests, so a pinned source digest does not exist in the target:
        such references are written by tag (a digest-only one by its `sha256-<hex>` tag).
        `verify` lets them through only with docker.allow_digest_change."""
        if not target.digest:
            return target
        tag = target.tag or digest_tag(target.digest)
        return ImageRef(target.registry, target.repository, tag, None, original=f"{target.name}:{tag}")

    def close(self) -> None:
        super().close()
        with self._api_lock:
            api, self._api, self._daemon = self._api, None, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()

    # -- connection -------------------------------------------------------------------------------

    def _connect(self) -> None:
        import docker  # this module is the only user of the docker package

        kwargs = client_kwargs(self.docker)
        where = kwargs.get("base_url") or "the default socket (unix:///var/run/docker.sock)"
        try:
            if self._api is None:
                self._api = _api_client(kwargs)
            version = self._api.version()
        except docker.errors.DockerException as exc:
            self._api = None
            raise DockerEngineError(f"connect to the Docker engine at {where}: {exc} "
                                    "(set docker.host or DOCKER_HOST)") from None
        self._daemon = DaemonInfo.from_version(version)
        log.debug("Docker engine at %s: %s, API %s", where, self._daemon.label, self._daemon.api_version)

    # -- one image --------------------------------------------------------------------------------

    def _copy(self, mapping: Mapping, result: CopyResult) -> None:
        daemon = self.daemon  # connect first: a missing daemon is the clearest error
        plan = self._plan(mapping, require_source=False)
        expected = plan.source.image if plan.source else None
        if plan.source is not None:
            result.digest = plan.source.digest
            result.platforms = [plan.source.image.platform]
            try:
                held = self._target_image(mapping.target, plan.push_tag, plan.source.image.platform)
            except (RegistryError, DockerEngineError) as exc:  # the daemon's push decides; say why we could not look
                held = None
                log.info("%s: cannot tell whether the target has it already: %s", mapping.target, exc)
            if held is not None and held.config_digest == plan.source.image.config_digest:
                result.status = "present"
                result.target_digest = held.manifest_digest
                result.add_note(f"the target holds the same image (config {held.config_digest}); nothing pulled")
                return
        for warning in plan.warnings:  # before anything is pulled or pushed
            result.add_note(warning)
            self._emit("image-warning", {"source": result.source, "target": result.target, "warning": warning})

        with self._hold(plan.pull_ref):
            pulled_stream = self._pull(plan)
            local = self._local_facts(plan.pull_ref, f"pull {plan.pull_ref}")
            result.platforms = [local.platform]
            result.digest = result.digest or pulled_stream.digest
            if expected is not None and local.config_digest != expected.config_digest:
                raise DockerEngineError(
                    f"pull {plan.pull_ref} with {daemon.label}: the engine holds image {local.config_digest}, "
                    f"the registry serves config {expected.config_digest} for {expected.platform}")
            with self._target_tag(local.config_digest, plan):
                pushed = self._push(plan)
        result.target_digest = pushed.digest
        result.status = "copied"
        try:
            held = self._target_image(mapping.target, plan.push_tag, local.platform)
        except (RegistryError, DockerEngineError) as exc:
            # pushed, but what arrived cannot be read back: not verified (verify() will say False)
            result.add_note(f"not verified at the target: {exc}")
            return
        if held is None:
            raise DockerEngineError(f"verify {plan.push_ref} after the push: the target has no such tag")
        problems = local.differences(held)
        if pushed.digest and held.manifest_digest != pushed.digest:
            problems.append(f"manifest {held.manifest_digest}, the engine pushed {pushed.digest}")
        if problems:
            raise DockerEngineError(f"verify {mapping.target} after the push: the target holds "
                                    + "; ".join(problems))
        result.target_digest = held.manifest_digest
        self._count(result, pushed, held)
        result.add_note(f"verified at the target: platform {held.platform}, config (image ID) {held.config_digest}, "
                        f"{len(held.diff_ids)} layer diff IDs")
        if result.digest and held.manifest_digest != result.digest:
            result.add_note(f"the target holds {held.manifest_digest}, not the source's {result.digest}")

    def _plan(self, mapping: Mapping, *, require_source: bool) -> _Plan:
        source, target = mapping.source, mapping.target
        warnings: list[str] = []
        pull_host = self._daemon_host(source.registry)
        push_host = self._daemon_host(target.registry)
        if pull_host != source.registry:
            warnings.append(f"pulled from {pull_host} (registries.{source.registry}.endpoint): a Docker engine names "
                            f"images by the host it pulls from, so this path cannot keep the host name "
                            f"{source.registry}")
        if push_host != target.registry:
            warnings.append(f"pushed to {push_host} (registries.{target.registry}.endpoint) for {target.registry}")
        found: SourceImage | None = None
        try:
            found = self._source(source, None)
        except (RegistryError, DockerEngineError) as exc:
            if require_source or isinstance(exc, PlatformError):
                raise
            warnings.append(f"could not read the source over HTTP ({exc}): its platforms and digest were not "
                            "checked before pulling")
        plan = _Plan(
            mapping=mapping,
            pull_name=f"{pull_host}/{source.repository}",
            pull_reference=(found.digest if found else source.digest or source.effective_tag),
            pull_platform=found.image.platform if found and found.is_index else None,
            push_name=f"{push_host}/{target.repository}",
            push_tag=self._push_tag(mapping),
            source=found,
            warnings=warnings,
        )
        warnings.extend(self._fidelity_warnings(mapping, found))
        return plan

    def _fidelity_warnings(self, mapping: Mapping, found: SourceImage | None) -> list[str]:
        warnings = []
        daemon = self.daemon
        wanted = self.settings.copy.platforms or ()
        if found is not None and found.is_index and len(found.platforms) > 1:
            dropped = [p for p in found.platforms if p != found.image.platform]
            warnings.append(f"{mapping.source} is a multi-platform index ({', '.join(found.platforms)}): the Docker "
                            f"engine keeps one platform, {found.image.platform} (dropped: {', '.join(dropped)})")
        elif len(wanted) > 1:
            warnings.append(f"copy.platforms lists {len(wanted)} platforms: the Docker engine copies one")
        digest = found.digest if found else mapping.source.digest
        text = ("manifests are re-serialized and layers recompressed on push: the digest at the target will differ "
                f"from the source digest{' ' + digest if digest else ''}")
        if daemon.kind == "dockerd" and found is not None and found.image.media_type != DOCKER_MANIFEST:
            text += " (dockerd also converts OCI to Docker v2 schema 2)"
        warnings.append(text)
        if mapping.source.digest:
            warnings.append(self._pinned_note(mapping.source.digest))
        return warnings

    def _pinned_note(self, digest: str) -> str:
        text = (f"the source is pinned to {digest}: after the Docker engine the target cannot hold that digest, so a "
                "reference pinned to it cannot be rewritten to the same digest")
        if self.docker.allow_digest_change:
            return text + " (docker.allow_digest_change: it is rewritten by tag)"
        return text + " (set docker.allow_digest_change to rewrite it by tag, or use copy.engine: registry)"

    def _push_tag(self, mapping: Mapping) -> str:
        """A daemon pushes tags only: a digest-only target gets `sha256-<hex>`, as with the registry engine."""
        target, source = mapping.target, mapping.source
        if target.tag:
            return target.tag
        pinned = target.digest or source.digest
        return digest_tag(pinned) if pinned else "latest"

    def _daemon_host(self, host: str) -> str:
        """The host name a daemon pulls from or pushes to: the endpoint's, when one is configured."""
        endpoint = (self.settings.registry(host).endpoint or "").strip()
        if not endpoint:
            return host
        split = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        return split.netloc or host

    # -- the daemon -------------------------------------------------------------------------------

    def _pull(self, plan: _Plan) -> _Stream:
        doing = f"pull {plan.pull_ref} with {self.daemon.label}"
        kwargs: dict[str, Any] = {"stream": True, "decode": True,
                                  "auth_config": self._auth_config(plan.mapping.source.registry)}
        if plan.pull_platform:
            kwargs["platform"] = plan.pull_platform
        with self._gate.pull(), self._daemon_errors(doing):
            stream = self.api().pull(plan.pull_name, tag=plan.pull_reference, **kwargs)
            return self._follow(stream, "pull", doing, plan)

    def _push(self, plan: _Plan) -> _Stream:
        doing = f"push {plan.push_ref} with {self.daemon.label}"
        with self._daemon_errors(doing):
            stream = self.api().push(plan.push_name, tag=plan.push_tag, stream=True, decode=True,
                                     auth_config=self._auth_config(plan.mapping.target.registry))
            pushed = self._follow(stream, "push", doing, plan)
        if not pushed.digest:
            raise DockerEngineError(f"{doing}: the engine's stream ended without the pushed digest")
        return pushed

    def _follow(self, stream: Iterable[Any], action: str, doing: str, plan: _Plan) -> _Stream:
        """Read a pull/push stream to its end; an error item fails it with the daemon's message."""
        seen = _Stream()
        last_total: dict[str, int] = {}
        moved = _LayerBytes(self, action, str(plan.mapping.source))
        for item in stream:
            if not isinstance(item, dict):
                continue
            error = item.get("error") or (item.get("errorDetail") or {}).get("message")
            if error:
                raise DockerEngineError(f"{doing}: {_with_hint(str(error), plan)}")
            status = str(item.get("status") or "")
            layer = str(item.get("id") or "")
            detail = item.get("progressDetail") or {}
            aux = item.get("aux") or {}
            if action == "push":
                match = _PUSHED_DIGEST.search(status)
                found = aux.get("Digest") if isinstance(aux, dict) and aux.get("Digest") else match and match.group(1)
            else:
                found = (match := _PULLED_DIGEST.match(status)) and match.group(1)
            if found and is_digest(found):
                seen.digest = str(found)
            if layer and status and re.fullmatch(r"[0-9a-f]{12}", layer):
                seen.layers[layer] = status
                if isinstance(detail, dict) and detail.get("total"):
                    last_total[layer] = int(detail["total"])
                moved.update(layer, status, detail)
            self._emit(action, {"source": str(plan.mapping.source), "target": str(plan.mapping.target),
                                "ref": plan.pull_ref if action == "pull" else plan.push_ref, "layer": layer or None,
                                "status": status, "current": detail.get("current") if isinstance(detail, dict) else None,
                                "total": detail.get("total") if isinstance(detail, dict) else None})
            if action == "push" and status == "Pushed":
                self._emit("blob-done", {"source": str(plan.mapping.source), "layer": layer,
                                         "bytes": last_total.get(layer, 0)})
        return seen

    @contextlib.contextmanager
    def _daemon_errors(self, doing: str) -> Any:
        """Daemon and transport failures as DockerEngineError("doing: the daemon's message")."""
        try:
            yield
        except (DockerEngineError, RegistryError):
            raise
        except Exception as exc:
            raise DockerEngineError(f"{doing}: {_daemon_message(exc)}") from None

    def _local_facts(self, name: str, doing: str) -> ImageFacts:
        image = self._inspect_local(name)
        if image is None:
            raise DockerEngineError(f"{doing}: the engine reported no error but holds no image {name}")
        os_name, arch, variant = image.get("Os") or "", image.get("Architecture") or "", image.get("Variant") or ""
        platform = "/".join(p for p in (os_name, arch, variant) if p)
        layers = tuple((image.get("RootFS") or {}).get("Layers") or ())
        return ImageFacts(platform, str(image.get("Id")), layers)

    def _inspect_local(self, name: str) -> dict[str, Any] | None:
        import docker

        with self._daemon_errors(f"inspect {name} in {self.daemon.label}"):
            try:
                return self.api().inspect_image(name)
            except docker.errors.NotFound:  # dockerd: ImageNotFound; podman: NotFound ("image not known")
                return None

    def _has_name(self, name: str) -> bool:
        """Whether `name` is a local name now. dockerd keeps digest references in RepoDigests; podman
        keeps pulled-by-digest names in RepoTags, and derives its RepoDigests (any name x any digest)."""
        image = self._inspect_local(name)
        if image is None:
            return False
        keys = ("RepoTags",) if self.daemon.kind == "podman" else ("RepoTags", "RepoDigests")
        names = {n for key in keys for n in image.get(key) or ()}
        return name in names or _docker_io_short(name) in names

    def _remove_local(self, name: str) -> None:
        """Remove one local name (an image with other names keeps them); absent is fine."""
        import docker

        try:
            self.api().remove_image(name)
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # a name left behind is reported in the log, not a failed copy
            log.warning("remove %s from %s: %s", name, self.daemon.label, _daemon_message(exc))

    @contextlib.contextmanager
    def _hold(self, pull_ref: str) -> Any:
        """One mapping at a time per pulled reference (two tags naming one digest): pull, tag and
        push, then remove the pulled name if this mapping created it. (Sharing one pulled name
        between concurrent copies raced in podman: names came back, or pushes got the wrong tag.)"""
        with self._lock:
            lock = self._pull_locks.setdefault(pull_ref, threading.Lock())
        with lock:
            created = not self._has_name(pull_ref)
            try:
                yield
            finally:
                if created:
                    with self._gate.removal():
                        self._remove_local(pull_ref)

    @contextlib.contextmanager
    def _target_tag(self, image_id: str, plan: _Plan) -> Any:
        """Tag the pulled image as the target for the push; the tag is removed afterwards unless
        it was a local name before."""
        existed = self._has_name(plan.push_ref)
        with self._daemon_errors(f"tag {image_id} as {plan.push_ref} in {self.daemon.label}"):
            if not self.api().tag(image_id, plan.push_name, plan.push_tag, force=True):
                raise DockerEngineError(f"tag {image_id} as {plan.push_ref}: the engine refused")
        try:
            yield
        finally:
            if not existed:
                with self._gate.removal():  # removing the last name deletes the image: not under a pull
                    self._remove_local(plan.push_ref)

    def _auth_config(self, host: str) -> dict[str, str]:
        """The registry credentials for `host`, as the Engine API takes them per call (X-Registry-Auth).
        An empty dict is anonymous (docker-py would otherwise read ~/.docker/config.json itself)."""
        creds: Credentials = self.client(host).auth.credentials
        token = self._refresh_token(host, creds)
        if token:  # as `az acr login` stores it: the refresh token is the identity token
            return {"username": ACR_TOKEN_USERNAME, "password": token, "identitytoken": token, "serveraddress": host}
        if creds.basic is not None:
            return {"username": creds.basic.username, "password": creds.basic.password, "serveraddress": host}
        return {}

    def _refresh_token(self, host: str, creds: Credentials) -> str | None:
        """The identity token a daemon can present for `host`: a Docker identity token as it is,
        or for Entra ID the ACR refresh token the registry client exchanged for it."""
        client = self.client(host)
        if client.auth.acr is not None:
            challenge = client.auth.challenge
            if challenge is None:
                client.ping()
                challenge = client.auth.challenge
            realm = challenge.realm if challenge else None
            service = challenge.params.get("service") if challenge else None
            return client.auth.acr.refresh_token(client.base_url, realm, service)
        return creds.identity_token

    # -- the registries (read only, through the registry client) ------------------------------------

    def _repo(self, ref: ImageRef) -> Repository:
        return self.client(ref.registry).repo(ref.repository)

    def _source(self, ref: ImageRef, digest: str | None) -> SourceImage:
        """Read the source (cached per digest): its digest, platforms, and the image this path copies."""
        repo = self._repo(ref)
        reference = digest or ref.digest
        if reference is None:
            info = repo.head_manifest(ref.effective_tag)
            if info is None:
                raise RegistryError(f"HEAD manifest {ref}", 404, ("MANIFEST_UNKNOWN",), "not found at the source")
            reference = info.digest
        key = (ref.registry, ref.repository, reference or "")
        with self._lock:
            cached = self._sources.get(key) if reference else None
        if cached is not None:
            return cached
        top = repo.get_manifest(reference or ref.effective_tag)
        if top.is_index:
            child = self._choose(top, ref)
            image = self._image_facts(repo, repo.get_manifest(child.digest), child.platform)
            platforms = tuple(top.platforms)
        else:
            image = self._image_facts(repo, top, None)
            platforms = (image.platform,)
        found = SourceImage(top.digest, top.media_type, top.is_index, platforms, image)
        with self._lock:
            self._sources[(ref.registry, ref.repository, top.digest)] = found
        return found

    def _choose(self, index: Manifest, ref: ImageRef | str, platform: str | None = None) -> Descriptor:
        """The index child this path copies: `platform` if given, else the first of `copy.platforms`
        the index has, else the daemon's platform."""
        wanted = [platform] if platform else list(self.settings.copy.platforms or ()) or [self.daemon.platform]
        children = [c for c in index.children if c.platform and not c.platform.startswith("unknown/")]
        for want in wanted:
            for child in children:
                if platform_matches(child.platform, want):
                    return child
        have = ", ".join(c.platform or "?" for c in children) or "none"
        raise PlatformError(f"choose a platform of {ref}: it has {have}, not {' or '.join(wanted)} "
                            "(set copy.platforms to one it has)")

    def _image_facts(self, repo: Repository, manifest: Manifest, platform: str | None) -> ImageFacts:
        where = f"{repo.client.host}/{repo.name}@{manifest.digest}"
        if manifest.is_index or not manifest.blobs or manifest.blobs[0].size < 0:
            raise DockerEngineError(f"read the image config of {where}: {manifest.media_type} is not an image "
                                    "manifest with a config (schema 1 and artifacts cannot be compared)")
        config = manifest.blobs[0]
        data = self._read_blob(repo, config)
        try:
            body = json.loads(data)
            rootfs = body.get("rootfs") or {}
            diff_ids = tuple(str(d) for d in rootfs.get("diff_ids") or ())
            found = "/".join(str(p) for p in (body.get("os"), body.get("architecture"), body.get("variant")) if p)
        except (ValueError, AttributeError) as exc:
            raise DockerEngineError(f"read the image config {config.digest} of {where}: not a JSON object ({exc})") from None
        return ImageFacts(
            platform=found or platform or "unknown",
            config_digest=config.digest,
            diff_ids=diff_ids,
            manifest_digest=manifest.digest,
            media_type=manifest.media_type,
            layer_sizes=tuple(b.size for b in manifest.blobs[1:]),
            config_size=config.size,
            manifest_size=len(manifest.raw),
        )

    def _read_blob(self, repo: Repository, desc: Descriptor) -> bytes:
        if desc.size > MAX_CONFIG_BYTES:
            raise DockerEngineError(f"read config {desc.digest}: {desc.size} bytes is more than a config may be")

        def attempt() -> bytes:
            with repo.open_blob(desc.digest, desc.size) as stream:
                return b"".join(stream.chunks())

        return retry.call(attempt, retries=self.settings.copy.retries)

    def _target_image(self, target: ImageRef, tag: str, platform: str) -> ImageFacts | None:
        """The image the target holds under `tag` (for an index: its `platform` child); None if absent."""
        repo = self._repo(target)
        if repo.head_manifest(tag) is None:
            return None
        manifest = repo.get_manifest(tag)
        if manifest.is_index:
            try:
                child = self._choose(manifest, f"{target.name}:{tag}", platform)
            except PlatformError:
                return None
            facts = self._image_facts(repo, repo.get_manifest(child.digest), child.platform)
            # the tag names the index; the comparison is of the child's image
            return ImageFacts(facts.platform, facts.config_digest, facts.diff_ids, manifest.digest, manifest.media_type,
                              facts.layer_sizes, facts.config_size, len(manifest.raw))
        return self._image_facts(repo, manifest, None)

    # -- plumbing -----------------------------------------------------------------------------------

    @staticmethod
    def _count(result: CopyResult, pushed: _Stream, held: ImageFacts) -> None:
        """Blobs and bytes the push moved: dockerd says per layer (Pushed / Layer already exists /
        Mounted from); podman says nothing per layer, so its layers count as copied."""
        sizes = dict(zip((d.partition(":")[2][:12] for d in held.diff_ids), held.layer_sizes, strict=False))
        statuses = {k: v for k, v in pushed.layers.items() if k in sizes}
        if not statuses and sizes:
            statuses = dict.fromkeys(sizes, "Pushed")
            result.add_note("the engine does not report per layer (podman): every layer counts as copied, "
                            "so bytes_moved is an upper bound")
        for layer, status in statuses.items():
            if status == "Pushed":
                result.blobs_copied += 1
                result.bytes_moved += max(sizes.get(layer, 0), 0)
            elif status.startswith("Mounted from"):
                result.blobs_mounted += 1
            else:
                result.blobs_skipped += 1
        result.bytes_moved += held.config_size + held.manifest_size

# --------------------------------------------------------------------------- helpers


def client_kwargs(settings: DockerSettings, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker.APIClient` arguments: the environment (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)
    as the docker CLI reads it, overridden by `docker.host`, `docker.tls_verify`, `docker.cert_path`."""
    from docker.tls import TLSConfig
    from docker.utils import kwargs_from_env

    env = dict(os.environ if env is None else env)
    kwargs: dict[str, Any] = kwargs_from_env(environment=env)
    if settings.host:
        kwargs["base_url"] = settings.host
    if settings.tls_verify or settings.cert_path:
        cert_dir = Path(settings.cert_path or env.get("DOCKER_CERT_PATH") or Path.home() / ".docker").expanduser()
        cert, key, ca = cert_dir / "cert.pem", cert_dir / "key.pem", cert_dir / "ca.pem"
        if settings.tls_verify and not ca.is_file():
            raise DockerEngineError(f"docker.tls_verify: no ca.pem in {cert_dir} (set docker.cert_path)")
        kwargs["tls"] = TLSConfig(
            client_cert=(str(cert), str(key)) if cert.is_file() and key.is_file() else None,
            ca_cert=str(ca) if ca.is_file() else None,
            verify=settings.tls_verify,
        )
    return kwargs


def _api_client(kwargs: dict[str, Any]) -> Any:
    """A `docker.APIClient` for the daemon, API version negotiated as `version="auto"` does."""
    import docker

    tls = kwargs.get("tls")
    if tls is None or not getattr(tls, "ca_cert", None) or not getattr(tls, "verify", False):
        return docker.APIClient(version="auto", timeout=STREAM_TIMEOUT, **kwargs)
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's CA (psf/requests#3829),
    # so docker.cert_path's ca.pem would be ignored wherever those are set: the clients here do not
    # read the environment (its proxies are kept), the version probe included.
    from requests.utils import get_environ_proxies

    def client(version: str) -> Any:
        api = docker.APIClient(version=version, timeout=STREAM_TIMEOUT, **kwargs)
        api.trust_env = False
        api.proxies.update(get_environ_proxies(api.base_url))
        return api

    probe = client(docker.constants.MINIMUM_DOCKER_API_VERSION)
    try:
        server_version = probe.version(api_version=False)["ApiVersion"]
    except Exception as exc:
        raise docker.errors.DockerException(f"Error while fetching server API version: {exc}") from exc
    finally:
        probe.close()
    return client(server_version)


def _docker_io_short(name: str) -> str:
    """dockerd lists Docker Hub images by their short names (nginx:1, team/app:1)."""
    if not name.startswith(f"{DOCKER_HUB}/"):
        return name
    return name.removeprefix(f"{DOCKER_HUB}/").removeprefix("library/")


def _daemon_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        status = getattr(exc, "status_code", None)
        return f"{explanation} (HTTP {status})" if status else str(explanation)
    return f"{type(exc).__name__}: {exc}"


def _with_hint(message: str, plan: _Plan) -> str:
    if any(text in message for text in _PLAIN_HTTP):
        return (message + " (the Docker engine decides plain HTTP by itself: start dockerd with --insecure-registry "
                "HOST:PORT, or give podman an insecure [[registry]] in registries.conf; registries.<host>.insecure "
                "applies only to acr-mirror's own requests)")
    return message


def _short_list(digests: Sequence[str]) -> str:
    return "[" + ", ".join(d.partition(":")[2][:12] for d in digests) + "]"


__all__ = ["DaemonInfo", "DockerEngine", "DockerEngineError", "ImageFacts", "PlatformError", "SourceImage",
           "client_kwargs"]
