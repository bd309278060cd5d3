"""Entra ID tokens through azure-identity (the one module that imports it).

`DefaultAzureCredential` covers `az login`, managed identity, workload identity and the
service-principal `AZURE_*` environment variables; tests and callers may pass any azure-core
`TokenCredential` instead. One default credential per process: it caches the tokens it gets.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..registry.errors import CredentialError
from ..settings import AZURE_CLOUDS, AzureSettings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ACR_SCOPE = "https://containerregistry.azure.net/.default"  # ACR's Entra ID audience
ACR_AUDIENCE = ACR_SCOPE.removesuffix("/.default")

_lock = threading.Lock()
_default: TokenCredential | None = None
_by_cloud: dict[str, TokenCredential] = {}
# Entra ID login hosts of the sovereign clouds (azure.identity.AzureAuthorityHosts members).
_AUTHORITIES = {"AzureChinaCloud": "AZURE_CHINA", "AzureUSGovernment": "AZURE_GOVERNMENT"}


def default_credential(cloud: str | None = None) -> TokenCredential:
    """One `DefaultAzureCredential` per process (per cloud: a sovereign cloud has its own login host)."""
    global _default
    with _lock:
        if cloud in _AUTHORITIES:
            if cloud not in _by_cloud:
                from azure.identity import AzureAuthorityHosts, DefaultAzureCredential

                authority = getattr(AzureAuthorityHosts, _AUTHORITIES[cloud])
                _by_cloud[cloud] = DefaultAzureCredential(authority=authority)
            return _by_cloud[cloud]
        if _default is None:
            from azure.identity import DefaultAzureCredential

            _default = DefaultAzureCredential()
        return _default


class EntraIdTokenProvider:
    """Access tokens for one scope from a TokenCredential (default: DefaultAzureCredential)."""

    def __init__(self, credential: TokenCredential | None = None, scope: str = ACR_SCOPE) -> None:
        self._credential = credential
        self.scope = scope

    @property
    def name(self) -> str:
        return type(self._credential).__name__ if self._credential is not None else "DefaultAzureCredential"

    @property
    def credential(self) -> TokenCredential:
        return self._credential if self._credential is not None else default_credential()

    def access_token(self) -> str:
        try:
            return self.credential.get_token(self.scope).token
        except Exception as exc:  # azure-identity raises ClientAuthenticationError and others
            message = str(exc).strip()[:1500] or type(exc).__name__
            raise CredentialError(f"getting an Entra ID token for {self.scope} with {self.name}: {message}") from None

    def __repr__(self) -> str:
        return f"EntraIdTokenProvider({self.name}, {self.scope})"


def default_entra_id() -> EntraIdTokenProvider:
    return EntraIdTokenProvider()


def arm_client_kwargs(settings: AzureSettings) -> dict[str, Any]:
    """Keyword arguments pointing an azure-mgmt client at the configured ARM."""
    if settings.arm_endpoint:
        endpoint = settings.arm_endpoint.rstrip("/")
        kwargs: dict[str, Any] = {"base_url": endpoint,
                                  "credential_scopes": [settings.arm_scope or f"{endpoint}/.default"]}
        if settings.ca_file:
            kwargs["connection_verify"] = settings.ca_file
        return kwargs
    from azure.core import AzureClouds

    return {"cloud_setting": getattr(AzureClouds, AZURE_CLOUDS[settings.cloud])}
