"""Azure Resource Manager (ARM) served on loopback for tests: container registries and Azure Policy.

No Azure endpoint can run here, so this module serves the REST shapes of ARM that acr-mirror's
Azure features call, over HTTPS with a CA generated at test time (azure-core's bearer-token
policy refuses plain HTTP), to the real Azure SDK clients (azure-mgmt-containerregistry,
azure-mgmt-resource-policy) fed a static test credential.  It is a test double: everything it
answers is shaped after the REST API specifications (Azure/azure-rest-api-specs, see
/work/ext/arm/NOTES.md for the files), but only what acr-mirror uses is served.

- Every request must carry ``Authorization: Bearer <token>`` (``ArmServer.token``): a missing or
  different token gets ARM's 401 (``AuthenticationFailed`` / ``InvalidAuthenticationToken``).
- Microsoft.ContainerRegistry: registries get/list (subscription, resource group) with
  ``sku.name`` and ``properties.loginServer``; ``importImage`` as a long-running operation
  (202 + ``Azure-AsyncOperation`` + ``Location``, polled InProgress → Succeeded/Failed) that
  performs a REAL copy with ``skopeo copy --all --preserve-digests`` between the real local
  registries behind the served ACRs; cacheRules and credentialSets CRUD (PUT/PATCH 201 +
  ``Azure-AsyncOperation``, DELETE 202 + ``Location``), as the 2025-11-01 examples show.
- Microsoft.Authorization: policyAssignments (list at a scope with ``$filter=atScope()``,
  ``atExactScope()``, ``policyDefinitionId eq '…'``, inherited from management groups and the
  subscription; get; get by id), policyDefinitions and policySetDefinitions (built-in,
  subscription, management group), policyExemptions (list with the same filters plus
  ``excludeExpired()`` and ``policyAssignmentId eq '…'``; get).

Loaded as a pytest plugin (``tests/conftest.py``): the ``arm`` fixture is a started server.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.support.registries import KeyPair, Registry, make_ca, make_server_cert

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "azure"
# "Kubernetes cluster containers should only use allowed images", as published in Azure/azure-policy.
ALLOWED_IMAGES_DEFINITION = "febd0533-8e55-448f-b837-bd0e06f16469"
ALLOWED_IMAGES_FIXTURE = FIXTURES / "ContainerAllowedImages.json"

SUBSCRIPTION = "00000000-0000-4000-8000-0000000000a1"
TENANT = "00000000-0000-4000-8000-0000000000f1"
ACR_NS = "Microsoft.ContainerRegistry"
AUTH_NS = "Microsoft.Authorization"

# API versions answered, per provider; the installed SDKs' defaults are added at start.  ARM
# answers any other version with 400 (the SDK then fails loudly rather than talking past us).
ACR_API_VERSIONS = {"2019-05-01", "2023-07-01", "2025-04-01", "2025-11-01"}
POLICY_API_VERSIONS = {"2022-06-01", "2023-04-01", "2024-04-01", "2025-01-01", "2025-03-01", "2026-06-01"}
EXEMPTION_API_VERSIONS = {"2020-07-01-preview", "2022-07-01-preview", "2024-12-01-preview", "2026-01-01-preview"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _key(resource_id: str) -> str:
    """ARM ids compare case-insensitively; trailing slashes and doubled slashes do not count."""
    return re.sub(r"/+", "/", resource_id).rstrip("/").lower()


def sdk_api_versions() -> dict[str, str]:
    """The API versions the installed SDK clients send by default (empty for a missing SDK)."""
    found: dict[str, str] = {}
    with contextlib.suppress(ImportError):
        from azure.mgmt.containerregistry._configuration import ContainerRegistryManagementClientConfiguration

        found["acr"] = ContainerRegistryManagementClientConfiguration(RecordingCredential(""), SUBSCRIPTION).api_version
    with contextlib.suppress(ImportError):
        from azure.mgmt.resource.policy._configuration import PolicyClientConfiguration

        found["policy"] = PolicyClientConfiguration(RecordingCredential(""), SUBSCRIPTION).api_version
    return found


class ArmError(Exception):
    """An ARM error response: ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(resource_type: str, name: str, resource_group: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{resource_type}/{name}' under resource group '{resource_group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


# --------------------------------------------------------------------------- credential


class RecordingCredential:
    """An azure-core ``TokenCredential`` returning a fixed token; records the scopes asked for.

    The scope a client asks for shows whether it was pointed at the right cloud
    (``credential_scopes``), which a static token cannot otherwise reveal.  ``by_scope`` gives
    other tokens for other scopes, e.g. ``{"https://containerregistry.azure.net/.default":
    acr_registry.aad_token}`` so one credential serves ARM and the ACR token exchange.
    """

    def __init__(self, token: str, expires_in: int = 3600, by_scope: Mapping[str, str] | None = None) -> None:
        self.token, self.expires_in = token, expires_in
        self.by_scope = dict(by_scope or {})
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        token = next((self.by_scope[s] for s in scopes if s in self.by_scope), self.token)
        return AccessToken(token, int(time.time()) + self.expires_in)

    def close(self) -> None:
        pass

    def __enter__(self) -> RecordingCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# --------------------------------------------------------------------------- resources


@dataclass(eq=False)
class ServedAcr:
    """An Azure Container Registry as ARM describes it, backed by a real local registry."""

    name: str
    resource_group: str
    subscription: str
    sku: str
    location: str
    registry: Registry  # the real registry: its host is the login server
    cache_rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    credential_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = field(default_factory=_now)

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{ACR_NS}/registries/{self.name}"
        )

    @property
    def login_server(self) -> str:
        return self.registry.host

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": f"{ACR_NS}/registries",
            "location": self.location,
            "tags": {},
            "sku": {"name": self.sku, "tier": self.sku},
            "properties": {
                "loginServer": self.login_server,
                "creationDate": self.created,
                "provisioningState": "Succeeded",
                "adminUserEnabled": self.registry.credentials is not None,
                "publicNetworkAccess": "Enabled",
                "networkRuleBypassOptions": "AzureServices",
                "zoneRedundancy": "Disabled",
                "anonymousPullEnabled": self.registry.auth is None,
                "dataEndpointEnabled": False,
                "dataEndpointHostNames": [],
                "privateEndpointConnections": [],
                "policies": {
                    "quarantinePolicy": {"status": "disabled"},
                    "trustPolicy": {"type": "Notary", "status": "disabled"},
                    "retentionPolicy": {"days": 7, "status": "disabled"},
                    "exportPolicy": {"status": "enabled"},
                },
                "encryption": {"status": "disabled"},
            },
        }


@dataclass
class Operation:
    """A long-running operation: the status monitor behind ``Azure-AsyncOperation`` / ``Location``."""

    id: str  # e.g. registries-<uuid>
    kind: str  # importImage | cacheRules | credentialSets
    resource_id: str
    status: str = "InProgress"
    error: dict[str, str] | None = None
    polls: int = 0  # GETs of its status monitor (Azure-AsyncOperation or Location)
    start: str = field(default_factory=_now)
    end: str | None = None
    body: dict[str, Any] | None = None  # the request body (importImage), for assertions
    done: threading.Event = field(default_factory=threading.Event)
    finish: Callable[[], object] | None = None  # applied once when the operation completes

    def complete(self, error: ArmError | None = None) -> None:
        if error is None:
            self.status = "Succeeded"
        else:
            self.status, self.error = "Failed", {"code": error.code, "message": error.message}
        self.end = _now()
        self.done.set()

    def to_json(self, url: str) -> dict[str, Any]:
        body: dict[str, Any] = {"id": url, "name": self.id, "status": self.status, "startTime": self.start}
        if self.end:
            body["endTime"] = self.end
        if self.error:
            body["error"] = self.error
        return body


@dataclass
class ArmRequest:
    """One request ARM answered, for tests to count and inspect (never holds the token)."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    body: Any = None

    @property
    def api_version(self) -> str | None:
        return self.query["api-version"][0] if self.query.get("api-version") else None


# --------------------------------------------------------------------------- policy store


@dataclass
class PolicyStore:
    """Policy definitions, set definitions, assignments and exemptions, with ARM's scope rules.

    Scopes form a tree: management groups (``management_groups``, root first) above the
    subscription, resource groups, resources.  "Applies to a scope" means assigned at the scope
    or at one of its ancestors; the unfiltered list also has what is assigned below it.
    """

    subscription: str
    management_groups: list[str]  # ancestors of the subscription, root first
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)  # key(id) -> resource
    set_definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    exemptions: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- scopes

    def mg_scope(self, name: str) -> str:
        return f"/providers/Microsoft.Management/managementGroups/{name}"

    def ancestors(self, scope: str) -> list[str]:
        """``scope`` and every scope above it, as keys."""
        scope = _key(scope)
        parts = scope.split("/")
        found = [_key(self.mg_scope(mg)) for mg in self.management_groups]
        if scope.startswith("/providers/microsoft.management/managementgroups/"):
            name = parts[4] if len(parts) > 4 else ""
            names = [mg.lower() for mg in self.management_groups]
            return found[: names.index(name) + 1] if name in names else [scope]
        if not scope.startswith("/subscriptions/"):
            return [scope]
        # /subscriptions/S [/resourceGroups/R [/providers/NS/type/name [...]]]
        found.append("/".join(parts[:3]))
        if len(parts) >= 5:
            found.append("/".join(parts[:5]))
        if len(parts) > 5:
            found.append(scope)
        return found

    def _select(self, items: Mapping[str, dict[str, Any]], scope: str, flt: str | None, kind: str) -> list[dict]:
        """ARM's ``$filter`` semantics for assignments and exemptions listed at ``scope``."""
        at = set(self.ancestors(scope))
        here = _key(scope)
        if flt is None:
            chosen = [i for i in items.values() if _key(i["_scope"]) in at or _key(i["_scope"]).startswith(here + "/")]
        elif flt == "atScope()":
            chosen = [i for i in items.values() if _key(i["_scope"]) in at]
        elif flt == "atExactScope()":
            chosen = [i for i in items.values() if _key(i["_scope"]) == here]
        elif kind == "exemptions" and flt == "excludeExpired()":
            now = _now()
            chosen = [
                i
                for i in items.values()
                if _key(i["_scope"]) in at and (i["properties"].get("expiresOn") or "9999") > now
            ]
        else:
            field_name = "policyAssignmentId" if kind == "exemptions" else "policyDefinitionId"
            match = re.fullmatch(rf"{field_name} eq '([^']*)'", flt)
            if match is None:
                raise ArmError(
                    400,
                    "InvalidFilterInQueryString",
                    f"The filter '{flt}' is not supported. Valid values for $filter are: 'atScope()', "
                    f"'atExactScope()'{', excludeExpired()' if kind == 'exemptions' else ''} or "
                    f"'{field_name} eq '{{value}}''.",
                )
            wanted = _key(match.group(1))
            chosen = [
                i for i in items.values() if _key(i["_scope"]) in at and _key(i["properties"][field_name]) == wanted
            ]
        return sorted(chosen, key=lambda i: (len(self.ancestors(i["_scope"])), i["id"].lower()))

    # -- definitions

    def add_definition(self, definition: Mapping[str, Any], scope: str = "") -> dict[str, Any]:
        """Store a policy definition (``{"properties": ..., "name": ...}``) at ``scope`` ("" = built-in)."""
        resource = copy.deepcopy(dict(definition))
        name = resource.get("name") or str(uuid.uuid4())
        resource.update(
            id=f"{scope}/providers/{AUTH_NS}/policyDefinitions/{name}",
            name=name,
            type=f"{AUTH_NS}/policyDefinitions",
        )
        self.definitions[_key(resource["id"])] = resource
        return resource

    def add_set_definition(
        self,
        name: str,
        policy_definitions: Sequence[Mapping[str, Any]],
        *,
        parameters: Mapping[str, Any] | None = None,
        scope: str = "",
        display_name: str | None = None,
    ) -> dict[str, Any]:
        """An initiative: ``policy_definitions`` are ``{"policyDefinitionId", "policyDefinitionReferenceId",
        "parameters": {name: {"value": ...}}}`` entries."""
        resource: dict[str, Any] = {
            "id": f"{scope}/providers/{AUTH_NS}/policySetDefinitions/{name}",
            "name": name,
            "type": f"{AUTH_NS}/policySetDefinitions",
            "properties": {
                "displayName": display_name or name,
                "policyType": "BuiltIn" if not scope else "Custom",
                "metadata": {"version": "1.0.0", "category": "Kubernetes"},
                "version": "1.0.0",
                "parameters": dict(parameters or {}),
                "policyDefinitions": [{"groupNames": [], **dict(d)} for d in policy_definitions],
                "policyDefinitionGroups": [],
            },
        }
        self.set_definitions[_key(resource["id"])] = resource
        return resource

    # -- assignments and exemptions

    def add_assignment(
        self,
        scope: str,
        name: str,
        policy_definition_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        not_scopes: list[str] | None = None,
        enforcement_mode: str = "Default",
        display_name: str | None = None,
        location: str | None = None,
    ) -> dict[str, Any]:
        """Assign a definition or initiative at ``scope``; ``parameters`` are ``{name: value}``."""
        resource: dict[str, Any] = {
            "id": f"{scope}/providers/{AUTH_NS}/policyAssignments/{name}",
            "type": f"{AUTH_NS}/policyAssignments",
            "name": name,
            "properties": {
                "displayName": display_name or name,
                "policyDefinitionId": policy_definition_id,
                "definitionVersion": "9.*.*",
                "scope": scope,
                "notScopes": list(not_scopes or []),
                "parameters": {k: {"value": v} for k, v in (parameters or {}).items()},
                "enforcementMode": enforcement_mode,
                "metadata": {"assignedBy": "acr-mirror tests", "createdOn": _now()},
                "instanceId": str(uuid.uuid4()),
            },
            "_scope": scope,
        }
        if location:
            resource["location"] = location
        self.assignments[_key(resource["id"])] = resource
        return resource

    def add_exemption(
        self,
        scope: str,
        name: str,
        policy_assignment_id: str,
        *,
        category: str = "Waiver",
        reference_ids: list[str] | None = None,
        expires_on: str | None = None,
        display_name: str | None = None,
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "id": f"{scope}/providers/{AUTH_NS}/policyExemptions/{name}",
            "type": f"{AUTH_NS}/policyExemptions",
            "name": name,
            "properties": {
                "policyAssignmentId": policy_assignment_id,
                "policyDefinitionReferenceIds": list(reference_ids or []),
                "exemptionCategory": category,
                "displayName": display_name or name,
                "assignmentScopeValidation": "Default",
                "metadata": {},
            },
            "systemData": {"createdBy": "tests@example.com", "createdByType": "User", "createdAt": _now()},
            "_scope": scope,
        }
        if expires_on:
            resource["properties"]["expiresOn"] = expires_on
        self.exemptions[_key(resource["id"])] = resource
        return resource


def _public(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A stored resource without the server's private fields."""
    return {k: v for k, v in resource.items() if not k.startswith("_")}


def load_allowed_images_definition() -> dict[str, Any]:
    """The real built-in definition febd0533-… (v9.2.0) as stored in ``tests/fixtures/azure``."""
    return json.loads(ALLOWED_IMAGES_FIXTURE.read_text())


# --------------------------------------------------------------------------- the server


class ArmServer:
    """ARM on ``https://127.0.0.1:PORT``; point the SDK at it with ``sdk_kwargs()``.

    Registries: ``add_registry(name, registry, sku=...)`` serves a real ``Registry`` as an ACR
    whose login server is its ``host``.  ``upstreams`` maps a public registry name
    (``docker.io``) to a local ``Registry`` standing in for it (an import's ``registryUri`` and a
    cache rule's source resolve through it).  ``key_vault`` maps Key Vault secret URIs to values,
    for credential sets.  ``policy`` holds the Azure Policy resources.

    Fault injection: ``throttle(n)`` answers the next ``n`` requests with 429 + ``Retry-After``;
    ``fail_next_import(code, message)`` makes the next import fail with that ARM error.  The
    status monitor of every operation answers ``InProgress`` at least ``min_polls`` times.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        subscription: str = SUBSCRIPTION,
        tenant: str = TENANT,
        management_groups: list[str] | None = None,
        page_size: int = 100,
        import_workers: int = 2,
    ) -> None:
        self.workdir = Path(workdir)
        self.subscription, self.tenant = subscription, tenant
        self.resource_groups: set[str] = set()
        self.token = "arm-test-" + secrets.token_urlsafe(24)
        self.acrs: dict[str, ServedAcr] = {}  # key(id) -> registry
        self.upstreams: dict[str, Registry] = {}
        self.key_vault: dict[str, str] = {}
        self.policy = PolicyStore(subscription, list(management_groups or ["tenant-root"]))
        self.operations: dict[str, Operation] = {}
        self.log: list[ArmRequest] = []
        self.page_size = page_size
        self.min_polls = 1
        self.poll_wait = 0.25  # a status GET waits this long for completion: fewer polls, no busy loop
        self.retry_after: int | None = None  # Retry-After on 202/201 answers (None: as the examples, none)
        self.lro_headers: tuple[str, ...] = ("Azure-AsyncOperation", "Location")  # for importImage
        self.cache_rule_limit = 1000
        self.api_versions = {"acr": set(ACR_API_VERSIONS), "policy": set(POLICY_API_VERSIONS)}
        for family, version in sdk_api_versions().items():
            self.api_versions[family].add(version)
        self.api_versions["exemptions"] = set(EXEMPTION_API_VERSIONS)
        self._throttle: list[int] = []  # Retry-After seconds of the throttled answers to come
        self._import_faults: list[ArmError] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=import_workers, thread_name_prefix="arm-import")
        self.ca: KeyPair = make_ca(self.workdir / "ca", "acr-mirror test ARM CA")
        self.cert: KeyPair = make_server_cert(self.ca, self.workdir / "tls")
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_file

    def start(self) -> ArmServer:
        owner = self

        class Handler(_ArmHandler):
            server_owner = owner

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert.cert_file, self.cert.key_file)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        httpd.daemon_threads = True
        self._httpd, self.port = httpd, httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, name="arm-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ArmServer:
        return self if self._httpd else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a client needs

    def credential(self, by_scope: Mapping[str, str] | None = None) -> RecordingCredential:
        return RecordingCredential(self.token, by_scope=by_scope)

    @property
    def credential_scope(self) -> str:
        """The scope a client of this "cloud" asks tokens for (ARM's audience + /.default)."""
        return self.url + "/.default"

    def sdk_kwargs(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments that point an azure-mgmt client at this server, polling without waiting."""
        return {
            "base_url": self.url,
            "credential_scopes": [self.credential_scope],
            "connection_verify": str(self.ca_file),
            "polling_interval": 0,
            **extra,
        }

    # -- registries

    def add_registry(
        self,
        name: str,
        registry: Registry,
        *,
        sku: str = "Premium",
        resource_group: str = "rg-mirror",
        location: str = "westeurope",
    ) -> ServedAcr:
        if not re.fullmatch(r"[a-zA-Z0-9]{5,50}", name):
            raise ValueError(f"ACR names are 5-50 alphanumerics, not {name!r}")
        acr = ServedAcr(name, resource_group, self.subscription, sku, location, registry)
        self.resource_groups.add(resource_group.lower())
        self.acrs[_key(acr.id)] = acr
        return acr

    def find_registry(self, host: str) -> Registry | None:
        """A local registry known by login server or by the public name it stands in for."""
        if host in self.upstreams:
            return self.upstreams[host]
        for acr in self.acrs.values():
            if acr.login_server == host:
                return acr.registry
        for registry in self.upstreams.values():
            if registry.host == host:
                return registry
        return None

    # -- faults

    def throttle(self, count: int = 1, retry_after: int = 0) -> None:
        """Answer the next ``count`` requests with ARM's 429 and ``Retry-After: retry_after``."""
        with self._lock:
            self._throttle.extend([retry_after] * count)

    def fail_next_import(self, code: str, message: str) -> None:
        """The next importImage operation fails (after being accepted) with this ARM error."""
        with self._lock:
            self._import_faults.append(ArmError(200, code, message))

    def requests(self, method: str | None = None, contains: str = "") -> list[ArmRequest]:
        with self._lock:
            return [
                r for r in self.log if (method is None or r.method == method) and contains.lower() in r.path.lower()
            ]

    def imports(self) -> list[Operation]:
        return [op for op in self.operations.values() if op.kind == "importImage"]

    # -- request handling (called from the handler threads)

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: Any) -> _Answer:
        with self._lock:
            throttled = self._throttle.pop(0) if self._throttle else None
        self.authenticate(headers.get("Authorization"))
        if throttled is not None:
            raise ArmError(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit has been reached for operation type - "
                "Read_ObservationWindow_00:05:00. For more information, see https://aka.ms/armthrottling",
                {"Retry-After": str(throttled)},
            )
        path = re.sub(r"/+", "/", path).rstrip("/") or "/"
        api_version = query["api-version"][0] if query.get("api-version") else None
        if api_version is None:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        lowered = path.lower()
        if "/operationstatuses/" in lowered or "/operationresults/" in lowered:
            return self.operation_status(path)
        marker = f"/providers/{AUTH_NS.lower()}/"
        if marker in lowered:
            return self.policy_request(method, path, lowered.rindex(marker), query, api_version)
        if f"/providers/{ACR_NS.lower()}/" in lowered:
            self.check_version("acr", api_version, "registries")
            return self.acr_request(method, path, query, body, api_version)
        raise ArmError(404, "NotFound", f"No HTTP resource was found that matches the request URI '{path}'.")

    def authenticate(self, header: str | None) -> None:
        challenge = {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/'
            + self.tenant
            + '", error="invalid_token", error_description="The authentication failed."'
        }
        if not header:
            raise ArmError(
                401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.", challenge
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.token):
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.", challenge)

    def check_version(self, family: str, version: str, resource_type: str) -> None:
        if version not in self.api_versions[family]:
            supported = ", ".join(sorted(self.api_versions[family]))
            raise ArmError(
                400,
                "NoRegisteredProviderFound",
                f"No registered resource provider found for location 'westeurope' and API version '{version}' "
                f"for type '{resource_type}'. The supported api-versions are '{supported}'.",
            )

    def check_subscription(self, subscription: str) -> None:
        if subscription.lower() != self.subscription.lower():
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")

    # -- Microsoft.ContainerRegistry

    def acr_request(self, method: str, path: str, query: dict, body: Any, api_version: str) -> _Answer:
        m = re.fullmatch(
            r"/subscriptions/([^/]+)(?:/resourceGroups/([^/]+))?/providers/Microsoft\.ContainerRegistry"
            r"/registries(?:/([^/]+)(?:/([^/]+)(?:/([^/]+))?)?)?",
            path,
            re.IGNORECASE,
        )
        if m is None:
            raise ArmError(
                404, "InvalidResourceType", f"The resource type could not be found in the namespace '{ACR_NS}'."
            )
        subscription, group, name, child, child_name = m.groups()
        self.check_subscription(subscription)
        if group is not None and group.lower() not in self.resource_groups:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        if name is None:
            if method != "GET":
                raise ArmError(
                    405, "MethodNotAllowed", f"The requested resource does not support http method '{method}'."
                )
            found = [
                a.to_json() for a in self.acrs.values() if group is None or a.resource_group.lower() == group.lower()
            ]
            return self.page(found, path, query)
        if group is None:
            raise ArmError(404, "NotFound", f"No HTTP resource was found that matches the request URI '{path}'.")
        acr = self.acrs.get(
            _key(f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{ACR_NS}/registries/{name}")
        )
        if acr is None:
            raise not_found(f"{ACR_NS}/registries", name, group)
        if child is None:
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", f"This served ARM does not {method} registries.")
            return _Answer(200, acr.to_json())
        if child.lower() == "importimage" and child_name is None and method == "POST":
            return self.import_image(acr, body, api_version)
        if child.lower() == "cacherules":
            return self.child_resource(acr, "cacheRules", acr.cache_rules, method, child_name, body, query, api_version)
        if child.lower() == "credentialsets":
            return self.child_resource(
                acr, "credentialSets", acr.credential_sets, method, child_name, body, query, api_version
            )
        raise ArmError(404, "NotFound", f"No HTTP resource was found that matches the request URI '{path}'.")

    def page(self, items: list[dict[str, Any]], path: str, query: dict[str, list[str]]) -> _Answer:
        """One page of a list, with ``nextLink`` (same query plus ``$skipToken``) while more remain."""
        start = int((query.get("$skipToken") or ["0"])[0])
        top = int((query.get("$top") or [str(self.page_size)])[0])
        size = min(top, self.page_size)
        body: dict[str, Any] = {"value": [_public(i) for i in items[start : start + size]]}
        if start + size < len(items) and "$top" not in query:
            rest = {k: v[0] for k, v in query.items() if k != "$skipToken"}
            rest["$skipToken"] = str(start + size)
            body["nextLink"] = (
                self.url + quote(path) + "?" + "&".join(f"{k}={quote(v, safe='()')}" for k, v in rest.items())
            )
        return _Answer(200, body)

    def new_operation(self, kind: str, resource_id: str, prefix: str) -> Operation:
        op = Operation(f"{prefix}-{uuid.uuid4()}", kind, resource_id)
        with self._lock:
            self.operations[op.id] = op
        return op

    def lro_headers_for(self, op: Operation, base: str, api_version: str, which: tuple[str, ...]) -> dict[str, str]:
        headers = {}
        if "Azure-AsyncOperation" in which:
            headers["Azure-AsyncOperation"] = f"{self.url}{base}/operationStatuses/{op.id}?api-version={api_version}"
        if "Location" in which:
            headers["Location"] = f"{self.url}{base}/operationResults/{op.id}?api-version={api_version}"
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def operation_status(self, path: str) -> _Answer:
        """The status monitor: JSON status for ``operationStatuses``, status codes for ``operationResults``."""
        op_id = path.rsplit("/", 1)[1]
        op = self.operations.get(op_id)
        if op is None:
            raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' could not be found.")
        with self._lock:
            op.polls += 1
            polls = op.polls
        # The first min_polls answers are InProgress whatever happened, so every client polls; after
        # that a GET waits a little for the end instead of letting the client spin.
        if polls > self.min_polls and not op.done.is_set():
            op.done.wait(self.poll_wait)
        finished = polls > self.min_polls and op.done.is_set()
        if finished and op.finish is not None:
            op.finish()
            op.finish = None
        location = "/operationresults/" in path.lower()
        if location:
            if not finished:
                return _Answer(202, None, self.retry_header())
            if op.status == "Failed":
                assert op.error is not None
                raise ArmError(400, op.error["code"], op.error["message"])
            return _Answer(204 if op.kind != "importImage" else 200, None)
        status = op.to_json(self.url + path) if finished else {**op.to_json(self.url + path), "status": "InProgress"}
        if not finished:
            status.pop("error", None)
            status.pop("endTime", None)
        return _Answer(200, status, self.retry_header())

    def retry_header(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    # -- importImage

    def import_image(self, acr: ServedAcr, body: Any, api_version: str) -> _Answer:
        if not isinstance(body, dict) or not isinstance(body.get("source"), dict):
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid: 'source' is required.")
        source = body["source"]
        if not source.get("sourceImage"):
            raise ArmError(400, "InvalidParameters", "The 'sourceImage' of the import source is required.")
        if bool(source.get("resourceId")) == bool(source.get("registryUri")):
            raise ArmError(400, "InvalidParameters", "Exactly one of 'resourceId' and 'registryUri' must be given.")
        mode = body.get("mode") or "NoForce"
        if mode not in ("NoForce", "Force"):
            raise ArmError(400, "InvalidParameters", f"The import mode '{mode}' is not valid: NoForce or Force.")
        if not body.get("targetTags") and not body.get("untaggedTargetRepositories"):
            raise ArmError(
                400, "InvalidParameters", "At least one of 'targetTags' or 'untaggedTargetRepositories' is required."
            )
        op = self.new_operation("importImage", acr.id, "registries")
        op.body = copy.deepcopy(body)
        with self._lock:
            fault = self._import_faults.pop(0) if self._import_faults else None
        if fault is not None:
            op.complete(fault)
        else:
            self._pool.submit(self._run_import, acr, op, body, mode)
        base = f"/subscriptions/{acr.subscription}/providers/{ACR_NS}/locations/{acr.location}"
        headers = self.lro_headers_for(op, base, api_version, self.lro_headers)
        return _Answer(202, None, headers)

    def _run_import(self, acr: ServedAcr, op: Operation, body: dict[str, Any], mode: str) -> None:
        try:
            ImportJob(self, acr, op, body, mode).run()
        except ArmError as err:
            op.complete(err)
        except Exception as err:  # a bug here must show as a failed operation, not a hung poll
            op.complete(ArmError(200, "InternalServerError", f"served import crashed: {err!r}"))
        else:
            op.complete()

    # -- cacheRules and credentialSets

    def child_resource(
        self,
        acr: ServedAcr,
        kind: str,
        store: dict[str, dict[str, Any]],
        method: str,
        name: str | None,
        body: Any,
        query: dict[str, list[str]],
        api_version: str,
    ) -> _Answer:
        if name is None:
            if method != "GET":
                raise ArmError(
                    405, "MethodNotAllowed", f"The requested resource does not support http method '{method}'."
                )
            return self.page(list(store.values()), f"{acr.id}/{kind}", query)
        if not re.fullmatch(r"[a-zA-Z0-9-]{5,50}", name):
            raise ArmError(
                400, "InvalidResourceName", f"The resource name '{name}' is invalid: 5-50 alphanumerics or '-'."
            )
        existing = store.get(name.lower())
        resource_type = f"{ACR_NS}/registries/{kind}"
        if method == "GET":
            if existing is None:
                raise not_found(f"{ACR_NS}/registries/{acr.name}/{kind}", name, acr.resource_group)
            return _Answer(200, _public(existing))
        base = f"{acr.id}/{kind}/{name}"
        if method == "DELETE":
            if existing is None:
                return _Answer(204, None)
            if kind == "credentialSets":
                users = [
                    r["name"]
                    for r in acr.cache_rules.values()
                    if _key(r["properties"].get("credentialSetResourceId") or "") == _key(existing["id"])
                ]
                if users:
                    raise ArmError(
                        400,
                        "InvalidParameters",
                        f"The credential set '{name}' is used by cache rules: {', '.join(users)}.",
                    )
            existing["properties"]["provisioningState"] = "Deleting"
            op = self.new_operation(kind, existing["id"], kind.lower())
            op.finish = lambda: store.pop(name.lower(), None)
            op.complete()
            return _Answer(202, None, self.lro_headers_for(op, base, api_version, ("Location",)))
        if method not in ("PUT", "PATCH"):
            raise ArmError(405, "MethodNotAllowed", f"The requested resource does not support http method '{method}'.")
        if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
            raise ArmError(
                400, "InvalidRequestContent", "The request content was invalid and could not be deserialized."
            )
        props = body.get("properties") or {}
        if method == "PATCH":
            if existing is None:
                raise not_found(f"{ACR_NS}/registries/{acr.name}/{kind}", name, acr.resource_group)
            resource = copy.deepcopy(existing)
            allowed = {"credentialSetResourceId"} if kind == "cacheRules" else {"authCredentials"}
            for key, value in props.items():
                if key not in allowed:
                    raise ArmError(400, "InvalidParameters", f"The property '{key}' cannot be updated.")
                resource["properties"][key] = value
            if "identity" in body and kind == "credentialSets":
                resource["identity"] = self.identity(body["identity"])
        else:
            resource = {
                "id": base,
                "name": name,
                "type": resource_type,
                "properties": {k: v for k, v in props.items() if k not in ("provisioningState", "creationDate")},
            }
            resource["properties"]["creationDate"] = (existing or {}).get("properties", {}).get(
                "creationDate"
            ) or _now()
            if kind == "credentialSets":
                resource["identity"] = self.identity(body.get("identity") or {"type": "SystemAssigned"})
        if kind == "cacheRules":
            self.validate_cache_rule(acr, name, resource["properties"], existing is None)
        else:
            self.validate_credential_set(resource["properties"])
        final = copy.deepcopy(resource)
        final["properties"]["provisioningState"] = "Succeeded"
        resource["properties"]["provisioningState"] = "Creating" if existing is None else "Updating"
        store[name.lower()] = resource
        op = self.new_operation(kind, base, kind.lower())
        op.finish = lambda: store.__setitem__(name.lower(), final)
        op.complete()
        headers = self.lro_headers_for(op, base, api_version, ("Azure-AsyncOperation",))
        return _Answer(201, _public(resource), headers)

    def identity(self, requested: Mapping[str, Any]) -> dict[str, Any]:
        kind = requested.get("type", "SystemAssigned")
        return {"type": kind, "principalId": str(uuid.uuid4()), "tenantId": self.tenant}

    def validate_cache_rule(self, acr: ServedAcr, name: str, props: dict[str, Any], new: bool) -> None:
        source, target = props.get("sourceRepository"), props.get("targetRepository")
        if not source or not target:
            raise ArmError(400, "InvalidParameters", "'sourceRepository' and 'targetRepository' are required.")
        for other in acr.cache_rules.values():
            if other["name"].lower() != name.lower() and other["properties"]["targetRepository"] == target:
                raise ArmError(
                    400,
                    "InvalidParameters",
                    f"The target repository '{target}' is used by cache rule '{other['name']}'.",
                )
        if new and len(acr.cache_rules) >= self.cache_rule_limit:
            raise ArmError(
                400, "QuotaExceeded", f"The registry already has {self.cache_rule_limit} cache rules, its limit."
            )
        credential_set = props.get("credentialSetResourceId")
        if credential_set:
            owner, _, set_name = credential_set.rpartition("/credentialSets/")
            if _key(owner) != _key(acr.id) or set_name.lower() not in acr.credential_sets:
                raise ArmError(400, "InvalidParameters", f"The credential set '{credential_set}' does not exist.")

    def validate_credential_set(self, props: dict[str, Any]) -> None:
        if not props.get("loginServer"):
            raise ArmError(400, "InvalidParameters", "'loginServer' is required.")
        for credential in props.get("authCredentials") or []:
            user = credential.get("usernameSecretIdentifier")
            password = credential.get("passwordSecretIdentifier")
            healthy = user in self.key_vault and password in self.key_vault
            credential["credentialHealth"] = (
                {"status": "Healthy"}
                if healthy
                else {
                    "status": "Unhealthy",
                    "errorCode": "KeyVaultSecretNotFound",
                    "errorMessage": "The Key Vault secrets of this credential could not be read.",
                }
            )

    def cache_rule_for(self, acr: ServedAcr, repository: str) -> dict[str, Any] | None:
        """The cache rule whose target matches ``repository`` (exact, or ``prefix/*`` wildcard)."""
        for rule in acr.cache_rules.values():
            target = rule["properties"]["targetRepository"]
            if target == repository or (target.endswith("/*") and repository.startswith(target[:-1])):
                return rule
        return None

    def pull_through(self, acr: ServedAcr, repository: str, reference: str) -> str:
        """What ACR does on a pull of ``repository:reference`` that a cache rule covers: copy it in.

        Returns the digest now in the registry.  (Real ACR does this inside the registry on the
        manifest GET; tests call it where the first pull would happen.)
        """
        rule = self.cache_rule_for(acr, repository)
        if rule is None:
            raise ArmError(404, "NotFound", f"No cache rule of {acr.name} covers {repository}.")
        props = rule["properties"]
        source = props["sourceRepository"]
        if props["targetRepository"].endswith("/*"):
            source = source[:-1] + repository[len(props["targetRepository"]) - 1 :]
        host, _, upstream_repo = source.partition("/")
        creds = None
        if props.get("credentialSetResourceId"):
            set_name = props["credentialSetResourceId"].rpartition("/")[2].lower()
            auth = acr.credential_sets[set_name]["properties"]["authCredentials"][0]
            creds = (self.key_vault[auth["usernameSecretIdentifier"]], self.key_vault[auth["passwordSecretIdentifier"]])
        by_digest = reference.startswith("sha256:")
        job = ImportJob(self, acr, None, {}, "Force")
        tags, untagged = ([], [repository]) if by_digest else ([f"{repository}:{reference}"], [])
        job.copy_from(host, upstream_repo, reference, creds, tags, untagged)
        return job.digest

    # -- Microsoft.Authorization

    def policy_request(self, method: str, path: str, at: int, query: dict, api_version: str) -> _Answer:
        if method != "GET":
            raise ArmError(405, "MethodNotAllowed", f"This served ARM only reads policy resources, not {method}.")
        scope = path[:at]
        rest = path[at + len(f"/providers/{AUTH_NS}/") :].split("/")
        resource_type, name = rest[0], (rest[1] if len(rest) > 1 else None)
        flt = (query.get("$filter") or [None])[0]
        kind = resource_type.lower()
        family = "exemptions" if kind == "policyexemptions" else "policy"
        self.check_version(family, api_version, resource_type)
        if scope.lower().startswith("/subscriptions/"):
            self.check_subscription(scope.split("/")[2])
        if kind in ("policyassignments", "policyexemptions"):
            store = self.policy.assignments if kind == "policyassignments" else self.policy.exemptions
            if name is None:
                chosen = self.policy._select(
                    store, scope or "/", flt, "exemptions" if family == "exemptions" else "assignments"
                )
                return self.page(chosen, path, query)
            found = store.get(_key(path))
            if found is None:
                label = "policy assignment" if kind == "policyassignments" else "policy exemption"
                code = "PolicyAssignmentNotFound" if kind == "policyassignments" else "PolicyExemptionNotFound"
                raise ArmError(404, code, f"The {label} '{name}' is not found.")
            return _Answer(200, _public(found))
        if kind in ("policydefinitions", "policysetdefinitions") and name is not None:
            store = self.policy.definitions if kind == "policydefinitions" else self.policy.set_definitions
            found = store.get(_key(path))
            if found is None:
                label = "policy definition" if kind == "policydefinitions" else "policy set definition"
                code = "PolicyDefinitionNotFound" if kind == "policydefinitions" else "PolicySetDefinitionNotFound"
                raise ArmError(404, code, f"The {label} '{name}' could not be found.")
            return _Answer(200, _public(found))
        raise ArmError(404, "InvalidResourceType", f"The resource type '{resource_type}' is not served here.")


@dataclass
class _Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the import itself


class ImportJob:
    """One importImage: resolve the source, honour NoForce, copy with skopeo (all platforms, same digest)."""

    def __init__(self, arm: ArmServer, acr: ServedAcr, op: Operation | None, body: dict[str, Any], mode: str) -> None:
        self.arm, self.acr, self.op, self.body, self.mode = arm, acr, op, body, mode
        self.digest = ""

    def failure(self, message: str) -> ArmError:
        """The message shape az acr import users see (Azure/acr issues #457, #422; azure-cli #10938)."""
        op_id = self.op.id if self.op else "registries-pullthrough"
        return ArmError(200, "InvalidParameters", f"Operation {op_id} failed. Resource {self.acr.id} {message}")

    def run(self) -> None:
        source = self.body["source"]
        creds = None
        if source.get("resourceId"):
            other = self.arm.acrs.get(_key(source["resourceId"]))
            if other is None:
                raise self.failure(f"The source registry '{source['resourceId']}' could not be found.")
            host, creds = other.login_server, other.registry.credentials  # ACR trusts ARM's caller
        else:
            host = source["registryUri"]
            given = source.get("credentials") or {}
            if given.get("password"):
                creds = (given.get("username") or "", given["password"])
        repository, reference, by_digest = _split_image(source["sourceImage"])
        tags = []
        for target in self.body.get("targetTags") or []:
            repo, _, tag = target.partition(":")
            tags.append(f"{repo}:{tag or ('latest' if by_digest else reference)}")
        untagged = list(self.body.get("untaggedTargetRepositories") or [])
        self.copy_from(host, repository, reference, creds, tags, untagged)

    def copy_from(
        self,
        host: str,
        repository: str,
        reference: str,
        creds: tuple[str, str] | None,
        tags: list[str],
        untagged: list[str],
    ) -> None:
        """Copy ``host/repository`` at ``reference`` (tag or digest) to ``tags`` and, by digest, ``untagged``."""
        from tests.support.images import registry_options, skopeo

        upstream = self.arm.find_registry(host)
        if upstream is not None:
            src_opts = [f"--src-cert-dir={upstream.cert_dir}"] if upstream.tls else ["--src-tls-verify=false"]
            address = upstream.host
        else:
            src_opts, address = ["--src-tls-verify=false"], host
        src_opts.append(f"--src-creds={creds[0]}:{creds[1]}" if creds else "--src-no-creds")
        inspect_opts = [o.replace("--src-", "--") for o in src_opts]
        separator = "@" if reference.startswith("sha256:") else ":"
        found = skopeo(
            "inspect", "--raw", *inspect_opts, f"docker://{address}/{repository}{separator}{reference}", check=False
        )
        if found.returncode != 0:
            raise self.failure(_source_error(found.stderr.decode(errors="replace"), host, repository, reference))
        self.digest = "sha256:" + hashlib.sha256(found.stdout).hexdigest()
        target = self.acr.registry
        if self.mode == "NoForce":  # fail before any copying, as the API documents
            for tag in tags:
                exists = skopeo(
                    "inspect", "--raw", *registry_options(target), f"docker://{target.ref(tag)}", check=False
                )
                if exists.returncode == 0:
                    raise self.failure(f"{tag} Tag {tag} already exists in target registry.")
        # Copy the digest just resolved, so every target gets the same image even if the tag moves.
        pinned = f"docker://{address}/{repository}@{self.digest}"
        destinations = [target.ref(t) for t in tags] + [target.ref(f"{r}@{self.digest}") for r in untagged]
        for destination in destinations:
            copied = skopeo(
                "copy", "--all", "--preserve-digests", "--retry-times=1", *src_opts,
                *registry_options(target, "dest-"), pinned, f"docker://{destination}", check=False,
            )  # fmt: skip
            if copied.returncode != 0:
                raise self.failure(f"Error copying blobs: {_first_line(copied.stderr)}")


def _split_image(image: str) -> tuple[str, str, bool]:
    """``repo:tag`` / ``repo@sha256:…`` / ``repo`` → (repository, tag or digest, by digest)."""
    if "@" in image:
        repository, _, digest = image.partition("@")
        return repository, digest, True
    head, _, last = image.rpartition("/")
    name, _, tag = last.partition(":")
    return (f"{head}/{name}" if head else name), tag or "latest", False


def _first_line(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    return text.splitlines()[-1] if text else "unknown error"


def _source_error(stderr: str, host: str, repository: str, reference: str) -> str:
    """skopeo's complaint about the source, in the words ACR's import uses for it."""
    lowered = stderr.lower()
    if "unauthorized" in lowered or "authentication required" in lowered or "denied" in lowered:
        return (
            'Invalid message Unauthorized Unauthorized {"errors":[{"code":"UNAUTHORIZED","message":"authentication '
            f'required","detail":[{{"Type":"repository","Name":"{repository}","Action":"pull"}}]}}]}}'
        )
    if "toomanyrequests" in lowered or "429" in lowered:
        return f"Source registry {host} throttled the import: toomanyrequests: too many requests"
    if "manifest unknown" in lowered or "not found" in lowered or "name unknown" in lowered:
        return f"Unable to find manifest digest  Repo: {host}/{repository} Tag: {reference} Manifest: "
    return f"Error copying blobs: could not read {host}/{repository}: {stderr.strip().splitlines()[-1:]}"


# --------------------------------------------------------------------------- HTTP


class _ArmHandler(BaseHTTPRequestHandler):
    server_owner: ArmServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        owner = self.server_owner
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError as exc:
                raise ArmError(400, "InvalidRequestContent", f"The request content was invalid: {exc}") from exc
            answer = owner.handle(method, split.path, query, self.headers, body)
        except ArmError as err:
            answer = _Answer(err.status, err.body(), err.headers)
        except Exception as err:  # a bug in the double: answer like ARM would, keep serving
            answer = _Answer(500, {"error": {"code": "InternalServerError", "message": repr(err)}})
        with owner._lock:
            owner.log.append(ArmRequest(method, split.path, query, answer.status, body))
        data = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        request_id = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(data)),
            "x-ms-request-id": request_id,
            "x-ms-correlation-request-id": request_id,
            "x-ms-ratelimit-remaining-subscription-reads"
            if method == "GET"
            else "x-ms-ratelimit-remaining-subscription-writes": "11999",
            **answer.headers,
        }
        if self.headers.get("x-ms-client-request-id"):
            headers["x-ms-client-request-id"] = self.headers["x-ms-client-request-id"]
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


# --------------------------------------------------------------------------- pytest


@pytest.fixture
def arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmServer]:
    """A started ArmServer (stopped at teardown); add registries and policy resources to it."""
    pytest.importorskip("azure.core")
    server = ArmServer(tmp_path_factory.mktemp("arm")).start()
    yield server
    server.stop()
