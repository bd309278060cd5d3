"""The configuration file (config.example.yaml documents every key; the keys are a contract).

Parsing is strict: an unknown key, a wrong type or a regex RE2 rejects is a ConfigError
naming the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .naming import DEFAULT_NAMING, NamingError, check_template
from .policy import Policy, PolicyError
from .reference import DOMAIN_RE


class ConfigError(ValueError):
    """Unusable configuration; the message names the file and key."""


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
    engine: str = "registry"  # registry | docker
    platforms: tuple[str, ...] | None = None  # None: all platforms
    concurrency: int = 8
    per_registry_limit: int = 8  # requests in flight per registry host
    signatures: bool = True  # referrers and cosign .sig/.att/.sbom tags come along
    lock: bool = False  # ACR only: make mirrored images read-only (can_write=False)
    retries: int = 5
    timeout: float = 60.0  # seconds per request (connect/read)


@dataclass(frozen=True)
class DockerSettings:
    host: str | None = None  # DOCKER_HOST when unset
    tls_verify: bool = False
    cert_path: str | None = None
    allow_digest_change: bool = False  # rewrite digest-pinned references by tag after a docker-engine copy


@dataclass(frozen=True)
class ScanSettings:
    max_file_bytes: int = 16 * 1024 * 1024
    exclude: tuple[str, ...] = ()  # glob patterns (relative paths) not to scan


@dataclass(frozen=True)
class Config:
    target_registry: str
    naming: str = DEFAULT_NAMING
    policy: Policy | None = None
    registries: dict[str, RegistrySettings] = field(default_factory=dict)
    copy: CopySettings = field(default_factory=CopySettings)
    docker: DockerSettings = field(default_factory=DockerSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    path: str = ""
    warnings: tuple[str, ...] = ()

    def registry(self, host: str) -> RegistrySettings:
        return self.registries.get(host, RegistrySettings())

    def require_policy(self) -> Policy:
        if self.policy is None:
            raise ConfigError(f"{self.path}: no 'policy:' section (give one, or use --policy-from-cluster)")
        return self.policy


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "target": {"registry": str, "naming": str},
    "policy": {"imageRegex": str, "excludedNamespaces": list, "excludedContainers": list},
    "copy": {"engine": str, "platforms": (str, list), "concurrency": int, "per_registry_limit": int,
             "signatures": bool, "lock": bool, "retries": int, "timeout": (int, float)},
    "docker": {"host": str, "tls_verify": bool, "cert_path": str, "allow_digest_change": bool},
    "scan": {"max_file_bytes": int, "exclude": list},
}
_REGISTRY_KEYS: dict[str, type | tuple[type, ...]] = {
    "endpoint": str, "insecure": bool, "ca_file": str, "username": str, "password": str,
    "password_env": str, "auth": str, "tenant": str,
}
_AUTH_MODES = ("auto", "anonymous", "basic", "docker", "azure")


def _section(where: str, data: Any, schema: dict[str, Any]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping")
    for key, value in data.items():
        if key not in schema:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(schema)})")
        expected = schema[key]
        if value is not None and not isinstance(value, expected) or isinstance(value, bool) and expected in (int, (int, float)):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise ConfigError(f"{where}.{key}: must be {names}, not {type(value).__name__}")
    return data


def _string_list(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return tuple(value)


def parse_config(data: Any, path: str = "<config>", *, policy_optional: bool = False) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    known = {*_SCHEMA, "registries"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    warnings: list[str] = []

    target = _section(f"{path}: target", data.get("target"), _SCHEMA["target"])
    registry = target.get("registry")
    if not registry:
        raise ConfigError(f"{path}: target.registry is required (e.g. crazureblue.azurecr.io)")
    if not DOMAIN_RE.fullmatch(registry):
        raise ConfigError(f"{path}: target.registry {registry!r} is not a registry host")
    naming = target.get("naming") or DEFAULT_NAMING
    try:
        check_template(naming)
    except NamingError as exc:
        raise ConfigError(f"{path}: {exc}") from None

    policy = None
    if data.get("policy") is not None:
        section = _section(f"{path}: policy", data["policy"], _SCHEMA["policy"])
        if "imageRegex" not in section:
            raise ConfigError(f"{path}: policy.imageRegex is required")
        try:
            policy = Policy(
                section["imageRegex"],
                _string_list(f"{path}: policy.excludedNamespaces", section.get("excludedNamespaces")),
                _string_list(f"{path}: policy.excludedContainers", section.get("excludedContainers")),
                origin=f"config {path}",
            )
        except PolicyError as exc:
            raise ConfigError(f"{path}: policy.{exc}") from None
    elif not policy_optional:
        raise ConfigError(f"{path}: policy is required (policy.imageRegex), or use --policy-from-cluster")

    registries: dict[str, RegistrySettings] = {}
    raw_registries = data.get("registries") or {}
    if not isinstance(raw_registries, dict):
        raise ConfigError(f"{path}: registries must be a mapping of host to settings")
    for host, settings in raw_registries.items():
        where = f"{path}: registries.{host}"
        section = _section(where, settings, _REGISTRY_KEYS)
        auth = section.get("auth", "auto")
        if auth not in _AUTH_MODES:
            raise ConfigError(f"{where}.auth: must be one of {', '.join(_AUTH_MODES)}")
        if section.get("password"):
            warnings.append(f"{where}.password: a password in plain text in the config file; "
                            f"prefer password_env, a Docker credential helper or Entra ID")
        registries[str(host)] = RegistrySettings(**section)

    copy_section = _section(f"{path}: copy", data.get("copy"), _SCHEMA["copy"])
    engine = copy_section.get("engine", "registry")
    if engine not in ("registry", "docker"):
        raise ConfigError(f"{path}: copy.engine must be 'registry' or 'docker', not {engine!r}")
    platforms_value = copy_section.get("platforms", "all")
    platforms: tuple[str, ...] | None
    if platforms_value in (None, "all"):
        platforms = None
    elif isinstance(platforms_value, list):
        platforms = _string_list(f"{path}: copy.platforms", platforms_value)
    else:
        raise ConfigError(f"{path}: copy.platforms must be 'all' or a list such as [linux/amd64]")
    for name in ("concurrency", "per_registry_limit"):
        if copy_section.get(name, 1) < 1:
            raise ConfigError(f"{path}: copy.{name} must be at least 1")
    copy = CopySettings(**{**copy_section, "engine": engine, "platforms": platforms})

    docker = DockerSettings(**_section(f"{path}: docker", data.get("docker"), _SCHEMA["docker"]))
    scan_section = _section(f"{path}: scan", data.get("scan"), _SCHEMA["scan"])
    scan = ScanSettings(
        max_file_bytes=scan_section.get("max_file_bytes", ScanSettings.max_file_bytes),
        exclude=_string_list(f"{path}: scan.exclude", scan_section.get("exclude")),
    )
    return Config(registry, naming, policy, registries, copy, docker, scan, path, tuple(warnings))


def load_config(path: str | Path, *, policy_optional: bool = False) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(path), policy_optional=policy_optional)
