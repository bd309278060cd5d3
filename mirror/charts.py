"""Charts from the network, for the chart pass (manifests_rewriter.charts): the default images of
Helm releases whose chart is not on this machine.

- HTTP Helm repositories: `index.yaml`, then the archive it lists, through the registry
  Transport (the one HTTP stack): TLS, `ca_file`, `insecure` and credentials per host from the
  `registries:` settings, as for registries. Plain http only for a host marked `insecure`;
  credentials only where the transport allows them (verified TLS, or an insecure host).
- OCI registries (`oci://host/path/chart`): the chart's manifest and its layer of Helm's media type
  (application/vnd.cncf.helm.chart.content.v1.tar+gzip), pulled with the project's RegistryClient
  (authentication, retries, digests checked).

Each chart is written to the cache directory as `<name>-<version>.tgz` (Helm's own cache layout):
the next run, or an air-gapped one given that directory as `--chart-dir`, reads it offline.
Bodies are bounded: an index at MAX_INDEX_BYTES, a chart at the core's MAX_ARCHIVE_BYTES.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import yaml

from manifests_rewriter.charts import newest
from manifests_rewriter.files import write_atomic
from manifests_rewriter.helmchart import MAX_ARCHIVE_BYTES, ChartError
from manifests_rewriter.locate.document import YamlError, check_limits
from manifests_rewriter.locate.release import ChartRef, Release

from .registry.credentials import Keychain, default_keychain
from .registry.errors import RegistryError
from .settings import MirrorSettings

if TYPE_CHECKING:  # the HTTP stack loads when a chart is first fetched, not with the CLI
    from .registry.transport import Transport

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
LEGACY_LAYER = "application/tar+gzip"  # charts pushed by Helm 3.0-3.7 experimental OCI support
MAX_INDEX_BYTES = 64 * 1024 * 1024  # a large public repository's index.yaml is tens of MiB


def default_cache_dir() -> str:
    """Where downloaded charts go when no --chart-dir is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "acr-mirror", "charts")


class RemoteCharts:
    """Downloads a chart into the cache directory and gives its path (a ChartSource)."""

    def __init__(self, settings: MirrorSettings, cache_dir: str, *, keychain: Keychain | None = None,
                 timeout: float = 60.0) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.keychain = keychain or default_keychain(settings)
        self.timeout = timeout
        self._indexes: dict[str, dict] = {}

    def find(self, ref: ChartRef, release: Release) -> str:
        """The cached archive of the chart, downloaded first when needed; ChartError (naming the
        chart and why) when it cannot be had."""
        try:
            if ref.repo.startswith("oci://"):
                return self._oci(ref)
            if ref.repo.startswith(("https://", "http://")):
                return self._http(ref)
        except (RegistryError, ChartError) as exc:
            raise ChartError(f"{ref.describe()}: {str(exc).removeprefix(ref.describe() + ': ')}") from None
        except OSError as exc:
            raise ChartError(f"{ref.describe()}: cannot keep it in {self.cache_dir}: {exc.strerror or exc}") from None
        raise ChartError(f"{ref.describe()}: nowhere to download it from (no repository URL)")

    # -- HTTP Helm repositories -------------------------------------------------------------------

    def _transport(self, url: str) -> Transport:
        from .registry.transport import Transport, host_of, redact_url

        host = host_of(url)
        settings = self.settings.registry(host)
        if urlsplit(url).scheme == "http" and not settings.insecure:
            raise ChartError(f"{redact_url(url)}: plain HTTP is used only for a host marked insecure; set "
                             f"registries.{host}.insecure: true to allow it")
        return Transport(host, settings, timeout=self.timeout, settings_for=self.settings.registry)

    def _get(self, transport: Transport, url: str, what: str, limit: int) -> bytes:
        from .registry.transport import Transport, host_of, redact_url

        host = host_of(url)
        credentials = self.keychain.resolve(host)
        authorization = None
        if credentials.basic is not None and transport.may_carry_credentials(url):
            from .registry.auth import basic_header

            authorization = basic_header(credentials.basic.username, credentials.basic.password)
        operation = f"GET {what} {redact_url(url)}"
        response = transport.send("GET", url, operation, authorization=authorization, follow=True, stream=True)
        try:
            if response.status_code != 200:
                raise ChartError(f"{operation}: HTTP {response.status_code}")
            return Transport.read_limited(response, limit, operation, what)
        finally:
            response.close()

    def _http(self, ref: ChartRef) -> str:
        from .registry.transport import host_of, redact_url

        base = ref.repo.rstrip("/") + "/"
        transport = self._transport(base)
        try:
            index = self._indexes.get(base)
            if index is None:
                raw = self._get(transport, urljoin(base, "index.yaml"), "index.yaml", MAX_INDEX_BYTES)
                try:
                    text = raw.decode("utf-8")
                    check_limits(text)  # libyaml must not meet a nesting bomb (nor a file of millions of nodes)
                    index = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
                except (yaml.YAMLError, UnicodeDecodeError, YamlError):
                    raise ChartError(f"{redact_url(base)}index.yaml is not valid YAML (or is refused)") from None
                self._indexes[base] = index
            entries = (index.get("entries") or {}).get(ref.name) if isinstance(index, dict) else None
            if not isinstance(entries, list) or not entries:
                raise ChartError(f"{redact_url(base)}index.yaml lists no chart {ref.name!r}")
            by_version = {str(e.get("version")): e for e in entries if isinstance(e, dict) and e.get("version")}
            version = newest(by_version, ref.version)
            if version is None:
                raise ChartError(f"{redact_url(base)}index.yaml has no {ref.name} version matching "
                                 f"{ref.version or 'a release version'}")
            cached = self._cached(ref.name, version)
            if cached:
                return cached
            urls = by_version[version].get("urls") or []
            if not urls or not isinstance(urls[0], str):
                raise ChartError(f"{redact_url(base)}index.yaml gives no URL for {ref.name} {version}")
            url = urljoin(base, urls[0])
            if host_of(url) != transport.host:  # an archive on another host (a CDN): its own settings
                transport.close()
                transport = self._transport(url)
            data = self._get(transport, url, "chart", MAX_ARCHIVE_BYTES)
        finally:
            transport.close()
        return self._store(ref.name, version, data)

    # -- OCI registries -------------------------------------------------------------------------------

    def _oci(self, ref: ChartRef) -> str:
        from .registry.client import RegistryClient

        location = ref.repo.removeprefix("oci://").rstrip("/")
        host, _, path = location.partition("/")
        if not path:
            raise ChartError(f"{ref.describe()}: no repository in {ref.repo}")
        name = path.rsplit("/", 1)[-1]
        settings = self.settings.registry(host)
        with RegistryClient(host, settings, credentials=self.keychain.resolve(host), timeout=self.timeout,
                            settings_for=self.settings.registry) as client:
            repo = client.repo(path)
            version = ref.version
            tag = version.replace("+", "_")  # Helm's tag for semver build metadata
            if not version or any(c in version for c in "<>=~^*xX|, "):
                tags = [t.replace("_", "+") for t in repo.tags()]
                found = newest(tags, version)
                if found is None:
                    raise ChartError(f"{ref.describe()}: no tag of {ref.repo} matches {version or 'a release version'}")
                version, tag = found, found.replace("+", "_")
            cached = self._cached(name, version)
            if cached:
                return cached
            manifest = repo.get_manifest(tag)
            layers = [b for b in manifest.blobs if b.media_type in (HELM_LAYER, LEGACY_LAYER)]
            if not layers:
                raise ChartError(f"{ref.describe()}: {ref.repo}:{tag} is not a Helm chart (no layer of type "
                                 f"{HELM_LAYER})")
            layer = layers[0]
            if layer.size > MAX_ARCHIVE_BYTES:
                raise ChartError(f"{ref.describe()}: the chart is {layer.size} bytes, over the "
                                 f"{MAX_ARCHIVE_BYTES}-byte limit")
            with repo.open_blob(layer.digest, layer.size) as blob:
                data = b"".join(blob.chunks())
        return self._store(name, version, data)

    # -- the cache ------------------------------------------------------------------------------------

    def _cached(self, name: str, version: str) -> str | None:
        path = os.path.join(self.cache_dir, f"{name}-{version}.tgz")
        return path if os.path.isfile(path) else None

    def _store(self, name: str, version: str, data: bytes) -> str:
        if "/" in name or "/" in version or name.startswith("."):
            raise ChartError(f"chart {name!r} {version!r}: not a name that can be stored")
        os.makedirs(self.cache_dir, exist_ok=True)
        path = Path(self.cache_dir) / f"{name}-{version}.tgz"
        write_atomic(path, data)
        return str(path)
