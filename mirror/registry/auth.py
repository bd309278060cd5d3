"""Registry authentication: the WWW-Authenticate challenge (the one parser), Basic, Bearer tokens.

Token flows (distribution token spec, OAuth2 for ACR):
- GET <realm>?service=&scope=... with Basic credentials, or anonymously;
- POST <realm> grant_type=refresh_token when the credentials carry a refresh token: a Docker
  identity token, or for Entra ID the refresh token ACR exchanges it for (mirror.registry.acr).
Token requests go through the host's Transport (limits, counters, bounded answers). Tokens are
cached per scope set and reused until shortly before `expires_in` runs out.

Where credentials may go: Basic credentials to a token realm only over TLS verified with the
realm host's own settings, or to a realm host marked insecure; a refresh token (an ACR refresh
token, a Docker identity token) only to a realm on the registry's own host, under the same
rule. A realm that fails these gets nothing, and the error says what to configure.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from .acr import AcrExchange
from .credentials import ANONYMOUS, Credentials
from .errors import RegistryError, status_error
from .transport import Transport, host_of, redact_url

DEFAULT_TOKEN_LIFETIME = 60.0  # distribution token spec: assume 60 s when expires_in is absent
_EXPIRY_MARGIN = 10.0  # refresh this long before expiry (clock skew, request time)
MAX_TOKEN_RESPONSE = 256 * 1024  # a registry token is a few KiB; anything larger is not one


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" | "bearer" (lower case)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')


def parse_challenges(header: str | None) -> list[Challenge]:
    """Parse a WWW-Authenticate value: `Bearer realm="...",service="...",scope="..."`.

    Several challenges may be separated by commas; a new one starts at a bare token
    followed by a space (the scheme)."""
    challenges: list[Challenge] = []
    text = (header or "").strip()
    while text:
        scheme_match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)", text)
        if not scheme_match:
            break
        scheme, text = scheme_match.group(1).lower(), text[scheme_match.end():]
        params: dict[str, str] = {}
        while text:
            if re.match(r"[A-Za-z][A-Za-z0-9_-]*\s+[A-Za-z0-9_.-]+\s*=", text) or re.match(r"[A-Za-z][A-Za-z0-9_-]*\s*$", text):
                break  # the next challenge's scheme
            match = _PARAM.match(text)
            if not match or not match.group(0):
                break
            value = match.group(2) if match.group(2) is not None else match.group(3)
            params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            text = text[match.end():].lstrip(", ")
        challenges.append(Challenge(scheme, params))
    return challenges


def scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Authorization headers for one registry host; thread-safe, tokens cached per scope.
    `base_url()` gives the registry's base URL (its origin is where Basic credentials go)."""

    def __init__(self, host: str, credentials: Credentials | None, transport: Transport,
                 base_url: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.credentials = credentials or ANONYMOUS
        self.transport = transport
        self._base_url = base_url
        self._clock = clock
        self.acr = (AcrExchange(host, self.credentials.entra_id, transport, tenant=self.credentials.tenant)
                    if self.credentials.entra_id is not None else None)
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._lock = threading.Lock()
        self._fetch_locks: dict[tuple[str, ...], threading.Lock] = {}
        self.token_requests = 0

    @property
    def challenge(self) -> Challenge | None:
        return self._challenge

    def set_challenge(self, header: str | None) -> None:
        """Remember how the registry wants to be authenticated (from a 401's WWW-Authenticate)."""
        for challenge in parse_challenges(header):
            if challenge.scheme in ("bearer", "basic"):
                self._challenge = challenge
                return

    def authorization(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization header value for a request needing `scopes`, or None (anonymous)."""
        challenge = self._challenge
        if challenge is None:
            return None
        basic = self.credentials.basic
        if challenge.scheme == "basic":
            return basic_header(basic.username, basic.password) if basic else None
        return "Bearer " + self._token(tuple(sorted(set(scopes))))

    def invalidate(self, scopes: tuple[str, ...]) -> None:
        with self._lock:
            self._tokens.pop(tuple(sorted(set(scopes))), None)

    def _token(self, key: tuple[str, ...]) -> str:
        with self._lock:
            token = self._tokens.get(key)
            if token and token.expires_at > self._clock():
                return token.value
            fetch_lock = self._fetch_locks.setdefault(key, threading.Lock())
        with fetch_lock:  # one fetch per scope even when many threads need it at once
            with self._lock:
                token = self._tokens.get(key)
                if token and token.expires_at > self._clock():
                    return token.value
            token = self._fetch(key)
            with self._lock:
                self._tokens[key] = token
            return token.value

    def _request(self, method: str, realm: str, values: dict[str, Any],
                 authorization: str | None = None) -> tuple[int, Any, bytes]:
        """One token request through the host's transport; the answer read bounded."""
        operation = f"get a token from {self.host}"
        form = values if method == "POST" else None
        params = values if method == "GET" else None
        with self.transport.slot():
            response = self.transport.send(method, realm, operation, data=form, params=params,
                                           authorization=authorization, stream=True)
            try:
                raw = Transport.read_limited(response, MAX_TOKEN_RESPONSE, operation,
                                             f"the answer of the token endpoint {realm.split('?')[0]}")
            finally:
                response.close()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        return response.status_code, body, raw

    def _check_realm(self, realm: str, operation: str, *, refresh_token: bool) -> None:
        """Refuse to send credentials to a realm that must not receive them (module docstring)."""
        where = host_of(realm)
        if not self.transport.may_carry_credentials(realm):
            raise RegistryError(operation, message=f"the token realm {redact_url(realm)} is not verified TLS: "
                                f"credentials go only over verified TLS, or to a host marked insecure "
                                f"(registries.{where}.insecure)")
        own = {urlsplit(self._base_url()).hostname, urlsplit(f"//{self.host}").hostname}
        if refresh_token and urlsplit(realm).hostname not in own:
            raise RegistryError(operation, message=f"the token realm {redact_url(realm)} is not on {self.host}: a "
                                f"refresh token goes only to the registry it was issued for")

    def _refresh_token(self, challenge: Challenge) -> str | None:
        if self.acr is not None:
            realm = urljoin(self._base_url() + "/", challenge.realm) if challenge.realm else None
            return self.acr.refresh_token(self._base_url(), realm, challenge.params.get("service"))
        return self.credentials.identity_token

    def _post_refresh(self, realm: str, service: str | None, scopes: tuple[str, ...],
                      refresh: str) -> tuple[int, Any, bytes]:
        form: dict[str, Any] = {"grant_type": "refresh_token", "refresh_token": refresh, "scope": " ".join(scopes)}
        if service:
            form["service"] = service
        return self._request("POST", realm, form)

    def _fetch(self, scopes: tuple[str, ...]) -> _Token:
        challenge = self._challenge
        assert challenge is not None
        operation = f"get a token from {self.host}"
        if not challenge.realm:
            raise RegistryError(operation, message="the Bearer challenge has no realm")
        realm = urljoin(self._base_url() + "/", challenge.realm)  # a relative realm is on the registry itself
        service = challenge.params.get("service")
        started = self._clock()
        self.token_requests += 1
        if self.acr is not None or self.credentials.identity_token:
            self._check_realm(realm, operation, refresh_token=True)
        elif self.credentials.basic is not None:
            self._check_realm(realm, operation, refresh_token=False)
        refresh = self._refresh_token(challenge)
        if refresh:
            status, body, raw = self._post_refresh(realm, service, scopes, refresh)
            if status == 401 and self.acr is not None:
                self.acr.invalidate()  # an exchanged refresh token the realm no longer takes: exchange anew, once
                status, body, raw = self._post_refresh(realm, service, scopes, self._refresh_token(challenge) or "")
        else:
            params: dict[str, Any] = {"scope": list(scopes)}
            if service:
                params["service"] = service
            basic = self.credentials.basic
            status, body, raw = self._request("GET", realm, params,
                                              basic_header(basic.username, basic.password) if basic else None)
        if status != 200:
            error = status_error(operation, status, raw)
            if status in (401, 403):
                error = RegistryError(operation, status, error.codes or ("UNAUTHORIZED",),
                                      error.message or "the token server refused the credentials")
            raise error
        value = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(operation, status, message="the token server answered without a token")
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        margin = min(_EXPIRY_MARGIN, lifetime / 4)
        return _Token(value, started + lifetime - margin)
