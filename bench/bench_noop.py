"""No-op re-sync of 1,000 images (issue 12 goal: under 3 s here).

Seeds 1,000 small images in 100 repositories (the load test's generator), copies them once, then
times `RegistryEngine.copy_all` over all 1,000 again in a fresh process: every image is already
in the target, so the run costs each image its HEADs and nothing else. Best of --repeat.

Two bare clients send the same HEADs in the same rounds: a bare httpx.Client (the library
acr-mirror's transport uses) and a bare httpcore pool (the least a Python client does). The
machine's floor is printed beside them: the two registries' own CPU for the HEADs plus the bare
pool's CPU, spread over the cores: an estimate of the least any client could take, since the
registries and the client share this machine's cores (not a strict bound: the registries' CPU
varies between runs).
Usage: python bench/bench_noop.py [--images 1000] [--repeat 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "manifests-rewriter")]

import httpx  # noqa: E402

from tests.reliability.test_load import REPOSITORIES, _push_image  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402

GOAL_SECONDS = 3.0
# The blob descriptor cache of the registry's stock config (Debian's /etc/docker/registry/config.yml
# has it; the test fixture leaves it out so tests can empty storage under a running registry).
STOCK_CACHE = {"storage": {"cache": {"blobdescriptor": "inmemory"}}}


def process_cpu(pid: int) -> float:
    """CPU seconds (user+sys) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def head_urls(spec: dict) -> list[str]:
    return [f"http://{host}/v2/{repo}/manifests/{tag}" for ref in spec["refs"]
            for repo, _, tag in [ref.rpartition(":")] for host in (spec["source"], spec["target"])]


ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def timed_heads(head: Callable[[str], int], spec: dict) -> dict:
    """Wall and CPU seconds of one bare client's HEADs (`head`: URL -> status), sent from as many
    threads as acr-mirror uses; every answer must be 200, or the comparison means nothing."""
    urls = head_urls(spec)
    with ThreadPoolExecutor(spec["concurrency"]) as workers:
        start, cpu = time.perf_counter(), time.process_time()
        statuses = set(workers.map(head, urls))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert statuses == {200}, statuses
    return {"seconds": seconds, "cpu": cpu, "statuses": sorted(statuses)}


def bare_httpcore(spec: dict) -> dict:
    """The same HEADs from a bare httpcore pool: the least a Python client does."""
    import httpcore

    with httpcore.ConnectionPool(max_connections=spec["concurrency"]) as pool:
        return timed_heads(lambda url: pool.request("HEAD", url, headers=list(ACCEPT.items())).status, spec)


def bare_httpx(spec: dict) -> dict:
    """The same HEADs from a bare httpx.Client, the HTTP library acr-mirror's transport uses."""
    with httpx.Client(timeout=60, headers=ACCEPT) as client:
        return timed_heads(lambda url: client.head(url).status_code, spec)


def acr_mirror(spec: dict) -> dict:
    from manifests_rewriter.model import Mapping
    from manifests_rewriter.reference import parse
    from mirror.engines.registry import RegistryEngine
    from mirror.registry.credentials import fixed_keychain
    from mirror.settings import CopySettings, MirrorSettings, RegistrySettings

    hosts = {h: RegistrySettings(insecure=True) for h in (spec["source"], spec["target"])}
    settings = MirrorSettings(registries=hosts, copy=CopySettings(concurrency=spec["concurrency"]))
    mappings = [Mapping(parse(f"{spec['source']}/{r}"), parse(f"{spec['target']}/{r}")) for r in spec["refs"]]
    with RegistryEngine(settings, keychain=fixed_keychain(lambda host: None)) as engine:
        start, cpu = time.perf_counter(), time.process_time()
        results = engine.copy_all(mappings)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        requests = {h: sum(engine.client(h).requests.values()) for h in (spec["source"], spec["target"])}
    return {"seconds": seconds, "cpu": cpu, "statuses": sorted({r.status for r in results}), "requests": requests}


CLIENTS = {"acr-mirror": acr_mirror, "bare httpx.Client": bare_httpx, "bare httpcore pool": bare_httpcore}


def run(client: str, spec: dict, registries: list) -> dict:
    """One client's run in a fresh process, with the registries' CPU over it."""
    before = sum(process_cpu(r.process.pid) for r in registries if r.process)
    out = subprocess.run([sys.executable, __file__, "--worker", client, json.dumps(spec)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.splitlines()[-1])
    result["registry_cpu"] = sum(process_cpu(r.process.pid) for r in registries if r.process) - before
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker", nargs=2, metavar=("CLIENT", "SPEC"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(CLIENTS[args.worker[0]](json.loads(args.worker[1]))))
        return 0
    runs: dict[str, list[dict]] = {name: [] for name in CLIENTS}
    with tempfile.TemporaryDirectory() as tmp:
        registries = [start_registry(Path(tmp) / name, extra_config=STOCK_CACHE) for name in ("source", "target")]
        source, target = registries
        try:
            with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda n: _push_image(client, source.url, n), range(min(REPOSITORIES, args.images))))
                refs = [ref for ref, _ in pool.map(lambda n: _push_image(client, source.url, n), range(args.images))]
            spec = {"source": source.host, "target": target.host, "refs": refs, "concurrency": args.concurrency}
            first = run("acr-mirror", spec, registries)
            assert first["statuses"] == ["copied"], first
            for _ in range(args.repeat):  # interleaved: each round's clients meet the same machine
                for name in CLIENTS:
                    runs[name].append(run(name, spec, registries))
        finally:
            for registry in registries:
                registry.stop()
    ours = runs["acr-mirror"]
    print(f"no-op re-sync of {args.images:,} images (concurrency {args.concurrency}): "
          f"{sum(ours[0]['requests'].values()):,} requests; statuses {ours[0]['statuses']}; best of {args.repeat}:")
    for name, results in runs.items():
        best = min(results, key=lambda r: r["seconds"])
        walls = ", ".join(f"{r['seconds']:.2f}" for r in results)
        print(f"  {name:19s} {best['seconds']:5.2f} s (runs {walls}); "
              f"client CPU {best['cpu']:.2f} s, the registries' CPU {best['registry_cpu']:.2f} s")
    cores = os.cpu_count() or 1
    registry_cpu = min(r["registry_cpu"] for r in runs["bare httpcore pool"])
    client_floor = min(r["cpu"] for r in runs["bare httpcore pool"])
    floor = (registry_cpu + client_floor) / cores
    best = min(r["seconds"] for r in ours)
    print(f"machine floor: the registries' CPU {registry_cpu:.2f} s + the bare pool's {client_floor:.2f} s, "
          f"over {cores} cores = {floor:.2f} s; acr-mirror at {best / floor:.2f}x the floor")
    ok = best < GOAL_SECONDS and all(r["statuses"] == ["present"] for r in ours)
    print(f"{'ok  ' if ok else 'MISS'} no-op re-sync of {args.images:,} images < {GOAL_SECONDS:.0f} s: {best:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
