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

    def strip(data: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in f.items() if k != "reason"} for f in data["findings"]]

    assert configured["findings"] and strip(configured) == strip(from_cluster)
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
    assert result.exit_code == 2 and "cannot reach" in result.output and "Traceback" not in result.output
