"""HTTP to registries, in one place (the only module that uses httpx).

A `Transport` is one registry host's connection pool with its TLS settings, timeouts,
User-Agent, request limit, redirect rule and request counters. The registry client, the
token flows (Basic, Bearer, ACR's Entra ID exchange) and anything else that talks to a
registry host go through it, so limits, counters and error handling apply to all of them.

Where requests go (`base_urls`): `registries.<host>.endpoint` when set (a mirror, proxy or
private endpoint; image names keep the host), Docker Hub's API host for docker.io, else the
host itself; https first, plain http second only for a host marked `insecure`. Plain HTTP is
never used unless the host says `insecure: true`, an `http://` endpoint included.

TLS (`tls_verify`), one precedence: `ca_file` set: verified against that CA (and the
system's); else `insecure: true`: not verified; else verified against the system's CAs. Every
host a request goes to (a token realm, a redirect target) is checked with ITS OWN settings
(`settings_for(host)`), never with the registry's.

Credentials (`authorization=`) are attached only to requests whose origin (scheme, host,
port) is the one they belong to: a redirect to any other origin, including a scheme or port
change on the same host, is followed without them. `may_carry_credentials(url)` says whether
a URL may receive credentials at all: verified TLS, or a host its settings mark insecure.

Bodies are read bounded: `send` refuses an answer over MAX_BODY unless the caller streams it
(and then reads it with `read_limited` or its own checks).

No cookies are kept: a registry's (or a redirect target's) Set-Cookie is dropped, never sent back.
"""

from __future__ import annotations

import http.cookiejar
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from manifests_rewriter.reference import DOCKER_HUB_API_HOST, is_docker_hub

from .. import __version__
from ..settings import RegistrySettings
from .errors import RegistryError

Response = httpx.Response  # what `send` returns; callers use its status, headers and body only
USER_AGENT = f"acr-mirror/{__version__}"
MAX_REDIRECTS = 5
MAX_BODY = 4 * 1024 * 1024  # any answer read whole: error bodies, tag pages, token answers, uploads' replies
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def base_urls(host: str, settings: RegistrySettings) -> list[str]:
    """The base URLs to try for `host`, in order (see the module docstring). An `http://`
    endpoint without `insecure: true` is refused: it would carry credentials in clear."""
    endpoint = (settings.endpoint or "").rstrip("/")
    if endpoint.startswith("http://") and not settings.insecure:
        raise RegistryError(f"reach {host} at {redact_url(endpoint)}",
                            message=f"plain HTTP is used only for a host marked insecure; set "
                                    f"registries.{host}.insecure: true to allow it, or use an https:// endpoint")
    if endpoint.startswith(("http://", "https://")):
        return [endpoint]
    target = endpoint or (DOCKER_HUB_API_HOST if is_docker_hub(host) else host)
    return [f"https://{target}"] + ([f"http://{target}"] if settings.insecure else [])


def tls_verify(host: str, settings: RegistrySettings) -> ssl.SSLContext | bool:
    """How to check `host`'s certificate (see the module docstring)."""
    if settings.ca_file:
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"load CA file {settings.ca_file} for {host}", message=str(exc)) from None
        return context
    if settings.insecure:
        return False
    return ssl.create_default_context()


def redact_url(url: str) -> str:
    """A URL fit to show: user information (`user:password@`) replaced by `***@`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def host_of(url: str) -> str:
    """`host[:port]` of a URL as registry settings are keyed (the port only when given)."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2].lower()


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: what "the same place" means for credentials."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing. Registries keep no state in cookies (the OCI API is stateless,
    and Go's clients, skopeo's and containerd's, keep none); storing a registry's cookies would
    only send them back, and parsing every answer's headers for them costs CPU per request."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


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


class Transport:
    """One registry host's HTTP. Thread-safe; share one per host. `settings_for(host)` gives the
    settings of any other host a request may go to (token realms, redirect targets)."""

    def __init__(self, host: str, settings: RegistrySettings | None = None, *, timeout: float = 60.0,
                 max_in_flight: int = 8, settings_for: Callable[[str], RegistrySettings] | None = None):
        self.host = host
        self.settings = settings or RegistrySettings()
        self.settings_for = settings_for or (lambda _host: RegistrySettings())
        self.limiter = HostLimiter(max_in_flight)
        self.requests: Counter[str] = Counter()  # method -> requests sent (token requests included)
        self.observers: list[Callable[[Response], None]] = []  # see every response (rate-limit headers)
        self.timeout = timeout
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 15.0))
        self._pool_size = max(20, 2 * self.limiter.limit)
        self._http = self._new_http(tls_verify(host, self.settings))
        self._others: dict[str, httpx.Client] = {}  # other hosts (redirect targets, token realms), their own TLS
        self._lock = threading.Lock()
        try:  # the origins of this host's own base URLs, computed once (settings do not change)
            self._own_origins = frozenset(origin(base) for base in base_urls(host, self.settings))
        except RegistryError:  # an endpoint refused by base_urls: the client's ping reports it
            self._own_origins = frozenset()

    def _new_http(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        return httpx.Client(
            verify=verify, timeout=self._timeout, follow_redirects=False, cookies=_NoCookies(),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self._pool_size),
            # identity: bodies are read raw and bounded; a compressed answer could expand without bound
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def _settings_of(self, url: str) -> RegistrySettings:
        return self.settings if origin(url) in self._own_origins else self.settings_for(host_of(url))

    def _client_for(self, url: str, where: tuple[str, str, int]) -> httpx.Client:
        """This host's client for its own base URLs (`where`: the URL's origin); for any other host
        a client with THAT host's TLS settings (a registry marked insecure does not make its realm
        unverified)."""
        if where in self._own_origins:
            return self._http
        host = host_of(url)
        with self._lock:
            client = self._others.get(host)
            if client is None:
                client = self._others[host] = self._new_http(tls_verify(host, self.settings_for(host)))
            return client

    def may_carry_credentials(self, url: str) -> bool:
        """Whether credentials may be sent to `url` at all: https verified with its host's own
        settings, or a host those settings mark insecure (then http too)."""
        settings = self._settings_of(url)
        if settings.insecure:
            return True
        return urlsplit(url).scheme == "https"

    def close(self) -> None:
        self._http.close()
        for client in self._others.values():
            client.close()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.limiter.slot():
            yield

    def send(self, method: str, url: str, operation: str, *, headers: dict[str, str] | None = None,
             content: Any = None, data: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
             authorization: str | None = None, authorization_origin: str | None = None,
             follow: bool = False, stream: bool = False) -> Response:
        """One request (and, with `follow`, its redirects). `authorization` is sent only to the
        origin of `authorization_origin` (default: `url` itself). With `stream` the caller reads
        and closes the response; otherwise the body is read here. Transport failures raise
        RegistryError ("doing what: cause", retryable for timeouts and resets)."""
        own = origin(authorization_origin or url)
        hops = 0
        while True:
            request_headers = dict(headers or {})
            where = origin(url)
            if authorization and where == own:
                request_headers["Authorization"] = authorization
            client = self._client_for(url, where)
            request = client.build_request(method, url, headers=request_headers, content=content, data=data,
                                           params=params)
            try:
                response = client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise transport_error(operation, exc) from None
            with self._lock:
                self.requests[method] += 1
            for observe in self.observers:
                observe(response)
            if follow and response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                response.close()
                hops += 1
                url = urljoin(url, response.headers["location"])
                if hops > MAX_REDIRECTS:
                    raise RegistryError(operation, response.status_code,
                                        message=f"too many redirects ({hops}), the last to {urlsplit(url).netloc}")
                params = None  # the Location carries its own query
                continue
            break
        if method == "HEAD" and not stream:  # no body by HTTP (h11 reads none): nothing to bound or rebuild
            try:
                response.read()  # reaches the end of the message, so the connection goes back to the pool
            except httpx.HTTPError as exc:
                raise transport_error(operation, exc) from None
            finally:
                response.close()
            return response
        if not stream:
            try:
                # bounded: whatever a registry answers (an error page, a tag list) is read at most MAX_BODY
                body = self.read_limited(response, MAX_BODY, operation, "the answer")
            finally:
                response.close()
            kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
            return httpx.Response(response.status_code, headers=kept, content=body, request=response.request)
        return response

    @staticmethod
    def body(response: Response, operation: str) -> Iterator[bytes]:
        """A streamed response's body as it arrives (raw: no decoding), errors as RegistryError."""
        try:
            yield from response.iter_raw()
        except httpx.HTTPError as exc:
            raise transport_error(operation, exc) from None

    @staticmethod
    def content(response: Response) -> bytes:
        """The body already read, or b"" for a streamed one nobody read."""
        try:
            return response.content
        except httpx.ResponseNotRead:
            return b""

    @classmethod
    def read_limited(cls, response: Response, limit: int, operation: str, what: str,
                     codes: tuple[str, ...] = ()) -> bytes:
        """A streamed body, refused (RegistryError) as soon as it exceeds `limit` bytes."""
        declared = int(response.headers.get("content-length", -1) or -1)
        bound = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit:,} bytes"
        if declared > limit:
            raise RegistryError(operation, response.status_code, codes,
                                f"{what} of {declared:,} bytes is over the {bound} limit")
        body = bytearray()
        for piece in cls.body(response, operation):
            body += piece
            if len(body) > limit:
                raise RegistryError(operation, response.status_code, codes, f"{what} is over the {bound} limit")
        return bytes(body)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the chain of causes that ended in `exc`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_name_error(exc: BaseException) -> bool:
    text = str(exc)
    return _caused_by(exc, socket.gaierror) or "Name or service not known" in text or "name resolution" in text \
        or "nodename nor servname" in text


def _is_tls_error(exc: BaseException) -> bool:
    return _caused_by(exc, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc).lower()


def transport_error(operation: str, exc: BaseException) -> RegistryError:
    """Timeouts, resets and refused connections may pass; an untrusted certificate will not."""
    if isinstance(exc, httpx.TimeoutException):
        return RegistryError(operation, message=f"timed out ({type(exc).__name__})", retryable=True, transport="timeout")
    if _is_tls_error(exc) and isinstance(exc, httpx.ConnectError):
        return RegistryError(operation, message=f"TLS failed: {exc}", retryable=False, transport="tls")
    text = redact_url(str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ConnectError) and _is_name_error(exc):
        return RegistryError(operation, message=f"cannot resolve the host name: {text}", retryable=False,
                             transport="dns")
    kind = "connect" if isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError) else "other"
    return RegistryError(operation, message=f"connection failed: {text}", retryable=True, transport=kind)
