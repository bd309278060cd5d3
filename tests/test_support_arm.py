"""The served ARM is what the real Azure SDK clients expect: each operation acr-mirror needs, end to end.

Azure cannot run here; tests/support/arm.py serves ARM's REST shapes on loopback (HTTPS, test CA)
and these tests drive it with the real azure-mgmt-containerregistry and azure-mgmt-resource-policy
clients and an azure-core credential.  Imports are real copies between real registries, checked
by reading the target back through skopeo.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.arm import ALLOWED_IMAGES_DEFINITION, ArmServer, RecordingCredential, load_allowed_images_definition
from tests.support.images import build_image, build_index, inspect_raw, push
from tests.support.registries import Registry

azure_core_exceptions = pytest.importorskip("azure.core.exceptions")
acr_mgmt = pytest.importorskip("azure.mgmt.containerregistry")
policy_mgmt = pytest.importorskip("azure.mgmt.resource.policy")
HttpResponseError = azure_core_exceptions.HttpResponseError
ResourceNotFoundError = azure_core_exceptions.ResourceNotFoundError
ClientAuthenticationError = azure_core_exceptions.ClientAuthenticationError

pytestmark = pytest.mark.registry

RG = "rg-mirror"


def acr_client(arm: ArmServer, credential: Any = None, **kwargs: Any) -> Any:
    return acr_mgmt.ContainerRegistryManagementClient(
        credential or arm.credential(), arm.subscription, **arm.sdk_kwargs(**kwargs)
    )


def policy_client(arm: ArmServer, **kwargs: Any) -> Any:
    return policy_mgmt.PolicyClient(arm.credential(), arm.subscription, **arm.sdk_kwargs(**kwargs))


def trust(arm: ArmServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(arm.ca_file))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def target_digest(registry: Registry, ref: str) -> str:
    """The digest ``registry`` serves for ``ref``, read back through skopeo (raw manifest bytes)."""
    return digest(inspect_raw(ref, registry))


# --------------------------------------------------------------------------- registries


def test_registries_list_and_get(arm: ArmServer, registry_factory: Any) -> None:
    basic = arm.add_registry("crbasic", registry_factory(), sku="Basic", resource_group="rg-one")
    premium = arm.add_registry("crpremium", registry_factory(), sku="Premium", resource_group="rg-two")
    credential = arm.credential()
    client = acr_client(arm, credential)

    listed = {r.name: (r.sku.name, r.login_server, r.id) for r in client.registries.list()}
    assert listed == {
        "crbasic": ("Basic", basic.login_server, basic.id),
        "crpremium": ("Premium", premium.login_server, premium.id),
    }
    assert [r.name for r in client.registries.list_by_resource_group("rg-two")] == ["crpremium"]
    got = client.registries.get("rg-one", "crbasic")
    assert (got.sku.name, got.login_server, got.provisioning_state) == ("Basic", basic.login_server, "Succeeded")
    # The client asked for a token for the ARM audience it was pointed at (sovereign-cloud setting).
    assert credential.scopes and set(credential.scopes) == {(arm.credential_scope,)}
    # One credential can also hold the data-plane token the ACR exchange accepts.
    both = arm.credential(by_scope={"https://containerregistry.azure.net/.default": "aad-for-acr"})
    assert both.get_token("https://containerregistry.azure.net/.default").token == "aad-for-acr"
    assert [r.name for r in acr_client(arm, both).registries.list_by_resource_group("rg-one")] == ["crbasic"]

    with pytest.raises(ResourceNotFoundError) as missing:
        client.registries.get("rg-one", "crnothere")
    assert missing.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as no_group:
        client.registries.get("rg-nothere", "crbasic")
    assert no_group.value.error.code == "ResourceGroupNotFound"


def test_every_request_needs_the_token(arm: ArmServer, registry_factory: Any) -> None:
    arm.add_registry("crtarget", registry_factory())
    with pytest.raises(ClientAuthenticationError) as wrong:
        list(acr_client(arm, RecordingCredential("not-the-token")).registries.list())
    assert wrong.value.status_code == 401 and wrong.value.error.code == "InvalidAuthenticationToken"

    url = f"{arm.url}/subscriptions/{arm.subscription}/providers/Microsoft.ContainerRegistry/registries"
    bare = httpx.get(url, params={"api-version": "2025-11-01"}, verify=trust(arm))
    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "AuthenticationFailed"
    assert bare.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")


def test_lists_are_paged_with_next_link(arm: ArmServer, registry_factory: Any) -> None:
    shared = registry_factory()
    for i in range(3):
        arm.add_registry(f"crpaged{i}", shared)
    arm.page_size = 1
    names = [r.name for r in acr_client(arm).registries.list()]
    assert names == ["crpaged0", "crpaged1", "crpaged2"]
    pages = arm.requests("GET", "/registries")
    assert len(pages) == 3 and [p.query.get("$skipToken") for p in pages] == [None, ["1"], ["2"]]


def test_throttling_is_retried_then_surfaces(arm: ArmServer, registry_factory: Any) -> None:
    arm.add_registry("crtarget", registry_factory())
    arm.throttle(2, retry_after=0)
    assert [r.name for r in acr_client(arm).registries.list()] == ["crtarget"]
    assert [r.status for r in arm.requests("GET", "/registries")] == [429, 429, 200]

    arm.throttle(1, retry_after=0)
    with pytest.raises(HttpResponseError) as throttled:
        list(acr_client(arm, retry_total=0).registries.list())
    assert throttled.value.status_code == 429 and throttled.value.error.code == "TooManyRequests"


def test_unsupported_api_version_is_refused(arm: ArmServer, registry_factory: Any) -> None:
    arm.add_registry("crtarget", registry_factory())
    with pytest.raises(HttpResponseError) as old:
        acr_client(arm, api_version="2001-01-01").registries.get(RG, "crtarget")
    assert old.value.status_code == 400 and old.value.error.code == "NoRegisteredProviderFound"


# --------------------------------------------------------------------------- importImage


def test_import_rest_shape(arm: ArmServer, registry_factory: Any, tmp_path: Path) -> None:
    """The raw exchange: 202 + Azure-AsyncOperation + Location, status InProgress then Succeeded."""
    source, target = registry_factory(), registry_factory()
    acr = arm.add_registry("crtarget", target)
    push(build_image(tmp_path, layers=[1024], seed="shape"), source, "team/app", "1.0")
    headers = {"Authorization": f"Bearer {arm.token}"}
    with httpx.Client(verify=trust(arm), headers=headers) as http:
        accepted = http.post(
            f"{arm.url}{acr.id}/importImage",
            params={"api-version": "2025-11-01"},
            json={"source": {"registryUri": source.host, "sourceImage": "team/app:1.0"}, "targetTags": ["app:1.0"]},
        )
        assert accepted.status_code == 202 and accepted.content == b""
        monitor, location = accepted.headers["Azure-AsyncOperation"], accepted.headers["Location"]
        assert "/operationStatuses/registries-" in monitor and "/operationResults/registries-" in location
        first = http.get(monitor).json()
        assert first["status"] == "InProgress" and first["name"].startswith("registries-")
        last = first
        while last["status"] == "InProgress":
            last = http.get(monitor).json()
        assert last["status"] == "Succeeded" and "endTime" in last and "error" not in last
        assert http.get(location).status_code == 200
    assert target_digest(target, "app:1.0") == target_digest(source, "team/app:1.0")


def test_import_copies_every_platform_and_keeps_the_digest(
    acr_registry: Registry, registry_factory: Any, arm: ArmServer, tmp_path: Path
) -> None:
    source = registry_factory()
    index = build_index(tmp_path, seed="import-index")
    push(index, source, "multi/app", "1.0")
    single = build_image(tmp_path, layers=[2048], seed="import-single")
    push(single, source, "team/api", "2.0")
    arm.add_registry("crtarget", acr_registry)  # token auth behind the ACR exchange, like a real ACR
    client = acr_client(arm)

    pollers = [
        client.registries.begin_import_image(
            RG,
            "crtarget",
            {
                "source": {"registryUri": source.host, "sourceImage": "multi/app:1.0"},
                "targetTags": ["mirror/multi/app:1.0"],
                "untaggedTargetRepositories": ["mirror/untagged"],
                "mode": "NoForce",
            },
        ),
        client.registries.begin_import_image(
            RG,
            "crtarget",
            {"source": {"registryUri": source.host, "sourceImage": "team/api:2.0"}, "targetTags": ["mirror/team/api"]},
        ),
    ]
    for poller in pollers:
        assert poller.result() is None and poller.status() == "Succeeded"

    assert target_digest(acr_registry, "mirror/multi/app:1.0") == index.manifest_digest
    for child in index.children:  # every platform came along, byte for byte
        assert target_digest(acr_registry, f"mirror/multi/app@{child.manifest_digest}") == child.manifest_digest
    assert target_digest(acr_registry, f"mirror/untagged@{index.manifest_digest}") == index.manifest_digest
    # A target tag without ':tag' takes the source's tag.
    assert target_digest(acr_registry, "mirror/team/api:2.0") == single.manifest_digest
    operations = arm.imports()
    assert len(operations) == 2 and all(op.status == "Succeeded" and op.polls >= 2 for op in operations)


def test_import_no_force_refuses_an_existing_tag_and_force_overwrites(
    arm: ArmServer, registry_factory: Any, tmp_path: Path
) -> None:
    source, target = registry_factory(), registry_factory()
    arm.add_registry("crtarget", target)
    old = build_image(tmp_path, layers=[1024], seed="old")
    new = build_image(tmp_path, layers=[1024], seed="new")
    push(old, source, "app", "1")
    client = acr_client(arm)
    params = {"source": {"registryUri": source.host, "sourceImage": "app:1"}, "targetTags": ["app:1"]}
    client.registries.begin_import_image(RG, "crtarget", params).result()
    push(new, source, "app", "1")

    with pytest.raises(HttpResponseError) as refused:
        client.registries.begin_import_image(RG, "crtarget", {**params, "mode": "NoForce"}).result()
    assert refused.value.error.code == "InvalidParameters"
    assert "Tag app:1 already exists in target registry" in refused.value.error.message
    assert target_digest(target, "app:1") == old.manifest_digest  # nothing copied

    client.registries.begin_import_image(RG, "crtarget", {**params, "mode": "Force"}).result()
    assert target_digest(target, "app:1") == new.manifest_digest


def test_import_from_a_private_source_needs_its_credentials(
    arm: ArmServer, registry_factory: Any, tmp_path: Path
) -> None:
    private = registry_factory(auth="basic")
    arm.add_registry("crtarget", registry_factory())
    image = build_image(tmp_path, layers=[1024], seed="private")
    push(image, private, "secret/app", "1")
    client = acr_client(arm)
    source = {"registryUri": private.host, "sourceImage": "secret/app:1"}

    with pytest.raises(HttpResponseError) as anonymous:
        client.registries.begin_import_image(RG, "crtarget", {"source": source, "targetTags": ["app:1"]}).result()
    assert anonymous.value.error.code == "InvalidParameters"
    assert "Unauthorized" in anonymous.value.error.message and private.password not in str(anonymous.value)

    with_creds = {**source, "credentials": {"username": private.username, "password": private.password}}
    client.registries.begin_import_image(RG, "crtarget", {"source": with_creds, "targetTags": ["app:1"]}).result()
    assert target_digest(arm.acrs[next(iter(arm.acrs))].registry, "app:1") == image.manifest_digest


def test_import_from_another_acr_by_resource_id_and_digest(
    arm: ArmServer, acr_registry: Registry, registry_factory: Any, tmp_path: Path
) -> None:
    other = arm.add_registry("crsource", acr_registry, resource_group="rg-shared")
    target = registry_factory()
    arm.add_registry("crtarget", target)
    image = build_image(tmp_path, layers=[1024], seed="by-id")
    push(image, acr_registry, "base/app", "7")
    params = {
        "source": {"resourceId": other.id, "sourceImage": f"base/app@{image.manifest_digest}"},
        "targetTags": ["base/app"],  # no tag and a digest source: 'latest'
    }
    acr_client(arm).registries.begin_import_image(RG, "crtarget", params).result()
    assert target_digest(target, "base/app:latest") == image.manifest_digest


def test_import_failures_carry_the_served_error(arm: ArmServer, registry_factory: Any) -> None:
    source = registry_factory()
    arm.add_registry("crtarget", registry_factory())
    client = acr_client(arm)
    params = {"source": {"registryUri": source.host, "sourceImage": "nothing/here:1"}, "targetTags": ["x:1"]}

    with pytest.raises(HttpResponseError) as missing:
        client.registries.begin_import_image(RG, "crtarget", params).result()
    assert missing.value.error.code == "InvalidParameters"
    assert "Unable to find manifest digest" in missing.value.error.message

    arm.fail_next_import("QuotaExceeded", "Registry storage quota exceeded.")
    with pytest.raises(HttpResponseError) as quota:
        client.registries.begin_import_image(RG, "crtarget", params).result()
    assert quota.value.error.code == "QuotaExceeded"

    # The spec's own example answers with Location only: failure comes back as the Location's status.
    arm.lro_headers = ("Location",)
    arm.fail_next_import("TooManyRequests", "toomanyrequests: the source registry throttled the import")
    with pytest.raises(HttpResponseError) as throttled:
        client.registries.begin_import_image(RG, "crtarget", params).result()
    assert throttled.value.status_code == 400 and throttled.value.error.code == "TooManyRequests"

    with pytest.raises(HttpResponseError) as invalid:  # refused before any operation starts
        client.registries.begin_import_image(RG, "crtarget", {"source": params["source"]})
    assert invalid.value.status_code == 400 and invalid.value.error.code == "InvalidParameters"


# --------------------------------------------------------------------------- cache rules, credential sets


def test_credential_sets_and_cache_rules_lifecycle(arm: ArmServer, registry_factory: Any) -> None:
    acr = arm.add_registry("crtarget", registry_factory())
    arm.key_vault = {
        "https://kv.vault.azure.net/secrets/user": "hubuser",
        "https://kv.vault.azure.net/secrets/pass": "x",
    }
    client = acr_client(arm)
    created = client.credential_sets.begin_create(
        RG,
        "crtarget",
        "dockerhub",
        {
            "properties": {
                "loginServer": "docker.io",
                "authCredentials": [
                    {
                        "name": "Credential1",
                        "usernameSecretIdentifier": "https://kv.vault.azure.net/secrets/user",
                        "passwordSecretIdentifier": "https://kv.vault.azure.net/secrets/pass",
                    }
                ],
            },
            "identity": {"type": "SystemAssigned"},
        },
    ).result()
    assert created.provisioning_state == "Succeeded" and created.identity.principal_id
    assert created.auth_credentials[0].credential_health.status == "Healthy"

    rule = client.cache_rules.begin_create(
        RG,
        "crtarget",
        "docker-hub-library",
        {
            "properties": {
                "sourceRepository": "docker.io/library/*",
                "targetRepository": "docker.io/library/*",
                "credentialSetResourceId": created.id,
            }
        },
    ).result()
    assert (rule.provisioning_state, rule.source_repository) == ("Succeeded", "docker.io/library/*")
    assert [r.name for r in client.cache_rules.list(RG, "crtarget")] == ["docker-hub-library"]
    assert [c.name for c in client.credential_sets.list(RG, "crtarget")] == ["dockerhub"]
    # The create went the asynchronous way the examples show: 201 + Azure-AsyncOperation, then polls.
    puts = arm.requests("PUT", "/cacheRules/")
    assert [p.status for p in puts] == [201]
    assert arm.requests("GET", "/cacheRules/docker-hub-library/operationStatuses/")

    with pytest.raises(HttpResponseError) as clash:
        client.cache_rules.begin_create(
            RG,
            "crtarget",
            "second",
            {"properties": {"sourceRepository": "quay.io/x/*", "targetRepository": "docker.io/library/*"}},
        )
    assert clash.value.error.code == "InvalidParameters"

    updated = client.cache_rules.begin_update(
        RG, "crtarget", "docker-hub-library", {"properties": {"credentialSetResourceId": None}}
    ).result()
    assert updated.credential_set_resource_id is None

    client.cache_rules.begin_delete(RG, "crtarget", "docker-hub-library").result()
    with pytest.raises(ResourceNotFoundError):
        client.cache_rules.get(RG, "crtarget", "docker-hub-library")
    client.credential_sets.begin_delete(RG, "crtarget", "dockerhub").result()
    assert list(client.credential_sets.list(RG, "crtarget")) == [] and acr.cache_rules == {}
    assert [r.status for r in arm.requests("DELETE")] == [202, 202]


def test_a_credential_set_in_use_cannot_be_deleted(arm: ArmServer, registry_factory: Any) -> None:
    arm.add_registry("crtarget", registry_factory())
    client = acr_client(arm)
    creds = client.credential_sets.begin_create(
        RG,
        "crtarget",
        "quayio",
        {
            "properties": {
                "loginServer": "quay.io",
                "authCredentials": [
                    {
                        "name": "Credential1",
                        "usernameSecretIdentifier": "https://kv/u",
                        "passwordSecretIdentifier": "https://kv/p",
                    }
                ],
            }
        },
    ).result()
    assert creds.auth_credentials[0].credential_health.status == "Unhealthy"  # the secrets are not in the vault
    client.cache_rules.begin_create(
        RG,
        "crtarget",
        "quay-org",
        {
            "properties": {
                "sourceRepository": "quay.io/org/*",
                "targetRepository": "quay/*",
                "credentialSetResourceId": creds.id,
            }
        },
    ).result()
    with pytest.raises(HttpResponseError) as in_use:
        client.credential_sets.begin_delete(RG, "crtarget", "quayio").result()
    assert in_use.value.error.code == "InvalidParameters" and "quay-org" in in_use.value.error.message


def test_cache_rule_pull_through_copies_from_the_upstream(
    arm: ArmServer, registry_factory: Any, tmp_path: Path
) -> None:
    hub = registry_factory()
    arm.upstreams["docker.io"] = hub  # the local registry stands in for Docker Hub
    target = registry_factory()
    acr = arm.add_registry("crtarget", target)
    image = build_image(tmp_path, layers=[1024], seed="busybox")
    push(image, hub, "library/busybox", "1.36")
    client = acr_client(arm)
    client.cache_rules.begin_create(
        RG,
        "crtarget",
        "docker-hub",
        {"properties": {"sourceRepository": "docker.io/library/*", "targetRepository": "hub/*"}},
    ).result()

    assert arm.pull_through(acr, "hub/busybox", "1.36") == image.manifest_digest
    assert target_digest(target, "hub/busybox:1.36") == image.manifest_digest


# --------------------------------------------------------------------------- Azure Policy


def test_the_real_allowed_images_definition_is_served(arm: ArmServer) -> None:
    arm.policy.add_definition(load_allowed_images_definition())
    definition = policy_client(arm).policy_definitions.get_built_in(ALLOWED_IMAGES_DEFINITION)
    assert definition.id == f"/providers/Microsoft.Authorization/policyDefinitions/{ALLOWED_IMAGES_DEFINITION}"
    assert definition.display_name == "Kubernetes cluster containers should only use allowed images"
    assert definition.policy_type == "BuiltIn" and definition.mode == "Microsoft.Kubernetes.Data"
    params = definition.parameters
    assert params["effect"].default_value == "Deny" and params["warn"].default_value is False
    assert params["excludedNamespaces"].default_value == [
        "kube-system",
        "gatekeeper-system",
        "azure-arc",
        "azure-extensions-usage-system",
    ]
    assert params["namespaces"].default_value == [] and params["labelSelector"].default_value == {}
    assert (
        "defaultValue"
        not in load_allowed_images_definition()["properties"]["parameters"]["allowedContainerImagesRegex"]
    )
    details = definition.policy_rule["then"]["details"]
    assert details["values"] == {
        "imageRegex": "[parameters('allowedContainerImagesRegex')]",
        "excludedContainers": "[parameters('excludedContainers')]",
    }
    assert details["templateInfo"]["url"].endswith("/container-allowed-images/v2/template.yaml")
    with pytest.raises(ResourceNotFoundError) as missing:
        policy_client(arm).policy_definitions.get_built_in("00000000-0000-0000-0000-000000000000")
    assert missing.value.error.code == "PolicyDefinitionNotFound"


@pytest.fixture
def assigned(arm: ArmServer) -> dict[str, Any]:
    """The allowed-images definition assigned at every level of a tree, plus one elsewhere."""
    arm.policy.management_groups = ["tenant-root", "landing-zones"]
    definition = arm.policy.add_definition(load_allowed_images_definition())["id"]
    sub = f"/subscriptions/{arm.subscription}"
    cluster = f"{sub}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/aks-prod"
    store = arm.policy
    return {
        "definition": definition,
        "cluster": cluster,
        "mg": store.add_assignment(
            store.mg_scope("landing-zones"),
            "mg-images",
            definition,
            {"effect": "Audit", "allowedContainerImagesRegex": "^.+$"},
        ),
        "sub": store.add_assignment(
            sub, "sub-images", definition, {"allowedContainerImagesRegex": r"^crmirror\.azurecr\.io/.+$"}
        ),
        "rg": store.add_assignment(
            f"{sub}/resourceGroups/rg-aks",
            "rg-images",
            definition,
            {"allowedContainerImagesRegex": "^x/.+$", "namespaces": ["prod"]},
        ),
        "cluster_assignment": store.add_assignment(
            cluster,
            "cluster-images",
            definition,
            {"allowedContainerImagesRegex": "^y/.+$", "labelSelector": {"matchLabels": {"tier": "web"}}},
        ),
        "other_rg": store.add_assignment(
            f"{sub}/resourceGroups/rg-other", "other-images", definition, {"allowedContainerImagesRegex": "^z/.+$"}
        ),
        "other_def": store.add_assignment(
            sub, "tags", "/providers/Microsoft.Authorization/policyDefinitions/1e30110a-5ceb-460c-a204-c1c3969c6d62"
        ),
    }


def names(items: Any) -> list[str]:
    return [item.name for item in items]


def test_assignments_at_a_scope_include_inherited_ones(arm: ArmServer, assigned: dict[str, Any]) -> None:
    client = policy_client(arm)
    assignments = client.policy_assignments
    assert names(assignments.list(filter="atScope()")) == ["mg-images", "sub-images", "tags"]
    assert names(assignments.list_for_resource_group("rg-aks", filter="atScope()")) == [
        "mg-images",
        "sub-images",
        "tags",
        "rg-images",
    ]
    for_cluster = assignments.list_for_resource(
        "rg-aks", "Microsoft.ContainerService", "", "managedClusters", "aks-prod", filter="atScope()"
    )
    assert names(for_cluster) == ["mg-images", "sub-images", "tags", "rg-images", "cluster-images"]
    assert names(assignments.list_for_management_group("landing-zones", filter="atScope()")) == ["mg-images"]
    assert names(assignments.list_for_resource_group("rg-aks", filter="atExactScope()")) == ["rg-images"]
    only_images = assignments.list_for_resource_group(
        "rg-aks", filter=f"policyDefinitionId eq '{assigned['definition']}'"
    )
    assert names(only_images) == ["mg-images", "sub-images", "rg-images"]
    # Without a filter, a resource group's list also has what is assigned inside it (the cluster).
    assert "cluster-images" in names(assignments.list_for_resource_group("rg-aks"))

    got = assignments.get_by_id(assigned["cluster_assignment"]["id"])
    assert got.policy_definition_id == assigned["definition"] and got.scope == assigned["cluster"]
    assert got.parameters["labelSelector"].value == {"matchLabels": {"tier": "web"}}
    assert (
        assignments.get(f"/subscriptions/{arm.subscription}", "sub-images")
        .parameters["allowedContainerImagesRegex"]
        .value.startswith("^crmirror")
    )
    with pytest.raises(ResourceNotFoundError) as missing:
        assignments.get(f"/subscriptions/{arm.subscription}", "nope")
    assert missing.value.error.code == "PolicyAssignmentNotFound"
    with pytest.raises(HttpResponseError) as bad_filter:
        list(assignments.list(filter="displayName eq 'x'"))
    assert bad_filter.value.status_code == 400


def test_initiative_definitions(arm: ArmServer) -> None:
    definition = arm.policy.add_definition(load_allowed_images_definition())["id"]
    members = [
        {
            "policyDefinitionId": definition,
            "policyDefinitionReferenceId": "allowedImages",
            "parameters": {
                "allowedContainerImagesRegex": {"value": "[parameters('imageRegex')]"},
                "effect": {"value": "[parameters('imagesEffect')]"},
            },
        }
    ]
    params = {"imageRegex": {"type": "String"}, "imagesEffect": {"type": "String", "defaultValue": "Audit"}}
    arm.policy.add_set_definition(
        "k8s-baseline", members, parameters=params, scope=f"/subscriptions/{arm.subscription}"
    )
    arm.policy.add_set_definition("k8s-builtin", members, parameters=params)
    client = policy_client(arm)
    custom = client.policy_set_definitions.get("k8s-baseline")
    assert custom.policy_type == "Custom" and custom.parameters["imagesEffect"].default_value == "Audit"
    member = custom.policy_definitions[0]
    assert (member.policy_definition_id, member.policy_definition_reference_id) == (definition, "allowedImages")
    assert member.parameters["allowedContainerImagesRegex"].value == "[parameters('imageRegex')]"
    assert client.policy_set_definitions.get_built_in("k8s-builtin").policy_type == "BuiltIn"
    with pytest.raises(ResourceNotFoundError) as missing:
        client.policy_set_definitions.get("k8s-builtin")  # a built-in is not a subscription's own
    assert missing.value.error.code == "PolicySetDefinitionNotFound"


def test_exemptions_through_the_policy_clients_pipeline(arm: ArmServer, assigned: dict[str, Any]) -> None:
    """azure-mgmt-resource-policy 1.0.0 dropped the exemptions group: the client's send_request reaches them."""
    from azure.core.rest import HttpRequest

    sub = f"/subscriptions/{arm.subscription}"
    arm.policy.add_exemption(f"{sub}/resourceGroups/rg-aks", "legacy-team", assigned["sub"]["id"], category="Waiver")
    arm.policy.add_exemption(sub, "old", assigned["mg"]["id"], category="Mitigated", expires_on="2020-01-01T00:00:00Z")
    arm.policy.add_exemption(f"{sub}/resourceGroups/rg-other", "elsewhere", assigned["sub"]["id"])
    client = policy_client(arm)

    def exemptions(scope: str, flt: str) -> list[dict[str, Any]]:
        url = f"{scope}/providers/Microsoft.Authorization/policyExemptions"
        request: HttpRequest | None = HttpRequest(
            "GET", url, params={"api-version": "2022-07-01-preview", "$filter": flt}
        )
        found = []
        while request is not None:  # paging by hand: send_request does not follow nextLink
            response = client.send_request(request)
            response.raise_for_status()
            page = response.json()
            found += page["value"]
            request = HttpRequest("GET", page["nextLink"]) if page.get("nextLink") else None
        return found

    arm.page_size = 1
    at_rg = exemptions(f"{sub}/resourceGroups/rg-aks", "atScope()")
    assert [e["name"] for e in at_rg] == ["old", "legacy-team"]
    assert at_rg[1]["properties"]["policyAssignmentId"] == assigned["sub"]["id"]
    assert [e["name"] for e in exemptions(f"{sub}/resourceGroups/rg-aks", "excludeExpired()")] == ["legacy-team"]
    by_assignment = exemptions(sub, f"policyAssignmentId eq '{assigned['mg']['id']}'")
    assert [e["name"] for e in by_assignment] == ["old"]
    assert json.dumps(at_rg).count("_scope") == 0  # nothing private leaks into the served shape
    assert len(arm.requests("GET", "/policyExemptions")) == 4  # one item a page: 2 + 1 + 1
