"""A WAN link in front of one server, in user space: delay and bandwidth per direction.

This machine has no `tc netem`, so the WAN-shaped benchmark puts this TCP proxy in front of
each registry. It is a plain TCP relay (bytes pass unchanged, so the Host header and the
upload Location URLs the registry builds stay on the proxy), shaped like an access link:

- one-way delay (RTT/2) in each direction, per connection: each chunk read (up to 256 KiB)
  is delivered at the time it has passed the link + the one-way delay;
- bandwidth per direction as a token bucket shared by every connection of the link (like a
  real access link: parallel streams share it, they do not multiply it);
- a new connection's first bytes wait one RTT more (the TCP handshake a real WAN costs;
  the client's connect to the proxy itself returns at once on loopback);
- at most `window` bytes of a direction of one connection are held in the proxy, so a slow
  reader pushes back on the sender as a TCP receive window does.

Not modelled: loss, slow start, TLS handshakes (the registries here speak plain HTTP).

Optional tracing (`trace=True`) follows HTTP/1.1 in both directions without changing a byte
and records every exchange: connection, method, path, status, when the client sent it and
when the client had the answer (the times the client sees), bytes each way.

Python:  with WanProxy(("127.0.0.1", 5000), rtt=0.04, mbit=400) as proxy: proxy.port ...
         (an asyncio loop in a thread; several proxies may share one `Loop`).
         spawn(...) runs one as a subprocess instead and returns (process, port).
CLI:     python bench/wanproxy.py --upstream 127.0.0.1:5000 --rtt-ms 40 --mbit 400 [--port 0]
         python bench/wanproxy.py --selftest [--rtt-ms 40 --mbit 400]   (measures the proxy)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

CHUNK = 256 * 1024
DEFAULT_WINDOW = 4 * 1024 * 1024  # about a Linux receive buffer at full autotuning
DEFAULT_BURST = CHUNK


class TokenBucket:
    """The bandwidth of one direction of the link, shared by all its connections.

    `reserve(n, now)` books n bytes and returns when they have passed the link: at once
    while the bucket holds enough tokens, else when the debt is paid at `rate`. Bookings
    are served in the order they are made, so parallel streams share the rate."""

    def __init__(self, rate: float | None, burst: int = DEFAULT_BURST):
        self.rate = rate  # bytes per second; None: unlimited
        self.burst = burst
        self.tokens = float(burst)
        self.stamp: float | None = None

    def reserve(self, size: int, now: float) -> float:
        if not self.rate:
            return now
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= size
        return now if self.tokens >= 0 else now + -self.tokens / self.rate


@dataclass
class Exchange:
    """One HTTP request and its response, in the client's time (seconds since the proxy started)."""

    conn: int
    method: str
    path: str
    sent: float  # the request's first byte left the client
    body_sent: float = 0.0  # its last byte left the client
    status: int = 0
    first: float = 0.0  # the response's first byte reached the client
    done: float = 0.0  # its last byte reached the client
    up_bytes: int = 0  # request head + body
    down_bytes: int = 0  # response head + body


class _HttpFollower:
    """Follows one direction of an HTTP/1.1 connection from the chunks passing by, to find
    where messages start and end. Counts bodies, never buffers them. Gives up (stops
    reporting) on anything it does not understand; forwarding is never affected."""

    def __init__(self, on_head: Callable[[bytes, float], str], on_end: Callable[[float], None],
                 on_bytes: Callable[[int], None]):
        self.on_head, self.on_end, self.on_bytes = on_head, on_end, on_bytes
        self.buffer = b""
        self.state = "head"  # head | length | chunk-size | chunk-data | chunk-crlf | trailer | close | broken
        self.left = 0

    def feed(self, data: bytes, when: float) -> None:
        if self.state == "broken":
            return
        try:
            self._feed(data, when)
        except Exception:  # a tracer must never break the link
            self.state = "broken"

    def _feed(self, data: bytes, when: float) -> None:
        view = self.buffer + data if self.buffer else data
        self.buffer = b""
        pos = 0
        while pos < len(view):
            if self.state in ("length", "chunk-data"):
                take = min(self.left, len(view) - pos)
                pos += take
                self.left -= take
                self.on_bytes(take)  # body bytes (chunk framing is not counted)
                if self.left == 0:
                    if self.state == "length":
                        self._end(when)
                    else:
                        self.state = "chunk-crlf"
                        self.left = 2
                continue
            if self.state == "chunk-crlf":
                take = min(self.left, len(view) - pos)
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = "chunk-size"
                continue
            if self.state == "close":
                return
            end = view.find(b"\r\n\r\n" if self.state == "head" else b"\r\n", pos)
            if end < 0:
                self.buffer = bytes(view[pos:])
                if len(self.buffer) > 64 * 1024:
                    self.state = "broken"
                return
            if self.state == "head":
                head = bytes(view[pos:end])
                pos = end + 4
                if not head:
                    continue  # stray CRLF between messages
                kind = self.on_head(head, when)  # "none" | "length:N" | "chunked" | "close"
                if kind == "none":
                    self._end(when)
                elif kind.startswith("length:"):
                    self.left = int(kind[7:])
                    self.state = "length"
                    if self.left == 0:
                        self._end(when)
                elif kind == "chunked":
                    self.state = "chunk-size"
                else:
                    self.state = "close"
            elif self.state == "chunk-size":
                size = int(view[pos:end].split(b";")[0].strip() or b"0", 16)
                pos = end + 2
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state, self.left = "chunk-data", size
            elif self.state == "trailer":
                line = view[pos:end]
                pos = end + 2
                if not line:
                    self._end(when)

    def _end(self, when: float) -> None:
        self.state = "head"
        self.on_end(when)

    def closed(self, when: float) -> None:
        if self.state == "close":
            self._end(when)


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _body_kind(headers: dict[str, str]) -> str:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked"
    if "content-length" in headers:
        return f"length:{int(headers['content-length'])}"
    return ""


class _ConnTrace:
    """The exchanges of one proxied connection."""

    def __init__(self, conn: int, record: list[Exchange], origin: float):
        self.conn, self.record, self.origin = conn, record, origin
        self.waiting: deque[Exchange] = deque()  # requests sent, response not complete
        self.sending: Exchange | None = None
        self.receiving: Exchange | None = None
        self.up = _HttpFollower(self._request_head, self._request_end, self._up_bytes)
        self.down = _HttpFollower(self._response_head, self._response_end, self._down_bytes)

    def _request_head(self, head: bytes, when: float) -> str:
        start, headers = _headers(head)
        method, path, _ = start.split(" ", 2)
        exchange = Exchange(self.conn, method, path, when - self.origin, up_bytes=len(head) + 4)
        self.record.append(exchange)
        self.waiting.append(exchange)
        self.sending = exchange
        return _body_kind(headers) or "none"

    def _request_end(self, when: float) -> None:
        if self.sending is not None:
            self.sending.body_sent = when - self.origin
            self.sending = None

    def _up_bytes(self, size: int) -> None:
        if self.sending is not None:
            self.sending.up_bytes += size

    def _response_head(self, head: bytes, when: float) -> str:
        start, headers = _headers(head)
        status = int(start.split(" ", 2)[1])
        if 100 <= status < 200:
            return "none"  # an interim answer; the real one follows
        exchange = self.waiting[0] if self.waiting else Exchange(self.conn, "?", "?", when - self.origin)
        exchange.status, exchange.first = status, when - self.origin
        exchange.down_bytes = len(head) + 4
        self.receiving = exchange
        if exchange.method == "HEAD" or status in (204, 304):
            return "none"
        return _body_kind(headers) or "close"

    def _response_end(self, when: float) -> None:
        if self.receiving is not None:
            self.receiving.done = when - self.origin
            if self.waiting and self.waiting[0] is self.receiving:
                self.waiting.popleft()
            self.receiving = None

    def _down_bytes(self, size: int) -> None:
        if self.receiving is not None:
            self.receiving.down_bytes += size


@dataclass
class Stats:
    connections: int = 0
    up_bytes: int = 0  # client → server
    down_bytes: int = 0  # server → client
    exchanges: list[Exchange] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"connections": self.connections, "up_bytes": self.up_bytes, "down_bytes": self.down_bytes,
                "requests": len(self.exchanges)}


class Loop:
    """An asyncio event loop in a daemon thread, for proxies running inside a Python process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wanproxy", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class WanProxy:
    """A shaped link to `upstream` (host, port). `rtt` in seconds, `mbit` per direction
    (None: unlimited); `down_mbit` (server → client) defaults to `mbit`."""

    def __init__(self, upstream: tuple[str, int], *, rtt: float = 0.04, mbit: float | None = 400,
                 down_mbit: float | None = None, window: int = DEFAULT_WINDOW, burst: int = DEFAULT_BURST,
                 handshake: bool = True, trace: bool = False, listen: tuple[str, int] = ("127.0.0.1", 0),
                 loop: Loop | None = None):
        self.upstream = upstream
        self.rtt = rtt
        self.window = window
        self.handshake = handshake
        self.trace = trace
        self.listen = listen
        down = mbit if down_mbit is None else down_mbit
        self.up_bucket = TokenBucket(mbit * 1e6 / 8 if mbit else None, burst)
        self.down_bucket = TokenBucket(down * 1e6 / 8 if down else None, burst)
        self.stats = Stats()
        self.port = 0
        self._loop = loop
        self._own_loop = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._origin = time.monotonic()

    # -- lifecycle (from any thread) ---------------------------------------------------------

    def start(self) -> int:
        if self._loop is None:
            self._loop, self._own_loop = Loop(), True
        self._loop.run(self._start())
        return self.port

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.run(self._stop())
        if self._own_loop:
            self._loop.close()
        self._loop = None

    def reset(self) -> Stats:
        """The stats so far, and start counting afresh (call between runs, with no traffic)."""
        assert self._loop is not None
        return self._loop.run(self._reset())

    def __enter__(self) -> WanProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    # -- on the loop ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen, limit=CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]
        self._origin = time.monotonic()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reset(self) -> Stats:
        stats, self.stats = self.stats, Stats()
        self._origin = time.monotonic()
        return stats

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream, limit=CHUNK)
        except OSError:
            client_writer.close()
            self._tasks.discard(task)
            return
        for writer in (client_writer, server_writer):
            with contextlib.suppress(OSError):
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1
        conn = self.stats.connections
        stats = self.stats
        # loop.time() is time.monotonic(): the trace's times are seconds since start or reset.
        trace = _ConnTrace(conn, stats.exchanges, self._origin) if self.trace else None
        # The client would send its first bytes only after the handshake's round trip.
        ready = accepted + (self.rtt if self.handshake else 0.0)
        try:
            await asyncio.gather(
                self._pump(client_reader, server_writer, self.up_bucket, ready, "up", stats, trace),
                self._pump(server_reader, client_writer, self.down_bucket, accepted, "down", stats, trace),
            )
        except (Exception, asyncio.CancelledError):
            pass  # a reset or stop() ends the connection; nothing to report
        finally:
            for writer in (client_writer, server_writer):
                if not writer.is_closing():
                    writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: TokenBucket,
                    ready: float, direction: str, stats: Stats, trace: _ConnTrace | None) -> None:
        """Read chunks as they come, book them on the link, deliver each one-way delay after it
        passed; hold at most `window` bytes in between."""
        loop = asyncio.get_running_loop()
        one_way = self.rtt / 2
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        held = 0
        room = asyncio.Event()
        room.set()
        failed: list[BaseException] = []

        async def deliver() -> None:
            nonlocal held
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                try:
                    writer.write(data)
                    await writer.drain()
                except (OSError, RuntimeError) as exc:
                    failed.append(exc)
                    room.set()
                    return
                held -= len(data)
                if held <= self.window:
                    room.set()
                if trace is not None and direction == "down":
                    trace.down.feed(data, loop.time())

        delivering = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while not failed:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                now = loop.time()
                passed = bucket.reserve(len(data), now) if data else now
                due = max(passed, ready, last_due - one_way) + one_way
                last_due = due
                queue.put_nowait((due, data))
                if not data:
                    if trace is not None and direction == "down":
                        trace.down.closed(due)
                    break
                if direction == "up":
                    stats.up_bytes += len(data)
                    if trace is not None:
                        trace.up.feed(data, now)
                else:
                    stats.down_bytes += len(data)
                held += len(data)
                if passed > now:
                    await asyncio.sleep(passed - now)  # the sender waits for the link
                if held > self.window:
                    room.clear()
                    await room.wait()
            await delivering
        finally:
            if not delivering.done():
                delivering.cancel()
        if failed:
            raise failed[0]


# -- as a subprocess -----------------------------------------------------------------------


def spawn(upstream: str, *, rtt_ms: float, mbit: float | None, extra: tuple[str, ...] = ()) -> tuple[
        subprocess.Popen[str], int]:
    """Start a proxy process; returns it and its port. Stop it with process.terminate()."""
    command = [sys.executable, __file__, "--upstream", upstream, "--rtt-ms", str(rtt_ms),
               "--mbit", str(mbit or 0), *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"wanproxy did not start: {line!r}")
    return process, int(line.rsplit(":", 1)[1])


def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.upstream.rpartition(":")
    proxy = WanProxy((host, int(port)), rtt=args.rtt_ms / 1000, mbit=args.mbit or None,
                     down_mbit=args.down_mbit, listen=(args.listen, args.port), handshake=not args.no_handshake)
    proxy.start()
    print(f"listening on {proxy.host}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    stats = proxy.stats.summary()
    proxy.stop()
    print(json.dumps(stats), flush=True)
    return 0


# -- measuring the proxy itself ----------------------------------------------------------------


@contextlib.contextmanager
def _test_server() -> Iterator[int]:
    """A loopback server: 'P' → one byte back (ping); 'D<n>' → n bytes (download);
    'U<n>' → read n bytes, then one byte back (upload)."""

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                op = reader.read(1)
                if not op:
                    return
                if op == b"P":
                    conn.sendall(b"p")
                    continue
                size = int(reader.readline())
                if op == b"D":
                    block = bytes(CHUNK)
                    for offset in range(0, size, CHUNK):
                        conn.sendall(block[:min(CHUNK, size - offset)])
                else:
                    left = size
                    while left:
                        left -= len(reader.read(min(CHUNK, left)))
                    conn.sendall(b"u")

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def _recv_exact(sock: socket.socket, size: int) -> None:
    while size:
        got = sock.recv(min(size, 1 << 20))
        if not got:
            raise ConnectionError("closed early")
        size -= len(got)


def selftest(rtt_ms: float, mbit: float, size_mib: int = 64, streams: int = 4) -> dict[str, float]:
    """What a client sees through the proxy: round trips (new and warm connection) and rates."""
    figures: dict[str, float] = {}
    size = size_mib * 1024 * 1024
    with _test_server() as port, WanProxy(("127.0.0.1", port), rtt=rtt_ms / 1000, mbit=mbit) as proxy:
        start = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.sendall(b"P")
        _recv_exact(sock, 1)
        figures["new connection + 1 request (2 RTT expected), ms"] = (time.perf_counter() - start) * 1000
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            sock.sendall(b"P")
            _recv_exact(sock, 1)
            samples.append(time.perf_counter() - start)
        figures["warm request/response (1 RTT expected), ms"] = min(samples) * 1000
        for label, op in (("download", b"D"), ("upload", b"U")):
            start = time.perf_counter()
            sock.sendall(op + b"%d\n" % size)
            if op == b"D":
                _recv_exact(sock, size)
            else:
                view = memoryview(bytes(size))
                for offset in range(0, size, CHUNK):
                    sock.sendall(view[offset:offset + CHUNK])
                _recv_exact(sock, 1)
            elapsed = time.perf_counter() - start
            figures[f"one stream {label} {size_mib} MiB, Mbit/s"] = size * 8 / elapsed / 1e6
        sock.close()

        def download(_: int) -> None:
            with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
                conn.sendall(b"D%d\n" % (size // streams))
                _recv_exact(conn, size // streams)

        start = time.perf_counter()
        threads = [threading.Thread(target=download, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        figures[f"{streams} streams download {size_mib} MiB together, Mbit/s"] = size * 8 / elapsed / 1e6
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", help="HOST:PORT of the server behind the link")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time added (default 40)")
    parser.add_argument("--mbit", type=float, default=400.0, help="Mbit/s per direction, 0 unlimited (default 400)")
    parser.add_argument("--down-mbit", type=float, help="Mbit/s server → client, if not --mbit")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-handshake", action="store_true", help="no extra RTT on a new connection")
    parser.add_argument("--selftest", action="store_true", help="measure the proxy and print the figures")
    args = parser.parse_args()
    if args.selftest:
        print(f"wanproxy at {args.rtt_ms:g} ms RTT, {args.mbit:g} Mbit/s per direction:")
        for name, value in selftest(args.rtt_ms, args.mbit).items():
            print(f"  {name:<50} {value:8.1f}")
        return 0
    if not args.upstream:
        parser.error("--upstream HOST:PORT is required (or --selftest)")
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
