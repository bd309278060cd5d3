"""Entra ID → ACR refresh token exchange and the ACR lock, against a real local HTTP(S) server.

Azure cannot run here. The server below serves the ACR shapes on loopback: ``POST /oauth2/exchange``,
``POST /oauth2/token``, ``GET /acr/v1/<repo>/_tags/<tag>``, ``PATCH /acr/v1/<repo>/_manifests/<digest>``
(401 + Bearer challenge first, as ACR answers), and an App Service managed-identity endpoint so the
real ``DefaultAzureCredential`` can be exercised without Azure.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mirror.azure.acr_lock import LockError, lock_image
from mirror.azure.identity import ACR_SCOPE, EntraIdTokenProvider
from mirror.registry.acr import AcrExchange, AcrExchangeError, jwt_expiry
from mirror.registry.client import RegistryClient
from mirror.registry.credentials import CredentialError, Credentials, credentials_for
from mirror.registry.errors import RegistryError
from mirror.registry.transport import Transport
from mirror.settings import RegistrySettings

HOST = "crmirror.azurecr.io"
DIGEST = "sha256:" + "ab" * 32


def make_jwt(**claims: Any) -> str:
    return jwt.encode(claims, "test-signing-key-not-verified-by-the-client", algorithm="HS256")


class StaticCredential:
    """An azure-core TokenCredential that hands out one fixed Entra ID token and counts calls."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  **kwargs: Any) -> AccessToken:
        with self._lock:
            self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


class FailingCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError("no Entra ID sign-in available in this test")


# -- the ACR-shaped server -----------------------------------------------------------------------


class AcrServer:
    """ACR's token and metadata endpoints on 127.0.0.1, plain HTTP or TLS."""

    def __init__(self, tls: tuple[Path, Path] | None = None, *, service: str = HOST) -> None:
        self.service = service
        self.requests: list[dict[str, Any]] = []
        self.exchange_status = 200
        self.exchange_body: dict[str, Any] | None = None  # override the answer
        self.refresh_lifetime: float | None = 3600.0  # None: an opaque (non-JWT) refresh token
        self.issued: list[str] = []
        self.access_tokens: set[str] = set()
        self.msi_header = "msi-header-secret"
        self.aad_token = make_jwt(tid="tenant-from-token", aud="https://containerregistry.azure.net",
                                  exp=int(time.time()) + 3600)
        self.tags = {("library/nginx", "1.27"): DIGEST}
        self.challenge = True  # GET /v2/ answers 401 with a Bearer challenge (else 200)
        self.realm: str | None = None  # the challenge's realm; default: this server's /oauth2/token
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                if tls is None:  # answer a TLS ClientHello on the plain port at once, so clients fall back
                    first = self.connection.recv(1, socket.MSG_PEEK)
                    if first == b"\x16":
                        self.connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        return
                super().handle()

            def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: bytes) -> dict[str, Any]:
                parts = urlsplit(self.path)
                entry = {"method": self.command, "path": unquote(parts.path), "raw_path": parts.path,
                         "query": parse_qs(parts.query), "headers": dict(self.headers), "body": body}
                if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                    entry["form"] = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                with server.lock:
                    server.requests.append(entry)
                return entry

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                entry = self._record(b"")
                path = entry["path"]
                if path == "/msi/token":
                    if self.headers.get("X-IDENTITY-HEADER") != server.msi_header:
                        return self._send(401, {"error": "bad identity header"})
                    return self._send(200, {"access_token": server.aad_token,
                                            "expires_on": str(int(time.time()) + 3600),
                                            "resource": entry["query"]["resource"][0], "token_type": "Bearer"})
                if path == "/v2/":
                    if not server.challenge:
                        return self._send(200, {})
                    realm = server.realm or f"{server.url}/oauth2/token"
                    return self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                      {"WWW-Authenticate": f'Bearer realm="{realm}",service="{server.service}"'})
                if path.startswith("/acr/v1/") and "/_tags/" in path:
                    if not self._authorized():
                        return self._challenge(path)
                    repo, tag = path[len("/acr/v1/"):].split("/_tags/")
                    digest = server.tags.get((repo, tag))
                    if digest is None:
                        return self._send(404, {"errors": [{"code": "TAG_UNKNOWN", "message": "tag unknown"}]})
                    return self._send(200, {"registry": server.service, "imageName": repo, "tag": {
                        "name": tag, "digest": digest, "createdTime": "2024-01-01T00:00:00Z",
                        "lastUpdateTime": "2024-01-01T00:00:00Z", "signed": False,
                        "changeableAttributes": {"deleteEnabled": True, "writeEnabled": True,
                                                 "readEnabled": True, "listEnabled": True}}})
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": path}]})

            def do_POST(self) -> None:
                entry = self._record(self._body())
                form = entry.get("form", {})
                if entry["path"] == "/oauth2/exchange":
                    if server.exchange_status != 200 or server.exchange_body is not None:
                        return self._send(server.exchange_status, server.exchange_body)
                    if form.get("grant_type") != "access_token" or form.get("access_token") != server.aad_token:
                        return self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad AAD token"}]})
                    token = server.new_refresh_token()
                    return self._send(200, {"refresh_token": token})
                if entry["path"] == "/oauth2/token":
                    if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in server.issued:
                        return self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad refresh token"}]})
                    access = make_jwt(scope=form.get("scope"), n=len(server.access_tokens))
                    with server.lock:
                        server.access_tokens.add(access)
                    return self._send(200, {"access_token": access})
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": entry["path"]}]})

            def do_PATCH(self) -> None:
                entry = self._record(self._body())
                path = entry["path"]
                if path.startswith("/acr/v1/") and "/_manifests/" in path:
                    if not self._authorized():
                        return self._challenge(path)
                    repo, digest = path[len("/acr/v1/"):].split("/_manifests/")
                    if digest not in server.tags.values():
                        return self._send(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
                    changes = json.loads(entry["body"] or b"{}")
                    attributes = {"deleteEnabled": True, "writeEnabled": True, "readEnabled": True, "listEnabled": True}
                    attributes.update(changes)
                    return self._send(200, {"registry": server.service, "imageName": repo, "manifest": {
                        "digest": digest, "imageSize": 1234, "createdTime": "2024-01-01T00:00:00Z",
                        "lastUpdateTime": "2024-01-01T00:00:00Z", "tags": ["1.27"],
                        "changeableAttributes": attributes}})
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": path}]})

            def _authorized(self) -> bool:
                header = self.headers.get("Authorization", "")
                return header.startswith("Bearer ") and header[7:] in server.access_tokens

            def _challenge(self, path: str) -> None:
                repo = path[len("/acr/v1/"):].split("/_")[0]
                realm = f"{server.url}/oauth2/token"
                self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, {
                    "WWW-Authenticate": f'Bearer realm="{realm}",service="{server.service}",'
                                        f'scope="repository:{repo}:metadata_write"'})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.port = self.httpd.server_address[1]
        self.hostport = f"127.0.0.1:{self.port}"
        self.url = f"{scheme}://{self.hostport}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def new_refresh_token(self) -> str:
        if self.refresh_lifetime is None:
            token = f"opaque-refresh-{len(self.issued)}"
        else:
            token = make_jwt(sub="user", aud=self.service, n=len(self.issued),
                             exp=int(time.time() + self.refresh_lifetime))
        with self.lock:
            self.issued.append(token)
        return token

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["path"] == path)

    def find(self, path: str, method: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path and (method is None or r["method"] == method)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made at test time."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acr-mirror test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@pytest.fixture
def server() -> Iterator[AcrServer]:
    s = AcrServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _write_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(tls_files: tuple[Path, Path, Path]) -> Iterator[AcrServer]:
    s = AcrServer((tls_files[1], tls_files[2]))
    yield s
    s.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- the exchange --------------------------------------------------------------------------------


def at(server: AcrServer, **settings: Any) -> RegistrySettings:
    """The settings of a host served by `server`: plain HTTP must be marked insecure."""
    return RegistrySettings(endpoint=server.url, insecure=server.url.startswith("http://"), **settings)


def exchange_for(server: AcrServer, settings: RegistrySettings | None = None, credential: Any = None,
                 clock: Any = time.time) -> AcrExchange:
    settings = settings or at(server)
    return AcrExchange(HOST, EntraIdTokenProvider(credential or StaticCredential(server.aad_token)),
                       Transport(HOST, settings), tenant=settings.tenant, clock=clock)


def entra_client(server: AcrServer, settings: RegistrySettings | None = None, credential: Any = None,
                 host: str = HOST) -> RegistryClient:
    creds = Credentials("entra", entra_id=EntraIdTokenProvider(credential or StaticCredential(server.aad_token)),
                        tenant=(settings or RegistrySettings()).tenant)
    return RegistryClient(host, settings or at(server), credentials=creds, retries=0,
                          settings_for=lambda _host: RegistrySettings(insecure=True))  # loopback token hosts


def realm_of(server: AcrServer) -> str:
    return f"{server.url}/oauth2/token"


def test_exchange_form_and_one_exchange_for_many_calls_from_many_threads(server: AcrServer) -> None:
    credential = StaticCredential(server.aad_token)
    exchange = exchange_for(server, credential=credential)
    results: list[str] = []

    def work() -> None:
        for _ in range(50):
            results.append(exchange.refresh_token(server.url, realm_of(server), HOST))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 400 and set(results) == {server.issued[0]}
    assert server.count("/oauth2/exchange") == 1 and exchange.exchanges == 1
    assert credential.scopes == [(ACR_SCOPE,)]
    (request,) = server.find("/oauth2/exchange")
    assert request["form"] == {"grant_type": "access_token", "service": HOST,
                               "tenant": "tenant-from-token", "access_token": server.aad_token}
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


def test_client_exchanges_once_at_the_challenge_realm_on_another_port(server: AcrServer) -> None:
    """The registry endpoint and the token endpoint on different ports (as in the shared fixtures):
    the client's ping learns the realm; the exchange goes to its sibling /oauth2/exchange."""
    registry = AcrServer(service="registry-service-name")
    try:
        registry.realm = realm_of(server)
        client = entra_client(server, at(registry))
        client.ping()
        scopes = ("repository:library/nginx:pull",)
        assert client.auth.authorization(scopes) == "Bearer " + sorted(server.access_tokens)[0]
        assert client.auth.acr is not None and client.auth.acr.exchange_url == f"{server.url}/oauth2/exchange"
        assert registry.count("/oauth2/exchange") == 0 and registry.count("/v2/") == 1
        assert server.find("/oauth2/exchange")[0]["form"]["service"] == "registry-service-name"
        client.auth.authorization(("repository:other:pull",))  # another scope: a token, no new exchange
        assert server.count("/oauth2/exchange") == 1 and server.count("/oauth2/token") == 2
        client.close()
    finally:
        registry.close()


def test_realm_on_another_host_is_not_followed(server: AcrServer, caplog: pytest.LogCaptureFixture) -> None:
    realm = f"http://localhost:{server.port}/oauth2/token"  # same server, but another host name
    with caplog.at_level(logging.WARNING):
        exchange_for(server).refresh_token(server.url, realm, "evil-service")
    assert "is not on 127.0.0.1 or crmirror.azurecr.io" in caplog.text
    (request,) = server.find("/oauth2/exchange")
    assert request["headers"]["Host"] == server.hostport and request["form"]["service"] == HOST


def test_no_realm_exchanges_at_the_endpoint(server: AcrServer) -> None:
    exchange = exchange_for(server, RegistrySettings(endpoint=server.url + "/", insecure=True))
    assert exchange.refresh_token(server.url + "/", None, None) == server.issued[0]
    assert exchange.exchange_url == f"{server.url}/oauth2/exchange"
    assert server.find("/oauth2/exchange")[0]["form"]["service"] == HOST


def test_tenant_setting_is_sent(server: AcrServer) -> None:
    exchange_for(server, at(server, tenant="contoso-tenant")).refresh_token(
        server.url, realm_of(server), HOST)
    assert server.find("/oauth2/exchange")[0]["form"]["tenant"] == "contoso-tenant"


def test_no_tenant_when_unknown(server: AcrServer) -> None:
    server.aad_token = "opaque-aad-token"
    exchange_for(server).refresh_token(server.url, realm_of(server), HOST)
    assert "tenant" not in server.find("/oauth2/exchange")[0]["form"]


def test_refreshed_shortly_before_expiry(server: AcrServer) -> None:
    clock = Clock()
    server.refresh_lifetime = 3600
    exchange = exchange_for(server, clock=clock)

    def token() -> str:
        return exchange.refresh_token(server.url, realm_of(server), HOST)

    first = token()
    exp = jwt_expiry(first)
    assert exp is not None and abs(exchange.expires_at - exp) < 1
    clock.now = exp - 301  # still more than the 5-minute margin left
    assert token() == first and server.count("/oauth2/exchange") == 1
    clock.now = exp - 299
    second = token()
    assert second != first and server.count("/oauth2/exchange") == 2
    assert token() == second and server.count("/oauth2/exchange") == 2


def test_opaque_refresh_token_is_cached_three_hours(server: AcrServer) -> None:
    clock = Clock()
    server.refresh_lifetime = None
    exchange = exchange_for(server, clock=clock)
    start = clock.now
    assert exchange.refresh_token(server.url, realm_of(server), HOST) == "opaque-refresh-0"
    assert exchange.expires_at == pytest.approx(start + 3 * 3600)
    clock.now = start + 3 * 3600 - 301
    assert exchange.refresh_token(server.url, realm_of(server), HOST) == "opaque-refresh-0"
    clock.now = start + 3 * 3600 - 299
    assert exchange.refresh_token(server.url, realm_of(server), HOST) == "opaque-refresh-1"


def test_short_lived_token_is_renewed_by_its_own_margin(server: AcrServer) -> None:
    clock = Clock()
    server.refresh_lifetime = 2  # margin: a tenth of the lifetime
    exchange = exchange_for(server, clock=clock)
    first = exchange.refresh_token(server.url, realm_of(server), HOST)
    assert exchange.refresh_token(server.url, realm_of(server), HOST) == first
    clock.now = exchange.expires_at - 0.1  # inside the last tenth of its life: renewed before it expires
    assert exchange.refresh_token(server.url, realm_of(server), HOST) != first
    assert server.count("/oauth2/exchange") == 2


def test_invalidate_forces_a_new_exchange(server: AcrServer) -> None:
    exchange = exchange_for(server)
    first = exchange.refresh_token(server.url, realm_of(server), HOST)
    exchange.invalidate()
    assert exchange.refresh_token(server.url, realm_of(server), HOST) != first
    assert server.count("/oauth2/exchange") == 2


def test_credentials_for_azurecr_are_entra_id_and_one_client_exchanges_once(server: AcrServer,
                                                                            tmp_path: Path) -> None:
    credential = StaticCredential(server.aad_token)
    settings = at(server)
    env = {"HOME": str(tmp_path)}
    creds = credentials_for(HOST, settings, env=env, entra_id=lambda: EntraIdTokenProvider(credential))
    assert creds.kind == "entra-id" and creds.basic is None
    assert creds.source == "Entra ID (StaticCredential)"
    client = RegistryClient(HOST, settings, credentials=creds, settings_for=lambda _host: RegistrySettings(insecure=True))
    client.ping()
    for n in range(5):
        client.auth.authorization((f"repository:r{n}:pull",))
    assert server.count("/oauth2/exchange") == 1 and server.count("/oauth2/token") == 5
    client.close()
    # auth: azure on a host that is not *.azurecr.io (a custom domain in front of ACR)
    custom = credentials_for("registry.contoso.com", at(server, auth="azure"),
                             env=env, entra_id=lambda: EntraIdTokenProvider(credential))
    assert custom.kind == "entra-id"


def test_exchange_over_tls_with_the_configured_ca(tls_server: AcrServer, tls_files: tuple[Path, Path, Path]) -> None:
    credential = StaticCredential(tls_server.aad_token)
    realm = realm_of(tls_server)
    ok = exchange_for(tls_server, RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0])), credential)
    assert ok.refresh_token(tls_server.url, realm, HOST) == tls_server.issued[0]
    untrusted = exchange_for(tls_server, RegistrySettings(endpoint=tls_server.url), credential)
    with pytest.raises(AcrExchangeError, match=r"at https://127\.0\.0\.1:\d+/oauth2/exchange: .*CERTIFICATE_VERIFY_FAILED"):
        untrusted.refresh_token(tls_server.url, realm, HOST)
    insecure = exchange_for(tls_server, RegistrySettings(endpoint=tls_server.hostport, insecure=True), credential)
    assert insecure.refresh_token(tls_server.url, realm, HOST) == tls_server.issued[1]


def test_insecure_schemeless_endpoint_falls_back_to_plain_http(server: AcrServer) -> None:
    client = entra_client(server, RegistrySettings(endpoint=server.hostport, insecure=True))
    client.ping()
    assert client.base_url == f"http://{server.hostport}"
    assert client.auth.authorization(("repository:a:pull",))
    assert client.auth.acr is not None and client.auth.acr.exchange_url == f"{server.url}/oauth2/exchange"
    client.close()


def test_exchange_refused_is_a_clear_error_without_tokens(server: AcrServer) -> None:
    server.exchange_status = 401
    server.exchange_body = {"errors": [{"code": "UNAUTHORIZED",
                                        "message": f"token {server.aad_token} is not valid for this registry"}]}
    with pytest.raises(AcrExchangeError) as info:
        exchange_for(server).refresh_token(server.url, realm_of(server), HOST)
    message = str(info.value)
    assert message.startswith(f"exchanging Entra ID token for an ACR refresh token at {server.url}/oauth2/exchange: "
                              "HTTP 401 Unauthorized: UNAUTHORIZED: token *** is not valid")
    assert server.aad_token not in message


def test_exchange_unreachable_and_bad_answers(server: AcrServer) -> None:
    credential = StaticCredential(server.aad_token)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    base = f"http://127.0.0.1:{dead}"
    gone = exchange_for(server, RegistrySettings(endpoint=base), credential)
    with pytest.raises(AcrExchangeError, match=rf"at http://127\.0\.0\.1:{dead}/oauth2/exchange: .*refused"):
        gone.refresh_token(base, f"{base}/oauth2/token", HOST)
    server.exchange_body = {"token": "wrong-field"}
    with pytest.raises(AcrExchangeError, match="the answer has no refresh_token"):
        exchange_for(server, credential=credential).refresh_token(server.url, realm_of(server), HOST)


def test_entra_id_failure_names_the_credential(server: AcrServer) -> None:
    exchange = exchange_for(server, credential=FailingCredential())
    with pytest.raises(CredentialError, match=rf"getting an Entra ID token for {ACR_SCOPE} with FailingCredential: "
                                              rf"no Entra ID sign-in available"):
        exchange.refresh_token(server.url, realm_of(server), HOST)


def test_default_azure_credential_via_managed_identity(server: AcrServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real azure-identity DefaultAzureCredential, finding an App Service managed identity
    (IDENTITY_ENDPOINT/IDENTITY_HEADER) served by the local server."""
    from azure.identity import DefaultAzureCredential

    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE",
                 "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "MSI_ENDPOINT", "MSI_SECRET",
                 "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{server.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", server.msi_header)
    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    client = entra_client(server, credential=credential)
    assert client.auth.credentials.entra_id is not None
    assert client.auth.credentials.entra_id.name == "DefaultAzureCredential"
    client.ping()
    for n in range(20):
        assert client.auth.authorization((f"repository:r{n}:pull",))
    (msi,) = server.find("/msi/token")
    assert msi["query"]["resource"] == ["https://containerregistry.azure.net"]
    assert server.count("/oauth2/exchange") == 1
    assert server.find("/oauth2/exchange")[0]["form"]["access_token"] == server.aad_token
    client.close()


# -- the lock ------------------------------------------------------------------------------------


def test_lock_by_digest_patches_manifest_properties(tls_server: AcrServer, tls_files: tuple[Path, Path, Path]) -> None:
    settings = RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0]))
    credential = StaticCredential(tls_server.aad_token)
    result = lock_image(HOST, "library/nginx", DIGEST, credential, settings=settings)
    assert credential.scopes == [(ACR_SCOPE,)]
    assert (result.repository, result.digest, result.can_write, result.can_delete) == \
        ("library/nginx", DIGEST, False, False)
    patches = tls_server.find(f"/acr/v1/library/nginx/_manifests/{DIGEST}", "PATCH")
    assert len(patches) == 2  # 401 challenge, then with the bearer token
    assert "Authorization" not in patches[0]["headers"]
    assert json.loads(patches[1]["body"]) == {"deleteEnabled": False, "writeEnabled": False}
    assert patches[1]["headers"]["Authorization"].removeprefix("Bearer ") in tls_server.access_tokens
    assert patches[1]["query"]["api-version"] == ["2021-07-01"]
    assert patches[1]["raw_path"] == "/acr/v1/library%2Fnginx/_manifests/sha256%3A" + "ab" * 32
    (exchange,) = tls_server.find("/oauth2/exchange")
    assert exchange["form"]["service"] == HOST and exchange["form"]["grant_type"] == "access_token"
    (token,) = tls_server.find("/oauth2/token")
    assert token["form"]["scope"] == "repository:library/nginx:metadata_write"


def test_lock_by_tag_resolves_the_digest_first(tls_server: AcrServer, tls_files: tuple[Path, Path, Path]) -> None:
    settings = RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0]))
    result = lock_image(HOST, "library/nginx", "1.27", StaticCredential(tls_server.aad_token), settings=settings)
    assert result.digest == DIGEST and result.can_write is False
    assert tls_server.find("/acr/v1/library/nginx/_tags/1.27", "GET")
    assert json.loads(tls_server.find(f"/acr/v1/library/nginx/_manifests/{DIGEST}", "PATCH")[-1]["body"]) == \
        {"deleteEnabled": False, "writeEnabled": False}


def test_lock_plain_http_only_when_insecure(server: AcrServer) -> None:
    credential = StaticCredential(server.aad_token)
    result = lock_image(HOST, "library/nginx", DIGEST, credential,
                        settings=RegistrySettings(endpoint=server.url, insecure=True))
    assert result.can_delete is False
    with pytest.raises(LockError, match="plain HTTP is used only for a host marked insecure; set registries.crmirror.azurecr.io.insecure"):
        lock_image(HOST, "library/nginx", DIGEST, credential, settings=RegistrySettings(endpoint=server.url))


def test_lock_errors_name_the_image(tls_server: AcrServer, tls_files: tuple[Path, Path, Path]) -> None:
    settings = RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0]))
    other = "sha256:" + "cd" * 32
    with pytest.raises(LockError, match=rf"locking {HOST}/library/nginx@{other} against overwrite at "
                                        rf"{tls_server.url}: HTTP 404"):
        lock_image(HOST, "library/nginx", other, StaticCredential(tls_server.aad_token), settings=settings)
    with pytest.raises(LockError, match="no Entra ID sign-in available"):
        lock_image(HOST, "library/nginx", DIGEST, FailingCredential(), settings=settings)


# -- secrets never leak --------------------------------------------------------------------------


def test_tokens_never_in_repr_errors_or_logs(server: AcrServer, tls_server: AcrServer,
                                             tls_files: tuple[Path, Path, Path],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    planted_aad = make_jwt(tid="t", secret="planted-aad-token-1")
    server.aad_token = tls_server.aad_token = planted_aad
    credential = StaticCredential(planted_aad)
    texts: list[str] = []
    client = entra_client(server, credential=credential)
    client.ping()
    assert client.auth.authorization(("repository:a:pull",))
    refresh = server.issued[0]
    texts += [repr(client.auth.credentials), str(client.auth.credentials), repr(client.auth.acr)]
    lock_image(HOST, "library/nginx", DIGEST, credential,
               settings=RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0])))
    # failures whose server answers echo the token
    server.exchange_status = 400
    server.exchange_body = {"error": "invalid_request", "error_description": f"bad access_token {planted_aad}"}
    fresh = exchange_for(server, credential=credential)
    with pytest.raises(AcrExchangeError) as info:
        fresh.refresh_token(server.url, realm_of(server), HOST)
    texts += [str(info.value), repr(info.value), repr(fresh)]
    texts.append(caplog.text)
    assert "exchanged an Entra ID token" in caplog.text
    secrets = [planted_aad, refresh, *tls_server.issued, *tls_server.access_tokens]
    for text in texts:
        for secret in secrets:
            assert secret not in text, text
    client.close()


# -- end to end: a real token-auth registry behind the shared ACR-shaped token server -------------


@pytest.mark.registry
def test_exchanged_token_opens_a_real_registry(acr_registry: Any, tmp_path: Path) -> None:
    """``acr_registry`` (tests/support/registries.py): CNCF distribution with token auth, its realm
    an ACR-shaped token server on another loopback port. The refresh token the client exchanges
    must buy a registry token that the real registry accepts."""
    registry = acr_registry
    credential = StaticCredential(registry.aad_token)
    settings = RegistrySettings(endpoint=registry.url, insecure=True, auth="azure")
    creds = credentials_for(registry.host, settings, env={"HOME": str(tmp_path)},
                            entra_id=lambda: EntraIdTokenProvider(credential))
    client = RegistryClient(registry.host, settings, credentials=creds,
                            settings_for=lambda _host: RegistrySettings(insecure=True))  # the plain-HTTP realm
    repo = client.repo("e2e/app", push=True)
    for _ in range(5):
        with pytest.raises(RegistryError) as absent:  # authorized, and empty
            repo.tags()
        assert absent.value.status == 404 and "NAME_UNKNOWN" in absent.value.codes
    assert registry.acr.requests["/oauth2/exchange"] == 1
    (exchange,) = [e for e in registry.acr.log if e.path == "/oauth2/exchange"]
    assert exchange.status == 200 and (exchange.subject or "").startswith("aad:")
    client.close()
