"""A client for the OCI distribution API (one registry host), on httpx.

One `RegistryClient` per registry host holds that host's connection pool, TLS settings,
authentication and request limit; `client.repo(name)` gives a `Repository` handle whose
methods are the API calls. Idempotent calls (HEAD/GET/PUT manifest, HEAD blob, tag list,
referrers) retry by themselves (mirror.retry); streaming and upload calls do not: the
caller retries a whole blob transfer, so retries never nest.

Per host settings (RegistrySettings): `endpoint` sends requests elsewhere while image
names stay those of the host; `insecure` allows plain HTTP or unverified TLS for that
host only (https is tried first unless the endpoint says http); `ca_file` trusts a CA.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from manifests_rewriter.config import RegistrySettings

from .. import retry
from .auth import Authenticator, CredentialsLike, scope
from .errors import RegistryError, status_error
from .media import ACCEPT, MAX_MANIFEST_BYTES, Descriptor, Manifest, digest_tag, parse_manifest

USER_AGENT = "acr-mirror/0.1"
MAX_REDIRECTS = 5
MAX_TOKEN_RESPONSE = 256 * 1024  # a registry token is a few KiB; anything larger is not one
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TAG_PAGE = 1000
DOCKER_HUB_API = {"docker.io": "registry-1.docker.io"}  # image names say docker.io; the API lives here


def _hasher(digest: str) -> Any:
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise RegistryError(f"check digest {digest}", message=f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class HostLimiter:
    """At most `limit` requests in flight to one host. Re-entrant per thread, so a thread
    that holds a slot (a blob stream) can make further requests to the same host."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self._semaphore = threading.BoundedSemaphore(self.limit)
        self._local = threading.local()

    @contextmanager
    def slot(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._semaphore.acquire()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                self._semaphore.release()


@dataclass(frozen=True)
class ManifestInfo:
    """What a HEAD of a manifest tells: digest (None if the registry did not say), type, size."""

    digest: str | None
    media_type: str
    size: int


@dataclass(frozen=True)
class PutResult:
    digest: str
    subject_indexed: bool  # the registry answered OCI-Subject: it serves the referrers API itself


class BlobStream:
    """An open blob GET. `chunks()` yields the body and checks size and digest while
    streaming; the last piece is held back until the whole body is verified, so an upload
    fed from it never receives its final byte when the content is wrong."""

    def __init__(self, response: httpx.Response, digest: str, size: int, operation: str):
        self.response = response
        self.digest = digest
        self.size = size
        self.operation = operation

    def chunks(self) -> Iterator[bytes]:
        hasher = _hasher(self.digest)
        received = 0
        held: bytes | None = None
        try:
            for piece in self.response.iter_raw():
                if not piece:
                    continue
                if held is not None:
                    yield held
                hasher.update(piece)
                received += len(piece)
                if received > self.size >= 0:
                    raise RegistryError(self.operation, codes=("SIZE_INVALID",),
                                        message=f"more than the expected {self.size} bytes")
                held = piece
        except httpx.HTTPError as exc:
            raise _transport_error(self.operation, exc) from None
        if self.size >= 0 and received != self.size:
            raise RegistryError(self.operation, message=f"body ended after {received} of {self.size} bytes",
                                retryable=True)
        actual = f"{self.digest.partition(':')[0]}:{hasher.hexdigest()}"
        if actual != self.digest:  # damaged in transit (or a bad blob): the caller fetches it again, a few times
            raise RegistryError(self.operation, message=f"content hashes to {actual}, not the requested digest",
                                retryable=True)
        if held is not None:
            yield held


class RegistryClient:
    """Talks to one registry host. Thread-safe; share one per host."""

    def __init__(self, host: str, settings: RegistrySettings | None = None, *,
                 credentials: CredentialsLike | None = None, timeout: float = 60.0, retries: int = 5,
                 max_in_flight: int = 8, sleep: Callable[[float], None] | None = None):
        self.host = host
        self.settings = settings or RegistrySettings()
        self.retries = retries
        self.limiter = HostLimiter(max_in_flight)
        self.requests: Counter[str] = Counter()  # method -> requests sent to the registry (not tokens)
        self.rate_limit: str | None = None  # Docker Hub's ratelimit-limit / ratelimit-remaining, last seen
        self.supports_referrers: bool | None = None
        self._sleep = sleep
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 15.0))
        self._pool_size = max(20, 2 * self.limiter.limit)
        self._http = self._new_http(self._verify())
        self._foreign: httpx.Client | None = None  # for redirects to other hosts: default TLS checks
        self._base: str | None = None
        self._ping_lock = threading.Lock()
        self._foreign_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.auth = Authenticator(host, credentials, self._token_request)

    # -- setup -------------------------------------------------------------------------

    def _verify(self) -> ssl.SSLContext | bool:
        if self.settings.insecure:
            return False
        context = ssl.create_default_context()
        if self.settings.ca_file:
            try:
                context.load_verify_locations(cafile=self.settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"load CA file for {self.host}", message=str(exc)) from None
        return context

    def _new_http(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        return httpx.Client(
            verify=verify, timeout=self._timeout, follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self._pool_size),
            headers={"User-Agent": USER_AGENT},
        )

    def _candidates(self) -> list[str]:
        endpoint = (self.settings.endpoint or "").rstrip("/")
        if endpoint.startswith(("http://", "https://")):
            return [endpoint]
        target = endpoint or DOCKER_HUB_API.get(self.host, self.host)
        return [f"https://{target}"] + ([f"http://{target}"] if self.settings.insecure else [])

    def close(self) -> None:
        self._http.close()
        if self._foreign is not None:
            self._foreign.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def repo(self, name: str, *, push: bool = False) -> Repository:
        return Repository(self, name, push=push)

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.limiter.slot():
            yield

    # -- ping ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base is None:
            self.ping()
        assert self._base is not None
        return self._base

    def ping(self) -> None:
        """GET /v2/: choose http(s) and learn the authentication challenge. Once per client."""
        with self._ping_lock:
            if self._base is None:
                retry.call(self._ping_once, retries=self.retries, sleep=self._sleep)

    def _ping_once(self) -> None:
        candidates = self._candidates()
        for index, base in enumerate(candidates):
            operation = f"ping {self.host} at {base}"
            try:
                with self.limiter.slot():
                    response = self._http.get(f"{base}/v2/")
                    response.read()
            except httpx.HTTPError as exc:
                if index + 1 < len(candidates) and isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError
                                                              | httpx.ReadError):
                    continue  # insecure host: fall back to plain HTTP
                error = _transport_error(operation, exc)
                if base.startswith("https://") and not self.settings.insecure and _is_tls_error(exc):
                    error = RegistryError(operation, message=error.message + f" (set registries.{self.host}.ca_file "
                                          "for a private CA, or insecure: true for plain HTTP or unverified TLS)")
                raise error from None
            self._observe(response)
            if response.status_code == 401:
                self.auth.set_challenge(response.headers.get("www-authenticate"))
            elif response.status_code != 200:
                raise status_error(operation, response.status_code, response.content,
                                   response.headers.get("retry-after"))
            self._base = base
            return

    # -- requests ------------------------------------------------------------------------

    def _same_host(self, url: str) -> bool:
        return urlsplit(url).netloc == urlsplit(self.base_url).netloc

    def _observe(self, response: httpx.Response) -> None:
        limit, remaining = response.headers.get("ratelimit-limit"), response.headers.get("ratelimit-remaining")
        if limit or remaining:
            self.rate_limit = f"limit {limit or '?'}, remaining {remaining or '?'}"

    def send(self, method: str, url: str, operation: str, scopes: tuple[str, ...], *,
             headers: dict[str, str] | None = None, content: Any = None,
             follow: bool = False, stream: bool = False) -> httpx.Response:
        """One request with authentication: a 401 gets one more try with a fresh token;
        GET/HEAD redirects are followed when `follow`, and the Authorization header is sent
        only to the registry's own host. With `stream` the caller closes the response."""
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        replayable = content is None or isinstance(content, bytes | str)
        hops = 0
        for attempt in (1, 2):
            request_url = url
            while True:
                request_headers = dict(headers or {})
                client = self._http
                if self._same_host(request_url):
                    authorization = self.auth.authorization(scopes)
                    if authorization:
                        request_headers["Authorization"] = authorization
                else:
                    client = self._foreign_client()
                request = client.build_request(method, request_url, headers=request_headers, content=content)
                try:
                    response = client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise _transport_error(operation, exc) from None
                with self._count_lock:
                    self.requests[method] += 1
                self._observe(response)
                if follow and response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                    response.close()
                    hops += 1
                    request_url = urljoin(request_url, response.headers["location"])
                    if hops > MAX_REDIRECTS:
                        target = urlsplit(request_url).netloc
                        raise RegistryError(operation, response.status_code,
                                            message=f"too many redirects ({hops}), the last to {target}")
                    continue
                break
            if response.status_code == 401 and attempt == 1 and replayable and self._same_host(request_url):
                response.close()
                self.auth.set_challenge(response.headers.get("www-authenticate"))
                self.auth.invalidate(scopes)
                continue
            break
        if not stream:
            try:
                response.read()
            except httpx.HTTPError as exc:
                raise _transport_error(operation, exc) from None
            finally:
                response.close()
        return response

    def _foreign_client(self) -> httpx.Client:
        with self._foreign_lock:
            if self._foreign is None:
                self._foreign = self._new_http(True)
            return self._foreign

    def _token_request(self, method: str, url: str, values: dict[str, Any],
                       headers: dict[str, str]) -> tuple[int, Any, bytes]:
        operation = f"get a token from {self.host}"
        if method == "POST":
            request = self._http.build_request("POST", url, data=values, headers=headers)
        else:
            request = self._http.build_request("GET", httpx.URL(url).copy_merge_params(values), headers=headers)
        try:
            response = self._http.send(request, stream=True)
            try:
                content = bytearray()
                for piece in response.iter_bytes():  # bounded: a token endpoint may answer anything
                    content += piece
                    if len(content) > MAX_TOKEN_RESPONSE:
                        endpoint = httpx.URL(url).copy_with(query=None)
                        raise RegistryError(operation, response.status_code,
                                            message=f"the token endpoint {endpoint} answered more than "
                                                    f"{MAX_TOKEN_RESPONSE:,} bytes; not a token")
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise _transport_error(operation, exc) from None
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        return response.status_code, body, bytes(content)


class Repository:
    """The API calls for one repository of a registry. `push` asks tokens for pull,push."""

    def __init__(self, client: RegistryClient, name: str, *, push: bool = False):
        self.client = client
        self.name = name
        self.push = push
        self.scopes = (scope(name, "pull,push" if push else "pull"),)

    def __repr__(self) -> str:
        return f"Repository({self.client.host}/{self.name})"

    def _where(self, reference: str) -> str:
        separator = "@" if ":" in reference and reference.partition(":")[0] in ("sha256", "sha384", "sha512") else ":"
        return f"{self.client.host}/{self.name}{separator}{reference}"

    def _retry(self, fn: Callable[[], Any]) -> Any:
        return retry.call(fn, retries=self.client.retries, sleep=self.client._sleep)

    def _send(self, method: str, path: str, operation: str, **kwargs: Any) -> httpx.Response:
        with self.client.limiter.slot():
            return self.client.send(method, path, operation, kwargs.pop("scopes", self.scopes), **kwargs)

    # -- manifests -------------------------------------------------------------------------

    def head_manifest(self, reference: str) -> ManifestInfo | None:
        """Digest, media type and size of a manifest; None when it does not exist."""
        operation = f"HEAD manifest {self._where(reference)}"

        def attempt() -> ManifestInfo | None:
            response = self._send("HEAD", f"/v2/{self.name}/manifests/{reference}", operation,
                                  headers={"Accept": ACCEPT})
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise _response_error(operation, response)
            return ManifestInfo(response.headers.get("docker-content-digest"),
                                _media_type(response), int(response.headers.get("content-length", -1)))

        return self._retry(attempt)

    def get_manifest(self, reference: str) -> Manifest:
        """The manifest's exact bytes, checked against the requested digest and the
        registry's Docker-Content-Digest; refuses manifests over 4 MiB."""
        operation = f"GET manifest {self._where(reference)}"

        def attempt() -> Manifest:
            with self.client.limiter.slot():
                response = self.client.send("GET", f"/v2/{self.name}/manifests/{reference}", operation,
                                            self.scopes, headers={"Accept": ACCEPT}, stream=True)
                try:
                    if response.status_code != 200:
                        response.read()
                        raise _response_error(operation, response)
                    raw = _read_limited(response, MAX_MANIFEST_BYTES, operation)
                finally:
                    response.close()
            header = response.headers.get("docker-content-digest")
            requested = reference if _is_digest(reference) else None
            for expected, what in ((requested, "the requested digest"), (header, "Docker-Content-Digest")):
                if expected:
                    actual = compute_digest(raw, _hasher(expected).name)
                    if actual != expected:  # the body may be damaged in transit: worth another GET;
                        # a header that lies about intact bytes is the registry's fault: final
                        raise RegistryError(operation, 200, () if expected == requested else ("DIGEST_INVALID",),
                                            f"content hashes to {actual}, {what} says {expected}",
                                            retryable=expected == requested)
            try:
                return parse_manifest(raw, _media_type(response), requested or header or compute_digest(raw))
            except ValueError as exc:
                raise RegistryError(operation, 200, ("MANIFEST_INVALID",), str(exc)) from None

        return self._retry(attempt)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> PutResult:
        """Store the exact bytes under a tag or their digest."""
        operation = f"PUT manifest {self._where(reference)}"
        digest = compute_digest(raw)

        def attempt() -> PutResult:
            response = self._send("PUT", f"/v2/{self.name}/manifests/{reference}", operation,
                                  headers={"Content-Type": media_type}, content=raw)
            if response.status_code not in (200, 201, 202):
                raise _response_error(operation, response)
            stored = response.headers.get("docker-content-digest")
            if stored and stored != digest:
                raise RegistryError(operation, response.status_code, ("DIGEST_INVALID",),
                                    f"the registry stored {stored}, the bytes sent hash to {digest}")
            return PutResult(digest, "oci-subject" in response.headers)

        return self._retry(attempt)

    # -- blobs ------------------------------------------------------------------------------

    def head_blob(self, digest: str) -> int | None:
        """The blob's size when the repository has it, else None."""
        operation = f"HEAD blob {self._where(digest)}"

        def attempt() -> int | None:
            response = self._send("HEAD", f"/v2/{self.name}/blobs/{digest}", operation, follow=True)
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise _response_error(operation, response)
            return int(response.headers.get("content-length", -1))

        return self._retry(attempt)

    @contextmanager
    def open_blob(self, digest: str, size: int = -1) -> Iterator[BlobStream]:
        """Stream a blob (not retried here: the caller retries the whole transfer).
        Redirects (ACR sends blob GETs to storage) are followed without the Authorization header."""
        operation = f"GET blob {self._where(digest)}"
        with self.client.limiter.slot():
            response = self.client.send("GET", f"/v2/{self.name}/blobs/{digest}", operation, self.scopes,
                                        headers={"Accept-Encoding": "identity"}, follow=True, stream=True)
            try:
                if response.status_code != 200:
                    response.read()
                    raise _response_error(operation, response)
                length = int(response.headers.get("content-length", -1))
                if size >= 0 and length >= 0 and length != size:
                    raise RegistryError(operation, 200, ("SIZE_INVALID",),
                                        f"the registry sends {length} bytes, the manifest says {size}")
                yield BlobStream(response, digest, size if size >= 0 else length, operation)
            finally:
                response.close()

    def start_upload(self, mount: str | None = None, from_repo: str | None = None) -> str | None:
        """POST an upload; with `mount`/`from_repo` ask for a cross-repository mount first.
        Returns the upload URL, or None when the blob was mounted (201)."""
        operation = f"start upload to {self.client.host}/{self.name}"
        path = f"/v2/{self.name}/blobs/uploads/"
        scopes: tuple[str, ...] = self.scopes
        if mount and from_repo:
            operation = f"mount {mount} from {from_repo} into {self.client.host}/{self.name}"
            path += f"?mount={quote(mount)}&from={quote(from_repo)}"
            scopes = (*self.scopes, scope(from_repo, "pull"))
        response = self._send("POST", path, operation, scopes=scopes, content=b"")
        if response.status_code == 201 and mount:
            return None
        if response.status_code != 202 or "location" not in response.headers:
            raise _response_error(operation, response)
        return urljoin(str(response.url), response.headers["location"])

    def cancel_upload(self, location: str) -> None:
        """Best effort: the registry purges abandoned uploads anyway."""
        with suppress(RegistryError):
            self._send("DELETE", location, f"cancel upload to {self.client.host}/{self.name}")

    def upload_blob(self, digest: str, size: int, chunks: Iterable[bytes], *, location: str | None = None,
                    chunk_size: int | None = None) -> None:
        """Upload a blob from `chunks`. Monolithic (one streamed PUT, the fastest) unless
        `chunk_size` is given: then PATCHes of that size and a final PUT with the digest.
        The digest is committed only by the last request, so a `chunks` that raises
        (a verification failure) leaves nothing in the registry."""
        operation = f"upload blob {self._where(digest)}"
        location = location or self.start_upload()
        assert location is not None
        if chunk_size is None:
            response = self._send("PUT", _with_digest(location, digest), operation, content=iter(chunks),
                                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        else:
            offset = 0
            for piece in _rechunk(chunks, chunk_size):
                response = self._send("PATCH", location, operation, content=piece, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}"})
                if response.status_code != 202 or "location" not in response.headers:
                    raise _response_error(operation, response)
                location = urljoin(str(response.url), response.headers["location"])
                offset += len(piece)
            response = self._send("PUT", _with_digest(location, digest), operation, content=b"",
                                  headers={"Content-Type": "application/octet-stream"})
        if response.status_code not in (201, 204):
            raise _response_error(operation, response)
        stored = response.headers.get("docker-content-digest")
        if stored and stored != digest:
            raise RegistryError(operation, response.status_code, ("DIGEST_INVALID",),
                                f"the registry stored {stored}")

    # -- listings --------------------------------------------------------------------------

    def tags(self, page_size: int = TAG_PAGE) -> list[str]:
        """All tags, following the Link header's pagination."""
        operation = f"list tags of {self.client.host}/{self.name}"
        tags: list[str] = []
        path: str | None = f"/v2/{self.name}/tags/list?n={page_size}"
        while path:
            def attempt(path: str = path) -> httpx.Response:
                response = self._send("GET", path, operation)
                if response.status_code != 200:
                    raise _response_error(operation, response)
                return response

            response = self._retry(attempt)
            try:
                tags.extend(response.json().get("tags") or [])
            except (ValueError, AttributeError):
                raise RegistryError(operation, 200, message="the registry answered with invalid JSON") from None
            path = _next_link(response)
            if path:
                path = urljoin(str(response.url), path)
        return tags

    def referrers(self, digest: str) -> list[Descriptor] | None:
        """Manifests whose subject is `digest`, from the referrers API; None when the
        registry has no referrers API (then the caller uses the tag schema, see
        `referrers_by_tag`)."""
        if self.client.supports_referrers is False:
            return None
        operation = f"list referrers of {self._where(digest)}"

        def attempt() -> list[Descriptor] | None:
            response = self._send("GET", f"/v2/{self.name}/referrers/{digest}", operation,
                                  headers={"Accept": "application/vnd.oci.image.index.v1+json"})
            if response.status_code in (404, 405, 400, 501):
                self.client.supports_referrers = False
                return None
            if response.status_code != 200:
                raise _response_error(operation, response)
            try:
                manifest = parse_manifest(response.content, "application/vnd.oci.image.index.v1+json")
            except ValueError as exc:
                raise RegistryError(operation, 200, ("MANIFEST_INVALID",), str(exc)) from None
            self.client.supports_referrers = True
            return list(manifest.children)

        return self._retry(attempt)

    def referrers_by_tag(self, digest: str) -> Manifest | None:
        """The tag-schema fallback: the index at tag `sha256-<hex>`, if there is one."""
        info = self.head_manifest(digest_tag(digest))
        if info is None:
            return None
        manifest = self.get_manifest(digest_tag(digest))
        return manifest if manifest.is_index else None


# -- helpers --------------------------------------------------------------------------------


def _is_digest(reference: str) -> bool:
    return reference.partition(":")[0] in ("sha256", "sha384", "sha512") and ":" in reference


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def _with_digest(location: str, digest: str) -> str:
    """Append digest= to the upload URL's own query (it carries the upload's state)."""
    return location + ("&" if urlsplit(location).query else "?") + "digest=" + quote(digest)


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link", "")
    for part in link.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1:end]
    return None


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in chunks:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _read_limited(response: httpx.Response, limit: int, operation: str) -> bytes:
    declared = int(response.headers.get("content-length", -1))
    if declared > limit:
        raise RegistryError(operation, response.status_code, ("MANIFEST_INVALID",),
                            f"manifest of {declared} bytes is over the {limit // (1 << 20)} MiB limit")
    body = bytearray()
    try:
        for piece in response.iter_raw():
            body += piece
            if len(body) > limit:
                raise RegistryError(operation, response.status_code, ("MANIFEST_INVALID",),
                                    f"manifest is over the {limit // (1 << 20)} MiB limit")
    except httpx.HTTPError as exc:
        raise _transport_error(operation, exc) from None
    return bytes(body)


def _response_error(operation: str, response: httpx.Response) -> RegistryError:
    try:
        body = response.content
    except httpx.ResponseNotRead:
        body = b""
    return status_error(operation, response.status_code, body, response.headers.get("retry-after"))


def _is_tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc) or "certificate" in str(exc).lower()


def _transport_error(operation: str, exc: httpx.HTTPError) -> RegistryError:
    """Timeouts, resets and refused connections may pass; an untrusted certificate will not."""
    if isinstance(exc, httpx.TimeoutException):
        return RegistryError(operation, message=f"timed out ({type(exc).__name__})", retryable=True)
    if _is_tls_error(exc) and isinstance(exc, httpx.ConnectError):
        return RegistryError(operation, message=f"TLS failed: {exc}", retryable=False)
    text = str(exc) or type(exc).__name__
    return RegistryError(operation, message=f"connection failed: {text}", retryable=True)
