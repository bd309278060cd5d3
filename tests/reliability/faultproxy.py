"""A fault-injecting HTTP proxy for tests, standard library only.

It sits on a free loopback port in front of one real registry (or any HTTP server) and,
for every request, asks a *policy* what to do: pass it through, answer an error status,
break the connection at some point, slow down, corrupt or replace the response.  It counts
what it injected, by kind, and measures how many requests were in flight at once.

Behaviour that makes it a faithful middlebox (see LAB.md, "Faults"):

- the whole request body is read before any answer, so a client sees the status and not a
  broken pipe;
- the client's ``Host`` header is forwarded unchanged, so the upload ``Location`` URLs the
  registry builds point back at the proxy (``X-Forwarded-Proto: http`` is added when the
  upstream speaks TLS, so they keep the proxy's scheme);
- a TLS ClientHello gets a plain ``HTTP/1.1 400`` at once, so a client that tries TLS first
  falls back immediately instead of hanging;
- one upstream connection per client connection, kept alive, so thousands of requests do not
  exhaust loopback ports.

Fault kinds (``Fault.kind``)::

    pass            forward as is
    status          answer ``status`` (500, 502, 503, 429 ...) without forwarding;
                    ``retry_after`` adds a Retry-After header
    reset           reset the connection (TCP RST) before any response, without forwarding
    reset-headers   forward, send the status line and headers, then reset
    reset-body      forward, send the headers and half the body, then reset
    truncate        forward, send the headers and half the body, then close cleanly (FIN)
    slow            wait ``delay`` seconds, then forward
    throttle        forward, streaming the body at ``rate`` bytes/s
    corrupt         forward, flip bytes in the middle of the body (same length): a blob or
                    manifest whose bytes no longer match its digest
    lie-digest      forward, replace Docker-Content-Digest with a wrong digest
    redirect        answer ``status`` (default 307) with ``Location: location`` (no forwarding)
    respond         answer ``status`` with ``headers`` and ``body`` (no forwarding)
    mutate          forward, then ``mutate(status, headers, body)`` -> (status, headers, body)

Policies are callables ``policy(request: ProxyRequest) -> Fault | str | None`` (a string is a
kind with default parameters, None is ``pass``).  ``RandomFaults`` injects a seeded random
fault on a fraction of requests, choosing only kinds that make sense for that request.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import random
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-connection",
})
ERROR_STATUSES = (500, 502, 503, 429)
STATUS_KINDS = ("500", "502", "503", "429", "429-retry-after")
BREAK_KINDS = ("reset", "reset-headers")
BODY_KINDS = ("reset-body", "truncate", "corrupt")
# Every kind a random fault may take, for "a fault rate on every request".
ALL_RANDOM_KINDS = (*STATUS_KINDS, *BREAK_KINDS, *BODY_KINDS, "slow")
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Fault:
    kind: str = "pass"
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    rate: float = 0.0  # throttle: bytes per second
    location: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    mutate: Callable[[int, list[tuple[str, str]], bytes], tuple[int, list[tuple[str, str]], bytes]] | None = None

    @property
    def label(self) -> str:
        """The name a fault is counted under: "500", "429-retry-after", "reset-body" ..."""
        if self.kind == "status":
            return f"{self.status}-retry-after" if self.retry_after is not None else str(self.status)
        return self.kind

    @classmethod
    def of(cls, value: Fault | str | None, *, slow_delay: float = 0.3) -> Fault:
        if value is None:
            return cls()
        if isinstance(value, Fault):
            return value
        if value.isdigit():
            return cls("status", status=int(value))
        if value.endswith("-retry-after") and value.split("-", 1)[0].isdigit():
            return cls("status", status=int(value.split("-", 1)[0]), retry_after="1")
        if value == "slow":
            return cls("slow", delay=slow_delay)
        if value == "redirect":
            raise ValueError("a redirect needs a location: Fault('redirect', location=...)")
        known = {"pass", "reset", "reset-headers", "reset-body", "truncate", "corrupt", "lie-digest"}
        if value not in known:
            raise ValueError(f"unknown fault kind {value!r}")
        return cls(value)


@dataclass(frozen=True)
class ProxyRequest:
    seq: int  # 1-based order of arrival at this proxy
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body_length: int

    @property
    def is_blob(self) -> bool:
        return "/blobs/" in self.path and "/blobs/uploads" not in self.path

    @property
    def is_manifest(self) -> bool:
        return "/manifests/" in self.path

    @property
    def is_upload(self) -> bool:
        return "/blobs/uploads" in self.path


@dataclass
class Seen:
    seq: int
    method: str
    path: str
    host: str
    authorization: str | None
    fault: str
    status: int | None = None


Policy = Callable[[ProxyRequest], "Fault | str | None"]


class RandomFaults:
    """A seeded fault on a fraction ``rate`` of requests (those ``match`` accepts).

    Kinds are drawn from ``kinds`` among those that make sense for the request: body faults
    (reset-body, truncate, corrupt) only on GETs, which carry a response body.
    """

    def __init__(self, rate: float, seed: int = 0, kinds: Iterable[str] = ALL_RANDOM_KINDS,
                 match: Callable[[ProxyRequest], bool] | None = None, slow_delay: float = 0.3):
        self.rate = rate
        self.kinds = tuple(kinds)
        self.match = match
        self.slow_delay = slow_delay
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, request: ProxyRequest) -> Fault | None:
        if self.match is not None and not self.match(request):
            return None
        candidates = [k for k in self.kinds if k not in BODY_KINDS or request.method == "GET"]
        with self._lock:
            if not candidates or self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(candidates)
        return Fault.of(kind, slow_delay=self.slow_delay)


def first_n(n: int, fault: Fault | str, match: Callable[[ProxyRequest], bool] | None = None) -> Policy:
    """Inject ``fault`` on the first ``n`` requests ``match`` accepts, then pass."""
    left = [n]
    lock = threading.Lock()

    def policy(request: ProxyRequest) -> Fault | str | None:
        if match is not None and not match(request):
            return None
        with lock:
            if left[0] <= 0:
                return None
            left[0] -= 1
        return fault

    return policy


def always(fault: Fault | str, match: Callable[[ProxyRequest], bool] | None = None) -> Policy:
    """Inject ``fault`` on every request ``match`` accepts (a permanently failing image)."""
    return lambda request: fault if match is None or match(request) else None


def chain(*policies: Policy) -> Policy:
    """The first policy that injects something wins."""

    def policy(request: ProxyRequest) -> Fault | str | None:
        for p in policies:
            decision = p(request)
            if decision is not None and Fault.of(decision).kind != "pass":
                return decision
        return None

    return policy


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client hung up: not news
        pass


class FaultProxy:
    """``FaultProxy(upstream_url, policy)``: start with ``start()`` or as a context manager.

    ``url``/``host`` are the proxy's; ``injected`` counts faults by label; ``requests`` is the
    number of requests seen; ``max_in_flight`` the most requests handled at the same time;
    ``seen`` one ``Seen`` per request (method, path, Host, Authorization, fault, status).
    """

    def __init__(self, upstream: str, policy: Policy | None = None, *, ca_file: str | None = None,
                 inject_headers: dict[str, str] | None = None, keep_seen: bool = True,
                 slow_delay: float = 0.3):
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, not {upstream!r}")
        self.upstream = upstream
        self._up_scheme = parts.scheme
        self._up_host = parts.hostname
        self._up_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self.policy: Policy = policy or (lambda request: None)
        self.inject_headers = dict(inject_headers or {})
        self.keep_seen = keep_seen
        self.slow_delay = slow_delay
        self.injected: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.tls_hellos = 0
        self.seen: list[Seen] = []
        self.errors: list[str] = []  # upstream failures the proxy itself met
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ bookkeeping

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being handled (a client may read a response before the proxy is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.in_flight == 0:
                    return True
            time.sleep(0.01)
        return False

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def reset_counts(self) -> None:
        with self._lock:
            self.injected.clear()
            self.requests = 0
            self.max_in_flight = self.in_flight
            self.seen.clear()

    def _begin(self, method: str, path: str, headers: dict[str, str], body_length: int) -> ProxyRequest:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            seq = self.requests
        return ProxyRequest(seq, method, path, headers, body_length)

    def _count(self, fault: str) -> None:
        if fault != "pass":
            with self._lock:
                self.injected[fault] += 1

    def _end(self, request: ProxyRequest, fault: str, status: int | None) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.keep_seen:
                self.seen.append(Seen(request.seq, request.method, request.path, request.headers.get("host", ""),
                                      request.headers.get("authorization"), fault, status))

    def upstream_connection(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._up_host, self._up_port, timeout=60, context=self._ssl)
        return http.client.HTTPConnection(self._up_host, self._up_port, timeout=60)


class _Abort(Exception):
    """The connection was deliberately broken; stop handling it."""


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---------------------------------------------------------------- connection level

    def handle(self) -> None:
        self._upstream: http.client.HTTPConnection | None = None
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":  # a TLS handshake record: answer in plain HTTP, as Go's servers do
            with self.owner._lock:
                self.owner.tls_hellos += 1
            body = b"Client sent an HTTP request to an HTTPS server.\n"
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            self.close_connection = True
            return
        try:
            super().handle()
        except _Abort:
            pass
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def _reset(self) -> None:
        """Break the connection with a TCP RST (SO_LINGER 0), as a crashing middlebox does."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._hard_close()

    def _fin(self) -> None:
        """Close the connection cleanly (FIN) mid-response: a truncated body."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self._hard_close()

    def _hard_close(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.rfile.close()  # drops the makefile reference so close() really closes
        with contextlib.suppress(OSError):
            self.connection.close()
        raise _Abort

    # ---------------------------------------------------------------- request level

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise _Abort
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise _Abort
        return data

    def _proxy(self) -> None:
        owner = self.owner
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = owner._begin(self.command, self.path, headers, len(body))
        self._label, self._status = "pass", None
        try:
            fault = Fault.of(owner.policy(request), slow_delay=owner.slow_delay)
            self._apply(fault, request, body)
        finally:
            owner._end(request, self._label, self._status)

    def _mark(self, label: str, status: int | None) -> None:
        """Count the fault before the first byte of the answer goes out (the client may be quicker than us)."""
        self._label, self._status = label, status
        self.owner._count(label)

    def _apply(self, fault: Fault, request: ProxyRequest, body: bytes) -> None:
        kind = fault.kind
        if kind == "status":
            assert fault.status is not None
            extra = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
            code = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}.get(fault.status, "UNKNOWN")
            payload = (b'{"errors":[{"code":"%s","message":"injected by the fault proxy"}]}' % code.encode())
            self._mark(fault.label, fault.status)
            self._send(fault.status, [("Content-Type", "application/json"), *extra], payload)
            return
        if kind == "reset":
            self._mark("reset", None)
            self._reset()
        if kind == "redirect":
            self._mark("redirect", fault.status or 307)
            self._send(fault.status or 307, [("Location", fault.location or "/")], b"")
            return
        if kind == "respond":
            self._mark("respond", fault.status or 200)
            self._send(fault.status or 200, list(fault.headers), fault.body or b"")
            return
        if kind == "slow":
            time.sleep(fault.delay)

        response = self._forward(request, body)
        status = response.status
        out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        length_header = response.getheader("Content-Length")
        has_body = self.command != "HEAD" and status not in (204, 304) and not 100 <= status < 200

        if kind in ("pass", "slow", "throttle") and has_body and length_header is not None:
            self._mark(kind, status)
            self._stream(status, out_headers, response, int(length_header), fault.rate if kind == "throttle" else 0.0)
            return
        data = response.read()  # always drain it: the upstream connection is reused
        if not has_body:
            data = b""
        if kind == "mutate" and fault.mutate is not None:
            status, out_headers, data = fault.mutate(status, out_headers, data)
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
            if has_body or data:
                out_headers.append(("Content-Length", str(len(data))))
        elif kind == "lie-digest":
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "docker-content-digest"]
            out_headers.append(("Docker-Content-Digest", "sha256:" + "0" * 64))
        elif kind in ("corrupt", "reset-body", "truncate") and not data:
            # Nothing to break in the body: break the response after its headers instead.
            kind = "reset-headers" if kind != "corrupt" else "pass"
        if length_header is None and has_body and kind != "mutate":
            out_headers.append(("Content-Length", str(len(data))))
        self._mark(kind, status)

        if kind == "corrupt":
            middle = len(data) // 2
            span = max(1, min(16, len(data) - middle))
            data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + span]) + data[middle + span:]
        if kind == "reset-headers":
            self._head(status, out_headers)
            self.wfile.flush()
            self._reset()
        if kind in ("reset-body", "truncate"):
            self._head(status, out_headers)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if kind == "reset-body":
                self._reset()
            self._fin()
        self._head(status, out_headers)
        if has_body:
            self.wfile.write(data)

    # ---------------------------------------------------------------- I/O helpers

    def _forward(self, request: ProxyRequest, body: bytes) -> http.client.HTTPResponse:
        owner = self.owner
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.pop("Content-Length", None)
        headers.update(owner.inject_headers)
        if body or self.command in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = str(len(body))
        if owner._up_scheme == "https":
            headers["X-Forwarded-Proto"] = "http"
        while True:
            reused = self._upstream is not None
            if self._upstream is None:
                self._upstream = owner.upstream_connection()
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                return self._upstream.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                self._upstream.close()
                self._upstream = None
                # An idle keep-alive connection the upstream closed: try once more on a fresh one,
                # but only for requests that are safe to send twice.
                if not reused or self.command not in ("GET", "HEAD", "OPTIONS"):
                    with owner._lock:
                        owner.errors.append(f"{self.command} {self.path}: {exc!r}")
                    self._send(502, [("Content-Type", "text/plain")], b"fault proxy: upstream unreachable\n")
                    raise _Abort from None

    def _head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        self._head(status, [*headers, ("Content-Length", str(len(body)))])
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _stream(self, status: int, headers: list[tuple[str, str]], response: http.client.HTTPResponse,
                length: int, rate: float = 0.0) -> None:
        self._head(status, headers)
        left = length
        piece = min(_CHUNK, max(1024, int(rate / 4))) if rate else _CHUNK  # a throttled body: 4 pieces a second
        while left > 0:
            chunk = response.read(min(piece, left))
            if not chunk:
                self._fin()  # the upstream broke off: pass the truncation on
            self.wfile.write(chunk)
            left -= len(chunk)
            if rate:
                self.wfile.flush()
                time.sleep(len(chunk) / rate)
        response.read()  # marks the response complete, so the upstream connection can be reused


def wrong_digest() -> str:
    return "sha256:" + "0" * 64


def repository_of(path: str) -> str | None:
    """``/v2/team/api/manifests/1.0`` -> ``team/api`` (None for other paths)."""
    match = re.match(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)/", path.split("?", 1)[0])
    return match.group(1) if match else None


__all__ = [
    "ALL_RANDOM_KINDS", "Fault", "FaultProxy", "ProxyRequest", "RandomFaults", "Seen", "always", "chain",
    "first_n", "repository_of", "wrong_digest",
]
