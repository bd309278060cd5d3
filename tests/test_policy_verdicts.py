"""Verdicts per container, acr-mirror against Gatekeeper, on cases built from the real definition
("Kubernetes cluster containers should only use allowed images", febd0533-…, v9.2.0) and its
real constraint template (tests/fixtures/azure; see SOURCES.md).

Each case gives what Azure holds (assignments, initiatives, exemptions: the JSON fed to
`--policy-file`), the pod admission sees, and what Gatekeeper decides. Gatekeeper's side is
built in two halves, neither of them acr-mirror's code:

- the constraints the Azure Policy add-on creates: the definition's `policyRule.then.details`
  with `[parameters('...')]` substituted (the test does it from the fixture), one per
  assignment or initiative reference in force (none for a waived one), and whether each one's
  `match` selects the pod (`matched`, written by hand from Gatekeeper's
  pkg/mutation/match/match.go and pkg/wildcard/wildcard.go; the comment on each case cites the
  rule). The definition's "always excluded by design" namespaces count as not matched;
- which containers the template reports: the real Rego, evaluated with regorus (a Rego
  interpreter) when it is installed; `expected` (by hand) otherwise, and the test checks the
  two agree when regorus is there.

acr-mirror must give, per container, the same verdict (refused / reported / allowed) from the
Azure JSON (the --policy-file path) and from the constraints (the --policy-from-cluster path).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from manifests_rewriter.policy import AUDIT, DENY, Policy
from mirror.azure.assignments import DEFINITION_DEFAULTS, DEFINITION_ID, policy_from_documents
from mirror.cluster.policy_source import KIND, policy_from_constraints

FIXTURES = Path(__file__).parent / "fixtures" / "azure"
DEFINITION = json.loads((FIXTURES / "ContainerAllowedImages.json").read_text())
TEMPLATE = yaml.safe_load((FIXTURES / "k8sazurecontainerallowedimages.template.yaml").read_text())
REGO = TEMPLATE["spec"]["targets"][0]["rego"]

R = r"^crazureblue\.azurecr\.io/.+$"
GOOD, BAD, INIT = "crazureblue.azurecr.io/app:1", "nginx:1.27", "busybox:1.36"
MCR = "mcr.microsoft.com/dotnet/runtime:8.0"
SUB = "/subscriptions/00000000-0000-4000-8000-0000000000a1"


# ----------------------------------------------------------------------------- the Azure side


def assignment(name: str, params: dict[str, Any], *, definition: str = DEFINITION_ID,
               mode: str = "Default", overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An assignment as ARM (and `az policy assignment show` before flattening) writes it."""
    props: dict[str, Any] = {"displayName": name, "policyDefinitionId": definition, "scope": SUB,
                             "notScopes": [], "enforcementMode": mode,
                             "parameters": {k: {"value": v} for k, v in params.items()}}
    if overrides:
        props["overrides"] = overrides
    return {"id": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/{name}", "name": name,
            "type": "Microsoft.Authorization/policyAssignments", "properties": props}


def initiative(name: str, references: list[dict[str, Any]], parameters: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"/providers/Microsoft.Authorization/policySetDefinitions/{name}", "name": name,
            "type": "Microsoft.Authorization/policySetDefinitions",
            "properties": {"displayName": name, "policyType": "Custom", "parameters": parameters,
                           "policyDefinitions": [{"policyDefinitionId": DEFINITION_ID, **r} for r in references]}}


def exemption(name: str, assignment_name: str, *, category: str = "Waiver", references: list[str] | None = None,
              expires: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "policyAssignmentId": f"{SUB}/providers/Microsoft.Authorization/policyAssignments/{assignment_name}",
        "exemptionCategory": category, "policyDefinitionReferenceIds": references or []}
    if expires:
        props["expiresOn"] = expires
    return {"id": f"{SUB}/providers/Microsoft.Authorization/policyExemptions/{name}", "name": name,
            "type": "Microsoft.Authorization/policyExemptions", "properties": props}


# ----------------------------------------------------------------------------- the Gatekeeper side


def _substitute(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"\[parameters\('([^']+)'\)\]", value)
        return values[match.group(1)] if match else value
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    return value


def constraint_of(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """What the add-on makes of one assignment: the definition's details, parameters substituted
    (defaults from the definition itself)."""
    values = {k: v["defaultValue"] for k, v in DEFINITION["properties"]["parameters"].items() if "defaultValue" in v}
    values.update(params)
    details = _substitute(DEFINITION["properties"]["policyRule"]["then"]["details"], values)
    effect = _substitute(DEFINITION["properties"]["policyRule"]["then"]["effect"], values)
    match: dict[str, Any] = {"kinds": [{"apiGroups": details["apiGroups"], "kinds": details["kinds"]}]}
    for key in ("excludedNamespaces", "namespaces", "labelSelector"):
        if details.get(key):  # Gatekeeper: an empty list or selector matches everything
            match[key] = details[key]
    return {"apiVersion": "constraints.gatekeeper.sh/v1beta1", "kind": KIND,
            "metadata": {"name": f"azurepolicy-{name}", "labels": {"managed-by": "azure-policy-addon"}},
            "spec": {"enforcementAction": {"deny": "deny", "audit": "dryrun"}[effect.lower()], "match": match,
                     "parameters": details["values"]}}


@dataclass
class Case:
    name: str
    documents: list[dict[str, Any]]  # what Azure holds (the --policy-file input)
    constraints: list[tuple[str, dict[str, Any]]]  # (name, resolved parameters) the add-on creates
    matched: list[bool]  # does each constraint's match select the pod (Gatekeeper's match.go)
    namespace: str
    containers: list[tuple[str, str]]
    expected: dict[str, str]  # container -> refused | reported | allowed
    labels: dict[str, str] = field(default_factory=dict)
    init: list[tuple[str, str]] = field(default_factory=list)


def single(params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A case with one assignment named 'a' (Deny unless params say otherwise)."""
    params = {"allowedContainerImagesRegex": R, **params}
    return {"documents": [assignment("a", params)], "constraints": [("a", params)], **kwargs}


APP = [("web", BAD), ("ok", GOOD)]
REFUSED_WEB = {"web": "refused", "ok": "allowed"}
ALLOWED = {"web": "allowed", "ok": "allowed"}

CASES: list[Case] = [
    # -- defaults and the always-excluded system namespaces
    Case("defaults, an application namespace", **single({}, matched=[True], namespace="shop", containers=APP,
         init=[("setup", INIT)], expected={**REFUSED_WEB, "setup": "refused"})),  # initContainers are checked too
    Case("defaults exclude kube-system", **single({}, matched=[False], namespace="kube-system", containers=APP,
         expected=ALLOWED)),  # default excludedNamespaces
    Case("defaults exclude azure-extensions-usage-system", **single(
        {}, matched=[False], namespace="azure-extensions-usage-system", containers=APP, expected=ALLOWED)),
    *[Case(f"own excludedNamespaces: {ns} is still excluded by design", **single(
        {"excludedNamespaces": ["dev"]}, matched=[False], namespace=ns, containers=APP, expected=ALLOWED))
      for ns in ("kube-system", "gatekeeper-system", "azure-arc")],  # "always excluded by design"
    Case("own excludedNamespaces replace the optional azure-extensions-usage-system", **single(
        {"excludedNamespaces": ["dev"]}, matched=[True], namespace="azure-extensions-usage-system", containers=APP,
        expected=REFUSED_WEB)),  # "optional to remove": only the three are by design
    Case("own excludedNamespaces exclude dev", **single({"excludedNamespaces": ["dev"]}, matched=[False],
         namespace="dev", containers=APP, expected=ALLOWED)),
    # -- namespaces (inclusion) with Gatekeeper's globs (wildcard.go)
    *[Case(f"namespaces prod, payments-*: {ns}", **single(
        {"namespaces": ["prod", "payments-*"]}, matched=[m], namespace=ns, containers=APP,
        expected=REFUSED_WEB if m else ALLOWED))
      for ns, m in (("prod", True), ("payments-eu", True), ("payments-", True), ("dev", False), ("staging", False),
                    ("payments", False), ("production", False))],  # exact, or prefix up to the '*'
    *[Case(f"namespaces *-prod: {ns}", **single({"namespaces": ["*-prod"]}, matched=[m], namespace=ns,
                                                containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for ns, m in (("eu-prod", True), ("prod", False), ("eu-production", False))],  # HasSuffix
    *[Case(f"namespaces *pay*: {ns}", **single({"namespaces": ["*pay*"]}, matched=[m], namespace=ns,
                                               containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for ns, m in (("team-payments", True), ("pay", True), ("team-billing", False))],  # Contains
    Case("namespaces * matches every namespace", **single({"namespaces": ["*"]}, matched=[True], namespace="any",
         containers=APP, expected=REFUSED_WEB)),  # Contains(candidate, "")
    Case("namespaces and excludedNamespaces: excluded wins", **single(
        {"namespaces": ["prod"], "excludedNamespaces": ["prod"]}, matched=[False], namespace="prod",
        containers=APP, expected=ALLOWED)),  # every matcher must pass
    *[Case(f"excludedNamespaces team-*: {ns}", **single(
        {"excludedNamespaces": ["team-*"]}, matched=[m], namespace=ns, containers=APP,
        expected=REFUSED_WEB if m else ALLOWED)) for ns, m in (("team-a", False), ("teams", True))],
    # -- labelSelector against the pod's labels (labels.Selector)
    *[Case(f"matchLabels policy=enforced: {labels}", **single(
        {"labelSelector": {"matchLabels": {"policy": "enforced"}}}, matched=[m], namespace="shop", labels=labels,
        containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for labels, m in (({"policy": "enforced", "app": "web"}, True), ({"app": "web"}, False),
                        ({"policy": "Enforced"}, False))],
    *[Case(f"tier In (frontend,backend): {labels}", **single(
        {"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "backend"]}]}},
        matched=[m], namespace="shop", labels=labels, containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for labels, m in (({"tier": "frontend"}, True), ({"tier": "batch"}, False), ({}, False))],
    *[Case(f"tier NotIn (sandbox): {labels}", **single(
        {"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["sandbox"]}]}},
        matched=[m], namespace="shop", labels=labels, containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for labels, m in (({"tier": "sandbox"}, False), ({}, True), ({"tier": "web"}, True))],  # absent key: NotIn holds
    *[Case(f"team Exists: {labels}", **single(
        {"labelSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}, matched=[m],
        namespace="shop", labels=labels, containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for labels, m in (({"team": ""}, True), ({}, False))],
    *[Case(f"exempt DoesNotExist: {labels}", **single(
        {"labelSelector": {"matchExpressions": [{"key": "exempt", "operator": "DoesNotExist"}]}}, matched=[m],
        namespace="shop", labels=labels, containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for labels, m in (({"exempt": "yes"}, False), ({"app": "web"}, True))],
    *[Case(f"matchLabels and matchExpressions are ANDed: {labels}", **single(
        {"labelSelector": {"matchLabels": {"app": "web"},
                           "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["sandbox"]}]}},
        matched=[m], namespace="shop", labels=labels, containers=APP, expected=REFUSED_WEB if m else ALLOWED))
      for labels, m in (({"app": "web", "tier": "sandbox"}, False), ({"app": "web"}, True), ({"app": "api"}, False))],
    Case("labelSelector {} matches every pod", **single({"labelSelector": {}}, matched=[True], namespace="shop",
         containers=APP, expected=REFUSED_WEB)),  # LabelSelectorAsSelector({}) = Everything
    # -- the template: excludedContainers (exact names, containers and initContainers), the regex
    Case("excludedContainers istio-proxy", **single(
        {"excludedContainers": ["istio-proxy"]}, matched=[True], namespace="shop",
        containers=[("istio-proxy", BAD), ("web", BAD)], init=[("istio-proxy-init", BAD)],
        expected={"istio-proxy": "allowed", "web": "refused", "istio-proxy-init": "refused"})),
    Case("excludedContainers are exact and case-sensitive", **single(
        {"excludedContainers": ["istio-proxy"]}, matched=[True], namespace="shop",
        containers=[("Istio-Proxy", BAD)], init=[("istio-proxy", BAD)],
        expected={"Istio-Proxy": "refused", "istio-proxy": "allowed"})),
    Case("an unanchored regex is a search", **single(
        {"allowedContainerImagesRegex": r"crazureblue\.azurecr\.io/"}, matched=[True], namespace="shop",
        containers=[("sneaky", "evil.example/crazureblue.azurecr.io/x:1"), ("web", BAD)],
        expected={"sneaky": "allowed", "web": "refused"})),
    Case("the image is matched as written, not normalized", **single(
        {"allowedContainerImagesRegex": r"^docker\.io/"}, matched=[True], namespace="shop",
        containers=[("short", "nginx"), ("long", "docker.io/library/nginx")],
        expected={"short": "refused", "long": "allowed"})),
    # -- effects
    Case("effect Audit reports, does not refuse", **single({"effect": "Audit"}, matched=[True], namespace="shop",
         containers=APP, expected={"web": "reported", "ok": "allowed"})),
    Case("effect audit (lower case) is Audit", **single({"effect": "audit"}, matched=[True], namespace="shop",
         containers=APP, expected={"web": "reported", "ok": "allowed"})),
    Case("enforcementMode DoNotEnforce: Deny is reported", documents=[assignment("a", {
        "allowedContainerImagesRegex": R}, mode="DoNotEnforce")], constraints=[("a", {
            "allowedContainerImagesRegex": R, "effect": "Audit"})],  # the add-on: dryrun
        matched=[True], namespace="shop", containers=APP, expected={"web": "reported", "ok": "allowed"}),
    Case("effect Disabled: no constraint", documents=[assignment("a", {"allowedContainerImagesRegex": R,
                                                                       "effect": "Disabled"})],
         constraints=[], matched=[], namespace="shop", containers=APP, expected=ALLOWED),
    # -- several assignments: a pod must pass each
    Case("two assignments: Deny in prod, Audit everywhere with a wider regex (prod)",
         documents=[assignment("prod-only", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]}),
                    assignment("wide", {"allowedContainerImagesRegex": r"^(crazureblue\.azurecr\.io|mcr\.microsoft\.com)/",
                                        "effect": "Audit"})],
         constraints=[("prod-only", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]}),
                      ("wide", {"allowedContainerImagesRegex": r"^(crazureblue\.azurecr\.io|mcr\.microsoft\.com)/",
                                "effect": "Audit"})],
         matched=[True, True], namespace="prod", containers=[("dotnet", MCR), ("web", BAD), ("ok", GOOD)],
         expected={"dotnet": "refused", "web": "refused", "ok": "allowed"}),
    Case("two assignments: Deny in prod, Audit everywhere with a wider regex (dev)",
         documents=[assignment("prod-only", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]}),
                    assignment("wide", {"allowedContainerImagesRegex": r"^(crazureblue\.azurecr\.io|mcr\.microsoft\.com)/",
                                        "effect": "Audit"})],
         constraints=[("prod-only", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]}),
                      ("wide", {"allowedContainerImagesRegex": r"^(crazureblue\.azurecr\.io|mcr\.microsoft\.com)/",
                                "effect": "Audit"})],
         matched=[False, True], namespace="dev", containers=[("dotnet", MCR), ("web", BAD), ("ok", GOOD)],
         expected={"dotnet": "allowed", "web": "reported", "ok": "allowed"}),
    Case("two assignments with their own label selectors",
         documents=[assignment("team-a", {"allowedContainerImagesRegex": R,
                                          "labelSelector": {"matchLabels": {"team": "a"}}}),
                    assignment("team-b", {"allowedContainerImagesRegex": r"^mcr\.microsoft\.com/",
                                          "labelSelector": {"matchLabels": {"team": "b"}}})],
         constraints=[("team-a", {"allowedContainerImagesRegex": R, "labelSelector": {"matchLabels": {"team": "a"}}}),
                      ("team-b", {"allowedContainerImagesRegex": r"^mcr\.microsoft\.com/",
                                  "labelSelector": {"matchLabels": {"team": "b"}}})],
         matched=[True, False], namespace="shop", labels={"team": "a"}, containers=[("dotnet", MCR), ("ok", GOOD)],
         expected={"dotnet": "refused", "ok": "allowed"}),
    # -- initiatives: parameters through [parameters('...')], set defaults, literals, the definition's defaults
    Case("initiative: regex from the assignment, effect from the initiative's default, literal exclusions",
         documents=[assignment("baseline", {"registryRegex": R},
                               definition="/providers/Microsoft.Authorization/policySetDefinitions/k8s-baseline"),
                    initiative("k8s-baseline", [{"policyDefinitionReferenceId": "allowedImages", "parameters": {
                        "allowedContainerImagesRegex": {"value": "[parameters('registryRegex')]"},
                        "effect": {"value": "[parameters('imagesEffect')]"},
                        "excludedNamespaces": {"value": ["legacy"]}}}],
                        {"registryRegex": {"type": "String"},
                         "imagesEffect": {"type": "String", "defaultValue": "Audit"}})],
         constraints=[("baseline-allowedImages", {"allowedContainerImagesRegex": R, "effect": "Audit",
                                                  "excludedNamespaces": ["legacy"]})],
         matched=[True], namespace="shop", containers=APP, expected={"web": "reported", "ok": "allowed"}),
    Case("initiative: its literal excludedNamespaces",
         documents=[assignment("baseline", {"registryRegex": R},
                               definition="/providers/Microsoft.Authorization/policySetDefinitions/k8s-baseline"),
                    initiative("k8s-baseline", [{"policyDefinitionReferenceId": "allowedImages", "parameters": {
                        "allowedContainerImagesRegex": {"value": "[parameters('registryRegex')]"},
                        "excludedNamespaces": {"value": ["legacy"]}}}], {"registryRegex": {"type": "String"}})],
         constraints=[("baseline-allowedImages", {"allowedContainerImagesRegex": R, "excludedNamespaces": ["legacy"]})],
         matched=[False], namespace="legacy", containers=APP, expected=ALLOWED),
    Case("initiative with the definition twice: Deny in prod, Audit elsewhere (prod)",
         documents=[assignment("two", {"regex": R},
                               definition="/providers/Microsoft.Authorization/policySetDefinitions/two-refs"),
                    initiative("two-refs", [
                        {"policyDefinitionReferenceId": "prodImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "namespaces": {"value": ["prod"]}}},
                        {"policyDefinitionReferenceId": "allImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "effect": {"value": "Audit"}, "excludedNamespaces": {"value": ["prod"]}}}],
                        {"regex": {"type": "String"}})],
         constraints=[("two-prodImages", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]}),
                      ("two-allImages", {"allowedContainerImagesRegex": R, "effect": "Audit",
                                         "excludedNamespaces": ["prod"]})],
         matched=[True, False], namespace="prod", containers=APP, expected=REFUSED_WEB),
    Case("initiative with the definition twice: Deny in prod, Audit elsewhere (dev)",
         documents=[assignment("two", {"regex": R},
                               definition="/providers/Microsoft.Authorization/policySetDefinitions/two-refs"),
                    initiative("two-refs", [
                        {"policyDefinitionReferenceId": "prodImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "namespaces": {"value": ["prod"]}}},
                        {"policyDefinitionReferenceId": "allImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "effect": {"value": "Audit"}, "excludedNamespaces": {"value": ["prod"]}}}],
                        {"regex": {"type": "String"}})],
         constraints=[("two-prodImages", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]}),
                      ("two-allImages", {"allowedContainerImagesRegex": R, "effect": "Audit",
                                         "excludedNamespaces": ["prod"]})],
         matched=[False, True], namespace="dev", containers=APP, expected={"web": "reported", "ok": "allowed"}),
    Case("initiative effect override for one reference",
         documents=[assignment("two", {"regex": R},
                               definition="/providers/Microsoft.Authorization/policySetDefinitions/two-refs",
                               overrides=[{"kind": "policyEffect", "value": "Audit", "selectors": [
                                   {"kind": "policyDefinitionReferenceId", "in": ["prodImages"]}]}]),
                    initiative("two-refs", [
                        {"policyDefinitionReferenceId": "prodImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "namespaces": {"value": ["prod"]}}}], {"regex": {"type": "String"}})],
         constraints=[("two-prodImages", {"allowedContainerImagesRegex": R, "namespaces": ["prod"],
                                          "effect": "Audit"})],
         matched=[True], namespace="prod", containers=APP, expected={"web": "reported", "ok": "allowed"}),
    # -- exemptions: the add-on creates no constraint for a waived assignment
    Case("exemption (Waiver) waives the assignment",
         documents=[assignment("a", {"allowedContainerImagesRegex": R}), exemption("x", "a")],
         constraints=[], matched=[], namespace="shop", containers=APP, expected=ALLOWED),
    Case("exemption (Mitigated) waives it too",
         documents=[assignment("a", {"allowedContainerImagesRegex": R}), exemption("x", "a", category="Mitigated")],
         constraints=[], matched=[], namespace="shop", containers=APP, expected=ALLOWED),
    Case("an expired exemption waives nothing",
         documents=[assignment("a", {"allowedContainerImagesRegex": R}),
                    exemption("x", "a", expires="2020-01-01T00:00:00Z")],
         constraints=[("a", {"allowedContainerImagesRegex": R})], matched=[True], namespace="shop", containers=APP,
         expected=REFUSED_WEB),
    Case("an exemption until a future date waives",
         documents=[assignment("a", {"allowedContainerImagesRegex": R}),
                    exemption("x", "a", expires="2999-01-01T00:00:00Z")],
         constraints=[], matched=[], namespace="shop", containers=APP, expected=ALLOWED),
    Case("an exemption of another assignment waives nothing",
         documents=[assignment("a", {"allowedContainerImagesRegex": R}), exemption("x", "other")],
         constraints=[("a", {"allowedContainerImagesRegex": R})], matched=[True], namespace="shop", containers=APP,
         expected=REFUSED_WEB),
    Case("an exemption of one initiative reference leaves the other",
         documents=[assignment("two", {"regex": R},
                               definition="/providers/Microsoft.Authorization/policySetDefinitions/two-refs"),
                    initiative("two-refs", [
                        {"policyDefinitionReferenceId": "prodImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "namespaces": {"value": ["prod"]}}},
                        {"policyDefinitionReferenceId": "allImages", "parameters": {
                            "allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                            "effect": {"value": "Audit"}}}], {"regex": {"type": "String"}}),
                    exemption("prod-waiver", "two", references=["prodImages"])],
         constraints=[("two-allImages", {"allowedContainerImagesRegex": R, "effect": "Audit"})],
         matched=[True], namespace="prod", containers=APP, expected={"web": "reported", "ok": "allowed"}),
    Case("parameter names are case-insensitive", documents=[assignment("a", {"AllowedContainerImagesRegex": R,
                                                                             "NAMESPACES": ["prod"]})],
         constraints=[("a", {"allowedContainerImagesRegex": R, "namespaces": ["prod"]})], matched=[False],
         namespace="dev", containers=APP, expected=ALLOWED),
]


# ----------------------------------------------------------------------------- evaluation


def admission(policy: Policy, case: Case) -> dict[str, str]:
    """acr-mirror's verdict per container, in admission's terms."""
    out = {}
    for name, image in [*case.containers, *case.init]:
        verdict = policy.decide(image, namespace=case.namespace, container=name, labels=case.labels, kind="Pod",
                                name="pod-1")
        out[name] = ("refused" if verdict.refused else
                     "reported" if verdict.finding and verdict.effect != "disabled" else "allowed")
    return out


def _pod(case: Case) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pod-1", "namespace": case.namespace, "labels": case.labels},
            "spec": {"containers": [{"name": n, "image": i} for n, i in case.containers],
                     "initContainers": [{"name": n, "image": i} for n, i in case.init]}}


def gatekeeper(case: Case, violations: Any) -> dict[str, str]:
    """Gatekeeper's verdict: for each constraint whose match selects the pod, the template's
    violations at its enforcementAction; deny over dryrun."""
    out = {name: "allowed" for name, _ in [*case.containers, *case.init]}
    for (name, params), matched in zip(case.constraints, case.matched, strict=True):
        if not matched:
            continue
        obj = constraint_of(name, params)
        verdict = "refused" if obj["spec"]["enforcementAction"] == "deny" else "reported"
        for container in violations(obj["spec"]["parameters"], _pod(case)):
            if out[container] != "refused":
                out[container] = verdict
    return out


def _by_hand(case: Case) -> Any:
    def violations(parameters: dict[str, Any], pod: dict[str, Any]) -> list[str]:
        return [n for n, v in case.expected.items() if v != "allowed"]
    return violations


def _regorus() -> Any:
    regorus = pytest.importorskip("regorus", reason="regorus (the Rego interpreter) is not installed")

    def violations(parameters: dict[str, Any], pod: dict[str, Any]) -> list[str]:
        engine = regorus.Engine()
        engine.set_rego_v0(True)  # the template is written in Rego v0 syntax
        # re_match is OPA's deprecated alias of regex.match (same builtin); regorus has only regex.match
        engine.add_policy("template.rego", REGO + "\nre_match(p, s) { regex.match(p, s) }\n")
        engine.set_input_json(json.dumps({"parameters": parameters, "review": {"object": pod, "kind": {
            "group": "", "version": "v1", "kind": "Pod"}}}))
        result = json.loads(engine.eval_query_as_json("data.k8sazurecontainerallowedimages.violation"))
        messages = [v["msg"] for v in result["result"][0]["expressions"][0]["value"]]
        return [re.fullmatch(r"Container image .* for container (.*) has not been allowed\.", m).group(1)
                for m in messages]
    return violations


IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_from_azure_json_verdicts_equal_gatekeepers(case: Case) -> None:
    policy = policy_from_documents(case.documents, "case.json", [])
    assert admission(policy, case) == case.expected


@pytest.mark.parametrize("case", [c for c in CASES if c.constraints], ids=[c.name for c in CASES if c.constraints])
def test_from_constraints_verdicts_equal_gatekeepers(case: Case) -> None:
    constraints = [constraint_of(name, params) for name, params in case.constraints]
    policy = policy_from_constraints(constraints, [])
    assert admission(policy, case) == case.expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_expected_is_gatekeepers_verdict_with_the_real_template(case: Case) -> None:
    """`expected` = match (by hand, from match.go) x the real Rego template (regorus)."""
    assert gatekeeper(case, _regorus()) == case.expected


def test_the_cases_cover_the_brief() -> None:
    containers = sum(len(c.containers) + len(c.init) for c in CASES)
    assert len(CASES) >= 60 and containers >= 130
    assert gatekeeper(CASES[0], _by_hand(CASES[0])) == CASES[0].expected


def test_the_published_defaults_are_the_fixtures() -> None:
    params = DEFINITION["properties"]["parameters"]
    assert {k: v["defaultValue"] for k, v in params.items() if "defaultValue" in v} == DEFINITION_DEFAULTS
    assert set(params) == {"warn", "effect", "excludedNamespaces", "namespaces", "labelSelector",
                           "allowedContainerImagesRegex", "excludedContainers"}  # no `source` in 9.2.0
    assert DENY == "deny" and AUDIT == "audit"
