"""Azure Resource Manager for container registries (the one module that imports
azure-mgmt-containerregistry): find the target registry and its tier, import images server-side
(`importImage`), and manage artifact-cache rules and credential sets.

Where the target registry is, first that applies (`azure:` settings):
`registry_id`; `subscription` + `resource_group` (the group's registries, matched on the login
server); `subscription` (every registry of it, the same). The ARM endpoint and token audience
are the cloud's, or `azure.arm_endpoint` (the same client settings as --policy-from-azure,
mirror.azure.identity.arm_client_kwargs); tokens come from azure-identity (mirror.azure.identity).

Long-running operations (import, cache rule and credential set creation) are polled to their end
by azure-core (`Azure-AsyncOperation`, else `Location`; `Retry-After` when ARM sends it, else
`azure.poll_interval`). azure-core retries 429 and 5xx, honouring `Retry-After`, up to
`copy.retries` times.

Every failure is an `ArmError`: one line saying what was being done, ARM's error code and
message (remote text, cut short), and what to do next. Request bodies, which carry an import's
source credentials, never appear in an error or a log line.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manifests_rewriter.errors import AcrMirrorError

from .identity import arm_client_kwargs, default_credential

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from ..settings import AzureSettings

_ID = re.compile(r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.ContainerRegistry"
                 r"/registries/([^/]+)", re.IGNORECASE)
_MAX_MESSAGE = 300


class ArmError(AcrMirrorError):
    """An ARM operation that failed: what, ARM's code and message, and what to do next."""

    names_operation = True

    def __init__(self, operation: str, code: str, message: str, hint: str = ""):
        self.operation, self.code, self.hint = operation, code, hint
        self.message = " ".join(message.split())[:_MAX_MESSAGE]  # remote text: one line, short
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.operation}: {self.code}: {self.message}" + (f"; {self.hint}" if self.hint else "")


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcrRegistry:
    """A registry as ARM describes it."""

    id: str
    name: str
    resource_group: str
    subscription: str
    login_server: str
    sku: str  # Basic | Standard | Premium


@dataclass(frozen=True)
class SourceCredentials:
    """What an import passes to the source registry (from acr-mirror's keychain)."""

    username: str
    password: str = field(repr=False)
    origin: str = ""  # where acr-mirror found them, for messages


@dataclass(frozen=True)
class ImportRequest:
    """One `importImage` call: the source (a registry by URI, or an ACR by resource id), the
    tags it gets in the target registry, and the mode."""

    registry_id: str  # the target registry's resource id
    source_image: str  # repository:tag or repository@digest, in the source registry
    target_tags: tuple[str, ...]  # repository:tag in the target
    mode: str = "NoForce"
    registry_uri: str | None = None
    resource_id: str | None = None
    credentials: SourceCredentials | None = None

    @property
    def source(self) -> str:
        if self.resource_id:
            return f"{self.source_image} from {self.resource_id}"
        return f"{self.registry_uri}/{self.source_image}"

    def body(self) -> dict[str, Any]:
        source: dict[str, Any] = {"sourceImage": self.source_image}
        if self.resource_id:
            source["resourceId"] = self.resource_id
        else:
            source["registryUri"] = self.registry_uri
        if self.credentials is not None:
            source["credentials"] = {"username": self.credentials.username, "password": self.credentials.password}
        return {"source": source, "targetTags": list(self.target_tags), "mode": self.mode}

    def describe(self) -> str:
        """The request as one line (never the password)."""
        who = (f", credentials of {self.credentials.username} from {self.credentials.origin}"
               if self.credentials is not None else "")
        return (f"POST {self.registry_id}/importImage source {self.source} targetTags "
                f"[{', '.join(self.target_tags)}] mode {self.mode}{who}")


@dataclass(frozen=True)
class CacheRule:
    name: str
    source: str  # sourceRepository, e.g. docker.io/library/*
    target: str  # targetRepository, e.g. docker.io/library/*
    credential_set_id: str | None = None
    state: str = ""


@dataclass(frozen=True)
class CredentialSet:
    id: str
    name: str
    login_server: str
    username_secret: str | None
    password_secret: str | None
    health: str  # Healthy | Unhealthy | ""
    health_error: str = ""
    principal_id: str | None = None  # the identity that must be allowed to read the secrets


def parse_registry_id(resource_id: str) -> tuple[str, str, str]:
    """(subscription, resource group, name) of a registry's resource id."""
    match = _ID.fullmatch(resource_id.rstrip("/"))
    if match is None:
        raise ArmError(f"read registry id {resource_id}", "InvalidResourceId",
                       "not a Microsoft.ContainerRegistry/registries resource id")
    subscription, group, name = match.groups()
    return subscription, group, name


# -- the client ------------------------------------------------------------------------------


class Arm:
    """ARM calls for acr-mirror; one per run. Thread-safe (clients are created once per subscription)."""

    def __init__(self, settings: AzureSettings, *, credential: TokenCredential | None = None,
                 retries: int = 5, timeout: float = 60.0):
        self.settings = settings
        self.endpoint = settings.arm_endpoint or f"ARM of {settings.cloud}"  # for messages
        self._credential = credential
        self._retries, self._timeout = retries, timeout
        self._lock = threading.Lock()
        self._listing = threading.Lock()  # one listing at a time: the others wait for its result
        self._clients: dict[str, Any] = {}
        self._registries: dict[str, AcrRegistry] = {}  # login server -> registry, as found
        self._listed: list[AcrRegistry] | None = None

    def _client(self, subscription: str) -> Any:
        with self._lock:
            client = self._clients.get(subscription)
            if client is None:
                from azure.mgmt.containerregistry import ContainerRegistryManagementClient

                kwargs: dict[str, Any] = {
                    **arm_client_kwargs(self.settings),  # endpoint and audience (cloud or arm_endpoint), CA
                    "polling_interval": self.settings.poll_interval, "retry_total": self._retries,
                    "connection_timeout": min(self._timeout, 15.0), "read_timeout": self._timeout,
                }
                credential = self._credential or default_credential(self.settings.cloud)
                client = self._clients[subscription] = ContainerRegistryManagementClient(
                    credential, subscription, **kwargs)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> Arm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registries

    def registry(self, login_server: str) -> AcrRegistry:
        """The target registry, as the `azure:` settings locate it; its login server must be `login_server`."""
        key = login_server.lower()
        with self._lock:
            found = self._registries.get(key)
        if found is not None:
            return found
        settings = self.settings
        if settings.registry_id:
            subscription, group, name = parse_registry_id(settings.registry_id)
            operation = f"read registry {settings.registry_id}"
            raw = self._call(operation, lambda: self._client(subscription).registries.get(group, name))
            found = _registry(raw)
            if found.login_server.lower() != key:
                raise ArmError(operation, "WrongRegistry",
                               f"its login server is {found.login_server}, not {login_server}",
                               "make azure.registry_id and target.registry name the same registry")
        elif settings.subscription:
            found = self.find(login_server)
            if found is None:
                where = (f"resource group {settings.resource_group}" if settings.resource_group
                         else f"subscription {settings.subscription}")
                raise ArmError(f"find registry {login_server}", "RegistryNotFound", f"no registry of {where} has "
                               f"the login server {login_server}",
                               "check target.registry and azure.subscription / azure.resource_group, "
                               "or give azure.registry_id")
        else:
            raise ArmError(f"find registry {login_server}", "NotConfigured",
                           "ARM does not know where the registry is",
                           "set azure.registry_id (or azure.subscription, and azure.resource_group) in the config")
        with self._lock:
            self._registries[key] = found
        return found

    def find(self, login_server: str) -> AcrRegistry | None:
        """A registry of the configured subscription (or resource group) with this login server."""
        for registry in self.registries():
            if registry.login_server.lower() == login_server.lower():
                return registry
        return None

    def registries(self) -> list[AcrRegistry]:
        """The registries of the configured subscription (or resource group), listed once."""
        with self._listing:
            if self._listed is None:
                self._listed = self._list()
            return self._listed

    def _list(self) -> list[AcrRegistry]:
        settings = self.settings
        subscription = settings.subscription or (parse_registry_id(settings.registry_id)[0]
                                                 if settings.registry_id else None)
        if subscription is None:
            return []
        operations = self._client(subscription).registries
        if settings.resource_group and settings.subscription:
            operation = f"list the registries of resource group {settings.resource_group}"
            listed = self._call(operation, lambda: [_registry(r) for r in
                                                    operations.list_by_resource_group(settings.resource_group)])
        else:
            operation = f"list the registries of subscription {subscription}"
            listed = self._call(operation, lambda: [_registry(r) for r in operations.list()])
        return listed

    # -- import

    def import_image(self, registry: AcrRegistry, request: ImportRequest, *, timeout: float) -> None:
        """Run one import to its end; raises ArmError (accepted-then-failed included)."""
        operation = f"import {request.source} into {registry.login_server}"
        operations = self._client(registry.subscription).registries

        def run() -> None:
            poller = operations.begin_import_image(registry.resource_group, registry.name, request.body())
            poller.result(timeout=timeout)
            if not poller.done():
                raise ArmError(operation, "Timeout", f"still running after {timeout:g} s",
                               "the import goes on in Azure: run sync again later (it finds the image there), "
                               "or raise azure.import_timeout")

        self._call(operation, run, source=request.registry_uri or request.resource_id)

    # -- cache rules and credential sets

    def cache_rules(self, registry: AcrRegistry) -> list[CacheRule]:
        operations = self._client(registry.subscription).cache_rules
        return self._call(f"list the cache rules of {registry.name}", lambda: [
            _cache_rule(r) for r in operations.list(registry.resource_group, registry.name)])

    def credential_sets(self, registry: AcrRegistry) -> list[CredentialSet]:
        operations = self._client(registry.subscription).credential_sets
        return self._call(f"list the credential sets of {registry.name}", lambda: [
            _credential_set(c) for c in operations.list(registry.resource_group, registry.name)])

    def create_credential_set(self, registry: AcrRegistry, name: str, login_server: str, username_secret: str,
                              password_secret: str) -> CredentialSet:
        """A credential set whose secrets ACR reads from Key Vault with its own (system) identity."""
        body = {"properties": {"loginServer": login_server, "authCredentials": [
            {"name": "Credential1", "usernameSecretIdentifier": username_secret,
             "passwordSecretIdentifier": password_secret}]}, "identity": {"type": "SystemAssigned"}}
        operations = self._client(registry.subscription).credential_sets
        return self._call(f"create credential set {name} in {registry.name}", lambda: _credential_set(
            operations.begin_create(registry.resource_group, registry.name, name, body).result()))

    def create_cache_rule(self, registry: AcrRegistry, name: str, source: str, target: str,
                          credential_set_id: str | None = None) -> CacheRule:
        properties: dict[str, Any] = {"sourceRepository": source, "targetRepository": target}
        if credential_set_id:
            properties["credentialSetResourceId"] = credential_set_id
        operations = self._client(registry.subscription).cache_rules
        return self._call(f"create cache rule {name} ({target} <- {source}) in {registry.name}", lambda: _cache_rule(
            operations.begin_create(registry.resource_group, registry.name, name, {"properties": properties}).result()))

    # -- errors

    def _call(self, operation: str, fn: Any, *, source: str | None = None) -> Any:
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        try:
            return fn()
        except ArmError:
            raise
        except HttpResponseError as exc:
            error = getattr(exc, "error", None)
            code = getattr(error, "code", None) or (f"HTTP {exc.status_code}" if exc.status_code else "Failed")
            message = getattr(error, "message", None) or exc.reason or type(exc).__name__
            raise ArmError(operation, str(code), str(message), _hint(str(code), str(message), source)) from None
        except ClientAuthenticationError as exc:  # no token at all: azure-identity's own failure
            raise ArmError(operation, "NoToken", str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                           f"sign in for {self.endpoint}: az login, a managed or workload identity, "
                           f"or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET") from None
        except AzureError as exc:  # connection failures, timeouts
            raise ArmError(operation, type(exc).__name__, str(exc) or type(exc).__name__,
                           f"check that {self.endpoint} is reachable (azure.cloud, azure.arm_endpoint, "
                           f"azure.ca_file)") from None


def _hint(code: str, message: str, source: str | None) -> str:
    """What to do next about an ARM error (codes from the REST specs; import wording from az acr import)."""
    text = message.lower()
    where = source or "the source"
    settings = f"registries.{source}.username + password_env, or docker login" if source else "docker login"
    if "already exists in target registry" in text:
        return ("the target tag holds another image: set azure.import_mode: Force to overwrite it, "
                "or choose another target name")
    if code in ("TooManyRequests",) or "toomanyrequests" in text or "throttl" in text:
        return (f"{where} throttled the import: run sync again later; credentials for {where} raise its limit "
                f"(Docker Hub: docker login)")
    if "unauthorized" in text or "authentication required" in text or "denied" in text:
        return (f"{where} refused the import: give acr-mirror credentials for it ({settings}); "
                f"they are passed along with the import")
    if "unable to find manifest" in text or "manifest unknown" in text or "not found in source" in text:
        return f"{where} has no such image: check the reference (a pinned digest upstream deleted cannot be imported)"
    if code == "QuotaExceeded" or "quota" in text:
        return "the registry's quota is reached: delete what is unused (acr purge) or raise its tier"
    if code in ("AuthorizationFailed", "LinkedAuthorizationFailed"):
        return ("the Azure identity lacks the permission: it needs Microsoft.ContainerRegistry/registries/"
                "importImage/action (and cacheRules/credentialSets write for cache-rules), e.g. Contributor "
                "on the registry")
    if code in ("InvalidAuthenticationToken", "AuthenticationFailed", "ExpiredAuthenticationToken",
                "InvalidAuthenticationTokenTenant", "InvalidAuthenticationTokenAudience"):
        return "ARM refused the token: sign in again, and check azure.cloud / azure.arm_endpoint and the tenant"
    if code in ("ResourceNotFound", "ResourceGroupNotFound", "SubscriptionNotFound"):
        return "check azure.registry_id (or azure.subscription / azure.resource_group)"
    return ""


def _text(value: Any) -> str:
    """The SDK's str enums (SkuName.STANDARD) as their value ("Standard"); None as ""."""
    return str(getattr(value, "value", value) or "")


def _registry(raw: Any) -> AcrRegistry:
    subscription, group, name = parse_registry_id(raw.id)
    return AcrRegistry(raw.id, raw.name or name, group, subscription, raw.login_server or "",
                       _text(raw.sku.name if raw.sku is not None else None))


def _cache_rule(raw: Any) -> CacheRule:
    return CacheRule(raw.name, raw.source_repository or "", raw.target_repository or "",
                     raw.credential_set_resource_id, _text(raw.provisioning_state))


def _credential_set(raw: Any) -> CredentialSet:
    auth = (raw.auth_credentials or [None])[0]
    health = getattr(auth, "credential_health", None)
    identity = getattr(raw, "identity", None)
    return CredentialSet(
        raw.id, raw.name, raw.login_server or "",
        getattr(auth, "username_secret_identifier", None), getattr(auth, "password_secret_identifier", None),
        _text(getattr(health, "status", None)),
        " ".join(str(x) for x in (getattr(health, "error_code", None), getattr(health, "error_message", None)) if x),
        getattr(identity, "principal_id", None))
