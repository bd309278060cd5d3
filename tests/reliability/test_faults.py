"""Faults on the wire: the fault proxy itself, then sync through it at a 10 % fault rate.

The proxy is tested first, standalone, against a real registry: it passes requests and uploads
through (upload Location URLs stay on the proxy), injects each fault kind so a plain HTTP
client sees exactly that fault, answers a TLS ClientHello with 400, and measures requests in
flight.  Then acr-mirror syncs the standard image set through it; every digest is compared with
``skopeo inspect --raw`` through a direct, non-proxied URL.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from .faultproxy import ALL_RANDOM_KINDS, Fault, FaultProxy, ProxyRequest, RandomFaults, always, first_n

# --------------------------------------------------------------------------- helpers


def _push_blob(base: str, repository: str, data: bytes) -> str:
    """Monolithic upload (POST then PUT ?digest=) through ``base``; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(timeout=10) as client:
        start = client.post(f"{base}/v2/{repository}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        url = location if location.startswith("http") else base + location
        sep = "&" if "?" in url else "?"
        done = client.put(f"{url}{sep}digest={digest}", content=data,
                          headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
    return digest


def _raw_get(host: str, path: str, method: str = "GET") -> tuple[int | None, bytes, str | None]:
    """(status, body, error) with http.client, so broken responses show as errors, not retries."""
    hostname, port = host.rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname, int(port), timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        try:
            body = response.read()
        except (http.client.IncompleteRead, ConnectionError, OSError) as exc:
            return response.status, b"", type(exc).__name__
        return response.status, body, None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        return None, b"", type(exc).__name__
    finally:
        conn.close()


@pytest.fixture
def blob_registry(target_registry: Any) -> tuple[Any, str, bytes]:
    data = bytes(range(256)) * 512  # 128 KiB
    digest = _push_blob(target_registry.url, "probe/blob", data)
    return target_registry, digest, data


# --------------------------------------------------------------------------- the proxy itself


def test_proxy_passes_requests_and_uploads_through(target_registry: Any, fault_proxy: Callable[..., FaultProxy]):
    proxy = fault_proxy(target_registry.url)
    data = b"hello through the proxy\n" * 1000
    digest = _push_blob(proxy.url, "probe/upload", data)
    # the Location URL the registry built named the proxy (Host kept), so the PUT went through it too
    methods = [(s.method, s.host) for s in proxy.seen]
    assert [m for m, _ in methods] == ["POST", "PUT"]
    assert {h for _, h in methods} == {proxy.host}
    status, body, error = _raw_get(proxy.host, f"/v2/probe/upload/blobs/{digest}")
    assert (status, error) == (200, None)
    assert body == data
    status, body, error = _raw_get(proxy.host, f"/v2/probe/upload/blobs/{digest}", "HEAD")
    assert (status, body, error) == (200, b"", None)
    assert proxy.total_injected == 0
    assert proxy.requests == 4


@pytest.mark.parametrize("kind, expect_status, expect_error", [
    ("500", 500, None),
    ("502", 502, None),
    ("503", 503, None),
    ("429", 429, None),
    ("429-retry-after", 429, None),
    ("reset", None, "any"),
    ("reset-headers", 200, "any"),
    ("reset-body", 200, "any"),
    ("truncate", 200, "IncompleteRead"),
    ("corrupt", 200, None),
    ("slow", 200, None),
    ("lie-digest", 200, None),
])
def test_proxy_injects_each_fault_kind(blob_registry: Any, fault_proxy: Callable[..., FaultProxy], kind: str,
                                       expect_status: int | None, expect_error: str | None):
    registry, digest, data = blob_registry
    proxy = fault_proxy(registry.url, first_n(1, kind), slow_delay=0.3)
    started = time.monotonic()
    hostname, port = proxy.host.rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname, int(port), timeout=10)
    status = error = None
    body = b""
    headers: dict[str, str] = {}
    try:
        conn.request("GET", f"/v2/probe/blob/blobs/{digest}")
        response = conn.getresponse()
        status, headers = response.status, dict(response.getheaders())
        body = response.read()
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        error = type(exc).__name__
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    assert status == expect_status
    if expect_error == "any":
        assert error is not None
    else:
        assert error == expect_error
    if kind == "429-retry-after":
        assert headers.get("Retry-After") == "1"
    if kind == "429":
        assert "Retry-After" not in headers
    if kind == "corrupt":
        assert len(body) == len(data) and body != data
        assert "sha256:" + hashlib.sha256(body).hexdigest() != digest
    if kind == "slow":
        assert body == data and elapsed >= 0.3
    if kind == "lie-digest":
        assert body == data and headers["Docker-Content-Digest"] != digest
    assert dict(proxy.injected) == {kind: 1}
    # the next request passes: the fault was one-off
    assert _raw_get(proxy.host, f"/v2/probe/blob/blobs/{digest}")[:2] == (200, data)


def test_proxy_reads_the_request_body_before_an_error(target_registry: Any, fault_proxy: Callable[..., FaultProxy]):
    """A client uploading 4 MiB sees the injected 503, not a broken pipe."""
    proxy = fault_proxy(target_registry.url, always("503", lambda r: r.method == "PUT"))
    with httpx.Client(timeout=10) as client:
        start = client.post(f"{proxy.url}/v2/probe/big/blobs/uploads/")
        location = start.headers["Location"]
        data = b"x" * (4 * 1024 * 1024)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = client.put(f"{location}&digest={digest}", content=data)
    assert done.status_code == 503
    assert done.json()["errors"][0]["code"] == "UNAVAILABLE"


def test_proxy_chunked_request_bodies(target_registry: Any, fault_proxy: Callable[..., FaultProxy]):
    proxy = fault_proxy(target_registry.url)
    data = b"0123456789" * 50_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def pieces():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    with httpx.Client(timeout=10) as client:
        location = client.post(f"{proxy.url}/v2/probe/chunked/blobs/uploads/").headers["Location"]
        done = client.put(f"{location}&digest={digest}", content=pieces())
    assert done.status_code == 201, done.text
    assert _raw_get(target_registry.host, f"/v2/probe/chunked/blobs/{digest}")[1] == data


def test_proxy_answers_tls_client_hello_with_400(target_registry: Any, fault_proxy: Callable[..., FaultProxy]):
    proxy = fault_proxy(target_registry.url)
    context = ssl.create_default_context()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert time.monotonic() - started < 2
    assert proxy.tls_hellos == 1
    # and it still serves plain HTTP
    assert _raw_get(proxy.host, "/v2/")[0] == 200


def test_proxy_measures_requests_in_flight(target_registry: Any, fault_proxy: Callable[..., FaultProxy]):
    proxy = fault_proxy(target_registry.url, always(Fault("slow", delay=0.4)))
    threads = [threading.Thread(target=_raw_get, args=(proxy.host, "/v2/")) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proxy.max_in_flight == 6
    assert proxy.injected["slow"] == 6


def test_random_faults_are_seeded_and_fit_the_request():
    def decisions(seed: int) -> list[str]:
        policy = RandomFaults(0.5, seed=seed)
        out = []
        for i in range(400):
            method = "GET" if i % 2 else "PUT"
            fault = policy(ProxyRequest(i + 1, method, "/v2/x/blobs/sha256:ab", {}, 0))
            out.append(f"{method}:{fault.label if fault else 'pass'}")
        return out

    first, again, other = decisions(7), decisions(7), decisions(8)
    assert first == again and first != other
    injected = [d for d in first if not d.endswith(":pass")]
    assert 150 < len(injected) < 250
    assert not any(d.startswith("PUT:") and d.split(":")[1] in ("reset-body", "truncate", "corrupt") for d in first)
    assert {d.split(":")[1] for d in injected} == set(ALL_RANDOM_KINDS)
