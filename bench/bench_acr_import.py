"""Bytes through the runner: the registry engine vs acr-import vs cache rules, on the served setup.

One source registry seeded with 10 single-platform images (3 shared layers + 2 of their own) and a
2-platform index; an empty target registry served as an ACR by the served ARM
(tests/support/arm.py, in this process), and the pull-through proxy in front of it
(tests/support/pullthrough.py). Each way runs the real CLI in a fresh worker process, cold (the
target emptied, no rules), on the same plan:

- `sync --plan --engine registry`: every blob streams through the worker;
- `sync --plan --engine acr-import`: ARM imports server-side (here the served ARM copies with
  skopeo on this machine, in the parent process: in Azure that copy happens inside Azure);
- `cache-rules --plan`: one rule for the upstream, then one manifest pull per image through the cache.

"Bytes through the runner" is what the worker process sent and received through sockets during
the command (counted in the socket methods), so requests, manifests, tokens and ARM's JSON count
too, not only image blobs. Also: wall time of the command, requests ARM answered, data-plane image
bytes the engine reports (bytes_moved).
Usage: python bench/bench_acr_import.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "manifests-rewriter"), str(ROOT / "bench")]

from bench_sync import MIB, blob_sizes, layer  # noqa: E402

from tests.support.arm import ArmServer  # noqa: E402
from tests.support.images import OciImage, build_image, build_index, push  # noqa: E402
from tests.support.pullthrough import PullThroughProxy  # noqa: E402
from tests.support.registries import start_registry  # noqa: E402

UPSTREAM = "docker.io"  # the source stands in for Docker Hub, so cache rules apply to it


def build_set(workdir: Path, scale: float) -> dict[str, OciImage]:
    shared = [layer(int(s * MIB * scale), f"acr-bench/base-{i}") for i, s in enumerate((4, 2, 1))]
    images: dict[str, OciImage] = {}
    for i in range(10):
        own = [layer(int((1 + i % 3) * MIB * scale), f"acr-bench/{i}/own-{j}") for j in range(2)]
        images[f"bench/app{i}:1.0"] = build_image(workdir, layers=[*shared, *own], seed=f"acr-bench/{i}")
    images["bench/multi:1.0"] = build_index(workdir, shared_layers=[shared[2]], unique_layer=int(MIB * scale),
                                            seed="acr-bench/multi")
    return images


class SocketBytes:
    """Bytes this process sends and receives through sockets (plain and TLS), counted in the
    socket methods the HTTP clients call (httpx/httpcore: sendall, recv; requests: ssl)."""

    def __init__(self) -> None:
        import socket
        import ssl

        self.total = 0
        self._wrap(socket.socket, "sendall", lambda args, result: memoryview(args[0]).nbytes)
        self._wrap(socket.socket, "send", lambda args, result: result)
        self._wrap(socket.socket, "recv", lambda args, result: len(result))
        self._wrap(socket.socket, "recv_into", lambda args, result: result)
        # TLS: SSLSocket overrides these; its sendall calls its send, so sendall is not counted twice
        self._wrap(ssl.SSLSocket, "send", lambda args, result: result)
        self._wrap(ssl.SSLSocket, "recv", lambda args, result: len(result))
        self._wrap(ssl.SSLSocket, "recv_into", lambda args, result: result)

    def _wrap(self, cls: type, name: str, size: Any) -> None:
        real = getattr(cls, name)

        def method(sock: Any, *args: Any, **kwargs: Any) -> Any:
            result = real(sock, *args, **kwargs)
            self.total += size(args, result) or 0
            return result

        setattr(cls, name, method)


def worker(spec: dict[str, Any]) -> None:
    """Run one CLI command; print what it cost this process."""
    from mirror.azure import identity
    from tests.support.arm import RecordingCredential

    identity._default = RecordingCredential(spec["token"])  # the served ARM's static token
    from mirror.cli import main

    counted = SocketBytes()
    before, start = counted.total, time.perf_counter()
    try:
        main(spec["args"], standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    elapsed, moved = time.perf_counter() - start, counted.total - before
    print(json.dumps({"seconds": elapsed, "io_bytes": moved, "exit": code}))


def run(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"worker failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["stderr"] = out.stderr
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size factor of the set (1.0: ~40 MiB unique)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    from manifests_rewriter.naming import target_for
    from manifests_rewriter.reference import parse
    from mirror.plan import Plan, PlanEntry

    with tempfile.TemporaryDirectory(prefix="bench-acr-") as tmp:
        workdir = Path(tmp)
        source, target = start_registry(workdir / "source"), start_registry(workdir / "target")
        arm = ArmServer(workdir / "arm", import_workers=4).start()
        try:
            images = build_set(workdir / "images", args.scale)
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda item: push(item[1], source, *item[0].rsplit(":", 1)), images.items()))
            unique: dict[str, int] = {}
            for image in images.values():
                unique.update(blob_sizes(image))
            arm.upstreams[UPSTREAM] = source
            acr = arm.add_registry("crbench", target, sku="Premium")
            proxy = PullThroughProxy(arm, acr)
            plan = Plan(target.host, "{registry}/{repository}")
            for ref in sorted(images):
                src = parse(f"{UPSTREAM}/{ref}")
                plan.entries.append(PlanEntry(str(src), str(target_for(src, target.host))))
            (workdir / "plan.json").write_text(plan.to_json())
            escaped = target.host.replace(".", r"\.")
            for name, endpoint in (("direct.yaml", target.url), ("cache.yaml", proxy.url)):
                (workdir / name).write_text(
                    f"target: {{registry: '{target.host}'}}\npolicy: {{imageRegex: '^{escaped}/.+$'}}\n"
                    f"registries:\n  {UPSTREAM}: {{endpoint: '{source.url}', insecure: true}}\n"
                    f"  '{target.host}': {{endpoint: '{endpoint}', insecure: true}}\n"
                    f"azure:\n  arm_endpoint: '{arm.url}'\n  ca_file: '{arm.ca_file}'\n"
                    f"  subscription: '{arm.subscription}'\n  poll_interval: 0\n  import_concurrency: 4\n")
            plan_file = str(workdir / "plan.json")
            direct, cache = str(workdir / "direct.yaml"), str(workdir / "cache.yaml")
            ways = {  # the proxy serves pulls only: copies go to the registry itself
                "registry engine (sync)": ["sync", "--plan", plan_file, "--config", direct, "--engine", "registry"],
                "acr-import engine (sync)": ["sync", "--plan", plan_file, "--config", direct, "--engine",
                                             "acr-import"],
                "cache rules (cache-rules)": ["cache-rules", "--plan", plan_file, "--config", cache],
            }
            print(f"{len(images)} images, {sum(unique.values()) / MIB:.1f} MiB of unique blobs", flush=True)
            rows = []
            for name, command in ways.items():
                target.wipe()
                acr.cache_rules.clear()
                requests_before = len(arm.log)
                result = run({"args": command, "token": arm.token})
                if result["exit"] != 0:
                    raise RuntimeError(f"{name}: exit {result['exit']}: {result['stderr'][-2000:]}")
                rows.append((name, result["io_bytes"], result["seconds"], len(arm.log) - requests_before))
            proxy.stop()
        finally:
            arm.stop()
            source.stop()
            target.stop()

    print(f"\n{'way':<28} {'bytes through the runner':>25} {'wall s':>7} {'ARM requests':>13}")
    for name, moved, seconds, requests in rows:
        print(f"{name:<28} {moved / MIB:>21.2f} MiB {seconds:>7.2f} {requests:>13}")
    print("\n(served setup: the import's copy and the cache's pull run on this machine, outside the worker;"
          " in Azure they run inside Azure)")
    registry_bytes, import_bytes = rows[0][1], rows[1][1]
    ok = import_bytes < 0.02 * registry_bytes
    print(f"\n{'ok  ' if ok else 'MISS'} acr-import moves under 2% of the registry engine's bytes through the runner: "
          f"{import_bytes / max(registry_bytes, 1):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
