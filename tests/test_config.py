"""Config parsing is strict: unknown keys, wrong types and bad regexes name the key."""

from pathlib import Path

import pytest

from manifests_rewriter.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
BASE = {"target": {"registry": "crazureblue.azurecr.io"}, "policy": {"imageRegex": r"^crazureblue\.azurecr\.io/"}}


def test_example_config_loads_every_key():
    config = load_config(ROOT / "config.example.yaml")
    assert config.target_registry == "crazureblue.azurecr.io"
    assert config.policy is not None and config.policy.excluded_namespaces == ("kube-system", "gatekeeper-system",
                                                                                 "azure-arc")
    assert config.registry("127.0.0.1:5000").insecure is True
    assert config.registry("docker.io").endpoint == "https://mirror.example.com"
    assert config.registry("crazureblue.azurecr.io").auth == "azure"
    assert config.copy.platforms is None and config.copy.concurrency == 8
    assert config.warnings == ()  # the example keeps no plain-text password


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
    assert config.registry("r.io").resolved_password() == "s3cret"


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
