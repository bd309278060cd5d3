"""Config parsing is strict: unknown keys, wrong types and bad regexes name the key. The core
owns target/policy/scan; acr-mirror's sections (mirror.settings) are parsed by their owner."""

from functools import partial
from pathlib import Path

import pytest

from manifests_rewriter import config as core
from manifests_rewriter.config import ConfigError, find_config
from mirror.settings import SECTIONS, settings_of

load_config = partial(core.load_config, sections=SECTIONS)
parse_config = partial(core.parse_config, sections=SECTIONS)

ROOT = Path(__file__).resolve().parents[1]
BASE = {"target": {"registry": "crazureblue.azurecr.io"}, "policy": {"imageRegex": r"^crazureblue\.azurecr\.io/"}}


def test_example_config_loads_every_key():
    config = load_config(ROOT / "config.example.yaml")
    assert config.target_registry == "crazureblue.azurecr.io"
    assert config.policy is not None and config.policy.excluded_namespaces == ("kube-system", "gatekeeper-system",
                                                                                 "azure-arc")
    settings = settings_of(config)
    assert settings.registry("127.0.0.1:5000").insecure is True
    assert settings.registry("docker.io").endpoint == "https://mirror.example.com"
    assert settings.registry("crazureblue.azurecr.io").auth == "azure"
    assert settings.copy.platforms is None and settings.copy.concurrency == 8
    assert settings.copy.acr_sku is None and settings.azure.import_mode == "NoForce"
    assert settings.azure.cloud == "AzurePublicCloud" and not settings.azure.locates_registry
    assert config.warnings == ()  # the example keeps no plain-text password


def test_the_hook_leaves_acr_mirror_sections_alone_and_refuses_anything_else():
    """One acr-mirror.yaml serves both programs: the hook (no section parsers) ignores exactly
    acr-mirror's sections; any other unknown key, a typo above all, is an error."""
    hook = core.load_config(ROOT / "config.example.yaml", others="ignore")
    assert hook.target_registry == "crazureblue.azurecr.io" and hook.sections == {}
    with pytest.raises(ConfigError, match="did you mean 'policy'"):
        core.parse_config({**BASE, "polcy": {}}, "c.yaml", others="ignore")
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        core.parse_config({**BASE, "extra": {}}, "c.yaml", others="ignore")
    with pytest.raises(ConfigError, match="unknown key 'registries'"):
        core.parse_config({**BASE, "registries": {}}, "c.yaml")  # strict when nobody owns it
    assert set(SECTIONS) <= set(core.MIRROR_SECTIONS)  # the two lists agree
    # installed, acr-mirror registers its parsers for the hook: a typo inside copy: is caught too
    assert core.installed_sections() == SECTIONS
    with pytest.raises(ConfigError, match="copy.concurency: unknown key"):
        core.parse_config({**BASE, "copy": {"concurency": 4}}, "c.yaml", sections=core.installed_sections(),
                          others="ignore")


@pytest.mark.parametrize(("data", "message"), [
    ({**BASE, "targets": {}}, "unknown key 'targets'"),
    ({**BASE, "target": {"registry": "x.io", "nam": "y"}}, "target.nam: unknown key"),
    ({"policy": BASE["policy"]}, "target.registry is required"),
    ({**BASE, "target": {"registry": "not a host!"}}, "not a registry host"),
    ({**BASE, "target": {"registry": "x.io", "naming": "{registry}"}}, "must contain {repository}"),
    ({**BASE, "target": {"registry": "x.io", "naming": "{tag}/{repository}"}}, "unknown placeholder"),
    ({"target": BASE["target"]}, "policy is required"),
    ({**BASE, "policy": {"imageRegex": "(?=a)"}}, "not a valid RE2 expression"),
    ({**BASE, "policy": {"excludedNamespaces": []}}, "policy.imageRegex is required"),
    ({**BASE, "policy": {"imageRegex": "^a", "excludedNamespaces": "kube-system"}}, "excludedNamespaces: must be list"),
    ({**BASE, "copy": {"engine": "podman"}}, "copy.engine must be"),
    ({**BASE, "copy": {"concurrency": 0}}, "copy.concurrency must be at least 1"),
    ({**BASE, "copy": {"concurrency": True}}, "copy.concurrency: must be int"),
    ({**BASE, "copy": {"platforms": "linux/amd64"}}, "copy.platforms must be 'all' or a list"),
    ({**BASE, "registries": {"docker.io": {"endpont": "x"}}}, "registries.docker.io.endpont: unknown key"),
    ({**BASE, "registries": {"docker.io": {"auth": "magic"}}}, "auth: must be one of"),
    ({**BASE, "registries": ["docker.io"]}, "registries must be a mapping"),
    ([1, 2], "must be a mapping"),
])
def test_invalid_configs_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("c.yaml")
    assert "\n" not in str(info.value)


def test_plain_text_password_is_warned_and_never_shown():
    config = parse_config({**BASE, "registries": {"r.io": {"username": "u", "password": "hunter2-secret"}}}, "c.yaml")
    assert any("plain text" in w for w in config.warnings)
    assert "hunter2-secret" not in repr(config) and "hunter2-secret" not in " ".join(config.warnings)


def test_password_env(monkeypatch):
    monkeypatch.setenv("MY_PW", "s3cret")
    config = parse_config({**BASE, "registries": {"r.io": {"username": "u", "password_env": "MY_PW"}}})
    assert settings_of(config).registry("r.io").resolved_password() == "s3cret"


def test_policy_optional_with_cluster_policy():
    config = parse_config({"target": BASE["target"]}, policy_optional=True)
    assert config.policy is None
    with pytest.raises(ConfigError, match="policy"):
        config.require_policy()


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("target:\n  registry: x.io\n policy: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:") and "invalid YAML" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_lookup_flag_then_local_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"ACR_MIRROR_CONFIG": "/etc/acr-mirror.yaml"}
    assert find_config("given.yaml", env) == "given.yaml"
    assert find_config(None, env) == "/etc/acr-mirror.yaml"
    (tmp_path / "acr-mirror.yaml").write_text("target: {registry: x.io}\n")
    assert find_config(None, env) == "acr-mirror.yaml"
    (tmp_path / "acr-mirror.yaml").unlink()
    with pytest.raises(ConfigError, match="give --config FILE, create ./acr-mirror.yaml or set ACR_MIRROR_CONFIG"):
        find_config(None, {})
