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

from manifests_rewriter.config import RegistrySettings
from mirror.registry import acr
from mirror.registry.acr import AAD_SCOPE, AcrExchangeError, AcrRefreshTokenSource, jwt_expiry
from mirror.registry.acr_lock import LockError, lock_image
from mirror.registry.credentials import credentials_for

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


@pytest.fixture(autouse=True)
def _fresh_shared_sources() -> Iterator[None]:
    acr.clear_shared_sources()
    yield
    acr.clear_shared_sources()


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


def test_exchange_form_and_one_exchange_for_many_calls_from_many_threads(server: AcrServer) -> None:
    credential = StaticCredential(server.aad_token)
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url), credential=credential)
    results: list[str] = []

    def work() -> None:
        for _ in range(50):
            results.append(source.refresh_token())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 400 and set(results) == {server.issued[0]}
    assert server.count("/oauth2/exchange") == 1 and source.exchanges == 1
    assert credential.scopes == [(AAD_SCOPE,)]
    (request,) = server.find("/oauth2/exchange")
    assert request["form"] == {"grant_type": "access_token", "service": HOST,
                               "tenant": "tenant-from-token", "access_token": server.aad_token}
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


def test_exchange_follows_the_challenge_realm_to_another_port(server: AcrServer) -> None:
    """The registry endpoint and the token endpoint on different ports (as in the shared fixtures)."""
    registry = AcrServer(service="registry-service-name")
    try:
        registry.realm = f"{server.url}/oauth2/token"
        clock = Clock()
        source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=registry.url),
                                       credential=StaticCredential(server.aad_token), clock=clock)
        assert source.refresh_token() == server.issued[0]
        assert source.exchange_url == f"{server.url}/oauth2/exchange"
        assert registry.count("/oauth2/exchange") == 0 and registry.count("/v2/") == 1
        assert server.find("/oauth2/exchange")[0]["form"]["service"] == "registry-service-name"
        clock.now += 7200  # a second exchange does not ping again
        assert source.refresh_token() == server.issued[1]
        assert registry.count("/v2/") == 1 and server.count("/oauth2/exchange") == 2
    finally:
        registry.close()


def test_realm_on_another_host_is_not_followed(server: AcrServer, caplog: pytest.LogCaptureFixture) -> None:
    server.realm = f"http://localhost:{server.port}/oauth2/token"  # same server, but another host name
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url),
                                   credential=StaticCredential(server.aad_token))
    with caplog.at_level(logging.WARNING):
        source.refresh_token()
    assert "is not on 127.0.0.1 or crmirror.azurecr.io" in caplog.text
    (request,) = server.find("/oauth2/exchange")
    assert request["headers"]["Host"] == server.hostport and request["form"]["service"] == HOST


def test_no_challenge_exchanges_at_the_endpoint(server: AcrServer) -> None:
    server.challenge = False
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url + "/"),
                                   credential=StaticCredential(server.aad_token))
    assert source.refresh_token() == server.issued[0]
    assert source.exchange_url == f"{server.url}/oauth2/exchange"
    assert server.find("/oauth2/exchange")[0]["form"]["service"] == HOST


def test_tenant_setting_is_sent(server: AcrServer) -> None:
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url, tenant="contoso-tenant"),
                                   credential=StaticCredential(server.aad_token))
    source.refresh_token()
    assert server.find("/oauth2/exchange")[0]["form"]["tenant"] == "contoso-tenant"


def test_no_tenant_when_unknown(server: AcrServer) -> None:
    server.aad_token = "opaque-aad-token"
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url),
                                   credential=StaticCredential(server.aad_token))
    source.refresh_token()
    assert "tenant" not in server.find("/oauth2/exchange")[0]["form"]


def test_refreshed_shortly_before_expiry(server: AcrServer) -> None:
    clock = Clock()
    server.refresh_lifetime = 3600
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url),
                                   credential=StaticCredential(server.aad_token), clock=clock)
    first = source.refresh_token()
    exp = jwt_expiry(first)
    assert exp is not None and abs(source.expires_at - exp) < 1
    clock.now = exp - 301  # still more than the 5-minute margin left
    assert source.refresh_token() == first and server.count("/oauth2/exchange") == 1
    clock.now = exp - 299
    second = source.refresh_token()
    assert second != first and server.count("/oauth2/exchange") == 2
    assert source.refresh_token() == second and server.count("/oauth2/exchange") == 2


def test_opaque_refresh_token_is_cached_three_hours(server: AcrServer) -> None:
    clock = Clock()
    server.refresh_lifetime = None
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url),
                                   credential=StaticCredential(server.aad_token), clock=clock)
    start = clock.now
    assert source.refresh_token() == "opaque-refresh-0"
    assert source.expires_at == pytest.approx(start + 3 * 3600)
    clock.now = start + 3 * 3600 - 301
    assert source.refresh_token() == "opaque-refresh-0"
    clock.now = start + 3 * 3600 - 299
    assert source.refresh_token() == "opaque-refresh-1"


def test_short_lived_token_is_renewed_in_real_time(server: AcrServer) -> None:
    server.refresh_lifetime = 2  # margin: a tenth of the lifetime
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url),
                                   credential=StaticCredential(server.aad_token))
    first = source.refresh_token()
    assert source.refresh_token() == first
    # renewed before it expires: the margin is a tenth of its (1-2 s) lifetime, at least 0.1 s
    time.sleep(max(0.0, source.expires_at - 0.03 - time.time()))
    assert source.refresh_token() != first
    assert server.count("/oauth2/exchange") == 2


def test_invalidate_forces_a_new_exchange(server: AcrServer) -> None:
    creds = credentials_for(HOST, RegistrySettings(endpoint=server.url), env={},
                            azure_credential=StaticCredential(server.aad_token))
    first = creds.refresh_token()
    creds.invalidate()
    assert creds.refresh_token() != first and server.count("/oauth2/exchange") == 2


def test_credentials_for_azurecr_shares_one_cached_token(server: AcrServer, tmp_path: Path) -> None:
    credential = StaticCredential(server.aad_token)
    settings = RegistrySettings(endpoint=server.url)
    env = {"HOME": str(tmp_path)}
    a = credentials_for(HOST, settings, env=env, azure_credential=credential)
    b = credentials_for(HOST, settings, env=env, azure_credential=credential)
    assert a.kind == "entra-id" and a.basic is None
    assert a.source == "Entra ID (StaticCredential)"
    assert a.refresh_token() == b.refresh_token() == server.issued[0]
    assert server.count("/oauth2/exchange") == 1
    # auth: azure on a host that is not *.azurecr.io (a custom domain in front of ACR); with no
    # challenge to name the service, the service is the host
    server.challenge = False
    custom = credentials_for("registry.contoso.com", RegistrySettings(endpoint=server.url, auth="azure"),
                             env=env, azure_credential=credential)
    custom.refresh_token()
    assert server.find("/oauth2/exchange")[-1]["form"]["service"] == "registry.contoso.com"


def test_exchange_over_tls_with_the_configured_ca(tls_server: AcrServer, tls_files: tuple[Path, Path, Path]) -> None:
    credential = StaticCredential(tls_server.aad_token)
    ok = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0])),
                               credential=credential)
    assert ok.refresh_token() == tls_server.issued[0]
    untrusted = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=tls_server.url), credential=credential)
    with pytest.raises(AcrExchangeError, match=r"at https://127\.0\.0\.1:\d+/oauth2/exchange: .*CERTIFICATE_VERIFY_FAILED"):
        untrusted.refresh_token()
    insecure = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=tls_server.hostport, insecure=True),
                                     credential=credential)
    assert insecure.refresh_token() == tls_server.issued[1]


def test_insecure_schemeless_endpoint_falls_back_to_plain_http(server: AcrServer) -> None:
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.hostport, insecure=True),
                                   credential=StaticCredential(server.aad_token), timeout=5)
    started = time.monotonic()
    assert source.refresh_token() == server.issued[0]
    assert time.monotonic() - started < 3


def test_exchange_refused_is_a_clear_error_without_tokens(server: AcrServer) -> None:
    server.exchange_status = 401
    server.exchange_body = {"errors": [{"code": "UNAUTHORIZED",
                                        "message": f"token {server.aad_token} is not valid for this registry"}]}
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url),
                                   credential=StaticCredential(server.aad_token))
    with pytest.raises(AcrExchangeError) as info:
        source.refresh_token()
    message = str(info.value)
    assert message.startswith(f"exchanging Entra ID token for an ACR refresh token at {server.url}/oauth2/exchange: "
                              "HTTP 401 Unauthorized: UNAUTHORIZED: token *** is not valid")
    assert server.aad_token not in message


def test_exchange_unreachable_and_bad_answers(server: AcrServer) -> None:
    credential = StaticCredential(server.aad_token)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=f"http://127.0.0.1:{dead}"), credential=credential)
    with pytest.raises(AcrExchangeError, match=rf"at http://127\.0\.0\.1:{dead}/oauth2/exchange: .*refused"):
        source.refresh_token()
    server.exchange_body = {"token": "wrong-field"}
    source = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url), credential=credential)
    with pytest.raises(AcrExchangeError, match="the answer has no refresh_token"):
        source.refresh_token()


def test_entra_id_failure_names_the_credential() -> None:
    source = AcrRefreshTokenSource(HOST, credential=FailingCredential())
    with pytest.raises(AcrExchangeError, match=rf"getting an Entra ID token for {AAD_SCOPE} with FailingCredential "
                                               rf"for {HOST}: no Entra ID sign-in available"):
        source.refresh_token()


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
    creds = credentials_for(HOST, RegistrySettings(endpoint=server.url), env={}, azure_credential=credential)
    assert creds.source == "Entra ID (DefaultAzureCredential)"
    for _ in range(20):
        assert creds.refresh_token() == server.issued[0]
    (msi,) = server.find("/msi/token")
    assert msi["query"]["resource"] == ["https://containerregistry.azure.net"]
    assert server.count("/oauth2/exchange") == 1
    assert server.find("/oauth2/exchange")[0]["form"]["access_token"] == server.aad_token


# -- the lock ------------------------------------------------------------------------------------


def test_lock_by_digest_patches_manifest_properties(tls_server: AcrServer, tls_files: tuple[Path, Path, Path]) -> None:
    settings = RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0]))
    credential = StaticCredential(tls_server.aad_token)
    result = lock_image(HOST, "library/nginx", DIGEST, credential, settings=settings)
    assert credential.scopes == [(AAD_SCOPE,)]
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
    with pytest.raises(LockError, match="plain HTTP but registries.crmirror.azurecr.io.insecure is not set"):
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
    creds = credentials_for(HOST, RegistrySettings(endpoint=server.url), env={}, azure_credential=credential)
    refresh = creds.refresh_token()
    assert refresh
    texts += [repr(creds), str(creds), repr(acr.shared_refresh_token_source(
        HOST, RegistrySettings(endpoint=server.url), credential=credential))]
    lock_image(HOST, "library/nginx", DIGEST, credential,
               settings=RegistrySettings(endpoint=tls_server.url, ca_file=str(tls_files[0])))
    # failures whose server answers echo the token
    server.exchange_status = 400
    server.exchange_body = {"error": "invalid_request", "error_description": f"bad access_token {planted_aad}"}
    fresh = AcrRefreshTokenSource(HOST, RegistrySettings(endpoint=server.url), credential=credential)
    with pytest.raises(AcrExchangeError) as info:
        fresh.refresh_token()
    texts += [str(info.value), repr(info.value), repr(fresh)]
    texts.append(caplog.text)
    assert "exchanged an Entra ID token" in caplog.text
    secrets = [planted_aad, refresh, *tls_server.issued, *tls_server.access_tokens]
    for text in texts:
        for secret in secrets:
            assert secret not in text, text



# -- end to end: a real token-auth registry behind the shared ACR-shaped token server -------------


@pytest.mark.registry
def test_exchanged_token_opens_a_real_registry(acr_registry: Any, tmp_path: Path) -> None:
    """``acr_registry`` (tests/support/registries.py): CNCF distribution with token auth, its realm
    an ACR-shaped token server on another loopback port. The refresh token this module exchanges
    must buy a registry token that the real registry accepts."""
    import httpx

    registry = acr_registry
    credential = StaticCredential(registry.aad_token)
    settings = RegistrySettings(endpoint=registry.url, insecure=True, auth="azure")
    creds = credentials_for(registry.host, settings, env={"HOME": str(tmp_path)}, azure_credential=credential)
    tokens = {creds.refresh_token() for _ in range(25)}
    assert len(tokens) == 1 and registry.acr.requests["/oauth2/exchange"] == 1
    refresh = tokens.pop()
    with httpx.Client(timeout=10) as client:
        challenge = client.get(f"{registry.url}/v2/")
        assert challenge.status_code == 401
        realm = acr.bearer_challenge(challenge.headers["WWW-Authenticate"])
        assert realm is not None
        answer = client.post(realm["realm"], data={
            "grant_type": "refresh_token", "service": realm["service"], "refresh_token": refresh,
            "scope": "repository:e2e/app:pull,push"})
        assert answer.status_code == 200, answer.text
        access = answer.json()["access_token"]
        assert client.get(f"{registry.url}/v2/", headers={"Authorization": f"Bearer {access}"}).status_code == 200
        tags = client.get(f"{registry.url}/v2/e2e/app/tags/list", headers={"Authorization": f"Bearer {access}"})
        assert tags.status_code == 404 and tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"  # authorized, empty
    (exchange,) = [e for e in registry.acr.log if e.path == "/oauth2/exchange"]
    assert exchange.status == 200 and (exchange.subject or "").startswith("aad:")
