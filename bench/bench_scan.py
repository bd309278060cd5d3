"""Scan throughput: `scan_paths` over a generated tree vs a plain PyYAML C-loader parse.

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that run
alone; the tree sizes show whether memory stays flat as the tree grows.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

KINDS = ["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "Pod"]
IMAGES = ["nginx:1.27", "docker.io/bitnami/redis:7.4", "registry.k8s.io/pause:3.9", "quay.io/prometheus/node-exporter:v1.8.2",
          "crazureblue.azurecr.io/app/api:1.2.3", "ghcr.io/org/worker@sha256:" + "ab" * 32]


def manifest(i: int, rng: random.Random) -> str:
    kind = KINDS[i % len(KINDS)]
    containers = "".join(
        f"""        - name: c{n}
          image: {'"' if n % 2 else ''}{rng.choice(IMAGES)}{'"' if n % 2 else ''}  # image {n}
          args: ["--port=80{n}", "--verbose"]
          env:
            - name: MODE
              value: production
          resources:
            limits: {{cpu: 500m, memory: 256Mi}}
""" for n in range(rng.randint(1, 3)))
    pod = f"""      metadata:
        labels: {{app: app-{i}}}
      spec:
        containers:
{containers}"""
    if kind == "Pod":
        body = "spec:\n  containers:\n" + "\n".join(line[6:] for line in containers.splitlines()) + "\n"
    elif kind == "CronJob":
        body = ("spec:\n  schedule: '*/5 * * * *'\n  jobTemplate:\n    spec:\n      template:\n"
                + "\n".join("    " + line for line in pod.splitlines()) + "\n")
    else:
        body = f"spec:\n  selector:\n    matchLabels: {{app: app-{i}}}\n  template:\n{pod}"
    api = {"CronJob": "batch/v1", "Job": "batch/v1", "Pod": "v1"}.get(kind, "apps/v1")
    return (f"# generated manifest {i}\napiVersion: {api}\nkind: {kind}\nmetadata:\n  name: app-{i}\n"
            f"  namespace: ns-{i % 50}\n  labels:\n    team: t{i % 7}\n{body}---\napiVersion: v1\nkind: Service\n"
            f"metadata:\n  name: app-{i}\nspec:\n  ports: [{{port: 80}}]\n")


def generate(root: Path, count: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    marker = root / f".generated-{count}"
    if marker.exists():
        return root
    for i in range(count):
        directory = root / f"team-{i % 40}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"app-{i}.yaml").write_text(manifest(i, rng))
    marker.touch()
    return root


def run_child(mode: str, root: Path) -> dict:
    """Measure one mode in a fresh process (so ru_maxrss is its own)."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(root)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def child(mode: str, root: Path) -> None:
    sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "manifests-rewriter")]
    import yaml

    from manifests_rewriter.naming import target_for
    from manifests_rewriter.policy import Policy
    from manifests_rewriter.scan import scan_paths

    files = sorted(root.rglob("*.yaml"))
    start = time.perf_counter()
    if mode == "pyyaml":
        docs = 0
        for path in files:
            docs += sum(1 for _ in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))
        findings = docs
    else:
        policy = Policy(r"^crazureblue\.azurecr\.io/.+$")
        to_target = functools.partial(target_for, registry="crazureblue.azurecr.io")  # as the CLI passes it
        result = scan_paths([str(root)], policy, to_target)
        findings = len(result.findings)
        assert result.files == len(files) and not result.errors
    elapsed = time.perf_counter() - start
    # the largest process: this one, or a scan worker it forked
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    print(json.dumps({"files": len(files), "seconds": elapsed, "files_per_s": len(files) / elapsed,
                      "rss_mb": rss, "count": findings}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--workdir", default=".bench/scan")
    parser.add_argument("--sizes", default="2500,5000,10000")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        root = generate(Path(args.workdir) / str(size), size)
        run_child("scan", root)  # warm the page cache for both contenders
        plain = run_child("pyyaml", root)
        ours = run_child("scan", root)
        rows.append((size, ours, plain))
    print("\n## scan throughput (files/s; higher is better)\n")
    print("| files | acr-mirror scan | PyYAML CSafeLoader load_all (1 process) | ratio | scan peak RSS (largest process) | findings |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, ours, plain in rows:
        print(f"| {size:,} | {ours['files_per_s']:,.0f} | {plain['files_per_s']:,.0f} | "
              f"{ours['files_per_s'] / plain['files_per_s']:.2f}x | {ours['rss_mb']:.0f} MB | {ours['count']:,} |")
    largest = rows[-1][1]
    goal = largest["files_per_s"] >= 2000 and largest["files_per_s"] >= rows[-1][2]["files_per_s"]
    print(f"\ngoal (>= 2,000 files/s and no slower than the plain parse): {'met' if goal else 'NOT met'}")


if __name__ == "__main__":
    main()
