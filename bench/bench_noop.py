"""No-op re-sync of 1,000 images (issue 12 goal: under 3 s here).

Seeds 1,000 small images in 100 repositories (the load test's generator), copies them once, then
times `RegistryEngine.copy_all` over all 1,000 again in a fresh process: every image is already
in the target, so the run costs each image its HEADs and nothing else. Best of --repeat.

The machine's floor is printed beside it: the two registries' own CPU for the same 2,002 HEADs
plus the CPU of a bare HTTP client (httpcore, no work beyond the requests), spread over the
cores: an estimate of the least any client could take, since the registries and the client share
this machine's cores (not a strict bound: the registries' CPU varies between runs).
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


def bare_heads(spec: dict) -> tuple[float, float]:
    """Wall and client CPU seconds of the same HEADs sent by a bare httpcore pool (the least a
    Python client does)."""
    import httpcore

    urls = [f"http://{host}/v2/{repo}/manifests/{tag}" for ref in spec["refs"]
            for repo, _, tag in [ref.rpartition(":")] for host in (spec["source"], spec["target"])]
    accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")]
    start, wall = time.process_time(), time.perf_counter()
    with httpcore.ConnectionPool(max_connections=spec["concurrency"]) as pool, \
            ThreadPoolExecutor(spec["concurrency"]) as workers:
        statuses = set(workers.map(lambda url: pool.request("HEAD", url, headers=accept).status, urls))
    assert statuses == {200}, statuses
    return time.perf_counter() - wall, time.process_time() - start


def worker(spec: dict) -> None:
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
    print(json.dumps({"seconds": seconds, "cpu": cpu, "statuses": sorted({r.status for r in results}), "requests": requests}))


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        source, target = (start_registry(Path(tmp) / name, extra_config=STOCK_CACHE) for name in ("source", "target"))
        try:
            with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda n: _push_image(client, source.url, n), range(min(REPOSITORIES, args.images))))
                refs = [ref for ref, _ in pool.map(lambda n: _push_image(client, source.url, n), range(args.images))]
            spec = {"source": source.host, "target": target.host, "refs": refs, "concurrency": args.concurrency}
            first = run(spec)
            assert first["statuses"] == ["copied"], first
            runs, registry_cpu = [], []
            for _ in range(args.repeat):
                before = sum(process_cpu(r.process.pid) for r in (source, target) if r.process)
                runs.append(run(spec))
                registry_cpu.append(sum(process_cpu(r.process.pid) for r in (source, target) if r.process) - before)
            bare_wall, client_floor = bare_heads(spec)
        finally:
            source.stop()
            target.stop()
    best = min(r["seconds"] for r in runs)
    all_runs = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    print(f"no-op re-sync of {args.images:,} images (concurrency {args.concurrency}): best {best:.2f} s "
          f"of {all_runs}; {sum(runs[0]['requests'].values()):,} requests; statuses {runs[0]['statuses']}")
    cores = os.cpu_count() or 1
    floor = (min(registry_cpu) + client_floor) / cores
    print(f"machine floor: the registries' CPU for these HEADs {min(registry_cpu):.2f} s + a bare client's "
          f"{client_floor:.2f} s, over {cores} cores = {floor:.2f} s; acr-mirror at {best / floor:.2f}x the floor")
    print(f"the same HEADs from a bare httpcore pool (concurrency {args.concurrency}): {bare_wall:.2f} s; "
          f"client CPU: acr-mirror {min(r['cpu'] for r in runs):.2f} s, the bare pool {client_floor:.2f} s")
    ok = best < GOAL_SECONDS and runs[0]["statuses"] == ["present"]
    print(f"{'ok  ' if ok else 'MISS'} no-op re-sync of {args.images:,} images < {GOAL_SECONDS:.0f} s: {best:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
