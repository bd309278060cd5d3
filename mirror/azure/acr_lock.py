"""Lock mirrored images in an Azure Container Registry against overwrite and deletion (``copy.lock``).

Uses azure-containerregistry's ``ContainerRegistryClient.update_manifest_properties(repository,
digest, can_write=False, can_delete=False)``; that is ACR's own REST API, not the OCI distribution
API, so it runs once per image after the copy has been verified, never on the copy's hot path.
The caller checks ``copy.lock`` and that the target is an ACR.

On the wire (the shape the tests serve on loopback, since Azure cannot run there)::

    GET   /acr/v1/<repository>/_tags/<tag>                  only when a tag is given: → the digest
    PATCH /acr/v1/<repository>/_manifests/<digest>?api-version=2021-07-01
          {"deleteEnabled": false, "writeEnabled": false}   (repository and digest URL-quoted)

answered first with 401 and a ``Bearer`` challenge, which the SDK meets by exchanging an Entra ID
token at ``/oauth2/exchange`` and the refresh token at ``/oauth2/token``. The registry's
``endpoint``, ``insecure`` and ``ca_file`` settings are honoured as by the registry client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from manifests_rewriter.errors import AcrMirrorError
from manifests_rewriter.reference import is_digest

from ..registry.errors import CredentialError, RegistryError
from ..registry.transport import base_urls
from ..settings import RegistrySettings
from .identity import ACR_AUDIENCE, default_credential

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


class LockError(AcrMirrorError):
    """Locking an image failed; the message says which image and why, never a token."""


@dataclass(frozen=True)
class LockResult:
    registry: str
    repository: str
    digest: str
    can_write: bool | None
    can_delete: bool | None


def lock_image(
    host: str,
    repository: str,
    digest_or_tag: str,
    credential: TokenCredential | None = None,
    *,
    settings: RegistrySettings | None = None,
    timeout: float = 60.0,
) -> LockResult:
    """Make ``host/repository@digest_or_tag`` read-only and undeletable in ACR (a tag is resolved to its
    manifest digest first). ``credential``: an azure-core ``TokenCredential``; None means
    ``DefaultAzureCredential``. Raises LockError."""
    from azure.containerregistry import ContainerRegistryClient
    from azure.core.exceptions import AzureError, HttpResponseError

    settings = settings or RegistrySettings()
    what = f"locking {host}/{repository}@{digest_or_tag} against overwrite"
    try:
        endpoint = base_urls(host, settings)[0]
    except RegistryError as exc:  # a plain-HTTP endpoint without insecure: true
        raise LockError(f"{what}: {exc.cause}") from None
    if credential is None:
        credential = default_credential()
    client_options: dict[str, Any] = {"connection_timeout": timeout, "read_timeout": timeout}
    if settings.ca_file:
        client_options["connection_verify"] = settings.ca_file
    elif settings.insecure:
        client_options["connection_verify"] = False
    call_options: dict[str, Any] = {}
    if endpoint.startswith("http://"):  # base_urls allowed it: the host is marked insecure
        call_options["enforce_https"] = False
    try:
        with ContainerRegistryClient(endpoint, credential, audience=ACR_AUDIENCE, **client_options) as client:
            digest = digest_or_tag
            if not is_digest(digest_or_tag):
                digest = client.get_tag_properties(repository, digest_or_tag, **call_options).digest
            properties = client.update_manifest_properties(
                repository, digest, can_write=False, can_delete=False, **call_options
            )
    except HttpResponseError as exc:
        if exc.status_code is not None:  # (ClientAuthenticationError from a credential has no response)
            reason = (exc.reason or "").strip()
            raise LockError(f"{what} at {endpoint}: HTTP {exc.status_code} {reason}".rstrip()) from None
        message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        raise LockError(f"{what} at {endpoint}: {message}") from None
    except (AzureError, CredentialError) as exc:
        message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        raise LockError(f"{what} at {endpoint}: {message}") from None
    return LockResult(host, repository, properties.digest or digest, properties.can_write, properties.can_delete)


__all__ = ["LockError", "LockResult", "lock_image"]
