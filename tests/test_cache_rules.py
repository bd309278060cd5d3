"""`acr-mirror cache-rules` against the served ARM: one cache rule per upstream (with a credential set
reading Key Vault secrets), what does not fit said per upstream and image, each image pulled once
through the cache, and `rewrite` then rewriting to names that resolve through it, with no copy.

The CNCF registry cannot pull through by itself: tests/support/pullthrough.py puts a proxy in front
of the target registry that does what ACR does on a manifest pull a cache rule covers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mirror.azure import identity
from mirror.azure.arm import CacheRule
from mirror.azure.cache import RULE_LIMIT, plan_rules, rule_patterns
from mirror.cli import main
from mirror.plan import PlanEntry
from mirror.settings import AzureSettings
from tests.support.arm import ArmServer
from tests.support.images import build_image, inspect_raw, push, sha256
from tests.support.pullthrough import PullThroughProxy

pytest.importorskip("azure.mgmt.containerregistry")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, [*args], catch_exceptions=False)


# --------------------------------------------------------------------------- planning (no network)


def entry(source: str, target: str) -> PlanEntry:
    return PlanEntry(source, target)


def test_one_wildcard_rule_per_upstream_when_the_naming_allows_it() -> None:
    assert rule_patterns("{registry}/{repository}", "docker.io") == ("docker.io/*", "docker.io/*")
    assert rule_patterns("mirror/{registry}/{repository}", "quay.io") == ("mirror/quay.io/*", "quay.io/*")
    assert rule_patterns("{repository}", "ghcr.io") == ("*", "ghcr.io/*")
    assert "after {repository}" in str(rule_patterns("{repository}/{registry}", "ghcr.io"))
    assert "whole segments" in str(rule_patterns("{registry}-{repository}", "ghcr.io"))


def test_what_does_not_fit_is_said_per_upstream() -> None:
    images = [entry("docker.io/library/nginx:1", "cr.io/docker.io/library/nginx:1"),
              entry("ghcr.io/org/a:1", "cr.io/ghcr.io/org/a:1"),
              entry("quay.io/org/b:1", "cr.io/quay.io/org/b:1"),
              entry("registry.example.com/team/c:1", "cr.io/registry.example.com/team/c:1"),
              entry("mcr.microsoft.com/dotnet/sdk:8.0", "cr.io/mcr.microsoft.com/dotnet/sdk:8.0")]
    existing = [CacheRule("hub", "docker.io/*", "docker.io/*"),  # the same mapping: reused
                CacheRule("theirs", "quay.io/other/*", "ghcr.io/*"),  # same target, another source
                CacheRule("broad", "mcr.microsoft.com/*", "mcr.microsoft.com/dotnet/*")]  # overlaps
    rules, of_image = plan_rules(images, "{registry}/{repository}", AzureSettings(), existing)
    by_host = {r.upstream: r for r in rules}
    assert (by_host["docker.io"].status, by_host["docker.io"].name) == ("reused", "hub")
    assert by_host["ghcr.io"].status == "unfit" and "rule theirs already maps ghcr.io/*" in by_host["ghcr.io"].reason
    assert by_host["quay.io"].status == "planned" and by_host["quay.io"].name == "acrmirror-quay-io"
    assert by_host["registry.example.com"].status == "unfit"
    assert "does not support registry.example.com" in by_host["registry.example.com"].reason
    assert "overlaps the wildcard rule broad" in by_host["mcr.microsoft.com"].reason
    assert of_image["quay.io/org/b:1"] is by_host["quay.io"]
    # azure.cache_upstreams adds an upstream ACR supports now
    rules, _ = plan_rules(images[3:4], "{registry}/{repository}",
                          AzureSettings(cache_upstreams=("registry.example.com",)), [])
    assert rules[0].status == "planned"
    # the rule limit per registry
    full = [CacheRule(f"r{i}", f"docker.io/x{i}", f"x{i}") for i in range(RULE_LIMIT)]
    rules, _ = plan_rules(images[2:3], "{registry}/{repository}", AzureSettings(), full)
    assert rules[0].status == "unfit" and "limit of 1,000 cache rules" in rules[0].reason


# --------------------------------------------------------------------------- against the served ARM


@pytest.fixture
def cached(arm: ArmServer, registry_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[dict[str, Any]]:
    hub, quay, other, target = (registry_factory(auth="basic"), registry_factory(), registry_factory(),
                                registry_factory())
    arm.upstreams.update({"docker.io": hub, "quay.io": quay})  # local registries stand in for them
    acr = arm.add_registry("crtarget", target, sku="Basic")
    proxy = PullThroughProxy(arm, acr)
    monkeypatch.setattr(identity, "_default", arm.credential())
    kv = "https://kv-mirror.vault.azure.net/secrets"
    arm.key_vault = {f"{kv}/hub-user": hub.username or "", f"{kv}/hub-password": hub.password or ""}
    busybox = build_image(tmp_path / "img", layers=[1024], seed="cache-busybox")
    tool = build_image(tmp_path / "img", layers=[768], seed="cache-tool")
    app = build_image(tmp_path / "img", layers=[512], seed="cache-app")
    push(busybox, hub, "library/busybox", "1.36")
    push(tool, quay, "org/tool", "2")
    push(app, other, "team/app", "1")
    monkeypatch.setenv("HUB_PASSWORD", hub.password or "")
    escaped = target.host.replace(".", r"\.")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"target: {{registry: '{target.host}'}}\npolicy: {{imageRegex: '^{escaped}/.+$'}}\n"
        "registries:\n"
        f"  docker.io: {{endpoint: '{hub.url}', insecure: true, username: {hub.username}, "
        f"password_env: HUB_PASSWORD}}\n"
        f"  quay.io: {{endpoint: '{quay.url}', insecure: true}}\n"
        f"  '{other.host}': {{insecure: true}}\n"
        f"  '{target.host}': {{endpoint: '{proxy.url}', insecure: true}}\n"
        f"azure:\n  arm_endpoint: '{arm.url}'\n  ca_file: '{arm.ca_file}'\n  subscription: '{arm.subscription}'\n"
        f"  cache_credentials:\n    docker.io: {{username_secret: '{kv}/hub-user', password_secret: '{kv}/hub-password'}}\n")
    gone = "sha256:" + "b" * 64
    images = ["busybox:1.36", f"quay.io/org/tool:2@{tool.manifest_digest}", f"{other.host}/team/app:1",
              f"docker.io/library/gone@{gone}"]
    tree = tmp_path / "k8s"
    tree.mkdir()
    (tree / "app.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec:\n  containers:\n"
        + "".join(f"  - name: c{i}\n    image: {image}\n" for i, image in enumerate(images)))
    yield {"hub": hub, "quay": quay, "other": other, "target": target, "acr": acr, "proxy": proxy, "config": config,
           "tree": tree, "busybox": busybox, "tool": tool, "gone": gone}
    proxy.stop()


def test_cache_rules_let_rewrite_point_at_names_that_pull_through(cached: dict[str, Any], arm: ArmServer):
    config, tree, acr, proxy, target = cached["config"], cached["tree"], cached["acr"], cached["proxy"], \
        cached["target"]
    other = cached["other"]

    dry = invoke("cache-rules", str(tree), "--config", str(config), "--dry-run")
    assert dry.exit_code == 1  # one upstream is not covered
    assert "cache rule acrmirror-docker-io: docker.io/* <- docker.io/* (2 images) with credential set " \
           "acrmirror-creds-docker-io: would create" in dry.stdout
    assert acr.cache_rules == {} and acr.credential_sets == {} and proxy.pulls == []
    assert [r.method for r in arm.log if r.method != "GET"] == []  # a dry run only reads

    result = invoke("cache-rules", str(tree), "--config", str(config))
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "cache rule acrmirror-docker-io: docker.io/* <- docker.io/* (2 images) with credential set " \
           "acrmirror-creds-docker-io: created" in out
    assert "cache rule acrmirror-quay-io: quay.io/* <- quay.io/* (1 image): created" in out
    assert f"docker.io/library/busybox:1.36 -> {target.host}/docker.io/library/busybox:1.36: resolves through " \
           f"the cache ({cached['busybox'].manifest_digest})" in out
    assert f"quay.io/org/tool:2@{cached['tool'].manifest_digest} -> {target.host}/quay.io/org/tool:2@" in out
    err = result.stderr
    assert f"not covered: {other.host} (1 image): ACR's artifact cache does not support {other.host}" in err
    assert f"upstream no longer has {cached['gone']} (a pinned digest upstream deleted)" in err
    assert "copy the 2 images the cache cannot serve with `acr-mirror sync`" in err
    # the rules and the credential set ARM holds; the secrets are Key Vault URIs, never values
    rules = {r["name"]: r["properties"] for r in acr.cache_rules.values()}
    assert {n: (p["targetRepository"], p["sourceRepository"]) for n, p in rules.items()} == {
        "acrmirror-docker-io": ("docker.io/*", "docker.io/*"), "acrmirror-quay-io": ("quay.io/*", "quay.io/*")}
    (creds,) = acr.credential_sets.values()
    assert rules["acrmirror-docker-io"]["credentialSetResourceId"] == creds["id"]
    assert creds["properties"]["authCredentials"][0]["credentialHealth"]["status"] == "Healthy"
    assert cached["hub"].password not in json.dumps(creds) and cached["hub"].password not in result.output
    # each image was pulled once through the cache, and nothing was copied by acr-mirror
    assert sorted(proxy.pulls) == sorted([
        "docker.io/library/busybox:1.36", f"docker.io/library/gone:{cached['gone']}",
        f"quay.io/org/tool:{cached['tool'].manifest_digest}"])
    assert sha256(inspect_raw(f"{target.host}/docker.io/library/busybox:1.36", target)) == \
        cached["busybox"].manifest_digest

    rewrite = invoke("rewrite", str(tree), "--config", str(config))
    text = (tree / "app.yaml").read_text()
    assert f"image: {target.host}/docker.io/library/busybox:1.36\n" in text
    assert f"image: {target.host}/quay.io/org/tool:2@{cached['tool'].manifest_digest}\n" in text
    assert f"image: {other.host}/team/app:1\n" in text  # not covered: stays until copied
    assert f"image: docker.io/library/gone@{cached['gone']}\n" in text
    assert rewrite.exit_code == 1 and rewrite.stderr.count("not rewritten:") == 2  # those two still block

    again = invoke("cache-rules", "--image", "busybox:1.36", "--config", str(config))
    assert again.exit_code == 0 and "acrmirror-docker-io" in again.stdout and ": reused" in again.stdout
    assert len(acr.cache_rules) == 2 and len(acr.credential_sets) == 1


def test_credentials_only_acr_mirror_holds_are_pointed_out(cached: dict[str, Any], arm: ArmServer):
    config = cached["config"]
    text = config.read_text()
    config.write_text(text[: text.index("  cache_credentials:")])  # Key Vault secrets not configured
    result = invoke("cache-rules", "--image", "busybox:1.36", "--config", str(config))
    assert "acr-mirror has credentials for docker.io (config) but ACR's cache reads them only from Key Vault" \
        in result.stderr
    # the hub needs credentials: the anonymous pull-through fails and says where to look
    assert result.exit_code == 1 and "does not resolve through the cache" in result.stderr
    assert cached["acr"].credential_sets == {}
