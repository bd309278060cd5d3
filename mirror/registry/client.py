"""A client for the OCI distribution API (one registry host).

One `RegistryClient` per registry host holds that host's Transport (connections, TLS,
request limit, counters), authentication and retries; `client.repo(name)` gives a
`Repository` handle whose methods are the API calls. Idempotent calls (HEAD/GET/PUT
manifest, HEAD blob, tag list, referrers) retry by themselves (mirror.retry); streaming and
upload calls do not: the caller retries a whole blob transfer, so retries never nest.

Fail fast: the ping (GET /v2/) is tried with a short budget of its own, never inside another
retry, and a host that could not be reached is remembered for the run: every later call fails
at once with the same one line (a DNS failure or a refused certificate is not retried at all).

Nothing a registry sends is trusted: digests it names are checked (digest grammar) before they
go into a URL, every URL path segment is validated and quoted, manifests and blobs fetched by
digest must hash to it, every body is read bounded (manifests and referrers 4 MiB, tag pages
4 MiB and at most MAX_TAG_PAGES pages, error bodies 64 KiB), and a transfer that falls below
MIN_RATE bytes/s once past its grace period is given up.

Per host settings (RegistrySettings): see mirror.registry.transport for `endpoint`,
`insecure` and `ca_file`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from manifests_rewriter.reference import TAG_RE, digest_problem, is_digest, is_valid_repository

from .. import retry
from ..settings import RegistrySettings
from .auth import Authenticator, scope
from .credentials import Credentials
from .errors import RegistryError, status_error
from .media import ACCEPT, MAX_MANIFEST_BYTES, Descriptor, Manifest, digest_tag, parse_manifest
from .pacing import Pacer
from .transport import HostLimiter, Response, Transport, base_urls, redact_url

TAG_PAGE = 1000
MAX_TAG_PAGES = 100  # 100,000 tags: a tag list longer than that is a registry misbehaving
MAX_ERROR_BODY = 64 * 1024
PING_RETRIES = 2  # the ping's own budget (429/5xx/resets); DNS and TLS failures are final at once
UNKNOWN_SIZE_CHUNK = 8 * 1024 * 1024  # PATCH size for a blob whose size is not known in advance
MIN_RATE = 10 * 1024  # bytes/s a blob stream must average once past its grace period (copy.timeout)


def _hasher(digest: str) -> Any:
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise RegistryError(f"check digest {digest}", message=f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


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

    def __init__(self, response: Response, digest: str, size: int, operation: str, grace: float = 60.0):
        self.response = response
        self.digest = digest
        self.size = size
        self.operation = operation
        self.grace = grace  # seconds before the minimum rate applies

    def chunks(self) -> Iterator[bytes]:
        hasher = _hasher(self.digest)
        received = 0
        held: bytes | None = None
        started = time.monotonic()
        for piece in Transport.body(self.response, self.operation):
            if not piece:
                continue
            if held is not None:
                yield held
            hasher.update(piece)
            received += len(piece)
            if received > self.size >= 0:
                raise RegistryError(self.operation, codes=("SIZE_INVALID",),
                                    message=f"more than the expected {self.size} bytes")
            elapsed = time.monotonic() - started
            if elapsed > self.grace and received < MIN_RATE * elapsed:  # a source dripping bytes holds a worker
                raise RegistryError(self.operation, message=f"{received:,} bytes in {elapsed:.0f} s, below the "
                                    f"minimum of {MIN_RATE // 1024} KiB/s; given up (check the network)",
                                    retryable=True, transport="slow")
            held = piece
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
                 credentials: Credentials | None = None, timeout: float = 60.0, retries: int = 5,
                 max_in_flight: int = 8, sleep: Callable[[float], None] | None = None,
                 settings_for: Callable[[str], RegistrySettings] | None = None, pacer: Pacer | None = None):
        self.host = host
        self.settings = settings or RegistrySettings()
        self.retries = retries
        self.transport = Transport(host, self.settings, timeout=timeout, max_in_flight=max_in_flight,
                                   settings_for=settings_for)
        self.transport.observers.append(self._observe)
        self.pacer = pacer if pacer is not None and pacer.paces(host) else None  # the host's request budget
        if self.pacer is not None:
            self.transport.observers.append(self._count_throttling)
        self.rate_limit: str | None = None  # Docker Hub's ratelimit-limit / ratelimit-remaining, last seen
        self.supports_referrers: bool | None = None
        self._sleep = sleep
        self._base: str | None = None
        self._unreachable: RegistryError | None = None  # the ping's failure, remembered for the run
        self._ping_lock = threading.Lock()
        self.auth = Authenticator(host, credentials, self.transport, lambda: self.base_url)

    @property
    def limiter(self) -> HostLimiter:
        return self.transport.limiter

    @property
    def requests(self) -> Counter[str]:
        """Requests sent to this host, by method (token requests included)."""
        return self.transport.requests

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def repo(self, name: str, *, push: bool = False) -> Repository:
        return Repository(self, name, push=push)

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.transport.slot():
            yield

    # -- ping ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base is None:
            self.ping()
        assert self._base is not None
        return self._base

    def ping(self) -> None:
        """GET /v2/: choose http(s) and learn the authentication challenge. Once per client; a
        failure is final for the run (not retryable: an operation's retry never repeats it)."""
        with self._ping_lock:
            if self._base is not None:
                return
            if self._unreachable is not None:
                raise self._unreachable
            try:
                retry.call(self._ping_once, retries=min(self.retries, PING_RETRIES), sleep=self._sleep)
            except RegistryError as exc:
                hint = "" if exc.status in (401, 403) else (
                    f"; check the host name and the network (or registries.{self.host}.endpoint)"
                    if exc.transport in ("dns", "connect", "timeout", "other") else "")
                self._unreachable = RegistryError(exc.operation, exc.status, exc.codes, exc.message + hint,
                                                  retryable=False, transport=exc.transport)
                raise self._unreachable from None

    def _ping_once(self) -> None:
        candidates = base_urls(self.host, self.settings)
        for index, base in enumerate(candidates):
            operation = f"ping {self.host} at {redact_url(base)}"
            try:
                with self.transport.slot():
                    response = self.transport.send("GET", f"{base}/v2/", operation)
            except RegistryError as error:
                if index + 1 < len(candidates) and error.transport in ("connect", "tls"):
                    continue  # insecure host: fall back to plain HTTP
                if error.transport == "tls" and base.startswith("https://") and not self.settings.insecure:
                    raise RegistryError(operation, message=error.message + f" (set registries.{self.host}.ca_file "
                                        "for a private CA, or insecure: true for plain HTTP or unverified TLS)",
                                        transport="tls") from None
                raise
            if response.status_code == 401:
                self.auth.set_challenge(response.headers.get("www-authenticate"))
            elif response.status_code != 200:
                raise status_error(operation, response.status_code, response.content,
                                   response.headers.get("retry-after"))
            self._base = base
            return


    # -- requests ------------------------------------------------------------------------

    def _count_throttling(self, response: Response) -> None:
        if self.pacer is not None:
            self.pacer.observe(self.host, response.status_code)

    def _observe(self, response: Response) -> None:
        limit, remaining = response.headers.get("ratelimit-limit"), response.headers.get("ratelimit-remaining")
        if limit or remaining:
            self.rate_limit = f"limit {limit or '?'}, remaining {remaining or '?'}"

    def send(self, method: str, url: str, operation: str, scopes: tuple[str, ...], *,
             headers: dict[str, str] | None = None, content: Any = None,
             follow: bool = False, stream: bool = False) -> Response:
        """One request with authentication: a 401 gets one more try with a fresh token;
        GET/HEAD redirects are followed when `follow`, the Authorization header going only to
        the registry's own origin. With `stream` the caller closes the response."""
        base = self.base_url
        if not url.startswith(("http://", "https://")):
            url = base + url
        replayable = content is None or isinstance(content, bytes | str)
        for attempt in (1, 2):
            if self.pacer is not None:
                self.pacer.take(self.host, method)
            response = self.transport.send(method, url, operation, headers=headers, content=content,
                                           authorization=self.auth.authorization(scopes), authorization_origin=base,
                                           follow=follow, stream=stream)
            if response.status_code == 401 and attempt == 1 and replayable and _same_origin(response, base):
                response.close()
                self.auth.set_challenge(response.headers.get("www-authenticate"))
                self.auth.invalidate(scopes)
                continue
            break
        return response


def _same_origin(response: Response, base: str) -> bool:
    from .transport import origin

    return origin(str(response.url)) == origin(base)


def _segment(value: str, what: str, operation: str) -> str:
    """One URL path segment from a tag or digest, validated (no value can leave its segment)."""
    if is_digest(value) or (TAG_RE.fullmatch(value) and what != "digest"):
        return quote(value, safe=":")
    problem = digest_problem(value) if what == "digest" else f"invalid tag or digest {value[:80]!r}"
    raise RegistryError(operation, codes=("DIGEST_INVALID" if what == "digest" else "TAG_INVALID",),
                        message=f"{problem}; refused")


def _checked_digest(value: str | None, operation: str, status: int) -> str | None:
    """A digest a registry sent in a header: None if absent, refused if not a digest."""
    if value is None or is_digest(value):
        return value
    raise RegistryError(operation, status, ("DIGEST_INVALID",),
                        f"the registry's Docker-Content-Digest is not a digest ({digest_problem(value)})")


class Repository:
    """The API calls for one repository of a registry. `push` asks tokens for pull,push."""

    def __init__(self, client: RegistryClient, name: str, *, push: bool = False):
        if not is_valid_repository(name):
            raise RegistryError(f"use repository {client.host}/{name[:200]}", codes=("NAME_INVALID",),
                                message="not a valid repository name")
        self.client = client
        self.name = name
        self.push = push
        self.scopes = (scope(name, "pull,push" if push else "pull"),)

    def __repr__(self) -> str:
        return f"Repository({self.client.host}/{self.name})"

    def _where(self, reference: str) -> str:
        return f"{self.client.host}/{self.name}{'@' if is_digest(reference) else ':'}{reference[:200]}"

    def _path(self, kind: str, reference: str, operation: str, *, what: str = "reference") -> str:
        """`/v2/<name>/<kind>/<reference>`; the name was validated, the reference is here."""
        return f"/v2/{self.name}/{kind}/{_segment(reference, what, operation)}"

    def _retry(self, fn: Callable[[], Any]) -> Any:
        return retry.call(fn, retries=self.client.retries, sleep=self.client._sleep)

    def _send(self, method: str, path: str, operation: str, **kwargs: Any) -> Response:
        with self.client.slot():
            return self.client.send(method, path, operation, kwargs.pop("scopes", self.scopes), **kwargs)

    # -- manifests -------------------------------------------------------------------------

    def head_manifest(self, reference: str) -> ManifestInfo | None:
        """Digest, media type and size of a manifest; None when it does not exist."""
        operation = f"HEAD manifest {self._where(reference)}"

        def attempt() -> ManifestInfo | None:
            response = self._send("HEAD", self._path("manifests", reference, operation), operation,
                                  headers={"Accept": ACCEPT})
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise _response_error(operation, response)
            digest = _checked_digest(response.headers.get("docker-content-digest"), operation, 200)
            return ManifestInfo(digest, _media_type(response), _length(response))

        return self._retry(attempt)

    def get_manifest(self, reference: str) -> Manifest:
        """The manifest's exact bytes, checked against the requested digest and the
        registry's Docker-Content-Digest; refuses manifests over 4 MiB."""
        operation = f"GET manifest {self._where(reference)}"

        def attempt() -> Manifest:
            with self.client.slot():
                response = self.client.send("GET", self._path("manifests", reference, operation), operation,
                                            self.scopes, headers={"Accept": ACCEPT}, stream=True)
                try:
                    if response.status_code != 200:
                        raise _response_error(operation, response, streamed=True)
                    raw = Transport.read_limited(response, MAX_MANIFEST_BYTES, operation, "manifest",
                                                 ("MANIFEST_INVALID",))
                finally:
                    response.close()
            header = _checked_digest(response.headers.get("docker-content-digest"), operation, 200)
            requested = reference if is_digest(reference) else None
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
            response = self._send("PUT", self._path("manifests", reference, operation), operation,
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
            response = self._send("HEAD", self._path("blobs", digest, operation, what="digest"), operation,
                                  follow=True)
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise _response_error(operation, response)
            return _length(response)

        return self._retry(attempt)

    @contextmanager
    def open_blob(self, digest: str, size: int = -1) -> Iterator[BlobStream]:
        """Stream a blob (not retried here: the caller retries the whole transfer).
        Redirects (ACR sends blob GETs to storage) are followed without the Authorization header."""
        operation = f"GET blob {self._where(digest)}"
        with self.client.slot():
            response = self.client.send("GET", self._path("blobs", digest, operation, what="digest"), operation,
                                        self.scopes, headers={"Accept-Encoding": "identity"}, follow=True,
                                        stream=True)
            try:
                if response.status_code != 200:
                    raise _response_error(operation, response, streamed=True)
                length = _length(response)
                if size >= 0 and length >= 0 and length != size:
                    raise RegistryError(operation, 200, ("SIZE_INVALID",),
                                        f"the registry sends {length} bytes, the manifest says {size}")
                yield BlobStream(response, digest, size if size >= 0 else length, operation,
                                 grace=max(self.client.transport.timeout, 10.0))
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
            if not is_valid_repository(from_repo):
                raise RegistryError(operation, codes=("NAME_INVALID",), message="not a valid repository name")
            path += f"?mount={_segment(mount, 'digest', operation)}&from={quote(from_repo, safe='/')}"
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
        _segment(digest, "digest", operation)
        location = location or self.start_upload()
        assert location is not None
        if chunk_size is None and size < 0:  # no Content-Length to give a single PUT: PATCH in pieces
            chunk_size = UNKNOWN_SIZE_CHUNK
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
        pages = 0
        while path:
            pages += 1
            if pages > MAX_TAG_PAGES:
                raise RegistryError(operation, message=f"more than {MAX_TAG_PAGES} pages of tags; given up "
                                                       f"(the registry keeps sending a next page)")
            def attempt(path: str = path) -> Response:
                response = self._send("GET", path, operation)
                if response.status_code != 200:
                    raise _response_error(operation, response)
                return response

            response = self._retry(attempt)
            try:
                page = response.json().get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(operation, 200, message="the registry answered with invalid JSON") from None
            if not isinstance(page, list):
                raise RegistryError(operation, 200, message="the registry's tag list is not a list")
            tags.extend(t for t in page if isinstance(t, str) and TAG_RE.fullmatch(t))
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
            response = self._send("GET", self._path("referrers", digest, operation, what="digest"), operation,
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


def _media_type(response: Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def _with_digest(location: str, digest: str) -> str:
    """Append digest= to the upload URL's own query (it carries the upload's state)."""
    return location + ("&" if urlsplit(location).query else "?") + "digest=" + quote(digest)


def _next_link(response: Response) -> str | None:
    link = response.headers.get("link", "")
    for part in link.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1:end]
    return None


def _read_some(response: Response, operation: str) -> bytes:
    body = bytearray()
    try:
        for piece in Transport.body(response, operation):
            body += piece
            if len(body) >= MAX_ERROR_BODY:
                break
    except RegistryError:
        pass  # the status says enough
    return bytes(body[:MAX_ERROR_BODY])


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in chunks:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _length(response: Response) -> int:
    try:
        return int(response.headers.get("content-length", -1))
    except ValueError:
        return -1


def _response_error(operation: str, response: Response, *, streamed: bool = False) -> RegistryError:
    """The error for an unexpected answer; a streamed answer's body is read at most MAX_ERROR_BODY."""
    body = _read_some(response, operation) if streamed else Transport.content(response)
    return status_error(operation, response.status_code, body, response.headers.get("retry-after"))
