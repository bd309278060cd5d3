"""Sync over a WAN-shaped link: acr-mirror vs `skopeo sync --all` vs the link floor (issue 12).

Real migrations pull from Docker Hub or registry.k8s.io across the internet and push to an ACR
in another region: latency and bandwidth bound them, not loopback. Here two real registries
(source and target) each sit behind their own wanproxy (bench/wanproxy.py: one-way delay each
way, a token bucket per direction shared by all connections of that link, a handshake RTT per
new connection), and both tools copy the same images through them, side by side:

- set "12": 10 images sharing 3 of their 5 8-MiB layers, a 2-platform index (each platform a
  shared base layer + its own 16 MiB), one 128 MiB single-layer image (~344 MiB unique);
- set "50": 50 small images built like real ones: 4 distro bases, 6 runtimes on top of them,
  1-3 own layers per image (sizes log-uniform), ~421 MiB unique.

Profiles: 40 ms RTT / 400 Mbit/s and 100 ms RTT / 100 Mbit/s per direction.
Measured: skopeo sync --all (a private mount namespace with its own blob-info cache, see
tests/support/images.py) and acr-mirror's RegistryEngine.copy_all (a fresh process, timed around
the call, as bench/bench_sync.py does); the target is wiped before every cold run; each
figure is the best of --repeat runs (the runs alternate between the tools).

The floor: unique bytes ÷ bandwidth + 5 RTT. Both links carry every unique byte once (source
downlink, target uplink) and can do so at the same time, so the bytes cost bytes ÷ bandwidth
once; then at least 5 round trips cannot overlap with that transfer: the TCP handshake to the
source, the manifest GET (the digests of the blobs come from it), the first blob GET's
request (its data starts one RTT after it is asked), the last blob PUT's last byte reaching
the target and its answer coming back, and the tag's manifest PUT after all blobs (an image
is complete only then). Everything else (pings, HEADs, upload POSTs, other images) can overlap.

Usage: python bench/bench_wan.py [--quick] [--repeat 2] [--sets 12,50] [--profiles 40/400,100/100]
       [--trace DIR]   also write every HTTP exchange seen by the proxies (JSON); bench/wan_trace.py reads them
       python bench/bench_wan.py --loopback [--profile FILE]   the 12-image set without proxies: wall time
                       and client CPU-seconds per GiB of both tools; acr-mirror once more under py-spy
       --tools acr-mirror  skip skopeo;  --concurrency N --per-registry-limit N  acr-mirror's copy settings;
       --experiment read1m|nohead|tagget|nosig  what-ifs patched into acr-mirror's worker only (EXPERIMENTS)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "manifests-rewriter"), str(HERE)]

from bench_sync import blob_sizes, layer, skopeo_sync  # noqa: E402
from wanproxy import Exchange, Loop, WanProxy  # noqa: E402

import tests.support.images as test_images  # noqa: E402
from tests.support.images import OciImage, build_image, build_index, push  # noqa: E402
from tests.support.registries import Registry, start_registry  # noqa: E402

MIB = 1024 * 1024
PROFILES = {"40/400": (40.0, 400.0), "100/100": (100.0, 100.0)}  # RTT ms, Mbit/s per direction
FLOOR_RTTS = 5  # see the module docstring
test_images.SKOPEO_TIMEOUT = 3600  # skopeo sync of 50 images over 100 ms takes minutes


# ----------------------------------------------------------------------------- image sets


def build_twelve(workdir: Path, scale: float) -> dict[str, OciImage]:
    """Issue 12's set: 10 images × (3 shared + 2 own 8-MiB layers), a 2-platform index, a 128 MiB image."""
    size = int(8 * MIB * scale)
    shared = [layer(size, f"wan12/base-{i}") for i in range(3)]
    images: dict[str, OciImage] = {}
    for i in range(10):
        own = [layer(size, f"wan12/app{i}/own-{j}") for j in range(2)]
        images[f"wan12/app{i}:1.0"] = build_image(workdir, layers=[*shared, *own], seed=f"wan12/app{i}")
    images["wan12/multi:1.0"] = build_index(workdir, shared_layers=[shared[0]], unique_layer=2 * size,
                                            seed="wan12/multi")
    images["wan12/large:1.0"] = build_image(workdir, layers=[layer(int(128 * MIB * scale), "wan12/large")],
                                            seed="wan12/large")
    return images


BASES = {"alpine": 3.4, "debian-slim": 29.0, "ubuntu": 28.5, "distroless": 2.4}  # MiB
RUNTIMES = {"python": ("debian-slim", 17.0), "node": ("debian-slim", 42.0), "jre": ("ubuntu", 48.0),
            "nginx": ("debian-slim", 14.0), "go-tools": ("alpine", 9.0), "ruby": ("debian-slim", 24.0)}


def build_fifty(workdir: Path, scale: float, count: int = 50, unique_mib: float = 421.0) -> dict[str, OciImage]:
    """`count` small images sharing layers as real fleets do: most on one of 6 runtimes (each
    on its distro base), the rest straight on a base; 1-3 own layers each (log-uniform, 64 KiB
    to 24 MiB) scaled so that the set holds about `unique_mib` × scale MiB of unique blobs."""
    rng = random.Random("wan50")
    stacks: list[list[str]] = []
    own_sizes: list[list[float]] = []
    for _ in range(count):
        if rng.random() < 0.75:
            runtime = rng.choice(sorted(RUNTIMES))
            stacks.append([RUNTIMES[runtime][0], runtime])
        else:
            stacks.append([rng.choice(sorted(BASES))])
        own_sizes.append([math.exp(rng.uniform(math.log(0.0625), math.log(24.0))) for _ in range(rng.randint(1, 3))])
    used = {name for stack in stacks for name in stack}
    common = sum(BASES.get(n) or RUNTIMES[n][1] for n in used)
    factor = max(0.0, unique_mib - common) / sum(map(sum, own_sizes))
    common_layers = {n: layer(int((BASES.get(n) or RUNTIMES[n][1]) * MIB * scale), f"wan50/{n}") for n in used}
    images: dict[str, OciImage] = {}
    for i, (stack, sizes) in enumerate(zip(stacks, own_sizes, strict=True)):
        own = [layer(max(1024, int(s * factor * MIB * scale)), f"wan50/svc{i:02d}/own-{j}") for j, s in enumerate(sizes)]
        images[f"wan50/svc{i:02d}:1.{i % 4}"] = build_image(
            workdir, layers=[*(common_layers[n] for n in stack), *own], seed=f"wan50/svc{i:02d}")
    return images


def unique_bytes(images: dict[str, OciImage]) -> int:
    """Every distinct blob and manifest of the set: what must cross each link at least once."""
    sizes: dict[str, int] = {}
    for image in images.values():
        sizes.update(blob_sizes(image))
        sizes[image.manifest_digest] = len(image.manifest)
        sizes.update({c.manifest_digest: len(c.manifest) for c in image.children})
    return sum(sizes.values())


@contextlib.contextmanager
def seeded(name: str, scale: float, fifty_count: int) -> Iterator[tuple[Registry, Registry, dict[str, OciImage]]]:
    with tempfile.TemporaryDirectory(prefix=f"bench-wan{name}-") as tmp:
        workdir = Path(tmp)
        source = start_registry(workdir / "source")
        target = start_registry(workdir / "target")
        try:
            started = time.perf_counter()
            if name == "12":
                images = build_twelve(workdir / "images", scale)
            else:
                images = build_fifty(workdir / "images", scale, fifty_count)
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda item: push(item[1], source, *item[0].rsplit(":", 1)), images.items()))
            print(f"set {name}: seeded {len(images)} images, {unique_bytes(images) / MIB:.0f} MiB unique, "
                  f"in {time.perf_counter() - started:.0f} s", flush=True)
            yield source, target, images
        finally:
            source.stop()
            target.stop()


# ----------------------------------------------------------------------------- the tools


def via(registry: Registry, proxy: WanProxy | None) -> Registry:
    """The registry as a client sees it through the proxy (same storage, the proxy's address)."""
    if proxy is None:
        return registry
    return dataclasses.replace(registry, host=proxy.host, url=f"http://{proxy.host}", process=None)


ENGINE_SETTINGS: dict[str, Any] = {}  # CopySettings overrides (--concurrency, --per-registry-limit)
# What-ifs patched into the worker only (no product change), to size a proposal before building it.
EXPERIMENTS = {
    "read1m": "httpcore reads 1 MiB per recv instead of 64 KiB",
    "nohead": "no blob HEAD at the target (right only for a cold target, as here)",
    "tagget": "one manifest GET by tag at the source instead of HEAD by tag + GET by digest",
    "nosig": "copy.signatures off (no tags list / referrers per image)",
}


def run_engine(source: str, target: str, refs: list[str], *, profile: Path | None = None) -> dict[str, Any]:
    """RegistryEngine.copy_all in a fresh process (its own time, bytes, CPU); under py-spy when `profile`."""
    spec = {"source": source, "target": target, "refs": refs, "settings": ENGINE_SETTINGS}
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    if profile is not None:
        py_spy = Path(sys.executable).parent / "py-spy"
        command = [str(py_spy), "record", "--rate", "250", "--format", "raw", "--output", str(profile),
                   "--nonblocking", "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"engine worker failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def worker(spec: dict[str, Any]) -> None:
    """The same engine set-up as bench_sync's worker, plus request counts per host and copy CPU."""
    from manifests_rewriter.model import Mapping
    from manifests_rewriter.reference import parse
    from mirror.engines.registry import RegistryEngine
    from mirror.registry.credentials import fixed_keychain
    from mirror.settings import CopySettings, MirrorSettings, RegistrySettings

    hosts = {spec["source"]: RegistrySettings(insecure=True), spec["target"]: RegistrySettings(insecure=True)}
    settings = {"concurrency": 8, **spec.get("settings", {})}
    experiments = settings.pop("experiments", [])
    _patch(experiments, settings)
    config = MirrorSettings(registries=hosts, copy=CopySettings(**settings))
    mappings = [Mapping(parse(f"{spec['source']}/{r}"), parse(f"{spec['target']}/{r}")) for r in spec["refs"]]
    with RegistryEngine(config, keychain=fixed_keychain(lambda host: None)) as engine:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = engine.copy_all(mappings)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        requests = {host: dict(engine.client(host).requests) for host in (spec["source"], spec["target"])}
    print(json.dumps({
        "seconds": elapsed, "bytes_moved": sum(r.bytes_moved for r in results),
        "statuses": sorted({r.status for r in results}), "failed": [r.error for r in results if r.error],
        "blobs": {k: sum(getattr(r, f"blobs_{k}") for r in results) for k in ("copied", "mounted", "skipped")},
        "cpu_copy": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "cpu_total": after.ru_utime + after.ru_stime, "requests": requests,
    }))


def _patch(experiments: list[str], settings: dict[str, Any]) -> None:
    """Apply the what-ifs of EXPERIMENTS to this worker process only."""
    from mirror.engines.registry import RegistryEngine
    from mirror.registry.client import Repository

    if "read1m" in experiments:
        import httpcore._sync.http11 as http11

        http11.HTTP11Connection.READ_NUM_BYTES = 1 << 20
    if "nohead" in experiments:
        Repository.head_blob = lambda self, digest: None  # type: ignore[method-assign]
    if "nosig" in experiments:
        settings["signatures"] = False
    if "tagget" in experiments:
        fetched: dict[tuple[str, str], Any] = {}
        get_manifest = Repository.get_manifest

        def source_digest(self: Any, src: Repository, ref: Any) -> str:
            manifest = get_manifest(src, ref.reference)
            fetched[(src.name, manifest.digest)] = manifest
            return manifest.digest

        def cached_get(self: Repository, reference: str) -> Any:
            return fetched.pop((self.name, reference), None) or get_manifest(self, reference)

        RegistryEngine._source_digest = source_digest  # type: ignore[method-assign]
        Repository.get_manifest = cached_get  # type: ignore[method-assign]


def run_skopeo(source: Registry, target: Registry, refs: list[str], workdir: Path) -> dict[str, Any]:
    """skopeo sync --all, timed, with its CPU (a waited-for child's rusage)."""
    seconds, cpu = skopeo_sync(source, target, refs, workdir)
    return {"seconds": seconds, "cpu_copy": cpu}


# ----------------------------------------------------------------------------- traces


def classify(exchange: Exchange) -> str:
    path, method = exchange.path.split("?")[0], exchange.method
    if path.rstrip("/") == "/v2":
        return "ping"
    if "/manifests/" in path:
        return f"manifest {method}"
    if "/blobs/uploads" in path:
        if method == "POST":
            return "mount POST" if "mount=" in exchange.path else "upload POST"
        return f"upload {method}"
    if "/blobs/" in path:
        return f"blob {method}"
    if path.endswith("/tags/list"):
        return "tags list"
    if "/referrers/" in path:
        return "referrers"
    return f"other {method}"


def summarize(exchanges: list[Exchange], seconds: float) -> dict[str, Any]:
    """Counts by kind, connections, and requests in flight over time."""
    kinds = Counter(classify(e) for e in exchanges)
    conns = len({e.conn for e in exchanges})
    busy = sum(max(0.0, (e.done or e.first) - e.sent) for e in exchanges)
    ends = sorted([(e.sent, 1) for e in exchanges] + [((e.done or e.first or e.sent), -1) for e in exchanges])
    level = peak = 0
    for _, step in ends:
        level += step
        peak = max(peak, level)
    return {"requests": len(exchanges), "connections": conns, "kinds": dict(sorted(kinds.items())),
            "mean_in_flight": busy / seconds if seconds else 0.0, "peak_in_flight": peak}


# ----------------------------------------------------------------------------- main


GOAL_FLOOR_RATIO = 1.25


def floor_seconds(nbytes: int, rtt_ms: float, mbit: float) -> float:
    return nbytes * 8 / (mbit * 1e6) + FLOOR_RTTS * rtt_ms / 1000


def measure_set(name: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    with seeded(name, args.scale, args.fifty) as (source, target, images), \
            tempfile.TemporaryDirectory(prefix="bench-wan-run-") as tmp:
        refs = list(images)
        unique = unique_bytes(images)
        loop = Loop()
        try:
            for profile in args.profiles:
                rtt_ms, mbit = PROFILES[profile]
                proxies = [WanProxy(("127.0.0.1", r.port), rtt=rtt_ms / 1000, mbit=mbit, trace=True, loop=loop)
                           for r in (source, target)]
                for proxy in proxies:
                    proxy.start()
                src, dst = via(source, proxies[0]), via(target, proxies[1])
                runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in args.tools}
                for _ in range(args.repeat):
                    for tool in args.tools:
                        target.wipe()
                        for proxy in proxies:
                            proxy.reset()
                        if tool == "skopeo":
                            run = run_skopeo(src, dst, refs, Path(tmp))
                        else:
                            run = run_engine(src.host, dst.host, refs)
                            if run["failed"]:
                                raise RuntimeError(f"acr-mirror failed: {run['failed'][:3]}")
                        source_stats, target_stats = (proxy.reset() for proxy in proxies)
                        run["up_bytes"] = target_stats.up_bytes
                        run["down_bytes"] = source_stats.down_bytes
                        run["source"] = summarize(source_stats.exchanges, run["seconds"])
                        run["target"] = summarize(target_stats.exchanges, run["seconds"])
                        run["load"] = os.getloadavg()[0]
                        runs[tool].append(run)
                        print(f"  set {name} {profile}: {tool} {run['seconds']:.1f} s (load average {run['load']:.1f})",
                              flush=True)
                        if args.trace:
                            out = args.trace / f"{name}-{profile.replace('/', '_')}-{tool}-{len(runs[tool])}.json"
                            out.write_text(json.dumps({
                                "seconds": run["seconds"],
                                "source": [dataclasses.asdict(e) for e in source_stats.exchanges],
                                "target": [dataclasses.asdict(e) for e in target_stats.exchanges]}))
                for proxy in proxies:
                    proxy.stop()
                best = {tool: min(r, key=lambda x: x["seconds"]) for tool, r in runs.items()}
                rows.append({"set": f"{name} ({len(refs)} images)", "profile": profile, "unique": unique,
                             "floor": floor_seconds(unique, rtt_ms, mbit), "best": best, "runs": runs})
        finally:
            loop.close()


def measure_loopback(args: argparse.Namespace) -> None:
    """No link: the client's CPU decides (the registries share the 2 cores with it)."""
    with seeded("12", args.scale, args.fifty) as (source, target, images), \
            tempfile.TemporaryDirectory(prefix="bench-wan-run-") as tmp:
        refs, unique = list(images), unique_bytes(images)
        runs: dict[str, list[dict[str, Any]]] = {"skopeo": [], "acr-mirror": []}
        for _ in range(args.repeat):
            for tool in runs:
                target.wipe()
                run = run_skopeo(source, target, refs, Path(tmp)) if tool == "skopeo" else \
                    run_engine(source.host, target.host, refs)
                runs[tool].append(run)
        print(f"\nloopback, 12-image set ({unique / MIB:.0f} MiB unique), best of {args.repeat}; "
              "CPU = the client process's user+sys during the copy")
        gib = unique / MIB / 1024
        print(f"{'tool':<12} {'wall s':>7} {'CPU s':>7} {'CPU s/GiB':>10} {'+start-up':>10}   all runs (wall/CPU s)")
        for tool, tool_runs in runs.items():
            best = min(tool_runs, key=lambda r: r["seconds"])
            cpu = min(r["cpu_copy"] for r in tool_runs)
            whole = min(r.get("cpu_total", r["cpu_copy"]) for r in tool_runs)
            print(f"{tool:<12} {best['seconds']:>7.2f} {cpu:>7.2f} {cpu / gib:>10.2f} {whole / gib:>10.2f}   "
                  + ", ".join(f"{r['seconds']:.2f}/{r['cpu_copy']:.2f}" for r in tool_runs))
        print("(CPU s: during the copy; +start-up: the whole process, imports included, per GiB; "
              f"load average now {os.getloadavg()[0]:.1f})")
        if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
            print("\npy-spy is not installed in this venv (pip install py-spy): no profile")
        elif args.profile:
            target.wipe()
            run = run_engine(source.host, target.host, refs, profile=args.profile)
            print(f"\nacr-mirror under py-spy: {run['seconds']:.2f} s, {run['cpu_copy']:.2f} CPU s; "
                  f"samples in {args.profile}")
            print_profile(args.profile)


def print_profile(path: Path, top: int = 20) -> None:
    """py-spy's raw stacks: the innermost Python frame of each sample, grouped by what it does."""
    leaves: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        leaf = stack.split(";")[-1]
        leaves[leaf] += samples
        groups[_profile_group(stack, leaf)] += samples
    if not total:
        print("no samples")
        return
    print(f"{total} samples (the process's CPU, start-up included), by the innermost frame:")
    for group, samples in groups.most_common():
        print(f"  {group:<48} {samples / total:6.1%}")
    print("innermost Python frames:")
    for frame, samples in leaves.most_common(top):
        print(f"  {samples / total:6.1%}  {frame[:140]}")


def _profile_group(stack: str, leaf: str) -> str:
    if "_find_and_load" in stack or "<module>" in leaf:
        return "start-up: imports"
    if leaf.startswith("SyncStream.read "):
        return "socket recv (httpcore, 64 KiB reads)"
    if leaf.startswith("SyncStream.write "):
        return "socket send (httpcore send loop)"
    if leaf.startswith("BlobStream.chunks "):
        return "BlobStream.chunks: sha256 update and the loop"
    for prefix, name in (("h11/", "h11: HTTP/1.1 framing and parsing"), ("httpcore/", "httpcore: pool, locks, events"),
                         ("httpx/", "httpx: streams, decoders, models"), ("mirror/", "mirror: own code"),
                         ("tenacity/", "tenacity"), ("json/", "json"),
                         ("threading.py", "threads: waits, locks, pool"), ("concurrent/", "threads: waits, locks, pool"),
                         ("ssl.py", "ssl contexts (httpx client set-up)")):
        if f"({prefix}" in leaf or f"/{prefix}" in leaf:
            return name
    return "other"


def print_table(rows: list[dict[str, Any]], repeat: int) -> None:
    print(f"\nWAN-shaped sync, best of {repeat} cold runs per tool (target wiped before each); "
          f"floor = unique bytes ÷ bandwidth + {FLOOR_RTTS} RTT")
    header = (f"{'set':<16} {'profile':<12} {'skopeo s':>9} {'acr-mirror s':>13} {'floor s':>8} "
              f"{'acr/floor':>10} {'vs skopeo':>10} {'MiB moved':>10} {'unique MiB':>11}")
    print(header)
    print("-" * len(header))
    none = {"seconds": math.nan, "up_bytes": 0}
    for row in rows:
        skopeo, acr = row["best"].get("skopeo", none), row["best"].get("acr-mirror", none)
        rtt_ms, mbit = PROFILES[row["profile"]]
        print(f"{row['set']:<16} {f'{rtt_ms:g} ms/{mbit:g} Mb':<12} {skopeo['seconds']:>9.1f} "
              f"{acr['seconds']:>13.1f} {row['floor']:>8.1f} {acr['seconds'] / row['floor']:>9.2f}x "
              f"{skopeo['seconds'] / acr['seconds']:>9.2f}x {acr['up_bytes'] / MIB:>10.0f} {row['unique'] / MIB:>11.0f}")
    print("\nrequests through each link in the best runs (source | target), connections opened, peak in flight:")
    for row in rows:
        for tool in row["best"]:
            run = row["best"][tool]
            print(f"  {row['set']:<16} {row['profile']:<8} {tool:<10} "
                  f"src {run['source']['requests']:>4} req / {run['source']['connections']:>3} conn / "
                  f"peak {run['source']['peak_in_flight']:>2} | dst {run['target']['requests']:>4} req / "
                  f"{run['target']['connections']:>3} conn / peak {run['target']['peak_in_flight']:>2} | "
                  f"MiB down {run['down_bytes'] / MIB:.0f}, up {run['up_bytes'] / MIB:.0f}")
    print("all runs (s, 1-min load average after it): " + "; ".join(
        f"{r['set'].split()[0]} {r['profile']} {tool} "
        + ", ".join(f"{x['seconds']:.1f} ({x['load']:.1f})" for x in r["runs"][tool])
        for r in rows for tool in r["runs"]))
    for row in rows:  # issue 12's goal: the 50-image set within GOAL_FLOOR_RATIO of the floor, both profiles
        acr = row["best"].get("acr-mirror")
        if acr is not None and row["set"].startswith("50 "):
            ratio = acr["seconds"] / row["floor"]
            print(f"{'ok  ' if ratio <= GOAL_FLOOR_RATIO else 'MISS'} {row['set']} at {row['profile']} within "
                  f"{GOAL_FLOOR_RATIO}x of the link floor: {ratio:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes × 0.25, 20 small images, one run each")
    parser.add_argument("--repeat", type=int, default=2, help="cold runs per tool and profile (best is reported)")
    parser.add_argument("--sets", default="12,50", help="which image sets: 12, 50 or both")
    parser.add_argument("--profiles", default=",".join(PROFILES), help=f"of {', '.join(PROFILES)}")
    parser.add_argument("--scale", type=float, default=1.0, help="size factor of every layer")
    parser.add_argument("--fifty", type=int, default=50, help="how many images in the small-image set")
    parser.add_argument("--trace", type=Path, help="write each run's HTTP exchanges (JSON) into this directory")
    parser.add_argument("--tools", default="skopeo,acr-mirror", help="which tools to run (default both)")
    parser.add_argument("--concurrency", type=int, help="acr-mirror's copy.concurrency (default 8, as bench_sync)")
    parser.add_argument("--per-registry-limit", type=int, help="acr-mirror's copy.per_registry_limit (default 8)")
    parser.add_argument("--experiment", action="append", choices=sorted(EXPERIMENTS),
                        help="patch acr-mirror's worker: " + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()))
    parser.add_argument("--loopback", action="store_true", help="CPU per GiB on loopback instead (12-image set)")
    parser.add_argument("--profile", type=Path, help="with --loopback: py-spy samples of one more acr-mirror run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    for name in ("concurrency", "per_registry_limit"):
        if getattr(args, name):
            ENGINE_SETTINGS[name] = getattr(args, name)
    if args.experiment:
        ENGINE_SETTINGS["experiments"] = args.experiment
    if ENGINE_SETTINGS:
        print(f"acr-mirror copy settings: {ENGINE_SETTINGS}")
    if args.loopback:
        if args.quick:
            args.scale, args.repeat = min(args.scale, 0.25), 1
        measure_loopback(args)
        return 0
    if args.quick:
        args.scale, args.fifty, args.repeat = min(args.scale, 0.25), min(args.fifty, 20), 1
    args.profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip() in ("skopeo", "acr-mirror")]
    unknown = [p for p in args.profiles if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profile {unknown[0]!r}: choose from {', '.join(PROFILES)}")
    if args.trace:
        args.trace.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name not in ("12", "50"):
            parser.error(f"unknown set {name!r}: 12 or 50")
        measure_set(name, args, rows)
    print_table(rows, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
