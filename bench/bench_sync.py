"""Sync throughput: acr-mirror's registry engine vs skopeo, on local registries seeded in this run.

The set (issue 3): 10 single-platform images sharing 3 of their 5 layers (~460 MiB of unique
blobs at --scale 1), one 2-platform index, one single-layer image of --large-mib MiB.
Measured side by side on the same two registries, the target wiped before every cold run:

- the bare PUT ceiling (one blob PUT with http.client, no client work to speak of);
- `RegistryEngine.copy_all` (in a fresh process, timed around the call) vs `skopeo sync --all`
  vs `skopeo copy --all` per image, on the 10 images; best of --repeat;
- bytes moved vs the unique blob bytes; the no-op re-sync of all 12 images (fresh engine);
- the large image: time and peak RSS of the copying process (goal < 150 MB, even at 1 GiB).

skopeo runs in a private mount namespace with its own blob-info cache (tests/support/images.py).
Usage: python bench/bench_sync.py [--scale 0.25] [--large-mib 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.client
import io
import json
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "manifests-rewriter")]

from tests.support.images import (  # noqa: E402
    OCI_LAYER_GZIP,
    Layer,
    OciImage,
    build_image,
    build_index,
    push,
    registry_options,
    skopeo,
)
from tests.support.registries import Registry, start_registry  # noqa: E402

MIB = 1024 * 1024
GOAL_SPEEDUP = 1.25
GOAL_NOOP_SECONDS = 1.0
GOAL_RSS_MB = 150
GOAL_CPU_RATIO = 1.25  # issue 12: client CPU per GiB at most 1.25x skopeo's


# ----------------------------------------------------------------------------- the image set


def random_bytes(size: int, seed: str) -> bytes:
    rng = random.Random(seed)  # randbytes takes at most 256 MiB at a time
    return b"".join(rng.randbytes(min(64 * MIB, size - offset)) for offset in range(0, size, 64 * MIB))


def layer(size: int, seed: str) -> Layer:
    """A real tar+gzip layer of random bytes; gzip level 0 (stored) so building it costs little."""
    data = random_bytes(size, seed)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{seed.replace('/', '_')}.bin")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return Layer(OCI_LAYER_GZIP, gzip.compress(tar_bytes, compresslevel=0, mtime=0),
                 "sha256:" + hashlib.sha256(tar_bytes).hexdigest())


def build_set(workdir: Path, scale: float, large_mib: int) -> dict[str, OciImage]:
    """10 images × (3 shared + 2 own layers), a 2-platform index, one large single-layer image."""
    shared = [layer(int(s * MIB * scale), f"bench/base-{i}") for i, s in enumerate((60, 40, 20))]
    images: dict[str, OciImage] = {}
    for i in range(10):
        own = [layer(int((15 + i % 5) * MIB * scale), f"bench/{i}/own-{j}") for j in range(2)]
        images[f"bench/app{i}:1.0"] = build_image(workdir, layers=[*shared, *own], seed=f"bench/{i}")
    images["bench/multi:1.0"] = build_index(workdir, shared_layers=[shared[2]], unique_layer=int(4 * MIB * scale),
                                            seed="bench/multi")
    images["bench/large:1.0"] = build_image(workdir, layers=[layer(large_mib * MIB, "bench/large")], seed="bench/large")
    return images


def blob_sizes(image: OciImage) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in [image, *image.children]:
        manifest = json.loads(item.manifest)
        for desc in [manifest.get("config")] + manifest.get("layers", []):
            if desc:
                sizes[desc["digest"]] = desc["size"]
    return sizes


# ----------------------------------------------------------------------------- measurements


def bare_put(target: Registry, size: int, seed: str) -> float:
    """MiB/s of one monolithic blob PUT from memory with http.client: the registry's own ceiling."""
    data = random_bytes(size, seed)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection(target.host, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v2/bench/ceiling/blobs/uploads/", body=b"")
    response = conn.getresponse()
    response.read()
    location = response.getheader("Location")
    assert response.status == 202 and location, response.status
    path = location.split(target.host, 1)[-1]
    conn.putrequest("PUT", path + ("&" if "?" in path else "?") + "digest=" + digest)
    conn.putheader("Content-Length", str(size))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    view = memoryview(data)
    for offset in range(0, size, MIB):
        conn.send(view[offset:offset + MIB])
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    assert response.status == 201, response.status
    conn.close()
    return size / MIB / elapsed


def run_engine(source: Registry, target: Registry, refs: list[str]) -> dict[str, Any]:
    """RegistryEngine.copy_all in a fresh process: its own time, bytes and peak RSS."""
    spec = {"source": source.host, "target": target.host, "refs": refs}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"engine worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage: ru_maxrss survives exec and so would
    report the parent's size at fork (the parent holds the image set in memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict[str, Any]) -> None:
    from manifests_rewriter.model import Mapping
    from manifests_rewriter.reference import parse
    from mirror.engines.registry import RegistryEngine
    from mirror.registry.credentials import fixed_keychain
    from mirror.settings import CopySettings, MirrorSettings, RegistrySettings

    hosts = {spec["source"]: RegistrySettings(insecure=True), spec["target"]: RegistrySettings(insecure=True)}
    config = MirrorSettings(registries=hosts, copy=CopySettings(concurrency=8))
    mappings = [Mapping(parse(f"{spec['source']}/{r}"), parse(f"{spec['target']}/{r}")) for r in spec["refs"]]
    with RegistryEngine(config, keychain=fixed_keychain(lambda host: None)) as engine:
        start = time.perf_counter()
        results = engine.copy_all(mappings)
        elapsed = time.perf_counter() - start
    failed = [r.error for r in results if r.status == "failed"]
    print(json.dumps({
        "seconds": elapsed, "bytes_moved": sum(r.bytes_moved for r in results),
        "statuses": sorted({r.status for r in results}), "failed": failed,
        "maxrss_mb": peak_rss_mb(),
        "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    }))


def children_cpu() -> float:
    """CPU seconds (user+sys) of the children this process has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def skopeo_sync(source: Registry, target: Registry, refs: list[str], workdir: Path) -> tuple[float, float]:
    """Wall seconds and skopeo's CPU seconds for one `skopeo sync --all`."""
    images: dict[str, list[str]] = {}
    for ref in refs:
        repo, _, tag = ref.rpartition(":")
        images.setdefault(repo, []).append(tag)
    spec = workdir / "sync.yaml"
    lines = [f"{source.host}:", "  tls-verify: false", "  images:"]
    lines += [f"    {repo}: [{', '.join(json.dumps(t) for t in tags)}]" for repo, tags in images.items()]
    spec.write_text("\n".join(lines) + "\n")
    start, cpu = time.perf_counter(), children_cpu()
    skopeo("sync", "--all", "--src", "yaml", "--dest", "docker", *registry_options(target, "dest-"),
           str(spec), f"{target.host}/skopeo-sync")
    return time.perf_counter() - start, children_cpu() - cpu


def skopeo_copy(source: Registry, target: Registry, refs: list[str]) -> float:
    start = time.perf_counter()
    for ref in refs:
        skopeo("copy", "--all", *registry_options(source, "src-"), *registry_options(target, "dest-"),
               f"docker://{source.host}/{ref}", f"docker://{target.host}/skopeo-copy/{ref}")
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size factor of the 10-image set (1.0: ~460 MiB)")
    parser.add_argument("--large-mib", type=int, default=512, help="size of the large single layer")
    parser.add_argument("--repeat", type=int, default=2, help="cold runs per tool (best is reported)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    with bench_registries(args.scale, args.large_mib, "bench-sync-") as (workdir, source, target, images):
        return measure(args, workdir, source, target, images)


@contextlib.contextmanager
def bench_registries(scale: float, large_mib: int, prefix: str) -> Iterator[
        tuple[Path, Registry, Registry, dict[str, OciImage]]]:
    """Two local registries, the source seeded with the bench set (also used by bench_docker)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        source = start_registry(workdir / "source")
        target = start_registry(workdir / "target")
        try:
            started = time.perf_counter()
            images = build_set(workdir / "images", scale, large_mib)
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda item: push(item[1], source, *item[0].rsplit(":", 1)), images.items()))
            print(f"seeded {len(images)} images in {time.perf_counter() - started:.1f} s", flush=True)
            yield workdir, source, target, images
        finally:
            source.stop()
            target.stop()


def measure(args: argparse.Namespace, workdir: Path, source: Registry, target: Registry,
            images: dict[str, OciImage]) -> int:
    ten = [r for r in images if r.startswith("bench/app")]
    twelve = list(images)
    unique10: dict[str, int] = {}
    for ref in ten:
        unique10.update(blob_sizes(images[ref]))
    unique12 = dict(unique10)
    for ref in twelve:
        unique12.update(blob_sizes(images[ref]))
    print(f"10-image set {sum(unique10.values()) / MIB:.0f} MiB unique, large layer {args.large_mib} MiB", flush=True)

    ceiling = max(bare_put(target, 256 * MIB, f"ceiling-{i}") for i in range(2))
    target.wipe()
    runs: dict[str, list[float]] = {"skopeo sync": [], "skopeo copy": [], "acr-mirror": []}
    moved10 = 0
    cpu: list[float] = []
    skopeo_cpu: list[float] = []
    for _ in range(args.repeat):
        target.wipe()
        seconds, skopeo_seconds = skopeo_sync(source, target, ten, workdir)
        runs["skopeo sync"].append(seconds)
        skopeo_cpu.append(skopeo_seconds)
        target.wipe()
        result = run_engine(source, target, ten)
        assert result["statuses"] == ["copied"], result
        runs["acr-mirror"].append(result["seconds"])
        cpu.append(result["cpu_seconds"])
        moved10 = result["bytes_moved"]
        target.wipe()
        runs["skopeo copy"].append(skopeo_copy(source, target, ten))
    best = {name: min(times) for name, times in runs.items()}

    target.wipe()
    cold12 = run_engine(source, target, twelve)
    noop = run_engine(source, target, twelve)
    assert noop["statuses"] == ["present"], noop
    target.wipe()
    large = run_engine(source, target, ["bench/large:1.0"])
    target.wipe()
    skopeo_large = skopeo_copy(source, target, ["bench/large:1.0"])
    target.wipe()

    mib10 = sum(unique10.values()) / MIB
    speedup = best["skopeo sync"] / best["acr-mirror"]
    rows = [
        ("bare PUT ceiling (256 MiB blob, http.client)", 256 / ceiling, ceiling, ""),
        ("skopeo sync --all, 10 images", best["skopeo sync"], mib10 / best["skopeo sync"], "1.00x"),
        ("skopeo copy --all per image, 10 images", best["skopeo copy"], mib10 / best["skopeo copy"],
         f"{best['skopeo sync'] / best['skopeo copy']:.2f}x"),
        ("acr-mirror copy_all, 10 images", best["acr-mirror"], mib10 / best["acr-mirror"], f"{speedup:.2f}x"),
        ("acr-mirror copy_all, 12 images (+index, large)", cold12["seconds"],
         sum(unique12.values()) / MIB / cold12["seconds"], ""),
        ("acr-mirror no-op re-sync, 12 images", noop["seconds"], 0.0, ""),
        (f"acr-mirror large image ({args.large_mib} MiB layer)", large["seconds"], args.large_mib / large["seconds"],
         ""),
        (f"skopeo copy large image ({args.large_mib} MiB layer)", skopeo_large, args.large_mib / skopeo_large, ""),
    ]
    print(f"\n{'measurement':<50} {'seconds':>8} {'MiB/s':>8} {'vs skopeo sync':>15}")
    for name, seconds, rate, ratio in rows:
        print(f"{name:<50} {seconds:>8.2f} {rate:>8.0f} {ratio:>15}")
    gib10 = sum(unique10.values()) / (1024 * MIB)
    cpu_ratio = min(cpu) / min(skopeo_cpu)
    print(f"\nclient CPU on the 10-image set (user+sys, incl. start-up): acr-mirror {min(cpu):.2f} s "
          f"({min(cpu) / gib10:.2f} s/GiB), skopeo sync {min(skopeo_cpu):.2f} s ({min(skopeo_cpu) / gib10:.2f} s/GiB)")
    print("all cold runs (s): " + "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in runs.items()))
    checks = [
        (f"acr-mirror >= {GOAL_SPEEDUP}x skopeo sync on the 10-image set", speedup >= GOAL_SPEEDUP, f"{speedup:.2f}x"),
        (f"acr-mirror client CPU per GiB <= {GOAL_CPU_RATIO}x skopeo's (10-image set)", cpu_ratio <= GOAL_CPU_RATIO,
         f"{cpu_ratio:.2f}x"),
        ("acr-mirror at >= 80% of the bare PUT ceiling (10-image set; small --scale is latency-bound)",
         mib10 / best["acr-mirror"] >= 0.8 * ceiling, f"{mib10 / best['acr-mirror'] / ceiling:.0%}"),
        ("bytes moved = unique blob bytes (10 images)", moved10 == sum(unique10.values()),
         f"{moved10} of {sum(unique10.values())}"),
        ("bytes moved = unique blob bytes (12 images)", cold12["bytes_moved"] == sum(unique12.values()),
         f"{cold12['bytes_moved']} of {sum(unique12.values())}"),
        (f"no-op re-sync of 12 images < {GOAL_NOOP_SECONDS:.0f} s", noop["seconds"] < GOAL_NOOP_SECONDS,
         f"{noop['seconds']:.3f} s"),
        (f"peak RSS copying the large image < {GOAL_RSS_MB} MB", large["maxrss_mb"] < GOAL_RSS_MB,
         f"{large['maxrss_mb']:.0f} MB"),
    ]
    print()
    for text, ok, value in checks:
        print(f"{'ok  ' if ok else 'MISS'} {text}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
