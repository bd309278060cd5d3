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
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
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
    assert proxy.wait_idle()
    # the Location URL the registry built named the proxy (Host kept), so the PUT went through it too
    methods = [(s.method, s.host) for s in proxy.seen]
    assert [m for m, _ in methods] == ["POST", "PUT"]
    assert {h for _, h in methods} == {proxy.host}
    status, body, error = _raw_get(proxy.host, f"/v2/probe/upload/blobs/{digest}")
    assert (status, error) == (200, None)
    assert body == data
    status, body, error = _raw_get(proxy.host, f"/v2/probe/upload/blobs/{digest}", "HEAD")
    assert (status, body, error) == (200, b"", None)
    assert proxy.wait_idle()
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
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw, pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    # "at once": the first byte of a handshake record is enough, nothing more is waited for
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as raw:
        raw.sendall(b"\x16")
        assert raw.recv(64).startswith(b"HTTP/1.1 400 ")
    assert proxy.tls_hellos == 2
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


# --------------------------------------------------------------------------- sync through faults

from click.testing import CliRunner  # noqa: E402

from mirror import cli  # noqa: E402

from .conftest import integrity_problems, registry_state, write_config  # noqa: E402
from .faultproxy import chain, repository_of  # noqa: E402


def _images(seeded: dict[str, Any]) -> list[str]:
    return [*seeded["images"], seeded["index"]["ref"]]


def _sync(tmp_path: Path, source: Any, target: Any, psrc: FaultProxy, ptgt: FaultProxy, refs: list[str],
          **copy: Any) -> tuple[Any, dict[str, Any]]:
    config = write_config(tmp_path / "config.yaml", target.host, {
        source.host: {"endpoint": psrc.url, "insecure": True},
        target.host: {"endpoint": ptgt.url, "insecure": True},
    }, **copy)
    report = tmp_path / "report.json"
    args = ["sync", "--config", str(config), "--report", str(report)]
    for ref in refs:
        args += ["--image", source.ref(ref)]
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    return result, json.loads(report.read_text()) if report.exists() else {}


def _same_as_source(source: Any, target: Any, ref: str) -> bool:
    """skopeo inspect --raw through direct, non-proxied URLs: the target serves the source's bytes."""
    from tests.support.images import inspect_raw

    return inspect_raw(ref, source) == inspect_raw(ref, target)


SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "1,2,3").split(",")]
# Every kind but "corrupt": a corrupted body is tested deterministically below (see the BUG there).
TRANSPORT_KINDS = tuple(k for k in ALL_RANDOM_KINDS if k != "corrupt")


def _check_complete(source: Any, target: Any, seeded: dict[str, Any], refs: list[str], result: Any,
                    report: dict[str, Any]) -> None:
    assert result.exit_code == 0, result.output
    assert [i["status"] for i in report["images"]] == ["copied"] * len(refs), [i["error"] for i in report["images"]]
    expected = {**seeded["images"], seeded["index"]["ref"]: seeded["index"]["digest"]}
    assert {i["source"].split("/", 1)[1]: i["digest"] for i in report["images"]} == expected
    for ref in refs:
        assert _same_as_source(source, target, ref), ref
    # signatures and referrers came along, and every tag in the target is a whole image
    state = registry_state(target.url)
    assert state[seeded["signature"]["ref"]] == seeded["signature"]["digest"]
    assert integrity_problems(target.url) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_sync_at_ten_percent_faults_verifies_every_digest(seeded_source: Any, empty_target: Any, tmp_path: Path,
                                                          fault_proxy: Callable[..., FaultProxy], seed: int,
                                                          figures: Any):
    """10 % of all requests, on both registries: 5xx, 429 (with and without Retry-After), resets before,
    after the headers and inside the body, truncated bodies, slow answers."""
    source, seeded = seeded_source
    target = empty_target
    psrc = fault_proxy(source.url, RandomFaults(0.10, seed=seed, kinds=TRANSPORT_KINDS))
    ptgt = fault_proxy(target.url, RandomFaults(0.10, seed=seed + 100, kinds=TRANSPORT_KINDS))
    refs = _images(seeded)
    started = time.monotonic()
    result, report = _sync(tmp_path, source, target, psrc, ptgt, refs)
    elapsed = time.monotonic() - started
    injected = psrc.injected + ptgt.injected
    figures.record("faults", tried=sum(injected.values()), by_kind=dict(injected))
    assert sum(injected.values()) >= 10, f"only {dict(injected)} injected in {psrc.requests + ptgt.requests} requests"
    _check_complete(source, target, seeded, refs, result, report)
    figures.record("faults", handled=sum(injected.values()))
    print(f"seed {seed}: {sum(injected.values())} faults in {psrc.requests + ptgt.requests} requests "
          f"({dict(injected)}), {elapsed:.1f} s")


def _first_get_of_each_digest() -> Any:
    """Corrupt the first GET of every blob and of every manifest by digest (bytes flipped, length kept)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def policy(request: ProxyRequest) -> str | None:
        if request.method != "GET" or "sha256:" not in request.path:
            return None
        key = request.path.split("?", 1)[0].rsplit("/", 1)[-1]
        with lock:
            if key in seen:
                return None
            seen.add(key)
        return "corrupt"

    return policy


def test_corrupted_bytes_in_transit_are_fetched_again(seeded_source: Any, empty_target: Any, tmp_path: Path,
                                                       fault_proxy: Callable[..., FaultProxy], figures: Any):
    source, seeded = seeded_source
    target = empty_target
    psrc = fault_proxy(source.url, chain(_first_get_of_each_digest(),
                                         RandomFaults(0.10, seed=7, kinds=TRANSPORT_KINDS)))
    ptgt = fault_proxy(target.url, RandomFaults(0.10, seed=107))
    refs = _images(seeded)
    result, report = _sync(tmp_path, source, target, psrc, ptgt, refs)
    injected = psrc.injected + ptgt.injected
    figures.record("faults", tried=sum(injected.values()), by_kind=dict(injected))
    assert psrc.injected["corrupt"] >= 20
    _check_complete(source, target, seeded, refs, result, report)
    figures.record("faults", handled=sum(injected.values()))


def test_permanently_failing_images_are_named_and_the_others_complete(
        seeded_source: Any, empty_target: Any, tmp_path: Path, fault_proxy: Callable[..., FaultProxy], figures: Any):
    """team/worker always answers 500; a layer of tools/debug always arrives corrupt; 10 % faults elsewhere."""
    source, seeded = seeded_source
    target = empty_target
    debug = json.loads(seeded["oci"]["tools/debug:latest"].manifest)
    bad_layer = debug["layers"][-1]["digest"]  # unique to tools/debug
    permanent = [0]  # the faults that make the two images fail for good: not "survived", expected failures

    def counted(policy: Any) -> Any:
        def wrapper(request: ProxyRequest) -> Any:
            decision = policy(request)
            if decision is not None:
                permanent[0] += 1
            return decision
        return wrapper

    broken = chain(
        counted(always("500", lambda r: repository_of(r.path) == "team/worker")),
        counted(always("corrupt", lambda r: r.method == "GET" and r.path.endswith(f"/blobs/{bad_layer}"))),
        RandomFaults(0.10, seed=3, kinds=TRANSPORT_KINDS),
    )
    psrc = fault_proxy(source.url, broken)
    ptgt = fault_proxy(target.url, RandomFaults(0.10, seed=4, kinds=TRANSPORT_KINDS))
    refs = _images(seeded)
    result, report = _sync(tmp_path, source, target, psrc, ptgt, refs)
    injected = psrc.injected + ptgt.injected
    transient = sum(injected.values()) - permanent[0]
    figures.record("faults", tried=transient)
    assert result.exit_code == 1, result.output
    by_source = {i["source"].split("/", 1)[1]: i for i in report["images"]}
    failed = {ref for ref, item in by_source.items() if item["status"] == "failed"}
    assert failed == {"team/worker:3.1", "tools/debug:latest"}, {r: by_source[r]["error"] for r in failed}
    assert all(by_source[r]["status"] == "copied" for r in refs if r not in failed)
    worker, dbg = by_source["team/worker:3.1"], by_source["tools/debug:latest"]
    assert "team/worker" in worker["error"] and "500" in worker["error"]
    assert bad_layer in dbg["error"] and re.search(r"digest|hashes to", dbg["error"]), dbg["error"]
    # the failures are named on stderr too, one line each
    assert len({line for line in result.stderr.splitlines() if line.startswith("failed:")}) == 2
    state = registry_state(target.url)
    assert not any(key.startswith(("team/worker:", "tools/debug:")) for key in state), state
    with httpx.Client() as client:  # the corrupt bytes were never committed
        assert client.head(f"{target.url}/v2/tools/debug/blobs/{bad_layer}").status_code == 404
    assert integrity_problems(target.url) == []
    for ref in refs:
        if ref not in failed:
            assert _same_as_source(source, target, ref), ref
    figures.record("faults", handled=transient, permanent_faults_reported=permanent[0])
