"""Real registries on loopback for tests: the CNCF distribution registry, token servers, fixtures.

Everything here runs the real thing (``docker-registry serve``) so that the mirror's registry
client is tested against the same server behaviour as production registries: plain HTTP,
basic auth, Docker token auth, TLS with a private CA, and the Azure Container Registry token
exchange in front of a token-auth registry.  Keys and certificates are generated at test time
into the test's own directory and never leave it.

This module is loaded as a pytest plugin (``tests/conftest.py``), so its fixtures are
available to every test.
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPSConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT = 10.0
ALL_ACTIONS = frozenset({"pull", "push", "delete"})
# The username ACR expects with a refresh token as password (docker login, GET /oauth2/token).
ACR_REFRESH_TOKEN_USER = "00000000-0000-0000-0000-000000000000"


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- certificates


@dataclass
class KeyPair:
    """A certificate and its private key, in memory and as PEM files."""

    cert: x509.Certificate
    key: Any  # an RSA or EC private key
    cert_file: Path
    key_file: Path

    @property
    def der_b64(self) -> str:
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()


def _write_pair(cert: x509.Certificate, key: Any, directory: Path, stem: str) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return KeyPair(cert, key, cert_file, key_file)


def _cert_builder(subject: str, issuer: x509.Name | None, public_key: Any) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def make_ca(directory: Path, common_name: str = "acr-mirror test CA", *, rsa_key: bool = False) -> KeyPair:
    """A self-signed CA (basicConstraints critical CA:TRUE), as Go's x509 verifier requires."""
    key = rsa.generate_private_key(65537, 2048) if rsa_key else ec.generate_private_key(ec.SECP256R1())
    cert = (
        _cert_builder(common_name, None, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(cert, key, directory, "ca")


def make_server_cert(ca: KeyPair, directory: Path) -> KeyPair:
    """A loopback server certificate (SAN IP:127.0.0.1, DNS:localhost; EKU serverAuth) signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _cert_builder("127.0.0.1", ca.cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return _write_pair(cert, key, directory, "server")


# --------------------------------------------------------------------------- token servers


def _parse_scopes(values: Iterable[str]) -> list[tuple[str, str, set[str]]]:
    """``repository:team/app:pull,push`` → (type, name, actions); OAuth2 forms join scopes with spaces."""
    scopes = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                scopes.append((kind, name, {a for a in actions.split(",") if a}))
    return scopes


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class TokenRequest:
    """One request the token server answered, kept so tests can assert on the client's auth flow."""

    method: str
    path: str
    subject: str | None
    scopes: list[str]
    status: int


class TokenServer:
    """A Docker registry token server (the protocol Docker Hub, GHCR and ACR speak).

    ``GET /token?service=S&scope=repository:NAME:pull,push`` with optional Basic credentials, and
    ``POST /token`` (OAuth2 form: ``grant_type=password`` or ``refresh_token``).  Tokens are RS256
    JWTs whose ``x5c`` header carries the signing certificate; the registry trusts that
    certificate through ``auth.token.rootcertbundle`` (``cert_file``).

    Users in ``users`` get every requested action they are granted in ``grants`` (default: all);
    anonymous clients get only ``anonymous`` actions, and still receive a token (as Docker Hub
    does), so a refused action shows up as the registry's 401, not the token server's.
    ``requests`` counts requests per path, ``log`` records them, for asserting token caching.
    """

    realm_path = "/token"

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        grants: Mapping[str, Collection[str]] | None = None,
        anonymous: Collection[str] = (),
        issuer: str = "acr-mirror-test-token-server",
        ttl: int = 300,
        short_lived: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.users: dict[str, str] = dict(users or {})
        self.grants: dict[str, set[str]] = {k: set(v) for k, v in (grants or {}).items()}
        self.anonymous = set(anonymous)
        self.issuer = issuer
        self.ttl = ttl
        # distribution accepts a token up to 60 s past its exp (clock-skew leeway): a short-lived
        # server backdates exp by that much, so a token really stops working `ttl` s after issue
        self.exp_shift = -60 if short_lived else 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[TokenRequest] = []
        self._lock = threading.Lock()
        # RS256 needs an RSA key; a self-signed CA certificate is both the x5c chain and the root.
        self.signing = make_ca(self.workdir, "acr-mirror test token signer", rsa_key=True)
        self.cert_file = self.signing.cert_file
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The URL the registry sends clients to (``WWW-Authenticate: Bearer realm=...``)."""
        return self.url + self.realm_path

    def start(self) -> TokenServer:
        owner = self

        class Handler(_TokenHandler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> TokenServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tokens

    def routes(self) -> dict[tuple[str, str], Callable[[_TokenHandler], dict[str, Any]]]:
        return {("GET", "/token"): self._get_token, ("POST", "/token"): self._post_token}

    def allowed_actions(self, subject: str | None) -> set[str]:
        if subject is None:
            return set(self.anonymous)
        return set(self.grants.get(subject, ALL_ACTIONS | {"*"}))

    def grant(self, subject: str | None, scopes: list[tuple[str, str, set[str]]]) -> list[dict[str, Any]]:
        """The ``access`` claim: each requested scope cut down to what ``subject`` may do."""
        allowed = self.allowed_actions(subject)
        access = []
        for kind, name, actions in scopes:
            # registry:catalog:* goes to any signed-in user; repository scopes follow the grants.
            full = "*" in allowed or (kind == "registry" and subject is not None)
            granted = actions if full else actions & allowed
            access.append({"type": kind, "name": name, "actions": sorted(granted)})
        return access

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.signing.key, algorithm="RS256", headers={"x5c": [self.signing.der_b64]})

    def issue(self, subject: str | None, service: str, scopes: list[tuple[str, str, set[str]]]) -> str:
        """A registry access token (the claims distribution's token auth checks)."""
        now = int(time.time())
        return self.sign(
            {
                "iss": self.issuer,
                "sub": subject or "",
                "aud": service,
                "exp": now + self.ttl + self.exp_shift,
                "nbf": now - 10 + min(self.exp_shift, 0),
                "iat": now,
                "jti": uuid.uuid4().hex,
                "access": self.grant(subject, scopes),
            }
        )

    def issue_refresh(self, subject: str, service: str, **extra: Any) -> str:
        """A refresh token: a JWT of ours, so it needs no server-side state."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": service,
            "iat": now,
            "nbf": now - 10,
            "exp": now + 3 * 3600,
            "jti": uuid.uuid4().hex,
            "grant_type": "refresh_token",
            **extra,
        }
        return self.sign(claims)

    def verify_refresh(self, token: str, service: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self.signing.cert.public_key(),
                algorithms=["RS256"],
                audience=service,
                issuer=self.issuer,
            )
        except jwt.PyJWTError as exc:
            raise _HttpError(401, "UNAUTHORIZED", f"invalid refresh token: {exc}") from exc
        if claims.get("grant_type") != "refresh_token":
            raise _HttpError(401, "UNAUTHORIZED", "not a refresh token")
        return claims

    def check_password(self, username: str, password: str) -> str:
        if self.users.get(username) != password:
            raise _HttpError(401, "UNAUTHORIZED", "invalid username or password")
        return username

    def _response(self, subject: str | None, service: str, scopes: list[tuple[str, str, set[str]]]) -> dict[str, Any]:
        token = self.issue(subject, service, scopes)
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"token": token, "access_token": token, "expires_in": self.ttl, "issued_at": issued}

    def _get_token(self, req: _TokenHandler) -> dict[str, Any]:
        service = req.require(req.query, "service")
        subject = None
        creds = req.basic_credentials()
        if creds is not None:
            subject = self.basic_subject(*creds, service=service)
        req.subject = subject
        return self._response(subject, service, _parse_scopes(req.query.get("scope", [])))

    def basic_subject(self, username: str, password: str, *, service: str) -> str:
        """Who Basic credentials on a token request stand for."""
        return self.check_password(username, password)

    def _post_token(self, req: _TokenHandler) -> dict[str, Any]:
        form = req.form()
        service = req.require(form, "service")
        grant_type = req.require(form, "grant_type")
        if grant_type == "password":
            subject = self.check_password(req.require(form, "username"), req.require(form, "password"))
        elif grant_type == "refresh_token":
            subject = self.verify_refresh(req.require(form, "refresh_token"), service)["sub"]
        else:
            raise _HttpError(400, "UNSUPPORTED", f"unsupported grant_type {grant_type!r}")
        req.subject = subject
        body = self._response(subject, service, _parse_scopes(form.get("scope", [])))
        body["scope"] = " ".join(form.get("scope", []))
        if form.get("access_type") == ["offline"] or grant_type == "refresh_token":
            body["refresh_token"] = (
                form["refresh_token"][0] if grant_type == "refresh_token" else self.issue_refresh(subject, service)
            )
        return body

    def record(self, entry: TokenRequest) -> None:
        with self._lock:
            self.requests[entry.path] += 1
            self.log.append(entry)


class AcrTokenServer(TokenServer):
    """The Azure Container Registry token endpoints, in front of a real token-auth registry.

    - ``POST /oauth2/exchange`` (form ``grant_type=access_token, service, tenant, access_token``):
      an Azure AD access token from ``aad_tokens`` → ``{"refresh_token": ...}``.
    - ``POST /oauth2/token`` (form ``grant_type=refresh_token, service, scope, refresh_token``)
      → ``{"access_token": ...}`` only, as ACR answers (no ``expires_in``: read the JWT's ``exp``).
    - ``GET /oauth2/token`` with Basic credentials: an admin user from ``users``, or the user
      ``00000000-0000-0000-0000-000000000000`` with a refresh token as password (``docker login``).

    Real ACR serves these on the registry host itself (``https://NAME.azurecr.io/oauth2/...``).
    Here they are on a separate loopback port, so a client must find them from the challenge's
    realm (``/oauth2/token``; the exchange is its sibling ``/oauth2/exchange``), not by
    assuming the registry host.
    """

    realm_path = "/oauth2/token"

    def __init__(self, workdir: Path, *, aad_tokens: Mapping[str, Collection[str]] | Iterable[str] = (), **kw: Any):
        super().__init__(workdir, **kw)
        self.aad_tokens: dict[str, str] = {}  # AAD token -> subject
        items = aad_tokens.items() if isinstance(aad_tokens, Mapping) else ((t, ALL_ACTIONS) for t in aad_tokens)
        for token, actions in items:
            self.allow_aad_token(token, actions)

    def allow_aad_token(self, token: str, actions: Collection[str] = ALL_ACTIONS) -> None:
        """Accept ``token`` at the exchange; its identity may then do ``actions`` (ACR's RBAC role)."""
        subject = "aad:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        self.aad_tokens[token] = subject
        self.grants[subject] = set(actions)

    def new_aad_token(self, actions: Collection[str] = ALL_ACTIONS, *, tenant: str | None = None) -> str:
        """A JWT-shaped Azure AD access token (not signed by Azure, accepted only here) for ``actions``."""
        now = int(time.time())
        tenant = tenant or str(uuid.uuid4())
        claims = {
            "aud": "https://containerregistry.azure.net",
            "iss": f"https://sts.windows.net/{tenant}/",
            "tid": tenant,
            "oid": str(uuid.uuid4()),
            "iat": now,
            "nbf": now - 10,
            "exp": now + 3600,
        }
        token = jwt.encode(claims, os.urandom(32), algorithm="HS256")
        self.allow_aad_token(token, actions)
        return token

    def routes(self) -> dict[tuple[str, str], Callable[[_TokenHandler], dict[str, Any]]]:
        return {
            **super().routes(),
            ("POST", "/oauth2/exchange"): self._exchange,
            ("GET", "/oauth2/token"): self._acr_get_token,
            ("POST", "/oauth2/token"): self._acr_post_token,
        }

    def _exchange(self, req: _TokenHandler) -> dict[str, Any]:
        form = req.form()
        grant_type = req.require(form, "grant_type")
        if grant_type != "access_token":
            raise _HttpError(400, "UNSUPPORTED", f"unsupported grant_type {grant_type!r}")
        service = req.require(form, "service")
        aad_token = req.require(form, "access_token")
        if aad_token not in self.aad_tokens:
            raise _HttpError(401, "UNAUTHORIZED", "the Azure AD access token is not accepted")
        req.subject = self.aad_tokens[aad_token]
        tenant = form.get("tenant", [""])[0]
        return {"refresh_token": self.issue_refresh(req.subject, service, tenant=tenant)}

    def basic_subject(self, username: str, password: str, *, service: str) -> str:
        if username == ACR_REFRESH_TOKEN_USER:
            return self.verify_refresh(password, service)["sub"]
        return self.check_password(username, password)

    def _acr_get_token(self, req: _TokenHandler) -> dict[str, Any]:
        if req.basic_credentials() is None:
            raise _HttpError(401, "UNAUTHORIZED", "authentication required")
        return {"access_token": self._get_token(req)["access_token"]}

    def _acr_post_token(self, req: _TokenHandler) -> dict[str, Any]:
        form = req.form()
        if form.get("grant_type") != ["refresh_token"]:
            raise _HttpError(400, "UNSUPPORTED", "grant_type must be refresh_token")
        return {"access_token": self._post_token(req)["access_token"]}


class _TokenHandler(BaseHTTPRequestHandler):
    """Routes requests to the owning TokenServer; answers JSON; errors in the Docker error envelope."""

    server_owner: TokenServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        owner = self.server_owner
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.subject: str | None = None
        self._form: dict[str, list[str]] | None = None
        status, body = 200, {}
        try:
            route = owner.routes().get((method, split.path))
            if route is None:
                raise _HttpError(404, "NOT_FOUND", f"no route {method} {split.path}")
            body = route(self)
        except _HttpError as exc:
            status, body = exc.status, {"errors": [{"code": exc.code, "message": exc.message}]}
        if method == "POST" and self._form is None:
            self.form()  # drain the body so the connection stays usable
        scopes = self.query.get("scope", []) + (self._form or {}).get("scope", [])
        owner.record(TokenRequest(method, split.path, self.subject, scopes, status))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="acr-mirror-test"')
        self.end_headers()
        self.wfile.write(data)

    def form(self) -> dict[str, list[str]]:
        if self._form is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._form = parse_qs(self.rfile.read(length).decode()) if length else {}
        return self._form

    def basic_credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            username, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError as exc:
            raise _HttpError(400, "UNSUPPORTED", "malformed Basic credentials") from exc
        return username, password

    @staticmethod
    def require(values: Mapping[str, list[str]], name: str) -> str:
        if not values.get(name) or not values[name][0]:
            raise _HttpError(400, "UNSUPPORTED", f"missing {name}")
        return values[name][0]


def static_credential(token: str, expires_in: int = 3600) -> Any:
    """An azure-core ``TokenCredential`` that always returns ``token`` (the AAD token of a test)."""
    from azure.core.credentials import AccessToken

    class StaticTokenCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken(token, int(time.time()) + expires_in)

        def close(self) -> None:
            pass

        def __enter__(self) -> StaticTokenCredential:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    return StaticTokenCredential()


# --------------------------------------------------------------------------- the registry


_LIVE: set[Registry] = set()


@atexit.register
def _stop_leftovers() -> None:
    for registry in list(_LIVE):
        registry.stop()


@dataclass(eq=False)
class Registry:
    """A running ``docker-registry serve`` on loopback."""

    host: str  # 127.0.0.1:PORT, as in image references
    url: str  # http://127.0.0.1:PORT or https://...
    root: Path  # storage root directory
    auth: str | None = None  # None | "basic" | "token"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # CA to verify the TLS certificate with
    token_url: str | None = None  # the token realm, for token auth
    token_server: TokenServer | None = None
    aad_token: str | None = None  # acr_registry: an AAD token that the exchange accepts
    workdir: Path | None = None
    config_file: Path | None = None
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    owns_token_server: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.host.rpartition(":")[2])

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def acr(self) -> AcrTokenServer | None:
        return self.token_server if isinstance(self.token_server, AcrTokenServer) else None

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and self.password else None

    @property
    def token_host(self) -> str | None:
        """host:port of the token realm when token auth is served on another port (plain HTTP:
        a config must mark it insecure as well, or no credentials go there)."""
        return self.token_url.split("/")[2] if self.token_url else None

    @property
    def hosts(self) -> list[str]:
        """Every host this registry's clients talk to: itself and its token realm."""
        return [self.host, *([self.token_host] if self.token_host else [])]

    @property
    def cert_dir(self) -> Path | None:
        """A directory with the CA as ``ca.crt``, the layout skopeo's ``--cert-dir`` reads."""
        return self.ca_file.parent if self.ca_file else None

    def ref(self, name: str) -> str:
        """``team/app:1.0`` → ``127.0.0.1:PORT/team/app:1.0``."""
        return f"{self.host}/{name}"

    def wipe(self) -> None:
        """Empty the storage while the registry runs (safe: the config has no blob descriptor cache)."""
        for child in self.root.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file and self.log_file.exists() else ""

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self.owns_token_server and self.token_server is not None:
            self.token_server.stop()
        _LIVE.discard(self)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RegistryStartError(RuntimeError):
    pass


def _yaml(value: Any, indent: int = 0) -> str:
    """Minimal YAML for the registry config (JSON scalars are valid YAML); avoids a dependency here."""
    pad = "  " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:\n{_yaml(item, indent + 1)}" if item else f"{pad}{key}: {{}}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(item)}")
    return "\n".join(lines)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _get_v2(url: str, ca_file: Path | None) -> int:
    split = urlsplit(url)
    if split.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        conn: HTTPConnection = HTTPSConnection(split.netloc, timeout=2, context=context)
    else:
        conn = HTTPConnection(split.netloc, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status
    finally:
        conn.close()


def start_registry(
    workdir: Path,
    *,
    auth: str | None = None,
    tls: bool = False,
    token_server: TokenServer | None = None,
    username: str = "tester",
    password: str | None = None,
    service: str | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Registry:
    """Start ``docker-registry serve`` on a free loopback port and wait until ``/v2/`` answers.

    ``auth="token"`` without ``token_server`` starts a TokenServer owned by the registry.  The
    user ``username``/``password`` (random by default) is valid for basic and token auth.  The
    token ``service`` defaults to the registry host, as ACR's does.  ``extra_config`` is merged
    into the generated config (e.g. notifications, a storage cache).
    """
    if auth not in (None, "basic", "token"):
        raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
    if shutil.which(REGISTRY_BINARY) is None:
        raise RegistryStartError(f"{REGISTRY_BINARY} is not on PATH (apt-get install docker-registry)")
    workdir = Path(workdir)
    root = workdir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    password = password or base64.urlsafe_b64encode(os.urandom(12)).decode()

    ca_file = None
    tls_config: dict[str, Any] = {}
    if tls:
        ca = make_ca(workdir / "certs")
        server = make_server_cert(ca, workdir / "tls")
        ca_file = ca.cert_file  # certs/ holds ca.crt only: a ready --cert-dir for skopeo
        ca.key_file.rename(workdir / "tls" / "ca.key")
        tls_config = {"tls": {"certificate": str(server.cert_file), "key": str(server.key_file)}}

    owns_token_server = False
    auth_config: dict[str, Any] = {}
    if auth == "basic":
        htpasswd = workdir / "htpasswd"
        subprocess.run(["htpasswd", "-Bbc", str(htpasswd), username, password], check=True, capture_output=True)
        auth_config = {"htpasswd": {"realm": "acr-mirror-test", "path": str(htpasswd)}}
    elif auth == "token":
        if token_server is None:
            token_server = TokenServer(workdir / "token").start()
            owns_token_server = True
        elif token_server.port == 0:
            token_server.start()
        token_server.users[username] = password

    scheme = "https" if tls else "http"
    errors = []
    for _attempt in range(3):  # another process may take the free port before the registry binds it
        port = free_port()
        host = f"127.0.0.1:{port}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": host, "secret": base64.b64encode(os.urandom(16)).decode(), **tls_config},
        }
        if auth == "token":
            assert token_server is not None
            auth_config = {
                "token": {
                    "realm": token_server.realm,
                    "service": service or host,
                    "issuer": token_server.issuer,
                    "rootcertbundle": str(token_server.cert_file),
                }
            }
        if auth_config:
            config["auth"] = auth_config
        _merge(config, extra_config or {})
        config_file = workdir / "config.yml"
        config_file.write_text(_yaml(config) + "\n")
        log_file = workdir / "registry.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with log_file.open("wb") as log:
            proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        registry = Registry(
            host=host,
            url=f"{scheme}://{host}",
            root=root,
            auth=auth,
            username=username if auth else None,
            password=password if auth else None,
            ca_file=ca_file,
            token_url=token_server.realm if auth == "token" and token_server else None,
            token_server=token_server if auth == "token" else None,
            workdir=workdir,
            config_file=config_file,
            log_file=log_file,
            process=proc,
            owns_token_server=owns_token_server,
        )
        _LIVE.add(registry)
        failure = _wait_ready(registry)
        if failure is None:
            return registry
        output = f"{failure}; its output:\n{registry.log().strip() or '(none)'}"
        registry.owns_token_server = False  # keep it for the next attempt
        registry.stop()
        errors.append(output)
        if "address already in use" not in output:
            break
    if owns_token_server and token_server is not None:
        token_server.stop()
    raise RegistryStartError(f"starting {REGISTRY_BINARY} in {workdir}: {errors[-1]}")


def _wait_ready(registry: Registry) -> str | None:
    """None once ``GET /v2/`` answers 200 (or 401 with auth); else why the registry is not up."""
    assert registry.process is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = registry.process.poll()
        if code is not None:
            return f"it exited with status {code}"
        with contextlib.suppress(OSError):
            if _get_v2(registry.url + "/v2/", registry.ca_file) in (200, 401):
                return None
        time.sleep(0.05)
    return f"it did not answer GET /v2/ within {START_TIMEOUT:.0f} s"


# --------------------------------------------------------------------------- pytest fixtures


def _require_registry() -> None:
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.skip(f"{REGISTRY_BINARY} (CNCF distribution) is not on PATH")


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Registry]]:
    """Start registries with ``start_registry`` keyword arguments; all are stopped at teardown."""
    _require_registry()
    started: list[Registry] = []
    servers: list[TokenServer] = []

    def factory(**kwargs: Any) -> Registry:
        registry = start_registry(tmp_path_factory.mktemp("registry"), **kwargs)
        started.append(registry)
        if kwargs.get("token_server") is not None:
            servers.append(kwargs["token_server"])
        return registry

    yield factory
    for registry in started:
        registry.stop()
    for server in servers:
        server.stop()


@pytest.fixture
def source_registry(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory()


@pytest.fixture
def target_registry(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory()


@pytest.fixture
def basic_registry(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory(auth="basic")


@pytest.fixture
def token_registry(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory(auth="token")


@pytest.fixture
def tls_registry(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory(tls=True)


@pytest.fixture
def acr_registry(registry_factory: Callable[..., Registry], tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A token-auth registry behind the ACR exchange; ``.acr`` is the server, ``.aad_token`` a valid AAD token.

    ``username``/``password`` are an ACR admin user (Basic on ``GET /oauth2/token``), so skopeo can seed it.
    """
    acr = AcrTokenServer(tmp_path_factory.mktemp("acr")).start()
    registry = registry_factory(auth="token", token_server=acr, username="acradmin")
    registry.aad_token = acr.new_aad_token()
    return registry
