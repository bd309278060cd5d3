"""The cluster functions through the acr-mirror CLI (in process), against the served API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mirror.cli import main
from tests.support.kubeapi import KubeAPI, make_cluster

CONFIG = """\
target:
  registry: crazureblue.azurecr.io
policy:
  imageRegex: '^crazureblue\\.azurecr\\.io/.+$'
  excludedNamespaces: [kube-system, gatekeeper-system, azure-arc]
  excludedContainers: []
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "config.yaml").write_text(CONFIG)
    (tmp / "no-policy.yaml").write_text("target:\n  registry: crazureblue.azurecr.io\n")
    with KubeAPI(make_cluster(120, 4).objects) as api:
        yield api, api.write_kubeconfig(tmp / "kubeconfig"), tmp


def scan(kubeconfig: Path, config: Path, *extra: str) -> Any:
    result = CliRunner().invoke(main, ["scan", "--cluster", "--kubeconfig", str(kubeconfig), "--config", str(config),
                                       "--format", "json", *extra])
    assert result.exit_code == 1, result.output  # findings
    return json.loads(result.stdout)


def test_scan_cluster_json_and_policy_from_cluster_agree(served: Any) -> None:
    _, kubeconfig, tmp = served
    configured = scan(kubeconfig, tmp / "config.yaml")
    from_cluster = scan(kubeconfig, tmp / "no-policy.yaml", "--policy-from-cluster")

    decided = ("reason", "assignment", "effect", "refused")  # which assignment decided, and its effect

    def strip(data: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in f.items() if k not in decided} for f in data["findings"]]

    assert configured["findings"] and strip(configured) == strip(from_cluster)
    assert {(f["assignment"], f["effect"], f["refused"]) for f in configured["findings"]} == {("config", "deny", True)}
    assert {(f["assignment"], f["effect"], f["refused"]) for f in from_cluster["findings"]} == {
        ("cluster constraint azurepolicy-k8sazurev2containerallowedimag-8b5c1d0f6a2e4b3c9d7e", "audit", False)}
    for f in configured["findings"]:
        assert f["file"] is None and f["source"] == "cluster" and f["kind"] and f["namespace"] and f["name"]
        assert f["namespace"] not in ("kube-system", "gatekeeper-system")
    assert any(f["digest"] for f in configured["findings"])


def test_audit_and_unreachable_cluster(served: Any) -> None:
    _, kubeconfig, tmp = served
    result = CliRunner().invoke(main, ["audit", "--cluster", "--kubeconfig", str(kubeconfig), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    result = CliRunner().invoke(main, ["scan", "--cluster", "--kubeconfig", str(kubeconfig), "--context",
                                       "unreachable", "--config", str(tmp / "config.yaml")])
    # an unreachable cluster fails the run (1), it is not a usage error (2)
    assert result.exit_code == 1 and "cannot reach" in result.output and "Traceback" not in result.output


def _deployment(name: str, image: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "labels": labels or {}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": image, "ports": [{"containerPort": 80}]}]}}}}


@pytest.mark.registry
def test_sync_then_rewrite_cluster_patches_only_verified_owners(source_registry: Any, target_registry: Any,
                                                                  tmp_path: Path) -> None:
    """End to end on real registries: only the image that reached the target is patched in,
    a GitOps-managed owner is skipped, and a dry run changes nothing."""
    from tests.support.images import build_image, push

    push(build_image(tmp_path, layers=[4096], seed="present"), source_registry, "team/present", "1")
    present, missing = source_registry.ref("team/present:1"), source_registry.ref("team/missing:1")
    helm = {"app.kubernetes.io/managed-by": "Helm"}
    objects = [_deployment("present", present), _deployment("missing", missing), _deployment("helm", present, helm)]
    escaped = target_registry.host.replace(".", r"\.")
    (tmp_path / "config.yaml").write_text(
        f"target: {{registry: '{target_registry.host}'}}\npolicy: {{imageRegex: '^{escaped}/'}}\n"
        f"registries:\n  '{source_registry.host}': {{insecure: true}}\n  '{target_registry.host}': {{insecure: true}}\n")
    with KubeAPI(objects) as api:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        common = ["--cluster", "--kubeconfig", kubeconfig, "--config", str(tmp_path / "config.yaml")]
        sync = CliRunner().invoke(main, ["sync", *common])
        assert sync.exit_code == 1, sync.output  # team/missing does not exist at the source
        assert "failed: " in sync.stderr and "team/missing" in sync.stderr

        def images() -> dict[str, str]:
            return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
                    for d in api.objects("Deployment")}

        dry = CliRunner().invoke(main, ["rewrite", *common])
        assert images() == {"present": present, "missing": missing, "helm": present}
        assert "dry run" in dry.stderr and api.requests_for("PATCH")  # the server was asked, with dryRun

        applied = CliRunner().invoke(main, ["rewrite", *common, "--apply"])
        assert images() == {"present": f"{target_registry.host}/127.0.0.1-{source_registry.port}/team/present:1",
                          "missing": missing, "helm": present}, applied.output
        assert "Helm" in applied.stderr
        assert not api.requests_for("PATCH", "/pods")  # pods are never patched
