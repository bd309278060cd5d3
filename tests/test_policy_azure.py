"""--policy-from-azure: assignments in force at a scope (inherited ones, initiatives) and their
exemptions, read with azure-mgmt-resource-policy from Azure Resource Manager.

ARM is served on loopback over TLS by tests/support/arm.py (no Azure endpoint can run here),
with ARM's REST shapes; azure-identity's place is taken by a static test credential that
records the token audiences asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from manifests_rewriter.config import ConfigError, parse_config
from mirror.azure import identity
from mirror.azure.assignments import PolicySourceError
from mirror.settings import SECTIONS, AzureSettings, settings_of
from tests.support.arm import ArmServer, load_allowed_images_definition

pytest.importorskip("azure.mgmt.resource.policy")

from mirror.azure.identity import arm_client_kwargs as client_kwargs  # noqa: E402
from mirror.azure.policy import parse_scope, policy_from_azure  # noqa: E402

OTHER_DEFINITION = "/providers/Microsoft.Authorization/policyDefinitions/1e30110a-5ceb-460c-a204-c1c3969c6d62"


def settings(arm: ArmServer) -> AzureSettings:
    return AzureSettings(arm_endpoint=arm.url, ca_file=str(arm.ca_file))


@pytest.fixture
def tree(arm: ArmServer) -> dict[str, Any]:
    """The definition assigned at every level above a cluster, beside it and below the subscription."""
    arm.policy.management_groups = ["tenant-root", "landing-zones"]
    definition = arm.policy.add_definition(load_allowed_images_definition())["id"]
    sub = f"/subscriptions/{arm.subscription}"
    rg = f"{sub}/resourceGroups/rg-aks"
    cluster = f"{rg}/providers/Microsoft.ContainerService/managedClusters/aks-prod"
    store = arm.policy
    return {
        "definition": definition, "sub": sub, "rg": rg, "cluster": cluster,
        "mg": store.add_assignment(store.mg_scope("landing-zones"), "mg-images", definition,
                                   {"effect": "Audit", "allowedContainerImagesRegex": r"^[^/]+\.azurecr\.io/"}),
        "sub_images": store.add_assignment(sub, "sub-images", definition,
                                           {"allowedContainerImagesRegex": r"^(crmirror\.azurecr\.io|x)/.+$"}),
        "rg_images": store.add_assignment(rg, "rg-images", definition,
                                          {"allowedContainerImagesRegex": r"^crmirror\.azurecr\.io/prod/",
                                           "namespaces": ["prod"]}),
        "cluster_images": store.add_assignment(cluster, "cluster-images", definition,
                                               {"allowedContainerImagesRegex": r"^crmirror\.azurecr\.io/web/",
                                                "labelSelector": {"matchLabels": {"tier": "web"}}}),
        "other_rg": store.add_assignment(f"{sub}/resourceGroups/rg-other", "other-images", definition,
                                         {"allowedContainerImagesRegex": "^z/"}),
        "tags": store.add_assignment(sub, "tags", OTHER_DEFINITION),
    }


def test_a_cluster_gets_every_inherited_assignment_each_with_its_own_scope(arm: ArmServer, tree: dict[str, Any]) -> None:
    notes: list[str] = []
    credential = arm.credential()
    policy = policy_from_azure(tree["cluster"], settings(arm), credential=credential, notes=notes)
    assert [p.name for p in policy.parts] == ["assignment mg-images", "assignment sub-images", "assignment rg-images",
                                              "assignment cluster-images"]
    assert [p.effect for p in policy.parts] == ["audit", "deny", "deny", "deny"]

    def verdict(image: str, namespace: str, **labels: str) -> tuple[bool, str, str]:
        v = policy.decide(image, namespace=namespace, labels=labels, kind="Pod", name="p")
        return v.refused, v.assignment, v.parameter

    assert verdict("crmirror.azurecr.io/prod/app:1", "prod", tier="api") == (
        False, "assignment mg-images", "allowedContainerImagesRegex")
    assert verdict("crmirror.azurecr.io/team/app:1", "prod", tier="api") == (
        True, "assignment rg-images", "allowedContainerImagesRegex")  # rg-images checks prod only
    assert verdict("crmirror.azurecr.io/team/app:1", "dev", tier="api")[0] is False
    assert verdict("crmirror.azurecr.io/team/app:1", "dev", tier="web") == (
        True, "assignment cluster-images", "allowedContainerImagesRegex")  # the cluster's labelSelector
    audit = policy.decide("x/app:1", namespace="dev", labels={}, kind="Pod")  # only the MG's Audit flags it
    assert audit.finding and not audit.refused and audit.assignment == "assignment mg-images"
    assert not policy.decide("nginx", namespace="kube-system", labels={}, kind="Pod").finding  # by design
    # the client asked for the configured endpoint's audience, and read exemptions at the preview API
    assert credential.scopes and all(s == (arm.credential_scope,) for s in credential.scopes)
    exemption_reads = arm.requests("GET", "/policyExemptions")
    assert exemption_reads and all(r.api_version == "2022-07-01-preview" for r in exemption_reads)
    assert arm.requests("GET", "/policyDefinitions/febd0533-8e55-448f-b837-bd0e06f16469")


def test_a_subscription_notes_what_is_assigned_below_it(arm: ArmServer, tree: dict[str, Any]) -> None:
    notes: list[str] = []
    policy = policy_from_azure(tree["sub"], settings(arm), credential=arm.credential(), notes=notes)
    assert [p.name for p in policy.parts] == ["assignment mg-images", "assignment sub-images"]
    for name in ("rg-images", "cluster-images", "other-images"):
        assert any(f"assignment {name} is assigned at" in n and "below" in n for n in notes), notes
    assert any("1 assignment(s) of other policy definitions ignored" in n for n in notes)
    rg = policy_from_azure(tree["rg"].lower(), settings(arm), credential=arm.credential())  # ids are case-insensitive
    assert [p.name for p in rg.parts] == ["assignment mg-images", "assignment sub-images", "assignment rg-images"]


def test_not_scopes_take_the_cluster_out(arm: ArmServer, tree: dict[str, Any]) -> None:
    tree["sub_images"]["properties"]["notScopes"] = [tree["rg"]]
    notes: list[str] = []
    policy = policy_from_azure(tree["cluster"], settings(arm), credential=arm.credential(), notes=notes)
    assert "assignment sub-images" not in [p.name for p in policy.parts]
    assert any("does not apply to" in n and "notScopes" in n for n in notes)


def test_initiatives_and_exemptions_paged(arm: ArmServer, tree: dict[str, Any]) -> None:
    store = arm.policy
    store.add_set_definition("k8s-baseline", [
        {"policyDefinitionId": tree["definition"], "policyDefinitionReferenceId": "prodImages",
         "parameters": {"allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                        "namespaces": {"value": ["prod"]}}},
        {"policyDefinitionId": tree["definition"], "policyDefinitionReferenceId": "allImages",
         "parameters": {"allowedContainerImagesRegex": {"value": "[parameters('regex')]"},
                        "effect": {"value": "[parameters('effect')]"}}},
        {"policyDefinitionId": OTHER_DEFINITION, "policyDefinitionReferenceId": "tags", "parameters": {}},
    ], parameters={"regex": {"type": "String"}, "effect": {"type": "String", "defaultValue": "Audit"}})
    baseline = store.add_assignment(tree["sub"], "baseline",
                                    "/providers/Microsoft.Authorization/policySetDefinitions/k8s-baseline",
                                    {"regex": r"^crmirror\.azurecr\.io/"})
    store.add_exemption(tree["rg"], "rg-waiver", tree["sub_images"]["id"], category="Mitigated")
    store.add_exemption(tree["sub"], "old", tree["rg_images"]["id"], expires_on="2020-01-01T00:00:00Z")
    store.add_exemption(tree["cluster"], "prod-only", baseline["id"], reference_ids=["prodImages"],
                        expires_on="2999-01-01T00:00:00Z")
    store.add_exemption(f"{tree['sub']}/resourceGroups/rg-other", "elsewhere", tree["mg"]["id"])
    arm.page_size = 2  # exemptions come in pages: nextLink followed by hand
    notes: list[str] = []
    policy = policy_from_azure(tree["cluster"], settings(arm), credential=arm.credential(), notes=notes)
    by_name = {p.name: p for p in policy.parts}
    assert set(by_name) == {"assignment mg-images", "assignment sub-images", "assignment rg-images",
                            "assignment cluster-images", "assignment baseline (prodImages of initiative k8s-baseline)",
                            "assignment baseline (allImages of initiative k8s-baseline)"}
    assert by_name["assignment sub-images"].waived_by == "exemption rg-waiver (Mitigated)"
    assert by_name["assignment rg-images"].waived_by is None  # its exemption expired
    assert by_name["assignment baseline (prodImages of initiative k8s-baseline)"].waived_by == (
        "exemption prod-only (Waiver, until 2999-01-01T00:00:00Z)")
    all_images = by_name["assignment baseline (allImages of initiative k8s-baseline)"]
    assert (all_images.waived_by, all_images.effect, all_images.image_regex) == (None, "audit", r"^crmirror\.azurecr\.io/")
    assert any("exemption old expired" in n for n in notes)
    assert not any("exemption elsewhere" in n for n in notes)  # another resource group's: ARM does not list it
    at_sub: list[str] = []
    whole = policy_from_azure(tree["sub"], settings(arm), credential=arm.credential(), notes=at_sub)
    assert any("exemption elsewhere at" in n and "there only" in n for n in at_sub)  # below the scope: noted
    assert all(p.waived_by is None for p in whole.parts if p.name == "assignment mg-images")
    assert len(arm.requests("GET", "/policyExemptions")) >= 2
    waived = policy.decide("x/app:1", namespace="dev", labels={}, kind="Pod")
    sub_verdict = next(v for v in waived.parts if v.assignment == "assignment sub-images")
    assert (sub_verdict.finding, sub_verdict.parameter) == (False, "exemption")


def test_errors_are_one_line(arm: ArmServer, tree: dict[str, Any]) -> None:
    with pytest.raises(PolicySourceError, match="authentication failed") as info:
        policy_from_azure(tree["cluster"], settings(arm), credential=type(arm.credential())("not-the-token"))
    assert "\n" not in str(info.value) and arm.token not in str(info.value)
    with pytest.raises(PolicySourceError, match="give a subscription"):
        policy_from_azure("/providers/Microsoft.Management/managementGroups/x", settings(arm),
                          credential=arm.credential())
    arm.stop()
    with pytest.raises(PolicySourceError, match="cannot reach Azure Resource Manager"):
        policy_from_azure(tree["cluster"], AzureSettings(arm_endpoint=arm.url, ca_file=str(arm.ca_file)),
                          credential=arm.credential())


def test_scopes_and_clouds() -> None:
    assert parse_scope("00000000-0000-4000-8000-0000000000a1") == {
        "sub": "00000000-0000-4000-8000-0000000000a1", "scope": "/subscriptions/00000000-0000-4000-8000-0000000000a1"}
    assert parse_scope("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/aks/")[
        "name"] == "aks"
    from azure.core import AzureClouds

    assert client_kwargs(AzureSettings()) == {"cloud_setting": AzureClouds.AZURE_PUBLIC_CLOUD}
    assert client_kwargs(AzureSettings(cloud="AzureUSGovernment")) == {"cloud_setting": AzureClouds.AZURE_US_GOVERNMENT}
    assert client_kwargs(AzureSettings(arm_endpoint="https://arm.local/", arm_scope="https://aud/.default")) == {
        "base_url": "https://arm.local", "credential_scopes": ["https://aud/.default"]}
    from azure.mgmt.core.tools import get_arm_endpoints

    gov = get_arm_endpoints(AzureClouds.AZURE_US_GOVERNMENT)  # what cloud_setting gives the client
    assert gov["resource_manager"].startswith("https://management.usgovcloudapi.net")
    assert gov["credential_scopes"] == ["https://management.core.usgovcloudapi.net/.default"]


@pytest.mark.parametrize(("section", "message"), [
    ({"cloud": "AzureGermanCloud"}, "azure.cloud must be one of AzurePublicCloud, AzureChinaCloud, AzureUSGovernment"),
    ({"arm_endpoint": "http://127.0.0.1:1"}, "must be an https:// URL"),
    ({"arm_scope": "https://x/.default"}, "arm_scope needs arm_endpoint"),
    ({"endpoint": "https://x"}, "unknown key"),
])
def test_azure_section_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"target": {"registry": "r.example"}, "azure": section}, "c.yaml", policy_optional=True,
                     sections=SECTIONS)


def test_cli_scan_with_policy_from_azure(arm: ArmServer, tree: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    credential = arm.credential()
    monkeypatch.setattr(identity, "default_credential", lambda cloud=None: credential)
    config = tmp_path / "config.yaml"
    config.write_text(f"target: {{registry: crmirror.azurecr.io}}\nazure:\n  arm_endpoint: {arm.url}\n"
                      f"  ca_file: {arm.ca_file}\n")
    assert settings_of(parse_config({"target": {"registry": "r.example"}, "azure": {"arm_endpoint": arm.url}},
                                    "c", policy_optional=True, sections=SECTIONS)).azure.arm_endpoint == arm.url
    manifest = tmp_path / "web.yaml"
    manifest.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: prod}\nspec:\n"
                        "  template:\n    metadata: {labels: {tier: web}}\n    spec:\n      containers:\n"
                        "        - {name: web, image: 'crmirror.azurecr.io/team/web:1'}\n")
    result = CliRunner().invoke(__import__("mirror.cli", fromlist=["main"]).main, [
        "scan", str(manifest), "--config", str(config), "--policy-from-azure", tree["cluster"], "--format", "json"],
        catch_exceptions=False)
    assert result.exit_code == 1, result.output
    [finding] = json.loads(result.stdout)["findings"]
    assert (finding["assignment"], finding["effect"]) == ("assignment rg-images", "deny")
    assert [d["assignment"] for d in finding["decisions"] if d["finding"]] == [
        "assignment rg-images", "assignment cluster-images"]
    both = CliRunner().invoke(__import__("mirror.cli", fromlist=["main"]).main, [
        "scan", str(manifest), "--config", str(config), "--policy-from-azure", tree["cluster"],
        "--policy-from-cluster"])
    assert both.exit_code == 2 and "give one policy source" in both.output


def test_unreadable_exemptions_apply_none_and_say_so(arm: ArmServer, tree: dict[str, Any]) -> None:
    arm.policy.add_exemption(tree["sub"], "waive-all", tree["sub_images"]["id"])
    arm.api_versions["exemptions"].discard("2022-07-01-preview")  # an ARM without that preview version
    notes: list[str] = []
    policy = policy_from_azure(tree["cluster"], settings(arm), credential=arm.credential(), notes=notes)
    assert all(p.waived_by is None for p in policy.parts)  # stricter: the exemption is not applied
    assert any("policy exemptions at" in n and "could not be read" in n and "none is applied" in n for n in notes)
