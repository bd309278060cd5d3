"""`--policy-from-azure SCOPE`: the assignments of the allowed-images definition in force at a
subscription, resource group or cluster, read from Azure Resource Manager (the only module that
imports the Azure SDK's policy client, azure-mgmt-resource-policy).

At SCOPE ARM lists every assignment that applies there (assigned at the scope, inherited from
its resource group, subscription and management groups) and those assigned below it (noted,
not applied); for each initiative among them its set definition is read, and the definition
itself for its parameters' defaults. Exemptions are not in azure-mgmt-resource-policy 1.0 (they
exist only in preview API versions): they are read through the same client's pipeline
(`send_request`: the same credential, retries and cloud settings) at api-version
2022-07-01-preview, paged by hand through `nextLink`. mirror.azure.assignments turns all of it
into the Policy in force.

Endpoints: `azure.cloud` (ARM endpoint and token audience of the public, China or US Government
cloud) or `azure.arm_endpoint` (+ `arm_scope`, `ca_file`) for anything else. Credentials:
DefaultAzureCredential for that cloud (mirror.azure.identity), or the one passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from manifests_rewriter.policy import Policy

from ..settings import AzureSettings
from .assignments import DEFINITION_NAME, Documents, PolicySourceError, plain, policy_from_documents

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

EXEMPTIONS_API_VERSION = "2022-07-01-preview"
_SUBSCRIPTION = r"/subscriptions/(?P<sub>[^/]+)"
_SCOPE = re.compile(rf"{_SUBSCRIPTION}(?:/resourceGroups/(?P<rg>[^/]+)"
                    rf"(?:/providers/(?P<ns>[^/]+)/(?P<type>[^/]+)/(?P<name>[^/]+))?)?", re.IGNORECASE)
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_SET_ID = re.compile(r"(?:/subscriptions/(?P<sub>[^/]+)|/providers/Microsoft\.Management/managementGroups/(?P<mg>[^/]+))?"
                     r"/providers/Microsoft\.Authorization/policySetDefinitions/(?P<name>[^/]+)", re.IGNORECASE)


def parse_scope(scope: str) -> dict[str, str]:
    """A subscription, resource group or resource id (a bare subscription GUID too) -> its parts."""
    text = scope.strip().rstrip("/")
    if _GUID.fullmatch(text):
        text = f"/subscriptions/{text}"
    match = _SCOPE.fullmatch(text)
    if match is None:
        raise PolicySourceError(f"--policy-from-azure {scope}: give a subscription (/subscriptions/ID), a resource "
                                f"group (/subscriptions/ID/resourceGroups/NAME) or a cluster resource id "
                                f"(.../providers/Microsoft.ContainerService/managedClusters/NAME)")
    parts = {k: v for k, v in match.groupdict().items() if v}
    parts["scope"] = text
    return parts


class ArmPolicyReader:
    """The policy resources at one scope, through PolicyClient."""

    def __init__(self, scope: str, settings: AzureSettings, credential: TokenCredential | None = None) -> None:
        from azure.mgmt.resource.policy import PolicyClient

        from .identity import arm_client_kwargs, default_credential

        self.parts = parse_scope(scope)
        self.scope = self.parts["scope"]
        self.client = PolicyClient(credential or default_credential(settings.cloud), self.parts["sub"],
                                   **arm_client_kwargs(settings))

    def assignments(self) -> list[dict[str, Any]]:
        """At the scope, inherited from above it, and assigned below it (ARM's unfiltered list)."""
        ops, p = self.client.policy_assignments, self.parts
        if "name" in p:
            pages = ops.list_for_resource(p["rg"], p["ns"], "", p["type"], p["name"])
        elif "rg" in p:
            pages = ops.list_for_resource_group(p["rg"])
        else:
            pages = ops.list()
        return [plain(a) for a in pages]

    def set_definition(self, set_id: str) -> dict[str, Any] | None:
        match = _SET_ID.fullmatch(set_id)
        if match is None:
            return None
        ops = self.client.policy_set_definitions
        if match["mg"]:
            found = ops.get_at_management_group(match["mg"], match["name"])
        elif match["sub"]:
            found = ops.get(match["name"])
        else:
            found = ops.get_built_in(match["name"])
        return plain(found)

    def definition(self) -> dict[str, Any]:
        return plain(self.client.policy_definitions.get_built_in(DEFINITION_NAME))

    def exemptions(self) -> Iterator[dict[str, Any]]:
        """Exemptions at, above and below the scope (ARM's unfiltered list), page by page."""
        from azure.core.rest import HttpRequest

        request: HttpRequest | None = HttpRequest(
            "GET", f"{self.scope}/providers/Microsoft.Authorization/policyExemptions",
            params={"api-version": EXEMPTIONS_API_VERSION})
        while request is not None:
            response = self.client.send_request(request)
            response.raise_for_status()
            page = response.json()
            yield from page.get("value") or []
            link = page.get("nextLink")
            request = HttpRequest("GET", link) if link else None


def read_documents(reader: ArmPolicyReader, notes: list[str]) -> Documents:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    docs = Documents()
    docs.assignments = reader.assignments()
    wanted = {str((a.get("properties") or {}).get("policyDefinitionId") or "") for a in docs.assignments}
    for set_id in sorted(i for i in wanted if "/policysetdefinitions/" in i.lower()):
        try:
            found = reader.set_definition(set_id)
        except ResourceNotFoundError:
            notes.append(f"initiative {set_id} could not be read (not found): its assignments are not read")
            continue
        if found is not None:
            docs.sets.append(found)
    try:
        docs.definitions.append(reader.definition())
    except ResourceNotFoundError:
        notes.append(f"the built-in definition {DEFINITION_NAME} could not be read: its published defaults are used")
    try:
        docs.exemptions = list(reader.exemptions())
    except HttpResponseError as exc:
        if isinstance(exc, ClientAuthenticationError):
            raise
        # exemptions only waive: without them the policy is stricter, never laxer
        notes.append(f"policy exemptions at {reader.scope} could not be read ({_message(exc)}): none is applied")
    return docs


def policy_from_azure(scope: str, settings: AzureSettings | None = None, *, credential: TokenCredential | None = None,
                      notes: list[str] | None = None) -> Policy:
    """The allowed-images assignments in force at `scope`, their initiatives and exemptions."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    notes = notes if notes is not None else []
    settings = settings or AzureSettings()
    where = f"reading Azure Policy at {scope}"
    reader = ArmPolicyReader(scope, settings, credential)
    try:
        docs = read_documents(reader, notes)
    except PolicySourceError:
        raise
    except ClientAuthenticationError as exc:
        raise PolicySourceError(f"{where}: authentication failed: {_message(exc)} (az login, or a managed or "
                                f"workload identity with Reader on the scope)") from None
    except HttpResponseError as exc:
        raise PolicySourceError(f"{where}: {_message(exc)}") from None
    except ServiceRequestError as exc:
        raise PolicySourceError(f"{where}: cannot reach Azure Resource Manager: {_message(exc)}") from None
    finally:
        reader.client.close()
    return policy_from_documents(docs, reader.scope, notes, scope=reader.scope)


def _message(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"{error.code}: {error.message}".splitlines()[0][:500]
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]
