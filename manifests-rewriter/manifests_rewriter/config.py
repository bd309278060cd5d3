"""The configuration file (config.example.yaml documents every key; the keys are a contract).

This offline core owns `target`, `policy` and `scan`. The other sections of the file format
(MIRROR_SECTIONS) belong to acr-mirror, which passes their parsers in (`sections=`, from
mirror.settings) and also registers them under the entry-point group SECTION_GROUP, so the
pre-commit hook checks them too wherever acr-mirror is installed (`installed_sections`). Where
it is not, the hook leaves exactly those sections alone (`others="ignore"`); any other unknown
key is an error. One acr-mirror.yaml serves both programs.

Parsing is strict: an unknown key, a wrong type or a regex RE2 rejects is a ConfigError
naming the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, PolicyError
from .files import Exclude
from .naming import DEFAULT_NAMING, NamingError, check_template
from .policy import ALWAYS_EXCLUDED, LabelSelector, Policy
from .reference import DOMAIN_RE

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "MIRROR_SECTIONS", "Config", "ConfigError", "ScanSettings", "SectionParser", "check_section",
           "find_config", "installed_sections", "load_config", "parse_config", "string_list"]

# Top-level sections acr-mirror parses (mirror.settings.SECTIONS); the hook accepts and ignores them.
MIRROR_SECTIONS = ("registries", "copy", "docker", "azure")
SECTION_GROUP = "manifests_rewriter.config_sections"  # entry points: a mapping of section name -> parser
DEFAULT_CONFIG = "acr-mirror.yaml"  # looked up in the current directory when --config is not given
CONFIG_ENV = "ACR_MIRROR_CONFIG"

# A section's parser: (where, the section's raw value, warnings to append to) -> its settings value.
SectionParser = Callable[[str, Any, list[str]], object]


@dataclass(frozen=True)
class ScanSettings:
    max_file_bytes: int = 16 * 1024 * 1024
    exclude: Exclude = field(default_factory=Exclude)  # glob patterns of paths not to scan (files.Exclude)
    max_file_nodes: int = 500_000  # YAML nodes one file may hold (locate.document.MAX_NODES: bounded memory)


@dataclass(frozen=True)
class Config:
    target_registry: str
    naming: str = DEFAULT_NAMING
    policy: Policy | None = None
    scan: ScanSettings = field(default_factory=ScanSettings)
    path: str = ""
    warnings: tuple[str, ...] = ()
    sections: Mapping[str, object] = field(default_factory=dict)  # parsed by their owners' parsers

    def require_policy(self) -> Policy:
        if self.policy is None:
            raise ConfigError(f"{self.path}: no 'policy:' section (give one, or use --policy-from-cluster)")
        return self.policy


_CORE: dict[str, dict[str, type | tuple[type, ...]]] = {
    "target": {"registry": str, "naming": str},
    "policy": {"imageRegex": str, "excludedNamespaces": list, "excludedContainers": list, "namespaces": list,
               "labelSelector": dict},
    "scan": {"max_file_bytes": int, "exclude": list, "max_file_nodes": int},
}


def check_section(where: str, data: Any, schema: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """A section's mapping, its keys and value types checked against `schema` (None is allowed)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping")
    for key, value in data.items():
        if key not in schema:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(schema)})")
        expected = schema[key]
        numeric = expected in (int, (int, float))
        if value is not None and not isinstance(value, expected) or isinstance(value, bool) and numeric:
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise ConfigError(f"{where}.{key}: must be {names}, not {type(value).__name__}")
    return data


def string_list(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return tuple(value)


def _check_top_level(data: dict[str, Any], path: str, sections: Mapping[str, SectionParser], others: str) -> None:
    known = {*_CORE, *sections}
    ignored = set(MIRROR_SECTIONS) - known if others == "ignore" else set()
    for key in data:
        if key in known or key in ignored:
            continue
        near = difflib.get_close_matches(str(key), [*_CORE, *MIRROR_SECTIONS], n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known | ignored))}){hint}")


def _policy(path: str, data: Any) -> Policy:
    section = check_section(f"{path}: policy", data, _CORE["policy"])
    if "imageRegex" not in section:
        raise ConfigError(f"{path}: policy.imageRegex is required")
    selector = None
    if section.get("labelSelector") is not None:
        try:
            selector = LabelSelector.parse(section["labelSelector"], "policy.labelSelector")
        except PolicyError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        # The same parameters as the Azure Policy definition, whose system namespaces are
        # always excluded by design whatever excludedNamespaces says.
        return Policy(
            section["imageRegex"],
            string_list(f"{path}: policy.excludedNamespaces", section.get("excludedNamespaces")),
            string_list(f"{path}: policy.excludedContainers", section.get("excludedContainers")),
            origin=f"config {path}",
            namespaces=string_list(f"{path}: policy.namespaces", section.get("namespaces")),
            label_selector=selector,
            system_namespaces=ALWAYS_EXCLUDED,
            label="config",
        )
    except PolicyError as exc:
        raise ConfigError(f"{path}: policy.{exc}") from None


def installed_sections() -> dict[str, SectionParser]:
    """Section parsers installed distributions register (acr-mirror's: mirror.settings.SECTIONS)."""
    from importlib.metadata import entry_points

    found: dict[str, SectionParser] = {}
    for entry in entry_points(group=SECTION_GROUP):
        try:
            found.update(entry.load())
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the hook
            raise ConfigError(f"loading config sections from {entry.value}: {type(exc).__name__}: {exc} "
                              f"(reinstall acr-mirror, or uninstall it to run the hook alone)") from None
    return found


def parse_config(data: Any, path: str = "<config>", *, policy_optional: bool = False,
                 sections: Mapping[str, SectionParser] | None = None, others: str = "error") -> Config:
    """The Config of a parsed YAML document. `sections`: parsers of the sections the caller
    owns; `others`: "error" (a section nobody here parses is refused) or "ignore" (acr-mirror's
    MIRROR_SECTIONS are left alone: the hook)."""
    sections = sections or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    _check_top_level(data, path, sections, others)
    warnings: list[str] = []

    target = check_section(f"{path}: target", data.get("target"), _CORE["target"])
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
        policy = _policy(path, data["policy"])
    elif not policy_optional:
        raise ConfigError(f"{path}: policy is required (policy.imageRegex), or use --policy-from-cluster")

    scan_section = check_section(f"{path}: scan", data.get("scan"), _CORE["scan"])
    scan = ScanSettings(
        max_file_bytes=scan_section.get("max_file_bytes", ScanSettings.max_file_bytes),
        # relative to the config file's directory (and to each file's repository: files.Exclude)
        exclude=Exclude(string_list(f"{path}: scan.exclude", scan_section.get("exclude")),
                        (os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd(),)),
        max_file_nodes=scan_section.get("max_file_nodes", ScanSettings.max_file_nodes),
    )
    parsed = {name: parse(f"{path}: {name}", data.get(name), warnings) for name, parse in sections.items()}
    return Config(registry, naming, policy, scan, path, tuple(warnings), parsed)


def load_config(path: str | Path, *, policy_optional: bool = False,
                sections: Mapping[str, SectionParser] | None = None, others: str = "error") -> Config:
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
    return parse_config(data, str(path), policy_optional=policy_optional, sections=sections, others=others)


def find_config(given: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The config file to use: --config; else ./acr-mirror.yaml (the repository's own, as the
    pre-commit hook runs at its root); else $ACR_MIRROR_CONFIG."""
    if given:
        return given
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV]
    raise ConfigError(f"no configuration: give --config FILE, create ./{DEFAULT_CONFIG} or set {CONFIG_ENV} "
                      f"(config.example.yaml documents every key)")
