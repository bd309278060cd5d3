"""bench/wanproxy.py, the WAN link of the WAN-shaped benchmark: bytes pass unchanged, the
bandwidth's bookkeeping never lets more bytes through than the rate allows (counted on a
made-up clock, never timed), and the HTTP trace finds each exchange."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("wanproxy", Path(__file__).parent.parent / "bench" / "wanproxy.py")
assert _SPEC and _SPEC.loader
wanproxy = importlib.util.module_from_spec(_SPEC)
sys.modules["wanproxy"] = wanproxy  # dataclasses look their module up there
_SPEC.loader.exec_module(wanproxy)

MIB = 1024 * 1024


def test_token_bucket_never_passes_more_than_burst_plus_rate() -> None:
    """Three streams book 256 KiB chunks as the proxy does (each waits until its last chunk
    passed); at every booking, the bytes passed by then stay within burst + rate × elapsed."""
    rate, burst, chunk = 1_000_000.0, wanproxy.CHUNK, wanproxy.CHUNK
    bucket = wanproxy.TokenBucket(rate, burst)
    ready = [0.0, 0.0, 0.0]  # when each stream may book its next chunk
    passed: list[tuple[float, int]] = []
    for _ in range(300):
        stream = min(range(3), key=lambda i: ready[i])
        now = ready[stream]
        when = bucket.reserve(chunk, now)
        assert when >= now
        passed.append((when, chunk))
        ready[stream] = when
    passed.sort()
    total = 0
    for when, size in passed:
        total += size
        assert total <= burst + rate * when + 1  # bytes, not seconds: nothing got through early
    # and the link was kept busy: the last byte passed within one chunk of the ideal schedule
    assert passed[-1][0] <= (total - burst) / rate + chunk / rate


def test_token_bucket_unlimited_and_idle_refill() -> None:
    assert wanproxy.TokenBucket(None).reserve(10 * MIB, 5.0) == 5.0
    bucket = wanproxy.TokenBucket(1000.0, burst=500)
    assert bucket.reserve(500, 0.0) == 0.0  # the burst
    assert bucket.reserve(1000, 0.0) == 1.0  # then the rate: 1000 bytes at 1000 B/s
    assert bucket.reserve(100, 10.0) == 10.0  # idle for long: full again, but never more than burst
    assert bucket.reserve(500, 10.0) == 10.1


@pytest.fixture()
def echo_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()


def test_bytes_pass_unchanged_and_are_counted(echo_server: int) -> None:
    payload = os.urandom(3 * MIB + 12345)
    with wanproxy.WanProxy(("127.0.0.1", echo_server), rtt=0.002, mbit=None) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            received = bytearray()
            while len(received) < len(payload):
                piece = sock.recv(1 << 20)
                assert piece, "closed early"
                received += piece
            sender.join()
        stats = proxy.stats
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert (stats.connections, stats.up_bytes, stats.down_bytes) == (1, len(payload), len(payload))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"a" * 1000, b"b" * 70000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = self.headers["Host"].encode()  # the Host header as the server saw it
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(404)
        self.send_header("Content-Length", "1234")  # a HEAD answer has no body whatever it says
        self.end_headers()

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_trace_follows_http_exchanges_and_keeps_host() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with wanproxy.WanProxy(("127.0.0.1", server.server_address[1]), rtt=0.002, mbit=None, trace=True) as proxy:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port)
            conn.request("GET", "/host")
            host = conn.getresponse().read()
            conn.request("HEAD", "/missing")
            conn.getresponse().read()
            conn.request("PUT", "/upload", body=b"x" * 300000)
            conn.getresponse().read()
            conn.request("GET", "/chunked")
            assert len(conn.getresponse().read()) == 71000
            conn.close()
            exchanges = proxy.reset().exchanges
    finally:
        server.shutdown()
    assert host == f"127.0.0.1:{proxy.port}".encode()  # the client's Host reached the server unchanged
    assert [(e.conn, e.method, e.path, e.status) for e in exchanges] == [
        (1, "GET", "/host", 200), (1, "HEAD", "/missing", 404), (1, "PUT", "/upload", 201),
        (1, "GET", "/chunked", 200)]
    assert exchanges[2].up_bytes > 300000 and exchanges[3].down_bytes > 71000
    assert all(e.done >= e.first >= e.sent for e in exchanges)
