"""The policy from the cluster's Gatekeeper constraints, or from an Azure Policy assignment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manifests_rewriter.config import parse_config
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import PolicyError
from mirror.cluster.kube import connect
from mirror.cluster.policy_source import (
    DEFINITION_EXCLUDED_NAMESPACES,
    PolicySourceError,
    StrictPolicy,
    policy_from_assignment,
    policy_from_cluster,
    policy_from_constraints,
)
from mirror.cluster.scan import scan_cluster
from tests.support.kubeapi import RESOURCES, KubeAPI, constraint, make_cluster

REGEX = r"^crazureblue\.azurecr\.io/.+$"


def client_for(api: KubeAPI, tmp_path: Any) -> Any:
    return connect(str(api.write_kubeconfig(tmp_path / "kubeconfig")))


def comparable(findings: list[Any]) -> list[tuple[Any, ...]]:
    return [(f.kind, f.namespace, f.name, f.container, f.image, f.target, f.digest, f.path) for f in findings]


def test_policy_from_cluster_findings_equal_those_from_config(tmp_path: Any) -> None:
    cluster = make_cluster(240, 5, constraint_regex=REGEX, enforcement_action="dryrun")
    config = parse_config({"target": {"registry": "crazureblue.azurecr.io"},
                           "policy": {"imageRegex": REGEX,
                                      "excludedNamespaces": ["kube-system", "gatekeeper-system", "azure-arc"],
                                      "excludedContainers": []}}, "config.yaml")
    with KubeAPI(cluster.objects) as api:
        client = client_for(api, tmp_path)
        from_cluster = policy_from_cluster(client)
        assert from_cluster.origin == ("cluster constraint azurepolicy-k8sazurev2containerallowedimag-"
                                       "8b5c1d0f6a2e4b3c9d7e (enforcementAction dryrun)")
        assert (from_cluster.image_regex, from_cluster.excluded_namespaces, from_cluster.excluded_containers) == (
            config.policy.image_regex, config.policy.excluded_namespaces, config.policy.excluded_containers)

        def to_target(ref):  # type: ignore[no-untyped-def]
            return target_for(ref, config.target_registry, config.naming)

        live = scan_cluster(client, from_cluster, to_target=to_target)
        configured = scan_cluster(client, config.policy, to_target=to_target)
    assert live.findings and comparable(live.findings) == comparable(configured.findings)
    assert all("cluster constraint" in f.reason for f in live.findings)


def test_enforcement_action_defaults_to_deny_and_excluded_containers(tmp_path: Any) -> None:
    c = constraint("allowed-images", REGEX, excluded_namespaces=["kube-*"], excluded_containers=["istio-proxy"],
                   enforcement_action=None)
    with KubeAPI([c]) as api:
        policy = policy_from_cluster(client_for(api, tmp_path))
    assert policy.origin == "cluster constraint allowed-images (enforcementAction deny)"
    assert policy.excluded_containers == ("istio-proxy",) and policy.namespace_excluded("kube-public")
    assert not policy.refuses("nginx:1", container="istio-proxy")


def test_several_constraints_each_apply_with_their_own_match() -> None:
    """Admission runs every constraint: a pod must pass each, each with its own match block
    (b only checks namespace shop). Before issue 13 the exclusions were intersected instead."""
    notes: list[str] = []
    a = constraint("a", REGEX, excluded_namespaces=["kube-system", "monitoring"], excluded_containers=["x", "y"],
                   enforcement_action="deny")
    b = constraint("b", REGEX, excluded_namespaces=["kube-system"], excluded_containers=["y"],
                   enforcement_action="dryrun")
    b["spec"]["match"]["namespaces"] = ["shop"]
    policy = policy_from_constraints([b, a], notes)
    assert isinstance(policy, StrictPolicy) and [p.name for p in policy.parts] == [
        "cluster constraint a", "cluster constraint b"]
    assert policy.origin == ("cluster constraints a (enforcementAction deny), b (enforcementAction dryrun): "
                             "a pod must pass each")
    assert not policy.refuses("nginx:1", namespace="monitoring")  # a excludes it, b checks only shop
    in_shop = policy.decide("nginx:1", namespace="shop", container="x")  # a excludes x, b does not
    assert in_shop.finding and not in_shop.refused and in_shop.assignment == "cluster constraint b"
    assert "would be reported, not refused" in in_shop.reason()
    elsewhere = policy.decide("nginx:1", namespace="dev", container="web")
    assert elsewhere.refused and elsewhere.assignment == "cluster constraint a"
    assert [(v.assignment, v.parameter) for v in elsewhere.parts] == [
        ("cluster constraint a", "imageRegex"), ("cluster constraint b", "namespaces")]
    assert not policy.refuses("nginx:1", container="y") and not policy.refuses("nginx:1", namespace="kube-system")
    assert not policy.refuses("crazureblue.azurecr.io/app:1", namespace="shop")
    unknown = policy.decide("nginx:1", container="x")  # no namespace known: b is assumed to apply
    assert unknown.finding and "assumed to be one of namespaces" in (unknown.assumed or "")
    # identical constraints (e.g. assigned twice) decide alike
    same = policy_from_constraints([constraint("c1", REGEX, excluded_namespaces=["kube-system"]),
                                    constraint("c2", REGEX, excluded_namespaces=["kube-system"])])
    assert same.origin.startswith("cluster constraints c1 (enforcementAction deny), c2")
    assert same.refuses("nginx", namespace="shop") and not same.refuses("nginx", namespace="kube-system")


def test_several_constraints_different_regexes_must_all_match() -> None:
    a = constraint("a", r"^crazureblue\.azurecr\.io/", excluded_namespaces=["kube-system"])
    b = constraint("b", r"^[^/]+/team/", excluded_namespaces=["kube-system", "sandbox"])
    policy = policy_from_constraints([a, b])
    assert isinstance(policy, StrictPolicy)
    assert not policy.refuses("crazureblue.azurecr.io/team/app:1")
    assert policy.refuses("crazureblue.azurecr.io/other/app:1")  # b refuses
    assert policy.refuses("docker.io/team/app:1")  # a refuses
    assert not policy.refuses("nginx", namespace="kube-system")  # both exclude it
    assert not policy.refuses("crazureblue.azurecr.io/other/app:1", namespace="sandbox")  # b excludes sandbox
    assert policy.refuses("docker.io/other/app:1", namespace="sandbox")  # a still applies there
    assert not policy.refuses("docker.io/x/app:1", namespace="kube-system")
    assert policy.namespace_excluded("kube-system") and not policy.namespace_excluded("sandbox")


def test_no_constraint_missing_kind_and_bad_constraints_are_one_line_errors(tmp_path: Any) -> None:
    with KubeAPI([]) as api, pytest.raises(PolicySourceError, match="no K8sAzureV2ContainerAllowedImages constraint"):
        policy_from_cluster(client_for(api, tmp_path))

    class NoGatekeeper(KubeAPI):
        def _parse_resource_path(self, parts: list[str]) -> Any:
            resource = super()._parse_resource_path(parts)
            if resource[0].custom:
                from tests.support.kubeapi import APIError

                raise APIError(404, "NotFound", "the server could not find the requested resource")
            return resource

    with NoGatekeeper([]) as api, pytest.raises(PolicySourceError, match="not installed") as info:
        policy_from_cluster(client_for(api, tmp_path))
    assert "\n" not in str(info.value) and isinstance(info.value, PolicyError)
    with pytest.raises(PolicySourceError, match="has no spec.parameters.imageRegex"):
        policy_from_constraints([{"metadata": {"name": "c"}, "spec": {"parameters": {}}}])
    with pytest.raises(PolicySourceError, match="constraint c: imageRegex"):
        policy_from_constraints([constraint("c", "(unclosed")])
    bad = constraint("c", REGEX)
    bad["spec"]["match"]["excludedNamespaces"] = "kube-system"
    with pytest.raises(PolicySourceError, match="excludedNamespaces: must be a list of strings"):
        policy_from_constraints([bad])
    assert any(r.kind == "K8sAzureV2ContainerAllowedImages" for r in RESOURCES)


AZ_SHOW = {
    "id": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks/"
          "providers/Microsoft.Authorization/policyAssignments/allowed-images",
    "name": "allowed-images",
    "properties": {
        "displayName": "Kubernetes cluster containers should only use allowed images",
        "policyDefinitionId": "/providers/Microsoft.Authorization/policyDefinitions/febd0533-8e55-448f-b837-bd0e06f16469",
        "parameters": {
            "allowedContainerImagesRegex": {"value": REGEX},
            "excludedNamespaces": {"value": ["kube-system", "gatekeeper-system", "azure-arc"]},
            "excludedContainers": {"value": ["istio-proxy"]},
            "effect": {"value": "Audit"},
        },
    },
}


@pytest.mark.parametrize("shape", ["az-show", "flattened", "plain"])
def test_policy_from_assignment_shapes(tmp_path: Any, shape: str) -> None:
    params = AZ_SHOW["properties"]["parameters"]  # type: ignore[index]
    data: dict[str, Any] = {
        "az-show": AZ_SHOW,
        "flattened": {"name": "allowed-images", "parameters": params},
        "plain": {"parameters": {k: v["value"] for k, v in params.items()}},
    }[shape]
    path = tmp_path / "assignment.json"
    path.write_text(json.dumps(data))
    policy = policy_from_assignment(path)
    assert policy.image_regex == REGEX
    assert policy.excluded_namespaces == ("kube-system", "gatekeeper-system", "azure-arc")
    assert policy.excluded_containers == ("istio-proxy",)
    assert policy.origin.startswith(f"Azure Policy assignment {path}")
    assert "effect Audit" in policy.origin


def test_assignment_without_excluded_namespaces_uses_the_definition_default(tmp_path: Any) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"properties": {"parameters": {"allowedContainerImagesRegex": {"value": REGEX}}}}))
    notes: list[str] = []
    policy = policy_from_assignment(path, notes=notes)
    assert policy.excluded_namespaces == DEFINITION_EXCLUDED_NAMESPACES
    assert notes and "default" in notes[0]


@pytest.mark.parametrize(("content", "message"), [
    (None, "policy assignment file not found"),
    ("{not json", "not valid JSON"),
    ("[]", "must be a JSON object"),
    (json.dumps({"properties": {"parameters": {"effect": {"value": "Deny"}}}}), "no allowedContainerImagesRegex"),
    (json.dumps({"parameters": {"allowedContainerImagesRegex": {"value": "(bad"}}}), "not a valid RE2"),
    (json.dumps({"parameters": {"allowedContainerImagesRegex": "x", "excludedContainers": "y"}}),
     "excludedContainers: must be a list"),
])
def test_assignment_errors_are_one_line(tmp_path: Any, content: str | None, message: str) -> None:
    path = tmp_path / "assignment.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PolicySourceError, match=message) as info:
        policy_from_assignment(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Gatekeeper's match fields and its own exemptions, on a served cluster (issue 13)


def _cluster(extra: list[dict[str, Any]], constraints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from tests.support.kubeapi import deployment, namespace_object, pods_for

    labels = {"shop": {"env": "prod"}, "legacy": {"env": "prod"}, "lab": {"admission.gatekeeper.sh/ignore": "yes"},
              "ops": {"control-plane": "true"}, "dev": {"env": "dev"}}
    objects: list[dict[str, Any]] = []
    for name, extra_labels in labels.items():
        ns = namespace_object(name)
        ns["metadata"]["labels"].update(extra_labels)
        objects.append(ns)
        for app in ("web", "api"):
            d = deployment(f"{app}", name, [{"name": app, "image": f"nginx:1.{len(app)}"}])
            objects += [d, *pods_for(d, 1)]
    return [*objects, *extra, *constraints]


def _found(tmp_path: Any, objects: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], list[str], Any]:
    notes: list[str] = []
    with KubeAPI(objects) as api:
        client = client_for(api, tmp_path)
        policy = policy_from_cluster(client, notes=notes)
        result = scan_cluster(client, policy)
    return {(f.namespace, f.name) for f in result.findings}, notes, result


ALL = {(ns, app) for ns in ("shop", "legacy", "lab", "ops", "dev") for app in ("web", "api")}


def test_gatekeeper_config_exempts_namespaces_per_process(tmp_path: Any) -> None:
    config = {"apiVersion": "config.gatekeeper.sh/v1alpha1", "kind": "Config",
              "metadata": {"name": "config", "namespace": "gatekeeper-system"},
              "spec": {"match": [{"excludedNamespaces": ["legacy"], "processes": ["webhook"]},
                                 {"excludedNamespaces": ["de*"], "processes": ["*"]}]}}
    ignored = {"apiVersion": "config.gatekeeper.sh/v1alpha1", "kind": "Config",
               "metadata": {"name": "not-read", "namespace": "gatekeeper-system"},  # only "config" counts
               "spec": {"match": [{"excludedNamespaces": ["shop"], "processes": ["*"]}]}}
    deny, _, result = _found(tmp_path, _cluster([config, ignored], [constraint("c", REGEX)]))
    # legacy: webhook-exempt; dev: exempt for every process; lab: admission.gatekeeper.sh/ignore (default webhook)
    assert deny == ALL - {(n, a) for n in ("legacy", "dev", "lab") for a in ("web", "api")}
    assert all(f.refused for f in result.findings)
    dryrun, _, _ = _found(tmp_path, _cluster([config], [constraint("c", REGEX, enforcement_action="dryrun")]))
    # dryrun is reported by audit: the webhook's exemptions (legacy, the ignore label) do not hide it
    assert dryrun == ALL - {("dev", "web"), ("dev", "api")}


def test_the_webhooks_own_namespace_selector_is_read(tmp_path: Any) -> None:
    webhook = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": "gatekeeper-validating-webhook-configuration"},
               "webhooks": [{"name": "validation.gatekeeper.sh", "namespaceSelector": {"matchExpressions": [
                   {"key": "control-plane", "operator": "DoesNotExist"}]}},
                            {"name": "check-ignore-label.gatekeeper.sh", "namespaceSelector": {}}]}
    found, _, _ = _found(tmp_path, _cluster([webhook], [constraint("c", REGEX)]))
    assert found == ALL - {("ops", "web"), ("ops", "api")}  # lab's label no longer matters: this selector does


def test_match_label_and_namespace_selectors_kinds_and_scoped_actions(tmp_path: Any) -> None:
    web_in_prod = constraint("c", REGEX)
    web_in_prod["spec"]["match"]["labelSelector"] = {"matchLabels": {"app": "web"}}
    web_in_prod["spec"]["match"]["namespaceSelector"] = {"matchLabels": {"env": "prod"}}
    found, _, result = _found(tmp_path, _cluster([], [web_in_prod]))
    assert found == {("shop", "web"), ("legacy", "web")}
    assert all(f.parameter == "imageRegex" and f.assignment == "cluster constraint c" for f in result.findings)

    deployments_only = constraint("d", REGEX)
    deployments_only["spec"]["match"]["kinds"] = [{"apiGroups": ["apps"], "kinds": ["Deployment"]}]
    found, notes, _ = _found(tmp_path, _cluster([], [deployments_only]))
    assert found == set() and any("do not select Pods" in n for n in notes)

    scoped = constraint("s", REGEX, enforcement_action="scoped")
    scoped["spec"]["scopedEnforcementActions"] = [
        {"action": "warn", "enforcementPoints": [{"name": "validation.gatekeeper.sh"}]},
        {"action": "deny", "enforcementPoints": [{"name": "gator.gatekeeper.sh"}]}]
    found, _, result = _found(tmp_path, _cluster([], [scoped]))
    assert found == ALL - {("lab", "web"), ("lab", "api")}
    assert {(f.effect, f.refused) for f in result.findings} == {("warn", False)}
