"""The configuration sections acr-mirror owns: `registries`, `copy`, `docker`, `azure`.

The offline core (manifests_rewriter.config) parses `target`, `policy` and `scan`; it calls
the parsers in SECTIONS for the rest. A new section is a dataclass, a parser and one line in
SECTIONS; `settings_of(config)` gives the typed values back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from manifests_rewriter.config import Config, ConfigError, SectionParser, check_section, string_list

from .engines import ENGINES


@dataclass(frozen=True)
class RegistrySettings:
    endpoint: str | None = None  # send this host's requests here (mirror, proxy, private endpoint)
    insecure: bool = False  # plain HTTP or unverified TLS, for this host only
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None  # name of an environment variable holding the password
    auth: str = "auto"  # auto | anonymous | basic | docker | azure
    tenant: str | None = None  # Entra ID tenant for the ACR token exchange

    def resolved_password(self) -> str | None:
        if self.password_env:
            return os.environ.get(self.password_env)
        return self.password


@dataclass(frozen=True)
class CopySettings:
    engine: str = "registry"  # a name in mirror.engines.ENGINES
    platforms: tuple[str, ...] | None = None  # None: all platforms
    concurrency: int = 8
    per_registry_limit: int = 8  # requests in flight per registry host
    signatures: bool = True  # referrers and cosign .sig/.att/.sbom tags come along
    lock: bool = False  # ACR only: make mirrored images read-only (can_write=False)
    retries: int = 5
    timeout: float = 60.0  # seconds per request (connect/read)
    acr_sku: str | None = None  # Basic | Standard | Premium: pace target requests to that tier (else read from ARM)


@dataclass(frozen=True)
class DockerSettings:
    host: str | None = None  # DOCKER_HOST when unset
    tls_verify: bool = False
    cert_path: str | None = None
    allow_digest_change: bool = False  # rewrite digest-pinned references by tag after a docker-engine copy


# Azure clouds by the names `az cloud list` uses -> azure.core.AzureClouds members.
AZURE_CLOUDS = {"AzurePublicCloud": "AZURE_PUBLIC_CLOUD", "AzureChinaCloud": "AZURE_CHINA_CLOUD",
                "AzureUSGovernment": "AZURE_US_GOVERNMENT"}


@dataclass(frozen=True)
class CacheCredential:
    """Key Vault secret URIs ACR's cache reads an upstream's username and password from."""

    username_secret: str
    password_secret: str


@dataclass(frozen=True)
class AzureSettings:
    """How acr-mirror reaches Azure Resource Manager (ARM) and Entra ID, for every Azure feature
    (reading policy assignments with --policy-from-azure; ACR imports and cache rules).

    `cloud` picks ARM's endpoint, its token audience and the Entra ID login host together
    (azure-core's AzureClouds). `arm_endpoint` replaces the endpoint for anything else (Azure
    Stack Hub, a private ARM, a test double); its audience is `arm_scope`, by default the endpoint
    + "/.default"; `ca_file` is a CA bundle to trust for it. HTTPS only: azure-core sends no
    bearer token over plain HTTP. Credentials: DefaultAzureCredential (environment, workload
    identity, managed identity, az login), against the cloud's login host."""

    cloud: str = "AzurePublicCloud"  # AzurePublicCloud | AzureChinaCloud | AzureUSGovernment
    arm_endpoint: str | None = None
    arm_scope: str | None = None
    ca_file: str | None = None
    # -- where the target registry is, for acr-import, cache-rules and the tier's pacing (any one;
    #    with subscription alone the registry is found by its login server among its registries)
    registry_id: str | None = None  # /subscriptions/S/resourceGroups/G/providers/Microsoft.ContainerRegistry/registries/N
    subscription: str | None = None
    resource_group: str | None = None
    # -- copy.engine: acr-import
    import_mode: str = "NoForce"  # NoForce: never overwrite a target tag | Force
    import_concurrency: int = 4  # importImage operations in flight at once
    import_timeout: float = 1800.0  # seconds one import may take, polled to the end
    poll_interval: float = 2.0  # seconds between status polls when ARM sends no Retry-After
    # -- cache-rules
    cache_credentials: Mapping[str, CacheCredential] = field(default_factory=dict)  # upstream host -> secrets
    cache_upstreams: tuple[str, ...] = ()  # upstreams ACR's cache supports beyond the documented ones

    @property
    def locates_registry(self) -> bool:
        """Whether ARM can be asked about the target registry at all."""
        return bool(self.registry_id or self.subscription)


@dataclass(frozen=True)
class MirrorSettings:
    """What the registry side needs: per-host settings, how to copy, which Docker engine; and Azure."""

    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)
    copy: CopySettings = field(default_factory=CopySettings)
    docker: DockerSettings = field(default_factory=DockerSettings)
    azure: AzureSettings = field(default_factory=AzureSettings)

    def registry(self, host: str) -> RegistrySettings:
        return self.registries.get(host, RegistrySettings())


_REGISTRY_KEYS: dict[str, type | tuple[type, ...]] = {
    "endpoint": str, "insecure": bool, "ca_file": str, "username": str, "password": str,
    "password_env": str, "auth": str, "tenant": str,
}
AUTH_MODES = ("auto", "anonymous", "basic", "docker", "azure")
_COPY_KEYS: dict[str, type | tuple[type, ...]] = {
    "engine": str, "platforms": (str, list), "concurrency": int, "per_registry_limit": int,
    "signatures": bool, "lock": bool, "retries": int, "timeout": (int, float), "acr_sku": str,
}
ACR_SKUS = ("Basic", "Standard", "Premium")
_DOCKER_KEYS: dict[str, type | tuple[type, ...]] = {
    "host": str, "tls_verify": bool, "cert_path": str, "allow_digest_change": bool,
}
_AZURE_KEYS: dict[str, type | tuple[type, ...]] = {
    "cloud": str, "arm_endpoint": str, "arm_scope": str, "ca_file": str,
    "registry_id": str, "subscription": str, "resource_group": str,
    "import_mode": str, "import_concurrency": int, "import_timeout": (int, float), "poll_interval": (int, float),
    "cache_credentials": dict, "cache_upstreams": list,
}
IMPORT_MODES = ("NoForce", "Force")
REGISTRY_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ContainerRegistry"
                         r"/registries/[A-Za-z0-9]{5,50}", re.IGNORECASE)


def parse_registries(where: str, data: Any, warnings: list[str]) -> dict[str, RegistrySettings]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of host to settings")
    registries: dict[str, RegistrySettings] = {}
    for host, settings in data.items():
        at = f"{where}.{host}"
        section = check_section(at, settings, _REGISTRY_KEYS)
        if section.get("auth", "auto") not in AUTH_MODES:
            raise ConfigError(f"{at}.auth: must be one of {', '.join(AUTH_MODES)}")
        if section.get("password"):
            warnings.append(f"{at}.password: a password in plain text in the config file; "
                            f"prefer password_env, a Docker credential helper or Entra ID")
        registries[str(host)] = RegistrySettings(**section)
    return registries


def parse_copy(where: str, data: Any, warnings: list[str]) -> CopySettings:
    section = check_section(where, data, _COPY_KEYS)
    engine = section.get("engine", "registry")
    if engine not in ENGINES:
        raise ConfigError(f"{where}.engine must be one of {', '.join(repr(e) for e in ENGINES)}, not {engine!r}")
    if section.get("acr_sku") is not None and section["acr_sku"] not in ACR_SKUS:
        raise ConfigError(f"{where}.acr_sku must be one of {', '.join(ACR_SKUS)}")
    platforms_value = section.get("platforms", "all")
    platforms: tuple[str, ...] | None
    if platforms_value in (None, "all"):
        platforms = None
    elif isinstance(platforms_value, list):
        platforms = string_list(f"{where}.platforms", platforms_value)
    else:
        raise ConfigError(f"{where}.platforms must be 'all' or a list such as [linux/amd64]")
    for name in ("concurrency", "per_registry_limit"):
        if section.get(name, 1) < 1:
            raise ConfigError(f"{where}.{name} must be at least 1")
    return CopySettings(**{**section, "engine": engine, "platforms": platforms})


def parse_docker(where: str, data: Any, warnings: list[str]) -> DockerSettings:
    return DockerSettings(**check_section(where, data, _DOCKER_KEYS))


def parse_azure(where: str, data: Any, warnings: list[str]) -> AzureSettings:
    section = check_section(where, data, _AZURE_KEYS)
    cloud = section.get("cloud") or "AzurePublicCloud"
    if cloud not in AZURE_CLOUDS:
        raise ConfigError(f"{where}.cloud must be one of {', '.join(AZURE_CLOUDS)}, not {cloud!r}")
    endpoint = section.get("arm_endpoint")
    if endpoint is not None and not endpoint.startswith("https://"):
        raise ConfigError(f"{where}.arm_endpoint must be an https:// URL (Azure sends no token over plain HTTP)")
    if section.get("arm_scope") and not endpoint:
        raise ConfigError(f"{where}.arm_scope needs arm_endpoint (a cloud brings its own audience)")
    registry_id = section.get("registry_id")
    if registry_id and not REGISTRY_ID.fullmatch(registry_id.rstrip("/")):
        raise ConfigError(f"{where}.registry_id must look like /subscriptions/S/resourceGroups/G/providers/"
                          f"Microsoft.ContainerRegistry/registries/NAME")
    if section.get("resource_group") and not section.get("subscription"):
        raise ConfigError(f"{where}.resource_group: give the subscription it belongs to as well")
    if section.get("import_mode", "NoForce") not in IMPORT_MODES:
        raise ConfigError(f"{where}.import_mode must be NoForce (never overwrite a tag) or Force")
    for name in ("import_concurrency", "import_timeout"):
        if section.get(name, 1) <= 0:
            raise ConfigError(f"{where}.{name} must be positive")
    if section.get("poll_interval", 0) < 0:
        raise ConfigError(f"{where}.poll_interval must not be negative")
    credentials = {}
    for host, secrets in (section.get("cache_credentials") or {}).items():
        at = f"{where}.cache_credentials.{host}"
        given = check_section(at, secrets, {"username_secret": str, "password_secret": str})
        if not given.get("username_secret") or not given.get("password_secret"):
            raise ConfigError(f"{at}: needs username_secret and password_secret (Key Vault secret URIs)")
        for key in ("username_secret", "password_secret"):
            if not given[key].startswith("https://"):
                raise ConfigError(f"{at}.{key}: must be a Key Vault secret URI "
                                  f"(https://VAULT.vault.azure.net/secrets/NAME), never the secret itself")
        credentials[str(host)] = CacheCredential(given["username_secret"], given["password_secret"])
    upstreams = string_list(f"{where}.cache_upstreams", section.get("cache_upstreams"))
    return AzureSettings(**{**section, "cloud": cloud, "cache_credentials": credentials,
                            "cache_upstreams": upstreams})


# The sections acr-mirror owns: one line each.
SECTIONS: dict[str, SectionParser] = {
    "registries": parse_registries,
    "copy": parse_copy,
    "docker": parse_docker,
    "azure": parse_azure,
}


def settings_of(config: Config) -> MirrorSettings:
    """The typed settings of a config parsed with SECTIONS (defaults for a bare Config)."""
    sections = config.sections

    def get(name: str, default: Any) -> Any:
        value = sections.get(name)
        return default if value is None else value

    return MirrorSettings(get("registries", {}), get("copy", CopySettings()), get("docker", DockerSettings()),
                          get("azure", AzureSettings()))
