"""Load: 1,000 small images through fault proxies (measuring only) with concurrency 16.

The images are pushed straight over the distribution API (skopeo would take minutes for a thousand),
100 repositories of 10 tags, each image a layer shared within its repository plus a unique one.
``acr-mirror sync`` runs as a subprocess with ``copy.concurrency: 16`` and a per-registry limit of 4
requests; the proxies measure the requests in flight at each registry, and the subprocess's resident
memory is sampled from /proc.  Memory is "bounded" when the 1,000-image run needs little more than
a 100-image run.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import cli_env, registry_state, write_config
from .faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.registry]

IMAGES = 1000
REPOSITORIES = 100
CONCURRENCY = 16
PER_REGISTRY_LIMIT = 4
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(client: httpx.Client, url: str, repo: str, data: bytes) -> str:
    digest = _digest(data)
    if client.head(f"{url}/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    location = client.post(f"{url}/v2/{repo}/blobs/uploads/").raise_for_status().headers["Location"]
    location = location if location.startswith("http") else url + location
    client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data,
               headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    return digest


def _push_image(client: httpx.Client, url: str, n: int) -> tuple[str, str]:
    repo, tag = f"load/r{n % REPOSITORIES:03d}", f"v{n // REPOSITORIES}"
    base = random.Random(f"base-{repo}").randbytes(2048)
    unique = random.Random(f"unique-{n}").randbytes(512 + n % 256)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"n": str(n)}},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(base), _digest(unique)]}},
                        sort_keys=True, separators=(",", ":")).encode()
    descriptors = []
    for data, media_type in ((config, "application/vnd.oci.image.config.v1+json"),
                             (base, "application/vnd.oci.image.layer.v1.tar"),
                             (unique, "application/vnd.oci.image.layer.v1.tar")):
        descriptors.append({"mediaType": media_type, "digest": _push_blob(client, url, repo, data), "size": len(data)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptors[0],
                           "layers": descriptors[1:]}, separators=(",", ":")).encode()
    client.put(f"{url}/v2/{repo}/manifests/{tag}", content=manifest,
               headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
    return f"{repo}:{tag}", _digest(manifest)


@pytest.fixture(scope="module")
def loaded_source(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.support.registries import start_registry

    registry = start_registry(tmp_path_factory.mktemp("load-source"))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    with httpx.Client(timeout=60, limits=limits) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        # the shared layer once per repository first, so the image pushes do not race on it
        list(pool.map(lambda n: _push_image(client, registry.url, n), range(REPOSITORIES)))
        images = dict(pool.map(lambda n: _push_image(client, registry.url, n), range(IMAGES)))
    yield registry, images
    registry.stop()


def _peak_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            return
        stop.wait(0.05)


def _sync(tmp_path: Path, source: Any, target: Any, refs: list[str]) -> dict[str, Any]:
    psrc = FaultProxy(source.url, keep_seen=False).start()
    ptgt = FaultProxy(target.url, keep_seen=False).start()
    try:
        config = write_config(tmp_path / "config.yaml", target.host, {
            source.host: {"endpoint": psrc.url, "insecure": True},
            target.host: {"endpoint": ptgt.url, "insecure": True},
        }, concurrency=CONCURRENCY, per_registry_limit=PER_REGISTRY_LIMIT)
        argv = [sys.executable, "-m", "mirror.cli", "sync", "--config", str(config),
                "--report", str(tmp_path / "report.json")]
        for ref in refs:
            argv += ["--image", f"{source.host}/{ref}"]
        started = time.monotonic()
        process = subprocess.Popen(argv, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(target=_peak_rss, args=(process.pid, stop, peak), daemon=True)
        sampler.start()
        _, stderr = process.communicate(timeout=1200)
        stop.set()
        sampler.join()
        return {"code": process.returncode, "stderr": stderr.decode(errors="replace"),
                "seconds": time.monotonic() - started, "peak_rss": peak[0],
                "report": json.loads((tmp_path / "report.json").read_text()),
                "in_flight": {"source": psrc.max_in_flight, "target": ptgt.max_in_flight},
                "requests": psrc.requests + ptgt.requests}
    finally:
        psrc.stop()
        ptgt.stop()


def test_thousand_images_concurrency_16(loaded_source: Any, registry_factory: Any, tmp_path: Path, figures: Any):
    source, images = loaded_source
    refs = sorted(images)
    assert len(refs) == IMAGES

    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    small_dir.mkdir()
    big_dir.mkdir()
    small = _sync(small_dir, source, registry_factory(), refs[:IMAGES // 10])
    assert small["code"] == 0, small["stderr"][-2000:]
    target = registry_factory()
    big = _sync(big_dir, source, target, refs)
    print(f"\n{IMAGES} images: {big['seconds']:.1f} s, {big['requests']} requests, peak RSS "
          f"{big['peak_rss'] / 2**20:.0f} MiB (100 images: {small['peak_rss'] / 2**20:.0f} MiB), "
          f"max in flight {big['in_flight']} (limit {PER_REGISTRY_LIMIT})")

    figures.record("load", tried=IMAGES)
    assert big["code"] == 0, big["stderr"][-2000:]
    statuses = [i["status"] for i in big["report"]["images"]]
    assert statuses == ["copied"] * IMAGES
    state = registry_state(target.url)
    assert {k: v for k, v in state.items() if k.startswith("load/")} == images
    # the per-registry request limit, measured at each registry
    for name, seen in big["in_flight"].items():
        assert seen <= PER_REGISTRY_LIMIT, f"{seen} requests in flight at the {name} registry"
    assert max(big["in_flight"].values()) >= 2  # and it did run concurrently
    # memory: bounded, not growing with the number of images
    assert big["peak_rss"] < 400 * 2**20
    assert big["peak_rss"] < small["peak_rss"] + 80 * 2**20, (big["peak_rss"], small["peak_rss"])
    figures.record("load", handled=statuses.count("copied"), peak_rss_mib=round(big["peak_rss"] / 2**20),
                   max_in_flight=max(big["in_flight"].values()), limit=PER_REGISTRY_LIMIT)
