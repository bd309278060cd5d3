"""The registry client against real registries (CNCF distribution on loopback), plus its pure parts.

Faults, redirects and lies are injected by a small standard-library proxy in front of a real
registry (`Proxy`): each request passes through unless the test's rule answers it itself.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from mirror import retry
from mirror.registry.auth import Authenticator, parse_challenges
from mirror.registry.client import RegistryClient, _next_link, _with_digest
from mirror.registry.credentials import BasicCredential, Credentials
from mirror.registry.errors import RegistryError, parse_retry_after, status_error
from mirror.registry.media import (
    DOCKER_LIST,
    OCI_INDEX,
    digest_tag,
    filter_index,
    parse_manifest,
    platform_matches,
)
from mirror.settings import RegistrySettings
from tests.support.images import build_image, build_index, push, seed_standard_set

# ----------------------------------------------------------------------------- a fault proxy


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    client_port: int = 0  # which connection it came on


Reply = tuple[int, dict[str, str], bytes]
# rule(proxy, method, path, headers) -> None (pass through) or a reply of the proxy's own
Rule = Callable[["Proxy", str, str, dict[str, str]], Reply | None]
# rewrite(method, path, status, headers, body) -> (status, headers, body) of a passed-through answer
Rewrite = Callable[[str, str, int, dict[str, str], bytes], Reply]


@dataclass
class Proxy:
    """A standard-library HTTP proxy in front of one registry (or a bare server when upstream is None)."""

    upstream: str | None  # host:port of a plain-HTTP registry
    rule: Rule | None = None
    rewrite: Rewrite | None = None
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Proxy:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self._body()  # read it all before answering, else the client sees a broken pipe
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner.lock:
                    owner.seen.append(Seen(self.command, self.path, headers, self.client_address[1]))
                reply = owner.rule(owner, self.command, self.path, headers) if owner.rule else None
                if reply is None:
                    reply = owner.forward(self.command, self.path, headers, body)
                status, out_headers, out_body = reply
                self.send_response(status)
                for key, value in out_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                length = out_headers.get("content-length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(out_body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out_body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)
                        if size == 0:
                            return bytes(data)
                        data += chunk[:-2]
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        assert self.upstream is not None
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            # Host stays the proxy's, so upload Locations come back pointing at the proxy.
            forwarded = {k: v for k, v in headers.items() if k not in ("content-length", "transfer-encoding",
                                                                        "connection")}
            conn.request(method, path, body=body if body or method in ("PUT", "POST", "PATCH") else None,
                         headers=forwarded)
            response = conn.getresponse()
            data = response.read()
            out = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        if self.rewrite:
            return self.rewrite(method, path, response.status, out, data)
        return response.status, out, data

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self.lock:
            return sum(1 for s in self.seen if (method is None or s.method == method) and contains in s.path)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy_factory():
    proxies: list[Proxy] = []

    def make(upstream: str | None, rule: Rule | None = None, rewrite: Rewrite | None = None) -> Proxy:
        proxy = Proxy(upstream, rule, rewrite).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def plain(**kw: Any) -> RegistrySettings:
    return RegistrySettings(insecure=True, **kw)


def loopback(_host: str) -> RegistrySettings:
    """Every other host a test client reaches (token servers on other ports) is plain HTTP on loopback."""
    return plain()


def no_sleep(_: float) -> None:
    pass


# ----------------------------------------------------------------------------- pure parts


def test_challenge_parsing():
    [bearer] = parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                                'scope="repository:a/b:pull,push"')
    assert bearer.scheme == "bearer" and bearer.realm == "https://auth.example/token"
    assert bearer.params["scope"] == "repository:a/b:pull,push"
    bearer, basic = parse_challenges('Bearer realm="x", error="insufficient_scope", Basic realm="y"')
    assert bearer.params == {"realm": "x", "error": "insufficient_scope"}
    assert basic.scheme == "basic" and basic.realm == "y"
    assert parse_challenges(None) == [] and parse_challenges("") == []


def test_error_reads_doing_what_cause_and_classifies_retries():
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode()
    error = status_error("GET manifest r/x:1", 404, body)
    assert str(error) == "GET manifest r/x:1: HTTP 404 MANIFEST_UNKNOWN manifest unknown"
    assert not error.retryable and error.codes == ("MANIFEST_UNKNOWN",)
    assert status_error("x", 500).retryable and status_error("x", 503).retryable
    limited = status_error("x", 429, retry_after="3")
    assert limited.retryable and limited.retry_after == 3.0
    assert not status_error("x", 401).retryable and not status_error("x", 403).retryable
    # A 5xx carrying a permanent OCI code is not retried either.
    denied = json.dumps({"errors": [{"code": "DENIED", "message": "no"}]}).encode()
    assert not status_error("x", 500, denied).retryable
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_retry_honours_retry_after_and_stops_on_permanent_errors():
    waits: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise status_error("GET x", 429, retry_after="2")
        return "ok"

    assert retry.call(flaky, retries=5, sleep=waits.append) == "ok"
    assert waits == [2.0, 2.0]

    def denied() -> None:
        calls["n"] += 1
        raise status_error("GET x", 401)

    calls["n"] = 0
    with pytest.raises(RegistryError):
        retry.call(denied, retries=5, sleep=waits.append)
    assert calls["n"] == 1


def test_media_parsing_and_platform_filter(tmp_path: Path):
    index = build_index(tmp_path, platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"))
    parsed = parse_manifest(index.manifest)
    assert parsed.is_index and parsed.platforms == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    child = parse_manifest(index.children[0].manifest)
    assert [b.digest for b in child.blobs] == [index.children[0].config_digest, *index.children[0].layer_digests]
    filtered, kept = filter_index(parsed, ("linux/arm64",))
    assert filtered.platforms == ["linux/arm64"] and [k.platform for k in kept] == ["linux/arm64"]
    assert filtered.digest != parsed.digest and filtered.media_type == OCI_INDEX
    same, _ = filter_index(parsed, ("linux/amd64", "linux/arm64", "linux/arm/v7"))
    assert same is parsed  # nothing dropped: the original bytes
    assert platform_matches("linux/arm64/v8", "linux/arm64") and not platform_matches("linux/arm/v6", "linux/arm/v7")
    docker_list = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []}).encode()
    assert parse_manifest(docker_list).is_index
    assert digest_tag("sha256:" + "a" * 64) == "sha256-" + "a" * 64


def test_upload_url_keeps_its_query_and_link_pagination():
    assert _with_digest("http://r/v2/x/blobs/uploads/u?_state=a%3D", "sha256:00") == \
        "http://r/v2/x/blobs/uploads/u?_state=a%3D&digest=sha256%3A00"
    assert _with_digest("/v2/x/blobs/uploads/u", "sha256:00").endswith("/u?digest=sha256%3A00")

    class Response:
        headers = {"link": '</v2/x/tags/list?last=b&n=2>; rel="next"'}

    assert _next_link(Response()) == "/v2/x/tags/list?last=b&n=2"  # type: ignore[arg-type]


class FakeTransport:
    """Answers token requests from a function of the call number, and records each call."""

    def __init__(self, answer: Callable[[int], tuple[int, dict[str, Any]]]) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, dict[str, Any] | None, str | None]] = []

    @contextmanager
    def slot(self) -> Iterator[None]:
        yield

    def may_carry_credentials(self, url: str) -> bool:
        return url.startswith("https://")

    def send(self, method: str, url: str, operation: str, *, data: Any = None, params: Any = None,
             authorization: str | None = None, **_: Any) -> httpx.Response:
        self.calls.append((method, url, data if method == "POST" else params, authorization))
        status, body = self.answer(len(self.calls))
        return httpx.Response(status, stream=httpx.ByteStream(json.dumps(body).encode()))


def test_token_cache_honours_expiry():
    now = [0.0]
    transport = FakeTransport(lambda n: (200, {"token": f"t{n}", "expires_in": 100}))
    auth = Authenticator("r", None, transport, lambda: "http://r", clock=lambda: now[0])  # type: ignore[arg-type]
    auth.set_challenge('Bearer realm="http://t/token",service="r"')
    scopes = ("repository:a:pull",)
    assert auth.authorization(scopes) == "Bearer t1"
    assert auth.authorization(scopes) == "Bearer t1"
    now[0] = 89.0  # within the refresh margin of expires_in
    assert auth.authorization(scopes) == "Bearer t1"
    now[0] = 91.0
    assert auth.authorization(scopes) == "Bearer t2"
    assert auth.authorization(("repository:b:pull",)) == "Bearer t3"  # another scope, another token
    assert transport.calls[0] == ("GET", "http://t/token", {"scope": ["repository:a:pull"], "service": "r"}, None)


def test_refresh_token_flow_posts_the_form():
    transport = FakeTransport(lambda n: (200, {"access_token": "acc"}))
    creds = Credentials("test", identity_token="refresh-secret")
    auth = Authenticator("r", creds, transport, lambda: "https://r")  # type: ignore[arg-type]
    auth.set_challenge('Bearer realm="https://r/oauth2/token",service="r"')
    assert auth.authorization(("repository:a:pull,push",)) == "Bearer acc"
    assert transport.calls == [("POST", "https://r/oauth2/token", {
        "grant_type": "refresh_token", "refresh_token": "refresh-secret", "scope": "repository:a:pull,push",
        "service": "r"}, None)]


# ----------------------------------------------------------------------------- real registries


@pytest.fixture
def seeded(source_registry, tmp_path):
    return seed_standard_set(source_registry, tmp_path / "images")


@pytest.mark.registry
def test_manifests_blobs_and_exact_bytes(source_registry, seeded):
    client = RegistryClient(source_registry.host, plain())
    repo = client.repo("library/nginx")
    info = repo.head_manifest("1.25")
    digest = seeded["images"]["library/nginx:1.25"]
    assert info is not None and info.digest == digest
    manifest = repo.get_manifest("1.25")
    assert manifest.raw == seeded["oci"]["library/nginx:1.25"].manifest and manifest.digest == digest
    assert repo.get_manifest(digest).raw == manifest.raw
    layer = manifest.blobs[-1]
    assert repo.head_blob(layer.digest) == layer.size
    with repo.open_blob(layer.digest, layer.size) as blob:
        data = b"".join(blob.chunks())
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
    assert repo.head_manifest("nope") is None and repo.head_blob("sha256:" + "0" * 64) is None
    index = client.repo("multi/app").get_manifest("1.0")
    assert index.is_index and sorted(index.platforms) == ["linux/amd64", "linux/arm64"]
    client.close()


@pytest.mark.registry
def test_uploads_monolithic_chunked_and_mount(target_registry):
    client = RegistryClient(target_registry.host, plain())
    repo = client.repo("up/one", push=True)
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo.upload_blob(digest, len(data), [data[:100_000], data[100_000:]])
    assert repo.head_blob(digest) == len(data)
    other = os.urandom(250_000)
    other_digest = "sha256:" + hashlib.sha256(other).hexdigest()
    repo.upload_blob(other_digest, len(other), [other], chunk_size=64 * 1024)  # POST, PATCH x4, PUT
    assert repo.head_blob(other_digest) == len(other)
    second = client.repo("up/two", push=True)
    assert second.start_upload(mount=digest, from_repo="up/one") is None  # 201: mounted
    assert second.head_blob(digest) == len(data)
    location = second.start_upload(mount="sha256:" + "1" * 64, from_repo="up/one")
    assert location is not None  # 202: not there to mount, an upload session started instead
    second.cancel_upload(location)
    client.close()


@pytest.mark.registry
def test_tag_listing_follows_pagination(source_registry, tmp_path, proxy_factory):
    image = build_image(tmp_path, layers=[1024], seed="tags")
    push(image, source_registry, "paged/app", "t0")
    writer = RegistryClient(source_registry.host, plain())
    for i in range(1, 7):
        writer.repo("paged/app", push=True).put_manifest(f"t{i}", image.manifest, image.media_type)

    def paginate(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        # distribution 2.8 ignores n=; page as newer registries do, with a relative Link
        if "/tags/list" not in path:
            return None
        status, out, body = proxy.forward(method, "/v2/paged/app/tags/list", headers, b"")
        tags = sorted(json.loads(body)["tags"])
        query = dict(part.split("=") for part in path.split("?", 1)[1].split("&"))
        start = tags.index(query["last"]) + 1 if "last" in query else 0
        page = tags[start:start + int(query["n"])]
        if start + len(page) < len(tags):
            out["link"] = f'</v2/paged/app/tags/list?last={page[-1]}&n={query["n"]}>; rel="next"'
        return 200, out, json.dumps({"name": "paged/app", "tags": page}).encode()

    proxy = proxy_factory(source_registry.host, paginate)
    client = RegistryClient(proxy.host, plain())
    assert sorted(client.repo("paged/app").tags(page_size=2)) == [f"t{i}" for i in range(7)]
    assert proxy.count("GET", "/tags/list") == 4  # pages of 2, 2, 2, 1
    client.close()
    writer.close()


@pytest.mark.registry
def test_referrers_fall_back_to_the_tag_schema(source_registry, seeded):
    client = RegistryClient(source_registry.host, plain())
    repo = client.repo("team/web")
    subject = seeded["referrer"]["subject_digest"]
    assert repo.referrers(subject) is None  # distribution 2.8 has no referrers API
    assert client.supports_referrers is False
    index = repo.referrers_by_tag(subject)
    assert index is not None and [c.digest for c in index.children] == [seeded["referrer"]["digest"]]
    assert index.children[0].artifact_type == seeded["referrer"]["artifact_type"]
    client.close()


@pytest.mark.registry
def test_basic_auth(basic_registry, tmp_path):
    image = build_image(tmp_path, layers=[2048], seed="basic")
    push(image, basic_registry, "sec/app", "1")
    creds = Credentials("test", BasicCredential(basic_registry.username, basic_registry.password))
    client = RegistryClient(basic_registry.host, plain(), credentials=creds)
    assert client.repo("sec/app").get_manifest("1").raw == image.manifest
    anonymous = RegistryClient(basic_registry.host, plain(), sleep=no_sleep)
    with pytest.raises(RegistryError) as caught:
        anonymous.repo("sec/app").head_manifest("1")
    assert caught.value.status == 401 and not caught.value.retryable
    assert anonymous.requests["HEAD"] == 2  # the request, and one more after re-reading the challenge
    assert basic_registry.password not in str(caught.value)
    client.close()
    anonymous.close()


@pytest.mark.registry
def test_token_auth_caches_tokens_per_scope(token_registry, tmp_path):
    image = build_image(tmp_path, layers=[2048], seed="token")
    push(image, token_registry, "tok/app", "1")
    server = token_registry.token_server
    creds = Credentials("test", BasicCredential(token_registry.username, token_registry.password))
    client = RegistryClient(token_registry.host, plain(), credentials=creds, settings_for=loopback)
    before = server.requests["/token"]
    repo = client.repo("tok/app")
    for _ in range(3):
        assert repo.get_manifest("1").raw == image.manifest
        assert repo.head_blob(image.config_digest) is not None
    assert server.requests["/token"] - before == 1
    pusher = client.repo("tok/app", push=True)
    pusher.put_manifest("2", image.manifest, image.media_type)
    assert server.requests["/token"] - before == 2  # pull,push is another scope
    assert server.log[-1].subject == token_registry.username
    client.close()


@pytest.mark.registry
def test_acr_refresh_token_flow(acr_registry, tmp_path):
    from mirror.azure.identity import EntraIdTokenProvider
    from tests.support.registries import static_credential

    image = build_image(tmp_path, layers=[2048], seed="acr")
    push(image, acr_registry, "acr/app", "1")
    entra = EntraIdTokenProvider(static_credential(acr_registry.aad_token))
    client = RegistryClient(acr_registry.host, plain(), credentials=Credentials("entra", entra_id=entra),
                            settings_for=loopback)
    assert client.repo("acr/app").get_manifest("1").raw == image.manifest
    posts = [r for r in acr_registry.token_server.log if r.method == "POST" and r.path.startswith("/oauth2/token")]
    assert posts and posts[-1].status == 200
    assert client.auth.acr is not None and client.auth.acr.exchanges == 1
    client.close()


@pytest.mark.registry
def test_tls_with_ca_and_without(tls_registry, tmp_path):
    image = build_image(tmp_path, layers=[1024], seed="tls")
    push(image, tls_registry, "tls/app", "1")
    trusted = RegistryClient(tls_registry.host, RegistrySettings(ca_file=str(tls_registry.ca_file)))
    assert trusted.repo("tls/app").get_manifest("1").raw == image.manifest
    assert trusted.base_url.startswith("https://")
    untrusted = RegistryClient(tls_registry.host, RegistrySettings(), sleep=no_sleep)
    with pytest.raises(RegistryError) as caught:
        untrusted.repo("tls/app").head_manifest("1")
    assert "ca_file" in str(caught.value) and not caught.value.retryable
    unverified = RegistryClient(tls_registry.host, RegistrySettings(insecure=True))
    assert unverified.repo("tls/app").head_manifest("1") is not None
    assert unverified.base_url.startswith("https://")  # insecure TLS, not a downgrade to http
    for client in (trusted, untrusted, unverified):
        client.close()


@pytest.mark.registry
def test_plain_http_only_when_the_host_is_insecure(source_registry):
    strict = RegistryClient(source_registry.host, RegistrySettings(), sleep=no_sleep)
    with pytest.raises(RegistryError) as caught:
        strict.ping()
    assert "insecure" in str(caught.value)
    relaxed = RegistryClient(source_registry.host, RegistrySettings(insecure=True))
    relaxed.ping()
    assert relaxed.base_url == f"http://{source_registry.host}"
    with pytest.raises(RegistryError, match="plain HTTP is used only for a host marked insecure"):
        RegistryClient("registry.example.test", RegistrySettings(endpoint=source_registry.url)).ping()
    routed = RegistryClient("registry.example.test", RegistrySettings(endpoint=source_registry.url, insecure=True))
    routed.ping()
    assert routed.base_url == source_registry.url  # the endpoint says http: no https attempt
    for client in (strict, relaxed, routed):
        client.close()


@pytest.mark.registry
def test_blob_redirect_drops_authorization_and_loops_fail(basic_registry, tmp_path, proxy_factory):
    image = build_image(tmp_path, layers=[50_000], seed="redirect")
    push(image, basic_registry, "red/app", "1")
    layer = image.layer_digests[0]
    storage_seen: list[dict[str, str]] = []
    creds = (basic_registry.username, basic_registry.password)
    auth = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()

    def storage(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply:
        storage_seen.append(headers)  # a storage account: serves the bytes, records what it was sent
        return proxy.forward(method, "/v2/red/app/blobs/" + path.rsplit("/", 1)[1],
                             {"authorization": auth}, b"")

    store = proxy_factory(basic_registry.host, storage)

    def registry(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        if "/blobs/sha256:" in path and method == "GET":
            return 307, {"location": f"http://{store.host}/storage/{path.rsplit('/', 1)[1]}"}, b""
        return None

    front = proxy_factory(basic_registry.host, registry)
    settings = plain()
    creds_obj = Credentials("test", BasicCredential(*creds))
    client = RegistryClient(front.host, settings, credentials=creds_obj)
    repo = client.repo("red/app")
    with repo.open_blob(layer) as blob:
        data = b"".join(blob.chunks())
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer
    assert storage_seen and "authorization" not in storage_seen[0]
    assert any("authorization" in s.headers for s in front.seen if "/blobs/" in s.path)

    def loop(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        if "/blobs/" in path:
            return 302, {"location": path}, b""
        return None

    looping = proxy_factory(basic_registry.host, loop)
    client2 = RegistryClient(looping.host, settings, credentials=creds_obj)
    with pytest.raises(RegistryError) as caught, client2.repo("red/app").open_blob(layer):
        pass
    assert "too many redirects" in str(caught.value)
    client.close()
    client2.close()


@pytest.mark.registry
def test_retries_500_and_429_but_not_401_404(source_registry, seeded, proxy_factory):
    faults = {"500": 2, "429": 1}

    def flaky(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        if "/manifests/" not in path:
            return None
        if faults["500"]:
            faults["500"] -= 1
            return 500, {}, b"boom"
        if faults["429"]:
            faults["429"] -= 1
            return 429, {"retry-after": "1"}, b""
        return None

    proxy = proxy_factory(source_registry.host, flaky)
    waits: list[float] = []
    client = RegistryClient(proxy.host, plain(), sleep=waits.append)
    assert client.repo("library/nginx").get_manifest("1.25").digest == seeded["images"]["library/nginx:1.25"]
    assert proxy.count("GET", "/manifests/") == 4 and waits[-1] == 1.0

    missing = RegistryClient(proxy.host, plain(), sleep=waits.append)
    with pytest.raises(RegistryError) as caught:
        missing.repo("library/nginx").get_manifest("nope")
    assert caught.value.status == 404 and "MANIFEST_UNKNOWN" in caught.value.codes
    assert proxy.count("GET", "/manifests/nope") == 1
    client.close()
    missing.close()


@pytest.mark.registry
def test_refuses_big_manifests_and_lying_digests(source_registry, seeded, proxy_factory):
    digest = seeded["images"]["library/nginx:1.25"]

    def big(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        if path.endswith("/manifests/big"):
            return 200, {"content-type": OCI_INDEX}, b" " * (4 * 1024 * 1024 + 1)
        return None

    def lie(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Reply:
        if "/manifests/" in path and status == 200:
            headers["docker-content-digest"] = "sha256:" + "f" * 64
        return status, headers, body

    client = RegistryClient(proxy_factory(source_registry.host, big).host, plain())
    with pytest.raises(RegistryError) as caught:
        client.repo("library/nginx").get_manifest("big")
    assert "4 MiB" in str(caught.value)
    liar = RegistryClient(proxy_factory(source_registry.host, rewrite=lie).host, plain())
    with pytest.raises(RegistryError) as caught:
        liar.repo("library/nginx").get_manifest("1.25")
    assert "Docker-Content-Digest" in str(caught.value) and not caught.value.retryable
    with pytest.raises(RegistryError):
        liar.repo("library/nginx").get_manifest(digest)
    client.close()
    liar.close()


@pytest.mark.registry
def test_rate_limit_headers_are_exposed(source_registry, seeded, proxy_factory):
    def hub(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Reply:
        headers.update({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"})
        return status, headers, body

    client = RegistryClient(proxy_factory(source_registry.host, rewrite=hub).host, plain())
    client.repo("library/nginx").head_manifest("1.25")
    assert client.rate_limit == "limit 100;w=21600, remaining 76;w=21600"
    client.close()


@pytest.mark.registry
def test_request_limit_per_host(source_registry, seeded, proxy_factory):
    in_flight = {"now": 0, "max": 0}
    gate = threading.Lock()

    def slow(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        with gate:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
        time.sleep(0.05)
        with gate:
            in_flight["now"] -= 1
        return None

    proxy = proxy_factory(source_registry.host, slow)
    client = RegistryClient(proxy.host, plain(), max_in_flight=2)
    client.ping()
    repo = client.repo("library/nginx")
    threads = [threading.Thread(target=repo.head_manifest, args=("1.25",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert in_flight["max"] == 2
    client.close()


@pytest.mark.registry
def test_cookies_a_registry_sets_are_never_sent_back(source_registry, seeded, proxy_factory):
    """Registries keep no state in cookies: one that sets a cookie (a load balancer's, a tracker's)
    never sees it again, on any request, HEAD or GET."""
    def sticky(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Reply:
        headers["set-cookie"] = "session=abc123; Path=/"
        return status, headers, body

    proxy = proxy_factory(source_registry.host, rewrite=sticky)
    client = RegistryClient(proxy.host, plain())
    repo = client.repo("library/nginx")
    for _ in range(2):
        assert repo.head_manifest("1.25") is not None
        repo.get_manifest("1.25")
    client.close()
    assert proxy.count("HEAD") == 2 and proxy.count("GET") >= 3  # the ping, then two manifests
    assert not any("cookie" in seen.headers for seen in proxy.seen)


@pytest.mark.registry
def test_heads_reuse_one_connection(source_registry, seeded, proxy_factory):
    """A HEAD's answer is read to its end, so its connection goes back to the pool: ten HEADs one
    after another (found and not found) travel on the ping's connection."""
    proxy = proxy_factory(source_registry.host)
    client = RegistryClient(proxy.host, plain())
    repo = client.repo("library/nginx")
    for n in range(10):
        repo.head_manifest("1.25" if n % 2 else "no-such-tag")
    client.close()
    assert proxy.count("HEAD") == 10
    assert len({seen.client_port for seen in proxy.seen}) == 1


@pytest.mark.registry
def test_proxy_environment_is_honoured(source_registry, seeded, proxy_factory, monkeypatch):
    """HTTP(S)_PROXY reaches the registry through the proxy; NO_PROXY naming the host goes direct."""
    proxy = proxy_factory(source_registry.host)  # forwards the absolute-form requests a proxy receives
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.host}")
    client = RegistryClient(source_registry.host, plain())
    assert client.repo("library/nginx").head_manifest("1.25") is not None
    client.close()
    assert proxy.count("HEAD") == 1 and proxy.seen[-1].path.startswith(f"http://{source_registry.host}/v2/")

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = RegistryClient(source_registry.host, plain())
    assert client.repo("library/nginx").head_manifest("1.25") is not None
    client.close()
    assert proxy.count("HEAD") == 1  # the second client went direct
