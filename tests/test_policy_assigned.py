"""The policy as assigned (issue 13): every parameter of the definition in manifests, the config's
policy: section, --policy-file with assignments, initiatives and exemptions, the pod-template
labels the locator reports, and which assignment and parameter decided, in every output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from manifests_rewriter.config import ConfigError, parse_config
from manifests_rewriter.locate import locate
from manifests_rewriter.policy import LabelSelector, Policy, PolicyError, pod_labels, wildcard_matches
from mirror.azure.assignments import DEFINITION_ID, PolicySourceError, policy_from_documents
from mirror.cli import main

R = r"^crazureblue\.azurecr\.io/.+$"
SUB = "/subscriptions/00000000-0000-4000-8000-0000000000a1"

# The issue's scenario: the assignment covers only prod and payments-*, and pods labelled policy=enforced.
ASSIGNMENT = {
    "id": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/allowed-images",
    "name": "allowed-images",
    "type": "Microsoft.Authorization/policyAssignments",
    "properties": {
        "displayName": "Kubernetes cluster containers should only use allowed images",
        "policyDefinitionId": DEFINITION_ID,
        "scope": SUB,
        "enforcementMode": "Default",
        "parameters": {
            "allowedContainerImagesRegex": {"value": R},
            "namespaces": {"value": ["prod", "payments-*"]},
            "excludedNamespaces": {"value": ["payments-sandbox"]},
            "labelSelector": {"value": {"matchExpressions": [{"key": "policy", "operator": "NotIn",
                                                              "values": ["exempt"]}]}},
            "excludedContainers": {"value": ["istio-proxy"]},
            "effect": {"value": "Deny"},
        },
    },
}


def workload(kind: str, namespace: str, labels: str, image: str = "nginx:1.27") -> str:
    template = f"""    metadata:
      labels: {labels}
    spec:
      containers:
        - name: app
          image: {image}
        - name: istio-proxy
          image: docker.io/istio/proxyv2:1.22.0
"""
    if kind == "Pod":
        return f"""apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: {namespace}
  labels: {labels}
spec:
  containers:
    - name: app
      image: {image}
"""
    if kind == "CronJob":
        return f"""apiVersion: batch/v1
kind: CronJob
metadata: {{name: app, namespace: {namespace}}}
spec:
  schedule: "@daily"
  jobTemplate:
    spec:
      template:
{chr(10).join('    ' + line for line in template.splitlines())}
"""
    return f"""apiVersion: apps/v1
kind: {kind}
metadata: {{name: app, namespace: {namespace}}}
spec:
  template:
{template}"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    k8s = tmp_path / "k8s"
    k8s.mkdir()
    files = {
        "dev.yaml": workload("Deployment", "dev", "{app: web}"),
        "staging.yaml": workload("Deployment", "staging", "{app: web}"),
        "prod.yaml": workload("Deployment", "prod", "{app: web}"),
        "prod-exempt.yaml": workload("Deployment", "prod", "{app: web, policy: exempt}"),
        "payments.yaml": workload("StatefulSet", "payments-eu", "{app: pay}"),
        "payments-sandbox.yaml": workload("Deployment", "payments-sandbox", "{app: pay}"),
        "kube-system.yaml": workload("DaemonSet", "kube-system", "{app: agent}"),
        "job.yaml": workload("CronJob", "payments-us", "{app: batch}"),
        "pod.yaml": workload("Pod", "prod", "{app: solo}"),
    }
    for name, text in files.items():
        (k8s / name).write_text(text)
    (tmp_path / "assignment.json").write_text(json.dumps(ASSIGNMENT))
    (tmp_path / "config.yaml").write_text("target: {registry: crazureblue.azurecr.io}\n")
    return tmp_path


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_issue_scenario_only_the_assigned_namespaces_and_labels_are_findings(tree: Path) -> None:
    result = run("scan", str(tree / "k8s"), "--config", str(tree / "config.yaml"), "--policy-file",
                 str(tree / "assignment.json"), "--format", "json")
    assert result.exit_code == 1, result.output
    findings = json.loads(result.stdout)["findings"]
    where = sorted((Path(f["file"]).name, f["container"]) for f in findings)
    # dev/staging: not in namespaces; prod-exempt: labelSelector; payments-sandbox: excluded;
    # kube-system: always excluded; istio-proxy: excludedContainers
    assert where == [("job.yaml", "app"), ("payments.yaml", "app"), ("pod.yaml", "app"), ("prod.yaml", "app")]
    for f in findings:
        assert (f["assignment"], f["parameter"], f["effect"], f["refused"]) == (
            "assignment allowed-images", "allowedContainerImagesRegex", "deny", True)
        assert "refused at admission" in f["reason"]


def test_table_and_sarif_say_which_assignment_and_parameter_decided(tree: Path) -> None:
    audit = json.loads(json.dumps(ASSIGNMENT))
    audit["properties"]["parameters"]["effect"]["value"] = "Audit"
    (tree / "audit.json").write_text(json.dumps(audit))
    table = run("scan", str(tree / "k8s" / "prod.yaml"), "--config", str(tree / "config.yaml"),
                "--policy-file", str(tree / "audit.json"))
    assert table.exit_code == 1
    line = next(x for x in table.stdout.splitlines() if "nginx:1.27" in x)
    assert "assignment allowed-images: allowedContainerImagesRegex" in line
    assert "would be reported, not refused (effect Audit)" in line
    sarif = run("scan", str(tree / "k8s" / "prod.yaml"), "--config", str(tree / "config.yaml"),
                "--policy-file", str(tree / "audit.json"), "--format", "sarif")
    [result] = json.loads(sarif.stdout)["runs"][0]["results"]
    assert result["level"] == "warning" and result["properties"] == {
        "assignment": "assignment allowed-images", "parameter": "allowedContainerImagesRegex", "effect": "audit",
        "refused": False}
    assert "would be reported, not refused" in result["message"]["text"]


def test_config_policy_accepts_namespaces_and_label_selector(tree: Path) -> None:
    (tree / "config.yaml").write_text(f"""target: {{registry: crazureblue.azurecr.io}}
policy:
  imageRegex: '{R}'
  namespaces: [prod, payments-*]
  excludedNamespaces: [payments-sandbox]
  labelSelector:
    matchExpressions: [{{key: policy, operator: NotIn, values: [exempt]}}]
  excludedContainers: [istio-proxy]
""")
    result = run("scan", str(tree / "k8s"), "--config", str(tree / "config.yaml"), "--format", "json")
    findings = json.loads(result.stdout)["findings"]
    assert sorted((Path(f["file"]).name, f["container"]) for f in findings) == [
        ("job.yaml", "app"), ("payments.yaml", "app"), ("pod.yaml", "app"), ("prod.yaml", "app")]
    assert {f["assignment"] for f in findings} == {"config"}


@pytest.mark.parametrize(("policy", "message"), [
    ({"imageRegex": "^a", "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
     "operator 'Has' is not one of In, NotIn, Exists, DoesNotExist"),
    ({"imageRegex": "^a", "labelSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "operator In needs values"),
    ({"imageRegex": "^a", "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                                                  "values": ["x"]}]}}, "takes no values"),
    ({"imageRegex": "^a", "labelSelector": {"matchLabels": {"bad key!": "x"}}}, "not a valid label key"),
    ({"imageRegex": "^a", "labelSelector": {"matchLabels": {"a": "x y"}}}, "not a valid label value"),
    ({"imageRegex": "^a", "labelSelector": {"selector": {}}}, "unknown key 'selector'"),
    ({"imageRegex": "^a", "namespaces": "prod"}, "namespaces: must be list"),
])
def test_config_policy_errors_name_the_key(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"target": {"registry": "r.example"}, "policy": policy}, "c.yaml")
    assert "c.yaml" in str(info.value) and "\n" not in str(info.value)


def test_config_policy_always_excludes_the_system_namespaces() -> None:
    config = parse_config({"target": {"registry": "r.example"},
                           "policy": {"imageRegex": "^r\\.example/", "excludedNamespaces": ["dev"]}}, "c.yaml")
    policy = config.require_policy()
    verdict = policy.decide("nginx", namespace="kube-system")
    assert not verdict.finding and verdict.parameter == "system namespace"
    assert policy.decide("nginx", namespace="kube-public").finding  # not one of the three


# ----------------------------------------------------------------------------- the locator's labels


def test_pod_template_labels_are_reported_for_every_workload_shape() -> None:
    text = "\n---\n".join([
        workload("Deployment", "a", "{app: web, tier: front}"),
        workload("CronJob", "a", "{app: batch}"),
        workload("Pod", "a", "{app: solo}"),
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, labels: {x: '1'}}\n"
        "  spec: {containers: [{name: c, image: busybox}]}\n",
        "apiVersion: example.com/v1\nkind: Thing\nmetadata: {name: t, labels: {own: 'yes'}}\n"
        "spec: {containers: [{name: c, image: busybox}]}\n",  # a CR's own labels are not a pod's
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n"
        "      containers: [{name: c, image: busybox}]\n",  # no labels at all: an empty set
        "base: &labels {app: shared}\nkind: Deployment\nspec:\n  template:\n    metadata: {labels: *labels}\n"
        "    spec: {containers: [{name: c, image: busybox}]}\n",
    ])
    labels = [(f.document, f.container, dict(f.labels) if f.labels is not None else None)
              for f in locate(text) if f.source == "pod"]
    assert labels == [
        (0, "app", {"app": "web", "tier": "front"}), (0, "istio-proxy", {"app": "web", "tier": "front"}),
        (1, "app", {"app": "batch"}), (1, "istio-proxy", {"app": "batch"}),
        (2, "app", {"app": "solo"}),
        (3, "c", {"x": "1"}),
        (4, "c", None),
        (5, "c", {}),
        (6, "c", {"app": "shared"}),
    ]


def test_controller_labels_count_with_unknown_values() -> None:
    deployment = pod_labels({"app": "web"}, "Deployment")
    assert deployment == {"pod-template-hash": None, "app": "web"}
    assert pod_labels({"app": "x"}, "Job", "migrate")["job-name"] == "migrate"  # type: ignore[index]
    exists = LabelSelector.parse({"matchExpressions": [{"key": "pod-template-hash", "operator": "Exists"}]}, "t")
    assert exists.matches(deployment) is True
    assert exists.matches(pod_labels({"app": "web"}, "Pod")) is False
    value = LabelSelector.parse({"matchLabels": {"pod-template-hash": "abc"}}, "t")
    assert value.matches(deployment) is None  # depends on a generated value: unknown
    policy = Policy("^r/", label_selector=value, label="a")
    verdict = policy.decide("nginx", namespace="x", labels={"app": "web"}, kind="Deployment")
    assert verdict.finding and "assumed to match" in (verdict.assumed or "")
    assert not policy.decide("nginx", namespace="x", labels={"app": "web"}, kind="Pod").finding


@pytest.mark.parametrize(("pattern", "candidate", "matches"), [
    ("kube-*", "kube-system", True), ("*-system", "gatekeeper-system", True), ("*system*", "system-kube", True),
    ("kube-system", "kube-system", True), ("kube-system", "kube-systems", False), ("*", "anything", True),
    ("*-system", "system", False), ("kube-*", "kube", False), ("**", "x", True), ("**a**", "xax", False),
    ("**a**", "x*a*x", True),
])
def test_wildcards_are_gatekeepers(pattern: str, candidate: str, matches: bool) -> None:
    assert wildcard_matches(pattern, candidate) is matches


def test_unknown_namespace_and_labels_are_assumed_to_apply_and_said() -> None:
    policy = Policy("^r/", namespaces=("prod",), label_selector=LabelSelector.parse({"matchLabels": {"a": "b"}}, "t"),
                    label="a")
    verdict = policy.decide("nginx")  # a Helm value: no namespace, no labels
    assert verdict.finding
    assert "assumed to be one of namespaces" in (verdict.assumed or "")
    assert "labelSelector a=b assumed to match" in (verdict.assumed or "")
    assert "assumed:" in verdict.reason()


# ----------------------------------------------------------------------------- --policy-file shapes


def az_flattened(resource: dict[str, Any]) -> dict[str, Any]:
    """What `az policy assignment show/list` prints: properties flattened into the object."""
    return {k: v for k, v in resource.items() if k != "properties"} | resource["properties"]


def test_a_list_of_assignments_as_az_prints_it(tmp_path: Path) -> None:
    other = {"id": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/tags", "name": "tags",
             "properties": {"policyDefinitionId": "/providers/Microsoft.Authorization/policyDefinitions/other"}}
    audit = json.loads(json.dumps(ASSIGNMENT))
    audit["name"], audit["id"] = "wide", audit["id"].replace("allowed-images", "wide")
    audit["properties"]["parameters"] = {"allowedContainerImagesRegex": {"value": r"^mcr\.microsoft\.com/"},
                                         "effect": {"value": "Audit"}}
    notes: list[str] = []
    policy = policy_from_documents([[az_flattened(ASSIGNMENT), az_flattened(other), az_flattened(audit)]], "list.json",
                                   notes)
    assert [p.name for p in policy.parts] == ["assignment allowed-images", "assignment wide"]
    assert any("1 assignment(s) of other policy definitions ignored" in n for n in notes)
    verdict = policy.decide("mcr.microsoft.com/x:1", namespace="prod", labels={}, kind="Pod")
    assert verdict.refused and verdict.assignment == "assignment allowed-images"
    dev = policy.decide("crazureblue.azurecr.io/x:1", namespace="dev", labels={}, kind="Pod")
    assert dev.finding and not dev.refused and dev.assignment == "assignment wide"
    assert [(d.assignment, d.parameter) for d in dev.parts] == [
        ("assignment allowed-images", "namespaces"), ("assignment wide", "allowedContainerImagesRegex")]
    page = policy_from_documents([{"value": [ASSIGNMENT]}], "page.json")  # an ARM list page
    assert page.name == "assignment allowed-images"


def test_notes_say_what_was_assumed_or_left_out() -> None:
    notes: list[str] = []
    unknown_set = {"id": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/mcsb", "name": "mcsb",
                   "properties": {"policyDefinitionId": "/providers/Microsoft.Authorization/policySetDefinitions/1f3a"}}
    not_enforced = json.loads(json.dumps(ASSIGNMENT))
    not_enforced["properties"]["enforcementMode"] = "DoNotEnforce"
    not_enforced["properties"]["notScopes"] = [f"{SUB}/resourceGroups/sandbox"]
    policy = policy_from_documents([[not_enforced, unknown_set]], "mixed.json", notes)
    assert policy.effect == "audit"
    assert any("DoNotEnforce" in n for n in notes)
    assert any("initiative 1f3a, whose definition is not in mixed.json" in n and "az policy set-definition show"
               in n for n in notes)
    assert any("notScopes" in n for n in notes)


@pytest.mark.parametrize(("documents", "message"), [
    ([{"properties": {"policyDefinitionId": "/providers/Microsoft.Authorization/policyDefinitions/other"}}],
     "no assignment of the allowed-images definition"),
    ([{"properties": {"policyDefinitionId": DEFINITION_ID, "parameters": {
        "allowedContainerImagesRegex": {"value": R}, "effect": {"value": "Block"}}}}], "effect 'Block'"),
    ([{"properties": {"policyDefinitionId": DEFINITION_ID, "parameters": {
        "allowedContainerImagesRegex": {"value": R}, "labelSelector": {"value": {"matchLabels": {"a": 1}}}}}}],
     "labelSelector.matchLabels.a: the value must be a string"),
    ([{"id": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/x",
       "properties": {"policyDefinitionId": "/providers/Microsoft.Authorization/policySetDefinitions/s"}},
      {"id": "/providers/Microsoft.Authorization/policySetDefinitions/s", "properties": {
          "policyDefinitions": [{"policyDefinitionId": DEFINITION_ID, "policyDefinitionReferenceId": "r",
                                 "parameters": {"allowedContainerImagesRegex": {
                                     "value": "[concat('^', parameters('x'))]"}}}]}}],
     "only \\[parameters\\('name'\\)\\]"),
    (["text"], "expected JSON objects"),
])
def test_assignment_errors_are_one_line(documents: list[Any], message: str) -> None:
    with pytest.raises(PolicySourceError, match=message) as info:
        policy_from_documents(documents, "in.json")
    assert "\n" not in str(info.value) and "in.json" in str(info.value)
    assert isinstance(info.value, PolicyError)


def test_an_escaped_bracket_is_a_literal_and_source_is_applied_when_given() -> None:
    notes: list[str] = []
    documents = [
        {"id": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/x",
         "properties": {"policyDefinitionId": "/providers/Microsoft.Authorization/policySetDefinitions/s"}},
        {"id": "/providers/Microsoft.Authorization/policySetDefinitions/s", "properties": {"policyDefinitions": [
            {"policyDefinitionId": DEFINITION_ID, "policyDefinitionReferenceId": "r",
             "parameters": {"allowedContainerImagesRegex": {"value": "[[a-z]+\\.example/"},
                            "source": {"value": "Generated"}}}]}},
    ]
    policy = policy_from_documents(documents, "in.json", notes)
    assert policy.image_regex == "[a-z]+\\.example/" and policy.source == "Generated"
    assert any("source='Generated' (not in the published definition 9.2.0)" in n for n in notes)
    assert not policy.decide("nginx", namespace="a", kind="Pod").finding  # Generated: pods are not checked
    assert policy.decide("nginx", namespace="a", kind="Deployment").finding  # an expanded workload is
