"""Hostile servers on loopback, standard library only: a registry that answers what a test tells it to.

`HostileServer` is a small HTTP/1.1 server that records every request it receives (method, path,
headers, body, whether it came over TLS) and answers through a callable, so a test can assert on
exactly what acr-mirror sent to a server it should not trust: an Authorization header, a password,
a refresh token, a plain-HTTP request.  With a certificate it speaks TLS, and it also answers plain
HTTP on the same port (a first byte other than a TLS handshake), so a client that downgrades
https to http on the same host and port is seen doing so.

`FakeRegistry` is a `HostileServer` that behaves like an OCI distribution registry from an
in-memory store (manifests, blobs, tags, uploads), so it can be a source that serves crafted
manifests or a target that accepts pushes; `on(...)` handlers run first and may answer anything
(a traversal digest, a 300 MiB body, a redirect, a slow drip).

Nothing here imports acr-mirror: these servers stand for the world outside it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- requests and replies


@dataclass
class Seen:
    """One request as the server received it."""

    seq: int
    method: str
    target: str  # the request target as sent (path and query)
    headers: dict[str, str]  # lower-case names
    body: bytes
    tls: bool
    sent: int = 0  # body bytes the server managed to send back
    aborted: bool = False  # the client went away before the whole answer was sent

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def form(self) -> dict[str, list[str]]:
        try:
            return parse_qs(self.body.decode())
        except UnicodeDecodeError:
            return {}

    def carries(self, secret: str) -> bool:
        """Whether `secret` is anywhere in this request: target, headers (Basic decoded too), body."""
        texts = [self.target, self.body.decode("latin-1")]
        for value in self.headers.values():
            texts.append(value)
            if value.lower().startswith("basic "):
                with contextlib.suppress(ValueError):
                    texts.append(base64.b64decode(value[6:]).decode("latin-1"))
        return any(secret in t for t in texts)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Iterable[bytes] = b""
    length: int | None = None  # Content-Length for a streamed body; None with a stream: chunked
    close: bool = False  # close the connection after this answer

    @classmethod
    def json(cls, value: Any, status: int = 200, **headers: str) -> Reply:
        return cls(status, {"Content-Type": "application/json", **headers}, json.dumps(value).encode())

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> Reply:
        return cls.json({"errors": [{"code": code, "message": message}]}, status, **headers)


Handler = Callable[[Seen], Reply | None]


def stream(total: int, piece: int = 1 << 20, fill: bytes = b" ") -> Iterator[bytes]:
    """`total` bytes of `fill`, generated piece by piece (nothing held in memory)."""
    block = (fill * (piece // len(fill) + 1))[:piece]
    left = total
    while left > 0:
        chunk = block[:min(piece, left)]
        left -= len(chunk)
        yield chunk


# --------------------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets the connection is what these tests provoke: not worth a traceback (which
        would land in the output of an in-process run, captured alongside acr-mirror's)."""

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.owner.ssl_context
        if context is not None:
            try:
                first = request.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first == b"\x16":  # a TLS ClientHello
                try:
                    request = context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    with self.owner.lock:
                        self.owner.handshake_failures += 1
                    return
        try:
            self.RequestHandlerClass(request, client_address, self)
        finally:
            if isinstance(request, ssl.SSLSocket):
                with contextlib.suppress(OSError):
                    request.close()


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart (delayed ACKs)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        owner = self.server.owner
        body = self._body()
        seen = owner.record(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                            isinstance(self.connection, ssl.SSLSocket))
        try:
            reply = owner.answer(seen)
        except Exception as exc:  # noqa: BLE001 - a bug in a test handler must show, not hang the client
            reply = Reply.error(500, "TEST_HANDLER_FAILED", f"{type(exc).__name__}: {exc}")
        self._send(seen, reply)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _send(self, seen: Seen, reply: Reply) -> None:
        body = reply.body
        streamed = not isinstance(body, bytes | bytearray)
        length = len(body) if not streamed else reply.length  # type: ignore[arg-type]
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if length is not None:
                if "content-length" not in {k.lower() for k in reply.headers}:
                    self.send_header("Content-Length", str(length))
            elif self.command != "HEAD":
                self.send_header("Transfer-Encoding", "chunked")
            if reply.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            pieces = [body] if not streamed else body
            for piece in pieces:  # type: ignore[union-attr]
                if not piece:
                    continue
                if length is None:
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
                self.wfile.flush()
                seen.sent += len(piece)
            if length is None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (OSError, ValueError):
            seen.aborted = True
            self.close_connection = True
        finally:
            if streamed and hasattr(body, "close"):
                body.close()  # type: ignore[union-attr]


class HostileServer:
    """Records every request and answers with the first handler (added with `on`) that returns a Reply.

    ``tls``: (certificate file, key file) to speak TLS; plain HTTP is answered on the same port too.
    ``bind``: the loopback address to listen on (127.0.0.1, 127.0.0.2 ... are all this machine).
    """

    def __init__(self, handler: Handler | None = None, *, tls: tuple[Path, Path] | None = None,
                 bind: str = "127.0.0.1") -> None:
        self.handlers: list[Handler] = [handler] if handler else []
        self.bind = bind
        self.seen: list[Seen] = []
        self.lock = threading.RLock()
        self.handshake_failures = 0
        self.ssl_context: ssl.SSLContext | None = None
        if tls is not None:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(str(tls[0]), str(tls[1]))
        self._server: _Server | None = None

    # -- lifecycle

    def start(self) -> HostileServer:
        server = _Server((self.bind, 0), _RequestHandler)
        server.owner = self
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"hostile-{server.server_address[1]}").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HostileServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """As in image names: 127.0.0.1:PORT."""
        return f"{self.bind}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    # -- behaviour

    def on(self, handler: Handler) -> Handler:
        """Answer with `handler` first (usable as a decorator); it returns None to pass."""
        self.handlers.insert(0, handler)
        return handler

    def record(self, method: str, target: str, headers: dict[str, str], body: bytes, tls: bool) -> Seen:
        with self.lock:
            seen = Seen(len(self.seen) + 1, method, target, headers, body, tls)
            self.seen.append(seen)
            return seen

    def answer(self, seen: Seen) -> Reply:
        for handler in list(self.handlers):
            reply = handler(seen)
            if reply is not None:
                return reply
        return self.default(seen)

    def default(self, seen: Seen) -> Reply:
        return Reply.error(404, "NOT_FOUND", f"nothing here: {seen.method} {seen.path}")

    # -- what was received

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if (method is None or s.method == method) and path in s.path]

    def carrying(self, secret: str) -> list[Seen]:
        """Every request that carried `secret` anywhere."""
        with self.lock:
            return [s for s in self.seen if s.carries(secret)]


# --------------------------------------------------------------------------- a registry


@dataclass
class Image:
    """A tiny image: an OCI manifest, its config and layers, as bytes."""

    manifest: bytes
    blobs: dict[str, bytes]
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest), **extra}


def tiny_image(seed: str, layer_bytes: int = 1024) -> Image:
    """A valid single-platform OCI image whose bytes depend only on `seed`."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Labels": {"seed": seed}}}, sort_keys=True).encode()
    layer = hashlib.sha256(seed.encode()).digest() * (layer_bytes // 32 + 1)
    layer = layer[:layer_bytes]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
    }, indent=2).encode()
    return Image(manifest, {sha256(config): config, sha256(layer): layer})


def index_of(children: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}, indent=2).encode()


_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")
_UPLOADS = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<id>[^/]*)$")
_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$")


class FakeRegistry(HostileServer):
    """An OCI distribution registry from memory: serves what it was given, stores what is pushed.

    ``challenge``: a WWW-Authenticate value; requests without an Authorization header get 401 with it
    (any Authorization is accepted: these tests watch what is sent, they do not check it).
    """

    def __init__(self, *, challenge: str | None = None, tls: tuple[Path, Path] | None = None,
                 bind: str = "127.0.0.1") -> None:
        super().__init__(tls=tls, bind=bind)
        self.challenge = challenge
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}  # (repository, tag or digest)
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}

    # -- content

    def add_manifest(self, repository: str, raw: bytes, media_type: str, *tags: str) -> str:
        digest = sha256(raw)
        with self.lock:
            for reference in (digest, *tags):
                self.manifests[(repository, reference)] = (raw, media_type)
        return digest

    def add_image(self, repository: str, image: Image, *tags: str) -> str:
        with self.lock:
            self.blobs.update(image.blobs)
        return self.add_manifest(repository, image.manifest, image.media_type, *tags)

    def tags_of(self, repository: str) -> list[str]:
        with self.lock:
            return sorted(ref for repo, ref in self.manifests if repo == repository and not ref.startswith("sha256:"))

    # -- the API

    def default(self, seen: Seen) -> Reply:
        if self.challenge and not seen.authorization:
            return Reply.error(401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": self.challenge})
        path = seen.path
        if path in ("/v2/", "/v2"):
            return Reply.json({})
        for pattern, method in ((_UPLOADS, self._upload), (_TAGS, self._tags), (_REFERRERS, self._referrers),
                                (_MANIFEST, self._manifest), (_BLOB, self._blob)):
            match = pattern.match(path)
            if match:
                return method(seen, **match.groupdict())
        return super().default(seen)

    def _manifest(self, seen: Seen, name: str, ref: str) -> Reply:
        if seen.method == "PUT":
            media_type = seen.headers.get("content-type", OCI_MANIFEST)
            digest = self.add_manifest(name, seen.body, media_type, *([] if ref.startswith("sha256:") else [ref]))
            return Reply(201, {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/manifests/{digest}"})
        with self.lock:
            found = self.manifests.get((name, ref))
        if found is None:
            return Reply.error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {name}:{ref}")
        raw, media_type = found
        return Reply(200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw)}, raw)

    def _blob(self, seen: Seen, name: str, digest: str) -> Reply:
        with self.lock:
            data = self.blobs.get(digest)
        if data is None:
            return Reply.error(404, "BLOB_UNKNOWN", f"blob unknown: {digest}")
        return Reply(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}, data)

    def _upload(self, seen: Seen, name: str, id: str) -> Reply:  # noqa: A002
        if seen.method == "POST":
            upload = uuid.uuid4().hex
            with self.lock:
                self.uploads[upload] = bytearray(seen.body)
            return Reply(202, {"Location": f"/v2/{name}/blobs/uploads/{upload}", "Range": "0-0"})
        with self.lock:
            data = self.uploads.get(id)
        if data is None:
            return Reply.error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        data += seen.body
        if seen.method == "PATCH":
            return Reply(202, {"Location": f"/v2/{name}/blobs/uploads/{id}", "Range": f"0-{max(0, len(data) - 1)}"})
        if seen.method == "PUT":
            digest = (seen.query.get("digest") or [""])[0]
            if sha256(bytes(data)) != digest:
                return Reply.error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            with self.lock:
                self.blobs[digest] = bytes(data)
                del self.uploads[id]
            return Reply(201, {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/blobs/{digest}"})
        return Reply(204)

    def _tags(self, seen: Seen, name: str) -> Reply:
        return Reply.json({"name": name, "tags": self.tags_of(name)})

    def _referrers(self, seen: Seen, name: str, digest: str) -> Reply:
        return Reply.error(404, "NOT_FOUND", "no referrers API")


# --------------------------------------------------------------------------- a real registry, filled directly


def push_image(url: str, repository: str, image: Image, tag: str, *, verify: Any = True) -> str:
    """Push `image` to a (real, anonymous) registry at `url` with plain API calls; returns its digest."""
    import httpx

    with httpx.Client(timeout=30, verify=verify) as client:
        for digest, data in image.blobs.items():
            start = client.post(f"{url}/v2/{repository}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["Location"]
            location = location if location.startswith("http") else url + location
            sep = "&" if "?" in location else "?"
            client.put(f"{location}{sep}digest={digest}", content=data,
                       headers={"Content-Type": "application/octet-stream"}).raise_for_status()
        client.put(f"{url}/v2/{repository}/manifests/{tag}", content=image.manifest,
                   headers={"Content-Type": image.media_type}).raise_for_status()
    return image.digest


def basic_of(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
