"""Entra ID for Azure Container Registry: an Entra ID (Azure AD) access token becomes an ACR refresh token.

azure-identity's ``DefaultAzureCredential`` (az login, managed identity, workload identity, the
service-principal ``AZURE_*`` environment variables), or any azure-core ``TokenCredential`` passed in,
gives an access token for ``https://containerregistry.azure.net/.default``. It is exchanged once::

    POST https://<registry>/oauth2/exchange
    grant_type=access_token&service=<host>&tenant=<tenant, if known>&access_token=<Entra ID token>
    → {"refresh_token": "<JWT>"}

and the refresh token is cached until shortly before its ``exp`` (read from the JWT payload without
verifying it; 3 hours if it is not a JWT), so a sync costs one exchange, not one per request. The
registry client presents it to the token realm (``POST /oauth2/token``, ``grant_type=refresh_token``)
for each scope.

Where the exchange goes: as ``az acr login`` does, the first exchange pings ``<base>/v2/`` and takes
the sibling ``/oauth2/exchange`` of the Bearer challenge's realm (and the challenge's ``service``);
without a usable challenge it posts to ``<base>/oauth2/exchange`` with ``service=<host>``. ``<base>``
is the registry's ``endpoint`` setting when one is configured (a private endpoint or proxy), else
``https://<host>``; ``insecure`` and ``ca_file`` are honoured. A realm on another host name than the
base or the registry host is not followed (the Entra ID token would go to a third party): it is
logged and the base is used. On real ACR the realm is ``https://<host>/oauth2/token``, so both ways
agree. The tenant is the registry's ``tenant`` setting, else the ``tid`` claim of the Entra ID token.

Tokens never appear in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from manifests_rewriter.config import RegistrySettings

from .credentials import CredentialError, RefreshTokenSource

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

AAD_SCOPE = "https://containerregistry.azure.net/.default"
DEFAULT_LIFETIME = 3 * 3600.0  # when the refresh token is not a JWT with exp
REFRESH_MARGIN = 300.0  # renew this long before expiry (at most a tenth of the token's lifetime)


class AcrExchangeError(CredentialError):
    """The Entra ID → ACR refresh-token exchange failed."""


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, not verified (only to read ``exp``/``tid``); None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def jwt_expiry(token: str) -> float | None:
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def registry_base_urls(host: str, settings: RegistrySettings) -> list[str]:
    """Where requests for ``host`` go: the ``endpoint`` setting or ``https://host``. With ``insecure``
    and no scheme given, https is tried first and plain http second."""
    target = (settings.endpoint or host).rstrip("/")
    if target.startswith(("https://", "http://")):
        return [target]
    if settings.insecure:
        return [f"https://{target}", f"http://{target}"]
    return [f"https://{target}"]


def tls_verify(settings: RegistrySettings) -> ssl.SSLContext | bool:
    if settings.ca_file:
        try:
            return ssl.create_default_context(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise CredentialError(f"loading CA file {settings.ca_file}: {exc}") from None
    return not settings.insecure


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _error_detail(response: httpx.Response, secrets: tuple[str, ...]) -> str:
    detail = ""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        detail = "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
            for e in body["errors"] if isinstance(e, dict)
        )
    elif isinstance(body, dict) and (body.get("error") or body.get("message")):
        detail = str(body.get("error_description") or body.get("message") or body.get("error"))
    else:
        detail = response.text.strip().splitlines()[0] if response.text.strip() else ""
    detail = _redact(detail[:300], secrets)
    return f"HTTP {response.status_code} {response.reason_phrase}" + (f": {detail}" if detail else "")


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def bearer_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a ``Bearer`` challenge in a WWW-Authenticate header, or None."""
    match = re.search(r"(?i)\bbearer\s+", header)
    if match is None:
        return None
    params: dict[str, str] = {}
    for m in _CHALLENGE_PARAM.finditer(header, match.end()):
        params.setdefault(m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3))
    return params


def exchange_url_for_realm(realm: str) -> str:
    """The ``/oauth2/exchange`` that goes with a token realm (ACR: ``https://<host>/oauth2/token``)."""
    parts = urlsplit(realm)
    path = parts.path.rstrip("/")
    path = path.removesuffix("/token") + "/exchange" if path.endswith("/token") else "/oauth2/exchange"
    return f"{parts.scheme}://{parts.netloc}{path}"


_default_lock = threading.Lock()
_default_credential: TokenCredential | None = None


def default_azure_credential() -> TokenCredential:
    """One ``DefaultAzureCredential`` per process (it caches the Entra ID tokens it obtains)."""
    global _default_credential
    with _default_lock:
        if _default_credential is None:
            from azure.identity import DefaultAzureCredential

            _default_credential = DefaultAzureCredential()
        return _default_credential


class AcrRefreshTokenSource(RefreshTokenSource):
    """An ACR refresh token for one registry, exchanged from Entra ID, cached and renewed; thread-safe.

    ``credential``: an azure-core ``TokenCredential``; None means ``DefaultAzureCredential``, created
    on first use. ``clock`` returns epoch seconds (tests pass their own)."""

    def __init__(
        self,
        host: str,
        settings: RegistrySettings | None = None,
        *,
        credential: TokenCredential | None = None,
        timeout: float = 30.0,
        margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.settings = settings or RegistrySettings()
        self._credential = credential
        self._timeout = timeout
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.expires_at = 0.0
        self.exchanges = 0  # completed exchanges, for diagnostics and tests
        self._bases = registry_base_urls(host, self.settings)
        self._target: tuple[str, str] | None = None  # (exchange URL, service), found on first exchange

    @property
    def credential_name(self) -> str:
        return type(self._credential).__name__ if self._credential is not None else "DefaultAzureCredential"

    @property
    def exchange_url(self) -> str:
        return self._target[0] if self._target else f"{self._bases[0]}/oauth2/exchange"

    def refresh_token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                self._exchange()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._refresh_at = 0.0

    def _aad_token(self) -> str:
        credential = self._credential if self._credential is not None else default_azure_credential()
        try:
            return credential.get_token(AAD_SCOPE).token
        except Exception as exc:  # azure-identity raises ClientAuthenticationError and others
            message = str(exc).strip()[:1500] or type(exc).__name__
            raise AcrExchangeError(
                f"getting an Entra ID token for {AAD_SCOPE} with {self.credential_name} for {self.host}: {message}"
            ) from None

    def _exchange(self) -> None:
        aad = self._aad_token()
        tenant = self.settings.tenant
        if not tenant:
            claims = jwt_claims(aad) or {}
            tenant = claims.get("tid") if isinstance(claims.get("tid"), str) else None
        verify = tls_verify(self.settings)
        with httpx.Client(verify=verify, timeout=self._timeout) as client:
            url, service = self._target or self._discover(client)
            form = {"grant_type": "access_token", "service": service, "access_token": aad}
            if tenant:
                form["tenant"] = tenant
            try:
                response = client.post(url, data=form, headers={"Accept": "application/json"})
            except httpx.HTTPError as exc:
                raise AcrExchangeError(
                    f"exchanging Entra ID token for an ACR refresh token at {url}: "
                    f"{_redact(str(exc) or type(exc).__name__, (aad,))}"
                ) from None
        self._target = (url, service)
        what = f"exchanging Entra ID token for an ACR refresh token at {url}"
        if response.status_code != 200:
            raise AcrExchangeError(f"{what}: {_error_detail(response, (aad,))}")
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise AcrExchangeError(f"{what}: the answer is not JSON") from None
        token = body.get("refresh_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AcrExchangeError(f"{what}: the answer has no refresh_token")
        now = self._clock()
        exp = jwt_expiry(token)
        lifetime = (exp - now) if exp is not None else DEFAULT_LIFETIME
        if lifetime <= 0:
            log.warning("%s: the refresh token has already expired (exp %s, clock skew?); not caching it", what, exp)
            self._refresh_at = now
        else:
            self._refresh_at = now + lifetime - min(self._margin, lifetime / 10)
        self._token = token
        self.expires_at = now + lifetime
        self.exchanges += 1
        log.debug("exchanged an Entra ID token (%s) for an ACR refresh token for %s at %s; valid %.0f s",
                  self.credential_name, self.host, url, lifetime)

    def _discover(self, client: httpx.Client) -> tuple[str, str]:
        """Ping ``<base>/v2/`` for the Bearer challenge: the exchange URL and service to use."""
        for index, base in enumerate(self._bases):
            default = (f"{base}/oauth2/exchange", self.host)
            try:
                response = client.get(f"{base}/v2/")
            except httpx.ConnectError as exc:
                if index + 1 < len(self._bases):
                    log.debug("%s/v2/: %s; trying %s", base, type(exc).__name__, self._bases[index + 1])
                    continue
                raise AcrExchangeError(
                    f"exchanging Entra ID token for an ACR refresh token at {default[0]}: {exc}") from None
            except httpx.HTTPError as exc:
                log.debug("%s/v2/: %s; exchanging at %s", base, exc, default[0])
                return default
            challenge = bearer_challenge(response.headers.get("WWW-Authenticate", "")) \
                if response.status_code == 401 else None
            realm = (challenge or {}).get("realm")
            if not challenge or not realm:
                return default
            realm_parts, base_parts = urlsplit(realm), urlsplit(base)
            allowed = {base_parts.hostname, urlsplit(f"//{self.host}").hostname}
            downgrade = realm_parts.scheme == "http" and base_parts.scheme == "https" and not self.settings.insecure
            if realm_parts.scheme not in ("http", "https") or realm_parts.hostname not in allowed or downgrade:
                log.warning("%s: the token realm %s is not on %s; exchanging the Entra ID token at %s instead",
                            self.host, realm, " or ".join(sorted(h for h in allowed if h)), default[0])
                return default
            return exchange_url_for_realm(realm), challenge.get("service") or self.host
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        state = "cached" if self._token is not None else "empty"
        return (f"AcrRefreshTokenSource(host={self.host!r}, url={self.exchange_url!r}, "
                f"credential={self.credential_name}, {state})")


_shared_lock = threading.Lock()
_shared: dict[tuple[Any, ...], tuple[AcrRefreshTokenSource, object]] = {}


def shared_refresh_token_source(
    host: str, settings: RegistrySettings, *, credential: TokenCredential | None = None
) -> AcrRefreshTokenSource:
    """One token source per (host, endpoint, TLS settings, tenant, credential) for the whole process,
    so every client and thread that talks to a registry shares one cached refresh token."""
    key = (host, settings.endpoint, settings.insecure, settings.ca_file, settings.tenant, id(credential))
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None or entry[1] is not credential:
            entry = (AcrRefreshTokenSource(host, settings, credential=credential), credential)
            _shared[key] = entry
        return entry[0]


def clear_shared_sources() -> None:
    with _shared_lock:
        _shared.clear()


__all__ = [
    "AAD_SCOPE",
    "AcrExchangeError",
    "AcrRefreshTokenSource",
    "bearer_challenge",
    "clear_shared_sources",
    "default_azure_credential",
    "exchange_url_for_realm",
    "jwt_claims",
    "jwt_expiry",
    "registry_base_urls",
    "shared_refresh_token_source",
    "tls_verify",
]
