"""Azure Container Registry's Entra ID exchange: an Entra ID access token becomes an ACR refresh token.

    POST <exchange URL>   grant_type=access_token&service=<service>&tenant=<tenant, if known>&access_token=<token>
    → {"refresh_token": "<JWT>"}

The refresh token is cached until shortly before its `exp` (read from the JWT payload without
verifying it; 3 hours if it is not a JWT), so a run costs one exchange per registry, not one per
request; the authenticator presents it to the token realm (`grant_type=refresh_token`) per scope.

Where the exchange goes, as `az acr login` does: the sibling `/oauth2/exchange` of the Bearer
challenge's realm (and the challenge's `service`), when the realm is on the registry's own host
(its endpoint's or its name's); otherwise `<base>/oauth2/exchange` with `service=<host>` and a
warning (the Entra ID token would go to a third party). On real ACR the realm is
`https://<host>/oauth2/token`, so both agree. The tenant is the registry's `tenant` setting,
else the `tid` claim of the Entra ID token.

Tokens never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .credentials import CredentialError, EntraIdToken
from .errors import RegistryError, parse_error_body
from .transport import Transport

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 3 * 3600.0  # when the refresh token is not a JWT with exp
REFRESH_MARGIN = 300.0  # renew this long before expiry (at most a tenth of the token's lifetime)
MAX_ANSWER = 256 * 1024


class AcrExchangeError(CredentialError):
    """The Entra ID → ACR refresh-token exchange failed."""


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, not verified (only to read `exp`/`tid`); None if not a JWT."""
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


def exchange_url_for_realm(realm: str) -> str:
    """The `/oauth2/exchange` that goes with a token realm (ACR: `https://<host>/oauth2/token`)."""
    parts = urlsplit(realm)
    path = parts.path.rstrip("/")
    path = path.removesuffix("/token") + "/exchange" if path.endswith("/token") else "/oauth2/exchange"
    return f"{parts.scheme}://{parts.netloc}{path}"


class AcrExchange:
    """The refresh token one ACR host issues for Entra ID tokens; thread-safe, one per host and
    run. `clock` returns epoch seconds (tests pass their own)."""

    def __init__(self, host: str, entra_id: EntraIdToken, transport: Transport, *, tenant: str | None = None,
                 margin: float = REFRESH_MARGIN, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.entra_id = entra_id
        self.transport = transport
        self.tenant = tenant
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.expires_at = 0.0
        self.exchanges = 0
        self.exchange_url: str | None = None

    def refresh_token(self, base: str, realm: str | None, service: str | None) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                self._exchange(*self._target(base, realm, service))
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (the realm refused it); the next call exchanges anew."""
        with self._lock:
            self._token = None
            self._refresh_at = 0.0

    def _target(self, base: str, realm: str | None, service: str | None) -> tuple[str, str]:
        default = (f"{base.rstrip('/')}/oauth2/exchange", self.host)
        if not realm:
            return default
        realm_parts, base_parts = urlsplit(realm), urlsplit(base)
        allowed = {base_parts.hostname, urlsplit(f"//{self.host}").hostname}
        downgrade = realm_parts.scheme == "http" and base_parts.scheme == "https"
        unsafe = not self.transport.may_carry_credentials(exchange_url_for_realm(realm))
        if realm_parts.scheme not in ("http", "https") or realm_parts.hostname not in allowed or downgrade or unsafe:
            log.warning("%s: the token realm %s is not on %s; exchanging the Entra ID token at %s instead",
                        self.host, realm, " or ".join(sorted(h for h in allowed if h)), default[0])
            return default
        return exchange_url_for_realm(realm), service or self.host

    def _exchange(self, url: str, service: str) -> None:
        aad = self.entra_id.access_token()
        tenant = self.tenant
        if not tenant:
            claims = jwt_claims(aad) or {}
            tenant = claims.get("tid") if isinstance(claims.get("tid"), str) else None
        form = {"grant_type": "access_token", "service": service, "access_token": aad}
        if tenant:
            form["tenant"] = tenant
        what = f"exchanging Entra ID token for an ACR refresh token at {url}"
        self.exchange_url = url
        try:
            with self.transport.slot():
                response = self.transport.send("POST", url, what, data=form, headers={"Accept": "application/json"},
                                               stream=True)
                try:
                    raw = Transport.read_limited(response, MAX_ANSWER, what, "the answer")
                finally:
                    response.close()
        except RegistryError as exc:
            raise AcrExchangeError(_redact(f"{what}: {exc.cause}", aad)) from None
        if response.status_code != 200:
            codes, message = parse_error_body(raw)
            detail = ": ".join(x for x in (" ".join(codes), message) if x)
            status = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            raise AcrExchangeError(_redact(f"{what}: {status}" + (f": {detail}" if detail else ""), aad))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
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
                  self.entra_id.name, self.host, url, lifetime)

    def __repr__(self) -> str:
        state = "cached" if self._token is not None else "empty"
        return f"AcrExchange(host={self.host!r}, url={self.exchange_url!r}, {self.entra_id.name}, {state})"


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text
