"""The Docker-engine path vs the registry engine: wall time and fidelity, same images, same run.

The image set is bench_sync's (issue 3): 10 single-platform images sharing 3 of their 5 layers,
one 2-platform index, one single-layer large image; seeded once into a local source registry.
Each contender copies all 12 images cold into the same target registry (wiped before each):

- the registry engine (`mirror.engines.registry.RegistryEngine.copy_all`, in a fresh process, as bench_sync runs it);
- `DockerEngine.copy_all` on a private dockerd, started for the run with an empty image store;
- `DockerEngine.copy_all` on podman's Docker-compatible service, likewise.

Daemon start-up is not timed. After each cold run, a no-op re-run (everything present) is timed,
and what the target holds is compared with the source, per image, over the registry API:

- digests equal: the target tag serves the source's manifest digest;
- platforms kept: every platform of the source is in the target (an index has 2);
- image IDs equal: for each platform kept, the config digest (the image ID) is the source's.

Usage: python bench/bench_docker.py [--scale 1.0] [--large-mib 512] [--daemons dockerd,podman]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "manifests-rewriter")]

from manifests_rewriter.model import Mapping  # noqa: E402
from manifests_rewriter.reference import parse  # noqa: E402
from mirror.engines.docker import DockerEngine  # noqa: E402
from mirror.registry.client import RegistryClient  # noqa: E402
from mirror.registry.credentials import Credentials, fixed_keychain  # noqa: E402
from mirror.settings import CopySettings, DockerSettings, MirrorSettings, RegistrySettings  # noqa: E402
from tests.support.engines import DaemonStartError, running_daemon  # noqa: E402
from tests.support.images import OciImage  # noqa: E402
from tests.support.registries import Registry  # noqa: E402

MIB = 1024 * 1024

from bench.bench_sync import bench_registries, blob_sizes, run_engine  # noqa: E402 - the same image set

# ----------------------------------------------------------------------------- fidelity


@dataclass
class Fidelity:
    images: int = 0
    digests_equal: int = 0
    platforms_source: int = 0
    platforms_kept: int = 0
    ids_equal: int = 0  # platforms kept whose config digest (image ID) is the source's
    index_platforms: str = ""  # kept/source for the multi-platform image
    problems: list[str] = field(default_factory=list)


def platform_configs(client: RegistryClient, repository: str, reference: str) -> tuple[str, dict[str, str]]:
    """(manifest digest, {platform: config digest}) of what `repository:reference` serves."""
    repo = client.repo(repository)
    top = repo.get_manifest(reference)
    children = [(c.platform, repo.get_manifest(c.digest)) for c in top.children
                if c.platform and not c.platform.startswith("unknown/")] if top.is_index else [(None, top)]
    found: dict[str, str] = {}
    for platform, manifest in children:
        config = manifest.blobs[0]
        if platform is None:
            with repo.open_blob(config.digest, config.size) as stream:
                body = json.loads(b"".join(stream.chunks()))
            platform = "/".join(p for p in (body.get("os"), body.get("architecture"), body.get("variant")) if p)
        found[platform] = config.digest
    return top.digest, found


def fidelity(source: Registry, target: Registry, refs: list[str], prefix: str) -> Fidelity:
    result = Fidelity()
    with RegistryClient(source.host, RegistrySettings(insecure=True)) as src, \
            RegistryClient(target.host, RegistrySettings(insecure=True)) as dst:
        for ref in refs:
            repository, _, tag = ref.rpartition(":")
            source_digest, source_platforms = platform_configs(src, repository, tag)
            try:
                target_digest, target_platforms = platform_configs(dst, f"{prefix}{repository}", tag)
            except Exception as exc:
                result.problems.append(f"{ref}: {exc}")
                continue
            result.images += 1
            result.digests_equal += target_digest == source_digest
            result.platforms_source += len(source_platforms)
            kept = [p for p in source_platforms if p in target_platforms]
            result.platforms_kept += len(kept)
            result.ids_equal += sum(target_platforms[p] == source_platforms[p] for p in kept)
            if len(source_platforms) > 1:
                result.index_platforms = f"{len(kept)} of {len(source_platforms)}"
    return result


# ----------------------------------------------------------------------------- contenders


@dataclass
class Run:
    name: str
    seconds: float
    noop_seconds: float
    bytes_moved: int
    fidelity: Fidelity
    note: str = ""


def docker_run(kind: str, source: Registry, target: Registry, refs: list[str]) -> Run:
    """DockerEngine.copy_all on a fresh daemon (empty image store); then a no-op re-run."""
    with running_daemon(kind, [source.host, target.host]) as daemon:
        hosts = {source.host: RegistrySettings(insecure=True), target.host: RegistrySettings(insecure=True)}
        config = MirrorSettings(registries=hosts, copy=CopySettings(concurrency=8),
                                docker=DockerSettings(host=daemon.base_url))
        mappings = [Mapping(parse(source.ref(r)), parse(target.ref(r))) for r in refs]
        with DockerEngine(config, keychain=fixed_keychain(lambda host: Credentials())) as engine:
            label = engine.daemon.label
            start = time.perf_counter()
            results = engine.copy_all(mappings)
            seconds = time.perf_counter() - start
            failed = [f"{r.source}: {r.error}" for r in results if r.status != "copied"]
            if failed:
                raise RuntimeError(f"{label}: " + "; ".join(failed))
            start = time.perf_counter()
            again = engine.copy_all(mappings)
            noop = time.perf_counter() - start
        statuses = sorted({r.status for r in again})
        left = daemon.image_names()
    note = f"re-run: {', '.join(statuses)}" + (f"; {len(left)} local names left" if left else "; no local names left")
    return Run(f"DockerEngine on {label}", seconds, noop, sum(r.bytes_moved for r in results),
               fidelity(source, target, refs, ""), note)


def registry_run(source: Registry, target: Registry, refs: list[str]) -> Run:
    """bench_sync's worker: RegistryEngine in a fresh process, timed around copy_all; then a no-op re-run."""
    cold = run_engine(source, target, refs)
    if cold["failed"]:
        raise RuntimeError(f"registry engine: {cold['failed']}")
    noop = run_engine(source, target, refs)
    return Run("RegistryEngine (registry API)", cold["seconds"], noop["seconds"], cold["bytes_moved"],
               fidelity(source, target, refs, ""))


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size factor of the 10-image set (1.0: ~460 MiB)")
    parser.add_argument("--large-mib", type=int, default=512, help="size of the large single layer")
    parser.add_argument("--daemons", default="dockerd,podman", help="comma-separated: dockerd, podman")
    args = parser.parse_args()
    with bench_registries(args.scale, args.large_mib, "bench-docker-") as (workdir, source, target, images):
        return measure(args, workdir, source, target, images)


def measure(args: argparse.Namespace, workdir: Path, source: Registry, target: Registry,
            images: dict[str, OciImage]) -> int:
    refs = list(images)
    unique: dict[str, int] = {}
    for ref in refs:
        unique.update(blob_sizes(images[ref]))
    mib = sum(unique.values()) / MIB
    print(f"{len(refs)} images, {mib:.0f} MiB of unique blobs, one 2-platform index", flush=True)

    runs: list[Run] = []
    target.wipe()
    runs.append(registry_run(source, target, refs))
    print(f"  {runs[-1].name}: {runs[-1].seconds:.1f} s", flush=True)
    for kind in [k.strip() for k in args.daemons.split(",") if k.strip()]:
        target.wipe()
        try:
            runs.append(docker_run(kind, source, target, refs))
        except DaemonStartError as exc:
            print(f"  {kind}: skipped, cannot start it here: {exc}", flush=True)
            continue
        print(f"  {runs[-1].name}: {runs[-1].seconds:.1f} s", flush=True)
    target.wipe()

    base = runs[0].seconds
    header = (f"{'engine':<36} {'cold s':>7} {'MiB/s':>6} {'vs registry':>11} {'no-op s':>8} {'moved MiB':>9} "
              f"{'digests equal':>13} {'platforms kept':>14} {'index':>7} {'image IDs equal':>15}")
    print("\n" + header)
    for run in runs:
        f = run.fidelity
        print(f"{run.name:<36} {run.seconds:>7.2f} {mib / run.seconds:>6.0f} {run.seconds / base:>10.2f}x "
              f"{run.noop_seconds:>8.2f} {run.bytes_moved / MIB:>9.0f} {f'{f.digests_equal}/{f.images}':>13} "
              f"{f'{f.platforms_kept}/{f.platforms_source}':>14} {f.index_platforms:>7} "
              f"{f'{f.ids_equal}/{f.platforms_kept}':>15}")
    print("moved MiB: what each engine reports; podman does not say which layers it skipped, so its figure "
          "counts every layer of every image (an upper bound)")
    for run in runs:
        if run.note or run.fidelity.problems:
            print(f"{run.name}: {run.note}" + ("; problems: " + "; ".join(run.fidelity.problems)
                                                 if run.fidelity.problems else ""))
    registry = runs[0].fidelity
    ok = registry.digests_equal == registry.images == len(refs) and registry.platforms_kept == registry.platforms_source
    print(f"{'ok  ' if ok else 'MISS'} registry engine keeps every digest and platform: "
          f"{registry.digests_equal}/{registry.images} digests, {registry.platforms_kept}/{registry.platforms_source} "
          "platforms")
    for run in runs[1:]:
        print(f"     {run.name}: {run.seconds / base:.1f}x the registry engine's time, "
              f"{run.fidelity.digests_equal}/{run.fidelity.images} digests kept, "
              f"{run.fidelity.platforms_source - run.fidelity.platforms_kept} platform(s) dropped, "
              f"image IDs {run.fidelity.ids_equal}/{run.fidelity.platforms_kept} equal")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
